"""What each op of a :class:`jaxpr_graph.Graph` does to a unit's axis: a table of rules.

A unit path starts at a layer's output, at the unit axis (or, for the layer balance, at no axis:
a uniform scale), and goes reader by reader. :data:`STEP_RULES` maps a primitive to its rule:
given the equation, the operand position the path reads and the unit axis there, the rule says
where the path goes on (:class:`Step`: the output and its unit axis) or why it stops (the op
mixes the units, rounds them or is not positively homogeneous). :func:`follow` walks the other
way, from an operand multiplied with the units back to where its unit axis comes from.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Any, NamedTuple

from pathprox_jax._src.jaxpr_graph import (
  COMPARISONS,
  ELEMENTWISE,
  ELEMENTWISE_HOMOGENEOUS,
  LAYOUT_OPS,
  NON_HOMOGENEOUS,
  POOLING,
  REDUCTIONS,
  ROUNDING,
  Const,
  Eqn,
  Graph,
  dot_general_axes,
  dot_general_output_axis,
  map_axis,
  relays,
)


class Step(NamedTuple):
  """One op on a unit path: the path goes on, or it stops.

  Attributes:
    value: the op's output that carries the units (``None`` when the path stops).
    axis: the unit axis of ``value`` (``None`` also for a uniform scale).
    op: the op's name in the report (``"relu"`` for a max with zero).
    stop: why the path stops here, as "the units ..." would go on (``""``: it goes on).
  """

  value: int | None
  axis: int | None
  op: str
  stop: str = ""


def _stop(reason: str) -> Step:
  return Step(None, None, "", reason)


def is_zero(graph: Graph, value: int | Const) -> bool:
  """A constant zero, possibly broadcast."""
  if isinstance(value, Const):
    return value.is_zero()
  eqn = graph.producer.get(value)
  return eqn is not None and eqn.prim == "broadcast_in_dim" and is_zero(graph, eqn.inputs[0])


def _others(eqn: Eqn, position: int) -> list[Any]:
  return [v for i, v in enumerate(eqn.inputs) if i != position]


def _elementwise(graph, eqn, position, value, axis) -> Step:
  if eqn.prim == "convert_element_type" and not relays(eqn):  # neg, copy: homogeneous
    dtype = eqn.params["new_dtype"]
    return _stop(
      f"are cast to {dtype} by {eqn.prim}, which rounds them (not positively homogeneous)"
    )
  return Step(eqn.outputs[0], axis, eqn.prim)


def _rounding(graph, eqn, position, value, axis) -> Step:
  return _stop(f"are rounded by {eqn.prim} (not positively homogeneous)")


def _max_min(graph, eqn, position, value, axis) -> Step:
  if all(is_zero(graph, v) for v in _others(eqn, position)):
    return Step(eqn.outputs[0], axis, "relu")
  return _stop(f"go through {eqn.prim} with a non-zero value (not positively homogeneous)")


def _scale(graph, eqn, position, value, axis) -> Step:
  if eqn.prim == "mul" or position == 0:
    return Step(eqn.outputs[0], axis, eqn.prim)
  return _stop(f"are read by {eqn.prim}")


def _select(graph, eqn, position, value, axis) -> Step:
  if position > 0 and all(is_zero(graph, v) for v in _others(eqn, position)[1:]):
    return Step(eqn.outputs[0], axis, "mask")
  return _stop(f"are read by {eqn.prim}")


def _pooling(graph, eqn, position, value, axis) -> Step:
  if axis is None:
    return Step(eqn.outputs[0], None, eqn.prim)
  window = [eqn.params[k][axis] for k in ("window_dimensions", "window_strides")]
  if window == [1, 1] and tuple(eqn.params["padding"][axis]) == (0, 0):
    return Step(eqn.outputs[0], axis, eqn.prim)
  return _stop(f"are pooled across units by {eqn.prim}")


def _reduction(graph, eqn, position, value, axis) -> Step:
  if axis is None:
    return Step(eqn.outputs[0], None, eqn.prim)
  if axis in eqn.params["axes"]:
    return _stop(f"are reduced over the unit axis by {eqn.prim}")
  return Step(eqn.outputs[0], axis - sum(a < axis for a in eqn.params["axes"]), eqn.prim)


def _layout(graph, eqn, position, value, axis) -> Step:
  out = eqn.outputs[0]
  if axis is None:
    return Step(out, None, eqn.prim)
  shape, out_shape = graph.shape(value), graph.shape(out)
  moved = axis if eqn.prim == "slice" else map_axis(eqn, shape, out_shape, axis)
  if moved is None or out_shape[moved] != shape[axis]:
    return _stop(
      f"are merged with other axes or cut by {eqn.prim} (a GroupSpec unit is one kernel axis)"
    )
  return Step(out, moved, eqn.prim)


def _product(graph, eqn, position, value, axis) -> Step:
  """A product with a value that does not depend on the units: linear in them."""
  if axis is None:
    return Step(eqn.outputs[0], None, "dot_general")
  axes = dot_general_axes(graph, eqn)
  out_axis = dot_general_output_axis(axes, position, axis)
  if out_axis is None:
    return _stop("are mixed by a dot_general contracting the unit axis with an activation")
  return Step(eqn.outputs[0], out_axis, "dot_general")


def _added(graph, eqn, position, value, axis) -> Step:
  return _stop(f"are added to another value by {eqn.prim} (a residual connection or a second bias)")


def _non_homogeneous(graph, eqn, position, value, axis) -> Step:
  return _stop(f"go through {eqn.prim}: not positively homogeneous (GELU, tanh, sigmoid, softplus)")


StepRule = Callable[[Graph, Eqn, int, Any, int | None], Step]
# Later entries win: a cast or a copy is an elementwise function before it is a layout op.
STEP_RULES: dict[str, StepRule] = {
  **dict.fromkeys(NON_HOMOGENEOUS, _non_homogeneous),
  **dict.fromkeys(("add", "sub"), _added),
  "dot_general": _product,
  **dict.fromkeys(LAYOUT_OPS | {"slice"}, _layout),
  **dict.fromkeys(REDUCTIONS, _reduction),
  **dict.fromkeys(POOLING, _pooling),
  "select_n": _select,
  **dict.fromkeys(("mul", "div"), _scale),
  **dict.fromkeys(("max", "min"), _max_min),
  **dict.fromkeys(ROUNDING, _rounding),
  **dict.fromkeys(ELEMENTWISE_HOMOGENEOUS, _elementwise),
}


def step(graph: Graph, eqn: Eqn, position: int, value: Any, axis: int | None) -> Step:
  """Where the units of ``value`` (operand ``position`` of ``eqn``) on ``axis`` go through it."""
  rule = STEP_RULES.get(eqn.prim)
  return rule(graph, eqn, position, value, axis) if rule else _stop(f"are read by {eqn.prim}")


def leaky_relu(graph: Graph, value: int, readers: tuple[tuple[Eqn, int], ...]) -> int | None:
  """The output of ``where(x >= 0, x, c * x)`` when those are exactly ``x``'s readers."""
  by_prim: dict[str, list[Eqn]] = {}
  for eqn, _ in readers:
    by_prim.setdefault("compare" if eqn.prim in COMPARISONS else eqn.prim, []).append(eqn)
  if sorted(by_prim) not in (["compare", "select_n"], ["compare", "mul", "select_n"]):
    return None
  if any(len(eqns) != 1 for eqns in by_prim.values()):
    return None
  (compare,), (select,) = by_prim["compare"], by_prim["select_n"]
  scaled = by_prim.get("mul", [None])[0]
  if not any(is_zero(graph, v) for v in compare.inputs) or select.inputs[0] != compare.outputs[0]:
    return None
  cases = {value} | ({scaled.outputs[0]} if scaled else set())
  if not set(select.inputs[1:]) <= cases:
    return None
  once = [compare.outputs[0]] + ([scaled.outputs[0]] if scaled else [])
  if any(len(graph.readers_of(v)) != 1 or v in graph.outputs for v in once):
    return None
  return select.outputs[0]


def many_readers(axis: int | None, readers: tuple[tuple[Eqn, int], ...]) -> str:
  """Why units read by several ops (no leaky ReLU) stop there."""
  prims = ", ".join(eqn.prim for eqn, _ in readers)
  said = f"are read by {len(readers)} operations ({prims})"
  if any(e.prim in REDUCTIONS and axis in e.params["axes"] for e, _ in readers):
    return f"{said}, one reducing over the unit axis: a normalisation over the units (LayerNorm)"
  if any(e.prim in NON_HOMOGENEOUS for e, _ in readers):
    return f"{said}: a non-homogeneous activation (GELU, tanh, sigmoid, softplus)"
  return f"{said}: a second reader (a residual add, a skip, a softmax) besides the next layer"


def matching_axis(graph: Graph, eqn: Eqn, position: int, axis: int, other: Any) -> int | None:
  """The axis of a product's other operand that runs along the unit axis (``None``: none)."""
  if eqn.prim == "dot_general":
    axes = dot_general_axes(graph, eqn)
    out_axis = dot_general_output_axis(axes, position, axis)
    theirs = [a for side, a in axes[out_axis] if side != position] if out_axis is not None else []
    return theirs[0] if theirs else None
  shape = graph.shape(other)
  return axis if len(shape) == len(graph.shape(eqn.outputs[0])) and shape[axis] > 1 else None


def _sources(graph: Graph, eqn: Eqn, value: int, axis: int) -> list[tuple[Any, int]]:
  """The operands and axes that ``value``'s ``axis`` comes from through ``eqn``."""
  shape, prim = graph.shape(value), eqn.prim
  if prim in ELEMENTWISE:
    return [
      (v, axis)
      for v in eqn.inputs
      if len(graph.shape(v)) == len(shape) and graph.shape(v)[axis] > 1
    ]
  if prim in LAYOUT_OPS:
    source, sources = eqn.inputs[0], []
    in_shape = graph.shape(source)
    for a in range(len(in_shape)):
      if map_axis(eqn, in_shape, shape, a) == axis and in_shape[a] == shape[axis]:
        sources = [(source, a)]
    return sources
  if prim in REDUCTIONS:
    kept = [a for a in range(len(graph.shape(eqn.inputs[0]))) if a not in eqn.params["axes"]]
    return [(eqn.inputs[0], kept[axis])]
  if prim == "dot_general":
    axes = dot_general_axes(graph, eqn)
    return [(eqn.inputs[side], a) for side, a in axes[axis]]
  return []


def follow(graph: Graph, value: Any, axis: int, layers: Container[int], seen: set) -> None:
  """Adds to ``seen`` every ``(value, axis)`` that ``value``'s ``axis`` comes from, back to the
  parameters and to the products whose equation index is in ``layers``."""
  if isinstance(value, Const) or (value, axis) in seen:
    return
  seen.add((value, axis))
  eqn = graph.producer.get(value)
  if eqn is None or graph.param(value) is not None or eqn.index in layers:
    return
  for source, source_axis in _sources(graph, eqn, value, axis):
    follow(graph, source, source_axis, layers, seen)


class Norm(NamedTuple):
  """A per-channel normalisation of a layer's units (a BatchNorm): ``γ_i·â_i + β_i``.

  Attributes:
    output: the value after the bias (or the scale, without a bias).
    scale: the parameter leaf of γ and its unit axis.
    bias: the parameter leaf of β and its unit axis (``None``: no bias).
  """

  output: int
  scale: tuple[int, int]
  bias: tuple[int, int] | None


def _unit_param(graph: Graph, value: Any, axis: int) -> tuple[int, int] | None:
  """``(leaf, axis)`` of a parameter broadcast along the unit axis only, read once."""
  ref = graph.param(value)
  shape = graph.shape(value)
  if ref is None or ref.axes[axis] is None or any(s != 1 for a, s in enumerate(shape) if a != axis):
    return None
  reads = [
    e
    for e in graph.eqns
    if not relays(e) and any(getattr(graph.param(v), "leaf", None) == ref.leaf for v in e.inputs)
  ]
  return (ref.leaf, ref.axes[axis]) if len(reads) == 1 else None


def _per_channel(graph: Graph, value: Any, axis: int, source: tuple[int, int], seen: set) -> str:
  """Why channel ``axis`` of ``value`` may depend on other channels of ``source`` (a value and
  its unit axis) or on a parameter (``""``: on channel ``axis`` of ``source`` and constants)."""
  if isinstance(value, Const) or (value, axis) in seen:
    return ""
  seen.add((value, axis))
  if value == source[0]:
    return "" if axis == source[1] else "are taken along another axis than the units"
  eqn = graph.producer.get(value)
  if graph.param(value) is not None:
    return "depend on a parameter"
  if eqn is None:  # an input of the function: the running statistics
    return ""
  prim, shape = eqn.prim, graph.shape(value)
  if prim in REDUCTIONS:
    kept = [a for a in range(len(graph.shape(eqn.inputs[0]))) if a not in eqn.params["axes"]]
    sources = [(eqn.inputs[0], kept[axis])]
  elif prim in LAYOUT_OPS:
    sources = _sources(graph, eqn, value, axis)
    if not sources:
      return f"are taken over the units ({prim}: a LayerNorm, not a BatchNorm)"
  elif prim in ELEMENTWISE:
    sources = []
    for v in eqn.inputs:
      if len(graph.shape(v)) == len(shape) and graph.shape(v)[axis] == shape[axis]:
        sources.append((v, axis))
      elif graph.shape(v) != ():
        return f"are taken over the units ({prim}: a LayerNorm, not a BatchNorm)"
  else:
    return f"go through {prim}"
  for v, a in sources:
    reason = _per_channel(graph, v, a, source, seen)
    if reason:
      return reason
  return ""


def _downstream(graph: Graph, value: int) -> set[int]:
  """``value`` and every value computed from it."""
  found = {value}
  for eqn in graph.eqns:
    if any(v in found for v in eqn.inputs if not isinstance(v, Const)):
      found.update(eqn.outputs)
  return found


def batch_norm(graph: Graph, value: int, axis: int) -> Norm | str | None:
  """The per-channel normalisation ``(value - μ)·σ⁻¹·γ + β`` reading ``value`` (a BatchNorm in
  training or evaluation mode), why it is no unit's "in" side, or ``None``: no normalisation.

  Sound when μ and σ depend only on channel ``axis`` of ``value`` (or are constants, the
  running statistics), γ and β are parameters along the unit axis, and every other read of
  ``value`` only computes μ and σ.
  """
  subs = [e for e, p in graph.readers_of(value) if e.prim == "sub" and p == 0]
  if len(subs) != 1 or value in graph.outputs:
    return None
  centred = subs[0].outputs[0]
  readers = graph.readers_of(centred)
  if len(readers) != 1 or readers[0][0].prim != "mul" or centred in graph.outputs:
    return None  # a difference, not a normalisation: the unit path rules say what it does
  product, position = readers[0]
  factor = product.inputs[1 - position]
  factor_eqn = graph.producer.get(factor)
  scale, stat = None, None
  if factor_eqn is not None and factor_eqn.prim == "mul":
    for i in (0, 1):
      if scale is None and _unit_param(graph, factor_eqn.inputs[i], axis) is not None:
        scale, stat = _unit_param(graph, factor_eqn.inputs[i], axis), factor_eqn.inputs[1 - i]
  if scale is None:
    return "are normalised without a scale along the units (no γ for the units' in side)"
  seen: set = set()
  for v in (subs[0].inputs[1], stat):
    reason = _per_channel(graph, v, axis, (value, axis), seen)
    if reason:
      return f"are normalised, but the statistics {reason}"
  region = {v for v, _ in seen} | {value, centred, factor, product.outputs[0]}
  downstream = _downstream(graph, value)
  for v in region & downstream - {product.outputs[0]}:
    if v in graph.outputs or any(e.outputs[0] not in region for e, _ in graph.readers_of(v)):
      return "are normalised, but also read outside the normalisation (a skip, an output)"
  output, bias = product.outputs[0], None
  adds = graph.readers_of(output)
  if len(adds) == 1 and adds[0][0].prim == "add" and output not in graph.outputs:
    bias = _unit_param(graph, adds[0][0].inputs[1 - adds[0][1]], axis)
    output = adds[0][0].outputs[0] if bias is not None else output
  return Norm(output, scale, bias)
