"""Many runs of one experiment as one compiled program: seeds and weight decays.

``python -m experiments.sweep mnist_subset_mlp --seeds 0,1,2,3,4 --workdir DIR [flags]``
trains every member (each seed, times each ``--weight-decays`` value) together:
the per-device training loop of :mod:`experiments.train` is vmapped over a
leading member axis, the data set is shared, and the evaluation of all members
is one vmapped pass. Each member writes an ordinary run folder, ``DIR/seed<s>``
(``DIR/wd<λ>-seed<s>`` when λ varies too), with its own ``config.json``,
``metrics.jsonl`` and checkpoints, so ``experiments.plot`` and
``experiments.compact`` read it as a single run; member ``seed<s>`` follows the
single run with ``--seed s`` to round-off. Every other flag is the experiment's
own; ``--resume`` continues all members from their checkpoints.
"""

from __future__ import annotations

import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import checkpointing, cli, data, metrics_writer, run_folder, train, workdir_lock


class MemberOptState(NamedTuple):
  """A member's optimiser state: which weight decay it trains with, and that optimiser's state."""

  weight_decay_index: jax.Array
  inner: Any


def select_by_member(txs: Sequence[optax.GradientTransformation]) -> optax.GradientTransformation:
  """One transformation that applies ``txs[state.weight_decay_index]``.

  The optimisers differ only in their weight decay, so their states share one
  structure. Under ``vmap`` every branch is computed and the member's one
  selected: the extra cost is one optimiser update per weight decay, small
  beside the gradient. ``init`` gives index 0; a member sets its own.
  """

  def init_fn(params):
    return MemberOptState(jnp.zeros((), jnp.int32), txs[0].init(params))

  def update_fn(updates, state, params=None):
    branches = [lambda u, s, p, tx=tx: tx.update(u, s, p) for tx in txs]
    updates, inner = jax.lax.switch(
      state.weight_decay_index, branches, updates, state.inner, params
    )
    return updates, MemberOptState(state.weight_decay_index, inner)

  return optax.GradientTransformation(init_fn, update_fn)


class Sweep:
  """The members' stacked state and the compiled functions that train and evaluate them.

  A member's state is an ordinary :class:`train.TrainState`, as a single run's
  (so its checkpoints are a single run's); :meth:`stack` adds each member's
  weight-decay index to its optimiser state and stacks them for training.

  Attributes:
    experiment: the first member's :class:`train.Experiment` (data, mesh, groups,
      schedule, evaluation), shared by all.
    configs: each member's config (its ``seed`` and ``weight_decay``).
    states: each member's initial :class:`train.TrainState` (host).
    data_keys: each member's data key.
  """

  def __init__(self, configs: Sequence[ml_collections.ConfigDict]):
    self.configs = list(configs)
    self.experiment = experiment = train.Experiment(self.configs[0])
    config = self.configs[0]
    train_images, train_labels = experiment.splits["train"]
    model = train.create_model(config)
    weight_decays = sorted({c.weight_decay for c in self.configs})
    txs = []
    for weight_decay in weight_decays:
      member = ml_collections.ConfigDict(config.to_dict())
      member.weight_decay = weight_decay
      txs.append(train.create_optimizer(member, experiment.groups, experiment.schedule))
    self._indices = [weight_decays.index(c.weight_decay) for c in self.configs]
    self.states, self.data_keys = [], []
    for c, index in zip(self.configs, self._indices, strict=True):
      boxed, data_key = train.initial_params(model, c.seed, train_images[:1])
      params = nn.meta.unbox(boxed)
      self.states.append(
        train.TrainState(jnp.zeros((), jnp.int32), params, txs[index].init(params))
      )
      self.data_keys.append(data_key)
    run = train.make_train_steps(
      model, select_by_member(txs), config, len(train_labels), experiment.mesh.size
    )
    members_run = jax.vmap(run, in_axes=(0, None, None, None, 0))
    self.to_device, self._train_fn, self.from_device = train._parallel(
      members_run, experiment.mesh, config.parallel
    )
    self._train_data = self.to_device((train_images, train_labels))

  def stack(self, states: Sequence[train.TrainState]) -> train.TrainState:
    """The members' states as one, each optimiser state tagged with its weight decay."""
    return stack(
      [
        s._replace(opt_state=MemberOptState(jnp.int32(i), s.opt_state))
        for s, i in zip(states, self._indices, strict=True)
      ]
    )

  def unstack(self, state: train.TrainState) -> list[train.TrainState]:
    """Each member's ordinary state, from the stacked one (host)."""
    members = [member(state, m) for m in range(len(self.configs))]
    return [s._replace(opt_state=s.opt_state.inner) for s in members]

  def device_keys(self, data_keys: Sequence[jax.Array]) -> Any:
    """The members' data keys, stacked and laid out for :meth:`train`."""
    return self.to_device(jnp.stack([jax.random.key_data(k) for k in data_keys]))

  def train(self, device_state: Any, num_steps: int, device_keys: Any) -> tuple[Any, jax.Array]:
    """Runs ``num_steps`` steps of every member; returns the state and each member's loss."""
    return self._train_fn(device_state, jnp.int32(num_steps), *self._train_data, device_keys)

  def evaluate(self, params: Any) -> list[dict[str, float]]:
    """Every member's metrics, from the stacked params."""
    return self.experiment.evaluate.each(params, [c.weight_decay for c in self.configs])


def stack(trees: Sequence[Any]) -> Any:
  """Trees of one structure → one tree of arrays with a leading member axis."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def member(tree: Any, m: int) -> Any:
  """Member ``m`` of a stacked tree."""
  return jax.tree.map(lambda a: a[m], tree)


def run_sweep(
  configs: Sequence[ml_collections.ConfigDict],
  workdirs: Sequence[Path],
  *,
  resume: bool = False,
  command: str = "",
) -> list[dict[str, float]]:
  """Trains all members together; each writes its run folder as a single run does.

  Args:
    configs: each member's config; they differ only in ``seed`` and ``weight_decay``.
    workdirs: each member's run folder.
    resume: continue every member from its last checkpoint (all must be at one step).
    command: the sweep's command line, recorded in every member's ``config.json``.

  Returns:
    Each member's last metrics.

  Raises:
    train.WorkdirError: another process holds the sweep's folder, a run folder holds
      checkpoints and ``resume`` is not set, or the members' checkpoints are at
      different steps.
    train.NonFiniteLossError: a member's training loss became NaN or infinite.
  """
  workdirs = [Path(w) for w in workdirs]
  lock = workdir_lock.WorkdirLock(workdirs[0].parent, jax.process_index())
  try:
    lock.acquire()
  except workdir_lock.WorkdirInUseError as e:
    raise train.WorkdirError(str(e)) from None
  try:
    return _train_members(configs, workdirs, resume, command)
  finally:
    lock.release()


def _train_members(
  configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[Path], resume: bool, command: str
) -> list[dict[str, float]]:
  """:func:`run_sweep` once the sweep's folder is locked."""
  start_time = time.time()
  saved = [checkpointing.latest_step(w / "checkpoints") for w in workdirs]
  if not resume and any(s is not None for s in saved):
    raise train.WorkdirError(
      f"{workdirs[0].parent} already holds checkpoints; pass --resume to continue that sweep or "
      "choose another --workdir"
    )
  if resume and len(set(saved)) > 1:
    raise train.WorkdirError(
      f"the members' latest checkpoints are at different steps ({saved}); cannot resume together"
    )
  sweep = Sweep(configs)
  config = configs[0]
  checkpoints = [checkpointing.Checkpoints(w / "checkpoints") for w in workdirs]
  states, data_keys, histories = list(sweep.states), list(sweep.data_keys), [[] for _ in configs]
  for m, ckpt in enumerate(checkpoints):
    restored = ckpt.restore_latest(states[m], data_keys[m]) if resume else None
    if restored is not None:
      states[m], data_keys[m], histories[m] = restored
  if resume and saved[0] is None:
    print(f"--resume: no checkpoint in {workdirs[0].parent}; starting from step 0", file=sys.stderr)
  logs = [
    metrics_writer.MetricsWriter(
      w / "metrics.jsonl",
      h,
      tensorboard_dir=w / "tensorboard" if config.tensorboard else None,
    )
    for w, h in zip(workdirs, histories, strict=True)
  ]
  for w, c, s in zip(workdirs, configs, states, strict=True):
    resumed_from = int(s.step) if resume else None
    train._write_config(
      w / "config.json", c, s.params, sweep.experiment.groups, command, resumed_from
    )

  device_state = sweep.to_device(sweep.stack(states))
  step = int(states[0].step)
  elapsed_before = histories[0][-1]["wall_time"] if histories[0] else 0.0

  def log(params):
    shared = {
      "step": step,
      "method": config.method,
      "lr": float(sweep.experiment.schedule(step)),
      "wall_time": elapsed_before + time.time() - start_time,
    }
    rows = [{**shared, **metrics} for metrics in sweep.evaluate(params)]
    for log_m, row in zip(logs, rows, strict=True):
      log_m.append(row)
    return rows

  last = [h[-1] for h in histories] if histories[0] else log(stack([s.params for s in states]))
  device_keys = sweep.device_keys(data_keys)
  for point in train._eval_points(config, step):
    device_state, losses = sweep.train(device_state, point - step, device_keys)
    losses = np.asarray(jax.device_get(losses)).reshape(-1)[-len(configs) :]
    if not np.all(np.isfinite(losses)):
      bad = [workdirs[m].name for m in np.flatnonzero(~np.isfinite(losses))]
      for ckpt in checkpoints:
        ckpt.close()
      raise train.NonFiniteLossError(
        f"training loss became non-finite before step {point} in {', '.join(bad)}; stopped. "
        f"The last good checkpoints are kept; lower --lr"
      )
    step = point
    host_state = sweep.from_device(device_state)
    if step % config.log_freq == 0 or step == config.total_iter:
      last = log(host_state.params)
      print(
        f"step {step}: train_loss "
        + " ".join(f"{r['train_loss']:.4f}" for r in last)
        + ", active "
        + " ".join(f"{r['active_units_pct']:.0f}%" for r in last),
        flush=True,
      )
    if step % config.save_freq == 0 or step == config.total_iter:
      for m, state in enumerate(sweep.unstack(host_state)):
        checkpoints[m].save(state, data_keys[m], logs[m].rows)
  for ckpt, log_m in zip(checkpoints, logs, strict=True):
    log_m.close()
    ckpt.close()
  return last


def parse_args(argv: Sequence[str] | None = None):
  """``(experiment, configs, workdirs, resume)``: the sweep's flags, the rest the experiment's."""
  parser = cli.ArgumentParser(prog="python -m experiments.sweep", description=__doc__)
  parser.add_argument("experiment", help="the experiment (a file in configs/)")
  parser.add_argument("--seeds", required=True, help="comma-separated seeds, e.g. 0,1,2,3,4")
  parser.add_argument(
    "--weight-decays", default="", help="comma-separated λ values (default: the config's)"
  )
  parser.add_argument(
    "--workdir", required=True, help="the sweep's folder; members go in sub-folders"
  )
  args, rest = parser.parse_known_args(argv)
  seeds = _numbers(args.seeds, int, "--seeds")
  config, _, resume = cli.parse_args(args.experiment, [*rest, "--workdir", args.workdir])
  weight_decays = _numbers(args.weight_decays, float, "--weight-decays") or [config.weight_decay]
  if any(not math.isfinite(w) or w < 0 for w in weight_decays):
    raise cli.ConfigError(f"--weight-decays must be finite and >= 0, got {args.weight_decays}")
  configs, workdirs = [], []
  for weight_decay in weight_decays:
    for seed in seeds:
      member_config = ml_collections.ConfigDict(config.to_dict())
      member_config.seed, member_config.weight_decay = seed, weight_decay
      configs.append(member_config)
      name = run_folder.member_name(seed, weight_decay if len(weight_decays) > 1 else None)
      workdirs.append(Path(args.workdir) / name)
  return args.experiment, configs, workdirs, resume


def _numbers(text: str, kind: type, flag: str) -> list:
  try:
    values = [kind(t) for t in text.split(",") if t.strip()]
  except ValueError:
    raise cli.ConfigError(
      f"{flag}: {text!r} is not a comma-separated list of {kind.__name__}"
    ) from None
  if len(set(values)) != len(values):
    raise cli.ConfigError(f"{flag}: {text!r} repeats a value")
  return values


def main(argv: Sequence[str] | None = None) -> int:
  """Runs a sweep from the command line; returns the exit code."""
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    _, configs, workdirs, resume = parse_args(argv)
    command = shlex.join(["python", "-m", "experiments.sweep", *map(str, argv)])
    run_sweep(configs, workdirs, resume=resume, command=command)
  except (cli.ConfigError, data.DatasetUnavailableError, train.WorkdirError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except train.NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
