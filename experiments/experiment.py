"""Assembling the members of a run or sweep: data, model, optimisers, compiled functions.

A single run is a sweep of one member. :class:`Experiment` builds every member from its
config (the same experiment, differing only in ``seed`` and ``weight_decay``): the data set on
the devices, shared; each member's initial parameters and data key; the optimiser of each
weight decay; the compiled training stretch and the evaluation. The loop
(:func:`experiments.train.train_members`) sees a list of members, each an ordinary run with
its own :class:`~experiments.train_step.TrainState` and data key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import pathprox_jax as pp
from configs import ConfigError
from experiments import (
  config_checks,
  data,
  dataset_facts,
  distributed,
  evaluation,
  init_params,
  input_pipeline,
  models,
  parallel,
)
from experiments import groups as groups_lib
from experiments.schedules import learning_rate_schedule
from experiments.select_by_member import MemberOptState, select_by_member
from experiments.train_step import TrainState, make_train_steps, model_state


def create_optimizer(
  config: ml_collections.ConfigDict,
  groups: Any,
  schedule: optax.Schedule,
  unit_costs: Mapping[int, float] | None = None,
) -> optax.GradientTransformation:
  """The method (PathProx, the optimiser's weight decay, GMP or network slimming) under the
  optimiser.

  ``optimizer="sgd"``: ``pathprox_sgd`` (with ``threshold_rule``), or SGD on
  loss + (λ/2)·Σ‖kernels‖². ``optimizer="adamw"``: ``pathprox_adamw``, or
  ``optax.adamw`` with its decoupled decay on the kernels. With
  ``regularize_bias`` the baseline decays every parameter, biases included.
  With ``target_flops`` in (0, 1): ``budget_sgd`` or ``budget_adamw``, warm-up until
  ``prox_start``, a ramp to the target until ``heal_start``, then the heal; ``"pathprox"``
  selects the units with the cost-aware prox and its controller, ``"gmp"`` by magnitude
  (under weight decay of every kernel). ``"slimming"`` (Liu et al. 2017): SGD on
  loss + (λ/2)·Σ‖kernels‖² + ``scale_l1``·Σ|γ_i| over the units' BatchNorm scales
  (:func:`unit_scale_mask`); ``experiments.prune --score scale`` then keeps the largest |γ_i|.

  Args:
    config: the run's config.
    groups: the model's group spec.
    schedule: the learning-rate schedule.
    unit_costs: ``{group: FLOPs per example of one unit}`` (``pp.unit_costs``), for a budget
      (``None``: every unit costs the same; the state's structure does not depend on them).
  """
  # The baseline decays what the library's rule decays without groups: the kernels, or with
  # regularize_bias every leaf (which needs no mask).
  decayed = None if config.regularize_bias else pp.decayed_mask
  momentum = config.momentum or None  # a config float, never traced: 0 means no trace at all
  if config_checks.has_budget(config):
    budget = pp.budget_adamw if config.optimizer == "adamw" else pp.budget_sgd
    extra = {} if config.optimizer == "adamw" else {"momentum": momentum}
    return budget(
      schedule,
      config.weight_decay,
      groups,
      target=config.target_flops,
      prox_start=config.prox_start,
      heal_start=config.heal_start,
      selection="magnitude" if config.method == "gmp" else "prox",
      unit_costs=unit_costs,
      heal_weight_decay=config.heal_weight_decay,
      kept_threshold=config.kept_threshold,
      balance=config.balance,
      regularize_bias=config.regularize_bias,
      **extra,
    )
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
  penalties = [optax.add_decayed_weights(config.weight_decay, mask=decayed)]
  if config.method == "slimming":
    scales = unit_scale_mask(groups)
    if not any(jax.tree.leaves(scales)):
      raise ConfigError(
        "--method slimming penalises the units' BatchNorm scales, and this model has none: "
        "use a model with BatchNorm units (fashion_mnist_resnet)"
      )
    penalties.append(add_l1(config.scale_l1, scales))
  return optax.chain(*penalties, optax.sgd(schedule, momentum=momentum))


def unit_scale_mask(groups: Any) -> Any:
  """``True`` at the units' BatchNorm scales γ (a group's "in" leaf named ``scale``, see
  :func:`pathprox_jax.batch_norm_inits`), ``False`` elsewhere: network slimming's channel
  factors."""

  def is_unit_scale(path: Any, spec: pp.GroupSpec | None) -> bool:
    return spec is not None and spec.role == "in" and getattr(path[-1], "key", None) == "scale"

  return jax.tree_util.tree_map_with_path(
    is_unit_scale, groups, is_leaf=lambda s: s is None or isinstance(s, pp.GroupSpec)
  )


def add_l1(strength: float, mask: Any) -> optax.GradientTransformation:
  """Adds ``strength``·sign(p), the subgradient of ``strength``·Σ|p|, to the updates of the
  leaves where ``mask`` is True.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = add_l1(0.1, {"scale": True, "kernel": False})
    >>> params = {"scale": jnp.array([2.0, -1.0]), "kernel": jnp.array([3.0])}
    >>> zeros = {"scale": jnp.zeros(2), "kernel": jnp.zeros(1)}
    >>> tx.update(zeros, tx.init(params), params)[0]["scale"]
    Array([ 0.1, -0.1], dtype=float32)
  """

  def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
    if params is None:
      raise ValueError("add_l1 needs the params: pass them to update(updates, state, params)")
    return jax.tree.map(lambda g, p: g + strength * jnp.sign(p), updates, params), state

  return optax.masked(optax.GradientTransformation(lambda _: optax.EmptyState(), update), mask)


def initial_params(
  model: nn.Module, seeds: Sequence[int], sample: np.ndarray
) -> list[tuple[Any, Any, jax.Array]]:
  """The boxed parameters at step 0 of the run with each seed, the model's state
  (:func:`~experiments.train_step.model_state`) and the run's data key.

  The initialisation is compiled once for all seeds.
  """
  init = jax.jit(model.init)
  sample = jnp.asarray(sample, jnp.float32)
  runs = []
  for seed in seeds:
    init_key, data_key = jax.random.split(jax.random.key(seed))
    variables = init(init_key, sample)
    runs.append((variables["params"], nn.meta.unbox(model_state(variables)), data_key))
  return runs


def _load_arrays(config: ml_collections.ConfigDict) -> dict[str, dataset_facts.Arrays]:
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
  if distributed.broadcast_from_process_zero(np.int32(error is not None)):  # also a barrier
    raise error or data.DatasetUnavailableError(
      "process 0 could not load the data set (see its error)"
    )
  return arrays or load()


class Experiment:
  """The members' data, model, optimisers and compiled functions, ready to train.

  One member (a single run) trains and evaluates its own state as it is; several (a
  sweep) are stacked on a leading member axis (:func:`parallel.over_members`), each
  optimiser state tagged with the member's weight decay, and evaluated in one vmapped
  pass. A member's state is an ordinary :class:`TrainState` either way, so a sweep
  member's checkpoints are a single run's.

  Attributes:
    configs: each member's config (its ``seed`` and ``weight_decay``).
    mesh: the devices, on axis ``"data"``.
    splits: ``{"train", "val", "test"}``: ``(uint8 images, int32 labels)`` on the host.
    groups: the model's PathProx group spec.
    unit_costs: ``{group: FLOPs per example of one of its units}`` (``pp.unit_costs``).
    steps_per_epoch: training steps per pass over the training split.
    schedule: the learning-rate schedule.
    init_params_source: the folder the members' initial params were read from ("": none).
    states: each member's initial :class:`TrainState` (a single run's replicated over
      ``mesh``).
    data_keys: each member's key of the data order (and augmentation).
    train_data: the training split's images and labels on the devices, in the step's layout.
    evaluate: ``params -> metrics dict`` of one member's params.
  """

  def __init__(
    self,
    configs: Sequence[ml_collections.ConfigDict],
    member_loop: str = "auto",
    init_params_source: str | None = None,
  ):
    """Builds the members (``init_params_source``: where their params start, by default
    the config's ``init_params``; "" for the random init)."""
    self.configs = list(configs)
    config = self.configs[0]
    self.mesh = parallel.make_mesh(config.num_devices)
    self.splits = splits = input_pipeline.split(
      _load_arrays(config),
      config.split,
      val_size=config.val_size,
      train_per_class=config.train_per_class,
    )
    train_images, train_labels = splits["train"]
    self.steps_per_epoch = input_pipeline.steps_per_epoch(len(train_labels), config.batch_size)
    self.schedule = learning_rate_schedule(config, self.steps_per_epoch)
    model = models.create_model(config)
    initial = initial_params(model, [c.seed for c in self.configs], train_images[:1])
    example = jax.ShapeDtypeStruct(train_images[:1].shape, jnp.float32)
    boxed, state = initial[0][0], initial[0][1]
    self.groups = groups_lib.group_spec(
      models.family(config), model, boxed, example, config.group_source, state
    )
    print(
      groups_lib.group_summary(
        nn.meta.unbox(initial[0][0]), self.groups, config.group_source, config.regularize_bias
      )
    )
    self.unit_costs = groups_lib.unit_costs(model, boxed, example, self.groups, state)
    weight_decays = sorted({c.weight_decay for c in self.configs})
    txs = [
      create_optimizer(_with_weight_decay(config, w), self.groups, self.schedule, self.unit_costs)
      for w in weight_decays
    ]
    self._indices = [weight_decays.index(c.weight_decay) for c in self.configs]
    self.init_params_source = source = (
      config.init_params if init_params_source is None else init_params_source
    )
    self.states, self.data_keys = [], []
    for index, (boxed, state, data_key) in zip(self._indices, initial, strict=True):
      params = init_params.restore_init_params(source, nn.meta.unbox(boxed), config)
      state = init_params.restore_init_model_state(source, state)
      step = jnp.zeros((), jnp.int32)
      self.states.append(TrainState(step, params, txs[index].init(params), state))
      self.data_keys.append(data_key)
    self._stacked = len(self.configs) > 1
    tx = select_by_member(txs) if self._stacked else txs[0]
    run = make_train_steps(model, tx, config, len(train_labels), self.mesh.size)
    if self._stacked:
      run = parallel.over_members(run, member_loop)
    else:  # a single run's state lives on the mesh from the start
      self.states = [parallel.replicated(self.states[0], self.mesh)]
      self.data_keys = [_replicated_key(self.data_keys[0], self.mesh)]
    self.to_device, self._train_fn, self.from_device = parallel.parallelize(
      run, self.mesh, config.parallel
    )  # the members share one copy of the data on the devices
    self.train_data = self.to_device((train_images, train_labels))
    self.evaluate = evaluation.Evaluator(
      model, config, splits, self.groups, self.mesh, unit_costs=self.unit_costs
    )

  def stack(self, states: Sequence[TrainState]) -> TrainState:
    """The members' states as one (host): a sweep's stacked, each tagged with its weight decay."""
    if not self._stacked:
      (state,) = states
      return state
    return parallel.stack(
      [
        s._replace(opt_state=MemberOptState(jnp.int32(i), s.opt_state))
        for s, i in zip(states, self._indices, strict=True)
      ]
    )

  def unstack(self, state: TrainState) -> list[TrainState]:
    """Each member's ordinary state, from the host state."""
    if not self._stacked:
      return [state]
    members = [parallel.member(state, m) for m in range(len(self.configs))]
    return [s._replace(opt_state=s.opt_state.inner) for s in members]

  def device_keys(self, data_keys: Sequence[jax.Array]) -> Any:
    """The members' data keys, laid out for :meth:`train`."""
    key_data = [jax.random.key_data(k) for k in data_keys]
    return self.to_device(jnp.stack(key_data) if self._stacked else key_data[0])

  def train(self, device_state: Any, num_steps: int, device_keys: Any) -> tuple[Any, jax.Array]:
    """Runs ``num_steps`` steps of every member (each stops at a non-finite loss).

    Returns the device state and each member's last loss, on the last axis.
    """
    return self._train_fn(device_state, jnp.int32(num_steps), *self.train_data, device_keys)

  def evaluate_each(self, params: Any, state: Any) -> list[dict[str, float]]:
    """Every member's metrics, from the host params and model state."""
    if not self._stacked:
      return [self.evaluate(params, state)]
    return self.evaluate.each(params, state, [c.weight_decay for c in self.configs])


def _with_weight_decay(
  config: ml_collections.ConfigDict, weight_decay: float
) -> ml_collections.ConfigDict:
  """A copy of ``config`` with another ``weight_decay``."""
  member = ml_collections.ConfigDict(config.to_dict())
  member.weight_decay = weight_decay
  return member


def _replicated_key(key: jax.Array, mesh: jax.sharding.Mesh) -> jax.Array:
  """A data key as a global array replicated over ``mesh``."""
  return jax.random.wrap_key_data(parallel.replicated(jax.random.key_data(key), mesh))
