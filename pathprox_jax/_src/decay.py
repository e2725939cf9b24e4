"""What ordinary weight decay applies to: the one rule the optimisers and the metrics share.

PathProx regularises its groups' weights by the prox; every other parameter that is regularised
gets ordinary weight decay :math:`\\frac{\\lambda}{2}\\|\\theta\\|^2`: kernels outside the groups
(the kernel rule, :func:`pathprox_jax.is_kernel`), and with ``regularize_bias`` also the biases
outside the groups and the groups' "out" biases (an "in" bias is part of its unit's input
weights :math:`[w_i, a_i]`, which the prox regularises). Without groups (the weight-decay
baseline) the rule gives every kernel, or every parameter with ``regularize_bias``.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from pathprox_jax._src import groups as groups_lib
from pathprox_jax._src import params as params_lib
from pathprox_jax._src.annotations import GroupSpec, GroupSpecTree, regularized_by_pathprox


def is_decayed(
  path: tuple[Any, ...], param: Any, spec: GroupSpec | None, *, regularize_bias: bool = False
) -> bool:
  """The rule for one leaf: whether ordinary weight decay applies to it.

  Args:
    path: the leaf's pytree path.
    param: the leaf.
    spec: its PathProx group spec (``None``: in no group).
    regularize_bias: biases are regularised too.

  Returns:
    Whether the leaf gets :math:`\\frac{\\lambda}{2}\\|\\theta\\|^2`.
  """
  kernel = params_lib.is_kernel(path, param)
  if not regularized_by_pathprox(spec):
    return kernel or regularize_bias
  return regularize_bias and spec.role == "out" and not kernel


def decayed_mask(
  params: Any, groups: GroupSpecTree | None = None, *, regularize_bias: bool = False
) -> Any:
  """:func:`is_decayed` over a params pytree: ``True`` where ordinary weight decay applies.

  Args:
    params: (unboxed) params, or an NNX ``State`` (Variables are read through).
    groups: the spec pytree from :func:`pathprox_jax.group_spec`, or ``None`` for no groups
      (the plain weight-decay baseline).
    regularize_bias: biases are regularised too.

  Returns:
    A pytree of bools with the structure of ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> import pathprox_jax
    >>> params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}}
    >>> pathprox_jax.decayed_mask(params, regularize_bias=True)
    {'dense': {'bias': True, 'kernel': True}}
  """
  params = params_lib.unwrap_variables(params)
  keyed, treedef = jax.tree_util.tree_flatten_with_path(params)
  # spec_leaves fails with a clear message when the groups do not match the params.
  specs = [None] * len(keyed) if groups is None else groups_lib.spec_leaves(params, groups)
  return treedef.unflatten(
    [
      is_decayed(path, p, spec, regularize_bias=regularize_bias)
      for (path, p), spec in zip(keyed, specs, strict=True)
    ]
  )


def add_decayed_weights(
  weight_decay: optax.ScalarOrSchedule,
  groups: GroupSpecTree | None,
  *,
  regularize_bias: bool = False,
) -> optax.GradientTransformation:
  """``optax.add_decayed_weights`` on the leaves :func:`decayed_mask` marks (the recipes' decay).

  Args:
    weight_decay: :math:`\\lambda`, a float or a schedule.
    groups: the spec pytree, or ``None``: every kernel is decayed (no groups).
    regularize_bias: biases are decayed too.
  """

  def mask(params):
    return decayed_mask(params, groups, regularize_bias=regularize_bias)

  return optax.add_decayed_weights(weight_decay, mask=mask)
