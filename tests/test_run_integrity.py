"""A run directory is an honest record of one run, or the command refuses in one line.

Divergence, resume rules, corrupt checkpoints, interrupts, refusing to overwrite,
finding the run to resume, and the command line's help. Runs are tiny MLPs on
generated data; signals go to real subprocesses, and every wait is on a file or
a line the run writes.
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, find_real_mnist, flags, read_rows
from test_experiments import assert_same_run, start_run, wait_for_rows

import configs
from experiments import checkpointing, cli, compare, config_checks, interrupts, workdir_lock


def run(argv, capsys=None):
  """``cli.main`` of mnist_subset_mlp; with ``capsys``, also its stderr."""
  code = cli.main("mnist_subset_mlp", [str(a) for a in argv])
  return code if capsys is None else (code, capsys.readouterr().err)


def snapshot(folder):
  """Every file under ``folder`` with its bytes."""
  return {
    str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
  }


@pytest.fixture(scope="module")
def finished_run(raw_mnist, tmp_path_factory):
  """A 20-step run with checkpoints at 10 and 20 (copied by each test that changes it)."""
  tmp = tmp_path_factory.mktemp("finished")
  workdir = tmp / "run"
  argv = flags(raw_mnist, tmp, workdir=workdir)
  assert run(argv) == 0
  return workdir, argv[: argv.index("--workdir")]


def copy_of(finished_run, tmp_path):
  workdir, argv = finished_run
  shutil.copytree(workdir, tmp_path / "run")
  return tmp_path / "run", argv + ["--workdir", tmp_path / "run"]


# Divergence: the learning rate jumps to 5e36 at epoch 2 (step 10, a checkpoint). At step 11
# the batch loss (of step 10's parameters) is still finite; the parameters are not.
DIVERGE = ["--lr-milestones", "2", "--lr-decay", "1e38", "--method", "wd"]


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


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_at_the_step_reached_and_resume_ends_identically(signum, raw_mnist, tmp_path):
  argv = flags(raw_mnist, tmp_path, total_iter=10**6, log_freq=100, save_freq=10**5)
  workdir = tmp_path / "run"
  process = start_run(argv, workdir)
  wait_for_rows(process, workdir, 2)
  process.send_signal(signum)
  assert process.wait() == 128 + signum
  err = (tmp_path / "run.err").read_text().strip().splitlines()
  prefix = "interrupted at step "
  (line,) = [e for e in err if e.startswith(prefix)]
  step = int(line[len(prefix) :].split(";")[0])
  assert "; checkpoint saved; resume with: python -m experiments.mnist_subset_mlp " in line
  assert checkpointing.latest_step(workdir / "checkpoints") == step > 100
  if signum == signal.SIGTERM:
    return
  command = shlex.split(line.split("resume with: ")[1])
  assert command[-3:] == ["--workdir", str(workdir), "--resume"]
  end = ["--total-iter", str(step + 50)]
  assert cli.main("mnist_subset_mlp", command[3:] + end) == 0
  reference = tmp_path / "uninterrupted"
  assert run(argv + end + ["--workdir", reference]) == 0
  assert_same_run(workdir, reference)


def test_a_second_ctrl_c_aborts_at_once():
  before = signal.getsignal(signal.SIGINT)  # SIG_IGN when started in the background by a shell
  with interrupts.Interrupts() as stop:
    assert stop.requested() is None
    os.kill(os.getpid(), signal.SIGINT)  # handled: only recorded
    assert stop.requested() == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL  # the next one kills
  assert signal.getsignal(signal.SIGINT) is before


def test_lock_is_per_process_index_and_names_its_holder(tmp_path):
  with workdir_lock.WorkdirLock(tmp_path / "run", 0):
    with workdir_lock.WorkdirLock(tmp_path / "run", 1):  # another process of the same job
      pass
    with pytest.raises(workdir_lock.WorkdirInUseError, match=f"pid {os.getpid()} on "):
      workdir_lock.WorkdirLock(tmp_path / "run", 0).acquire()
  assert not (tmp_path / "run").exists()  # created for the run, left as found
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / ".lock.p0").write_text("pid 1 on a crashed host\n")  # stale: no flock
  with workdir_lock.WorkdirLock(tmp_path / "run", 0):
    pass


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
  assert capsys.readouterr().out == f"run directory: runs/{workdir.name}\n"
  assert [p.name for p in (tmp_path / "runs").iterdir()] == [workdir.name]
  assert read_rows(workdir)[-1]["step"] == 30


def help_text(*command):
  """``--help`` of a module, and whether it imported JAX."""
  code = (
    "import runpy, sys\n"
    f"sys.argv = ['x', *{list(command[1:])!r}, '--help']\n"
    f"try: runpy.run_module({command[0]!r}, run_name='__main__')\n"
    "except SystemExit: pass\n"
    "print('JAX IMPORTED' if 'jax' in sys.modules else 'NO JAX')\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
  )
  return result.stdout


@pytest.mark.parametrize(
  "experiment, hidden",
  [
    ("mnist_mlp", ("--channels", "--pool-after", "--train-per-class")),
    ("mnist_subset_mlp", ("--channels", "--pool-after", "--val-size")),
    ("cifar_vgg", ("--features", "--relu", "--train-per-class")),
  ],  # fmt: skip
)
def test_help_describes_each_flag_once_without_jax(experiment, hidden):
  text = help_text(f"experiments.{experiment}")
  assert text.rstrip().endswith("NO JAX")
  options = text[text.index("options:") :]
  config = configs.load_config(experiment)
  for key in config:
    shown = f"  {config_checks.flag(key)} "
    if key == "experiment" or config_checks.flag(key) in hidden:
      assert shown not in options
      continue
    assert options.count(shown) == 1, key
    description = options.split(shown)[1].split("(default:")[0]
    assert len(description.split()) >= 3, key  # a description, not only the metavar
  assert "--batch_size" not in options


def test_compare_help_lists_the_pass_through_flags():
  text = help_text("experiments.compare", "mnist_mlp")
  assert "flags of mnist_mlp, passed to both runs" in text and "  --lr FLOAT " in text
  assert "  --method " not in text and text.rstrip().endswith("NO JAX")
  listed = " ".join(help_text("experiments.compare").split())
  assert (
    "one of cifar_vgg, fashion_mnist_vit, fashion_mnist_vit_adamw, mnist_mlp, mnist_subset_mlp"
    in listed
  )


def test_compare_refuses_method_and_unknown_flags(capsys, tmp_path):
  assert compare.main(["mnist_mlp", "--workdir", str(tmp_path), "--method", "wd"]) == 2
  assert compare.main(["mnist_mlp", "--workdir", str(tmp_path), "--bogus", "1"]) == 2
  assert capsys.readouterr().err.count("error: ") == 2 and not list(tmp_path.iterdir())


def test_real_mnist_found_through_the_environment_first(tmp_path, monkeypatch):
  monkeypatch.setenv("PATHPROX_RAW_DATA_DIR", str(tmp_path))
  assert find_real_mnist() == tmp_path
  monkeypatch.delenv("PATHPROX_RAW_DATA_DIR")
  assert find_real_mnist() == REPO.parent / "shared" / "data" / "mnist"


@pytest.mark.parametrize("ci, outcome", [("true", "1 error"), ("", "1 skipped")])
def test_missing_real_mnist_fails_under_ci_and_skips_otherwise(ci, outcome, tmp_path):
  shutil.copy(REPO / "tests" / "conftest.py", tmp_path)
  (tmp_path / "test_needs_mnist.py").write_text("def test_it(real_mnist):\n  pass\n")
  env = {**os.environ, "CI": ci, "PATHPROX_RAW_DATA_DIR": str(tmp_path / "empty")}
  result = subprocess.run(
    [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
     str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
  )  # fmt: skip
  assert outcome in result.stdout, result.stdout
  assert (result.returncode != 0) == (ci == "true")


def test_processes_of_one_job_stop_together_and_a_second_job_is_refused(raw_mnist, tmp_path):
  multihost = pytest.importorskip("test_multihost", reason="needs the multi-process launcher")
  workdir = tmp_path / "run"
  argv = flags(raw_mnist, tmp_path, total_iter=10**6, log_freq=100, save_freq=10**5)
  argv += ["--workdir", workdir]
  job = multihost.start(argv, processes=2, devices_per_process=2)
  wait_for_rows(job[0], workdir, 2)
  second = multihost.finish(multihost.start(argv, processes=2, devices_per_process=2))
  for (code, err), process in zip(second, job, strict=True):
    assert code == 2 and f"is in use by another run (pid {process.pid} on " in err
  job[0].send_signal(signal.SIGINT)  # one process is interrupted: all stop at the same step
  lines = [err.strip().splitlines()[-1] for _, err in multihost.finish(job)]
  assert [p.returncode for p in job] == [130, 130]
  assert lines[0] == lines[1] and lines[0].startswith("interrupted at step ")
  step = int(lines[0].split()[3].rstrip(";"))
  assert checkpointing.latest_step(workdir / "checkpoints") == step
