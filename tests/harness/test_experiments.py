"""The experiment harness end to end, on generated raw data (and real MNIST when present)."""

import json
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REPO, flags, read_rows, users_env

from experiments import checkpointing, cli, compare, input_pipeline


def assert_rows_close(a, b, rtol):
  assert [r["step"] for r in a] == [r["step"] for r in b]
  for ra, rb in zip(a, b, strict=True):
    for key in ra:
      if key not in ("wall_time", "method"):
        np.testing.assert_allclose(ra[key], rb[key], rtol=rtol, atol=1e-7, err_msg=key)


@pytest.mark.slow  # trains a run
def test_run_writes_config_and_metrics(raw_mnist, tmp_path, monkeypatch, capsys):
  workdir = tmp_path / "run"
  argv = flags(raw_mnist, tmp_path, workdir=workdir, tensorboard="true")
  i = argv.index("--raw-data-dir")
  del argv[i : i + 2]
  monkeypatch.setenv("PATHPROX_RAW_DATA_DIR", str(raw_mnist))
  assert cli.main("mnist_subset_mlp", argv) == 0
  assert capsys.readouterr().out.startswith(f"run directory: {workdir}\n")
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
  assert config["raw_data_dir"] == str(raw_mnist)  # the effective one, here from the environment
  assert sorted(p.name for p in workdir.iterdir()) == [
    "checkpoints", "config.json", "metrics.jsonl", "tensorboard"]  # fmt: skip


@pytest.mark.slow  # trains a run
def test_one_and_eight_devices_agree(raw_mnist, finished_run, tmp_path):
  eight, _ = finished_run
  assert json.loads((eight / "config.json").read_text())["devices"] == "8 x cpu"
  one = tmp_path / "d1"
  assert cli.main("mnist_subset_mlp", flags(raw_mnist, tmp_path, workdir=one, num_devices=1)) == 0
  assert_rows_close(read_rows(one), read_rows(eight), rtol=1e-4)


@pytest.mark.slow  # trains two runs
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


def start_run(argv, workdir):
  """A run in a subprocess (the real command line), its stderr to ``workdir``'s sibling file."""
  command = [sys.executable, "-m", "experiments.mnist_subset_mlp", *argv, "--workdir", workdir]
  err = open(f"{workdir}.err", "w")  # noqa: SIM115 - the subprocess writes it until it ends
  return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)


def wait_for_checkpoint(process, workdir, step):
  """Waits until ``workdir`` holds a finished checkpoint at ``step`` or later (the run goes on)."""
  checkpoints = workdir / "checkpoints"
  while process.poll() is None:
    saved = [int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()]
    if any(s >= step and (checkpoints / str(s) / "commit_success.txt").exists() for s in saved):
      return
    time.sleep(0.05)  # polling the file system, not a guess at the run's speed
  raise AssertionError(f"the run ended (exit {process.returncode}): {workdir}.err")


def wait_for_rows(process, workdir, count):
  """Waits until the running ``process`` has written ``count`` rows of ``metrics.jsonl``."""
  path = workdir / "metrics.jsonl"
  while process.poll() is None:
    if path.exists() and path.read_text().count("\n") >= count:
      return
    time.sleep(0.05)  # polling the file system, not a guess at the run's speed
  raise AssertionError(f"the run ended (exit {process.returncode}): {workdir}.err")


def assert_same_run(workdir, reference):
  """Same metrics rows (but wall time) and bitwise equal final checkpoints."""
  strip = [{k: v for k, v in r.items() if k != "wall_time"} for r in read_rows(workdir)]
  assert strip == [{k: v for k, v in r.items() if k != "wall_time"} for r in read_rows(reference)]
  step_a, state_a = restore_params(workdir)
  step_b, state_b = restore_params(reference)
  assert step_a == step_b
  jax.tree.map(np.testing.assert_array_equal, state_a, state_b)


@pytest.mark.slow  # a subprocess
def test_killed_run_holds_its_lock_then_resumes_to_identical_parameters(
  raw_mnist, tmp_path, capsys
):
  # The killed run is set to run far longer than the test waits: it is always killed mid-run.
  argv = flags(raw_mnist, tmp_path, total_iter=10**6, log_freq=100, save_freq=100)
  workdir = tmp_path / "killed"
  process = start_run(argv, workdir)
  wait_for_checkpoint(process, workdir, 200)
  assert cli.main("mnist_subset_mlp", argv + ["--workdir", str(workdir), "--resume"]) == 2
  assert f"is in use by another run (pid {process.pid} on " in capsys.readouterr().err
  process.send_signal(signal.SIGKILL)
  process.wait()

  saved = checkpointing.latest_step(workdir / "checkpoints")
  end = ["--total-iter", str(saved + 150)]  # allowed on resume: ends the run sooner
  assert cli.main("mnist_subset_mlp", argv + end + ["--workdir", str(workdir), "--resume"]) == 0
  reference = tmp_path / "uninterrupted"
  assert cli.main("mnist_subset_mlp", argv + end + ["--workdir", str(reference)]) == 0
  assert [r["step"] for r in read_rows(workdir)][-2:] == [saved + 100, saved + 150]
  assert_same_run(workdir, reference)


@pytest.mark.parametrize(
  "experiment, argv, message",
  [
    ("mnist_subset_mlp", ["--bogus", "1"], "unrecognized arguments: --bogus"),
    ("mnist_subset_mlp", ["--experiment", "x"], "unrecognized arguments: --experiment"),
    ("mnist_subset_mlp", ["--batch-size", "abc"], "--batch-size: 'abc' is not a valid int"),
    ("mnist_subset_mlp", ["--dataset", "imagenet"], "unknown data set 'imagenet'"),
    ("mnist_subset_mlp", ["--method", "adam"], "--method must be one of"),
    ("mnist_subset_mlp", ["--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
    ("mnist_subset_mlp", ["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    ("mnist_subset_mlp", ["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    ("mnist_subset_mlp", ["--lr-decay", "-1"], "--lr-decay must be a finite number > 0"),
    ("mnist_subset_mlp", ["--weight-decay", "nan"], "--weight-decay must be a finite number >= 0"),
    ("mnist_subset_mlp", ["--momentum", "1"], "--momentum must be in [0, 1)"),
    ("mnist_subset_mlp", ["--features", "64,0,64,64,64,10"], "--features must be widths >= 1"),
    ("mnist_subset_mlp", ["--features", "64,-3,64,64,64,10"], "--features must be widths >= 1"),
    ("mnist_subset_mlp", ["--features", "32,32,32,32,32,5"], "must be >= the 10 classes"),
    ("mnist_subset_mlp", ["--relu", "true"], "--relu has 1 entries but --features has 6"),
    ("mnist_subset_mlp", ["--train-per-class", "0"], "--train-per-class must be in [1, 5420]"),
    ("mnist_subset_mlp", ["--train-per-class", "7000"], "--train-per-class must be in [1, 5420]"),
    ("mnist_subset_mlp", ["--val-size", "10"], "--val-size applies only to --split holdout"),
    ("mnist_subset_mlp", ["--channels", "8,8"], "--channels applies only to --model vgg"),
    ("mnist_mlp", ["--val-size", "0"], "--val-size must be in [1, 59999] for mnist"),
    ("mnist_mlp", ["--val-size", "60000"], "--val-size must be in [1, 59999] for mnist"),
    ("mnist_mlp", ["--num-devices", "9"], "--num-devices must be in [0, 8]"),
    ("cifar_vgg", ["--channels", "8,8,8"], "--channels must list an even number of convs"),
    ("cifar_vgg", ["--pool-after", "1,16"], "--pool-after must be conv indices in [0, 15]"),
    ("cifar_vgg", ["--features", "8,10"], "--features applies only to --model mlp"),
  ],
)
def test_bad_input_is_a_one_line_error(experiment, argv, message, capsys, tmp_path):
  assert cli.main(experiment, argv + ["--workdir", str(tmp_path / "r")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ") and message in err
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("where, message", [("file", "is a file"), ("file/run", "is not writable")])
def test_unusable_workdir_is_a_one_line_error(where, message, tmp_path, capsys):
  (tmp_path / "file").write_text("not a folder")
  assert cli.main("mnist_subset_mlp", ["--workdir", str(tmp_path / where)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and message in err
  assert [p.name for p in tmp_path.iterdir()] == ["file"]
  assert (tmp_path / "file").read_text() == "not a folder"


@pytest.mark.slow  # a subprocess
def test_cli_exit_code_and_existing_run_untouched(finished_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished_run[0], workdir)
  before = (workdir / "metrics.jsonl").read_bytes()
  command = [sys.executable, "-m", "experiments.mnist_subset_mlp", *finished_run[1],
             "--workdir", str(workdir)]  # fmt: skip
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert "already holds checkpoints and metrics.jsonl; pass --resume" in result.stderr
  assert (workdir / "metrics.jsonl").read_bytes() == before


def test_epoch_order_visits_every_example_once_and_keeps_the_last_batch():
  order = np.asarray(input_pipeline.epoch_order(jax.random.key(0), 3, 45, 10))
  assert len(order) == 50 and (order[45:] == -1).all()
  assert sorted(order[:45].tolist()) == list(range(45))
  other = np.asarray(input_pipeline.epoch_order(jax.random.key(0), 4, 45, 10))
  assert not (order[:45] == other[:45]).all()


@pytest.mark.slow  # trains two VGG runs
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


# On the notebooks' xdist worker (--dist loadgroup): the real MNIST they prepare is reused.
@pytest.mark.xdist_group("notebooks")
@pytest.mark.slow  # prepares real MNIST (or reuses it) and trains
def test_real_mnist_subset_short_run(real_mnist, real_mnist_data_dir, tmp_path):
  """A user's run: compiled as users compile (`users_env`), its thresholds hold for that."""
  argv = ["--raw-data-dir", str(real_mnist), "--data-dir", str(real_mnist_data_dir),
          "--workdir", str(tmp_path / "run"), "--total-iter", "100", "--log-freq", "50",
          "--save-freq", "100", "--progress", "false"]  # fmt: skip
  command = [sys.executable, "-m", "experiments.mnist_subset_mlp", *argv]
  subprocess.run(command, cwd=REPO, env=users_env(), check=True, capture_output=True)
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
