"""What PathProx reports: path norm, active units and the weight-decay objective.

A unit is whatever the group's layout makes it: a hidden neuron, a channel, an attention head.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from pathprox_jax._src import groups as groups_lib
from pathprox_jax._src import params as params_lib
from pathprox_jax._src import unit_norms
from pathprox_jax._src.annotations import GroupSpecTree, regularized_by_pathprox


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
  params = params_lib.unwrap_variables(params)
  layouts = groups_lib.group_layouts(params, groups)
  scaled = unit_norms.scaled_groups(jax.tree.leaves(params), layouts)
  return {g.group: unit_norms.unit_path_norms(scaled, g) for g in layouts}


def path_norm(params: Any, groups: GroupSpecTree) -> PathNorm:
  """The path norm :math:`\\sum_{\\text{groups}} \\sum_i \\|w_i\\| \\|v_i\\|`.

  Biases are not included, as in the paper's reports.

  Args:
    params: the (unboxed) parameters, or an NNX ``State`` of them.
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.

  Returns:
    A :class:`PathNorm` with the total and ``{group: path norm}``.
  """
  per_group = {g: jnp.sum(p) for g, p in unit_path_norms(params, groups).items()}
  total = sum(per_group.values(), jnp.zeros((), jnp.float32))
  return PathNorm(total, per_group)


def active_units(params: Any, groups: GroupSpecTree) -> ActiveUnits:
  """Counts the units that are switched on: :math:`\\|w_i\\| \\|v_i\\| > 0` exactly.

  Args:
    params: the (unboxed) parameters, or an NNX ``State`` of them.
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.

  Returns:
    An :class:`ActiveUnits` (fractions in [0, 1]; 0 units give fraction 0).
  """
  units = unit_path_norms(params, groups)
  per_group = {g: jnp.sum(p > 0).astype(jnp.int32) for g, p in units.items()}
  count = sum(per_group.values(), jnp.zeros((), jnp.int32))
  total = sum(p.shape[0] for p in units.values())
  return ActiveUnits(
    count=count,
    fraction=count / max(total, 1),
    per_group=per_group,
    per_group_fraction={g: per_group[g] / units[g].shape[0] for g in units},
  )


def weight_decay_objective(
  loss: jax.Array | float, params: Any, groups: GroupSpecTree, weight_decay: float | jax.Array
) -> jax.Array:
  """The weight-decay objective at its best rescaling (the paper's figures' y-axis).

  .. math::
    L + \\lambda \\sum_{\\text{groups}} \\sum_i \\|w_i\\| \\|v_i\\|
      + \\frac{\\lambda}{2} \\sum_{\\text{ungrouped kernels } K} \\|K\\|^2

  For grouped units :math:`\\frac{\\lambda}{2}(\\|w_i\\|^2 + \\|v_i\\|^2) \\ge
  \\lambda \\|w_i\\| \\|v_i\\|`, with equality once rescaled, so this is the
  weight-decay objective of the same function. Kernels follow the kernel rule
  (:func:`pathprox_jax.is_kernel`); biases are not decayed. "Follow" parameters
  (e.g. a head's query and key) count as ungrouped.

  Args:
    loss: the data loss :math:`L`.
    params: the (unboxed) parameters, or an NNX ``State`` of them.
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.
    weight_decay: :math:`\\lambda`.

  Returns:
    The objective, a float32 scalar.
  """
  params = params_lib.unwrap_variables(params)
  paths = path_norm(params, groups).total
  keyed = jax.tree_util.tree_leaves_with_path(params)
  squared = sum(
    (
      jnp.sum(jnp.square(p.astype(jnp.float32)))
      for (path, p), spec in zip(keyed, groups_lib.spec_leaves(params, groups), strict=True)
      if not regularized_by_pathprox(spec) and params_lib.is_kernel(path, p)
    ),
    jnp.zeros((), jnp.float32),
  )
  return loss + weight_decay * paths + 0.5 * weight_decay * squared
