"""The training loop of every run and sweep: stretches of compiled steps, evaluations, saves.

The members of a run (one) or a sweep (several, see :mod:`experiments.experiment`) train
together in compiled stretches of about :data:`STRETCH_SECONDS`, between which a signal is
noticed; they are evaluated every ``log_freq`` and checkpointed every ``save_freq`` steps,
each into its own run folder (:mod:`experiments.run_folder`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from experiments import (
  checkpointing,
  distributed,
  metrics_writer,
  run_folder,
  run_record,
  schedules,
  workdir_lock,
)
from experiments.experiment import Experiment
from experiments.resume import WorkdirError, check_workdirs

STRETCH_SECONDS = 1.0  # compiled stretches last about this long: the loop checks for signals


class NonFiniteLossError(RuntimeError):
  """The training loss became NaN or infinite."""


class Interrupted(Exception):  # noqa: N818 - not an error: the run stopped as asked
  """The run stopped on a signal at ``step``, with a checkpoint saved there."""

  def __init__(self, step: int, signum: int):
    super().__init__(f"interrupted at step {step}")
    self.step, self.signum = step, signum


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  resume: bool = False,
  command: str = "",
  stop_requested: Callable[[], int | None] | None = None,
) -> dict[str, float]:
  """Trains one run and writes ``config.json``, ``metrics.jsonl`` and checkpoints.

  The run holds ``workdir``'s lock throughout. A checkpoint is written only from a
  finite state; a non-finite loss, in a step or in an evaluation, ends the run.

  Args:
    config: the experiment config (see ``configs/``), validated.
    workdir: the run directory.
    resume: continue from the run's newest readable checkpoint (``config`` must be
      the run's own, see :func:`experiments.resume.resumed_config`).
    command: the command line, recorded in ``config.json`` (appended on resume).
    stop_requested: polled between stretches of steps; a signal number stops the run
      with a checkpoint at the step reached (:class:`Interrupted`).

  Returns:
    The last evaluation's metrics.

  Raises:
    WorkdirError: ``workdir`` is in use, holds a run and ``resume`` is not set, or holds
      no readable checkpoint, or ``config.total_iter`` is below its checkpoint's step.
    NonFiniteLossError: the training loss became NaN or infinite (the last good
      checkpoint is kept).
    Interrupted: ``stop_requested`` returned a signal; a checkpoint was saved.
  """
  (last,) = train_members(
    [config],
    [workdir],
    workdir,
    resume=resume,
    command=command,
    stop_requested=stop_requested,
  )
  return last


def train_members(
  configs: Sequence[ml_collections.ConfigDict],
  workdirs: Sequence[str | Path],
  lock_dir: str | Path,
  *,
  names: Sequence[str] | None = None,
  resume: bool = False,
  command: str = "",
  stop_requested: Callable[[], int | None] | None = None,
  member_loop: str = "auto",
) -> list[dict[str, float]]:
  """Trains runs together, each writing its own run folder: the loop of every run and sweep.

  The members run in compiled stretches of about :data:`STRETCH_SECONDS`, between
  which a signal is noticed; they are evaluated every ``log_freq`` steps and
  checkpointed every ``save_freq`` steps, all at the same steps. ``lock_dir`` and every
  member's folder are locked throughout (one writer per run folder, as a single run's).

  A member whose training loss, evaluated training loss or parameters become
  non-finite stops there (its last good checkpoint is kept). A single run
  (``names`` None) then ends. A sweep's other members go on: the diverged one gets no
  more rows or checkpoints, its ``config.json`` records ``"diverged": {"step",
  "loss"}`` and a resumed sweep leaves it out.

  Args:
    configs: each member's config (validated; on resume, the run's own).
    workdirs: each member's run folder.
    lock_dir: the folder that holds the members (the run folder, or the sweep's), locked too.
    names: how messages name the members (a sweep's); None for a single run.
    resume: continue every member from its newest checkpoint readable in all of them.
    command: the command line, recorded in each ``config.json`` (appended on resume).
    stop_requested: polled between stretches; a signal number stops the members with
      a checkpoint at the step reached (:class:`Interrupted`).
    member_loop: how a sweep's members run (:func:`experiments.parallel.over_members`).

  Returns:
    Each member's last metrics.

  Raises:
    WorkdirError: a folder is in use, or unfit for (not) resuming (``check_workdirs``).
    distributed.DisagreementError: the job's processes hold other configs or options.
    NonFiniteLossError: a member diverged (raised once the others have finished).
    Interrupted: ``stop_requested`` returned a signal; checkpoints were saved.
  """
  workdirs = [Path(w) for w in workdirs]
  distributed.check_agreement(_run_options(configs, workdirs, lock_dir, names, resume))
  locks = [  # released in reverse: a member's folder before the sweep's that holds it
    workdir_lock.WorkdirLock(folder, jax.process_index())
    for folder in dict.fromkeys([Path(lock_dir), *workdirs])
  ]
  error, markers = None, []
  try:
    for lock in locks:
      lock.acquire()
    markers = check_workdirs(configs, workdirs, names, resume)
  except (workdir_lock.WorkdirInUseError, WorkdirError) as e:
    error = e
  try:  # every process refuses together, so that none waits for the others forever
    if distributed.any_process(error is not None):
      raise WorkdirError(str(error or "another process of this job refused the run directory"))
    members = [
      _Member(name, config, workdir, marker)
      for name, config, workdir, marker in zip(
        names or [str(w) for w in workdirs], configs, workdirs, markers, strict=True
      )
    ]
    loop = _Loop(members, Path(lock_dir), names is None, stop_requested or (lambda: None))
    return loop.run(resume, command, member_loop)
  finally:
    for lock in reversed(locks):
      lock.release()


def _run_options(configs, workdirs, lock_dir, names, resume: bool) -> dict[str, Any]:
  """What every process of a job must agree on: the run options and each member's config."""
  options = {"workdir": str(Path(lock_dir).absolute()), "resume": resume}
  for name, config, workdir in zip(names or [""], configs, workdirs, strict=True):
    prefix = f"{name}: " if names else ""
    options[f"{prefix}workdir"] = str(workdir.absolute())
    options.update({f"{prefix}{key}": value for key, value in config.to_dict().items()})
  return options


@dataclasses.dataclass
class _Member:
  """One member's run folder as the loop writes it, and whether (where) it diverged."""

  name: str  # how messages name it
  config: ml_collections.ConfigDict
  workdir: Path
  diverged: dict[str, Any] | None  # {"step", "loss"} once it diverged, as config.json records
  why: str = ""  # what became non-finite (when it diverged in this loop)
  good_step: int | None = None  # its last good checkpoint's step (when it diverged)
  last: dict[str, Any] | None = None  # its last metrics row
  checkpoints: checkpointing.Checkpoints | None = None
  metrics: metrics_writer.MetricsWriter | None = None


@dataclasses.dataclass
class _Loop:
  """The members' training, with the folders locked (see :func:`train_members`).

  Its methods each do one part of the loop; what they change is the members' records
  (their rows, and whether they diverged), kept in :attr:`everyone`.
  """

  everyone: list[_Member]
  folder: Path  # the locked folder (the run's, or the sweep's)
  single: bool  # a single run (it ends when it diverges), not a sweep
  stop_requested: Callable[[], int | None]
  is_writer: bool = dataclasses.field(default_factory=lambda: jax.process_index() == 0)
  start_time: float = dataclasses.field(default_factory=time.time)
  elapsed_before: float = 0.0  # the wall time of the run before this resume
  members: list[_Member] = dataclasses.field(init=False)  # those that train here

  def __post_init__(self):
    self.members = [m for m in self.everyone if m.diverged is None]  # a resumed sweep: no diverged

  def training(self) -> bool:
    """Whether any member still trains."""
    return any(m.diverged is None for m in self.members)

  def run(self, resume: bool, command: str, member_loop: str) -> list[dict[str, float]]:
    """Trains the members to ``total_iter``; returns each member's last metrics."""
    if not self.members:
      raise NonFiniteLossError(_divergence_message(self.everyone, len(self.everyone), self.single))
    # Built before any file is written: bad data, init params or schedules fail here.
    first = self.members[0]
    source = run_record.init_params_source(first.config, first.workdir, resume)
    experiment = Experiment([m.config for m in self.members], member_loop, source)
    for m in self.members if resume else ():
      schedules.check_resumed_schedule(m.workdir, m.config, experiment.steps_per_epoch)
    try:
      with contextlib.ExitStack() as cleanup:  # closes what was opened, however the run ends
        cleanup.enter_context(checkpointing.orbax_errors_quiet())
        states, data_keys = self._open(experiment, resume, command, cleanup)
        progress = self._progress_bar(int(states[0].step))
        cleanup.callback(progress.close)
        self._train(experiment, states, data_keys, progress)
    except checkpointing.SaveError:
      self._keep_complete_checkpoints()
      raise
    diverged = [m for m in self.everyone if m.diverged is not None]
    if diverged:
      raise NonFiniteLossError(_divergence_message(diverged, len(self.everyone), self.single))
    return [m.last for m in self.everyone]

  def _open(self, experiment: Experiment, resume: bool, command: str, cleanup):
    """Each member's checkpoints, metrics and ``config.json``; returns the states to start from."""
    members = self.members
    for m in members:
      m.checkpoints = checkpointing.Checkpoints(m.workdir / run_folder.CHECKPOINTS)
      cleanup.callback(m.checkpoints.close)
    states, data_keys, histories = list(experiment.states), list(experiment.data_keys), []
    if resume:
      restored = checkpointing.restore_members(
        [m.checkpoints for m in members],
        [m.workdir for m in members],
        states,
        data_keys,
        self.is_writer,
      )
      if restored is None:
        print(f"--resume: no checkpoint in {self.folder}; starting from step 0", file=sys.stderr)
      else:
        states, data_keys, histories = (list(values) for values in zip(*restored, strict=True))
    config = members[0].config
    for m, history in itertools.zip_longest(members, histories, fillvalue=[]):
      m.metrics = metrics_writer.MetricsWriter(
        m.workdir / run_folder.METRICS,
        history,
        enabled=self.is_writer,
        tensorboard_dir=m.workdir / "tensorboard" if config.tensorboard else None,
      )
      cleanup.callback(m.metrics.close)
      m.last = history[-1] if history else None
    if self.is_writer:
      for m, state in zip(members, states, strict=True):
        resumed_from = int(state.step) if resume else None
        run_folder.write_config(
          m.workdir / run_folder.CONFIG,
          m.config,
          command,
          resumed_from,
          **run_record.start_records(m.config, state.params, experiment.groups),
        )
        run_record.copy_init_params(m.workdir, experiment.init_params_source)
    self.elapsed_before = max((h[-1]["wall_time"] for h in histories if h), default=0.0)
    if not histories:
      self._log(experiment, experiment.stack(states), int(states[0].step))
    return states, data_keys

  def _keep_complete_checkpoints(self) -> None:
    """After a failed save: no incomplete save's folder, no row past a complete checkpoint.

    Process 0 waits for no other process here: a collective could wait forever."""
    for m in self.members if self.is_writer else ():
      if m.checkpoints is not None and m.metrics is not None:
        m.metrics.roll_back(m.checkpoints.discard_incomplete())

  def _progress_bar(self, step: int) -> tqdm:
    config = self.members[0].config
    return tqdm(
      total=config.total_iter,
      initial=step,
      disable=not (self.is_writer and config.progress),
      dynamic_ncols=True,
      desc=f"{config.experiment} {config.method}",
    )

  def _train(self, experiment: Experiment, states, data_keys, progress: tqdm) -> None:
    """Runs the stretches from the members' step to ``total_iter``, evaluating and saving."""
    config = self.members[0].config
    step = int(states[0].step)
    device_state = experiment.to_device(experiment.stack(states))
    device_keys = experiment.device_keys(data_keys)
    stretch, signum = 1, 0  # steps per compiled call, grown to about STRETCH_SECONDS
    for point in _eval_points(config, step):
      while self.training() and step < point and not signum:
        num_steps = min(stretch, point - step)
        began = time.time()
        device_state, losses = experiment.train(device_state, num_steps, device_keys)
        self._check_losses(experiment, device_state, losses)
        progress.update(num_steps)
        step += num_steps
        seconds = max(time.time() - began, 1e-3)
        signum, stretch = distributed.max_over_processes(
          self.stop_requested() or 0, -max(1, int(num_steps * STRETCH_SECONDS / seconds))
        )
        stretch = -stretch  # the shortest proposal, so every process runs the same stretches
      if not self.training():
        break
      host_state = experiment.from_device(device_state)  # every point is an evaluation or a save
      if step == point and (step % config.log_freq == 0 or step == config.total_iter):
        self._log(experiment, host_state, step)
        self._show(progress)
      if signum or step % config.save_freq == 0 or step == config.total_iter:
        self._save(experiment.unstack(host_state), data_keys, step)
      if signum and step < config.total_iter:
        raise Interrupted(step, signum)

  def _check_losses(self, experiment: Experiment, device_state, losses) -> None:
    """Stops each member whose last training loss is not finite."""
    members = self.members
    losses = np.asarray(jax.device_get(losses)).reshape(-1)[-len(members) :]  # one sync
    for m, loss in zip(members, losses.tolist(), strict=True):
      if m.diverged is None and not math.isfinite(loss):
        reached = np.asarray(experiment.from_device(device_state).step).reshape(-1)
        self._diverge(
          m, f"the training loss became {loss}", str(loss), int(reached[members.index(m)])
        )

  def _log(self, experiment: Experiment, state: Any, step: int) -> None:
    """Evaluates every member and appends its row; stops one whose loss is not finite."""
    config = self.members[0].config
    shared = {
      "step": step,
      "method": config.method,
      "lr": float(experiment.schedule(step)),
      "wall_time": self.elapsed_before + time.time() - self.start_time,
    }
    evaluated = experiment.evaluate_each(state.params, state.model_state)
    for m, metrics in zip(self.members, evaluated, strict=True):
      if m.diverged is None:
        m.last = {**shared, **metrics}
        m.metrics.append(m.last)
        loss = m.last["train_loss"]
        if not math.isfinite(loss):
          self._diverge(m, f"the evaluated training loss is {loss}", str(loss), step)

  def _show(self, progress: tqdm) -> None:
    """The progress bar's last loss, test accuracy and active units of every member."""
    rows = [m.last for m in self.members if m.diverged is None]
    progress.set_postfix(
      loss=" ".join(f"{r['train_loss']:.4f}" for r in rows),
      test_acc=" ".join(f"{r['test_acc']:.4f}" for r in rows),
      active=" ".join(f"{r['active_units_pct']:.1f}%" for r in rows),
    )

  def _save(self, states: list[Any], data_keys: list[jax.Array], step: int) -> None:
    """Checkpoints every member that trains; stops one whose parameters are not finite."""
    for m, state, data_key in zip(self.members, states, data_keys, strict=True):
      if m.diverged is None and not m.checkpoints.save(state, data_key, m.metrics.rows):
        self._diverge(m, "the parameters became non-finite", "non-finite parameters", step)

  def _diverge(self, m: _Member, why: str, loss: str, at: int) -> None:
    """Stops member ``m``; a sweep's goes on without it, recording where it stopped."""
    m.checkpoints.manager.wait_until_finished()
    m.diverged, m.why, m.good_step = {"step": at, "loss": loss}, why, m.checkpoints.latest_step()
    if self.single:
      return
    if self.is_writer:
      run_folder.record_divergence(m.workdir, m.diverged)
    kept = "no checkpoint was saved"
    if m.good_step is not None:
      kept = f"its last good checkpoint (step {m.good_step}) is kept"
    print(f"{m.name}: {why} at step {at}; this member stopped, {kept}", file=sys.stderr)


def _eval_points(config: ml_collections.ConfigDict, start: int) -> list[int]:
  """Steps after ``start`` at which to stop the loop: evaluations and saves."""
  points = set(range(config.log_freq, config.total_iter, config.log_freq))
  points |= set(range(config.save_freq, config.total_iter, config.save_freq))
  points.add(config.total_iter)
  return sorted(p for p in points if p > start)


def _divergence_message(diverged: list[_Member], count: int, single: bool) -> str:
  """One line: the single run's divergence, or which members of a sweep diverged and where."""
  if single and diverged[0].why:
    (m,) = diverged
    kept = "no checkpoint was saved"
    if m.good_step is not None:
      folder = m.workdir / run_folder.CHECKPOINTS
      kept = f"the last good checkpoint (step {m.good_step}) is kept in {folder}"
    return (
      f"{m.why} at step {m.diverged['step']}; stopped, and {kept}. Start a new run (another "
      "--workdir) with a lower --lr"
    )
  where = ", ".join(f"{m.name} at step {m.diverged['step']}" for m in diverged)
  others = "" if len(diverged) == count else "; the others ran to the end"
  return (
    f"{len(diverged)} of {count} members diverged ({where}){others}. Start a new sweep (another "
    "--workdir) with a lower --lr"
  )
