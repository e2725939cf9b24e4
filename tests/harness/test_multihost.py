"""Multi-process training on this machine: 2 processes x 2 CPU devices through the real CLI.

Each process is a real JAX multi-controller process (``jax.distributed`` with gloo on
127.0.0.1), started the way the README says. The runs are shared between tests
(module-scoped fixtures): they are the slowest tests of the suite.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import xla_flags
from test_experiments import REPO, assert_rows_close, flags, read_rows

from experiments import cli, distributed, input_pipeline

# One xdist worker runs this file (--dist loadgroup): its runs are made once.
pytestmark = pytest.mark.xdist_group("multihost")

STEPS, EVERY = 100, 50  # at lr 0.05 the loss falls below half its start by step 50 (2.31 -> 0.96)
RUN = {"total_iter": STEPS, "log_freq": EVERY, "save_freq": EVERY}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(argv, processes, devices_per_process, command=None, per_process=False, **env):
  """Starts the same command (default: the CLI with ``argv``) as ``processes`` processes.

  With ``per_process``, ``argv`` holds each process's own flags (a job started wrongly).
  """
  port = free_port()
  started = []
  for index in range(processes):
    job = {}
    if processes > 1:
      job = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
             "JAX_NUM_PROCESSES": str(processes), "JAX_PROCESS_ID": str(index)}  # fmt: skip
    process_env = {**os.environ, **job, **env}
    process_env["XLA_FLAGS"] = xla_flags(devices_per_process)
    started.append(
      subprocess.Popen(
        command
        or [
          sys.executable,
          "-m",
          "experiments.mnist_subset_mlp",
          *map(str, argv[index] if per_process else argv),
        ],
        cwd=REPO,
        env=process_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
      )  # fmt: skip
    )
  return started


def finish(processes, timeout=600):
  """Waits for every process; returns ``[(exit code, stderr)]``."""
  return [(p.wait(timeout), p.communicate()[1]) for p in processes]


def run(argv, processes, devices_per_process):
  """Runs the CLI command as ``processes`` processes to its end; all must exit 0."""
  for code, err in finish(start(argv, processes, devices_per_process)):
    assert code == 0, err


def saved_state(workdir, step):
  """A checkpoint's state as NumPy arrays, whatever topology saved it."""
  path = workdir / "checkpoints" / str(step) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, restore_args=as_numpy)


@pytest.fixture(scope="module")
def argv(raw_mnist, tmp_path_factory):
  return flags(raw_mnist, tmp_path_factory.mktemp("multihost"), **RUN)


@pytest.fixture(scope="module")
def one_process(argv, tmp_path_factory):
  """1 process x 4 devices, in this process (it also prepares the TFDS data set)."""
  workdir = tmp_path_factory.mktemp("one_process") / "run"
  assert cli.main("mnist_subset_mlp", [*argv, "--workdir", str(workdir), "--num-devices", "4"]) == 0
  return workdir


@pytest.fixture(scope="module")
def two_processes(argv, one_process, tmp_path_factory):
  """2 processes x 2 devices, the same command on both."""
  workdir = tmp_path_factory.mktemp("two_processes") / "run"
  run(argv + ["--workdir", workdir], processes=2, devices_per_process=2)
  return workdir


@pytest.mark.slow  # several processes
def test_two_processes_equal_one_process_with_as_many_devices(one_process, two_processes):
  rows = read_rows(two_processes)
  assert [r["step"] for r in rows] == list(range(0, STEPS + 1, EVERY))  # one writer: no repeats
  assert_rows_close(rows, read_rows(one_process), rtol=1e-5)
  assert rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"]
  assert sorted(int(p.name) for p in (two_processes / "checkpoints").iterdir()) == [EVERY, STEPS]


@pytest.mark.slow  # several processes
def test_killed_processes_resume_to_bitwise_identical_parameters(argv, two_processes, tmp_path):
  workdir = tmp_path / "killed"
  processes = start(argv + ["--workdir", workdir], processes=2, devices_per_process=2)
  checkpoints, deadline = workdir / "checkpoints", time.time() + 300
  while not (checkpoints / str(EVERY)).is_dir():  # Orbax renames a step's folder once complete
    assert time.time() < deadline and all(p.poll() is None for p in processes), finish(processes)
    time.sleep(0.05)
  assert all(p.poll() is None for p in processes), "a process ended before it could be killed"
  for p in processes:
    p.send_signal(signal.SIGKILL)
  finish(processes)
  assert read_rows(workdir)[-1]["step"] < STEPS

  run(argv + ["--workdir", workdir, "--resume"], processes=2, devices_per_process=2)
  assert [r["step"] for r in read_rows(workdir)] == list(range(0, STEPS + 1, EVERY))
  resumed, uninterrupted = saved_state(workdir, STEPS), saved_state(two_processes, STEPS)
  assert int(resumed["step"]) == STEPS
  jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)


# SLURM's variables as ``srun --ntasks=2`` sets them for task 1 (JAX finds the job in them).
SLURM_TASK_1 = {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
                "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}  # fmt: skip


ALONE_TIMEOUT = 2  # seconds a process alone waits for its peers
LAUNCHES = {"process 0": "process 0 of 2", "process 1": "process 1 of 2", "slurm": "this process"}


@pytest.fixture(scope="module")
def alone(argv, tmp_path_factory):
  """``{launch: (exit code, stderr, workdir)}`` of one process started alone for each launch.

  The three wait for their peers at the same time (their waits are idle time).
  """
  started = {}
  for launch in LAUNCHES:
    if launch == "slurm":  # nothing set but SLURM's variables: JAX's auto-detection is used
      variables = SLURM_TASK_1
    else:
      variables = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}",
                   "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": launch[-1]}  # fmt: skip
    workdir = tmp_path_factory.mktemp("alone") / "run"
    (process,) = start(argv + ["--workdir", workdir], 1, 2,
                       JAX_INITIALIZATION_TIMEOUT=str(ALONE_TIMEOUT), **variables)  # fmt: skip
    started[launch] = process, workdir
  # finish raises if one hangs
  return {launch: (*finish([p], timeout=60)[0], w) for launch, (p, w) in started.items()}


@pytest.mark.slow  # several processes
@pytest.mark.parametrize("launch, who", LAUNCHES.items())
def test_a_process_alone_fails_with_one_line_within_the_timeout(alone, launch, who):
  code, err, workdir = alone[launch]
  assert code != 0
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert f"{who} could not reach its peers" in lines[0]
  assert f"within {ALONE_TIMEOUT} s" in lines[0]
  assert not workdir.exists()


def test_jax_cluster_detection_counts_the_processes(monkeypatch):
  for name in SLURM_TASK_1:
    monkeypatch.delenv(name, raising=False)
  assert distributed.detected_processes() == 1  # this machine: no cluster
  for name, value in SLURM_TASK_1.items():
    monkeypatch.setenv(name, value)
  assert distributed.detected_processes() == 2
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert distributed.detected_processes() == 1  # a single task: nothing to join


# Each process writes the batch indices its own devices take at steps 0..4 (shard_map over
# the training mesh, as the step does): ``[step, its part]``.
PARTS = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import PartitionSpec as P
from experiments import distributed, input_pipeline, parallel
distributed.initialize()
mesh = parallel.make_mesh(0)
order = parallel.replicated(input_pipeline.epoch_order(jax.random.key(0), 0, 30, 7), mesh)
def parts(order):
  device = jax.lax.axis_index(parallel.AXIS)
  steps = [input_pipeline.device_batch(order, s, device, 7, mesh.size) for s in range(5)]
  return jnp.stack(steps)[None]
out = jax.jit(jax.shard_map(parts, mesh=mesh, in_specs=P(), out_specs=P(parallel.AXIS)))(order)
mine = np.concatenate([np.asarray(s.data) for s in out.addressable_shards])
np.save(f"{sys.argv[1]}/p{jax.process_index()}.npy", mine.transpose(1, 0, 2).reshape(5, -1))
"""


@pytest.mark.slow  # several processes
def test_two_processes_take_disjoint_parts_that_make_up_the_global_batch(tmp_path):
  command = [sys.executable, "-c", PARTS, str(tmp_path)]
  for code, err in finish(start([], 2, 2, command=command), timeout=300):
    assert code == 0, err
  parts = [np.load(tmp_path / f"p{p}.npy") for p in (0, 1)]
  order = np.asarray(input_pipeline.epoch_order(jax.random.key(0), 0, 30, 7))
  for step in range(5):
    global_batch = order[step * 7 : (step + 1) * 7]  # what one process alone takes
    assert parts[0][step].size == parts[1][step].size == 4  # 2 devices x ceil(7 / 4)
    union = np.concatenate([parts[0][step], parts[1][step]])
    np.testing.assert_array_equal(union[union >= 0], global_batch[global_batch >= 0])


@pytest.mark.parametrize(
  "batch_size, num_devices, processes",
  [(40, 4, 2), (40, 3, 1), (200, 3, 1), (7, 8, 2), (1, 2, 2), (50, 6, 3)],
)
def test_the_processes_parts_make_up_the_global_batch(batch_size, num_devices, processes):
  num_examples = 3 * batch_size + 1
  order = input_pipeline.epoch_order(jax.random.key(0), 0, num_examples, batch_size)
  per_process = num_devices // processes
  for step in range(input_pipeline.steps_per_epoch(num_examples, batch_size)):
    parts = [
      np.concatenate([
        np.asarray(input_pipeline.device_batch(order, step, d, batch_size, num_devices))
        for d in range(p * per_process, (p + 1) * per_process)
      ])
      for p in range(processes)
    ]  # fmt: skip
    union = np.concatenate(parts)
    global_batch = np.asarray(order[step * batch_size : (step + 1) * batch_size])
    np.testing.assert_array_equal(union[union >= 0], global_batch[global_batch >= 0])
    assert (union >= 0).sum() == (global_batch >= 0).sum()  # each index taken once


@pytest.mark.slow  # trains two runs
def test_a_batch_that_does_not_divide_by_the_devices_equals_one_device(raw_mnist, tmp_path):
  rows = {}
  for n in (1, 3):
    workdir = tmp_path / f"d{n}"
    argv = flags(raw_mnist, tmp_path, workdir=workdir, num_devices=n, batch_size=50,
                 eval_batch_size=198)  # fmt: skip
    assert cli.main("mnist_subset_mlp", argv) == 0
    rows[n] = read_rows(workdir)
  assert_rows_close(rows[1], rows[3], rtol=1e-5)


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--parallel", "pmap"], "--parallel pmap runs on one process, not 2"),
    (["--num-devices", "3"], "--num-devices 3 must be a multiple of the 2 processes"),
  ],
)
def test_layouts_two_processes_cannot_run_are_refused(argv, message, monkeypatch, capsys, tmp_path):
  monkeypatch.setattr(jax, "process_count", lambda: 2)  # one real process: no collective
  assert cli.main("mnist_subset_mlp", [*argv, "--workdir", str(tmp_path / "run")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and message in err


@pytest.mark.parametrize(
  "variables, message",
  [
    ({"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES='two': expected an integer >= 1"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, "JAX_PROCESS_ID=2 must be below"),
    ({"JAX_PROCESS_ID": "0", "JAX_INITIALIZATION_TIMEOUT": "0"}, "expected an integer >= 1"),
  ],
)
def test_bad_launch_variables_are_a_one_line_error(variables, message, monkeypatch, capsys):
  for name, value in variables.items():
    monkeypatch.setenv(name, value)
  assert cli.main("mnist_subset_mlp", []) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ") and message in err
