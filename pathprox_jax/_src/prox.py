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
All norms and scales are computed once per unit, in float32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from pathprox_jax._src import balance as balance_lib
from pathprox_jax._src import groups as groups_lib


def prox_leaves(
  leaves: Sequence[jax.Array] | Mapping[int, jax.Array],
  layouts: Sequence[groups_lib.GroupLayout],
  threshold: jax.Array | float,
  *,
  balance: bool = True,
  regularize_bias: bool = False,
  eps: float = 1e-6,
) -> dict[int, jax.Array]:
  """The proximal step on flat leaves; returns the changed leaves in float32.

  Args:
    leaves: the flat parameter leaves (or a mapping holding at least the
      grouped ones), indexed as in ``layouts``.
    layouts: from :func:`groups_lib.group_layouts`.
    threshold: :math:`\\tau`, the soft-threshold of the "out" weights.
    balance: apply the layer balance first (ignored with ``regularize_bias``).
    regularize_bias: normalise by :math:`\\|[w_i, a_i]\\|`, no balance.
    eps: the clip of every norm (and of path norms, for the balance).

  Returns:
    ``{leaf index: new value}`` for every leaf the step changes.
  """
  w_norms = [groups_lib.input_norms(leaves[g.in_kernel]) for g in layouts]
  v_norms = [groups_lib.output_norms(leaves[g.out_kernel]) for g in layouts]
  balancing = balance and not regularize_bias and bool(layouts)
  if balancing:
    alpha = balance_lib.balance_scales(
      jnp.stack([jnp.sum(nw * nv) for nw, nv in zip(w_norms, v_norms, strict=True)]), eps
    )
    prev = balance_lib.previous_scales(alpha)

  new = {}
  for k, g in enumerate(layouts):
    in_bias = None if g.in_bias is None else leaves[g.in_bias].astype(jnp.float32)
    norm = w_norms[k]
    if regularize_bias and in_bias is not None:
      norm = jnp.sqrt(norm * norm + in_bias * in_bias)
    inv_norm = 1.0 / jnp.maximum(norm, eps)
    new[g.in_kernel] = leaves[g.in_kernel].astype(jnp.float32) * inv_norm
    ratio = alpha[k] / prev[k] if balancing else 1.0
    if in_bias is not None:
      new[g.in_bias] = in_bias * (inv_norm * prev[k] if balancing else inv_norm)
    shrink = jnp.maximum(0.0, 1.0 - threshold / jnp.maximum(v_norms[k] * ratio, eps))
    new[g.out_kernel] = groups_lib.scale_outputs(leaves[g.out_kernel], shrink * ratio)
    if balancing and g.out_bias is not None:
      new[g.out_bias] = leaves[g.out_bias].astype(jnp.float32) * alpha[k]
  return new


def prox(
  params: Any,
  groups: Any,
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
    balance: apply the layer balance first (ignored with ``regularize_bias``).
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
  params = groups_lib.unwrap_variables(params)
  leaves, treedef = jax.tree.flatten(params)
  layouts = groups_lib.group_layouts(params, groups)
  new = prox_leaves(
    leaves, layouts, threshold, balance=balance, regularize_bias=regularize_bias, eps=eps
  )
  return treedef.unflatten(
    [new[i].astype(leaf.dtype) if i in new else leaf for i, leaf in enumerate(leaves)]
  )
