"""Interrupts and locks: a signal saves and tells how to resume; one writer per run folder.

Signals go to real subprocesses, and every wait is on a file or a line the run writes.
"""

import os
import shlex
import signal

import pytest
from conftest import flags
from test_experiments import assert_same_run, start_run, wait_for_rows

from experiments import checkpointing, cli, interrupts, workdir_lock


def run(argv):
  """``cli.main`` of mnist_subset_mlp."""
  return cli.main("mnist_subset_mlp", [str(a) for a in argv])


@pytest.mark.slow  # a subprocess
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


def test_the_first_signal_is_recorded_and_the_handlers_are_restored():
  before = signal.getsignal(signal.SIGINT)  # SIG_IGN when started in the background by a shell
  with interrupts.Interrupts() as stop:
    assert stop.requested() is None
    os.kill(os.getpid(), signal.SIGINT)  # handled: only recorded (a second one ends the process)
    assert stop.requested() == signal.SIGINT
  assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "soon"])
def test_a_bad_stop_timeout_is_a_one_line_error(text, monkeypatch, capsys, tmp_path):
  monkeypatch.setenv(interrupts.STOP_TIMEOUT, text)
  assert run(["--total-iter", "1", "--workdir", tmp_path / "run"]) == 2
  assert not (tmp_path / "run").exists()
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and f"PATHPROX_STOP_TIMEOUT={text!r}: expected a positive" in err


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


@pytest.mark.slow  # two processes
def test_processes_of_one_job_stop_together_and_a_second_job_is_refused(raw_mnist, tmp_path):
  multihost = pytest.importorskip("test_multihost", reason="needs the multi-process launcher")
  workdir = tmp_path / "run"
  argv = flags(raw_mnist, tmp_path, total_iter=10**6, log_freq=10, save_freq=10**5)
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
