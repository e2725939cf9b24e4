"""Multi-process (multi-host) JAX jobs: joining one, and the few collectives the harness needs.

Every process runs the same command. The job is described by the environment:

- ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID``: read here and passed to :func:`jax.distributed.initialize` (JAX 0.10
  itself reads only the address). Any one left unset is auto-detected by JAX, if it can.
- With none of them set, JAX's own cluster detection decides (a Cloud TPU pod slice, a
  SLURM job step, Open MPI): when it finds several processes ``jax.distributed.initialize()``
  is called with no arguments; on a plain machine or a single host nothing is called and
  the run is single-process.
- ``JAX_INITIALIZATION_TIMEOUT`` (seconds, default 300): how long a process waits for all
  its peers. A process that cannot reach them prints one line and exits with code 1 within
  that time (JAX itself would abort with a C++ stack trace).
- ``JAX_HEARTBEAT_TIMEOUT`` (seconds, default 100, JAX's): how long the job waits for a
  silent process before it fails every other one. A collective with a process that is gone
  fails at once; the CLI then ends each process with one line (:func:`leave`).

On CPU the processes talk through the gloo collectives (``jax_cpu_collectives_implementation``
unless ``JAX_CPU_COLLECTIVES_IMPLEMENTATION`` chooses another).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from typing import Any

import jax
import numpy as np

ADDRESS, NUM_PROCESSES, PROCESS_ID = (
  "JAX_COORDINATOR_ADDRESS",
  "JAX_NUM_PROCESSES",
  "JAX_PROCESS_ID",
)
TIMEOUT = "JAX_INITIALIZATION_TIMEOUT"
DEFAULT_TIMEOUT_S = 300  # JAX's own default
HEARTBEAT_TIMEOUT = "JAX_HEARTBEAT_TIMEOUT"
DEFAULT_HEARTBEAT_TIMEOUT_S = 100  # JAX's own default
# JAX's own deadline comes this much after ours: it only backs up the one-line exit.
BACKSTOP_S = 30


class LaunchError(ValueError):
  """The multi-process environment variables are not usable."""


class DisagreementError(ValueError):
  """The processes of one job were started with different configs or run options."""


def _int_variable(name: str, minimum: int) -> int | None:
  """The integer in environment variable ``name`` (None if unset)."""
  text = os.environ.get(name)
  if text is None:
    return None
  if not text.strip().isdigit() or int(text) < minimum:
    raise LaunchError(f"{name}={text!r}: expected an integer >= {minimum}")
  return int(text)


def detected_processes() -> int:
  """How many processes JAX's own cluster detection finds (1: no cluster, or a single host).

  JAX has no public way to ask; these are the checks ``jax.distributed.initialize()``
  runs when it is given no arguments.
  """
  from jax._src.clusters import ClusterEnv

  for env in ClusterEnv._cluster_types:
    if not env.opt_in_only_method and env.is_env_present():
      return env.get_process_count()
  return 1


def initialize() -> None:
  """Joins the multi-process job the environment describes; a no-op on a plain machine.

  Raises:
    LaunchError: a variable is malformed, or JAX cannot complete the job's description.
  """
  if jax.distributed.is_initialized():
    return
  address = os.environ.get(ADDRESS)
  num_processes = _int_variable(NUM_PROCESSES, 1)
  process_id = _int_variable(PROCESS_ID, 0)
  timeout = _int_variable(TIMEOUT, 1) or DEFAULT_TIMEOUT_S
  heartbeat_timeout = _int_variable(HEARTBEAT_TIMEOUT, 1) or DEFAULT_HEARTBEAT_TIMEOUT_S
  if (address, num_processes, process_id) == (None, None, None) and detected_processes() == 1:
    return
  if num_processes is not None and process_id is not None and process_id >= num_processes:
    raise LaunchError(f"{PROCESS_ID}={process_id} must be below {NUM_PROCESSES}={num_processes}")
  if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  known = None not in (process_id, num_processes)
  who = f"process {process_id} of {num_processes}" if known else "this process"
  watchdog = threading.Timer(timeout, _give_up, (who, address, timeout))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(
      address,
      num_processes,
      process_id,
      initialization_timeout=timeout + BACKSTOP_S,
      heartbeat_timeout_seconds=heartbeat_timeout,
    )
  except ValueError as e:  # JAX could not detect what the environment left unset
    raise LaunchError(
      f"cannot join the multi-process job: {e}; set {ADDRESS}, {NUM_PROCESSES} and {PROCESS_ID}"
    ) from None
  finally:
    watchdog.cancel()


def _give_up(who: str, address: str | None, timeout: int) -> None:
  """Ends the process with one line: JAX's connect blocks, and failing it aborts noisily."""
  leave(
    f"error: {who} could not reach its peers at {address or 'the detected coordinator'} "
    f"within {timeout} s ({TIMEOUT}); start the same command on every process, "
    f"with {PROCESS_ID} = 0 .. {NUM_PROCESSES}-1 and the address of process 0"
  )


def leave(line: str) -> None:
  """Ends the process now with ``line`` on stderr and exit code 1.

  For a process whose peers are gone: JAX's own shutdown would wait for them (its
  heartbeat, 100 s) and then abort with a C++ stack trace.
  """
  print(line, file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)


def broadcast_from_process_zero(value: np.ndarray) -> np.ndarray:
  """Process 0's ``value`` on every process (a collective, and so also a barrier)."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils

  return multihost_utils.broadcast_one_to_all(value)


def text_from_process_zero(text: str) -> str:
  """Process 0's ``text`` on every process (a collective: every process must call it).

  Example:
    >>> text_from_process_zero("runs/mnist_mlp-pathprox-20250101-120000")  # one process
    'runs/mnist_mlp-pathprox-20250101-120000'
  """
  if jax.process_count() == 1:
    return text
  encoded = np.frombuffer(text.encode(), np.uint8)
  (length,) = broadcast_from_process_zero(np.asarray([encoded.size], np.int64))
  padded = np.zeros(int(length), np.uint8)
  padded[: min(encoded.size, int(length))] = encoded[: int(length)]
  return bytes(np.asarray(broadcast_from_process_zero(padded), np.uint8)).decode()


def any_process(flag: bool) -> bool:
  """Whether ``flag`` is set on any process of the job (every process gets the same answer)."""
  return bool(max_over_processes(int(flag))[0])


def max_over_processes(*values: int) -> list[int]:
  """Each value's maximum over all processes (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return list(values)
  from jax.experimental import multihost_utils

  gathered = multihost_utils.process_allgather(np.asarray(values, np.int64))
  return [int(v) for v in np.max(np.asarray(gathered), axis=0)]


def sync_processes(name: str) -> None:
  """Waits for every process of the job to get here."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def check_agreement(options: dict[str, Any]) -> None:
  """Checks that every process of the job holds the same ``options`` (a collective).

  A digest of the options is gathered first (a fixed-size array); only when the
  digests differ are the options themselves exchanged, to name what differs. Every
  process gets the same answer, so all of them raise together and none is left
  waiting in a later collective.

  Args:
    options: a flat dict of JSON-serialisable values (the resolved config, run options).

  Raises:
    DisagreementError: some processes hold other values; the message names each
      differing key and every process's value.
  """
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils

  text = json.dumps(options, sort_keys=True, default=str).encode()
  digest = np.frombuffer(hashlib.sha256(text).digest(), np.uint8)
  digests = np.asarray(multihost_utils.process_allgather(digest))
  if (digests == digests[0]).all():
    return
  (longest,) = max_over_processes(len(text))
  padded = np.zeros(longest, np.uint8)
  padded[: len(text)] = np.frombuffer(text, np.uint8)
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  held = [json.loads(bytes(row).rstrip(b"\0")) for row in gathered]
  keys = sorted(set().union(*held), key=lambda k: (k not in options, k))
  differing = []
  for key in keys:
    values = [h.get(key, "(unset)") for h in held]
    if any(v != values[0] for v in values):
      each = ", ".join(f"process {i}: {v}" for i, v in enumerate(values))
      differing.append(f"{key} ({each})")
  raise DisagreementError(
    f"the processes of this job disagree: {'; '.join(differing)}; start the same command "
    "on every process"
  )
