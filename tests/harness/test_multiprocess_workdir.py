"""A 2-process job without ``--workdir``, a failed save in one, and TensorBoard cut back.

Two real processes (``jax.distributed`` with gloo on 127.0.0.1) through the real CLI, each
started in a folder of its own ``runs/``. Process 1's clock reads an hour ahead (its
``time.strftime``), as another host's may: the folder is still process 0's choice.
A full disk is ``ulimit -f`` (see ``test_stopping``).
"""

import os
import shlex
import shutil
import struct
import subprocess
import sys

import pytest
from conftest import REPO, flags, read_rows, xla_flags
from tensorboardX.proto.event_pb2 import Event
from test_multihost import finish, free_port

from experiments import metrics_writer

# One xdist worker runs this file (--dist loadgroup): its job is started once.
pytestmark = pytest.mark.xdist_group("multiprocess_workdir")

# The CLI, with this process's clock an hour ahead when its first argument is "ahead".
CLOCK = """
import sys, time
from experiments import cli
if sys.argv[1] == "ahead":
  real = time.strftime
  time.strftime = lambda fmt, t=None: real(fmt, time.localtime(time.time() + 3600) if t is None
                                           else t)
sys.exit(cli.main("mnist_subset_mlp", sys.argv[2:]))
"""


def start_job(argv, cwd, limit="unlimited"):
  """The same command as 2 processes of 1 device in ``cwd`` (or each in its own: a list of 2);
  files limited to ``limit`` KiB."""
  port, job = free_port(), []
  cwds = cwd if isinstance(cwd, list) else [cwd, cwd]
  for index, (clock, cwd) in enumerate(zip(("right", "ahead"), cwds, strict=True)):
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
           "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(index),
           "XLA_FLAGS": xla_flags(1)}  # fmt: skip
    command = shlex.join([sys.executable, "-c", CLOCK, clock, *map(str, argv)])
    limited = f"trap '' XFSZ; ulimit -f {limit}; exec {command}"  # EFBIG, as on a full disk
    job.append(
      subprocess.Popen(
        ["bash", "-c", limited],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )  # fmt: skip
    )
  return job


def scalar_steps(folder):
  """``{tag: [step, ...]}`` of the TensorBoard scalars in ``folder``'s event files."""
  steps = {}
  for path in sorted(folder.glob("events.out.tfevents.*")):
    data, offset = path.read_bytes(), 0
    while offset < len(data):
      (length,) = struct.unpack_from("<Q", data, offset)
      event = Event.FromString(data[offset + 12 : offset + 12 + length])
      assert offset + 12 + length + 4 <= len(data), f"{path}: a record cut off"
      offset += 12 + length + 4
      for value in event.summary.value:
        steps.setdefault(value.tag, []).append(event.step)
  return steps


@pytest.fixture(scope="module")
def job(raw_mnist, tmp_path_factory):
  """A 2-process job without --workdir, TensorBoard on: ``(its folder, process 0's stdout)``."""
  cwd = tmp_path_factory.mktemp("job")
  argv = flags(raw_mnist, cwd, log_freq=10, save_freq=20, total_iter=20, tensorboard="true")
  processes = start_job(argv, cwd)
  outputs = [p.communicate(timeout=600) for p in processes]
  for process, (_, err) in zip(processes, outputs, strict=True):
    assert process.returncode == 0, err
  (workdir,) = (cwd / "runs").iterdir()
  return workdir, outputs[0][0]


@pytest.mark.slow  # two processes
def test_without_workdir_every_process_uses_the_folder_process_zero_chose(job):
  workdir, stdout = job
  assert f"run directory: runs/{workdir.name}\n" in stdout
  assert [r["step"] for r in read_rows(workdir)] == [0, 10, 20]
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["20"]
  assert scalar_steps(workdir / "tensorboard")["train_loss"] == [0, 10, 20]


@pytest.mark.slow  # two processes
def test_a_failed_save_in_a_two_process_job_is_one_line_exit_1_and_loses_nothing(job, tmp_path):
  workdir = tmp_path / "runs" / job[0].name
  shutil.copytree(job[0], workdir)
  rows = read_rows(workdir)
  # No --workdir: the newest run in runs/, with its own config, to step 60. Files cannot
  # grow past 40 KiB (a checkpoint's parameters take about 100 kB).
  results = finish(start_job(["--resume", "--total-iter", 60], tmp_path, limit=40), timeout=600)
  message = (
    f"error: the checkpoint at step 40 could not be written in {workdir / 'checkpoints'}: "
    "File too large (errno 27)"
  )
  for code, err in results:
    assert (code, err.splitlines()) == (1, [message])
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["20"]  # no tmp folder
  assert read_rows(workdir) == rows  # rows 30 and 40 cut back: none past step 20
  steps = scalar_steps(workdir / "tensorboard")
  assert steps["train_loss"] == [0, 10, 20] and max(max(s) for s in steps.values()) == 20


def test_tensorboard_events_are_cut_back_with_the_metrics(tmp_path):
  rows = [{"step": step, "train_loss": 1.0 / (step + 1), "method": "pathprox"}
          for step in range(0, 50, 10)]  # fmt: skip
  path, events = tmp_path / "metrics.jsonl", tmp_path / "tensorboard"
  writer = metrics_writer.MetricsWriter(path, [], tensorboard_dir=events)
  for row in rows[:4]:
    writer.append(row)
  writer.close()  # killed after step 30, say; resumed from the checkpoint at step 10
  writer = metrics_writer.MetricsWriter(path, rows[:2], tensorboard_dir=events)
  assert scalar_steps(events)["train_loss"] == [0, 10]
  writer.append(rows[2])
  writer.append(rows[3])
  writer.close()
  writer.roll_back(20)  # a failed save after step 30: the checkpoint at step 20 is the last
  assert scalar_steps(events) == {"train_loss": [0, 10, 20]}
  assert [r["step"] for r in read_rows(tmp_path)] == [0, 10, 20]


@pytest.mark.slow  # two processes
def test_a_resume_without_a_run_to_resume_is_one_line_on_every_process(tmp_path):
  # Only process 1 sees a run folder (another host's disk, say): process 0's view decides.
  zero, one = tmp_path / "zero", tmp_path / "one"
  zero.mkdir()
  (one / "runs" / "mnist_subset_mlp-pathprox-20250101-000000").mkdir(parents=True)
  results = finish(start_job(["--resume"], [zero, one]), timeout=600)
  message = (
    "error: --resume: no run of mnist_subset_mlp with --method pathprox in runs/ to resume; "
    "pass --workdir"
  )
  for code, err in results:
    assert (code, err.splitlines()) == (2, [message])
  assert list(zero.iterdir()) == [] and list((one / "runs").rglob("*.json")) == []
