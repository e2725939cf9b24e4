"""Orbax checkpoints of a run: state, data-order key and metrics history."""

from __future__ import annotations

import contextlib
import gc
import inspect
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from experiments import distributed, run_folder
from experiments.resume import WorkdirError


class NoReadableCheckpointError(ValueError):
  """Every checkpoint of a run failed to restore or to pass the checks."""


class SaveError(OSError):
  """A checkpoint could not be written (a full disk, a lost mount, ...)."""


TMP_MARK = ".orbax-checkpoint-tmp"  # in the name of Orbax's folders of a save in progress


def latest_step(directory: Path) -> int | None:
  """The step of the latest checkpoint in ``directory`` (None: none, or no such folder)."""
  return (run_folder.checkpoint_steps(directory) or [None])[-1]


def all_finite(tree: Any) -> bool:
  """Whether every floating-point leaf of ``tree`` is finite."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return bool(jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))) if leaves else True


@contextlib.contextmanager
def quiet_abandoned_coroutines(keep_after: type[Exception] | None = None) -> Iterator[None]:
  """While open, ``sys.unraisablehook`` drops what a failed Orbax restore or save leaves behind.

  When a restore or a save fails, its abandoned coroutines and TensorStore's late callbacks
  (for the restore's finished event loop) each print a traceback ("Event loop is
  closed"); the failure itself is already reported. Anything else goes on to the
  hook installed before, which is back in place when the block ends (after a garbage
  collection has finalised what the failed restores abandoned) — unless it ends in a
  ``keep_after`` error: a failed save's threads call back later still, while the process
  reports the error and exits.
  """
  previous = sys.unraisablehook

  def hook(unraisable) -> None:
    error = unraisable.exc_value
    closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
    if not (closed_loop or inspect.iscoroutine(unraisable.object)):
      previous(unraisable)

  sys.unraisablehook = hook
  ended_in = None
  try:
    yield
  except BaseException as e:
    ended_in = e
    raise
  finally:
    gc.collect()
    if keep_after is None or not isinstance(ended_in, keep_after):
      sys.unraisablehook = previous


def first_line(error: Exception, width: int = 100) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:width] if text else ''}"


def _write_error(error: Exception) -> str:
  """The system's reason for a failed write (TensorStore's ``os_error_code``), else the error."""
  code = getattr(error, "errno", None) or re.search(r"os_error_code='(\d+)'", str(error))
  if code is None:
    return first_line(error, 160)
  number = code if isinstance(code, int) else int(code.group(1))
  return f"{os.strerror(number)} (errno {number})"


def _not_orbax_error(record: logging.LogRecord) -> bool:
  """False for an error logged by Orbax, or by asyncio about Orbax's tasks."""
  return not (record.levelno >= logging.ERROR and "/orbax/" in f"{record.pathname} {record.msg}")


_LOGGERS = ("absl", "asyncio")  # where Orbax's threads and tasks log a failed save


@contextlib.contextmanager
def orbax_errors_quiet() -> Iterator[None]:
  """While open, Orbax's own error log lines (and tracebacks) are dropped.

  A failed save is raised by :meth:`Checkpoints.save` or :meth:`Checkpoints.wait` as one
  :class:`SaveError`; Orbax would also log it from each of its threads, hundreds of lines.
  When the block ends in a :class:`SaveError`, both filters stay: the failed save's threads
  log and call back later still, while the process reports the error and exits.
  """
  for name in _LOGGERS:
    logging.getLogger(name).addFilter(_not_orbax_error)
  failed = False
  try:
    with quiet_abandoned_coroutines(keep_after=SaveError):
      yield
  except SaveError:
    failed = True
    raise
  finally:
    for name in _LOGGERS if not failed else ():
      logging.getLogger(name).removeFilter(_not_orbax_error)


def _leaf_paths(tree: Any) -> set[str]:
  return {jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)}


def fit_problem(restored: Any, abstract: Any) -> str | None:
  """What is wrong with a restored tree against its template (structure, shapes, values)."""
  if jax.tree.structure(restored) != jax.tree.structure(abstract):
    saved, expected = _leaf_paths(restored), _leaf_paths(abstract)
    return (
      f"its structure is not the run's (missing {sorted(expected - saved)[:3]}, "
      f"unexpected {sorted(saved - expected)[:3]})"
    )
  paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(abstract)]
  for path, a, b in zip(paths, jax.tree.leaves(restored), jax.tree.leaves(abstract), strict=True):
    if a.shape != b.shape or a.dtype != b.dtype:
      return f"{path} is {a.dtype}{list(a.shape)}, expected {b.dtype}{list(b.shape)}"
  if not all_finite(restored):
    return "it holds non-finite values"
  return None


def _split_model_state(state: Any) -> tuple[dict[str, Any], dict[str, Any]]:
  """A :class:`~experiments.train_step.TrainState` as saved: its other fields (as a dict, which
  Orbax writes as it wrote the state before the model state) and its model state, saved as
  an item of its own only where there is one, so that runs without are saved as before."""
  fields = state._asdict()
  return fields, fields.pop("model_state")


class Checkpoints:
  """Saves every ``save_freq`` steps and at the end; restores against an abstract target.

  Saves are asynchronous; :meth:`close` waits for them. Parameters that are not
  all finite are never saved, so every checkpoint written is a good one; restoring
  also checks each checkpoint (structure, shapes, finite values) and falls back to
  the newest one that passes.

  Attributes:
    unreadable: ``(step, why)`` of the checkpoints the last restore skipped.
  """

  def __init__(self, directory: Path, max_to_keep: int = 3):
    self.directory = Path(directory).absolute()
    self.manager = ocp.CheckpointManager(
      self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    )
    self.unreadable: list[tuple[int, str]] = []
    self.saving: int | None = None  # the step of the save in progress (asynchronous)

  def steps(self) -> list[int]:
    """The steps of the complete checkpoints, oldest first."""
    return run_folder.checkpoint_steps(self.directory)

  def latest_step(self) -> int | None:
    """The step of the latest complete checkpoint (None: none)."""
    return (self.steps() or [None])[-1]

  def save(self, state: Any, data_key: jax.Array, history: list[dict[str, Any]]) -> bool:
    """Saves ``state`` (a TrainState) unless a parameter is non-finite; returns whether it did.

    Raises:
      SaveError: this save, or the one before (still being written), failed.
    """
    if not all_finite(state.params):
      return False
    saved, model_state = _split_model_state(state)
    items = {"model_state": ocp.args.StandardSave(model_state)} if model_state else {}
    with self._failures():
      self.manager.save(
        int(state.step),
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(saved),
          data_key=ocp.args.StandardSave({"key": jax.random.key_data(data_key)}),
          history=ocp.args.JsonSave(history),
          **items,
        ),
      )
    self.saving = int(state.step)
    return True

  def wait(self) -> None:
    """Waits for the save in progress.

    Raises:
      SaveError: it failed.
    """
    with self._failures():
      self.manager.wait_until_finished()

  @contextlib.contextmanager
  def _failures(self) -> Iterator[None]:
    """Turns a failed save into a :class:`SaveError` (one line; Orbax's lines are dropped)."""
    try:
      yield
    except Exception as e:  # noqa: BLE001 - Orbax and TensorStore raise many kinds on write errors
      raise SaveError(
        f"the checkpoint at step {self.saving} could not be written in {self.directory}: "
        f"{_write_error(e)}"
      ) from None

  def discard_incomplete(self) -> int | None:
    """Removes the folders of saves that did not complete; returns the latest complete step."""
    for path in self.directory.glob(f"*{TMP_MARK}*"):
      shutil.rmtree(path, ignore_errors=True)
    return self.latest_step()

  def restore_latest(self, template: Any, data_key: jax.Array, at_most: int | None = None):
    """``(state, data_key, history)`` from the newest checkpoint that passes the checks.

    Checkpoints that fail to restore or hold the wrong structure, shapes or
    non-finite values are skipped and listed in :attr:`unreadable`.

    Args:
      template: a state of the run's structure, shapes and shardings.
      data_key: a data key of the run's kind.
      at_most: consider only the checkpoints of this step and earlier (None: all).

    Returns:
      The restored triple, or None if there is no checkpoint at all.

    Raises:
      NoReadableCheckpointError: there are checkpoints, but none passes.
    """
    self.unreadable = []
    abstract, abstract_model_state = _split_model_state(
      jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    )
    items = {}
    if abstract_model_state:
      items["model_state"] = ocp.args.StandardRestore(abstract_model_state)
    key_template = {"key": ocp.utils.to_shape_dtype_struct(jax.random.key_data(data_key))}
    steps = [s for s in self.steps() if at_most is None or s <= at_most]
    with quiet_abandoned_coroutines():
      for step in sorted(steps, reverse=True):
        try:
          restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract),
              data_key=ocp.args.StandardRestore(key_template),
              history=ocp.args.JsonRestore(),
              **items,
            ),
          )
          problem = fit_problem(
            (restored.state, restored.get("model_state", {}), restored.data_key),
            (abstract, abstract_model_state, key_template),
          )
          if problem is None and not isinstance(restored.history, list):
            problem = "its metrics history is not a list"
        except Exception as e:  # noqa: BLE001 - Orbax and TensorStore raise many kinds on bad files
          problem = first_line(e)
        if problem is None:
          key = jax.random.wrap_key_data(restored.data_key["key"])
          state = type(template)(**restored.state, model_state=restored.get("model_state", {}))
          return state, key, list(restored.history)
        self.unreadable.append((step, problem))
    if self.unreadable:
      details = "; ".join(f"step {step}: {why}" for step, why in self.unreadable)
      raise NoReadableCheckpointError(f"no readable checkpoint in {self.directory} ({details})")
    return None

  def set_aside(self, steps: list[int], folder: Path) -> None:
    """Moves the checkpoints of ``steps`` into ``folder`` (kept, but out of the run's way).

    Call ``manager.reload()`` afterwards (on every process), so that saves go on.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for step in steps:
      shutil.move(str(self.directory / str(step)), str(folder / str(step)))

  def close(self) -> None:
    """Waits for the save in progress and closes the manager.

    Raises:
      SaveError: the save in progress failed.
    """
    try:
      self.wait()
    finally:
      with contextlib.suppress(Exception):  # its failure, if any, was just raised
        self.manager.close()


def restore_members(
  checkpoints: Sequence[Checkpoints],
  workdirs: Sequence[Path],
  states: Sequence[Any],
  data_keys: Sequence[jax.Array],
  is_writer: bool,
) -> list[tuple[Any, jax.Array, list[dict[str, Any]]]] | None:
  """Each member's newest checkpoint at one step readable in all of them, or None if none.

  The restore policy of a run (one member) or a sweep: the members' checkpoints were saved
  together, so some step is in all of them. Unreadable checkpoints past that step are moved
  to ``checkpoints-unreadable/``, readable ones (a sweep's other members') to
  ``checkpoints-set-aside/`` in the member's folder, with a warning.

  Args:
    checkpoints: each member's checkpoints.
    workdirs: each member's run folder.
    states: each member's state template (see :meth:`Checkpoints.restore_latest`).
    data_keys: each member's data key template.
    is_writer: whether this process moves the files (process 0).

  Returns:
    Each member's ``(state, data_key, history)``, or None where there is no checkpoint.

  Raises:
    WorkdirError: a member has checkpoints but none is readable, or the job's processes
      restored different steps.
  """
  at_most, unreadable = None, [{} for _ in checkpoints]
  while True:
    restored = []
    for saved, state, data_key, bad in zip(checkpoints, states, data_keys, unreadable, strict=True):
      try:
        restored.append(saved.restore_latest(state, data_key, at_most))
      except NoReadableCheckpointError as e:
        raise WorkdirError(f"{e}; start a new run in another --workdir") from None
      bad.update(saved.unreadable)
    steps = {-1 if r is None else int(r[0].step) for r in restored}
    if len(steps) == 1:
      break
    at_most = min(steps)  # the members' checkpoints were saved together: some step is in all
  (step,) = steps
  highest, lowest = distributed.max_over_processes(step, -step)
  if highest != -lowest:  # a file only some processes read was damaged
    raise WorkdirError(
      f"the processes of this job restored different checkpoints ({-lowest} to {highest}) "
      f"from {checkpoints[0].directory}; move the newer ones aside and resume"
    )
  moved = False
  for saved, workdir, bad in zip(checkpoints, workdirs, unreadable, strict=True):
    newer = [s for s in saved.steps() if s > step]
    unread = sorted(s for s in newer if s in bad)
    for steps, folder, reason in (
      (unread, "checkpoints-unreadable", f"unreadable ({bad[unread[0]]})" if unread else ""),
      (sorted(set(newer) - set(unread)), "checkpoints-set-aside", "readable, but another "
       "member's checkpoint at that step is not"),
    ):  # fmt: skip
      if not steps:
        continue
      moved, aside = True, Path(workdir) / folder
      if is_writer:
        saved.set_aside(steps, aside)
      print(
        f"warning: checkpoint {', '.join(map(str, steps))} in {saved.directory} is "
        f"{reason}; moved to {aside}; resuming from step {step}",
        file=sys.stderr,
      )
  if moved:
    distributed.sync_processes("checkpoints set aside")
    for saved in checkpoints:
      saved.manager.reload()  # the saves to come must not wait for those steps
  return None if step < 0 else restored
