"""The PathProx proximal step on a network's unit groups.

For every unit ``i`` of a group with "in" weights :math:`w_i` (bias :math:`a_i`)
and "out" weights :math:`v_i`, after the optional layer balance (of the chains the
spec carries, of all groups, or of given chains of groups):

.. math::
  w_i \\leftarrow \\frac{w_i}{\\max(\\|w_i\\|, \\epsilon)}, \\qquad
  a_i \\leftarrow \\frac{a_i}{\\max(\\|w_i\\|, \\epsilon)}, \\qquad
  v_i \\leftarrow \\begin{cases} 0 & \\|v_i\\| \\le \\tau, \\\\
  v_i \\, (1 - \\tau / \\|v_i\\|) & \\text{otherwise.} \\end{cases}

With ``regularize_bias`` the normalising norm is :math:`\\|[w_i, a_i]\\|` and
there is no balance. The normalisation is a projection onto the unit sphere: ``v``
is deliberately not multiplied by :math:`\\|w_i\\|` to compensate. The threshold
step is the exact proximal operator of :math:`\\tau \\|v_i\\|` (group soft-threshold).
A unit's slices lie on each parameter's unit axis (the Dense/Conv layout, or
attention heads). The step is the composition of three rescaling stages, one
function each: :func:`balance_lib.balance_leaves`, :func:`normalize_inputs` and
:func:`soft_threshold_outputs`. Each stage only computes scales, from the norms
of the unchanged arrays; the arrays are multiplied once, after the last stage
(:func:`unit_norms.apply_stages`). All norms and scales are in float32.
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
from pathprox_jax._src.checks import check_hyperparameter
from pathprox_jax._src.unit_norms import EPS

TINY = float(jnp.finfo(jnp.float32).tiny)  # the norm's clip in the soft-threshold: 0/0 only


def normalize_inputs(
  leaves: Mapping[int, unit_norms.ScaledUnits],
  layouts: Sequence[groups_lib.GroupLayout],
  *,
  regularize_bias: bool = False,
  eps: float = EPS,
) -> dict[int, unit_norms.ScaledUnits]:
  """Scales each unit's "in" weights (and "in" bias) to unit norm: a rescaling stage.

  Args:
    leaves: the grouped leaves (see :func:`unit_norms.apply_stages`).
    layouts: the groups.
    regularize_bias: the norm is :math:`\\|[w_i, a_i]\\|` instead of :math:`\\|w_i\\|`.
    eps: the clip of the norm.

  Returns:
    ``{leaf index: rescaled leaf}`` for the "in" kernels and biases.
  """
  new = {}
  for g in layouts:
    norm = leaves[g.in_kernel].norms()
    if regularize_bias and g.in_bias is not None:
      bias_norm = leaves[g.in_bias].norms()
      norm = jnp.sqrt(norm * norm + bias_norm * bias_norm)
    inv_norm = 1.0 / jnp.maximum(norm, eps)
    new[g.in_kernel] = leaves[g.in_kernel].times(inv_norm)
    if g.in_bias is not None:
      new[g.in_bias] = leaves[g.in_bias].times(inv_norm)
  return new


def soft_threshold_outputs(
  leaves: Mapping[int, unit_norms.ScaledUnits],
  layouts: Sequence[groups_lib.GroupLayout],
  threshold: jax.Array | float | Mapping[int, jax.Array | float],
) -> dict[int, unit_norms.ScaledUnits]:
  """The exact group soft-threshold of each unit's "out" weights: a rescaling stage.

  A unit with :math:`\\|v_i\\| \\le \\tau` becomes exactly zero at every
  :math:`\\tau \\ge 0`; the others shrink by :math:`1 - \\tau/\\|v_i\\|` (``tau = 0``
  leaves every unit as it is). In floating point :math:`\\tau / \\|v_i\\| \\ge 1` exactly
  when :math:`\\|v_i\\| \\le \\tau`, so ``max(0, 1 - tau / norm)`` is the exact rule; the norm
  is clipped only at float32's smallest normal number, so that a zero row with
  :math:`\\tau = 0` stays zero instead of 0/0 (the reference's clip at 1e-6 is not copied).

  Args:
    leaves: the grouped leaves (see :func:`unit_norms.apply_stages`).
    layouts: the groups.
    threshold: :math:`\\tau \\ge 0`, a scalar or one value per unit, or
      ``{group: its threshold}`` (cost-aware thresholds :math:`c_g \\tau`).

  Returns:
    ``{leaf index: rescaled leaf}`` for the "out" kernels.
  """
  new = {}
  for g in layouts:
    tau = threshold[g.group] if isinstance(threshold, Mapping) else threshold
    norm = leaves[g.out_kernel].norms()
    shrink = jnp.maximum(0.0, 1.0 - tau / jnp.maximum(norm, TINY))
    new[g.out_kernel] = leaves[g.out_kernel].times(shrink)
  return new


def prox_scales(
  leaves: Sequence[jax.Array] | Mapping[int, jax.Array],
  layouts: Sequence[groups_lib.GroupLayout],
  threshold: jax.Array | float | Mapping[int, jax.Array | float],
  *,
  balance: bool | balance_lib.Chains = True,
  regularize_bias: bool = False,
  eps: float = EPS,
) -> dict[int, unit_norms.ScaledUnits]:
  """The proximal step on flat leaves as a scale per unit: balance, normalise inputs,
  soft-threshold outputs.

  Args:
    leaves: the flat parameter leaves (or a mapping holding at least the
      grouped ones), indexed as in ``layouts``.
    layouts: from :func:`groups_lib.group_layouts`.
    threshold: :math:`\\tau`, the soft-threshold of the "out" weights (or ``{group: tau}``).
    balance: the layer balance's chains, applied first (see :func:`pathprox_jax.balance`).
    regularize_bias: normalise by :math:`\\|[w_i, a_i]\\|`, no balance.
    eps: the clip of every norm (and of path norms, for the balance).

  Returns:
    ``{leaf index: the leaf and its scales}`` for every leaf the step changes.
  """
  stages = [
    lambda scaled: normalize_inputs(scaled, layouts, regularize_bias=regularize_bias, eps=eps),
    lambda scaled: soft_threshold_outputs(scaled, layouts, threshold),
  ]
  chains = () if regularize_bias else balance_lib.chain_layouts(layouts, balance)
  if chains:
    stages.insert(0, lambda scaled: balance_lib.balance_leaves(scaled, chains, eps))
  return unit_norms.run_stages(leaves, layouts, stages)


def prox(
  params: Any,
  groups: GroupSpecTree,
  threshold: jax.Array | float,
  *,
  balance: bool | balance_lib.Chains = True,
  regularize_bias: bool = False,
  eps: float = EPS,
) -> Any:
  """Applies the PathProx proximal step (balance, normalise, soft-threshold) to params.

  Args:
    params: the (unboxed) parameters, or an NNX ``State`` of them.
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.
    threshold: :math:`\\tau = \\lambda \\gamma_t`.
    balance: the layer balance's chains, applied first (see :func:`pathprox_jax.balance`).
    regularize_bias: normalise by :math:`\\|[w_i, a_i]\\|` instead of :math:`\\|w_i\\|`
      (see :func:`pathprox_jax.balance`).
    eps: the clip of every norm.

  Returns:
    The new parameters, with the dtypes of ``params``.

  Raises:
    ValueError: for a concrete ``threshold`` (a number or an array of them) not
      finite and >= 0, or an ``eps`` not finite and > 0; a traced one passes.

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
  check_hyperparameter(
    "threshold", threshold, "finite and >= 0", lambda x: x >= 0, schedule=False, scalar=False
  )
  check_hyperparameter("eps", eps, "finite and > 0", lambda x: x > 0, schedule=False)
  return groups_lib.update_grouped(
    params,
    groups,
    lambda leaves, layouts: unit_norms.multiply_out(
      prox_scales(
        leaves, layouts, threshold, balance=balance, regularize_bias=regularize_bias, eps=eps
      )
    ),
  )
