"""The experiment harness end to end, on generated raw data (and real MNIST when present)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REAL_MNIST

from experiments import checkpointing, cli, compare, input_pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MLP = ["--features", "32,32,32,32,32,10", "--train-per-class", "20", "--batch-size", "40",
            "--eval-batch-size", "200", "--lr", "0.05", "--progress", "false"]  # fmt: skip


def flags(raw_dir, tmp_path, **overrides):
  """Command-line flags of a tiny mnist_subset_mlp run."""
  values = {"raw-data-dir": raw_dir, "allow-unofficial-data": "true",
            "data-dir": tmp_path / "tfds", "total-iter": 20, "log-freq": 10,
            "save-freq": 10}  # fmt: skip
  values.update({k.replace("_", "-"): v for k, v in overrides.items()})
  return TINY_MLP + [f for k, v in values.items() for f in (f"--{k}", str(v))]


def read_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def assert_rows_close(a, b, rtol):
  assert [r["step"] for r in a] == [r["step"] for r in b]
  for ra, rb in zip(a, b, strict=True):
    for key in ra:
      if key not in ("wall_time", "method"):
        np.testing.assert_allclose(ra[key], rb[key], rtol=rtol, atol=1e-7, err_msg=key)


def test_run_writes_config_and_metrics(raw_mnist, tmp_path):
  workdir = tmp_path / "run"
  argv = flags(raw_mnist, tmp_path, workdir=workdir, tensorboard="true")
  assert cli.main("mnist_subset_mlp", argv) == 0
  rows = read_rows(workdir)
  assert [r["step"] for r in rows] == [0, 10, 20]
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  expected = {"step", "method", "lr", "wall_time", "train_loss", "train_acc", "val_loss",
              "val_acc", "test_loss", "test_acc", "wd_objective", "path_norm", "active_units",
              "active_units_pct", "path_norm/g0", "active_units/g2",
              "active_units_pct/g1"}  # fmt: skip
  assert expected <= set(rows[-1])
  assert rows[-1]["train_loss"] < rows[0]["train_loss"]
  assert rows[-1]["lr"] == 0.05
  group_norms = sum(rows[-1][f"path_norm/g{k}"] for k in range(3))
  np.testing.assert_allclose(rows[-1]["path_norm"], group_norms, rtol=1e-5)
  config = json.loads((workdir / "config.json").read_text())
  assert config["experiment"] == "mnist_subset_mlp" and config["method"] == "pathprox"
  assert config["groups"] == [0, 1, 2] and config["units"] == {"0": 32, "1": 32, "2": 32}
  assert config["devices"] == "8 x cpu"
  assert "--total-iter 20" in config["command"]


def test_one_and_eight_devices_agree(raw_mnist, tmp_path):
  rows = {}
  for n in (1, 8):
    workdir = tmp_path / f"d{n}"
    argv = flags(raw_mnist, tmp_path, workdir=workdir, num_devices=n)
    assert cli.main("mnist_subset_mlp", argv) == 0
    rows[n] = read_rows(workdir)
  assert_rows_close(rows[1], rows[8], rtol=1e-4)


def test_pmap_equals_shard_map(raw_mnist, tmp_path):
  rows = {}
  for parallel in ("shard_map", "pmap"):
    workdir = tmp_path / parallel
    argv = flags(raw_mnist, tmp_path, workdir=workdir, parallel=parallel, method="wd")
    assert cli.main("mnist_subset_mlp", argv) == 0
    rows[parallel] = read_rows(workdir)
  assert_rows_close(rows["shard_map"], rows["pmap"], rtol=1e-5)


def restore_params(workdir):
  """The last checkpoint's state of ``workdir``, restored against its own structure."""
  manager = checkpointing.Checkpoints(workdir / "checkpoints")
  step = manager.latest_step()
  state = manager.manager.restore(step).state  # no target needed to compare raw arrays
  manager.close()
  return step, state


def test_killed_run_resumes_to_identical_parameters(raw_mnist, tmp_path):
  argv = flags(raw_mnist, tmp_path, total_iter=600, log_freq=100, save_freq=100)
  reference = tmp_path / "uninterrupted"
  assert cli.main("mnist_subset_mlp", argv + ["--workdir", str(reference)]) == 0

  workdir = tmp_path / "killed"
  command = [sys.executable, "-m", "experiments.mnist_subset_mlp", *argv, "--workdir", workdir]
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 120
  checkpoints = workdir / "checkpoints"
  while time.time() < deadline and process.poll() is None:
    saved = [int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()]
    if any(step >= 200 for step in saved):
      break
    time.sleep(0.05)
  assert process.poll() is None, "the run ended before it could be killed"
  process.send_signal(signal.SIGKILL)
  process.wait()
  killed_at = read_rows(workdir)[-1]["step"]
  assert killed_at < 600

  assert cli.main("mnist_subset_mlp", argv + ["--workdir", str(workdir), "--resume"]) == 0
  resumed, uninterrupted = read_rows(workdir), read_rows(reference)
  assert [r["step"] for r in resumed] == list(range(0, 601, 100))
  for a, b in zip(resumed, uninterrupted, strict=True):
    assert {k: v for k, v in a.items() if k != "wall_time"} == {
      k: v for k, v in b.items() if k != "wall_time"
    }
  step_a, state_a = restore_params(workdir)
  step_b, state_b = restore_params(reference)
  assert step_a == step_b == 600
  jax.tree.map(np.testing.assert_array_equal, state_a, state_b)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(raw_mnist, tmp_path, capsys):
  workdir = tmp_path / "run"
  assert cli.main("mnist_subset_mlp", flags(raw_mnist, tmp_path, workdir=workdir)) == 0
  argv = flags(raw_mnist, tmp_path, workdir=workdir, total_iter=40, lr=1e12)
  assert cli.main("mnist_subset_mlp", argv + ["--resume"]) == 1
  message = capsys.readouterr().err.strip()
  assert "training loss became" in message and "step 20" in message
  assert checkpointing.Checkpoints(workdir / "checkpoints").latest_step() == 20


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--bogus", "1"], "unrecognized arguments: --bogus"),
    (["--batch-size", "abc"], "--batch-size: 'abc' is not a valid int"),
    (["--dataset", "imagenet"], "unknown data set 'imagenet'"),
    (["--method", "adam"], "--method must be one of"),
    (["--lr", "-1"], "--lr must be positive"),
  ],
)
def test_bad_input_is_a_one_line_error(argv, message, capsys, tmp_path):
  assert cli.main("mnist_subset_mlp", argv + ["--workdir", str(tmp_path / "r")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ") and message in err
  assert not (tmp_path / "r").exists()


def test_cli_exit_code_and_existing_run_untouched(raw_mnist, tmp_path):
  workdir = tmp_path / "run"
  assert cli.main("mnist_subset_mlp", flags(raw_mnist, tmp_path, workdir=workdir)) == 0
  before = (workdir / "metrics.jsonl").read_bytes()
  command = [sys.executable, "-m", "experiments.mnist_subset_mlp",
             *flags(raw_mnist, tmp_path, workdir=workdir)]  # fmt: skip
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert "already holds checkpoints; pass --resume" in result.stderr
  assert (workdir / "metrics.jsonl").read_bytes() == before


def test_epoch_order_visits_every_example_once_and_keeps_the_last_batch():
  order = np.asarray(input_pipeline.epoch_order(jax.random.key(0), 3, 45, 10))
  assert len(order) == 50 and (order[45:] == -1).all()
  assert sorted(order[:45].tolist()) == list(range(45))
  other = np.asarray(input_pipeline.epoch_order(jax.random.key(0), 4, 45, 10))
  assert not (order[:45] == other[:45]).all()


def test_cifar_vgg_comparison_smoke(raw_cifar, tmp_path):
  argv = ["cifar_vgg", "--workdir", str(tmp_path / "cmp"), "--raw-data-dir", str(raw_cifar),
          "--allow-unofficial-data", "true",
          "--data-dir", str(tmp_path / "tfds"), "--channels", "8,8,8,8", "--pool-after", "1,3",
          "--val-size", "20", "--batch-size", "16", "--total-iter", "4", "--log-freq", "2",
          "--save-freq", "4", "--eval-batch-size", "40", "--progress", "false"]  # fmt: skip
  assert compare.main(argv) == 0
  for method in ("pathprox", "wd"):
    rows = read_rows(tmp_path / "cmp" / method)
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert all(np.isfinite(r["train_loss"]) for r in rows)
  assert (tmp_path / "cmp" / "report.md").exists()
  assert (tmp_path / "cmp" / "objective.png").exists()


@pytest.mark.skipif(not REAL_MNIST.exists(), reason=f"real MNIST not found at {REAL_MNIST}")
def test_real_mnist_subset_short_run(tmp_path):
  argv = ["--raw-data-dir", str(REAL_MNIST), "--data-dir", str(tmp_path / "tfds"),
          "--workdir", str(tmp_path / "run"), "--total-iter", "100", "--log-freq", "50",
          "--save-freq", "100", "--progress", "false"]  # fmt: skip
  assert cli.main("mnist_subset_mlp", argv) == 0
  rows = read_rows(tmp_path / "run")
  assert [r["step"] for r in rows] == [0, 50, 100]
  assert rows[-1]["train_acc"] > 0.9 and rows[-1]["test_acc"] > 0.7
  assert rows[-1]["active_units_pct"] <= 100.0


def test_missing_data_set_is_a_one_line_error_and_writes_nothing(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("PATHPROX_DATA_URL", "http://127.0.0.1:9")  # nothing listens there
  monkeypatch.delenv("PATHPROX_RAW_DATA_DIR", raising=False)
  argv = ["--data-dir", str(tmp_path / "tfds"), "--workdir", str(tmp_path / "run")]
  assert cli.main("mnist_mlp", argv) == 2
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert err.startswith("error: data set 'mnist' is not prepared") and "--raw-data-dir" in err
  assert not (tmp_path / "run").exists()
