"""The PathProx proximal step as an Optax gradient transformation (the recipes: ``alias``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from pathprox_jax._src import balance as balance_lib
from pathprox_jax._src import costs as costs_lib
from pathprox_jax._src import groups as groups_lib
from pathprox_jax._src import params as params_lib
from pathprox_jax._src import prox as prox_lib
from pathprox_jax._src import unit_norms
from pathprox_jax._src.annotations import GroupSpecTree
from pathprox_jax._src.checks import check_hyperparameter
from pathprox_jax._src.threshold_rules import THRESHOLD_RULES, ThresholdRule
from pathprox_jax._src.unit_norms import EPS

NO_PARAMS_MSG = (
  "PathProx requires the current value of parameters: pass them to update, "
  "tx.update(updates, state, params)."
)


class PathProxState(NamedTuple):
  """State of :func:`pathprox`: the step count that indexes the learning rate."""

  count: jax.Array


def _check_threshold_args(learning_rate, weight_decay, momentum, threshold_rule) -> None:
  """The checks of :func:`pathprox`'s arguments that drive the threshold."""
  check_hyperparameter("learning_rate", learning_rate, "finite and > 0", lambda x: x > 0)
  check_hyperparameter("weight_decay", weight_decay, "finite and >= 0", lambda x: x >= 0)
  check_hyperparameter("momentum", momentum, "in [0, 1)", lambda x: 0 <= x < 1, schedule=False)
  if threshold_rule not in THRESHOLD_RULES:
    names = ", ".join(repr(rule) for rule in THRESHOLD_RULES)
    raise ValueError(f"PathProx threshold_rule must be one of {names}, got {threshold_rule!r}.")


def pathprox(
  learning_rate: optax.ScalarOrSchedule,
  weight_decay: optax.ScalarOrSchedule,
  groups: GroupSpecTree,
  *,
  momentum: float | jax.Array = 0.0,
  threshold_rule: ThresholdRule = "fixed_point",
  balance: bool | balance_lib.Chains = True,
  regularize_bias: bool = False,
  eps: float = EPS,
  unit_costs: Mapping[int, float] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """The PathProx proximal step, last in a chain after a base optimiser.

  Given base updates :math:`u` and params :math:`p`, the grouped leaves' update is

  .. math::
    \\mathrm{prox}_{\\tau_t}(p + u) - p, \\qquad
    \\tau_t = \\frac{\\lambda_t \\, \\gamma_t}{1 - \\beta} \\ (\\texttt{"fixed_point"})
    \\ \\text{or} \\ \\lambda_t \\, \\gamma_t \\ (\\texttt{"paper"}),

  with :func:`pathprox_jax.prox` the proximal step, :math:`\\gamma_t` and
  :math:`\\lambda_t` taken at this transform's own step count (give the base optimiser the same
  schedule), and the rules of :data:`pathprox_jax.THRESHOLD_RULES` (the guide: "Momentum,
  AdamW and the threshold"). Other leaves and the base optimiser's state (SGD's trace) pass
  unchanged. Wrappers such as ``optax.MultiSteps`` must wrap the whole chain. Keep float32
  master weights: a bfloat16 parameter cannot hold a shrink as small as :math:`\\tau`. Ready
  chains: :func:`pathprox_jax.pathprox_sgd`, :func:`pathprox_jax.pathprox_adamw`.

  Args:
    learning_rate: the base optimiser's :math:`\\gamma`, a float > 0 or a schedule.
    weight_decay: :math:`\\lambda`, a float >= 0 or a schedule.
    groups: the spec pytree from :func:`pathprox_jax.group_spec` or
      :func:`pathprox_jax.discover_groups`.
    momentum: the base optimiser's heavy-ball :math:`\\beta` in [0, 1): ``β`` after
      ``optax.sgd(γ, momentum=β)`` (Nesterov too), 0 after plain SGD and after Adam.
    threshold_rule: "fixed_point" or "paper" (a string: static under
      ``optax.inject_hyperparams``).
    balance: which groups the layer balance rescales first, and when it is skipped: see
      :func:`pathprox_jax.balance`.
    regularize_bias: the "in" bias is part of each unit's input weights (see
      :func:`pathprox_jax.balance`).
    eps: the clip of every norm.
    unit_costs: ``{group: cost of one unit}`` (:func:`pathprox_jax.unit_costs`), or ``None``
      for cost 1: group :math:`g` is thresholded at :math:`c_g \\tau`, with :math:`c_g` from
      :func:`pathprox_jax.relative_costs`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Raises:
    ValueError: when built, for a concrete argument out of its range, a string for a number,
      or an unknown ``threshold_rule`` (schedules and traced values cannot be checked).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import pathprox_jax
    >>> G = pathprox_jax.GroupSpec
    >>> params = {"w": jnp.ones((3, 4)), "v": jnp.ones((4, 2))}
    >>> groups = {"w": G(0, "in"), "v": G(0, "out")}
    >>> tx = optax.chain(
    ...   optax.sgd(0.1, momentum=0.9), pathprox_jax.pathprox(0.1, 1e-4, groups, momentum=0.9)
    ... )
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)

  References:
    Yang et al., `A Better Way to Decay: Proximal Gradient Training Algorithms
    for Neural Nets <https://arxiv.org/abs/2210.03069>`_, 2022.
  """
  _check_threshold_args(learning_rate, weight_decay, momentum, threshold_rule)
  check_hyperparameter("eps", eps, "finite and > 0", lambda x: x > 0, schedule=False)
  costs = None if unit_costs is None else costs_lib.relative_costs(unit_costs)

  def init_fn(params):
    if jax.tree.leaves(params):  # optax.tree_utils.tree_map_params inits with no leaves
      layouts = groups_lib.group_layouts(params_lib.unwrap_variables(params), groups)
      costs_lib.check_costs(costs, layouts)
      if not regularize_bias:
        balance_lib.chain_layouts(layouts, balance)
    return PathProxState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(NO_PARAMS_MSG)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    wd = weight_decay(state.count) if callable(weight_decay) else weight_decay
    threshold = jnp.asarray(wd, jnp.float32) * jnp.asarray(lr, jnp.float32)
    if threshold_rule == "fixed_point":
      threshold = threshold / (1 - jnp.asarray(momentum, jnp.float32))
    param_leaves, treedef = jax.tree.flatten(params)
    update_leaves = treedef.flatten_up_to(updates)
    layouts = groups_lib.group_layouts(params, groups)
    grouped = {i for g in layouts for i in g.unit_axes}
    stepped = {
      i: param_leaves[i].astype(jnp.float32) + update_leaves[i].astype(jnp.float32) for i in grouped
    }
    new = unit_norms.multiply_out(
      prox_lib.prox_scales(
        stepped,
        layouts,
        costs_lib.group_thresholds(threshold, costs),
        balance=balance,
        regularize_bias=regularize_bias,
        eps=eps,
      )
    )
    out = [
      (new[i] - param_leaves[i].astype(jnp.float32)).astype(param_leaves[i].dtype)
      if i in new
      else u
      for i, u in enumerate(update_leaves)
    ]
    return treedef.unflatten(out), PathProxState(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
