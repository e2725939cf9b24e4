"""The learning-rate schedule of a run, and which changes of it a resumed run may make.

A run's learning rate at step ``t`` is a function of its config and its data's steps per
epoch (:func:`learning_rate_schedule`). A resumed run keeps that function:
:func:`check_resumed_schedule` refuses a new ``total_iter`` that would change the learning
rate at any step the run has taken or planned, or lengthen it past a decay it never
reached.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from configs import ConfigError
from experiments import run_folder
from experiments.config_checks import check, flag, format_value


def milestone_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> list[int]:
  """The steps of ``lr_milestones`` (epochs), each the first step at the decayed rate.

  Raises:
    ConfigError: two milestones fall on the same step (one decay would apply for both).
  """
  steps = [int(epoch * steps_per_epoch) for epoch in config.lr_milestones]
  for i, step in enumerate(steps):
    check(
      step not in steps[:i],
      f"--lr-milestones {format_value(config.lr_milestones)}: epochs "
      f"{format_value(config.lr_milestones[steps.index(step)])} and "
      f"{format_value(config.lr_milestones[i])} both fall on step {step} ({steps_per_epoch} "
      "steps per epoch), which would apply one decay for both; give each milestone its own step",
    )
  return steps


def learning_rate_schedule(
  config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
  """``warmup_iter`` steps of linear warm-up to ``lr``, then the ``lr_schedule``.

  ``"step"``: ``lr`` multiplied by ``lr_decay`` at each epoch in ``lr_milestones``;
  ``"cosine"``: cosine decay from ``lr`` to 0 at ``total_iter``.

  Raises:
    ConfigError: two milestones fall on the same step.
  """
  warmup = config.warmup_iter
  if config.lr_schedule == "cosine":
    decay = optax.cosine_decay_schedule(config.lr, config.total_iter - warmup)
  else:
    decay = optax.piecewise_constant_schedule(
      config.lr,
      {step - warmup: config.lr_decay for step in milestone_steps(config, steps_per_epoch)},
    )
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, config.lr, warmup), decay], [warmup])


def check_resumed_schedule(
  workdir: str | Path, config: ml_collections.ConfigDict, steps_per_epoch: int
) -> None:
  """Refuses a resumed run whose learning rate would differ from the run's own.

  The run's schedule (its ``config.json``, with its earlier resumes) and the resumed one
  must agree at every step up to the run's planned end, and past it the resumed one must
  hold the rate of that end: a cosine schedule cannot change its length, and a step
  schedule may go on only where no milestone lies past the old end.

  Args:
    workdir: the run folder (nothing is checked where it has no ``config.json``).
    config: the resumed run's config.
    steps_per_epoch: the run's training steps per epoch.

  Raises:
    ConfigError: the schedules differ (one line: the step, both rates, what to do).
  """
  path = Path(workdir) / run_folder.CONFIG
  if not path.is_file():
    return
  before = run_folder.read_config(path)
  end, last = before.total_iter, max(before.total_iter, config.total_iter)
  steps = jnp.arange(last + 1)
  old = np.array(jax.vmap(learning_rate_schedule(before, steps_per_epoch))(steps))
  new = np.asarray(jax.vmap(learning_rate_schedule(config, steps_per_epoch))(steps))
  old[end:] = old[end]  # past its planned end, the run would go on at the end's rate
  differs = ~np.isclose(new, old, rtol=1e-6, atol=0.0)
  if not differs.any():
    return
  step = int(np.argmax(differs))
  where = "past the run's planned end" if step > end else "within the run's planned steps"
  why = (
    "a cosine schedule's length is its --total-iter"
    if config.lr_schedule == "cosine"
    else "a milestone lies past the run's planned end"
  )
  raise ConfigError(
    f"--resume: {flag('total_iter')} {config.total_iter} (the run's is {end}) changes the "
    f"learning rate at step {step}, {where}: {old[step]:.6g} -> {new[step]:.6g} ({why}); "
    "resume with the run's --total-iter, or start a new run in another --workdir"
  )
