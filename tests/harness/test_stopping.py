"""Stopping always works: a run stuck after a signal, a second signal, a save that fails.

Each run is a real subprocess; every wait is on a file or a line it writes. A stuck save
is Orbax's ``CheckpointManager.save`` replaced (in that subprocess only) by one that
writes a file and never returns; a full disk is ``ulimit -f``: a limit on the size of
the files a subprocess writes.
"""

import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, flags, read_rows
from test_multihost import start

from experiments import checkpointing, cli, interrupts

STUCK_SAVE = """
import pathlib, sys, time
import orbax.checkpoint as ocp
from experiments import cli

def stuck(self, *args, **kwargs):
  pathlib.Path(sys.argv[1]).touch()
  time.sleep(10**6)

ocp.CheckpointManager.save = stuck
sys.exit(cli.main("mnist_subset_mlp", sys.argv[2:]))
"""


def start_stuck_run(raw_mnist, tmp_path, **env):
  """A run whose first save never returns; returns it, the file it touches, and its stderr."""
  argv = flags(raw_mnist, tmp_path, total_iter=10**6, workdir=tmp_path / "run")
  saving, err = tmp_path / "saving", tmp_path / "run.err"
  with open(err, "w") as stderr:
    process = subprocess.Popen(
      [sys.executable, "-c", STUCK_SAVE, str(saving), *argv],
      cwd=REPO,
      env={**os.environ, **env},
      stdout=subprocess.DEVNULL,
      stderr=stderr,
    )
  return process, saving, err


def lines_after(path, offset):
  """The lines of ``path`` past byte ``offset`` (what the run printed since)."""
  return path.read_bytes()[offset:].decode().strip().splitlines()


def wait_for(process, condition):
  """Waits until ``condition()`` holds while ``process`` runs."""
  while not condition():
    assert process.poll() is None, f"the run ended (exit {process.returncode})"
    time.sleep(0.05)  # polling a file the run writes, not a guess at its speed


@pytest.mark.slow  # a subprocess that waits for its watchdog
def test_a_run_stuck_in_a_save_is_ended_by_the_watchdog(raw_mnist, tmp_path):
  process, saving, err = start_stuck_run(raw_mnist, tmp_path, **{interrupts.STOP_TIMEOUT: "2"})
  wait_for(process, saving.exists)
  offset = err.stat().st_size  # before: preparing the data set
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=120) == 128 + signal.SIGTERM
  lines = lines_after(err, offset)
  assert lines[0].startswith("SIGTERM: stopping with a checkpoint after this stretch of steps")
  assert lines[-1].startswith("error: the run did not stop within 2 s of SIGTERM")
  assert "it was waiting in checkpointing.Checkpoints.save (line " in lines[-1]
  assert len(lines) == 2


@pytest.mark.slow  # a subprocess
def test_a_second_sigterm_ends_a_stuck_run_at_once(raw_mnist, tmp_path):
  process, saving, err = start_stuck_run(raw_mnist, tmp_path)  # the watchdog: 60 s
  wait_for(process, saving.exists)
  offset = err.stat().st_size
  process.send_signal(signal.SIGTERM)
  wait_for(process, lambda: lines_after(err, offset))
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=30) == 128 + signal.SIGTERM  # well before the watchdog
  lines = lines_after(err, offset)
  assert lines[1:] == ["error: a second SIGTERM: stopped at once, without a checkpoint"]


@pytest.mark.slow  # a subprocess
def test_a_full_disk_during_a_save_is_one_line_and_keeps_only_complete_checkpoints(
  raw_mnist, tmp_path
):
  workdir = tmp_path / "run"
  argv = flags(raw_mnist, tmp_path, workdir=workdir, log_freq=10, save_freq=20, total_iter=20)
  assert cli.main("mnist_subset_mlp", argv) == 0  # prepares the data set, saves step 20
  rows = read_rows(workdir)
  command = [sys.executable, "-m", "experiments.mnist_subset_mlp", *argv, "--resume"]
  # Files cannot grow past 40 KiB (a checkpoint's parameters take about 100 kB); SIGXFSZ is
  # ignored, so that a write past the limit fails with EFBIG as on a full disk.
  limited = f"trap '' XFSZ; ulimit -f 40; exec {shlex.join([*command, '--total-iter', '60'])}"
  full = subprocess.run(
    ["bash", "-c", limited], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert full.returncode == 1
  assert full.stderr.splitlines() == [
    f"error: the checkpoint at step 40 could not be written in {workdir / 'checkpoints'}: "
    "File too large (errno 27)"
  ]
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["20"]  # no tmp folder
  assert read_rows(workdir) == rows  # rows 30 and 40 rolled back: no row past step 20
  assert checkpointing.latest_step(workdir / "checkpoints") == 20


@pytest.mark.slow  # two processes
def test_a_job_whose_process_is_gone_stops_at_once_with_one_line(raw_mnist, tmp_path):
  workdir = tmp_path / "run"
  argv = flags(raw_mnist, tmp_path, total_iter=10**6, log_freq=10, save_freq=10**5)
  job = start(argv + ["--workdir", workdir], processes=2, devices_per_process=1)
  wait_for(job[0], lambda: (workdir / "metrics.jsonl").exists() and len(read_rows(workdir)) >= 2)
  job[1].kill()
  code, err = job[0].wait(timeout=60), job[0].communicate()[1]  # JAX's heartbeat: 100 s
  job[1].wait()
  assert code == 1, err
  assert "Traceback" not in err
  assert err.strip().splitlines()[-1].startswith("error: this job lost a process (")
  assert checkpointing.latest_step(workdir / "checkpoints") is None  # none due yet: none
