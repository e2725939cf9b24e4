"""What PathProx reports: path norm, active units and the weight-decay objective, in one pass.

A unit is whatever the group's layout makes it: a hidden neuron, a channel, an attention head.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from pathprox_jax._src import decay, unit_norms
from pathprox_jax._src import groups as groups_lib
from pathprox_jax._src import params as params_lib
from pathprox_jax._src.annotations import GroupSpecTree
from pathprox_jax._src.costs import relative_costs


class PathNorm(NamedTuple):
  """:math:`\\sum_i \\|w_i\\| \\|v_i\\|` over all groups' units, and per group."""

  total: jax.Array
  per_group: dict[int, jax.Array]


class ActiveUnits(NamedTuple):
  """Units with :math:`\\|w_i\\| \\|v_i\\| > 0`: count and fraction, overall and per group."""

  count: jax.Array
  fraction: jax.Array
  per_group: dict[int, jax.Array]
  per_group_fraction: dict[int, jax.Array]


class UnitNorms(NamedTuple):
  """One group's per-unit norms, f32: :math:`\\|w_i\\|`, :math:`|a_i|` and :math:`\\|v_i\\|`."""

  inputs: jax.Array
  in_bias: jax.Array | None  # None: the "in" layer has no bias
  outputs: jax.Array

  def path_norms(self) -> jax.Array:
    """:math:`\\|w_i\\| \\|v_i\\|` per unit (weights only)."""
    return self.inputs * self.outputs

  def regularized(self, regularize_bias: bool) -> jax.Array:
    """What the prox regularises per unit: :math:`\\|w_i\\| \\|v_i\\|`, or with
    ``regularize_bias`` :math:`\\|[w_i, a_i]\\| \\|v_i\\|`."""
    if not regularize_bias or self.in_bias is None:
      return self.path_norms()
    return jnp.sqrt(self.inputs * self.inputs + self.in_bias * self.in_bias) * self.outputs


class Summary(NamedTuple):
  """The metrics of one set of parameters, from one computation of the per-unit norms."""

  path_norm: PathNorm
  active_units: ActiveUnits
  objective: jax.Array | None  # None: no loss was given


def unit_norms_by_group(params: Any, groups: GroupSpecTree) -> dict[int, UnitNorms]:
  """``{group: its per-unit norms}``."""
  params = params_lib.unwrap_variables(params)
  layouts = groups_lib.group_layouts(params, groups)
  scaled = unit_norms.scaled_groups(jax.tree.leaves(params), layouts)
  return {
    g.group: UnitNorms(
      scaled[g.in_kernel].norms(),
      None if g.in_bias is None else scaled[g.in_bias].norms(),
      scaled[g.out_kernel].norms(),
    )
    for g in layouts
  }


def unit_path_norms(params: Any, groups: GroupSpecTree) -> dict[int, jax.Array]:
  """Each unit's path norm :math:`\\|w_i\\| \\|v_i\\|`, per group (weights only, f32).

  :math:`w_i` and :math:`v_i` are unit ``i``'s slices of the group's "in" and "out"
  kernels on their unit axes (a Dense neuron's column and row, an attention head's
  value and output projections). Magnitude pruning ranks units by these scores.

  Args:
    params: the (unboxed) parameters, or an NNX ``State`` of them.
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.

  Returns:
    ``{group: scores}``, each of shape ``[units]``.
  """
  return {g: u.path_norms() for g, u in unit_norms_by_group(params, groups).items()}


def _path_norm(units: dict[int, UnitNorms]) -> PathNorm:
  per_group = {g: jnp.sum(u.path_norms()) for g, u in units.items()}
  total = sum(per_group.values(), jnp.zeros((), jnp.float32))
  return PathNorm(total, per_group)


def _active_units(units: dict[int, UnitNorms]) -> ActiveUnits:
  paths = {g: u.path_norms() for g, u in units.items()}
  per_group = {g: jnp.sum(p > 0).astype(jnp.int32) for g, p in paths.items()}
  count = sum(per_group.values(), jnp.zeros((), jnp.int32))
  total = sum(p.shape[0] for p in paths.values())
  return ActiveUnits(
    count=count,
    fraction=count / max(total, 1),
    per_group=per_group,
    per_group_fraction={g: per_group[g] / paths[g].shape[0] for g in paths},
  )


def _objective(
  loss: jax.Array | float,
  params: Any,
  groups: GroupSpecTree,
  units: dict[int, UnitNorms],
  weight_decay: float | jax.Array,
  regularize_bias: bool,
  unit_costs: Mapping[int, float] | None,
) -> jax.Array:
  costs = dict.fromkeys(units, 1.0) if unit_costs is None else relative_costs(unit_costs)
  paths = sum(
    (costs[g] * jnp.sum(u.regularized(regularize_bias)) for g, u in units.items()),
    jnp.zeros((), jnp.float32),
  )
  penalty = weight_decay_penalty(params, weight_decay, groups, regularize_bias=regularize_bias)
  return loss + weight_decay * paths + penalty


def summarize(
  params: Any,
  groups: GroupSpecTree,
  loss: jax.Array | float | None = None,
  weight_decay: float | jax.Array = 0.0,
  *,
  regularize_bias: bool = False,
  unit_costs: Mapping[int, float] | None = None,
) -> Summary:
  """Path norm, active units and (given ``loss``) the objective, the unit norms computed once.

  Args:
    params: the (unboxed) parameters, or an NNX ``State`` of them.
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.
    loss: the data loss, or ``None`` for no objective.
    weight_decay: :math:`\\lambda`.
    regularize_bias: biases are regularised (see :func:`weight_decay_objective`).
    unit_costs: ``{group: cost of one unit}`` of cost-aware thresholds (see
      :func:`weight_decay_objective`).

  Returns:
    A :class:`Summary`.
  """
  units = unit_norms_by_group(params, groups)
  objective = None
  if loss is not None:
    objective = _objective(loss, params, groups, units, weight_decay, regularize_bias, unit_costs)
  return Summary(_path_norm(units), _active_units(units), objective)


def path_norm(params: Any, groups: GroupSpecTree) -> PathNorm:
  """The path norm :math:`\\sum_{\\text{groups}} \\sum_i \\|w_i\\| \\|v_i\\|`.

  Biases are not included, as in the paper's reports.

  Args:
    params: the (unboxed) parameters, or an NNX ``State`` of them.
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.

  Returns:
    A :class:`PathNorm` with the total and ``{group: path norm}``.
  """
  return _path_norm(unit_norms_by_group(params, groups))


def active_units(params: Any, groups: GroupSpecTree) -> ActiveUnits:
  """Counts the units that are switched on: :math:`\\|w_i\\| \\|v_i\\| > 0` exactly.

  Args:
    params: the (unboxed) parameters, or an NNX ``State`` of them.
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.

  Returns:
    An :class:`ActiveUnits` (fractions in [0, 1]; 0 units give fraction 0).
  """
  return _active_units(unit_norms_by_group(params, groups))


def weight_decay_objective(
  loss: jax.Array | float,
  params: Any,
  groups: GroupSpecTree,
  weight_decay: float | jax.Array,
  *,
  regularize_bias: bool = False,
  unit_costs: Mapping[int, float] | None = None,
) -> jax.Array:
  """The weight-decay objective at its best rescaling (the paper's figures' y-axis).

  .. math::
    L + \\lambda \\sum_{\\text{groups } g} c_g \\sum_i \\|w_i\\| \\|v_i\\|
      + \\frac{\\lambda}{2} \\sum_{\\text{decayed } \\theta} \\|\\theta\\|^2

  For grouped units :math:`\\frac{\\lambda}{2}(\\|w_i\\|^2 + \\|v_i\\|^2) \\ge
  \\lambda \\|w_i\\| \\|v_i\\|`, with equality once rescaled, so this is the
  weight-decay objective of the same function. The decayed parameters are those of ordinary
  weight decay (:func:`pathprox_jax.decayed_mask`): ungrouped kernels ("follow" parameters,
  e.g. a head's query and key, count as ungrouped), and with ``regularize_bias`` also
  ungrouped biases and the groups' "out" biases, while :math:`\\|w_i\\|` becomes
  :math:`\\|[w_i, a_i]\\|`. :math:`c_g` is 1, or with ``unit_costs`` the group's relative
  cost (:func:`pathprox_jax.relative_costs`). This is the objective ``pathprox_sgd`` (with
  the same ``unit_costs``) minimises.

  Args:
    loss: the data loss :math:`L`.
    params: the (unboxed) parameters, or an NNX ``State`` of them.
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.
    weight_decay: :math:`\\lambda`.
    regularize_bias: biases are regularised too (as ``pathprox_sgd(regularize_bias=True)``).
    unit_costs: ``{group: cost of one unit}``, as given to ``pathprox_sgd``; ``None``: all 1.

  Returns:
    The objective, a float32 scalar.
  """
  summary = summarize(
    params, groups, loss, weight_decay, regularize_bias=regularize_bias, unit_costs=unit_costs
  )
  return summary.objective


def weight_decay_penalty(
  params: Any,
  weight_decay: float | jax.Array,
  groups: GroupSpecTree | None = None,
  *,
  regularize_bias: bool = False,
) -> jax.Array:
  """Ordinary weight decay's term, on the leaves it applies to.

  .. math::
    \\frac{\\lambda}{2} \\sum_{\\text{decayed } \\theta} \\|\\theta\\|^2

  The decayed leaves are :func:`pathprox_jax.decayed_mask`'s: without ``groups`` (the
  weight-decay baseline, whose gradient step minimises ``loss + penalty``) every kernel, or
  every parameter with ``regularize_bias``; with ``groups`` what the prox does not regularise.
  No rescaling is applied (unlike :func:`weight_decay_objective`'s grouped term).

  Args:
    params: the (unboxed) parameters, or an NNX ``State`` of them.
    weight_decay: :math:`\\lambda`.
    groups: the spec pytree from :func:`pathprox_jax.group_spec`, or ``None``: no groups.
    regularize_bias: biases are regularised too.

  Returns:
    The penalty, a float32 scalar.

  Example:
    >>> import jax.numpy as jnp
    >>> import pathprox_jax
    >>> params = {"dense": {"kernel": 2 * jnp.ones((3, 4)), "bias": jnp.ones(4)}}
    >>> float(pathprox_jax.weight_decay_penalty(params, 0.1))
    2.4000000953674316
  """
  params = params_lib.unwrap_variables(params)
  decayed = jax.tree.leaves(decay.decayed_mask(params, groups, regularize_bias=regularize_bias))
  squared = sum(
    (
      jnp.sum(jnp.square(p.astype(jnp.float32)))
      for p, d in zip(jax.tree.leaves(params), decayed, strict=True)
      if d
    ),
    jnp.zeros((), jnp.float32),
  )
  return 0.5 * weight_decay * squared
