"""The layers of a traced model: products of an activation with a parameter kernel.

A layer is a ``dot_general`` or ``conv_general_dilated`` of an activation with a kernel (the
kernel rule, :func:`pathprox_jax.is_kernel`); its units are the output axes that are one kernel
axis, with its share of the bias added right after. :func:`find_layers` also says why a layer can
take no role in a group (a shared kernel or bias, a module with other parameters).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

from pathprox_jax._src import params as params_lib
from pathprox_jax._src.jaxpr_graph import PRODUCTS, Eqn, Graph, dot_general_axes, relays
from pathprox_jax._src.jaxpr_rules import Norm


@dataclasses.dataclass(frozen=True)
class Layer:
  """A product with a parameter kernel; ``output`` is its value after its bias (if any)."""

  eqn: Eqn
  name: str
  kernel: int
  act_position: int
  unit_axes: tuple[tuple[int, int], ...]  # (output axis, kernel axis) of each candidate unit axis
  bias: int | None
  bias_axes: tuple[int | None, ...]  # the bias's axis of each output axis
  output: int
  no_role: str  # why the layer can take no role in a group ("" if it can)

  def contracted_kernel_axis(self, graph: Graph, axis: int) -> int | None:
    """The kernel axis that the activation's ``axis`` is contracted with (``None``: not)."""
    kernel = graph.param(self.eqn.inputs[1 - self.act_position])
    if self.eqn.prim == "conv_general_dilated":
      numbers = self.eqn.params["dimension_numbers"]
      grouped = self.eqn.params["feature_group_count"] != 1
      if self.act_position != 0 or axis != numbers.lhs_spec[1] or grouped:
        return None
      return kernel.axes[numbers.rhs_spec[1]]
    contracting = self.eqn.params["dimension_numbers"][0]
    mine, theirs = contracting[self.act_position], contracting[1 - self.act_position]
    return kernel.axes[theirs[list(mine).index(axis)]] if axis in mine else None


@dataclasses.dataclass(frozen=True)
class Unit:
  """A layer's units read by the next layer: a candidate group.

  Attributes:
    consumer: the next layer, which contracts the units with its kernel.
    count: the number of units.
    in_axis: the unit axis of the layer's kernel.
    out_axis: the unit axis of the consumer's kernel.
    ops: the ops between the two layers, for the report.
    followers: ``(leaf, axis)`` of the parameters multiplied with the units on the way.
    norm: the per-channel normalisation (a BatchNorm) right after the layer, whose scale and
      bias are then the units' "in" side and the layer "follows" (``None``: none).
  """

  consumer: Layer
  count: int
  in_axis: int
  out_axis: int
  ops: tuple[str, ...]
  followers: frozenset[tuple[int, int]]
  norm: Norm | None = None


def find_layers(graph: Graph, paths: list[tuple[Any, ...]], leaves: list[Any]) -> dict[int, Layer]:
  """Every product with a parameter kernel, by equation index."""
  uses: dict[int, list[str]] = defaultdict(list)  # the readers of each parameter, by primitive
  for eqn in graph.eqns:
    derived = relays(eqn) and graph.param(eqn.outputs[0]) is not None
    for leaf in {graph.param(v).leaf for v in eqn.inputs if graph.param(v)} if not derived else ():
      uses[leaf].append(eqn.prim)
  for value in graph.outputs:
    if graph.param(value) is not None:
      uses[graph.param(value).leaf].append("the function's output")
  modules: dict[tuple[Any, ...], list[int]] = defaultdict(list)
  for leaf, path in enumerate(paths):
    modules[tuple(path[:-1])].append(leaf)
  layers = {}
  for eqn in graph.eqns:
    if eqn.prim not in PRODUCTS:
      continue
    refs = [graph.param(v) for v in eqn.inputs[:2]]
    kernel_side = [
      i for i, r in enumerate(refs) if r and params_lib.is_kernel(paths[r.leaf], leaves[r.leaf])
    ]
    if len(kernel_side) != 1 or refs[1 - kernel_side[0]] is not None:
      continue
    act, kernel = 1 - kernel_side[0], refs[kernel_side[0]]
    layers[eqn.index] = _layer(graph, eqn, act, kernel, paths, leaves)
  biases = {layer.bias for layer in layers.values()}
  for index, layer in layers.items():
    module = modules[tuple(paths[layer.kernel][:-1])]
    no_role = layer.no_role or _no_role(layer, uses, module, biases, paths, leaves)
    layers[index] = dataclasses.replace(layer, no_role=no_role)
  return layers


def _describe(leaf: int, paths, leaves) -> str:
  return f"{params_lib.path_string(paths[leaf])} {tuple(leaves[leaf].shape)}"


def _no_role(layer: Layer, uses, module: list[int], biases: set, paths, leaves) -> str:
  """Why ``layer`` can take no role in a group: its kernel or bias is also read outside it (a
  shared layer, a bias reused as a gate or a skip), or its module holds a parameter that is
  neither a kernel nor a layer's bias (a group takes a module's biases with its kernel);
  ``""`` if it can."""
  for leaf, name in ((layer.kernel, "kernel"), (layer.bias, "bias")):
    if leaf is not None and len(uses[leaf]) > 1:
      readers = ", ".join(uses[leaf])
      return f"{name} is also read outside the layer (readers: {readers}): a shared {name}"
  for leaf in module:
    kernel = params_lib.is_kernel(paths[leaf], leaves[leaf])
    if not kernel and leaves[leaf].ndim and leaf not in biases:
      return (
        f"module also holds {_describe(leaf, paths, leaves)}, which is no layer's bias (a "
        "grouped layer's module holds kernels and their biases only)"
      )
  return ""


def _layer(graph, eqn, act, kernel, paths, leaves) -> Layer:
  raw = eqn.outputs[0]
  if eqn.prim == "conv_general_dilated":
    numbers = eqn.params["dimension_numbers"]
    unit_axes = [(numbers.out_spec[1], kernel.axes[numbers.rhs_spec[0]])]
  else:
    unit_axes = [
      (o, kernel.axes[sources[0][1]])
      for o, sources in enumerate(dot_general_axes(graph, eqn))
      if len(sources) == 1 and sources[0][0] == 1 - act  # the kernel's free axes
    ]
  bias, bias_axes, output, no_role = None, (), raw, ""
  readers = graph.readers_of(raw)
  if len(readers) == 1 and readers[0][0].prim == "add" and raw not in graph.outputs:
    add, position = readers[0]
    ref = graph.param(add.inputs[1 - position])
    if ref is not None and _is_bias(ref.leaf, kernel.leaf, paths, leaves):
      bias, bias_axes, output = ref.leaf, ref.axes, add.outputs[0]
    elif ref is not None and paths[ref.leaf][:-1] == paths[kernel.leaf][:-1]:
      no_role = (
        f"outputs get {_describe(ref.leaf, paths, leaves)} of its module added, which cannot be "
        "its bias (a bias is no kernel and has the kernel's trailing shape)"
      )
  return Layer(
    eqn=eqn,
    name=f"{params_lib.path_string(paths[kernel.leaf])} {graph.shape(eqn.inputs[1 - act])}",
    kernel=kernel.leaf,
    act_position=act,
    unit_axes=tuple((o, k) for o, k in unit_axes if k is not None),
    bias=bias,
    bias_axes=bias_axes,
    output=output,
    no_role=no_role,
  )


def _is_bias(leaf: int, kernel: int, paths, leaves) -> bool:
  """Whether ``leaf`` can be the bias of ``kernel``: in its module, not a kernel, with the
  kernel's trailing shape (as :func:`pathprox_jax.group_spec` validation wants)."""
  b, k = leaves[leaf], leaves[kernel]
  return (
    paths[leaf][:-1] == paths[kernel][:-1]
    and not params_lib.is_kernel(paths[leaf], b)
    and 0 < b.ndim <= k.ndim
    and tuple(b.shape) == tuple(k.shape[k.ndim - b.ndim :])
  )
