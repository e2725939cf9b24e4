"""Which units are on: cost-weighted kept fractions, magnitude selection and unit masks.

A group's units are on or off as a boolean vector ``[units]`` (``{group: mask}`` for a model).
The *kept fraction* weighs each group's units by their relative cost :math:`c_g`
(:func:`pathprox_jax.relative_costs`; 1 without costs):

.. math::
  \\kappa = \\frac{\\sum_g c_g \\, \\mathrm{kept}_g}{\\sum_g c_g \\, n_g},

the fraction of the grouped units' FLOPs that the kept units need.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from pathprox_jax._src import unit_norms
from pathprox_jax._src.groups import GroupLayout

Masks = dict[int, jax.Array]  # {group: bool[units]}, True where the unit is on


def _unit_costs(units: Mapping[int, int], costs: Mapping[int, float]) -> jax.Array:
  """Every unit's cost :math:`c_g`, the groups' units (``{group: count}``) in one f32 vector."""
  return jnp.concatenate([jnp.full(n, costs[g], jnp.float32) for g, n in units.items()])


def kept_fraction(
  masks: Mapping[int, jax.Array], layouts: Sequence[GroupLayout], costs: Mapping[int, float]
) -> jax.Array:
  """:math:`\\kappa`, the cost-weighted fraction of units on (f32 scalar): one dot product of
  all groups' masks with their units' costs."""
  on = jnp.concatenate([masks[g.group] for g in layouts]).astype(jnp.float32)
  return jnp.dot(on, _unit_costs({g.group: g.units for g in layouts}, costs)) / sum(
    costs[g.group] * g.units for g in layouts
  )


def path_norm_scores(
  leaves: Sequence[jax.Array] | Mapping[int, jax.Array],
  layouts: Sequence[GroupLayout],
  masks: Mapping[int, jax.Array],
) -> dict[int, jax.Array]:
  """``{group: ||w_i|| ||v_i||}``, 0 for the units ``masks`` has off: magnitude's scores."""
  scaled = unit_norms.scaled_groups(leaves, layouts)
  return {
    g.group: jnp.where(masks[g.group], unit_norms.unit_path_norms(scaled, g), 0.0) for g in layouts
  }


def _ranked_prefix(
  keys: jax.Array, ordered: jax.Array, unit_cost: jax.Array, eligible: jax.Array, budget: jax.Array
) -> jax.Array:
  """The longest prefix of the ``eligible`` units ranked by ``keys`` (ties in index order)
  whose costs sum to at most ``budget`` (``ordered``: all keys, sorted).

  A bisection over ``ordered`` finds the first key whose eligible units (with all below it)
  cost more than the budget: the cut. Below it every eligible unit is in; at it, a prefix of
  the tied eligible units in index order."""
  n = keys.shape[0]

  def bisect(_, bounds):
    lo, hi = bounds
    mid = (lo + hi) // 2
    upto = eligible & (keys <= ordered[jnp.minimum(mid, n - 1)])
    over = jnp.sum(jnp.where(upto, unit_cost, 0.0)) > budget
    searching = lo < hi
    return jnp.where(searching & ~over, mid + 1, lo), jnp.where(searching & over, mid, hi)

  steps = math.ceil(math.log2(n + 1))
  first_over, _ = jax.lax.fori_loop(0, steps, bisect, (jnp.int32(0), jnp.int32(n)))
  cut = ordered[jnp.minimum(first_over, n - 1)]
  below, tied = eligible & (keys < cut), eligible & (keys == cut)
  freed = jnp.sum(jnp.where(below, unit_cost, 0.0)) + jnp.cumsum(jnp.where(tied, unit_cost, 0.0))
  return jnp.where(first_over < n, below | (tied & (freed <= budget)), eligible)


def magnitude_masks(
  scores: Mapping[int, jax.Array],
  costs: Mapping[int, float],
  fraction: jax.Array | float,
  *,
  fill: bool = True,
) -> Masks:
  """Keeps the units of largest score :math:`/ c_g` over all groups, so that
  :math:`\\kappa \\ge` ``fraction``: one global, cost-aware magnitude cut.

  The units of every group are ranked together by :math:`s_i / c_g` and switched off from the
  smallest up while the cost they free stays within
  :math:`(1 - \\text{fraction}) \\sum_g c_g n_g` (to a relative 1e-6). With ``fill``, a unit
  that costs more than is left is skipped and the next ranks go instead (greedy with skips, one
  pass per distinct cost): the kept fraction :math:`\\kappa` then exceeds ``fraction`` by less
  than the cheapest unit still on costs. Without, the cut stops at the first unit that does not
  fit, and :math:`\\kappa` exceeds ``fraction`` by less than that unit's cost (up to a head's,
  where the other units are neurons). Units already off (score 0) go first; at equal ratios,
  the lower unit (in ``scores``' order of groups) goes first. Traceable (``jit``, ``vmap``;
  ``fraction`` may be traced): one sort of all units' keys.

  Dividing by :math:`c_g` ranks as the cost-aware prox does: it switches unit ``i`` off when
  :math:`\\|v_i\\| \\le c_g \\tau` with :math:`\\|w_i\\| = 1`. With the scores
  :math:`\\|w_i\\|\\|v_i\\|` (:func:`pathprox_jax.unit_path_norms`) it is gradual magnitude
  pruning's cut; with :math:`|\\gamma_i|` and equal costs, network slimming's global threshold.

  Args:
    scores: ``{group: one score >= 0 per unit}``.
    costs: ``{group: c_g > 0}``, the cost of one unit (e.g. :func:`pathprox_jax.relative_costs`
      of :func:`pathprox_jax.unit_costs`; only ratios matter); the same groups as ``scores``.
    fraction: the cost-weighted fraction of units to keep, in [0, 1].
    fill: skip the units that do not fit (one cut, to the target). ``False`` for the steps of
      a ramp whose units stay off (gradual magnitude pruning): there, skips would spend every
      step's small increment on cheap units, and a dear unit at the cut would stay on until
      no cheap unit is left.

  Returns:
    ``{group: bool[units]}``, True for the units kept.

  Example:
    >>> import jax.numpy as jnp
    >>> import pathprox_jax as pp
    >>> scores = {0: jnp.array([1.0, 2.0]), 1: jnp.array([1.0, 2.0])}  # group 1 costs twice
    >>> masks = pp.magnitude_masks(scores, {0: 1.0, 1: 2.0}, 2 / 3)
    >>> {g: m.tolist() for g, m in masks.items()}
    {0: [True, True], 1: [False, True]}
    >>> scores = {0: jnp.array([0.5, 2.0, 3.0]), 1: jnp.array([4.0])}  # a unit of 4 at the cut
    >>> masks = pp.magnitude_masks(scores, {0: 1.0, 1: 4.0}, 0.5)  # keep 3.5 of 7
    >>> {g: m.tolist() for g, m in masks.items()}  # it stays; the units of 1 ranked above go
    {0: [False, False, False], 1: [True]}
  """
  ranked = jnp.concatenate([jnp.asarray(s, jnp.float32) / costs[g] for g, s in scores.items()])
  unit_cost = _unit_costs({g: jnp.shape(s)[0] for g, s in scores.items()}, costs)
  budget = (1.0 - fraction) * jnp.sum(unit_cost) * (1 + 1e-6)
  # The bits of a float32 >= 0 order as its value: one sort of integer keys serves every pass
  # (an argsort is several times slower on CPU).
  keys = jax.lax.bitcast_convert_type(ranked + 0.0, jnp.int32)  # + 0.0: -0.0 is +0.0
  ordered = jnp.sort(keys)
  # Each pass switches off a prefix of the ranking of the units still on that fit in what is
  # left of the budget; the unit at its cut costs more than is then left, so the next pass (of
  # a fill) skips its cost and every dearer one. After one pass per distinct cost, what is left
  # is less than any unit still on costs (a head at the cut no longer keeps a head's worth of
  # FLOPs above the target: cheaper units of the next ranks fill in).
  off = _ranked_prefix(keys, ordered, unit_cost, jnp.ones(ranked.shape, bool), budget)
  for _ in range(len({costs[g] for g in scores}) - 1 if fill else 0):
    left = budget - jnp.sum(jnp.where(off, unit_cost, 0.0))
    off = off | _ranked_prefix(keys, ordered, unit_cost, ~off & (unit_cost <= left), left)
  masks, start = {}, 0
  for g, s in scores.items():
    units = jnp.shape(s)[0]
    masks[g] = ~off[start : start + units]
    start += units
  return masks


def mask_tree(
  params: Any,
  masks: Mapping[int, jax.Array],
  layouts: Sequence[GroupLayout],
  active: jax.Array | bool = True,
) -> Any:
  """A tree with the structure of ``params``: each sliced leaf's units masks, shaped to
  broadcast on their unit axes, and ``True`` (a Python bool) for the leaves no group slices.

  Where ``active`` (a traced scalar: a step's phase) is false, every unit is on."""
  leaves, treedef = jax.tree.flatten(params)
  out: list[Any] = [True] * len(leaves)
  for g in layouts:
    mask = masks[g.group] if active is True else masks[g.group] | ~active
    for i, axis in g.sliced:  # a kernel between two groups of a chain takes both masks
      out[i] = out[i] & on_axis(mask, leaves[i].ndim, axis)
  return treedef.unflatten(out)


def on_axis(mask: jax.Array, ndim: int, axis: int) -> jax.Array:
  """A units mask shaped to broadcast on ``axis`` of an array of ``ndim`` dimensions."""
  shape = [1] * ndim
  shape[axis] = -1
  return mask.reshape(shape)


def zero_off_units(x: jax.Array, mask: jax.Array | bool) -> jax.Array:
  """One leaf with the switched-off units' slices zeroed (``mask`` from :func:`mask_tree`)."""
  return x if mask is True else jnp.where(mask, x, jnp.zeros_like(x))
