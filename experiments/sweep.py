"""Many runs of one experiment as one compiled program: seeds and weight decays.

``python -m experiments.sweep mnist_subset_mlp --seeds 0,1,2,3,4 --workdir DIR [flags]``
trains every member (each seed, times each ``--weight-decays`` value) together:
the per-device training loop of :mod:`experiments.train` runs over a leading
member axis (``--member-loop``: vmapped on GPU and TPU, one member after another
inside the compiled loop on CPU), the data set is shared, and the evaluation of
all members is one vmapped pass. Each member writes an ordinary run folder, ``DIR/seed<s>``
(``DIR/wd<λ>-seed<s>`` when λ varies too), with its own ``config.json``,
``metrics.jsonl`` and checkpoints, so ``experiments.plot`` and
``experiments.compact`` read it as a single run; member ``seed<s>`` follows the
single run with ``--seed s`` to round-off. Every other flag is the experiment's
own.

The training loop is the single run's (:func:`experiments.train.train_members`):
Ctrl-C or SIGTERM saves every member at the step reached and prints the command
that resumes; ``--resume`` continues all members from one step (an unreadable
checkpoint of one member takes them all back to the newest step every member can
read) and refuses flags that change the trajectory. A member whose loss becomes
NaN or infinite stops alone: ``config.json`` records ``"diverged": {"step", "loss"}``,
the others go on, and the sweep exits with 1 naming it (a resumed sweep leaves it out).
"""

from __future__ import annotations

import argparse
import functools
import math
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from experiments import checkpointing, cli, run_folder, train


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

  It offers what the training loop needs (:class:`train.Members`), as a single
  run's :class:`train.Experiment` does.

  A member's state is an ordinary :class:`train.TrainState`, as a single run's
  (so its checkpoints are a single run's); :meth:`stack` adds each member's
  weight-decay index to its optimiser state and stacks them for training.

  Attributes:
    experiment: the first member's :class:`train.Experiment` (data, mesh, groups,
      schedule, evaluation), shared by all.
    groups: the model's PathProx group spec.
    schedule: the learning-rate schedule.
    configs: each member's config (its ``seed`` and ``weight_decay``).
    states: each member's initial :class:`train.TrainState` (host).
    data_keys: each member's data key.
  """

  def __init__(self, configs: Sequence[ml_collections.ConfigDict], member_loop: str = "auto"):
    self.configs = list(configs)
    self.experiment = experiment = train.Experiment(self.configs[0])
    self.groups, self.schedule = experiment.groups, experiment.schedule
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
    seeds = [c.seed for c in self.configs]
    initial = train.initial_params(model, seeds, train_images[:1])
    for index, (boxed, data_key) in zip(self._indices, initial, strict=True):
      params = checkpointing.restore_init_params(config.init_params, nn.meta.unbox(boxed))
      self.states.append(
        train.TrainState(jnp.zeros((), jnp.int32), params, txs[index].init(params))
      )
      self.data_keys.append(data_key)
    run = train.make_train_steps(
      model, select_by_member(txs), config, len(train_labels), experiment.mesh.size
    )
    self.to_device, self._train_fn, self.from_device = train._parallel(
      over_members(run, member_loop), experiment.mesh, config.parallel
    )  # the data's layout is the single run's: the members share its copy on the devices

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
    return self._train_fn(
      device_state, jnp.int32(num_steps), *self.experiment.train_data, device_keys
    )

  def evaluate_each(self, params: Any) -> list[dict[str, float]]:
    """Every member's metrics, from the stacked params."""
    return self.experiment.evaluate.each(params, [c.weight_decay for c in self.configs])


MEMBER_LOOPS = ("auto", "vmap", "map")


def over_members(run: Callable[..., Any], member_loop: str) -> Callable[..., Any]:
  """The per-device training loop ``run``, over a leading member axis of state and keys.

  ``"vmap"`` batches the members into one program: every product is batched, which
  is what GPUs and TPUs are for. ``"map"`` (``jax.lax.map``) runs them one after
  another inside the same compiled program: each member's computation is then a
  single run's, to the bit, and on a CPU, whose products are already compute-bound,
  it is faster (6.1 against 6.8 ms per member-step on the MNIST-subset MLP, 2 cores).
  ``"auto"``: ``"map"`` on CPU, ``"vmap"`` elsewhere.
  """
  if member_loop == "auto":
    member_loop = "map" if jax.default_backend() == "cpu" else "vmap"
  if member_loop == "vmap":
    return jax.vmap(run, in_axes=(0, None, None, None, 0))

  def one_after_another(state, num_steps, images, labels, keys):
    return jax.lax.map(lambda member: run(member[0], num_steps, images, labels, member[1]),
                       (state, keys))  # fmt: skip

  return one_after_another


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
  stop_requested: Callable[[], int | None] | None = None,
  member_loop: str = "auto",
) -> list[dict[str, float]]:
  """Trains all members together; each writes its run folder as a single run does.

  The loop is the single run's (:func:`experiments.train.train_members`): the
  sweep's folder is locked, a signal stops every member with a checkpoint at one
  step, and a member that diverges stops alone, recorded in its ``config.json``.

  Args:
    configs: each member's config; they differ only in ``seed`` and ``weight_decay``.
    workdirs: each member's run folder, all in the sweep's folder.
    resume: continue every member from its newest checkpoint readable in all of them
      (a member recorded as diverged stays so, and is left out).
    command: the sweep's command line, recorded in every member's ``config.json``.
    stop_requested: polled between stretches of steps (see :mod:`experiments.interrupts`).
    member_loop: ``"vmap"``, ``"map"`` or ``"auto"`` (:func:`over_members`).

  Returns:
    Each member's last metrics.

  Raises:
    train.WorkdirError: another process holds the sweep's folder, a run folder holds
      checkpoints and ``resume`` is not set, or the members' checkpoints are at
      different steps.
    train.NonFiniteLossError: a member diverged (once the others have finished).
    train.Interrupted: ``stop_requested`` returned a signal; checkpoints were saved.
  """
  workdirs = [Path(w) for w in workdirs]
  return train.train_members(
    functools.partial(Sweep, member_loop=member_loop),
    configs,
    workdirs,
    workdirs[0].parent,
    names=[w.name for w in workdirs],
    resume=resume,
    command=command,
    stop_requested=stop_requested,
  )


def parse_command(argv: Sequence[str]) -> tuple[argparse.Namespace, cli.Command]:
  """The sweep's own flags, and the experiment's command line (not yet validated; no JAX)."""
  parser = cli.ArgumentParser(prog="python -m experiments.sweep", description=__doc__)
  parser.add_argument("experiment", help="the experiment (a file in configs/)")
  parser.add_argument("--seeds", required=True, help="comma-separated seeds, e.g. 0,1,2,3,4")
  parser.add_argument(
    "--weight-decays", default="", help="comma-separated λ values (default: the config's)"
  )
  parser.add_argument(
    "--workdir", required=True, help="the sweep's folder; members go in sub-folders"
  )
  parser.add_argument(
    "--member-loop",
    choices=MEMBER_LOOPS,
    default="auto",
    help="vmap: the members batched (GPU, TPU); map: one after another in the compiled loop, "
    "each exactly a single run (faster on CPU); auto: map on CPU, else vmap",
  )
  args, rest = parser.parse_known_args(argv)
  return args, cli.parse_command(args.experiment, rest)


def members(
  args: argparse.Namespace, command: cli.Command
) -> tuple[list[ml_collections.ConfigDict], list[Path]]:
  """Each member's config (validated; on resume, its run's own) and run folder.

  Raises:
    cli.ConfigError: a bad ``--seeds`` or ``--weight-decays``, a bad config value, or
      a resume that changes a member's trajectory.
  """
  seeds = _numbers(args.seeds, int, "--seeds")
  weight_decays = _numbers(args.weight_decays, float, "--weight-decays")
  if any(not math.isfinite(w) or w < 0 for w in weight_decays):
    raise cli.ConfigError(f"--weight-decays must be finite and >= 0, got {args.weight_decays}")
  cli.check_workdir(args.workdir)
  configs, workdirs = [], []
  for weight_decay in weight_decays or [command.config.weight_decay]:
    for seed in seeds:
      config = ml_collections.ConfigDict(command.config.to_dict())
      config.seed, config.weight_decay = seed, weight_decay
      name = run_folder.member_name(seed, weight_decay if len(weight_decays) > 1 else None)
      workdir = Path(args.workdir) / name
      if command.resume:
        config = cli.resumed_config(str(workdir), config, command.overrides)
      cli.validate(config)
      configs.append(config)
      workdirs.append(workdir)
  return configs, workdirs


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
  """Runs a sweep from the command line; returns the exit code (as :func:`cli.main`'s)."""
  argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
  try:
    args, command = parse_command(argv)
  except cli.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  from experiments import distributed, interrupts

  def run() -> None:
    distributed.initialize()  # multi-host: before anything touches the devices
    configs, workdirs = members(args, command)
    if jax.process_index() == 0:
      print(f"sweep directory: {args.workdir}", flush=True)
    with interrupts.Interrupts() as stop:
      run_sweep(
        configs,
        workdirs,
        resume=command.resume,
        command=shlex.join(["python", "-m", "experiments.sweep", *argv]),
        stop_requested=stop.requested,
        member_loop=args.member_loop,
      )

  return cli.exit_code(run, lambda: cli.resume_command("experiments.sweep", argv, args.workdir))


if __name__ == "__main__":
  sys.exit(main())
