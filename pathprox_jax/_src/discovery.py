"""PathProx groups discovered from a model's traced computation, without annotations.

A *layer* is a product (``dot_general`` or ``conv_general_dilated``) of an activation with a
parameter kernel. A unit is an output channel of a layer (one axis of its kernel's outputs), with
its share of the bias added right after. The units of layer ``A`` form a group with layer ``B``
when every value between them is read once, through operations that keep the units apart and are
positively homogeneous (ReLU and leaky ReLU, max and average pooling, reshapes and transposes
that keep the unit axis, dropout masks, products with values that do not depend on the units,
such as the attention weights of a head), and ``B`` contracts the unit axis with its kernel.
Rescaling unit ``j``'s input weights by ``s > 0`` and its output weights by ``1 / s`` then leaves
the function unchanged, which is what PathProx needs. Layers pair greedily in forward order, so a
layer has one role. Values that the unit axis is multiplied with (the softmax of a head's query
and key, a SwiGLU gate) name the "follow" parameters of the group.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax

from pathprox_jax._src import groups as groups_lib
from pathprox_jax._src import params as params_lib
from pathprox_jax._src.annotations import GroupSpec, GroupSpecTree, Role
from pathprox_jax._src.jaxpr_graph import LAYOUT_OPS, Const, Eqn, Graph, map_axis, relays, trace

# Functions of one value that are positively homogeneous and act elementwise (a cast only to a
# floating type: see ``relays``).
ELEMENTWISE_HOMOGENEOUS = frozenset({"convert_element_type", "copy", "neg", "reduce_precision"})
NON_HOMOGENEOUS = frozenset(
  {"tanh", "logistic", "erf", "erfc", "exp", "exp2", "log", "log1p", "expm1", "integer_pow",
   "pow", "sqrt", "rsqrt", "cbrt", "sin", "cos", "square", "erf_inv"}
)  # fmt: skip
# Elementwise ops through which a follower's values keep the unit axis.
ELEMENTWISE = NON_HOMOGENEOUS | frozenset(
  {"add", "sub", "mul", "div", "max", "min", "neg", "convert_element_type", "copy", "select_n",
   "stop_gradient", "abs", "sign", "clamp", "reduce_precision", "ge", "gt", "le", "lt", "eq", "ne"}
)  # fmt: skip
# Elementwise ops that round their input: never positively homogeneous.
ROUNDING = frozenset({"round", "floor", "ceil", "sign", "nextafter"})
REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min"})
POOLING = frozenset({"reduce_window_max", "reduce_window_sum"})
COMPARISONS = frozenset({"ge", "gt", "le", "lt"})


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
  """A layer's units read by the next layer: a candidate group."""

  consumer: Layer
  count: int
  in_axis: int
  out_axis: int
  ops: tuple[str, ...]
  followers: frozenset[tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class GroupReport:
  """What :func:`explain_groups` found.

  Attributes:
    groups: the spec tree (as :func:`discover_groups` returns it; all ``None`` if no group),
      each spec carrying its group's chain (:attr:`GroupSpec.chain`), so that ``balance=True``
      balances exactly :attr:`balance`.
    chains: the groups in forward order split into chains: in each, a group's "out" layer feeds
      the next group's "in" layer through positively homogeneous operations only, so the layer
      balance preserves the function along it.
    lines: one line per layer (product with a parameter kernel), in forward order.
  """

  groups: GroupSpecTree
  chains: tuple[tuple[int, ...], ...]
  lines: tuple[str, ...]

  @property
  def balance(self) -> tuple[tuple[int, ...], ...] | bool:
    """What to pass as ``balance``: the chains of two or more groups, or ``False`` if none.

    ``pathprox_sgd(lr, wd, report.groups, balance=report.balance)`` balances exactly the chains
    along which the layer balance preserves the function, and no other group; so does the
    default ``balance=True``, since ``report.groups`` carries the chains.
    """
    return tuple(chain for chain in self.chains if len(chain) > 1) or False

  def __str__(self) -> str:
    chains = ", ".join(str(c) for c in self.chains) or "none"
    return "\n".join([*self.lines, f"chains (layer balance): {chains}"])


def _trace_params(fn: Callable[..., Any], params: Any) -> Callable[..., Any]:
  """``fn`` taking the params alone: a bare linen ``model.apply`` gets ``{"params": params}``."""
  bare_apply = isinstance(getattr(fn, "__self__", None), nn.Module) and fn.__name__ == "apply"
  if bare_apply and not (isinstance(params, Mapping) and "params" in params):
    return lambda p, *a, **k: fn({"params": p}, *a, **k)
  return fn


def _layers(graph: Graph, paths: list[tuple[Any, ...]], leaves: list[Any]) -> dict[int, Layer]:
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
    if eqn.prim not in ("dot_general", "conv_general_dilated"):
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
    (contract, batch) = eqn.params["dimension_numbers"]
    ndims = [len(graph.shape(v)) for v in eqn.inputs[:2]]
    free = [
      [a for a in range(ndims[i]) if a not in contract[i] and a not in batch[i]] for i in (0, 1)
    ]
    first = len(batch[0]) + (len(free[0]) if act == 0 else 0)
    unit_axes = [(first + j, kernel.axes[a]) for j, a in enumerate(free[1 - act])]
  bias, bias_axes, output, no_role = None, (), raw, ""
  readers = graph.readers.get(raw, [])
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


def _is_zero(graph: Graph, value: int | Const) -> bool:
  """A constant zero, possibly broadcast."""
  if isinstance(value, Const):
    return value.is_zero()
  eqn = graph.producer.get(value)
  return eqn is not None and eqn.prim == "broadcast_in_dim" and _is_zero(graph, eqn.inputs[0])


def _leaky_relu(graph: Graph, value: int, readers: list[tuple[Eqn, int]]) -> int | None:
  """The output of ``where(x >= 0, x, c * x)`` when those are exactly ``x``'s readers."""
  by_prim = {}
  for eqn, _ in readers:
    by_prim.setdefault("compare" if eqn.prim in COMPARISONS else eqn.prim, []).append(eqn)
  if sorted(by_prim) not in (["compare", "select_n"], ["compare", "mul", "select_n"]):
    return None
  if any(len(eqns) != 1 for eqns in by_prim.values()):
    return None
  (compare,), (select,) = by_prim["compare"], by_prim["select_n"]
  scaled = by_prim.get("mul", [None])[0]
  if not any(_is_zero(graph, v) for v in compare.inputs) or select.inputs[0] != compare.outputs[0]:
    return None
  cases = {value} | ({scaled.outputs[0]} if scaled else set())
  if not set(select.inputs[1:]) <= cases:
    return None
  once = [compare.outputs[0]] + ([scaled.outputs[0]] if scaled else [])
  if any(len(graph.readers[v]) != 1 or v in graph.outputs for v in once):
    return None
  return select.outputs[0]


def _many_readers(graph: Graph, axis: int | None, readers: list[tuple[Eqn, int]]) -> str:
  prims = ", ".join(eqn.prim for eqn, _ in readers)
  said = f"are read by {len(readers)} operations ({prims})"
  if any(e.prim in REDUCTIONS and axis in e.params["axes"] for e, _ in readers):
    return f"{said}, one reducing over the unit axis: a normalisation over the units (LayerNorm)"
  if any(e.prim in NON_HOMOGENEOUS for e, _ in readers):
    return f"{said}: a non-homogeneous activation (GELU, tanh, sigmoid, softplus)"
  return f"{said}: a second reader (a residual add, a skip, a softmax) besides the next layer"


def _follow(graph: Graph, layers: dict[int, Layer], value: Any, axis: int, seen: set) -> None:
  """Adds to ``seen`` every value and axis that ``value``'s unit ``axis`` comes from."""
  if isinstance(value, Const) or (value, axis) in seen:
    return
  seen.add((value, axis))
  eqn = graph.producer.get(value)
  if eqn is None or graph.param(value) is not None or eqn.index in layers:
    return
  shape, prim = graph.shape(value), eqn.prim
  sources: list[tuple[Any, int | None]] = []
  if prim in ELEMENTWISE:
    sources = [
      (v, axis)
      for v in eqn.inputs
      if len(graph.shape(v)) == len(shape) and graph.shape(v)[axis] > 1
    ]
  elif prim in LAYOUT_OPS:
    source = eqn.inputs[0]
    in_shape = graph.shape(source)
    for a in range(len(in_shape)):
      if map_axis(eqn, in_shape, shape, a) == axis and in_shape[a] == shape[axis]:
        sources = [(source, a)]
  elif prim in REDUCTIONS:
    kept = [a for a in range(len(graph.shape(eqn.inputs[0]))) if a not in eqn.params["axes"]]
    sources = [(eqn.inputs[0], kept[axis])]
  elif prim == "dot_general":
    (contract, batch) = eqn.params["dimension_numbers"]
    if axis < len(batch[0]):
      sources = [(eqn.inputs[0], batch[0][axis]), (eqn.inputs[1], batch[1][axis])]
    else:
      ndims = [len(graph.shape(v)) for v in eqn.inputs]
      free = [[a for a in range(ndims[i]) if a not in contract[i] + batch[i]] for i in (0, 1)]
      side = 0 if axis - len(batch[0]) < len(free[0]) else 1
      sources = [(eqn.inputs[side], (free[0] + free[1])[axis - len(batch[0])])]
  for source, source_axis in sources:
    _follow(graph, layers, source, source_axis, seen)


def _step(graph, layers, eqn, position, value, axis):
  """One op on the path: ``(next value, its unit axis, op name)``, a :class:`Layer`, or why not."""
  prim, out = eqn.prim, eqn.outputs[0] if eqn.outputs else None
  uniform = axis is None
  others = [v for i, v in enumerate(eqn.inputs) if i != position]
  if eqn.index in layers and layers[eqn.index].act_position == position:
    return layers[eqn.index]
  if prim in ELEMENTWISE_HOMOGENEOUS:
    if not relays(eqn):
      dtype = eqn.params["new_dtype"]
      return f"are cast to {dtype} by {prim}, which rounds them (not positively homogeneous)"
    return out, axis, prim
  if prim in ROUNDING:
    return f"are rounded by {prim} (not positively homogeneous)"
  if prim in ("max", "min"):
    if all(_is_zero(graph, v) for v in others):
      return out, axis, "relu"
    return f"go through {prim} with a non-zero value (not positively homogeneous)"
  if prim == "mul" or (prim == "div" and position == 0):
    return out, axis, prim
  if prim == "select_n" and position > 0 and all(_is_zero(graph, v) for v in others[1:]):
    return out, axis, "mask"
  if prim in POOLING:
    if uniform:
      return out, None, prim
    window = [eqn.params[k][axis] for k in ("window_dimensions", "window_strides")]
    if window == [1, 1] and tuple(eqn.params["padding"][axis]) == (0, 0):
      return out, axis, prim
    return f"are pooled across units by {prim}"
  if prim in REDUCTIONS:
    if uniform:
      return out, None, prim
    if axis in eqn.params["axes"]:
      return f"are reduced over the unit axis by {prim}"
    return out, axis - sum(a < axis for a in eqn.params["axes"]), prim
  if prim in LAYOUT_OPS or prim == "slice":
    if uniform:
      return out, None, prim
    shape, out_shape = graph.shape(value), graph.shape(out)
    moved = axis if prim == "slice" else map_axis(eqn, shape, out_shape, axis)
    if moved is None or out_shape[moved] != shape[axis]:
      return f"are merged with other axes or cut by {prim} (a GroupSpec unit is one kernel axis)"
    return out, moved, prim
  if prim == "dot_general":
    return _through_product(graph, eqn, position, axis)
  if prim in ("add", "sub"):
    return f"are added to another value by {prim} (a residual connection or a second bias)"
  if prim in NON_HOMOGENEOUS:
    return f"go through {prim}: not positively homogeneous (GELU, tanh, sigmoid, softplus)"
  return f"are read by {prim}"


def _through_product(graph, eqn, position, axis):
  """A product with a value that does not depend on the units: linear in them."""
  (contract, batch) = eqn.params["dimension_numbers"]
  if axis is None:
    return eqn.outputs[0], None, "dot_general"
  if axis in contract[position]:
    return "are mixed by a dot_general contracting the unit axis with an activation"
  if axis in batch[position]:
    return eqn.outputs[0], list(batch[position]).index(axis), "dot_general"
  ndims = [len(graph.shape(v)) for v in eqn.inputs]
  free = [[a for a in range(ndims[i]) if a not in contract[i] + batch[i]] for i in (0, 1)]
  before = len(batch[0]) + (len(free[0]) if position == 1 else 0)
  return eqn.outputs[0], before + free[position].index(axis), "dot_general"


def _walk(graph: Graph, layers: dict[int, Layer], start: int, axis: int | None):
  """Follows ``start``'s units (or, with ``axis=None``, a uniform scale) to the next layer.

  Returns ``(layer, unit axis at the layer, ops, follow sources)`` or the reason it stops.
  """
  value, ops, sources = start, [], []
  while True:
    if value in graph.outputs:
      return "are also an output of the function"
    readers = graph.readers.get(value, [])
    if len(readers) > 1:
      value = _leaky_relu(graph, value, readers)
      if value is None:
        return _many_readers(graph, axis, readers)
      ops.append("leaky_relu")
      continue
    eqn, position = readers[0]
    step = _step(graph, layers, eqn, position, value, axis)
    if isinstance(step, (str, Layer)):
      return step if isinstance(step, str) else (step, axis, tuple(ops), sources)
    if axis is not None and eqn.prim in ("mul", "dot_general"):
      other = eqn.inputs[1 - position]
      other_axis = _matching_axis(graph, eqn, position, axis, other)
      if other_axis is not None:
        sources.append((other, other_axis))
    value, axis = step[0], step[1]
    ops.append(step[2])


def _matching_axis(graph, eqn, position, axis, other) -> int | None:
  """The axis of a product's other operand that runs along the unit axis (``None``: none)."""
  if eqn.prim == "dot_general":
    batch = eqn.params["dimension_numbers"][1]
    if axis in batch[position]:
      return batch[1 - position][list(batch[position]).index(axis)]
    return None
  shape = graph.shape(other)
  return axis if len(shape) == len(graph.shape(eqn.outputs[0])) and shape[axis] > 1 else None


def _unit(graph: Graph, layers: dict[int, Layer], layer: Layer) -> Unit | str:
  """The first unit axis of ``layer`` whose units reach the next layer, or why none does."""
  if layer.no_role:
    return layer.no_role
  reasons = []
  for out_axis, kernel_axis in layer.unit_axes:
    if layer.bias is not None and layer.bias_axes[out_axis] is None:
      reasons.append("bias is shared across the units")
      continue
    found = _walk(graph, layers, layer.output, out_axis)
    if isinstance(found, str):
      reasons.append(f"outputs {found}")
      continue
    consumer, axis, ops, sources = found
    consumer_axis = consumer.contracted_kernel_axis(graph, axis)
    if consumer.no_role:
      reasons.append(f"outputs reach {consumer.name}, whose {consumer.no_role}")
      continue
    if consumer_axis is None:
      reasons.append(f"outputs reach {consumer.name}, which does not contract them as its units")
      continue
    seen: set = set()
    for source, source_axis in sources:
      _follow(graph, layers, source, source_axis, seen)
    followers = _followers(graph, layers, seen)
    count = graph.shape(layer.output)[out_axis]
    return Unit(consumer, count, kernel_axis, consumer_axis, ops, frozenset(followers))
  return reasons[0] if reasons else "has no output axis that is one kernel axis"


def _followers(graph: Graph, layers: dict[int, Layer], seen: set) -> set[tuple[int, int]]:
  """The parameters (leaf, unit axis) among the sources of a unit path's other operands."""
  found = set()
  for value, axis in seen:
    ref = graph.param(value)
    if ref is not None and ref.axes[axis] is not None:
      found.add((ref.leaf, ref.axes[axis]))
    eqn = graph.producer.get(value)
    if ref is None and eqn is not None and eqn.index in layers:
      layer = layers[eqn.index]
      found.update((layer.kernel, k) for o, k in layer.unit_axes if o == axis)
  return found


def _spec(group: int, role: Role, axis: int | None, default: int | None) -> GroupSpec:
  """A GroupSpec whose unit axis is written only where it is not the Dense/Conv layout's."""
  return GroupSpec(group, role, None if axis == default else axis)


def explain_groups(fn: Callable[..., Any], params: Any, *args: Any, **kwargs: Any) -> GroupReport:
  """Finds the PathProx unit groups of ``fn`` from its trace and says why, layer by layer.

  Traces ``fn(params, *args, **kwargs)`` once (``jax.make_jaxpr``: nothing is computed) and
  follows every product with a parameter kernel to its readers; see the module docstring for
  what makes a unit. Layers pair greedily from the input: layer ``A``'s units form group ``k``
  with the layer ``B`` reading them, and ``B`` takes no other role, as in the paper's VGG.

  Args:
    fn: the model as a function of its params, e.g. ``lambda p, x: model.apply({"params": p},
      x)``, a bare linen ``model.apply`` (given ``{"params": params}``), or for NNX
      ``lambda s, x: nnx.merge(graphdef, s)(x)``.
    params: the (unboxed or boxed) linen params, or an NNX ``State`` (``nnx.state(model,
      nnx.Param)``).
    *args: example inputs (only their shapes and dtypes matter).
    **kwargs: example keyword arguments, e.g. ``train=True, rngs={"dropout": key}``.

  Returns:
    A :class:`GroupReport`: the spec tree, the chains for the layer balance, and one line per
    layer.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> import pathprox_jax as pp
    >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(2)])
    >>> params = model.init(jax.random.key(0), jnp.ones((1, 3)))["params"]
    >>> print(pp.explain_groups(model.apply, params, jnp.ones((1, 3))))
    layers_0/kernel (3, 8): group 0 "in": 8 units (kernel axis 1) -> relu -> layers_2/kernel
    layers_2/kernel (8, 2): group 0 "out"; its own outputs are also an output of the function
    chains (layer balance): (0,)
  """
  fn = _trace_params(fn, params)
  keyed = jax.tree_util.tree_flatten_with_path(params, is_leaf=params_lib.is_boxed)[0]
  paths = [path for path, _ in keyed]
  leaves = jax.tree.leaves(params_lib.unwrap_variables(params))
  graph = trace(fn, params, *args, **kwargs)
  layers = _layers(graph, paths, leaves)
  units = {index: _unit(graph, layers, layer) for index, layer in layers.items()}

  specs: dict[int, GroupSpec] = {}
  pairs: list[tuple[Layer, Unit]] = []
  for index, layer in layers.items():
    unit = units[index]
    if layer.kernel in specs or isinstance(unit, str) or unit.consumer.kernel in specs:
      continue
    group, consumer = len(pairs), unit.consumer
    pairs.append((layer, unit))
    in_kernel = _spec(group, "in", unit.in_axis, leaves[layer.kernel].ndim - 1)
    specs[layer.kernel] = in_kernel
    if layer.bias is not None:
      explicit = in_kernel.unit_axis is not None
      bias_axis = layer.bias_axes[_output_axis(layer, unit.in_axis)]
      specs[layer.bias] = GroupSpec(group, "in", bias_axis if explicit else None)
    specs[consumer.kernel] = _spec(group, "out", unit.out_axis, leaves[consumer.kernel].ndim - 2)
    if consumer.bias is not None:
      specs[consumer.bias] = GroupSpec(group, "out")
  for group, (_, unit) in enumerate(pairs):
    for leaf, axis in sorted(unit.followers):
      if leaf not in specs and params_lib.is_kernel(paths[leaf], leaves[leaf]):
        specs[leaf] = _spec(group, "follow", axis, leaves[leaf].ndim - 1)
    for leaf, axis in sorted(unit.followers):
      kernel = next((k for k in specs if paths[k][:-1] == paths[leaf][:-1]), None)
      if leaf not in specs and kernel is not None and specs[kernel].role == "follow":
        specs[leaf] = GroupSpec(
          group, "follow", axis if specs[kernel].unit_axis is not None else None
        )

  chains = _chains(graph, layers, pairs)
  chain_of = {group: c for c, chain in enumerate(chains) for group in chain}
  groups = jax.tree.unflatten(
    jax.tree.structure(params, is_leaf=params_lib.is_boxed),
    [
      dataclasses.replace(specs[i], chain=chain_of[specs[i].group]) if i in specs else None
      for i in range(len(paths))
    ],
  )
  if specs:
    groups_lib.group_layouts(params_lib.unwrap_variables(params), groups)  # a bug shows here
  lines = tuple(_line(layer, units[i], specs, paths) for i, layer in layers.items())
  return GroupReport(groups, chains, lines)


def _output_axis(layer: Layer, kernel_axis: int) -> int:
  return next(o for o, k in layer.unit_axes if k == kernel_axis)


def _chains(graph, layers, pairs) -> tuple[tuple[int, ...], ...]:
  """Splits the groups where group ``k``'s out layer does not scale group ``k+1``'s in layer."""
  chains: list[list[int]] = []
  for group, (layer, _) in enumerate(pairs):
    previous = pairs[group - 1][1].consumer.output if group else None
    found = None if previous is None else _walk(graph, layers, previous, None)
    linked = not isinstance(found, (str, type(None))) and found[0] is layer
    if linked:
      chains[-1].append(group)
    else:
      chains.append([group])
  return tuple(tuple(c) for c in chains)


def _line(layer: Layer, unit: Unit | str, specs: dict[int, GroupSpec], paths) -> str:
  spec = specs.get(layer.kernel)
  own = (
    unit
    if isinstance(unit, str)
    else (f"units would reach {unit.consumer.name.split()[0]}, but a layer has one role")
  )
  if spec is None:
    if isinstance(unit, str):
      return f"{layer.name}: no group: its {unit}"
    return f"{layer.name}: no group: its reader {unit.consumer.name} already has a role"
  if spec.role == "in":
    ops = " -> ".join(unit.ops + (unit.consumer.name.split()[0],))
    follow = sorted(params_lib.path_string(paths[f]) for f, _ in unit.followers if f in specs)
    follow_text = f"; follow: {', '.join(follow)}" if follow else ""
    return (
      f'{layer.name}: group {spec.group} "in": {unit.count} units (kernel axis '
      f"{unit.in_axis}) -> {ops}{follow_text}"
    )
  role = "follows group" if spec.role == "follow" else "group"
  suffix = "" if spec.role == "follow" else ' "out"'
  return (
    f"{layer.name}: {role} {spec.group}{suffix}; its own {own.replace('outputs ', 'outputs ', 1)}"
  )


def discover_groups(
  fn: Callable[..., Any], params: Any, *args: Any, **kwargs: Any
) -> GroupSpecTree:
  """The PathProx groups of ``fn``, found from its trace: no annotations needed.

  The same as ``explain_groups(fn, params, *args, **kwargs).groups`` (see
  :func:`explain_groups` for what makes a unit group), but refuses a model with no group.

  Args:
    fn: the model as a function of its params (a bare linen ``model.apply`` works too).
    params: the linen params or NNX ``State`` that ``fn`` takes.
    *args: example inputs.
    **kwargs: example keyword arguments.

  Returns:
    A spec tree like :func:`pathprox_jax.group_spec`'s: the structure of the unboxed params (a
    ``State`` for NNX) with :class:`GroupSpec` or ``None`` leaves, groups numbered in forward
    order. Each spec carries its group's layer-balance chain (``GroupSpec.chain``, the index in
    :attr:`GroupReport.chains`), so the default ``balance=True`` balances only along the
    chains that preserve the function, never across a residual add. Pass it to
    :func:`pathprox_jax.pathprox_sgd`.

  Raises:
    ValueError: if no layer's units qualify, with the report saying why for each layer.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> import pathprox_jax as pp
    >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(2)])
    >>> x = jnp.ones((1, 3))
    >>> params = model.init(jax.random.key(0), x)["params"]
    >>> groups = pp.discover_groups(model.apply, params, x)
    >>> groups["layers_2"]["kernel"]
    GroupSpec(group=0, role='out', chain=0)
    >>> tx = pp.pathprox_sgd(0.1, 1e-4, groups)
  """
  report = explain_groups(fn, params, *args, **kwargs)
  if not jax.tree.leaves(report.groups):
    raise ValueError(
      f"pathprox_jax.discover_groups found no PathProx unit group in the traced function:\n"
      f"{report}\nAnnotate the layers (pathprox_jax.group_inits) if the trace misses units."
    )
  return report.groups
