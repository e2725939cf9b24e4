"""PathProx as Optax gradient transformations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pathprox_jax._src import balance as balance_lib
from pathprox_jax._src import costs as costs_lib
from pathprox_jax._src import decay
from pathprox_jax._src import groups as groups_lib
from pathprox_jax._src import params as params_lib
from pathprox_jax._src import prox as prox_lib
from pathprox_jax._src.annotations import GroupSpecTree
from pathprox_jax._src.checks import check_hyperparameter
from pathprox_jax._src.unit_norms import EPS

NO_PARAMS_MSG = (
  "PathProx requires the current value of parameters: pass them to update, "
  "tx.update(updates, state, params)."
)


class PathProxState(NamedTuple):
  """State of :func:`pathprox`: the step count that indexes the learning rate."""

  count: jax.Array


ThresholdRule = Literal["fixed_point", "paper"]
THRESHOLD_RULES: tuple[ThresholdRule, ...] = ("fixed_point", "paper")


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

  Given base updates :math:`u` and params :math:`p`, the grouped parameters
  become :math:`\\mathrm{prox}_\\tau(p + u)` (see :func:`pathprox_jax.prox`: layer
  balance of the spec's chains or all groups, or of the given ``balance`` chains, unless
  ``balance=False`` or ``regularize_bias``, then normalisation of each unit's
  "in" weights, then the group soft-threshold of its "out" weights) with the
  threshold

  .. math::
    \\tau_t = \\frac{\\lambda_t \\, \\gamma_t}{1 - \\beta} \\ (\\texttt{"fixed_point"}),
    \\qquad \\tau_t = \\lambda_t \\, \\gamma_t \\ (\\texttt{"paper"}),

  where :math:`\\gamma_t` is ``learning_rate``, :math:`\\lambda_t` is
  ``weight_decay`` at this transform's own step count (one per ``update``; give
  the base optimiser the same schedule) and :math:`\\beta` is ``momentum``. The
  returned update is :math:`\\mathrm{prox}_\\tau(p + u) - p` for grouped leaves;
  ungrouped leaves pass their updates through unchanged. Optimiser states (e.g.
  SGD's momentum trace) are not touched by the prox.

  The "fixed_point" rule makes the iteration stop at a stationary point of
  :math:`L + \\lambda R`: a heavy-ball trace (``optax.sgd`` with ``momentum=β``,
  Nesterov too) settles at :math:`\\nabla L / (1 - \\beta)`, and with
  :math:`\\tau = \\lambda\\gamma` the fixed point would be that of
  :math:`L + \\lambda (1 - \\beta) R`. The "paper" rule is the reference code's,
  whatever the optimiser; the two agree at ``momentum=0``. Pass ``momentum``
  as follows (see the guide, "Momentum, AdamW and the threshold"):

  - after ``optax.sgd(γ)``: ``momentum=0`` (the default);
  - after ``optax.sgd(γ, momentum=β)``, with or without Nesterov: ``momentum=β``;
  - after Adam (AdamW's recipe, :func:`pathprox_adamw`): ``momentum=0``. Adam's
    first moment is an average that settles at the gradient, and AdamW's
    decoupled decay is the proximal step of :math:`(\\lambda/2)\\|\\theta\\|^2`
    with step :math:`\\gamma_t`: :math:`\\tau = \\lambda\\gamma_t` is the same
    decay, with PathProx's regulariser in place of the squared norm.

  Wrappers such as ``optax.MultiSteps`` must wrap the whole chain. The
  arithmetic runs in float32 even for bfloat16 params, but a bfloat16 parameter
  cannot hold a shrink as small as :math:`\\tau` (``v (1 - tau/||v||)`` rounds
  back to ``v``): keep float32 master weights.

  Args:
    learning_rate: the base optimiser's learning rate :math:`\\gamma`, a float
      > 0 or a schedule.
    weight_decay: :math:`\\lambda`, a float >= 0 or a schedule.
    groups: the spec pytree from :func:`pathprox_jax.group_spec` (a pytree, not
      a callable: transforms receive plain arrays without metadata).
    momentum: the base optimiser's heavy-ball momentum :math:`\\beta` in [0, 1)
      (0 for plain SGD and for Adam); used by the "fixed_point" rule only.
    threshold_rule: one of :data:`pathprox_jax.THRESHOLD_RULES`: "fixed_point"
      (:math:`\\lambda\\gamma/(1-\\beta)`) or "paper" (:math:`\\lambda\\gamma`).
      A string, hence static under ``optax.inject_hyperparams``.
    balance: balance the groups' path norms before the prox (skipped with
      ``regularize_bias``, where it would not preserve the objective): ``True``
      takes the chains the spec carries (:func:`pathprox_jax.discover_groups`
      sets them: never across a residual add) or, for a spec without chains
      (annotations), all groups, in group order, as one chain; ``False`` balances
      nothing; a sequence of chains, tuples of group ids in forward order such
      as ``pathprox_jax.explain_groups(...).balance``, balances each chain of
      two or more groups on its own and leaves the other groups alone. Refused
      for balanced groups outside a Dense/Conv chain (attention heads,
      followers), unknown ids and a group in two chains: see
      :func:`pathprox_jax.balance`. Tuples, like bools, are static under
      ``optax.inject_hyperparams``.
    regularize_bias: the "in" bias is part of each unit's input weights.
    eps: the clip of every norm.
    unit_costs: ``{group: cost of one unit}`` (e.g. :func:`pathprox_jax.unit_costs`), or
      ``None`` for cost 1: group :math:`g` is thresholded at :math:`c_g \\tau`, with
      :math:`c_g` the costs divided by the smallest (:func:`pathprox_jax.relative_costs`).
      The objective is then :math:`L + \\lambda \\sum_g c_g \\sum_i \\|w_i\\|\\|v_i\\|`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Raises:
    ValueError: when built, for a concrete ``learning_rate`` that is not finite
      and > 0, a ``weight_decay`` not finite and >= 0, a ``momentum`` outside
      [0, 1), an ``eps`` not finite and > 0, a string for a number, or an
      unknown ``threshold_rule``. A schedule's values and traced
      values (``optax.inject_hyperparams`` under ``jit``) cannot be checked.

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
    new = prox_lib.prox_leaves(
      stepped,
      layouts,
      costs_lib.group_thresholds(threshold, costs),
      balance=balance,
      regularize_bias=regularize_bias,
      eps=eps,
    )
    out = [
      (new[i] - param_leaves[i].astype(jnp.float32)).astype(param_leaves[i].dtype)
      if i in new
      else u
      for i, u in enumerate(update_leaves)
    ]
    return treedef.unflatten(out), PathProxState(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def pathprox_sgd(
  learning_rate: optax.ScalarOrSchedule,
  weight_decay: optax.ScalarOrSchedule,
  groups: GroupSpecTree,
  *,
  momentum: float | None = None,
  nesterov: bool = False,
  threshold_rule: ThresholdRule = "fixed_point",
  balance: bool | balance_lib.Chains = True,
  regularize_bias: bool = False,
  eps: float = EPS,
  unit_costs: Mapping[int, float] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """The paper's recipe: weight decay outside the groups, SGD, then PathProx.

  Parameters in no group get ordinary weight decay, added to the gradient
  before SGD (so it enters the momentum trace):

  .. math::
    g \\leftarrow \\nabla L + \\lambda_t\\, \\theta_{\\text{ungrouped}}, \\qquad
    u = \\mathrm{sgd}(g), \\qquad
    \\theta \\leftarrow \\mathrm{prox}_{\\tau_t}(\\theta + u), \\qquad
    \\tau_t = \\frac{\\lambda_t\\gamma_t}{1 - \\beta} .

  The threshold follows ``threshold_rule`` (see :func:`pathprox`): by default
  "fixed_point", which divides by :math:`1 - \\beta` so that grouped units are
  regularised as strongly as the ungrouped kernels, whose decay enters the
  momentum trace, and the iteration stops at a stationary point of
  :math:`L + \\lambda R` for every momentum. "paper" is the reference code's
  :math:`\\tau_t = \\lambda_t\\gamma_t`; the two agree without momentum.

  Ungrouped kernels (the kernel rule, :func:`pathprox_jax.is_kernel`) are
  decayed, "follow" ones too; ungrouped biases, and grouped layers' "out"
  biases, only with ``regularize_bias``. With ``weight_decay=0`` and no groups
  this is ``optax.sgd(learning_rate, momentum, nesterov)``.

  It works with ``optax.inject_hyperparams`` (``groups`` is static; the string
  ``threshold_rule``, the bools and a tuple of ``balance`` chains are static by
  themselves):

  >>> import optax, pathprox_jax
  >>> make = optax.inject_hyperparams(pathprox_jax.pathprox_sgd, static_args=("groups",))

  then ``make(learning_rate=0.1, weight_decay=1e-4, groups=groups, momentum=0.9)``.

  Args:
    learning_rate: :math:`\\gamma`, a float > 0 or an optax schedule (drives SGD
      and the threshold).
    weight_decay: :math:`\\lambda`, a float >= 0 or a schedule (as in
      ``optax.add_decayed_weights``; drives the decay and the threshold).
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.
    momentum: SGD momentum :math:`\\beta` in [0, 1) (``None``: none, as 0 for the
      threshold), passed to ``optax.sgd`` unchanged.
    nesterov: Nesterov momentum (its trace settles at the same
      :math:`\\nabla L/(1-\\beta)`: the same threshold).
    threshold_rule: "fixed_point" or "paper" (:data:`pathprox_jax.THRESHOLD_RULES`).
    balance: layer balance before each prox: ``True``, ``False`` or chains of
      group ids (see :func:`pathprox`).
    regularize_bias: decay biases too, and normalise by :math:`\\|[w_i, a_i]\\|`.
    eps: the clip of every norm in the prox.
    unit_costs: ``{group: cost of one unit}``: cost-aware thresholds (see :func:`pathprox`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Raises:
    ValueError: as :func:`pathprox`, when built.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import flax.linen as nn
    >>> import pathprox_jax
    >>> model = nn.Sequential([nn.Dense(8, **pathprox_jax.group_inits(0, "in")), nn.relu,
    ...                        nn.Dense(2, **pathprox_jax.group_inits(0, "out"))])
    >>> boxed = model.init(jax.random.key(0), jnp.ones((1, 4)))["params"]
    >>> tx = pathprox_jax.pathprox_sgd(0.1, 1e-4, pathprox_jax.group_spec(boxed), momentum=0.9)
    >>> params = nn.meta.unbox(boxed)
    >>> opt_state = tx.init(params)
  """
  return optax.chain(  # pathprox() checks the hyper-parameters
    decay.add_decayed_weights(weight_decay, groups, regularize_bias=regularize_bias),
    optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
    pathprox(
      learning_rate,
      weight_decay,
      groups,
      momentum=0.0 if momentum is None else momentum,
      threshold_rule=threshold_rule,
      balance=balance,
      regularize_bias=regularize_bias,
      eps=eps,
      unit_costs=unit_costs,
    ),
  )


def pathprox_adamw(
  learning_rate: optax.ScalarOrSchedule,
  weight_decay: optax.ScalarOrSchedule,
  groups: GroupSpecTree,
  *,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  eps_root: float = 0.0,
  mu_dtype: Any | None = None,
  nesterov: bool = False,
  balance: bool | balance_lib.Chains = True,
  regularize_bias: bool = False,
  prox_eps: float = EPS,
  unit_costs: Mapping[int, float] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """AdamW with the PathProx step in place of its decoupled decay on the grouped units.

  Adam's direction :math:`d_t` (``optax.scale_by_adam``: bias-corrected
  moments, :math:`\\hat m_t / (\\sqrt{\\hat v_t + \\epsilon_{root}} + \\epsilon)`)
  comes first. Parameters in no group then get AdamW's decoupled weight decay,
  and grouped units the PathProx prox:

  .. math::
    \\theta_{\\text{ungrouped}} \\leftarrow \\theta - \\gamma_t (d_t + \\lambda_t \\theta),
    \\qquad
    \\theta_{\\text{grouped}} \\leftarrow
    \\mathrm{prox}_{\\lambda_t\\gamma_t}(\\theta - \\gamma_t d_t).

  AdamW's decay :math:`\\theta (1 - \\gamma\\lambda)` is (to first order) the
  proximal step of :math:`(\\lambda/2)\\|\\theta\\|^2` with step :math:`\\gamma`;
  PathProx's prox with :math:`\\tau = \\lambda\\gamma` is the same step for its
  regulariser :math:`R`, so grouped and ungrouped parameters are decayed alike.
  No momentum trace holds the decay, so there is no :math:`1/(1-\\beta)` (both
  threshold rules of :func:`pathprox` give :math:`\\lambda\\gamma` here).

  The decay mask is :func:`pathprox_sgd`'s: ungrouped kernels (the kernel rule,
  :func:`pathprox_jax.is_kernel`) and "follow" kernels; biases only with
  ``regularize_bias``. With no groups this is ``optax.adamw(learning_rate, b1,
  b2, eps, eps_root, mu_dtype, weight_decay, mask=pathprox_jax.kernel_mask,
  nesterov=nesterov)``. The layer balance is function-preserving, as with SGD,
  and on by default as in :func:`pathprox_sgd` (pass ``balance=False``, or the
  discovered chains, for transformer blocks). It works with schedules and
  ``optax.inject_hyperparams`` (``static_args=("groups",)``).

  Args:
    learning_rate: :math:`\\gamma`, a float > 0 or a schedule (drives Adam's
      step, the decay and the threshold).
    weight_decay: :math:`\\lambda`, a float >= 0 or a schedule.
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    eps: added to Adam's denominator (outside the square root).
    eps_root: added inside the square root.
    mu_dtype: the first moment's dtype (``None``: the params').
    nesterov: Nesterov momentum in Adam (NAdamW).
    balance: layer balance before each prox: ``True``, ``False`` or chains of
      group ids (see :func:`pathprox`).
    regularize_bias: decay biases too, and normalise by :math:`\\|[w_i, a_i]\\|`.
    prox_eps: the clip of every norm in the prox (``eps`` of :func:`pathprox`).
    unit_costs: ``{group: cost of one unit}``: cost-aware thresholds (see :func:`pathprox`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Raises:
    ValueError: as :func:`pathprox`, when built, and for a concrete ``b1`` or
      ``b2`` outside [0, 1), an ``eps`` or ``eps_root`` not finite and >= 0, or a
      ``prox_eps`` not finite and > 0.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import flax.linen as nn
    >>> import pathprox_jax
    >>> model = nn.Sequential([nn.Dense(8, **pathprox_jax.group_inits(0, "in")), nn.relu,
    ...                        nn.Dense(2, **pathprox_jax.group_inits(0, "out"))])
    >>> boxed = model.init(jax.random.key(0), jnp.ones((1, 4)))["params"]
    >>> schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 10, 100)
    >>> tx = pathprox_jax.pathprox_adamw(schedule, 1e-2, pathprox_jax.group_spec(boxed))
    >>> params = nn.meta.unbox(boxed)
    >>> opt_state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, opt_state = tx.update(grads, opt_state, params)
    >>> params = optax.apply_updates(params, updates)

  References:
    Loshchilov and Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, 2019.

    Yang et al., `A Better Way to Decay: Proximal Gradient Training Algorithms
    for Neural Nets <https://arxiv.org/abs/2210.03069>`_, 2022.
  """
  for name, value in (("b1", b1), ("b2", b2)):
    check_hyperparameter(name, value, "in [0, 1)", lambda x: 0 <= x < 1, schedule=False)
  for name, value in (("eps", eps), ("eps_root", eps_root)):
    check_hyperparameter(name, value, "finite and >= 0", lambda x: x >= 0, schedule=False)
  check_hyperparameter("prox_eps", prox_eps, "finite and > 0", lambda x: x > 0, schedule=False)
  return optax.chain(  # pathprox() checks the others
    optax.scale_by_adam(
      b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype, nesterov=nesterov
    ),
    decay.add_decayed_weights(weight_decay, groups, regularize_bias=regularize_bias),
    optax.scale_by_learning_rate(learning_rate),
    pathprox(
      learning_rate,
      weight_decay,
      groups,
      balance=balance,
      regularize_bias=regularize_bias,
      eps=prox_eps,
      unit_costs=unit_costs,
    ),
  )
