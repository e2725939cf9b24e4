"""A FLOPs budget: warm-up, sparsify to a target along a cubic ramp, then heal with a frozen mask.

:func:`with_budget` wraps a base optimiser (it must, to zero the base state of switched-off
units). Its steps, counted by its own ``count``:

- **warm-up** (``count < prox_start``): the base optimiser's step alone, dense.
- **sparsify** (``prox_start <= count < heal_start``): the kept fraction :math:`\\kappa`
  (:mod:`unit_masks`: the cost-weighted fraction of units on) follows the cubic ramp of Zhu and
  Gupta, from 1 at ``prox_start`` to ``target`` at ``heal_start``:

  .. math::
    s_t = \\kappa^* + (1 - \\kappa^*)(1 - p_t)^3, \\qquad
    p_t = \\frac{t + 1 - t_{\\text{prox}}}{t_{\\text{heal}} - t_{\\text{prox}}}.

  ``selection="prox"``: the PathProx prox with a penalty reweighted onto *candidates*, as
  OTO's DHSPG penalises only its redundant groups. After the base step the units are ranked by
  :math:`\\|w_i\\|\\|v_i\\|/c_g`; the top ones that meet :math:`s_t` (GMP's choice) are *kept*
  and thresholded at the user's :math:`c_g \\lambda_t \\gamma_t / (1 - \\beta)` (cost-aware,
  "fixed_point" rule; ``kept_threshold="uniform"``: without :math:`c_g`, plain PathProx's
  threshold), the others are *candidates*, thresholded at :math:`e^{u_t} c_g \\lambda_t
  \\gamma_t / (1 - \\beta)`.
  A candidate shrinks towards zero unless its loss gradient holds it up, and one that grows
  past a kept unit swaps with it. The controller sets :math:`u_t \\ge 0` from the error
  :math:`e_t = \\kappa_t - s_t` (positive: candidates not yet off), proportional-integral in
  :math:`\\log\\lambda` with the integral clipped at 0 (no wind-up):
  :math:`I_{t+1} = \\max(0, I_t + k_i e_t)`, :math:`u_{t+1} = \\max(0, I_{t+1} + k_p e_t)`.
  The kept units never see more than the user's :math:`\\lambda`, so the controller cannot
  shrink them, and it cannot switch off more than the ramp asks (only the prox at the user's
  :math:`\\lambda` can, as at a fixed :math:`\\lambda`).
  ``selection="magnitude"`` (gradual magnitude pruning): after the base step, the units of
  smallest :math:`\\|w_i\\|\\|v_i\\|/c_g` are switched off so that :math:`\\kappa \\ge s_t`;
  once off they stay off. The ramp's cuts stop at the first unit that does not fit (a skip
  would spend each step's increment on cheap units, and starve a dear one at the cut).
- **heal** (``count >= heal_start``): the mask is frozen at the last sparsify step, where
  the units are ranked by :math:`\\|w_i\\|\\|v_i\\|/c_g` before that step's prox and the largest
  kept so that the frozen mask meets the budget from above, to within the cheapest unit on
  (:func:`pathprox_jax.magnitude_masks`: a dear unit that does not fit is skipped): the units the
  controller kept beyond the target go, and where it switched off too many, the units just
  below the threshold come back on, with their out-weights from before the prox. Off units
  are zeroed every step, and so are their slices of the base optimiser's state (SGD's trace,
  Adam's moments: every params-shaped part, found with ``optax.tree_utils.tree_map_params``),
  before the base's update: a unit off after step t starts step t + 1 with a zero state, and
  its gradient is zero (its params are), so every state after a step holds zeros for the units
  off before it. The kept units train with the base optimiser alone, plus
  ``heal_weight_decay`` on the grouped kernels if given.

Every phase rescales each unit of the base step :math:`p + u` (the prox's scales, one, or
zero), and the update is computed as :math:`s u + (s - 1) p`: a scale of one (the warm-up,
GMP's kept units) gives the base's update exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pathprox_jax._src import balance as balance_lib
from pathprox_jax._src import costs as costs_lib
from pathprox_jax._src import groups as groups_lib
from pathprox_jax._src import params as params_lib
from pathprox_jax._src import prox as prox_lib
from pathprox_jax._src import unit_masks
from pathprox_jax._src.annotations import GroupSpec, GroupSpecTree
from pathprox_jax._src.checks import check_hyperparameter
from pathprox_jax._src.threshold_rules import KEPT_THRESHOLDS, KeptThreshold
from pathprox_jax._src.transform import NO_PARAMS_MSG
from pathprox_jax._src.unit_norms import EPS

Selection = Literal["prox", "magnitude"]
SELECTIONS: tuple[Selection, ...] = ("prox", "magnitude")


class BudgetState(NamedTuple):
  """State of :func:`with_budget`.

  Attributes:
    count: the steps taken (indexes the phases, the ramp and the schedules).
    log_scale: :math:`u \\ge 0`, the log of the candidates' multiplier of :math:`\\lambda`.
    integral: the controller's integral term :math:`I`.
    masks: ``{group: bool[units]}``, the units on after the last step (frozen when healing).
    kept_fraction: :math:`\\kappa` after the last step, of the params it stepped (1 on a
      compacted model: the fraction of the dense model is the harness's to compute).
    base: the base optimiser's state.
  """

  count: jax.Array
  log_scale: jax.Array
  integral: jax.Array
  masks: dict[int, jax.Array]
  kept_fraction: jax.Array
  base: optax.OptState


def group_ids(groups: GroupSpecTree) -> list[int]:
  """The group ids a spec names, sorted."""
  specs = jax.tree.leaves(groups, is_leaf=lambda x: isinstance(x, GroupSpec))
  return sorted({s.group for s in specs if isinstance(s, GroupSpec)})


def ramp(target: jax.Array, count: jax.Array, prox_start: int, heal_start: int) -> jax.Array:
  """:math:`s_t`, the kept fraction the ramp asks for after step ``count`` (1 before it)."""
  progress = jnp.clip((count + 1 - prox_start) / (heal_start - prox_start), 0.0, 1.0)
  return target + (1.0 - target) * (1.0 - progress) ** 3


def _check(
  target, prox_start, heal_start, selection, learning_rate, weight_decay, kept_threshold
) -> None:
  check_hyperparameter("target", target, "in (0, 1]", lambda x: 0 < x <= 1, schedule=False)
  if not 0 <= prox_start < heal_start:
    raise ValueError(
      f"PathProx budget needs 0 <= prox_start < heal_start, got {prox_start} and {heal_start}."
    )
  if selection not in SELECTIONS:
    raise ValueError(f"PathProx selection must be 'prox' or 'magnitude', got {selection!r}.")
  if kept_threshold not in KEPT_THRESHOLDS:
    raise ValueError(
      f"PathProx kept_threshold must be 'cost' or 'uniform', got {kept_threshold!r}."
    )
  if selection == "prox":
    if learning_rate is None or weight_decay is None:
      raise ValueError(
        "PathProx budget with selection='prox' needs learning_rate and weight_decay."
      )
    check_hyperparameter("weight_decay", weight_decay, "finite and > 0", lambda x: x > 0)


def _add_heal_decay(updates, params, layouts, decay):
  """The gradient plus ``decay`` times the grouped "in" and "out" kernels."""
  kernels = {i for g in layouts for i in (g.in_kernel, g.out_kernel)}
  grads, treedef = jax.tree.flatten(updates)
  values = treedef.flatten_up_to(params)
  return treedef.unflatten(
    [u + decay.astype(u.dtype) * values[i] if i in kernels else u for i, u in enumerate(grads)]
  )


def with_budget(
  base: optax.GradientTransformation,
  groups: GroupSpecTree,
  *,
  target: float | jax.Array,
  prox_start: int,
  heal_start: int,
  selection: Selection = "prox",
  learning_rate: optax.ScalarOrSchedule | None = None,
  weight_decay: optax.ScalarOrSchedule | None = None,
  momentum: float = 0.0,
  unit_costs: Mapping[int, float] | None = None,
  gains: tuple[float, float] = (2.0, 1.0),
  heal_weight_decay: float = 0.0,
  kept_threshold: KeptThreshold = "cost",
  balance: bool | balance_lib.Chains = True,
  regularize_bias: bool = False,
  eps: float = EPS,
) -> optax.GradientTransformationExtraArgs:
  """A base optimiser with a FLOPs budget: warm-up, sparsify along a ramp, heal (module doc).

  Args:
    base: the base optimiser, giving the whole update (its learning rate included), e.g.
      ``optax.sgd``, with ordinary weight decay of the ungrouped parameters (``selection="prox"``)
      or of every kernel (``"magnitude"``): see :func:`pathprox_jax.budget_sgd`.
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.
    target: :math:`\\kappa^*` in (0, 1], the fraction of the grouped units' FLOPs to keep (an
      array under ``vmap``: one per member).
    prox_start: the first sparsify step.
    heal_start: the first heal step (the ramp reaches ``target`` at its start).
    selection: "prox" (PathProx with the controller) or "magnitude" (gradual magnitude pruning).
    learning_rate: :math:`\\gamma`, the base's learning rate (float or schedule; "prox" only).
    weight_decay: :math:`\\lambda_t > 0`, the controller's starting point ("prox" only).
    momentum: the base's heavy-ball momentum :math:`\\beta` (0 for Adam).
    unit_costs: ``{group: cost of one unit}`` (:func:`pathprox_jax.unit_costs`); ``None``: 1.
    gains: the controller's :math:`(k_p, k_i)`.
    heal_weight_decay: ordinary weight decay of the grouped kernels while healing (0: none).
    kept_threshold: the kept units' threshold while sparsifying ("prox" only): "cost",
      :math:`c_g \\tau` (the cost-aware objective :math:`L + \\lambda \\sum_g c_g \\sum_i
      \\|w_i\\|\\|v_i\\|`), or "uniform", :math:`\\tau` (plain PathProx's objective on what
      stays: the costs only rank the units and scale the candidates' thresholds).
    balance: the layer balance's chains (see :func:`pathprox_jax.balance`).
    regularize_bias: biases are regularised too (see :func:`pathprox_jax.balance`).
    eps: the clip of every norm in the prox.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a :class:`BudgetState`.

  Raises:
    ValueError: a concrete ``target`` outside (0, 1], phases out of order, an unknown
      ``selection`` or ``kept_threshold``, or (for "prox") no ``learning_rate``/``weight_decay``
      or one <= 0.

  Example:
    >>> import jax.numpy as jnp, optax, pathprox_jax as pp
    >>> G = pp.GroupSpec
    >>> params = {"w": jnp.ones((3, 4)), "v": jnp.ones((4, 2))}
    >>> groups = {"w": G(0, "in"), "v": G(0, "out")}
    >>> tx = pp.with_budget(optax.sgd(0.1), groups, target=0.5, prox_start=10, heal_start=100,
    ...                     learning_rate=0.1, weight_decay=1e-3)
    >>> state = tx.init(params)
  """
  _check(target, prox_start, heal_start, selection, learning_rate, weight_decay, kept_threshold)
  ids = group_ids(groups)
  costs = dict.fromkeys(ids, 1.0) if unit_costs is None else costs_lib.relative_costs(unit_costs)
  kept_costs = costs if kept_threshold == "cost" else dict.fromkeys(ids, 1.0)
  k_p, k_i = gains

  def init_fn(params):
    if not jax.tree.leaves(params):  # optax.tree_utils.tree_map_params' placeholder
      masks = {g: jnp.ones(0, bool) for g in ids}
    else:
      layouts = groups_lib.group_layouts(params_lib.unwrap_variables(params), groups)
      costs_lib.check_costs(costs, layouts)
      if selection == "prox" and not regularize_bias:
        balance_lib.chain_layouts(layouts, balance)
      masks = {g.group: jnp.ones(g.units, bool) for g in layouts}
    return BudgetState(
      count=jnp.zeros([], jnp.int32),
      log_scale=jnp.zeros([], jnp.float32),
      integral=jnp.zeros([], jnp.float32),  # distinct buffers: a jitted step may donate them
      masks=masks,
      kept_fraction=jnp.ones([], jnp.float32),
      base=base.init(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(NO_PARAMS_MSG)
    count = state.count
    layouts = groups_lib.group_layouts(params, groups)
    warm, heal = count < prox_start, count >= heal_start
    zero_state = heal | (selection == "magnitude")  # the steps that keep off units off
    sparsify, freeze = ~warm & ~heal, count == heal_start - 1
    if heal_weight_decay:
      updates = _add_heal_decay(updates, params, layouts, jnp.where(heal, heal_weight_decay, 0.0))
    # Momentum would push switched-off units back on: the units the last step left off (healing,
    # or GMP's, which stay off) start this step with their slices of the base state zeroed. Zeroed
    # here, before the base's update, XLA fuses the select into it; zeroed after, a second pass
    # (or a lax.cond's copy of the untaken branch) would rewrite the whole state every step.
    # Their params are zero, so their gradient is too, and the state after this step holds zeros
    # for every unit that was off before it (the units it switches off: from the next step).
    base_state = optax.tree_utils.tree_map_params(
      base,
      unit_masks.zero_off_units,
      state.base,
      unit_masks.mask_tree(params, state.masks, layouts, active=zero_state),
    )
    base_updates, base_state = base.update(updates, base_state, params, **extra_args)
    param_leaves, treedef = jax.tree.flatten(params)
    update_leaves = treedef.flatten_up_to(base_updates)
    grouped = sorted(
      {i for g in layouts for i, _ in g.sliced} | {i for g in layouts for i in g.unit_axes}
    )
    stepped = {
      i: param_leaves[i].astype(jnp.float32) + update_leaves[i].astype(jnp.float32) for i in grouped
    }
    target_ = jnp.asarray(target, jnp.float32)
    goal = ramp(target_, count, prox_start, heal_start)
    # ||w_i|| ||v_i|| after the base step: GMP's (off units: 0) and the prox's candidate ranking.
    ranked = (
      state.masks if selection == "magnitude" else {g: jnp.ones_like(state.masks[g]) for g in ids}
    )
    scores = unit_masks.path_norm_scores(stepped, layouts, ranked)
    # Every phase is a rescaling of each unit of the base step p + u by a scale s: the prox's
    # (sparsify), 1 (warm-up, GMP) and 0 where a mask zeroes the unit. Each leaf's update is
    # s u + (s - 1) p, so a scale of one gives the base's update exactly. Computed and selected
    # elementwise (no cond), the phases fuse into the one pass over the parameters that the
    # prox makes, and vmap needs no branches.
    scales: dict[int, jax.Array] = {}
    if selection == "prox":
      lr = learning_rate(count) if callable(learning_rate) else learning_rate
      wd = weight_decay(count) if callable(weight_decay) else weight_decay
      tau = jnp.asarray(wd * lr, jnp.float32) / (1.0 - momentum)
      keep = unit_masks.magnitude_masks(scores, costs, goal, fill=False)
      boost = jnp.exp(state.log_scale)
      thresholds = {g: tau * jnp.where(keep[g], kept_costs[g], costs[g] * boost) for g in ids}
      scaled = prox_lib.prox_scales(
        stepped, layouts, thresholds, balance=balance, regularize_bias=regularize_bias, eps=eps
      )
      masks = {g.group: scaled[g.out_kernel].norms() > 0 for g in layouts}  # v_i != 0
      scales = {i: jnp.where(sparsify, x.broadcast_scale(), 1.0) for i, x in scaled.items()}
    else:
      chosen = unit_masks.magnitude_masks(scores, costs, goal, fill=False)
      masks = {g: chosen[g] & state.masks[g] for g in ids}  # once off, off
    controlled = unit_masks.kept_fraction(masks, layouts, costs)
    # The ramp's end: the frozen mask meets the target from above, to within one unit (the
    # cheapest on: a head at the cut that does not fit stays, and cheaper units go). The
    # units are ranked by their path norm before the prox, so that PathProx's mask is topped
    # up both ways: what the controller kept beyond the target goes, and where it switched off
    # too much, the units the threshold only just took (the largest below it) come back on.
    # GMP's off units stay off (score 0: they go first).
    frozen = jax.lax.cond(
      freeze, lambda: unit_masks.magnitude_masks(scores, costs, target_), lambda: masks
    )
    if selection == "prox":  # a unit back on restarts from its out-weights before the prox
      for g in layouts:
        back = freeze & frozen[g.group] & ~masks[g.group]
        out = param_leaves[g.out_kernel].ndim
        scales[g.out_kernel] = jnp.where(
          unit_masks.on_axis(back, out, g.out_axis), 1.0, scales[g.out_kernel]
        )
    masks = {g: jnp.where(heal, state.masks[g], jnp.where(warm, True, frozen[g])) for g in ids}
    # The prox zeroes its units itself (they may come back); masks zero GMP's, and all frozen.
    zeroed = heal | freeze | (sparsify & (selection == "magnitude"))
    on = jax.tree.leaves(unit_masks.mask_tree(params, masks, layouts, active=zeroed))
    deltas = {}
    for i in grouped:
      scale = unit_masks.zero_off_units(jnp.asarray(scales.get(i, 1.0), jnp.float32), on[i])
      p, u = param_leaves[i].astype(jnp.float32), update_leaves[i].astype(jnp.float32)
      deltas[i] = (u * scale + p * (scale - 1.0)).astype(update_leaves[i].dtype)
    # masks come from the full (replicated or globally sharded) params, so the kept fraction is
    # already global under jit on several devices or processes: no collective is needed.
    kept = unit_masks.kept_fraction(masks, layouts, costs)
    error = jnp.where(sparsify, controlled - goal, 0.0)
    integral = jnp.maximum(0.0, state.integral + k_i * error)
    new_state = BudgetState(
      count=optax.safe_increment(count),
      log_scale=jnp.where(sparsify, jnp.maximum(0.0, integral + k_p * error), state.log_scale),
      integral=integral,
      masks=masks,
      kept_fraction=kept,
      base=base_state,
    )
    out = [deltas.get(i, u) for i, u in enumerate(update_leaves)]
    return treedef.unflatten(out), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
