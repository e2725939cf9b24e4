"""experiments.front: the front's table over seeds from compact, prune and heal records."""

import json

import pytest

from experiments import front


def _write(path, record):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(record))


def _seed(root, seed, acc, pruned_acc, healed, prune="prune"):
  pp_run, wd_run = root / f"pp{seed}", root / f"wd{seed}"
  kept = {"0": list(range(10 + seed)), "1": list(range(20))}
  units = {"0": 40, "1": 40}
  _write(
    pp_run / "compact" / "compact.json",
    {
      "kept": kept,
      "original_units": units,
      "check": {"compact_acc": acc},
      "flops_per_example": {"sparse": 1000.0, "compact": 400.0},
      "step": 100,
    },
  )
  _write(
    wd_run / prune / "prune.json",
    {
      "match": str(pp_run / "compact"),
      "kept": kept,
      "original_units": units,
      "test_acc": {"dense": 0.9, "pruned": pruned_acc},
      "flops_per_example": {"dense": 1000.0, "pruned": 400.0, "ratio": 0.4},
      "step": 100,
    },
  )
  for run, sub, kind in ((pp_run, "compact", "compact"), (wd_run, prune, "prune")):
    _write(
      run / f"{sub}-heal" / "heal.json",
      {
        "source": str(run / sub),
        "kind": kind,
        "heal_steps": 10,
        "total_steps": 110,
        "chosen_lr": 0.01,
        "val_acc": 0.5,
        "test_acc": healed,
      },
    )
  return pp_run, wd_run


def test_front_table_gives_mean_and_std_over_seeds(tmp_path):
  pairs = [_seed(tmp_path, 0, 0.80, 0.70, 0.85), _seed(tmp_path, 1, 0.82, 0.72, 0.87)]
  out = tmp_path / "out"
  code = front.main(
    ["--pathprox", *(str(p) for p, _ in pairs), "--wd", *(str(w) for _, w in pairs)]
    + ["--out", str(out)]
  )
  assert code == 0
  table = (out / "front.md").read_text()
  assert (
    "| PathProx, compacted exactly | 2 | 0.400 ± 0.000 | 10.5/40, 20.0/40 | 81.00 ± 1.41 |" in table
  )
  assert (
    "| weight decay, pruned to the same units | 2 | 0.400 ± 0.000 | 10.5/40, 20.0/40 "
    "| 71.00 ± 1.41 |" in table
  )
  assert (
    "| weight decay, pruned to the same units + heal | 2 | 0.400 ± 0.000 | 10.5/40, 20.0/40 "
    "| 86.00 ± 1.41 |" in table
  )
  assert "tolerance" not in table
  rows = json.loads((out / "front.json").read_text())
  assert rows["PathProx, compacted exactly + heal"][1]["total_steps"] == 110
  assert (out / "front.png").stat().st_size > 0


def test_pairs_read_the_baseline_pruned_to_match_each_compaction(tmp_path):
  pp_run, wd_run = _seed(tmp_path, 0, 0.80, 0.70, 0.85, prune="prune-pp0.002")
  _seed(tmp_path, 0, 0.80, 0.60, 0.65)  # the same runs' default folders: another match
  tolerance = json.loads((pp_run / "compact" / "compact.json").read_text())
  _write(pp_run / "tol" / "compact.json", {**tolerance, "path_norm_tol": 0.01})
  out = tmp_path / "out"
  argv = ["--pathprox", str(pp_run), "--wd", str(wd_run), "--out", str(out)]
  assert front.main([*argv, "--pair", "compact", "prune-pp0.002", "--pair", "tol"]) == 0
  rows = json.loads((out / "front.json").read_text())
  assert list(rows) == [
    "PathProx, compacted exactly",
    "weight decay, pruned to the same units",
    "PathProx, compacted exactly + heal",
    "weight decay, pruned to the same units + heal",
    "PathProx, compacted at path-norm tolerance 0.01",  # no pruned match, no heal
  ]
  assert rows["weight decay, pruned to the same units"][0]["test_acc"] == 0.70
  assert rows["weight decay, pruned to the same units + heal"][0]["test_acc"] == 0.85
  assert front.main(argv) == 0  # the default pair: compact prune
  rows = json.loads((out / "front.json").read_text())
  assert rows["weight decay, pruned to the same units + heal"][0]["test_acc"] == 0.65


@pytest.mark.parametrize("problem", ["unpaired", "missing", "healed alone"])
def test_missing_or_unpaired_records_are_one_line_errors(tmp_path, capsys, problem):
  pp_run, wd_run = _seed(tmp_path, 0, 0.8, 0.7, 0.85)
  if problem == "missing":
    (wd_run / "prune" / "prune.json").unlink()
  if problem == "healed alone":
    (wd_run / "prune-heal" / "heal.json").unlink()
  wds = [str(wd_run)] * (2 if problem == "unpaired" else 1)
  code = front.main(["--pathprox", str(pp_run), "--wd", *wds, "--out", str(tmp_path / "o")])
  assert code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err
  assert not (tmp_path / "o").exists()


def test_compacted_models_alone_make_a_front(tmp_path):
  pairs = [_seed(tmp_path, 0, 0.80, 0.70, 0.85), _seed(tmp_path, 1, 0.84, 0.72, 0.87)]
  runs = [str(p) for p, _ in pairs]
  out = tmp_path / "out"
  code = front.main(["--compacted", "budget 0.4", *runs, "--out", str(out)])
  assert code == 0
  table = (out / "front.md").read_text()
  assert "| budget 0.4 | 2 | 0.400 ± 0.000 | 10.5/40, 20.0/40 | 82.00 ± 2.83 |" in table
  assert "weight decay" not in table


@pytest.mark.parametrize("argv", [[], ["--compacted", "a label"]])
def test_a_front_of_nothing_is_a_one_line_error(tmp_path, capsys, argv):
  assert front.main([*argv, "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err
  assert not (tmp_path / "o").exists()


def test_records_moved_elsewhere_still_make_the_front(tmp_path):
  # Committed records say where their runs were (another machine's folders): a heal's source
  # is read beside it.
  pairs = [
    _seed(tmp_path / "runs", 0, 0.80, 0.70, 0.85),
    _seed(tmp_path / "runs", 1, 0.82, 0.72, 0.87),
  ]
  (tmp_path / "runs").rename(tmp_path / "moved")
  moved = [(tmp_path / "moved" / p.name, tmp_path / "moved" / w.name) for p, w in pairs]
  out = tmp_path / "out"
  argv = ["--pathprox", *(str(p) for p, _ in moved), "--wd", *(str(w) for _, w in moved)]
  assert front.main([*argv, "--out", str(out)]) == 0
  assert (
    "| PathProx, compacted exactly + heal | 2 | 0.400 ± 0.000 |" in (out / "front.md").read_text()
  )
