"""``python -m experiments.heal``: the same fine-tune for compact and prune outputs."""

import json
import pathlib

import pytest
from conftest import flags

import configs
from experiments import cli, compact, heal, prune, run_folder

WIDTHS = {"compact": (5, 32, 7, 32, 3, 10), "prune": (5, 32, 7, 32, 3, 10)}


def make_source(folder, kind, step=40, experiment="mnist_subset_mlp", **keys):
  """A compact or prune output's files (``params/`` empty: the fine-tunes are faked)."""
  config = configs.load_config(experiment)
  config.update(keys)
  folder.mkdir(parents=True)
  (folder / "params").mkdir()
  run_folder.write_json(folder / run_folder.CONFIG, config.to_dict())
  marker = {"compact": compact.MARKER, "prune": prune.MARKER}[kind]
  run_folder.write_json(folder / marker, {"step": step, "widths": {"features": keys["features"]}})
  return folder


@pytest.fixture
def sources(tmp_path):
  """A PathProx compact output and a weight-decay prune output, trained differently."""
  pathprox = make_source(
    tmp_path / "pp" / "compact", "compact", features=(5, 32, 7, 32, 3, 10), momentum=0.9,
    weight_decay=1e-3, lr=0.03, warmup_iter=5, seed=3,
  )  # fmt: skip
  wd = make_source(
    tmp_path / "wd" / "prune", "prune", method="wd", features=(4, 32, 6, 32, 2, 10),
    weight_decay=3e-4, lr_schedule="cosine", batch_size=100, seed=3,
  )  # fmt: skip
  return pathprox, wd


# Validation and test accuracy of each fake fine-tune: validation prefers 0.01, test 0.1.
FIGURES = {0.1: (0.80, 0.95), 0.01: (0.90, 0.85), 0.001: (0.85, 0.80)}


@pytest.fixture
def fake_runs(monkeypatch):
  """Replaces ``cli.main`` by a fake that writes a fine-tune's rows; returns its calls."""
  calls = []

  def fake_main(experiment, argv, resume_with=None):
    calls.append((experiment, list(argv)))
    workdir = pathlib.Path(argv[argv.index("--workdir") + 1])
    lr = float(argv[argv.index("--lr") + 1])
    steps = int(argv[argv.index("--total-iter") + 1])
    val, test = FIGURES.get(lr, (0.7, 0.7))
    rows = [
      {"step": 0, "val_acc": 0.5, "test_acc": 0.4, "val_loss": 2.0, "test_loss": 2.0},
      {"step": steps, "val_acc": val, "test_acc": test, "val_loss": 1 - val, "test_loss": 0.1},
    ]
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / run_folder.METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0

  monkeypatch.setattr(cli, "main", fake_main)
  return calls


def flag_values(argv):
  return dict(zip(argv[::2], argv[1::2], strict=True))


def test_both_sources_are_healed_alike_and_chosen_on_validation(sources, fake_runs, capsys):
  pathprox, wd = sources
  argv = [str(pathprox), str(wd), "--steps", "4", "--lrs", "0.1,0.01,0.001", "--log-freq", "2"]
  assert heal.main(argv) == 0
  assert len(fake_runs) == 6 and {e for e, _ in fake_runs} == {"mnist_subset_mlp"}

  runs = [flag_values(a) for _, a in fake_runs]
  for p, w in zip(runs[:3], runs[3:], strict=True):
    differ = {k for k in p.keys() | w.keys() if p.get(k) != w.get(k)}
    assert differ == {"--init-params", "--features", "--workdir"}  # the model, nothing else
    assert p["--method"] == "wd" and "--momentum" not in p and "--weight-decay" not in p
    assert (p["--lr-schedule"], p["--total-iter"], p["--log-freq"]) == ("cosine", "4", "2")
    assert p["--seed"] == "3" and "--warmup-iter" not in p and "--batch-size" not in p
  assert runs[0]["--init-params"] == str((pathprox / "params").absolute())
  assert runs[3]["--workdir"] == str(wd.with_name("prune-heal") / "lr0.1")

  record = json.loads((wd.with_name("prune-heal") / heal.RECORD).read_text())
  assert record["chosen_lr"] == 0.01  # best validation accuracy, though test prefers 0.1
  assert (record["val_acc"], record["test_acc"]) == (0.90, 0.85)
  assert [r["lr"] for r in record["runs"]] == [0.1, 0.01, 0.001]
  assert record["runs"][0]["test_acc"] == 0.95
  assert (record["main_steps"], record["heal_steps"], record["total_steps"]) == (40, 4, 44)
  assert record["kind"] == "prune" and record["before"] == {"val_acc": 0.5, "test_acc": 0.4}
  assert record["settings"]["method"] == "wd" and record["settings"]["weight_decay"] == 1e-4
  other = json.loads((pathprox.with_name("compact-heal") / heal.RECORD).read_text())
  assert other["settings"] == record["settings"] and other["kind"] == "compact"
  assert "lr 0.01 chosen on validation" in capsys.readouterr().out


def test_a_second_call_resumes_the_runs(sources, fake_runs):
  pathprox, _ = sources
  argv = [str(pathprox), "--steps", "2", "--method", "pathprox", "--weight-decay", "2e-4"]
  assert heal.main(argv) == 0
  assert heal.main(argv) == 0
  first, again = fake_runs[:3], fake_runs[3:]
  assert all("--resume" not in a for _, a in first) and all("--resume" in a for _, a in again)
  values = flag_values([a for a in again[0][1] if a != "--resume"])
  assert "--method" not in values and values["--weight-decay"] == "0.0002"  # pathprox: default
  lr = configs.load_config("mnist_subset_mlp").lr  # the default grid
  assert [float(flag_values(a[:-1])["--lr"]) for _, a in again] == pytest.approx(
    [lr * f for f in heal.LR_FACTORS]
  )


@pytest.mark.parametrize(
  "change, message",
  [
    ({"step": 30}, "the sources' main runs differ in length"),
    ({"experiment": "mnist_mlp"}, "the sources come from different experiments"),
    ({"flags": ["--lr", "0.1"]}, "--lr is set by the heal"),
    ({"flags": ["--total-iter", "9"]}, "--total-iter is set by the heal"),
    ({"flags": ["--lrs", "0.1,0.1,0.2"]}, "the learning rates must differ"),
    ({"flags": ["--steps", "0"]}, "--steps must be >= 1"),
    ({"flags": ["--workdir", "x"]}, "--workdir and --resume are the heal's own"),
    ({"flags": ["--no-such-flag", "1"]}, "unrecognized arguments"),
  ],
)
def test_bad_input_is_a_one_line_error_and_runs_nothing(
  sources, tmp_path, fake_runs, capsys, change, message
):
  pathprox, _ = sources
  other = make_source(
    tmp_path / "other" / "compact", "compact", step=change.get("step", 40),
    experiment=change.get("experiment", "mnist_subset_mlp"), features=(4, 32, 6, 32, 2, 10),
  )  # fmt: skip
  argv = [str(pathprox), str(other), "--steps", "4", *change.get("flags", [])]
  assert heal.main(argv) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and message in err
  assert not fake_runs


def test_a_folder_that_is_no_output_is_a_one_line_error(tmp_path, fake_runs, capsys):
  assert heal.main([str(tmp_path), "--steps", "4"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "is not a compact or prune output" in err


def test_lr_folders_read_back_exactly():
  assert heal.lr_folder(0.01) == "lr0.01"
  assert float(heal.lr_folder(0.1 + 0.2)[2:]) == 0.1 + 0.2


@pytest.mark.slow  # trains a tiny run and three one-step fine-tunes
def test_a_compact_output_heals_end_to_end(raw_mnist, tmp_path):
  run_dir = tmp_path / "run"
  argv = flags(raw_mnist, tmp_path, weight_decay=0.02, workdir=run_dir, total_iter=10)
  assert cli.main("mnist_subset_mlp", argv) == 0
  assert compact.main([str(run_dir), "--path-norm-tol", "0.3", "--repeats", "1"]) == 0
  source = run_dir / "compact"
  heal_flags = ["--steps", "1", "--lrs", "0.01,0.003,0.001", "--batch-size", "40"]
  assert heal.main([str(source), *heal_flags]) == 0
  record = json.loads((run_dir / "compact-heal" / heal.RECORD).read_text())
  best = max(record["runs"], key=lambda r: (r["val_acc"], -r["val_loss"]))
  assert record["chosen_lr"] == best["lr"] and record["total_steps"] == 11
  kept = json.loads((source / compact.MARKER).read_text())["check"]["compact_acc"]
  assert record["before"]["test_acc"] == pytest.approx(kept, abs=1e-6)
  for r in record["runs"]:
    rows = run_folder.read_rows(pathlib.Path(r["workdir"]) / run_folder.METRICS)
    assert rows[-1]["step"] == 1 and rows[-1]["test_acc"] == r["test_acc"]
