"""Training and evaluation of one experiment run, data-parallel over all devices.

The data set lives on the devices; every step samples its batch there (a fresh
permutation per epoch, the last partial batch kept and masked), and a whole
stretch of steps between two evaluations runs as one compiled loop. Each device
takes its slice of the global batch, the gradients are summed across devices
(``psum``) and divided by the global count, and every device applies the same
optimiser step. ``jax.shard_map`` over a ``jax.make_mesh`` is the default;
``jax.pmap`` wraps the same per-device function.

With several processes (:mod:`experiments.distributed`) the mesh spans the devices of
all of them, and the run state is made of global arrays replicated over the mesh, so
every process holds it whole and Orbax checkpoints it from all of them.
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
from typing import Any, NamedTuple, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

import pathprox_jax as pp
from experiments import (
  checkpointing,
  data,
  evaluation,
  input_pipeline,
  metrics_writer,
  models,
  run_folder,
  workdir_lock,
)

AXIS = "data"


class TrainState(NamedTuple):
  step: jax.Array
  params: Any
  opt_state: Any


class WorkdirError(ValueError):
  """The run directory cannot be used as asked."""


class NonFiniteLossError(RuntimeError):
  """The training loss became NaN or infinite."""


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
  """The experiment's model, with PathProx group annotations."""
  if config.model == "mlp":
    return models.MLP(features=tuple(config.features), relu=tuple(config.relu))
  if config.model == "vit":
    return models.ViT(
      num_heads=tuple(config.num_heads),
      mlp_dim=tuple(config.mlp_dim),
      width=config.width,
      head_dim=config.head_dim,
      patch_size=config.patch_size,
    )
  return models.VGG(channels=tuple(config.channels), pool_after=tuple(config.pool_after))


def group_names(config: ml_collections.ConfigDict) -> dict[int, str]:
  """What each PathProx group holds, by group number ({}: the numbers say enough)."""
  return models.vit_group_names(len(config.num_heads)) if config.model == "vit" else {}


def learning_rate_schedule(
  config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
  """``warmup_iter`` steps of linear warm-up to ``lr``, then the ``lr_schedule``.

  ``"step"``: ``lr`` multiplied by ``lr_decay`` at each epoch in ``lr_milestones``;
  ``"cosine"``: cosine decay from ``lr`` to 0 at ``total_iter``.
  """
  warmup = config.warmup_iter
  if config.lr_schedule == "cosine":
    decay = optax.cosine_decay_schedule(config.lr, config.total_iter - warmup)
  else:
    decay = optax.piecewise_constant_schedule(
      config.lr,
      {int(epoch * steps_per_epoch) - warmup: config.lr_decay for epoch in config.lr_milestones},
    )
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, config.lr, warmup), decay], [warmup])


def create_optimizer(
  config: ml_collections.ConfigDict, groups: Any, schedule: optax.Schedule
) -> optax.GradientTransformation:
  """The method (PathProx or the optimiser's weight decay) under the optimiser.

  ``optimizer="sgd"``: ``pathprox_sgd`` (with ``threshold_rule``), or SGD on
  loss + (λ/2)·Σ‖kernels‖². ``optimizer="adamw"``: ``pathprox_adamw``, or
  ``optax.adamw`` with its decoupled decay on the kernels. With
  ``regularize_bias`` the baseline decays every parameter, biases included.
  """
  decayed = None if config.regularize_bias else pp.kernel_mask
  if config.optimizer == "adamw":
    if config.method == "pathprox":
      return pp.pathprox_adamw(
        schedule,
        config.weight_decay,
        groups,
        balance=config.balance,
        regularize_bias=config.regularize_bias,
      )
    return optax.adamw(schedule, weight_decay=config.weight_decay, mask=decayed)
  momentum = config.momentum or None  # a config float, never traced: 0 means no trace at all
  if config.method == "pathprox":
    return pp.pathprox_sgd(
      schedule,
      config.weight_decay,
      groups,
      momentum=momentum,
      threshold_rule=config.threshold_rule,
      balance=config.balance,
      regularize_bias=config.regularize_bias,
    )
  # The gradient of (λ/2)·‖K‖² is λ·K: the same as adding decayed weights.
  return optax.chain(
    optax.add_decayed_weights(config.weight_decay, mask=decayed),
    optax.sgd(schedule, momentum=momentum),
  )


def make_train_steps(
  model: nn.Module,
  tx: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
  num_examples: int,
  num_devices: int,
) -> Callable[..., tuple[TrainState, jax.Array]]:
  """The per-device loop: runs up to ``num_steps`` steps, stopping at a non-finite loss.

  Each device takes its slice of every global batch (:func:`input_pipeline.device_batch`:
  a batch that does not divide by ``num_devices`` is padded with masked entries), so
  the step is the same whatever the number of devices and processes.

  Returns ``fn(state, num_steps, images, labels, key_data) -> (state, loss)``
  to be wrapped by ``shard_map`` or ``pmap`` over axis ``"data"``;
  ``loss`` is the last step's global mean training loss.
  """
  batch = config.batch_size
  per_epoch = input_pipeline.steps_per_epoch(num_examples, batch)

  def train_step(state, images, labels, aug_key, order):
    device = jax.lax.axis_index(AXIS)
    idx = input_pipeline.device_batch(order, state.step, device, batch, num_devices)
    valid = idx >= 0
    step_key = None
    if config.augment:
      step_key = jax.random.fold_in(jax.random.fold_in(aug_key, state.step), device)
    x = input_pipeline.train_inputs(images[jnp.maximum(idx, 0)], config.dataset, step_key)
    y = labels[jnp.maximum(idx, 0)]

    def loss_sum(params):
      logits = model.apply({"params": params}, x)
      return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y) * valid)

    local_loss, local_grads = jax.value_and_grad(loss_sum)(state.params)
    count = jax.lax.psum(jnp.sum(valid), AXIS)
    grads = jax.tree.map(lambda g: jax.lax.psum(g, AXIS) / count, local_grads)
    loss = jax.lax.psum(local_loss, AXIS) / count
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, opt_state), loss

  def run(state, num_steps, images, labels, key_data):
    order_key, aug_key = jax.random.split(jax.random.wrap_key_data(key_data))

    def order_of(step):
      return input_pipeline.epoch_order(order_key, step // per_epoch, num_examples, batch)

    def cond(carry):
      i, _, _, loss = carry
      return (i < num_steps) & jnp.isfinite(loss)

    def body(carry):
      i, state, order, _ = carry
      order = jax.lax.cond(state.step % per_epoch == 0, lambda: order_of(state.step), lambda: order)
      state, loss = train_step(state, images, labels, aug_key, order)
      return i + 1, state, order, loss

    init = (jnp.zeros((), jnp.int32), state, order_of(state.step), jnp.zeros((), jnp.float32))
    _, state, _, loss = jax.lax.while_loop(cond, body, init)
    return state, loss

  return run


def _global_array(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from data every process holds in full (single- or multi-host)."""
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _replicated(tree: Any, mesh) -> Any:
  """``tree`` as global arrays replicated over ``mesh``, from values every process holds."""
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(lambda a: _global_array(np.asarray(a), sharding), tree)


def _mesh(num_devices: int) -> jax.sharding.Mesh:
  """``num_devices`` devices (0: all) on axis ``"data"``, the same number from every process."""
  per_process = num_devices // jax.process_count() or jax.local_device_count()
  by_process = [
    [d for d in jax.devices() if d.process_index == p] for p in range(jax.process_count())
  ]
  devices = [d for local in by_process for d in local[:per_process]]
  return jax.make_mesh(
    (len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
  )


def _parallel(run, mesh, parallel: str):
  """Wraps the per-device loop for all devices; returns ``(to_device, step_fn, from_device)``.

  ``to_device`` turns host values or the run state's layout (global arrays replicated
  over ``mesh``, which Orbax saves and restores from every process) into fresh arrays in
  the step's layout, which the step may donate; ``from_device`` turns them back. Under
  ``shard_map`` both layouts are the same; under ``pmap`` (one process only) the step
  takes one stacked copy per device.
  """
  if parallel == "pmap":
    stacked = NamedSharding(mesh, P(AXIS))
    replicated = NamedSharding(mesh, P())

    def to_device(tree):
      return jax.tree.map(
        lambda a: _global_array(np.broadcast_to(np.asarray(a), (mesh.size, *np.shape(a))), stacked),
        tree,
      )

    step_fn = jax.pmap(
      run,
      axis_name=AXIS,
      in_axes=(0, None, 0, 0, 0),
      donate_argnums=(0,),
      devices=list(mesh.devices.flat),
    )
    return (
      to_device,
      step_fn,
      lambda tree: jax.tree.map(lambda a: jax.device_put(a[0], replicated), tree),
    )
  # check_vma=False keeps gradients per device, as under pmap, so that one per-device
  # function serves both (with it, autodiff would already psum replicated params' grads).
  sharded = jax.shard_map(run, mesh=mesh, in_specs=P(), out_specs=P(), check_vma=False)
  step_fn = jax.jit(sharded, donate_argnums=(0,))
  return (lambda tree: _replicated(tree, mesh)), step_fn, (lambda tree: tree)


def group_spec(model: nn.Module, boxed: Any) -> Any:
  """The model's PathProx groups: the ViT's from path rules, the others' from annotations."""
  return model.group_spec(boxed) if isinstance(model, models.ViT) else pp.group_spec(boxed)


def initial_params(
  model: nn.Module, seeds: Sequence[int], sample: np.ndarray
) -> list[tuple[Any, jax.Array]]:
  """The boxed parameters at step 0 of the run with each seed, and its data key.

  The initialisation is compiled once for all seeds.
  """
  init = jax.jit(model.init)
  sample = jnp.asarray(sample, jnp.float32)
  runs = []
  for seed in seeds:
    init_key, data_key = jax.random.split(jax.random.key(seed))
    runs.append((init(init_key, sample)["params"], data_key))
  return runs


def _eval_points(config, start: int) -> list[int]:
  """Steps after ``start`` at which to stop the loop: evaluations and saves."""
  points = set(range(config.log_freq, config.total_iter, config.log_freq))
  points |= set(range(config.save_freq, config.total_iter, config.save_freq))
  points.add(config.total_iter)
  return sorted(p for p in points if p > start)


def _load_arrays(config: ml_collections.ConfigDict) -> dict[str, input_pipeline.Arrays]:
  """The data set's arrays; with several processes, process 0 prepares it first.

  The processes may share ``data_dir`` (one machine, a network file system), and two of
  them preparing the same TFDS data set at once would race. If process 0 cannot load it,
  every process raises, rather than waiting for it forever.
  """

  def load():
    return data.load_arrays(
      config.dataset,
      data_dir=config.data_dir or None,
      raw_dir=config.raw_data_dir or None,
      allow_unofficial=config.allow_unofficial_data,
    )

  if jax.process_count() == 1:
    return load()
  arrays, error = None, None
  if jax.process_index() == 0:
    try:
      arrays = load()
    except data.DatasetUnavailableError as e:
      error = e
  if multihost_utils.broadcast_one_to_all(np.int32(error is not None)):  # also a barrier
    raise error or data.DatasetUnavailableError(
      "process 0 could not load the data set (see its error)"
    )
  return arrays or load()


class Experiment:
  """One experiment's data, model, optimiser and compiled functions, ready to train.

  Attributes:
    config: the experiment config.
    mesh: the devices, on axis ``"data"``.
    splits: ``{"train", "val", "test"}``: ``(uint8 images, int32 labels)`` on the host.
    groups: the model's PathProx group spec.
    schedule: the learning-rate schedule.
    state: the initial :class:`TrainState`, replicated over ``mesh``.
    data_key: the key of the data order (and augmentation), replicated over ``mesh``.
    train_data: the training split's images and labels on the devices, in the step's layout.
    evaluate: ``params -> metrics dict`` on the train, validation and test sets.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.mesh = _mesh(config.num_devices)
    arrays = _load_arrays(config)
    self.splits = splits = input_pipeline.split(
      arrays, config.split, val_size=config.val_size, train_per_class=config.train_per_class
    )
    train_images, train_labels = splits["train"]
    per_epoch = input_pipeline.steps_per_epoch(len(train_labels), config.batch_size)

    model = create_model(config)
    ((boxed, data_key),) = initial_params(model, [config.seed], train_images[:1])
    self.data_key = jax.random.wrap_key_data(_replicated(jax.random.key_data(data_key), self.mesh))
    self.groups = group_spec(model, boxed)
    params = checkpointing.restore_init_params(config.init_params, nn.meta.unbox(boxed))
    self.schedule = learning_rate_schedule(config, per_epoch)
    tx = create_optimizer(config, self.groups, self.schedule)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    self.state = _replicated(state, self.mesh)

    run = make_train_steps(model, tx, config, len(train_labels), self.mesh.size)
    self.to_device, self._train_fn, self.from_device = _parallel(run, self.mesh, config.parallel)
    self.train_data = self.to_device((train_images, train_labels))
    self.evaluate = evaluation.Evaluator(model, config, splits, self.groups, self.mesh)

  def device_key(self, data_key: jax.Array) -> Any:
    """The data key laid out for :meth:`train` (put on the devices once per run)."""
    return self.to_device(jax.random.key_data(data_key))

  def train(self, device_state: Any, num_steps: int, device_key: Any) -> tuple[Any, jax.Array]:
    """Runs ``num_steps`` steps (fewer if the loss becomes non-finite) on device state."""
    return self._train_fn(device_state, jnp.int32(num_steps), *self.train_data, device_key)

  # The loop's view (:class:`Members`): a single run is one member, its state unstacked.

  @property
  def states(self) -> list[TrainState]:
    """The initial state, as the one member's."""
    return [self.state]

  @property
  def data_keys(self) -> list[jax.Array]:
    """The data key, as the one member's."""
    return [self.data_key]

  def stack(self, states: Sequence[TrainState]) -> TrainState:
    """The one member's state: a single run's state is not stacked."""
    (state,) = states
    return state

  def unstack(self, state: TrainState) -> list[TrainState]:
    """``[state]``: the one member's state."""
    return [state]

  def device_keys(self, data_keys: Sequence[jax.Array]) -> Any:
    """The one member's data key, laid out for :meth:`train`."""
    (data_key,) = data_keys
    return self.device_key(data_key)

  def evaluate_each(self, params: Any) -> list[dict[str, float]]:
    """``[metrics]``: the one member's evaluation."""
    return [self.evaluate(params)]


class Members(Protocol):
  """What the training loop needs of what it trains: one run (:class:`Experiment`) or a sweep.

  The loop sees a list of members, each an ordinary run with its own
  :class:`TrainState` and data key; the device state holds them all (the single run's
  state itself, a sweep's stacked on a leading member axis).
  """

  groups: Any  # the model's PathProx group spec (the same for every member)
  schedule: optax.Schedule  # the learning-rate schedule (the same for every member)
  states: list[TrainState]  # each member's initial state
  data_keys: list[jax.Array]  # each member's data key

  def stack(self, states: Sequence[TrainState]) -> Any: ...  # the members' states as one (host)

  def unstack(self, state: Any) -> list[TrainState]: ...  # each member's, from the host state

  def to_device(self, tree: Any) -> Any: ...  # a host tree in the training step's layout

  def device_keys(self, data_keys: Sequence[jax.Array]) -> Any: ...  # the keys, laid out

  # Runs num_steps steps of every member (a member stops at a non-finite loss); returns the
  # device state and each member's last loss, on the last axis.
  def train(self, device_state: Any, num_steps: int, device_keys: Any) -> tuple[Any, Any]: ...

  def from_device(self, device_state: Any) -> Any: ...  # the host (replicated) layout

  def evaluate_each(self, params: Any) -> list[dict[str, float]]: ...  # each member's metrics


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  resume: bool = False,
  command: str = "",
  stop_requested: Callable[[], int | None] | None = None,
) -> dict[str, float]:
  """Trains one run and writes ``config.json``, ``metrics.jsonl`` and checkpoints.

  The run holds ``workdir``'s lock throughout (one writer per run directory). A
  checkpoint is written only from a state whose last training loss and parameters
  are finite; a non-finite loss, in a step or in an evaluation, ends the run.

  Args:
    config: the experiment config (see ``configs/``), validated.
    workdir: the run directory.
    resume: continue from the run's newest readable checkpoint (``config`` must be
      the run's own, see :func:`experiments.cli.resumed_config`).
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
    lambda configs: Experiment(configs[0]),
    [config],
    [workdir],
    workdir,
    resume=resume,
    command=command,
    stop_requested=stop_requested,
  )
  return last


def train_members(
  build: Callable[[list[ml_collections.ConfigDict]], Members],
  configs: Sequence[ml_collections.ConfigDict],
  workdirs: Sequence[str | Path],
  lock_dir: str | Path,
  *,
  names: Sequence[str] | None = None,
  resume: bool = False,
  command: str = "",
  stop_requested: Callable[[], int | None] | None = None,
) -> list[dict[str, float]]:
  """Trains runs together, each writing its own run folder: the loop of every run and sweep.

  The members run in compiled stretches of about :data:`STRETCH_SECONDS`, between
  which a signal is noticed; they are evaluated every ``log_freq`` steps and
  checkpointed every ``save_freq`` steps, all at the same steps. ``lock_dir`` is
  locked throughout (one writer per run or sweep folder).

  A member whose training loss, evaluated training loss or parameters become
  non-finite stops there (its last good checkpoint is kept). A single run
  (``names`` None) then ends. A sweep's other members go on: the diverged one gets no
  more rows or checkpoints, its ``config.json`` records ``"diverged": {"step",
  "loss"}`` and a resumed sweep leaves it out.

  Args:
    build: makes the members (:class:`Experiment` for one, ``sweep.Sweep``) from the
      configs of those that train; called after the folders' checks, before any write.
    configs: each member's config (validated; on resume, the run's own).
    workdirs: each member's run folder.
    lock_dir: the folder to lock (the run folder, or the sweep's).
    names: how messages name the members (a sweep's); None for a single run.
    resume: continue every member from its newest checkpoint readable in all of them.
    command: the command line, recorded in each ``config.json`` (appended on resume).
    stop_requested: polled between stretches; a signal number stops the members with
      a checkpoint at the step reached (:class:`Interrupted`).

  Returns:
    Each member's last metrics.

  Raises:
    WorkdirError: a folder is in use, holds a run and ``resume`` is not set, holds no
      readable checkpoint, its checkpoint is past ``total_iter`` or at another step than
      the other members'.
    NonFiniteLossError: a member diverged (raised once the others have finished).
    Interrupted: ``stop_requested`` returned a signal; checkpoints were saved.
  """
  workdirs = [Path(w) for w in workdirs]
  lock = workdir_lock.WorkdirLock(Path(lock_dir), jax.process_index())
  error, markers = None, []
  try:
    lock.acquire()
    markers = _check_workdirs(configs, workdirs, names, resume)
  except (workdir_lock.WorkdirInUseError, WorkdirError) as e:
    error = e
  try:  # every process refuses together, so that none waits for the others forever
    if _any_process(error is not None):
      raise WorkdirError(str(error or "another process of this job refused the run directory"))
    members = [
      _Member(name, config, workdir, marker)
      for name, config, workdir, marker in zip(
        names or [str(w) for w in workdirs], configs, workdirs, markers, strict=True
      )
    ]
    stop_requested = stop_requested or (lambda: None)
    return _train(build, members, Path(lock_dir), names is None, resume, command, stop_requested)
  finally:
    lock.release()


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


def _check_workdirs(configs, workdirs: list[Path], names, resume: bool) -> list[dict | None]:
  """Each member's divergence record (resume only), once the folders allow the run."""
  markers = [_divergence_record(w) if resume else None for w in workdirs]
  latest = {}
  for config, workdir, marker, name in zip(
    configs, workdirs, markers, names or workdirs, strict=True
  ):
    if marker is None:
      _check_workdir_state(workdir, config, resume)
      latest[name] = (_saved_steps(workdir) or [None])[-1]
  if len(set(latest.values())) > 1:
    steps = ", ".join(f"{name}: {step}" for name, step in latest.items())
    raise WorkdirError(
      f"the members' latest checkpoints are at different steps ({steps}); cannot resume together"
    )
  return markers


def _divergence_record(workdir: Path) -> dict[str, Any] | None:
  """``config.json``'s ``diverged`` record of a run folder (None: none, or no such file)."""
  path = workdir / run_folder.CONFIG
  if not path.exists():
    return None
  try:
    return run_folder.read_record(path).get(run_folder.DIVERGED)
  except run_folder.NotARunError as e:
    raise WorkdirError(str(e)) from None


def _saved_steps(workdir: Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit())


def _check_workdir_state(workdir: Path, config: ml_collections.ConfigDict, resume: bool) -> None:
  """Refuses to overwrite a run, or to resume one to before its checkpoint."""
  checkpoints = workdir / "checkpoints"
  saved = _saved_steps(workdir)
  if not resume:
    held = [name for name, there in (("checkpoints", saved), ("metrics.jsonl",
            (workdir / "metrics.jsonl").exists())) if there]  # fmt: skip
    if held:
      raise WorkdirError(
        f"{workdir} already holds {' and '.join(held)}; pass --resume to continue that run or "
        "choose another --workdir"
      )
  elif saved and config.total_iter < saved[-1]:
    raise WorkdirError(
      f"--total-iter {config.total_iter} is below step {saved[-1]} of the checkpoint in "
      f"{checkpoints}; pass --total-iter {saved[-1]} or more"
    )


def _any_process(flag: bool) -> bool:
  """Whether ``flag`` is set on any process of the job (every process gets the same answer)."""
  return bool(_max_over_processes(int(flag))[0])


def _max_over_processes(*values: int) -> list[int]:
  """Each value's maximum over all processes (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return list(values)
  from jax.experimental import multihost_utils

  gathered = multihost_utils.process_allgather(np.asarray(values, np.int64))
  return [int(v) for v in np.max(np.asarray(gathered), axis=0)]


class Interrupted(Exception):  # noqa: N818 - not an error: the run stopped as asked
  """The run stopped on a signal at ``step``, with a checkpoint saved there."""

  def __init__(self, step: int, signum: int):
    super().__init__(f"interrupted at step {step}")
    self.step, self.signum = step, signum


STRETCH_SECONDS = 1.0  # compiled stretches last about this long: the loop checks for signals


def _train(
  build, everyone: list[_Member], folder: Path, single: bool, resume, command, stop_requested
) -> list[dict[str, float]]:
  """The members' training, with the folders locked (see :func:`train_members`)."""
  start_time = time.time()
  members = [m for m in everyone if m.diverged is None]  # a resumed sweep leaves diverged out
  if not members:
    raise NonFiniteLossError(_divergence_message(everyone, len(everyone), single))
  config = members[0].config
  trainer = build([m.config for m in members])  # before any file is written: bad data fails here
  with contextlib.ExitStack() as cleanup:  # closes what was opened, however the run ends
    is_writer = jax.process_index() == 0
    for m in members:
      m.checkpoints = checkpointing.Checkpoints(m.workdir / "checkpoints")
      cleanup.callback(m.checkpoints.close)
    states, data_keys, histories = list(trainer.states), list(trainer.data_keys), []
    if resume:
      restored = _restore(members, states, data_keys, is_writer)
      if restored is None:
        print(f"--resume: no checkpoint in {folder}; starting from step 0", file=sys.stderr)
      else:
        states, data_keys, histories = (list(values) for values in zip(*restored, strict=True))
    for m, history in itertools.zip_longest(members, histories, fillvalue=[]):
      m.metrics = metrics_writer.MetricsWriter(
        m.workdir / "metrics.jsonl",
        history,
        enabled=is_writer,
        tensorboard_dir=m.workdir / "tensorboard" if config.tensorboard else None,
      )
      cleanup.callback(m.metrics.close)
      m.last = history[-1] if history else None
    if is_writer:
      for m, state in zip(members, states, strict=True):
        resumed_from = int(state.step) if resume else None
        _write_config(
          m.workdir / "config.json", m.config, state.params, trainer.groups, command, resumed_from
        )

    def training() -> bool:
      return any(m.diverged is None for m in members)

    def diverge(m: _Member, why: str, loss: str, at: int) -> None:
      """Stops member ``m``; a sweep's goes on without it, recording where it stopped."""
      m.checkpoints.manager.wait_until_finished()
      m.diverged, m.why, m.good_step = {"step": at, "loss": loss}, why, m.checkpoints.latest_step()
      if single:
        return
      if is_writer:
        record = run_folder.read_record(m.workdir / run_folder.CONFIG)
        record[run_folder.DIVERGED] = m.diverged
        run_folder.write_json(m.workdir / run_folder.CONFIG, record)
      kept = "no checkpoint was saved"
      if m.good_step is not None:
        kept = f"its last good checkpoint (step {m.good_step}) is kept"
      print(f"{m.name}: {why} at step {at}; this member stopped, {kept}", file=sys.stderr)

    step = int(states[0].step)
    elapsed_before = max((h[-1]["wall_time"] for h in histories if h), default=0.0)

    def log(params) -> None:
      shared = {
        "step": step,
        "method": config.method,
        "lr": float(trainer.schedule(step)),
        "wall_time": elapsed_before + time.time() - start_time,
      }
      for m, metrics in zip(members, trainer.evaluate_each(params), strict=True):
        if m.diverged is None:
          m.last = {**shared, **metrics}
          m.metrics.append(m.last)
          loss = m.last["train_loss"]
          if not math.isfinite(loss):
            diverge(m, f"the evaluated training loss is {loss}", str(loss), step)

    def save(host_state) -> None:
      for m, state, data_key in zip(members, trainer.unstack(host_state), data_keys, strict=True):
        if m.diverged is None and not m.checkpoints.save(state, data_key, m.metrics.rows):
          diverge(m, "the parameters became non-finite", "non-finite parameters", step)

    progress = tqdm(
      total=config.total_iter,
      initial=step,
      disable=not (is_writer and config.progress),
      dynamic_ncols=True,
      desc=f"{config.experiment} {config.method}",
    )
    cleanup.callback(progress.close)
    initial = trainer.stack(states)
    if not histories:
      log(initial.params)
    device_state = trainer.to_device(initial)
    device_keys = trainer.device_keys(data_keys)
    stretch, signum = 1, 0  # steps per compiled call, grown to about STRETCH_SECONDS
    for point in _eval_points(config, step):
      if not training():
        break
      while step < point:
        num_steps = min(stretch, point - step)
        began = time.time()
        device_state, losses = trainer.train(device_state, num_steps, device_keys)
        losses = np.asarray(jax.device_get(losses)).reshape(-1)[-len(members) :]  # one sync
        for m, loss in zip(members, losses.tolist(), strict=True):
          if m.diverged is None and not math.isfinite(loss):
            reached = np.asarray(trainer.from_device(device_state).step).reshape(-1)
            diverge(
              m, f"the training loss became {loss}", str(loss), int(reached[members.index(m)])
            )
        progress.update(num_steps)
        step += num_steps
        seconds = max(time.time() - began, 1e-3)
        signum, stretch = _max_over_processes(
          stop_requested() or 0, -max(1, int(num_steps * STRETCH_SECONDS / seconds))
        )
        stretch = -stretch  # the shortest proposal, so every process runs the same stretches
        if signum or not training():
          break
      if not training():
        break
      host_state = trainer.from_device(device_state)  # every point is an evaluation or a save
      if step == point and (step % config.log_freq == 0 or step == config.total_iter):
        log(host_state.params)
        rows = [m.last for m in members if m.diverged is None]
        progress.set_postfix(
          loss=" ".join(f"{r['train_loss']:.4f}" for r in rows),
          test_acc=" ".join(f"{r['test_acc']:.4f}" for r in rows),
          active=" ".join(f"{r['active_units_pct']:.1f}%" for r in rows),
        )
      if signum or step % config.save_freq == 0 or step == config.total_iter:
        save(host_state)
      if signum and step < config.total_iter:
        raise Interrupted(step, signum)
  diverged = [m for m in everyone if m.diverged is not None]
  if diverged:
    raise NonFiniteLossError(_divergence_message(diverged, len(everyone), single))
  return [m.last for m in everyone]


def _divergence_message(diverged: list[_Member], count: int, single: bool) -> str:
  """One line: the single run's divergence, or which members of a sweep diverged and where."""
  if single and diverged[0].why:
    (m,) = diverged
    kept = "no checkpoint was saved"
    if m.good_step is not None:
      kept = f"the last good checkpoint (step {m.good_step}) is kept in {m.workdir / 'checkpoints'}"
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


def _restore(members: list[_Member], states, data_keys, is_writer: bool):
  """Each member's newest checkpoint at one step readable in all of them, or None if none.

  Unreadable checkpoints past that step are moved to ``checkpoints-unreadable/``,
  readable ones (a sweep's other members') to ``checkpoints-set-aside/``, with a warning.
  """
  at_most, unreadable = None, [{} for _ in members]
  while True:
    restored = []
    for m, state, data_key, bad in zip(members, states, data_keys, unreadable, strict=True):
      try:
        restored.append(m.checkpoints.restore_latest(state, data_key, at_most))
      except checkpointing.NoReadableCheckpointError as e:
        raise WorkdirError(f"{e}; start a new run in another --workdir") from None
      bad.update(m.checkpoints.unreadable)
    steps = {-1 if r is None else int(r[0].step) for r in restored}
    if len(steps) == 1:
      break
    at_most = min(steps)  # the members' checkpoints were saved together: some step is in all
  (step,) = steps
  highest, lowest = _max_over_processes(step, -step)
  if highest != -lowest:  # a file only some processes read was damaged
    raise WorkdirError(
      f"the processes of this job restored different checkpoints ({-lowest} to {highest}) "
      f"from {members[0].checkpoints.directory}; move the newer ones aside and resume"
    )
  moved = False
  for m, bad in zip(members, unreadable, strict=True):
    newer = [s for s in m.checkpoints.manager.all_steps() if s > step]
    unread = sorted(s for s in newer if s in bad)
    for steps, folder, reason in (
      (unread, "checkpoints-unreadable", f"unreadable ({bad[unread[0]]})" if unread else ""),
      (sorted(set(newer) - set(unread)), "checkpoints-set-aside", "readable, but another "
       "member's checkpoint at that step is not"),
    ):  # fmt: skip
      if not steps:
        continue
      moved, aside = True, m.workdir / folder
      if is_writer:
        m.checkpoints.set_aside(steps, aside)
      print(
        f"warning: checkpoint {', '.join(map(str, steps))} in {m.checkpoints.directory} is "
        f"{reason}; moved to {aside}; resuming from step {step}",
        file=sys.stderr,
      )
  if moved:
    _sync_processes("checkpoints set aside")
    for m in members:
      m.checkpoints.manager.reload()  # the saves to come must not wait for those steps
  return None if step < 0 else restored


def _sync_processes(name: str) -> None:
  """Waits for every process of the job to get here."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def _write_config(
  path: Path,
  config: ml_collections.ConfigDict,
  params: Any,
  groups: Any,
  command: str,
  resumed_from: int | None = None,
) -> None:
  """``config.json``: the config, the command, the library version, devices and groups.

  A resumed run (``resumed_from``: the step) keeps the record it started with and appends
  ``{"command", "step", "changed"}`` to its ``resumes``: the command, the step it resumed
  from, and the config keys it changed (only those that cannot change the trajectory).
  """
  record = None
  if resumed_from is not None and path.exists():
    record = run_folder.read_record(path)  # cli.resumed_config has read it already
    before = run_folder.read_config(path)
    changed = {k: v for k, v in config.to_dict().items() if config[k] != before[k]}
    resume = {"command": command, "step": resumed_from, "changed": changed}
    record.setdefault("resumes", []).append(resume)
  if record is None:
    units = {}

    def note_units(path, param, spec):
      if spec is not None and spec.role == "in" and pp.is_kernel(path, param):
        units[str(spec.group)] = int(param.shape[-1 if spec.unit_axis is None else spec.unit_axis])

    jax.tree_util.tree_map_with_path(note_units, params, groups)
    record = config.to_dict()
    record.update(
      command=command,
      pathprox_jax_version=pp.__version__,
      devices=f"{jax.device_count()} x {jax.devices()[0].platform}",
      processes=jax.process_count(),
      groups=sorted(int(g) for g in units),
      units=units,
      group_names={str(g): name for g, name in group_names(config).items()},
    )
  path.parent.mkdir(parents=True, exist_ok=True)
  run_folder.write_json(path, record)
