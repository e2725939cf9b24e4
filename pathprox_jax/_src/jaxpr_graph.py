"""A traced function as one flat dataflow graph: who computes each value, who reads it.

:func:`trace` runs ``jax.make_jaxpr`` and inlines the nested jaxprs of call-like primitives
(``jit``, ``custom_jvp_call``, ``custom_vjp_call``, ``remat2`` of ``jax.checkpoint`` and
``nn.remat``, ``closed_call``), so a ReLU (a ``custom_jvp_call`` around a ``jit`` around ``max``)
is just its ``max``. Equations whose outputs nobody uses are dropped, so every remaining reader of
a value is a real one. Parameters are followed through the ops that only re-lay them out (casts
to a floating type, reshapes, transposes, broadcasts: :func:`relays`): a :class:`ParamRef` says
which parameter axis each axis of such a value is, so a product with a reshaped kernel still
names the kernel's own axes.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
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
# Ops that re-lay their input out: its values, moved (a cast only when :func:`relays`).
LAYOUT_OPS = frozenset(
  {"convert_element_type", "copy", "copy_p", "reshape", "transpose", "broadcast_in_dim",
   "squeeze", "expand_dims", "reduce_precision"}
)  # fmt: skip


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


@dataclasses.dataclass
class Graph:
  """The flattened graph of ``fn(params, *args, **kwargs)``."""

  eqns: list[Eqn]
  shapes: dict[int, tuple[int, ...]]
  param_values: list[int]
  outputs: set[int]
  producer: dict[int, Eqn] = dataclasses.field(default_factory=dict)
  readers: dict[int, list[tuple[Eqn, int]]] = dataclasses.field(default_factory=dict)
  params: dict[int, ParamRef] = dataclasses.field(default_factory=dict)

  def shape(self, value: int | Const) -> tuple[int, ...]:
    return value.shape if isinstance(value, Const) else self.shapes[value]

  def param(self, value: int | Const) -> ParamRef | None:
    return None if isinstance(value, Const) else self.params.get(value)


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
  outs = builder.inline(closed.jaxpr, env)
  graph = Graph(
    eqns=[],
    shapes=builder.shapes,
    param_values=[env[v] for v in closed.jaxpr.invars[:num_params]],
    outputs={v for v in outs if not isinstance(v, Const)},
  )
  _drop_dead(graph, builder.eqns)
  _index(graph)
  return graph


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


def _drop_dead(graph: Graph, eqns: Sequence[tuple[Any, ...]]) -> None:
  """Keeps the equations some output depends on, renumbered in order."""
  live = set(graph.outputs)
  kept = []
  for prim, inputs, outputs, params in reversed(eqns):
    if live.intersection(outputs):
      live.update(v for v in inputs if not isinstance(v, Const))
      kept.append((prim, inputs, outputs, params))
  graph.eqns = [Eqn(i, *e) for i, e in enumerate(reversed(kept))]


def _index(graph: Graph) -> None:
  """Fills in producers, readers and the parameter-derived values."""
  graph.readers = defaultdict(list)
  for leaf, value in enumerate(graph.param_values):
    graph.params[value] = ParamRef(leaf, tuple(range(len(graph.shapes[value]))))
  for eqn in graph.eqns:
    for value in eqn.outputs:
      graph.producer[value] = eqn
    for position, value in enumerate(eqn.inputs):
      if not isinstance(value, Const):
        graph.readers[value].append((eqn, position))
    ref = graph.param(eqn.inputs[0]) if eqn.inputs else None
    if relays(eqn) and ref is not None and len(eqn.outputs) == 1:
      in_shape, out_shape = graph.shape(eqn.inputs[0]), graph.shape(eqn.outputs[0])
      moved = [map_axis(eqn, in_shape, out_shape, a) for a in range(len(in_shape))]
      axes: list[int | None] = [None] * len(out_shape)
      for a, (param_axis, out_axis) in enumerate(zip(ref.axes, moved, strict=True)):
        if out_axis is not None and param_axis is not None and in_shape[a] == out_shape[out_axis]:
          axes[out_axis] = param_axis
      graph.params[eqn.outputs[0]] = ParamRef(ref.leaf, tuple(axes))


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
