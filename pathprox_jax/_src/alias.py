"""Ready optimisers: chains of a base optimiser, ordinary weight decay and the PathProx step.

Each recipe decays what the prox does not regularise (:mod:`decay`'s rule) and ends with
:func:`pathprox_jax.pathprox` or wraps the chain in :func:`pathprox_jax.with_budget`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import optax

from pathprox_jax._src import balance as balance_lib
from pathprox_jax._src import decay
from pathprox_jax._src.annotations import GroupSpecTree
from pathprox_jax._src.budget import Selection, with_budget
from pathprox_jax._src.checks import check_hyperparameter
from pathprox_jax._src.threshold_rules import ThresholdRule
from pathprox_jax._src.transform import pathprox
from pathprox_jax._src.unit_norms import EPS


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

  .. math::
    g \\leftarrow \\nabla L + \\lambda_t\\, \\theta_{\\text{decayed}}, \\qquad
    u = \\mathrm{sgd}(g), \\qquad
    \\theta \\leftarrow \\mathrm{prox}_{\\tau_t}(\\theta + u),

  with :math:`\\tau_t` by ``threshold_rule`` (:data:`pathprox_jax.THRESHOLD_RULES`) and
  :math:`\\theta_{\\text{decayed}}` the leaves of :func:`pathprox_jax.decayed_mask` (the decay
  enters the momentum trace). With ``weight_decay=0`` and no groups this is
  ``optax.sgd(learning_rate, momentum, nesterov)``. It works with ``optax.inject_hyperparams``
  (``static_args=("groups",)``; strings, bools and tuples of chains are static by themselves).

  Args:
    learning_rate: :math:`\\gamma`, a float > 0 or a schedule (SGD's step and the threshold).
    weight_decay: :math:`\\lambda`, a float >= 0 or a schedule (the decay and the threshold).
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.
    momentum: SGD's momentum :math:`\\beta` in [0, 1) (``None``: none), passed to ``optax.sgd``.
    nesterov: Nesterov momentum (the same threshold).
    threshold_rule: "fixed_point" or "paper".
    balance: the layer balance's chains (see :func:`pathprox_jax.balance`).
    regularize_bias: biases are regularised too (see :func:`pathprox_jax.balance`).
    eps: the clip of every norm in the prox.
    unit_costs: ``{group: cost of one unit}``: cost-aware thresholds (see
      :func:`pathprox_jax.pathprox`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

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

  With Adam's direction :math:`d_t` (``optax.scale_by_adam``):

  .. math::
    \\theta_{\\text{decayed}} \\leftarrow \\theta - \\gamma_t (d_t + \\lambda_t \\theta),
    \\qquad
    \\theta_{\\text{grouped}} \\leftarrow
    \\mathrm{prox}_{\\lambda_t\\gamma_t}(\\theta - \\gamma_t d_t),

  the decayed leaves being :func:`pathprox_jax.decayed_mask`'s. The prox at
  :math:`\\lambda\\gamma` is AdamW's decay for PathProx's regulariser (no momentum term: see
  :data:`pathprox_jax.THRESHOLD_RULES`). With no groups this is ``optax.adamw(learning_rate,
  b1, b2, eps, eps_root, mu_dtype, weight_decay, mask=pathprox_jax.kernel_mask,
  nesterov=nesterov)``. It works with schedules and ``optax.inject_hyperparams``.

  Args:
    learning_rate: :math:`\\gamma`, a float > 0 or a schedule.
    weight_decay: :math:`\\lambda`, a float >= 0 or a schedule.
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    eps: added to Adam's denominator (outside the square root).
    eps_root: added inside the square root.
    mu_dtype: the first moment's dtype (``None``: the params').
    nesterov: Nesterov momentum in Adam (NAdamW).
    balance: the layer balance's chains (see :func:`pathprox_jax.balance`).
    regularize_bias: biases are regularised too (see :func:`pathprox_jax.balance`).
    prox_eps: the clip of every norm in the prox (``eps`` of :func:`pathprox_jax.pathprox`).
    unit_costs: ``{group: cost of one unit}``: cost-aware thresholds.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

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


def _ungrouped_decay(weight_decay, groups, selection, budget) -> optax.GradientTransformation:
  """The recipes' ordinary weight decay: what the prox does not regularise ("prox"), or every
  kernel ("magnitude": gradual magnitude pruning trains with weight decay)."""
  decayed = groups if selection == "prox" else None
  regularize_bias = budget.get("regularize_bias", False)
  return decay.add_decayed_weights(weight_decay, decayed, regularize_bias=regularize_bias)


def budget_sgd(
  learning_rate: optax.ScalarOrSchedule,
  weight_decay: optax.ScalarOrSchedule,
  groups: GroupSpecTree,
  *,
  target: float | jax.Array,
  prox_start: int,
  heal_start: int,
  selection: Selection = "prox",
  momentum: float | None = None,
  nesterov: bool = False,
  **budget: Any,
) -> optax.GradientTransformationExtraArgs:
  """SGD with a FLOPs budget: :func:`pathprox_jax.with_budget` around SGD and weight decay.

  The decay (added to the gradient, so it enters the momentum trace) covers what
  :func:`pathprox_jax.pathprox_sgd` decays for ``selection="prox"`` (the prox regularises the
  groups), and every kernel for ``"magnitude"`` (gradual magnitude pruning trains with weight
  decay). The prox's :math:`\\lambda` starts at ``weight_decay`` and the controller scales it;
  the ungrouped decay stays at ``weight_decay``.

  Args:
    learning_rate: :math:`\\gamma`, a float > 0 or a schedule.
    weight_decay: :math:`\\lambda`, a float or a schedule (> 0 for "prox").
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.
    target: the fraction of the grouped units' FLOPs to keep.
    prox_start: the first sparsify step.
    heal_start: the first heal step.
    selection: "prox" or "magnitude".
    momentum: SGD's momentum :math:`\\beta` (``None``: none).
    nesterov: Nesterov momentum.
    **budget: the other arguments of :func:`pathprox_jax.with_budget` (``unit_costs``,
      ``gains``, ``heal_weight_decay``, ``kept_threshold``, ``balance``, ``regularize_bias``,
      ``eps``).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a :class:`pathprox_jax.BudgetState`.
  """
  base = optax.chain(
    _ungrouped_decay(weight_decay, groups, selection, budget),
    optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
  )
  return with_budget(
    base,
    groups,
    target=target,
    prox_start=prox_start,
    heal_start=heal_start,
    selection=selection,
    learning_rate=learning_rate,
    weight_decay=weight_decay,
    momentum=0.0 if momentum is None else momentum,
    **budget,
  )


def budget_adamw(
  learning_rate: optax.ScalarOrSchedule,
  weight_decay: optax.ScalarOrSchedule,
  groups: GroupSpecTree,
  *,
  target: float | jax.Array,
  prox_start: int,
  heal_start: int,
  selection: Selection = "prox",
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  **budget: Any,
) -> optax.GradientTransformationExtraArgs:
  """AdamW with a FLOPs budget: :func:`pathprox_jax.with_budget` around Adam and decoupled decay.

  As :func:`budget_sgd`, with :func:`pathprox_jax.pathprox_adamw`'s base (Adam's direction,
  the decoupled decay, the learning rate) and no momentum in the threshold.

  Args:
    learning_rate: :math:`\\gamma`, a float > 0 or a schedule.
    weight_decay: :math:`\\lambda`, a float or a schedule (> 0 for "prox").
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.
    target: the fraction of the grouped units' FLOPs to keep.
    prox_start: the first sparsify step.
    heal_start: the first heal step.
    selection: "prox" or "magnitude".
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    eps: added to Adam's denominator.
    **budget: the other arguments of :func:`pathprox_jax.with_budget`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a :class:`pathprox_jax.BudgetState`.
  """
  base = optax.chain(
    optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
    _ungrouped_decay(weight_decay, groups, selection, budget),
    optax.scale_by_learning_rate(learning_rate),
  )
  return with_budget(
    base,
    groups,
    target=target,
    prox_start=prox_start,
    heal_start=heal_start,
    selection=selection,
    learning_rate=learning_rate,
    weight_decay=weight_decay,
    **budget,
  )
