"""PathProx as Optax gradient transformations."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from pathprox_jax._src import balance as balance_lib
from pathprox_jax._src import decay
from pathprox_jax._src import groups as groups_lib
from pathprox_jax._src import params as params_lib
from pathprox_jax._src import prox as prox_lib
from pathprox_jax._src.annotations import GroupSpecTree

NO_PARAMS_MSG = (
  "PathProx requires the current value of parameters: pass them to update, "
  "tx.update(updates, state, params)."
)


class PathProxState(NamedTuple):
  """State of :func:`pathprox`: the step count that indexes the learning rate."""

  count: jax.Array


def check_weight_decay(weight_decay: optax.ScalarOrSchedule) -> None:
  """Raises unless a concrete ``weight_decay`` is a finite number >= 0.

  Schedules and traced values (``optax.inject_hyperparams`` under ``jit``) cannot be checked.
  """
  if callable(weight_decay):
    return
  try:
    value = float(weight_decay)
  except jax.errors.ConcretizationTypeError:
    return
  except TypeError as error:
    raise ValueError(
      f"PathProx weight_decay must be a number or a schedule, got {weight_decay!r}."
    ) from error
  if not math.isfinite(value) or value < 0:
    raise ValueError(f"PathProx weight_decay must be finite and >= 0, got {value}.")


def pathprox(
  learning_rate: optax.ScalarOrSchedule,
  weight_decay: optax.ScalarOrSchedule,
  groups: GroupSpecTree,
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
    \\tau_t = \\lambda_t \\, \\gamma_t ,

  where :math:`\\gamma_t` is ``learning_rate`` and :math:`\\lambda_t` is
  ``weight_decay`` at this transform's own step count (one per ``update``; give
  the base optimiser the same schedule). The returned update is
  :math:`\\mathrm{prox}_\\tau(p + u) - p` for grouped leaves; ungrouped leaves
  pass their updates through unchanged. Optimiser states (e.g. SGD's momentum
  trace) are not touched by the prox.

  PathProx is defined for SGD, with or without momentum; after adaptive
  optimisers :math:`\\tau = \\lambda \\gamma_t` is a heuristic. Wrappers such as
  ``optax.MultiSteps`` must wrap the whole chain. The arithmetic runs in float32
  even for bfloat16 params, but a bfloat16 parameter cannot hold a shrink as
  small as :math:`\\lambda \\gamma_t` (``v (1 - tau/||v||)`` rounds back to ``v``):
  keep float32 master weights.

  Args:
    learning_rate: the base optimiser's learning rate, a float or a schedule.
    weight_decay: :math:`\\lambda`, a float >= 0 or a schedule. A concrete value
      is checked (finite, >= 0) when the transform is built; a schedule's values
      and a traced value (``optax.inject_hyperparams`` under ``jit``) cannot be.
    groups: the spec pytree from :func:`pathprox_jax.group_spec` (a pytree, not
      a callable: transforms receive plain arrays without metadata).
    balance: balance the groups' path norms before the prox (skipped with
      ``regularize_bias``, where it would not preserve the objective). Refused
      for groups outside a Dense/Conv chain (attention heads, followers): see
      :func:`pathprox_jax.balance`.
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
  check_weight_decay(weight_decay)
  balancing = balance and not regularize_bias

  def init_fn(params):
    layouts = groups_lib.group_layouts(params_lib.unwrap_variables(params), groups)
    if balancing:
      balance_lib.check_chain(layouts)
    return PathProxState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(NO_PARAMS_MSG)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    wd = weight_decay(state.count) if callable(weight_decay) else weight_decay
    threshold = jnp.asarray(wd, jnp.float32) * jnp.asarray(lr, jnp.float32)
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
      stepped, layouts, threshold, balance=balancing, regularize_bias=regularize_bias, eps=eps
    )
    out = [
      (new[i] - param_leaves[i].astype(jnp.float32)).astype(param_leaves[i].dtype)
      if i in new
      else u
      for i, u in enumerate(update_leaves)
    ]
    return treedef.unflatten(out), PathProxState(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _decayed_mask(groups: GroupSpecTree, regularize_bias: bool):
  """Which leaves get ordinary weight decay (:func:`decay.decayed_mask`, before the prox)."""

  def mask(params):
    return decay.decayed_mask(params, groups, regularize_bias=regularize_bias)

  return mask


def pathprox_sgd(
  learning_rate: optax.ScalarOrSchedule,
  weight_decay: optax.ScalarOrSchedule,
  groups: GroupSpecTree,
  *,
  momentum: float | None = None,
  nesterov: bool = False,
  balance: bool = True,
  regularize_bias: bool = False,
  eps: float = 1e-6,
) -> optax.GradientTransformationExtraArgs:
  """The paper's recipe: weight decay outside the groups, SGD, then PathProx.

  Parameters in no group get ordinary weight decay, added to the gradient
  before SGD (so it enters the momentum trace):

  .. math::
    g \\leftarrow \\nabla L + \\lambda_t\\, \\theta_{\\text{ungrouped}}, \\qquad
    u = \\mathrm{sgd}(g), \\qquad
    \\theta \\leftarrow \\mathrm{prox}_{\\lambda_t\\gamma_t}(\\theta + u).

  Ungrouped kernels (the kernel rule, :func:`pathprox_jax.is_kernel`) are
  decayed, "follow" ones too; ungrouped biases, and grouped layers' "out"
  biases, only with ``regularize_bias``. With ``weight_decay=0`` and no groups
  this is ``optax.sgd(learning_rate, momentum, nesterov)``.

  It works with ``optax.inject_hyperparams`` (``groups`` is static):

  >>> import optax, pathprox_jax
  >>> make = optax.inject_hyperparams(pathprox_jax.pathprox_sgd, static_args=("groups",))

  then ``make(learning_rate=0.1, weight_decay=1e-4, groups=groups, momentum=0.9)``.

  Args:
    learning_rate: a float or an optax schedule (drives SGD and the threshold).
    weight_decay: :math:`\\lambda`, a float >= 0 or a schedule (as in
      ``optax.add_decayed_weights``; drives the decay and the threshold). A
      concrete value is checked (finite, >= 0); schedules and traced values
      (``optax.inject_hyperparams`` under ``jit``) cannot be.
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.
    momentum: SGD momentum (``None``: none), passed to ``optax.sgd`` unchanged.
    nesterov: Nesterov momentum.
    balance: layer balance before each prox (see :func:`pathprox`).
    regularize_bias: decay biases too, and normalise by :math:`\\|[w_i, a_i]\\|`.
    eps: the clip of every norm in the prox.

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
  return optax.chain(  # pathprox() checks weight_decay
    optax.add_decayed_weights(weight_decay, mask=_decayed_mask(groups, regularize_bias)),
    optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
    pathprox(
      learning_rate,
      weight_decay,
      groups,
      balance=balance,
      regularize_bias=regularize_bias,
      eps=eps,
    ),
  )
