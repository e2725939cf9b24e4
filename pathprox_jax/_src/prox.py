"""The PathProx proximal step on a network's unit groups.

For every unit ``i`` of a group with "in" weights :math:`w_i` (bias :math:`a_i`)
and "out" weights :math:`v_i`, after the optional layer balance:

.. math::
  w_i \\leftarrow \\frac{w_i}{\\max(\\|w_i\\|, \\epsilon)}, \\qquad
  a_i \\leftarrow \\frac{a_i}{\\max(\\|w_i\\|, \\epsilon)}, \\qquad
  v_i \\leftarrow v_i \\, \\max\\Big(0, 1 - \\frac{\\tau}{\\max(\\|v_i\\|, \\epsilon)}\\Big).

With ``regularize_bias`` the normalising norm is :math:`\\|[w_i, a_i]\\|` and
there is no balance. The normalisation is a projection onto the unit sphere: ``v``
is deliberately not multiplied by :math:`\\|w_i\\|` to compensate. The threshold
step is the exact proximal operator of :math:`\\tau \\|v_i\\|` (group soft-threshold).
A unit's slices lie on each parameter's unit axis (the Dense/Conv layout, or
attention heads). The step is the composition of three functions, one per
stage: :func:`balance_lib.balance_leaves`, :func:`normalize_inputs` and
:func:`soft_threshold_outputs`. All norms and scales are computed in float32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from pathprox_jax._src import balance as balance_lib
from pathprox_jax._src import groups as groups_lib
from pathprox_jax._src import unit_norms
from pathprox_jax._src.annotations import GroupSpecTree

Leaves = Sequence[jax.Array] | Mapping[int, jax.Array]


def normalize_inputs(
  leaves: Leaves,
  layouts: Sequence[groups_lib.GroupLayout],
  *,
  regularize_bias: bool = False,
  eps: float = 1e-6,
) -> dict[int, jax.Array]:
  """Scales each unit's "in" weights (and "in" bias) to unit norm; returns them in float32.

  Args:
    leaves: the flat leaves (or a mapping holding at least the grouped ones).
    layouts: the groups.
    regularize_bias: the norm is :math:`\\|[w_i, a_i]\\|` instead of :math:`\\|w_i\\|`.
    eps: the clip of the norm.

  Returns:
    ``{leaf index: new value}`` for the "in" kernels and biases.
  """
  new = {}
  for g in layouts:
    norm = unit_norms.unit_norms(leaves[g.in_kernel], g.in_axis)
    if regularize_bias and g.in_bias is not None:
      bias_norm = unit_norms.unit_norms(leaves[g.in_bias], g.in_bias_axis)
      norm = jnp.sqrt(norm * norm + bias_norm * bias_norm)
    inv_norm = 1.0 / jnp.maximum(norm, eps)
    new[g.in_kernel] = unit_norms.scale_units(leaves[g.in_kernel], inv_norm, g.in_axis)
    if g.in_bias is not None:
      new[g.in_bias] = unit_norms.scale_units(leaves[g.in_bias], inv_norm, g.in_bias_axis)
  return new


def soft_threshold_outputs(
  leaves: Leaves,
  layouts: Sequence[groups_lib.GroupLayout],
  threshold: jax.Array | float,
  *,
  eps: float = 1e-6,
) -> dict[int, jax.Array]:
  """The group soft-threshold of each unit's "out" weights; returns them in float32.

  Args:
    leaves: the flat leaves (or a mapping holding at least the grouped ones).
    layouts: the groups.
    threshold: :math:`\\tau`.
    eps: the clip of :math:`\\|v_i\\|` (a zero row stays zero).

  Returns:
    ``{leaf index: new value}`` for the "out" kernels.
  """
  new = {}
  for g in layouts:
    norm = unit_norms.unit_norms(leaves[g.out_kernel], g.out_axis)
    shrink = jnp.maximum(0.0, 1.0 - threshold / jnp.maximum(norm, eps))
    new[g.out_kernel] = unit_norms.scale_units(leaves[g.out_kernel], shrink, g.out_axis)
  return new


def prox_leaves(
  leaves: Leaves,
  layouts: Sequence[groups_lib.GroupLayout],
  threshold: jax.Array | float,
  *,
  balance: bool = True,
  regularize_bias: bool = False,
  eps: float = 1e-6,
) -> dict[int, jax.Array]:
  """The proximal step on flat leaves: balance, normalise inputs, soft-threshold outputs.

  Args:
    leaves: the flat parameter leaves (or a mapping holding at least the
      grouped ones), indexed as in ``layouts``.
    layouts: from :func:`groups_lib.group_layouts`.
    threshold: :math:`\\tau`, the soft-threshold of the "out" weights.
    balance: apply the layer balance first (ignored with ``regularize_bias``).
    regularize_bias: normalise by :math:`\\|[w_i, a_i]\\|`, no balance.
    eps: the clip of every norm (and of path norms, for the balance).

  Returns:
    ``{leaf index: new value}`` (float32) for every leaf the step changes.
  """
  current = dict(leaves) if isinstance(leaves, Mapping) else dict(enumerate(leaves))
  new = {}
  stages = [
    lambda x: normalize_inputs(x, layouts, regularize_bias=regularize_bias, eps=eps),
    lambda x: soft_threshold_outputs(x, layouts, threshold, eps=eps),
  ]
  if balance and not regularize_bias:
    stages.insert(0, lambda x: balance_lib.balance_leaves(x, layouts, eps))
  for stage in stages:
    changed = stage(current)
    current.update(changed)
    new.update(changed)
  return new


def prox(
  params: Any,
  groups: GroupSpecTree,
  threshold: jax.Array | float,
  *,
  balance: bool = True,
  regularize_bias: bool = False,
  eps: float = 1e-6,
) -> Any:
  """Applies the PathProx proximal step (balance, normalise, soft-threshold) to params.

  Args:
    params: the (unboxed) parameters, or an NNX ``State`` of them.
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.
    threshold: :math:`\\tau = \\lambda \\gamma_t`.
    balance: apply the layer balance first (ignored with ``regularize_bias``;
      refused for groups outside a Dense/Conv chain, see :func:`pathprox_jax.balance`).
    regularize_bias: normalise by :math:`\\|[w_i, a_i]\\|` instead of
      :math:`\\|w_i\\|`, without balance.
    eps: the clip of every norm.

  Returns:
    The new parameters, with the dtypes of ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> import pathprox_jax
    >>> G = pathprox_jax.GroupSpec
    >>> params = {"w": jnp.array([[3.0, 0.1]]), "v": jnp.array([[2.0], [0.05]])}
    >>> groups = {"w": G(0, "in"), "v": G(0, "out")}
    >>> new = pathprox_jax.prox(params, groups, threshold=0.1, balance=False)
    >>> new["w"].tolist(), new["v"].tolist()
    ([[1.0, 1.0]], [[1.899999976158142], [0.0]])
  """
  return groups_lib.update_grouped(
    params,
    groups,
    lambda leaves, layouts: prox_leaves(
      leaves, layouts, threshold, balance=balance, regularize_bias=regularize_bias, eps=eps
    ),
  )
