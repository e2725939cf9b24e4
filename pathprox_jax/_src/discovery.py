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
and key, a SwiGLU gate) name the "follow" parameters of the group. A layer whose outputs a
BatchNorm normalises channel by channel (:func:`jaxpr_rules.batch_norm`: batch statistics or
running averages) "follows": the BatchNorm's scale and bias are the units' "in" side, since
channel ``i`` computes ``γ_i·â_i + β_i`` with ``â_i`` independent of the layer's scale.

This module pairs the layers (:mod:`layers`) into groups by walking each layer's units through
the per-op rules of :mod:`jaxpr_rules`; :mod:`group_report` words the result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax

from pathprox_jax._src import balance as balance_lib
from pathprox_jax._src import groups as groups_lib
from pathprox_jax._src import jaxpr_rules
from pathprox_jax._src import params as params_lib
from pathprox_jax._src.annotations import GroupSpec, GroupSpecTree, Role
from pathprox_jax._src.group_report import GroupReport, layer_line
from pathprox_jax._src.jaxpr_graph import Const, Graph, trace
from pathprox_jax._src.layers import Layer, Unit, find_layers


def _trace_params(fn: Callable[..., Any], params: Any) -> Callable[..., Any]:
  """``fn`` taking the params alone: a bare linen ``model.apply`` gets ``{"params": params}``."""
  bare_apply = isinstance(getattr(fn, "__self__", None), nn.Module) and fn.__name__ == "apply"
  if bare_apply and not (isinstance(params, Mapping) and "params" in params):
    return lambda p, *a, **k: fn({"params": p}, *a, **k)
  return fn


class Path(NamedTuple):
  """Where a unit path from a layer's output ends: at the next layer, or where it stops.

  Attributes:
    layer: the layer that reads the units as its activation (``None`` when the path stops).
    axis: the unit axis of that activation (``None`` for a uniform scale).
    ops: the ops passed on the way, for the report.
    sources: ``(operand, axis)`` of the values the units were multiplied with (a head's
      attention weights, a gate), whose origins are the group's "follow" parameters.
    stop: why the path stops before a layer (``""``: it reached ``layer``).
  """

  layer: Layer | None
  axis: int | None
  ops: tuple[str, ...]
  sources: tuple[tuple[int | Const, int], ...]
  stop: str


def _walk(graph: Graph, layers: dict[int, Layer], start: int, axis: int | None) -> Path:
  """Follows ``start``'s units (or, with ``axis=None``, a uniform scale) to the next layer."""
  value, ops, sources = start, [], []
  while True:
    if value in graph.outputs:
      return Path(None, axis, tuple(ops), tuple(sources), "are also an output of the function")
    readers = graph.readers_of(value)
    if len(readers) > 1:
      value = jaxpr_rules.leaky_relu(graph, value, readers)
      if value is None:
        reason = jaxpr_rules.many_readers(axis, readers)
        return Path(None, axis, tuple(ops), tuple(sources), reason)
      ops.append("leaky_relu")
      continue
    eqn, position = readers[0]
    layer = layers.get(eqn.index)
    if layer is not None and layer.act_position == position:
      return Path(layer, axis, tuple(ops), tuple(sources), "")
    step = jaxpr_rules.step(graph, eqn, position, value, axis)
    if step.stop:
      return Path(None, axis, tuple(ops), tuple(sources), step.stop)
    if axis is not None and eqn.prim in ("mul", "dot_general"):
      other = eqn.inputs[1 - position]
      other_axis = jaxpr_rules.matching_axis(graph, eqn, position, axis, other)
      if other_axis is not None:
        sources.append((other, other_axis))
    value, axis = step.value, step.axis
    ops.append(step.op)


def _norm_name(norm: jaxpr_rules.Norm, paths) -> str:
  """The normalisation's module, as the report names it (e.g. ``BatchNorm_0``)."""
  return params_lib.path_string(paths[norm.scale[0]][:-1])


def _unit(graph: Graph, layers: dict[int, Layer], layer: Layer, paths) -> Unit | str:
  """The first unit axis of ``layer`` whose units reach the next layer, or why none does."""
  if layer.no_role:
    return layer.no_role
  reasons = []
  for out_axis, kernel_axis in layer.unit_axes:
    if layer.bias is not None and layer.bias_axes[out_axis] is None:
      reasons.append("bias is shared across the units")
      continue
    norm = jaxpr_rules.batch_norm(graph, layer.output, out_axis)
    if isinstance(norm, str):
      reasons.append(f"outputs {norm}")
      continue
    path = _walk(graph, layers, norm.output if norm else layer.output, out_axis)
    if path.stop:
      stop = path.stop
      if norm:
        stop = f"are normalised by {_norm_name(norm, paths)}, then {stop.removeprefix('are ')}"
      reasons.append(f"outputs {stop}")
      continue
    consumer = path.layer
    consumer_axis = consumer.contracted_kernel_axis(graph, path.axis)
    if consumer.no_role:
      reasons.append(f"outputs reach {consumer.name}, whose {consumer.no_role}")
      continue
    if consumer_axis is None:
      reasons.append(f"outputs reach {consumer.name}, which does not contract them as its units")
      continue
    seen: set = set()
    for source, source_axis in path.sources:
      jaxpr_rules.follow(graph, source, source_axis, layers, seen)
    followers = _followers(graph, layers, seen)
    count = graph.shape(layer.output)[out_axis]
    ops = (_norm_name(norm, paths), *path.ops) if norm else path.ops
    return Unit(consumer, count, kernel_axis, consumer_axis, ops, frozenset(followers), norm)
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
  layers = find_layers(graph, paths, leaves)
  units = {index: _unit(graph, layers, layer, paths) for index, layer in layers.items()}

  specs: dict[int, GroupSpec] = {}
  pairs: list[tuple[Layer, Unit]] = []
  for index, layer in layers.items():
    unit = units[index]
    if layer.kernel in specs or isinstance(unit, str) or unit.consumer.kernel in specs:
      continue
    group, consumer = len(pairs), unit.consumer
    pairs.append((layer, unit))
    role = "follow" if unit.norm else "in"
    in_kernel = _spec(group, role, unit.in_axis, leaves[layer.kernel].ndim - 1)
    specs[layer.kernel] = in_kernel
    if layer.bias is not None:
      explicit = in_kernel.unit_axis is not None
      bias_axis = layer.bias_axes[_output_axis(layer, unit.in_axis)]
      specs[layer.bias] = GroupSpec(group, role, bias_axis if explicit else None)
    for leaf, axis in filter(None, (unit.norm.scale, unit.norm.bias) if unit.norm else ()):
      specs[leaf] = _spec(group, "in", axis, 0)
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
  lines = tuple(layer_line(layer, units[i], specs, paths) for i, layer in layers.items())
  return GroupReport(groups, chains, lines)


def _output_axis(layer: Layer, kernel_axis: int) -> int:
  return next(o for o, k in layer.unit_axes if k == kernel_axis)


def _chains(graph, layers, pairs) -> tuple[tuple[int, ...], ...]:
  """Splits the groups where group ``k``'s out layer does not scale group ``k+1``'s in layer."""
  linked = [
    group > 0 and _walk(graph, layers, pairs[group - 1][1].consumer.output, None).layer is layer
    for group, (layer, _) in enumerate(pairs)
  ]
  return balance_lib.split_chains([unit.norm is not None for _, unit in pairs], linked)


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
