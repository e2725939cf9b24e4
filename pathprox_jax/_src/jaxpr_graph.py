"""A traced function as one flat dataflow graph: who computes each value, who reads it.

:func:`trace` runs ``jax.make_jaxpr`` and inlines the nested jaxprs of call-like primitives
(``jit``, ``custom_jvp_call``, ``custom_vjp_call``, ``remat2`` of ``jax.checkpoint`` and
``nn.remat``, ``closed_call``), so a ReLU (a ``custom_jvp_call`` around a ``jit`` around ``max``)
is just its ``max``. Equations whose outputs nobody uses are dropped, so every remaining reader of
a value is a real one. Parameters are followed through the ops that only re-lay them out (casts
to a floating type, reshapes, transposes, broadcasts: :func:`relays`): a :class:`ParamRef` says
which parameter axis each axis of such a value is, so a product with a reshaped kernel still
names the kernel's own axes.

The module also holds the op vocabulary of the analyses that read the graph (the sets of
primitives, by what they do to a value's axes) and the axis arithmetic of layout ops and of
``dot_general`` (:func:`map_axis`, :func:`dot_general_axes`); what each op does to a unit's path
is in :mod:`jaxpr_rules`.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

# Call-like primitives whose body is inlined, and the param holding the body.
CALL_BODIES = {
  "jit": "jaxpr",
  "pjit": "jaxpr",
  "closed_call": "call_jaxpr",
  "core_call": "call_jaxpr",
  "custom_jvp_call": "call_jaxpr",
  "custom_vjp_call": "call_jaxpr",
  "custom_vjp_call_jaxpr": "fun_jaxpr",
  "remat2": "jaxpr",  # jax.checkpoint, nn.remat
}
# The op vocabulary.
# Ops that re-lay their input out: its values, moved (a cast only when :func:`relays`).
LAYOUT_OPS = frozenset(
  {"convert_element_type", "copy", "copy_p", "reshape", "transpose", "broadcast_in_dim",
   "squeeze", "expand_dims", "reduce_precision"}
)  # fmt: skip
# Products of two operands: the layers of discovery, the FLOPs of costs.
PRODUCTS = frozenset({"dot_general", "conv_general_dilated"})
# Functions of one value that are positively homogeneous and act elementwise (a cast only to a
# floating type: see :func:`relays`).
ELEMENTWISE_HOMOGENEOUS = frozenset({"convert_element_type", "copy", "neg", "reduce_precision"})
NON_HOMOGENEOUS = frozenset(
  {"tanh", "logistic", "erf", "erfc", "exp", "exp2", "log", "log1p", "expm1", "integer_pow",
   "pow", "sqrt", "rsqrt", "cbrt", "sin", "cos", "square", "erf_inv"}
)  # fmt: skip
# Elementwise ops through which a value keeps its axes.
ELEMENTWISE = NON_HOMOGENEOUS | frozenset(
  {"add", "sub", "mul", "div", "max", "min", "neg", "convert_element_type", "copy", "select_n",
   "stop_gradient", "abs", "sign", "clamp", "reduce_precision", "ge", "gt", "le", "lt", "eq", "ne"}
)  # fmt: skip
# Elementwise ops that round their input: never positively homogeneous.
ROUNDING = frozenset({"round", "floor", "ceil", "sign", "nextafter"})
# Reductions over ``params["axes"]``, keeping the other axes in order.
REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min"})
INDEX_REDUCTIONS = frozenset({"argmax", "argmin"})
POOLING = frozenset({"reduce_window_max", "reduce_window_sum"})
COMPARISONS = frozenset({"ge", "gt", "le", "lt"})


@dataclasses.dataclass(frozen=True)
class Const:
  """A literal or captured constant operand (never a parameter)."""

  value: Any

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(np.shape(self.value))

  def is_zero(self) -> bool:
    return bool(np.all(np.asarray(self.value) == 0))


@dataclasses.dataclass(frozen=True)
class Eqn:
  """One equation of the flattened graph; values are ints, constants :class:`Const`."""

  index: int
  prim: str
  inputs: tuple[int | Const, ...]
  outputs: tuple[int, ...]
  params: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ParamRef:
  """A value that is parameter ``leaf`` re-laid out: ``axes[i]`` is the parameter axis of axis ``i``
  (``None`` for an axis that is no single parameter axis, e.g. a broadcast one)."""

  leaf: int
  axes: tuple[int | None, ...]


@dataclasses.dataclass(frozen=True)
class Graph:
  """The flattened graph of ``fn(params, *args, **kwargs)``, complete when :func:`trace` builds it.

  Attributes:
    eqns: the live equations in order (each output is read or is the function's output).
    shapes: each value's shape.
    param_values: the value of each parameter leaf, in leaf order.
    outputs: the function's output values.
    producer: the equation that computes each value (parameters and inputs have none).
    readers: each value's ``(equation, operand position)`` reads, in order.
    params: the parameter leaves and their re-laid-out copies, as :class:`ParamRef`.
  """

  eqns: tuple[Eqn, ...]
  shapes: Mapping[int, tuple[int, ...]]
  param_values: tuple[int, ...]
  outputs: frozenset[int]
  producer: Mapping[int, Eqn]
  readers: Mapping[int, tuple[tuple[Eqn, int], ...]]
  params: Mapping[int, ParamRef]

  def shape(self, value: int | Const) -> tuple[int, ...]:
    return value.shape if isinstance(value, Const) else self.shapes[value]

  def param(self, value: int | Const) -> ParamRef | None:
    return None if isinstance(value, Const) else self.params.get(value)

  def readers_of(self, value: int) -> tuple[tuple[Eqn, int], ...]:
    """``value``'s reads (none for a value that only the function returns)."""
    return self.readers.get(value, ())


def trace(fn: Callable[..., Any], params: Any, *args: Any, **kwargs: Any) -> Graph:
  """Traces ``fn(params, *args, **kwargs)`` into a :class:`Graph` (params first among inputs).

  Arrays among ``args`` and ``kwargs`` are traced; anything else (``train=True``) stays static.
  """
  leaves, treedef = jax.tree.flatten((args, kwargs))
  traced = [isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)) for x in leaves]

  def call(p, arrays):
    given = iter(arrays)
    args, kwargs = treedef.unflatten(
      [next(given) if t else x for x, t in zip(leaves, traced, strict=True)]
    )
    return fn(p, *args, **kwargs)

  arrays = [x for x, t in zip(leaves, traced, strict=True) if t]
  closed = jax.make_jaxpr(call)(params, arrays)
  num_params = len(jax.tree.leaves(params))
  builder = _Builder()
  env: dict[Any, int | Const] = {v: builder.fresh(v) for v in closed.jaxpr.invars}
  env.update({v: Const(c) for v, c in zip(closed.jaxpr.constvars, closed.consts, strict=True)})
  outputs = frozenset(v for v in builder.inline(closed.jaxpr, env) if not isinstance(v, Const))
  eqns = _live(builder.eqns, outputs)
  param_values = tuple(env[v] for v in closed.jaxpr.invars[:num_params])
  readers: dict[int, list[tuple[Eqn, int]]] = defaultdict(list)
  for eqn in eqns:
    for position, value in enumerate(eqn.inputs):
      if not isinstance(value, Const):
        readers[value].append((eqn, position))
  return Graph(
    eqns=eqns,
    shapes=builder.shapes,
    param_values=param_values,
    outputs=outputs,
    producer={value: eqn for eqn in eqns for value in eqn.outputs},
    readers={value: tuple(reads) for value, reads in readers.items()},
    params=_param_refs(eqns, builder.shapes, param_values),
  )


class _Builder:
  """Inlines nested jaxprs into one list of equations with fresh int values."""

  def __init__(self):
    self.eqns: list[tuple[str, tuple[int | Const, ...], tuple[int, ...], dict[str, Any]]] = []
    self.shapes: dict[int, tuple[int, ...]] = {}

  def fresh(self, var: Any) -> int:
    value = len(self.shapes)
    self.shapes[value] = tuple(getattr(var.aval, "shape", ()))
    return value

  def inline(self, jaxpr: Any, env: dict[Any, int | Const]) -> list[int | Const]:
    def read(atom):
      return Const(atom.val) if isinstance(atom, jax_core.Literal) else env[atom]

    for eqn in jaxpr.eqns:
      inputs = tuple(read(a) for a in eqn.invars)
      body = eqn.params.get(CALL_BODIES.get(eqn.primitive.name, ""))
      if body is not None:
        inner = body.jaxpr if hasattr(body, "jaxpr") else body
        consts = body.consts if hasattr(body, "consts") else ()
        if len(inner.invars) == len(inputs):
          inner_env = dict(zip(inner.invars, inputs, strict=True))
          inner_env.update({v: Const(c) for v, c in zip(inner.constvars, consts, strict=True)})
          for var, value in zip(eqn.outvars, self.inline(inner, inner_env), strict=True):
            env[var] = value
          continue
      outputs = tuple(self.fresh(v) for v in eqn.outvars)
      env.update(zip(eqn.outvars, outputs, strict=True))
      self.eqns.append((eqn.primitive.name, inputs, outputs, dict(eqn.params)))
    return [read(v) for v in jaxpr.outvars]


def _live(eqns: Sequence[tuple[Any, ...]], outputs: frozenset[int]) -> tuple[Eqn, ...]:
  """The equations some output depends on, numbered in order."""
  live = set(outputs)
  kept = []
  for prim, inputs, outs, params in reversed(eqns):
    if live.intersection(outs):
      live.update(v for v in inputs if not isinstance(v, Const))
      kept.append((prim, inputs, outs, params))
  return tuple(Eqn(i, *e) for i, e in enumerate(reversed(kept)))


def _param_refs(
  eqns: Sequence[Eqn], shapes: Mapping[int, tuple[int, ...]], param_values: Sequence[int]
) -> dict[int, ParamRef]:
  """The parameter leaves, and every value that only re-lays one out (:func:`relays`)."""
  refs = {v: ParamRef(leaf, tuple(range(len(shapes[v])))) for leaf, v in enumerate(param_values)}
  for eqn in eqns:
    source = eqn.inputs[0] if eqn.inputs else None
    ref = None if source is None or isinstance(source, Const) else refs.get(source)
    if relays(eqn) and ref is not None and len(eqn.outputs) == 1:
      in_shape, out_shape = shapes[source], shapes[eqn.outputs[0]]
      moved = [map_axis(eqn, in_shape, out_shape, a) for a in range(len(in_shape))]
      axes: list[int | None] = [None] * len(out_shape)
      for a, (param_axis, out_axis) in enumerate(zip(ref.axes, moved, strict=True)):
        if out_axis is not None and param_axis is not None and in_shape[a] == out_shape[out_axis]:
          axes[out_axis] = param_axis
      refs[eqn.outputs[0]] = ParamRef(ref.leaf, tuple(axes))
  return refs


def relays(eqn: Eqn) -> bool:
  """Whether ``eqn`` only re-lays its input out, keeping its values: a :data:`LAYOUT_OPS` op that
  is not a cast to an integer or boolean type (which rounds: not positively homogeneous)."""
  if eqn.prim == "convert_element_type":
    return bool(jnp.issubdtype(eqn.params["new_dtype"], jnp.floating))
  return eqn.prim in LAYOUT_OPS


def reshaped_axis(in_shape: Sequence[int], out_shape: Sequence[int], axis: int) -> int | None:
  """The output axis that is input ``axis`` of a reshape, or ``None`` if it is merged or split.

  An axis survives a reshape when the output has an axis of its size whose preceding axes hold
  exactly the elements of the input's preceding axes.
  """
  before = math.prod(in_shape[:axis])
  for out_axis in range(len(out_shape)):
    if math.prod(out_shape[:out_axis]) == before and out_shape[out_axis] == in_shape[axis]:
      return out_axis
  return None


def map_axis(eqn: Eqn, in_shape: Sequence[int], out_shape: Sequence[int], axis: int) -> int | None:
  """Where input ``axis`` of a layout op lands in its output (``None``: nowhere single)."""
  if eqn.prim == "transpose":
    return list(eqn.params["permutation"]).index(axis)
  if eqn.prim == "broadcast_in_dim":
    return eqn.params["broadcast_dimensions"][axis]
  if eqn.prim in ("reshape", "squeeze", "expand_dims"):
    return reshaped_axis(in_shape, out_shape, axis)
  return axis  # casts and copies keep the layout


# Each output axis's (operand, axis) sources: see :func:`dot_general_axes`.
DotAxes = tuple[tuple[tuple[int, int], ...], ...]


def dot_general_axes(graph: Graph, eqn: Eqn) -> DotAxes:
  """Where each output axis of a ``dot_general`` comes from, as ``(operand, axis)`` pairs.

  The output holds the batch axes (each from both operands), then the first operand's free
  axes, then the second's; a contracted axis is in no output axis.

  Returns:
    One tuple of ``(operand, axis)`` per output axis: two for a batch axis, one for a free one.
  """
  ndims = [len(graph.shape(v)) for v in eqn.inputs]
  contract, batch = eqn.params["dimension_numbers"]
  free = [[a for a in range(ndims[i]) if a not in contract[i] + batch[i]] for i in (0, 1)]
  return (
    *(((0, a), (1, b)) for a, b in zip(batch[0], batch[1], strict=True)),
    *(((0, a),) for a in free[0]),
    *(((1, a),) for a in free[1]),
  )


def dot_general_output_axis(axes: DotAxes, operand: int, axis: int) -> int | None:
  """The output axis that holds ``operand``'s ``axis`` (``None``: a contracted axis)."""
  return next((out for out, sources in enumerate(axes) if (operand, axis) in sources), None)
