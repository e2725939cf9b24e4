"""Resume and the run folder's record: divergence, resume rules, corrupt checkpoints.

A run directory is an honest record of one run, or the command refuses in one line. Runs are
tiny MLPs on generated data; the refusals read copies of the session's ``finished_run``.
"""

import json
import shutil

import numpy as np
import pytest
from conftest import flags, read_rows

from experiments import checkpointing, cli


def run(argv, capsys=None):
  """``cli.main`` of mnist_subset_mlp; with ``capsys``, also its stderr."""
  code = cli.main("mnist_subset_mlp", [str(a) for a in argv])
  return code if capsys is None else (code, capsys.readouterr().err)


def snapshot(folder):
  """Every file under ``folder`` with its bytes."""
  return {
    str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
  }


def copy_of(finished_run, tmp_path):
  workdir, argv = finished_run
  shutil.copytree(workdir, tmp_path / "run")
  return tmp_path / "run", argv + ["--workdir", tmp_path / "run"]


# Divergence: the learning rate jumps to 5e36 at epoch 2 (step 10, a checkpoint). At step 11
# the batch loss (of step 10's parameters) is still finite; the parameters are not.
DIVERGE = ["--lr-milestones", "2", "--lr-decay", "1e38", "--method", "wd"]


@pytest.mark.slow  # trains two runs
@pytest.mark.parametrize(
  "total_iter, message",
  [
    (11, "the evaluated training loss is nan at step 11"),
    (30, "the training loss became nan at step 12"),
  ],  # fmt: skip
  ids=["in-the-final-evaluation", "mid-run"],
)
def test_diverged_run_fails_and_keeps_the_last_good_checkpoint(
  total_iter, message, raw_mnist, tmp_path, capsys
):
  workdir = tmp_path / "run"
  argv = flags(raw_mnist, tmp_path, workdir=workdir, total_iter=total_iter) + DIVERGE
  code, err = run(argv, capsys)
  assert code == 1
  last = err.strip().splitlines()[-1]
  assert last.startswith(f"error: {message}; stopped, and the last good checkpoint (step 10) is")
  assert "lower --lr" in last
  assert checkpointing.latest_step(workdir / "checkpoints") == 10


def test_resume_refuses_trajectory_changes_listing_them(finished_run, tmp_path, capsys):
  workdir, argv = copy_of(finished_run, tmp_path)
  before = snapshot(workdir)
  changed = ["--lr", "0.1", "--method", "wd", "--momentum", "0.9", "--features", "8,8,8,8,8,10"]
  code, err = run(argv + changed + ["--resume"], capsys)
  assert code == 2 and err.count("\n") == 1
  for text in ("--features 32,32,32,32,32,10 (here 8,8,8,8,8,10)", "--lr 0.05 (here 0.1)",
               "--method 'pathprox' (here 'wd')", "--momentum 0.0 (here 0.9)"):  # fmt: skip
    assert text in err
  code, err = run(argv + ["--total-iter", "15", "--resume"], capsys)
  assert code == 2 and "--total-iter 15 is below step 20 of the checkpoint" in err
  assert snapshot(workdir) == before


@pytest.mark.slow  # trains 10 more steps
def test_resume_continues_the_same_run_and_records_each_resume(finished_run, tmp_path, monkeypatch):
  monkeypatch.delenv("PATHPROX_RAW_DATA_DIR", raising=False)  # it would be a changed path
  workdir, argv = copy_of(finished_run, tmp_path)
  original = json.loads((workdir / "config.json").read_text())
  # Only the workdir: every other key comes from the run (not from the config's defaults).
  assert run(["--workdir", workdir, "--resume", "--total-iter", "30", "--log-freq", "5"]) == 0
  assert [r["step"] for r in read_rows(workdir)] == [0, 10, 20, 25, 30]
  record = json.loads((workdir / "config.json").read_text())
  assert {k: v for k, v in record.items() if k != "resumes"} == original
  (resumed,) = record["resumes"]
  assert resumed["step"] == 20 and resumed["changed"] == {"total_iter": 30, "log_freq": 5}
  assert resumed["command"].endswith("--resume --total-iter 30 --log-freq 5")


def test_rerun_without_resume_is_refused_and_touches_nothing(finished_run, tmp_path, capsys):
  workdir, argv = copy_of(finished_run, tmp_path)
  shutil.rmtree(workdir / "checkpoints")
  before = snapshot(workdir)
  code, err = run(argv, capsys)
  assert code == 2 and err.count("\n") == 1
  assert "already holds metrics.jsonl; pass --resume" in err
  assert snapshot(workdir) == before


def truncate_arrays(step_dir):
  for path in (step_dir / "state").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.write_bytes(path.read_bytes()[:7])


def remove_metadata(step_dir):
  (step_dir / "state" / "_METADATA").unlink()


def nan_parameters(step_dir):
  """Rewrites the checkpoint with NaN parameters, as a faulty disk or tool might."""
  import jax
  import orbax.checkpoint as ocp

  step = int(step_dir.name)
  manager = checkpointing.Checkpoints(step_dir.parent)
  restored = manager.manager.restore(step)
  state = dict(restored.state)
  state["params"] = jax.tree.map(lambda p: np.full_like(p, np.nan), state["params"])
  shutil.rmtree(step_dir)
  manager.manager.reload()
  manager.manager.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data_key=ocp.args.StandardSave(restored.data_key),
      history=ocp.args.JsonSave(restored.history),
    ),
  )
  manager.close()


@pytest.mark.slow  # trains 10 more steps, 3 times
@pytest.mark.parametrize("corrupt", [truncate_arrays, remove_metadata, nan_parameters])
def test_corrupt_checkpoint_falls_back_to_the_previous_one(corrupt, finished_run, tmp_path, capsys):
  workdir, argv = copy_of(finished_run, tmp_path)
  corrupt(workdir / "checkpoints" / "20")
  code, err = run(argv + ["--total-iter", "30", "--resume"], capsys)
  assert code == 0
  (warning,) = [line for line in err.splitlines() if line.startswith("warning:")]
  assert "checkpoint 20" in warning and "resuming from step 10" in warning
  assert [r["step"] for r in read_rows(workdir)] == [0, 10, 20, 30]
  assert (workdir / "checkpoints-unreadable" / "20").is_dir()  # kept, out of the way
  assert checkpointing.latest_step(workdir / "checkpoints") == 30


def test_no_readable_checkpoint_is_a_one_line_error(finished_run, tmp_path, capsys):
  workdir, argv = copy_of(finished_run, tmp_path)
  for step in ("10", "20"):
    truncate_arrays(workdir / "checkpoints" / step)
  before = snapshot(workdir)
  code, err = run(argv + ["--resume"], capsys)
  assert code == 2 and err.count("\n") == 1
  assert "no readable checkpoint in" in err and "step 20:" in err and "step 10:" in err
  assert snapshot(workdir) == before


@pytest.mark.slow  # trains a run and resumes it
def test_resume_without_workdir_takes_the_newest_run(raw_mnist, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  argv = flags(raw_mnist, tmp_path)
  code, err = run(argv + ["--resume"], capsys)
  assert code == 2 and "no run of mnist_subset_mlp with --method pathprox in runs/" in err
  assert not (tmp_path / "runs").exists()
  assert run(argv) == 0
  (workdir,) = (tmp_path / "runs").iterdir()
  assert capsys.readouterr().out.startswith(f"run directory: runs/{workdir.name}\n")
  assert workdir.name.startswith("mnist_subset_mlp-pathprox-")
  assert run(argv + ["--resume", "--total-iter", "30"]) == 0
  assert capsys.readouterr().out.startswith(
    f"run directory: runs/{workdir.name}\nPathProx groups: "
  )
  assert [p.name for p in (tmp_path / "runs").iterdir()] == [workdir.name]
  assert read_rows(workdir)[-1]["step"] == 30
