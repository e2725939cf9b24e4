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


def magnitude_masks(
  scores: Mapping[int, jax.Array],
  costs: Mapping[int, float],
  fraction: jax.Array | float,
) -> Masks:
  """Keeps the units of largest score :math:`/ c_g` over all groups, so that
  :math:`\\kappa \\ge` ``fraction``: one global, cost-aware magnitude cut.

  The units of every group are ranked together by :math:`s_i / c_g` and switched off from the
  smallest up while the cost they free stays within
  :math:`(1 - \\text{fraction}) \\sum_g c_g n_g` (to a relative 1e-6): the kept fraction
  :math:`\\kappa` then exceeds ``fraction`` by less than one unit's cost. Units already off
  (score 0) go first; at equal ratios, the lower unit (in ``scores``' order of groups) goes
  first. Traceable (``jit``, ``vmap``; ``fraction`` may be traced): one sort of all units' keys.

  Dividing by :math:`c_g` ranks as the cost-aware prox does: it switches unit ``i`` off when
  :math:`\\|v_i\\| \\le c_g \\tau` with :math:`\\|w_i\\| = 1`. With the scores
  :math:`\\|w_i\\|\\|v_i\\|` (:func:`pathprox_jax.unit_path_norms`) it is gradual magnitude
  pruning's cut; with :math:`|\\gamma_i|` and equal costs, network slimming's global threshold.

  Args:
    scores: ``{group: one score >= 0 per unit}``.
    costs: ``{group: c_g > 0}``, the cost of one unit (e.g. :func:`pathprox_jax.relative_costs`
      of :func:`pathprox_jax.unit_costs`; only ratios matter); the same groups as ``scores``.
    fraction: the cost-weighted fraction of units to keep, in [0, 1].

  Returns:
    ``{group: bool[units]}``, True for the units kept.

  Example:
    >>> import jax.numpy as jnp
    >>> import pathprox_jax as pp
    >>> scores = {0: jnp.array([1.0, 2.0]), 1: jnp.array([1.0, 2.0])}  # group 1 costs twice
    >>> masks = pp.magnitude_masks(scores, {0: 1.0, 1: 2.0}, 2 / 3)
    >>> {g: m.tolist() for g, m in masks.items()}
    {0: [True, True], 1: [False, True]}
  """
  ranked = jnp.concatenate([jnp.asarray(s, jnp.float32) / costs[g] for g, s in scores.items()])
  unit_cost = _unit_costs({g: jnp.shape(s)[0] for g, s in scores.items()}, costs)
  n = ranked.shape[0]
  budget = (1.0 - fraction) * jnp.sum(unit_cost) * (1 + 1e-6)
  # The units switched off are a prefix of the ranking (ties in index order), found without an
  # argsort (several times slower on CPU): the bits of a float32 >= 0 order as its value, so one
  # sort of integer keys, then a bisection for the first sorted key whose units (with all below
  # it) free more than the budget: the cut. Below it every unit goes; at it, a prefix of the
  # tied units in index order.
  keys = jax.lax.bitcast_convert_type(ranked + 0.0, jnp.int32)  # + 0.0: -0.0 is +0.0
  ordered = jnp.sort(keys)

  def bisect(_, bounds):
    lo, hi = bounds
    mid = (lo + hi) // 2
    over = jnp.sum(jnp.where(keys <= ordered[jnp.minimum(mid, n - 1)], unit_cost, 0.0)) > budget
    searching = lo < hi
    return jnp.where(searching & ~over, mid + 1, lo), jnp.where(searching & over, mid, hi)

  steps = math.ceil(math.log2(n + 1))
  first_over, _ = jax.lax.fori_loop(0, steps, bisect, (jnp.int32(0), jnp.int32(n)))
  cut = ordered[jnp.minimum(first_over, n - 1)]
  below, tied = keys < cut, keys == cut
  freed = jnp.sum(jnp.where(below, unit_cost, 0.0)) + jnp.cumsum(jnp.where(tied, unit_cost, 0.0))
  off = jnp.where(first_over < n, below | (tied & (freed <= budget)), True)
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
