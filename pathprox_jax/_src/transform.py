"""PathProx as Optax gradient transformations."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax._src import base, numerics

from pathprox_jax._src import groups as groups_lib
from pathprox_jax._src import prox as prox_lib


class PathProxState(NamedTuple):
  """State of :func:`pathprox`: the step count that indexes the learning rate."""

  count: jax.Array


def pathprox(
  learning_rate: optax.ScalarOrSchedule,
  weight_decay: float,
  groups: Any,
  *,
  balance: bool = True,
  regularize_bias: bool = False,
  eps: float = 1e-6,
) -> optax.GradientTransformationExtraArgs:
  """The PathProx proximal step, last in a chain after a base optimiser.

  Given base updates :math:`u` and params :math:`p`, the grouped parameters
  become :math:`\\mathrm{prox}_\\tau(p + u)` (see :func:`pathprox_jax.prox`: layer
  balance unless ``balance=False`` or ``regularize_bias``, then normalisation of
  each unit's "in" weights, then the group soft-threshold of its "out" weights)
  with

  .. math::
    \\tau_t = \\lambda \\, \\gamma_t ,

  where :math:`\\gamma_t` is ``learning_rate`` at this transform's own step
  count (one per ``update``; give the base optimiser the same schedule). The
  returned update is :math:`\\mathrm{prox}_\\tau(p + u) - p` for grouped leaves;
  ungrouped leaves pass their updates through unchanged. Optimiser states
  (e.g. SGD's momentum trace) are not touched by the prox.

  PathProx is defined for SGD, with or without momentum; after adaptive
  optimisers :math:`\\tau = \\lambda \\gamma_t` is a heuristic. Wrappers such as
  ``optax.MultiSteps`` must wrap the whole chain. The arithmetic runs in float32
  even for bfloat16 params, but a bfloat16 parameter cannot hold a shrink as
  small as :math:`\\lambda \\gamma_t` (``v (1 - tau/||v||)`` rounds back to ``v``):
  keep float32 master weights.

  Args:
    learning_rate: the base optimiser's learning rate, a float or a schedule.
    weight_decay: :math:`\\lambda`.
    groups: the spec pytree from :func:`pathprox_jax.group_spec` (a pytree, not
      a callable: transforms receive plain arrays without metadata).
    balance: balance the groups' path norms before the prox (skipped with
      ``regularize_bias``, where it would not preserve the objective).
    regularize_bias: the "in" bias is part of each unit's input weights.
    eps: the clip of every norm.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import pathprox_jax
    >>> G = pathprox_jax.GroupSpec
    >>> params = {"w": jnp.ones((3, 4)), "v": jnp.ones((4, 2))}
    >>> groups = {"w": G(0, "in"), "v": G(0, "out")}
    >>> tx = optax.chain(optax.sgd(0.1), pathprox_jax.pathprox(0.1, 1e-4, groups))
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)

  References:
    Yang et al., `A Better Way to Decay: Proximal Gradient Training Algorithms
    for Neural Nets <https://arxiv.org/abs/2210.03069>`_, 2022.
  """

  def init_fn(params):
    groups_lib.group_layouts(groups_lib.unwrap_variables(params), groups)
    return PathProxState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(base.NO_PARAMS_MSG)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    threshold = weight_decay * jnp.asarray(lr, jnp.float32)
    param_leaves, treedef = jax.tree.flatten(params)
    update_leaves = treedef.flatten_up_to(updates)
    layouts = groups_lib.group_layouts(params, groups)
    grouped = {i for g in layouts for i in (g.in_kernel, g.in_bias, g.out_kernel, g.out_bias)}
    stepped = {
      i: param_leaves[i].astype(jnp.float32) + update_leaves[i].astype(jnp.float32)
      for i in grouped
      if i is not None
    }
    new = prox_lib.prox_leaves(
      stepped, layouts, threshold, balance=balance, regularize_bias=regularize_bias, eps=eps
    )
    out = [
      (new[i] - param_leaves[i].astype(jnp.float32)).astype(param_leaves[i].dtype)
      if i in new
      else u
      for i, u in enumerate(update_leaves)
    ]
    return treedef.unflatten(out), PathProxState(count=numerics.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _decayed_mask(groups: Any, regularize_bias: bool):
  """Which leaves get ordinary weight decay: ungrouped kernels (and biases)."""

  def is_decayed(param, spec):
    if spec is None:
      return param.ndim >= 2 or regularize_bias
    return regularize_bias and spec.role == "out" and param.ndim == 1

  def mask(params):
    params = groups_lib.unwrap_variables(params)
    # Runs before pathprox's own init in the chain: fail with its clear message, not tree.map's.
    groups_lib.spec_leaves(params, groups)
    return jax.tree.map(is_decayed, params, groups)

  return mask


def pathprox_sgd(
  learning_rate: optax.ScalarOrSchedule,
  weight_decay: float,
  groups: Any,
  *,
  momentum: float = 0.0,
  nesterov: bool = False,
  balance: bool = True,
  regularize_bias: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """The paper's recipe: weight decay outside the groups, SGD, then PathProx.

  Parameters in no group get ordinary weight decay, added to the gradient
  before SGD (so it enters the momentum trace):

  .. math::
    g \\leftarrow \\nabla L + \\lambda\\, \\theta_{\\text{ungrouped}}, \\qquad
    u = \\mathrm{sgd}(g), \\qquad
    \\theta \\leftarrow \\mathrm{prox}_{\\lambda\\gamma_t}(\\theta + u).

  Ungrouped kernels are decayed; ungrouped biases, and grouped layers' "out"
  biases, only with ``regularize_bias``. With ``weight_decay=0`` and no groups
  this is ``optax.sgd(learning_rate)``.

  Args:
    learning_rate: a float or an optax schedule (drives SGD and the threshold).
    weight_decay: :math:`\\lambda`.
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.
    momentum: SGD momentum (0: none).
    nesterov: Nesterov momentum.
    balance: layer balance before each prox (see :func:`pathprox`).
    regularize_bias: decay biases too, and normalise by :math:`\\|[w_i, a_i]\\|`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import flax.linen as nn
    >>> import pathprox_jax
    >>> model = nn.Sequential([nn.Dense(8, **pathprox_jax.group_inits(0, "in")), nn.relu,
    ...                        nn.Dense(2, **pathprox_jax.group_inits(0, "out"))])
    >>> boxed = model.init(jax.random.key(0), jnp.ones((1, 4)))["params"]
    >>> tx = pathprox_jax.pathprox_sgd(0.1, 1e-4, pathprox_jax.group_spec(boxed))
    >>> params = nn.meta.unbox(boxed)
    >>> opt_state = tx.init(params)
  """
  return optax.chain(
    optax.add_decayed_weights(weight_decay, mask=_decayed_mask(groups, regularize_bias)),
    optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov),
    pathprox(learning_rate, weight_decay, groups, balance=balance, regularize_bias=regularize_bias),
  )
