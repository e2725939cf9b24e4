"""What one unit of each group costs: the FLOPs per example of the products it takes part in.

A unit's slices of its group's parameters (the "in" kernel's column, the "out" kernel's row, the
"follow" kernels' slices) each enter products (``dot_general``, ``conv_general_dilated``) of the
traced model; so do the values computed from them that still carry the unit's axis (an attention
head's query, key and value, its scores and its weights). Removing the unit removes its share of
every such product: the product's FLOPs divided by the group's number of units. The cost of a
unit of group :math:`g` is the sum of these shares, per example:

.. math::
  c_g = \\frac{1}{B\\, n_g} \\sum_{\\text{products } p \\ni g} \\mathrm{FLOPs}(p),

with :math:`B` the batch, :math:`n_g` the group's units and :math:`\\mathrm{FLOPs}(p)` twice the
multiply-adds. A product that holds two groups' unit axes (an "out" kernel's rows and the next
group's values) counts for both: the costs are the saving of removing one unit at a time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from pathprox_jax._src import groups as groups_lib
from pathprox_jax._src import params as params_lib
from pathprox_jax._src.annotations import GroupSpecTree
from pathprox_jax._src.jaxpr_graph import (
  INDEX_REDUCTIONS,
  LAYOUT_OPS,
  PRODUCTS,
  REDUCTIONS,
  Const,
  Eqn,
  Graph,
  dot_general_axes,
  map_axis,
  trace,
)

# Each value's axes that are some group's unit axis: {value: {(axis, group)}}.
Tags = dict[int, frozenset[tuple[int, int]]]


def _product_flops(graph: Graph, eqn: Eqn) -> float:
  """Twice the multiply-adds of a ``dot_general`` or a convolution."""
  out = np.prod(graph.shape(eqn.outputs[0]), dtype=np.float64)
  if eqn.prim == "dot_general":
    (contract, _), _ = eqn.params["dimension_numbers"]
    lhs = graph.shape(eqn.inputs[0])
    return 2.0 * out * np.prod([lhs[a] for a in contract], dtype=np.float64)
  rhs = graph.shape(eqn.inputs[1])
  out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
  return 2.0 * out * np.prod(rhs, dtype=np.float64) / out_features


def _product_output_axes(graph: Graph, eqn: Eqn, position: int) -> dict[int, int]:
  """``{operand axis: output axis}`` for the axes of operand ``position`` kept in the output."""
  if eqn.prim == "conv_general_dilated":
    numbers = eqn.params["dimension_numbers"]
    if position == 0:
      return {numbers.lhs_spec[0]: numbers.out_spec[0]}
    return {numbers.rhs_spec[0]: numbers.out_spec[1]}
  axes = dot_general_axes(graph, eqn)
  return {a: out for out, sources in enumerate(axes) for side, a in sources if side == position}


def _operand_tags(graph: Graph, value: int | Const, tags: Tags, sliced: Mapping) -> set:
  """The ``(axis, group)`` unit axes of an operand: a parameter's sliced axes, or its tags."""
  if isinstance(value, Const):
    return set()
  ref = graph.param(value)
  if ref is not None:
    return {
      (a, sliced[(ref.leaf, p)])
      for a, p in enumerate(ref.axes)
      if p is not None and (ref.leaf, p) in sliced
    }
  return set(tags.get(value, ()))


def _propagate(graph: Graph, eqn: Eqn, tags: Tags, sliced: Mapping) -> set:
  """The unit axes of a non-product equation's single output, from its inputs'."""
  out_shape = graph.shape(eqn.outputs[0])
  if eqn.prim in LAYOUT_OPS:
    in_shape = graph.shape(eqn.inputs[0])
    result = set()
    for axis, group in _operand_tags(graph, eqn.inputs[0], tags, sliced):
      moved = map_axis(eqn, in_shape, out_shape, axis)
      if moved is not None and in_shape[axis] == out_shape[moved]:
        result.add((moved, group))
    return result
  if eqn.prim in REDUCTIONS | INDEX_REDUCTIONS:
    reduced = set(eqn.params["axes"])
    kept = [a for a in range(len(graph.shape(eqn.inputs[0]))) if a not in reduced]
    return {
      (kept.index(a), g)
      for a, g in _operand_tags(graph, eqn.inputs[0], tags, sliced)
      if a not in reduced
    }
  # Elementwise: every non-scalar input has the output's axes (or size 1 on some, broadcast).
  inputs = [v for v in eqn.inputs if graph.shape(v)]
  if not inputs or any(
    len(graph.shape(v)) != len(out_shape)
    or any(n not in (1, m) for n, m in zip(graph.shape(v), out_shape, strict=True))
    for v in inputs
  ):
    return set()
  return {
    (a, g)
    for v in inputs
    for a, g in _operand_tags(graph, v, tags, sliced)
    if graph.shape(v)[a] == out_shape[a]
  }


def unit_costs(
  fn: Callable[..., Any], params: Any, *args: Any, groups: GroupSpecTree, **kwargs: Any
) -> dict[int, float]:
  """The FLOPs per example that one unit of each group costs, read from the traced model.

  ``fn(params, *args, **kwargs)`` is traced once (``jax.make_jaxpr``: nothing runs). Every
  product whose operands hold a group's unit axis (a slice of its "in", "out" or "follow"
  kernels, or a value computed from them through elementwise, layout and reduction ops that keep
  that axis, such as an attention head's scores) counts for the group; a unit's cost is its
  share (see the module's docstring), divided by the batch: the leading axis of the first array
  among ``args``. For a ReLU MLP ``d_0-d_1-d_2`` (group 0 the first hidden layer), a neuron
  costs :math:`2 d_0 + 2 d_2`; for a head of width :math:`d_h` in a block of width :math:`d`
  over :math:`L` tokens, :math:`8 L d\\, d_h + 4 L^2 d_h` (Q, K, V, O and the two attention
  products). Only the products are counted (no biases, activations or softmax).

  Args:
    fn: the model's apply function, ``fn(params, *args, **kwargs)``, e.g.
      ``lambda p, x: model.apply({"params": p}, x)``.
    params: the (unboxed) parameters, or ``jax.eval_shape`` structs of them.
    *args: one batch of inputs (arrays or ``jax.ShapeDtypeStruct``; the first array's leading
      axis is the batch).
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.
    **kwargs: passed to ``fn`` (non-arrays stay static).

  Returns:
    ``{group: FLOPs per example of one of its units}`` (raw; :func:`relative_costs` makes the
    cheapest 1).

  Raises:
    ValueError: a group's units take part in no product of ``fn``, or ``args`` hold no array.

  Example:
    >>> import jax, jax.numpy as jnp, pathprox_jax as pp
    >>> G = pp.GroupSpec
    >>> params = {"w": jnp.ones((3, 4)), "v": jnp.ones((4, 2))}
    >>> fn = lambda p, x: jax.nn.relu(x @ p["w"]) @ p["v"]
    >>> pp.unit_costs(fn, params, jnp.ones((5, 3)), groups={"w": G(0, "in"), "v": G(0, "out")})
    {0: 10.0}
  """
  params = params_lib.unwrap_variables(params)
  arrays = [x for x in jax.tree.leaves((args, kwargs)) if hasattr(x, "shape") and np.ndim(x)]
  if not arrays:
    raise ValueError("unit_costs needs a batch of inputs among args (an array with a batch axis).")
  batch = arrays[0].shape[0]
  layouts = groups_lib.group_layouts(params, groups)
  sliced = {(leaf, axis): g.group for g in layouts for leaf, axis in g.sliced}
  graph = trace(fn, params, *args, **kwargs)
  tags: Tags = {}
  flops: dict[int, float] = defaultdict(float)
  for eqn in graph.eqns:
    if eqn.prim in PRODUCTS:
      present = [_operand_tags(graph, v, tags, sliced) for v in eqn.inputs[:2]]
      for group in {g for operand in present for _, g in operand}:
        flops[group] += _product_flops(graph, eqn)
      out = set()
      for position, operand in enumerate(present):
        moved = _product_output_axes(graph, eqn, position)
        out.update((moved[a], g) for a, g in operand if a in moved)
    elif len(eqn.outputs) == 1:
      out = _propagate(graph, eqn, tags, sliced)
    else:
      out = set()
    if out:
      tags[eqn.outputs[0]] = frozenset(out)
  missing = [g.group for g in layouts if not flops[g.group]]
  if missing:
    raise ValueError(
      f"unit_costs: the units of group {missing[0]} take part in no product of fn; pass the "
      "model's apply function and the groups of the same params."
    )
  return {g.group: float(flops[g.group] / (batch * g.units)) for g in layouts}


def relative_costs(costs: Mapping[int, float]) -> dict[int, float]:
  """The costs divided by the smallest, so that the cheapest unit costs 1.

  Args:
    costs: ``{group: cost > 0}``, e.g. from :func:`unit_costs`.

  Returns:
    ``{group: c_g}`` with :math:`\\min_g c_g = 1`.

  Raises:
    ValueError: a cost is not finite and > 0.
  """
  bad = [(g, c) for g, c in costs.items() if not (np.isfinite(c) and c > 0)]
  if bad or not costs:
    raise ValueError(f"PathProx unit_costs must be finite and > 0 per group, got {dict(costs)}.")
  cheapest = min(costs.values())
  return {g: float(c) / cheapest for g, c in costs.items()}


def check_costs(costs: Mapping[int, float] | None, layouts) -> None:
  """Raises a one-line ``ValueError`` unless ``costs`` (if given) names exactly the groups."""
  if costs is not None and set(costs) != {g.group for g in layouts}:
    raise ValueError(
      f"PathProx unit_costs name groups {sorted(costs)} but the groups are "
      f"{sorted(g.group for g in layouts)}: give one cost per group (pathprox_jax.unit_costs)."
    )


def group_thresholds(
  threshold: jax.Array, costs: Mapping[int, float] | None
) -> jax.Array | dict[int, jax.Array]:
  """:math:`c_g \\tau` per group (``{group: threshold}``), or ``threshold`` itself without costs."""
  if costs is None:
    return threshold
  return {g: c * threshold for g, c in costs.items()}
