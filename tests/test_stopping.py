"""Stopping always works: a run stuck after a signal, a second signal, and a failed save.

Each run is a real subprocess; every wait is on a file or a line it writes. A stuck save
is Orbax's ``CheckpointManager.save`` replaced (in that subprocess only) by one that
writes a file and never returns.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, flags

from experiments import interrupts

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
