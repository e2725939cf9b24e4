"""Where each unit group lives in a params pytree, validated once per trace.

A group's *layout* names the flat-leaf positions of its parameters and their unit
axes: the "in" kernel ``w`` and bias ``a``, the "out" kernel ``v`` and bias ``c``
(not split into units), and any "follow" parameters. Kernels and biases are told
apart by the kernel rule (:func:`pathprox_jax.is_kernel`), and a BatchNorm's scale
(the scale rule, :func:`params_lib.is_norm_scale`) takes a kernel's place: its
units are its entries. A bias pairs with the kernel of the same module (the same
parent path), and its unit axis is the kernel's counted from the end unless its
spec gives one.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from pathprox_jax._src import params as params_lib
from pathprox_jax._src.annotations import GroupSpec, GroupSpecTree, Role


@dataclasses.dataclass(frozen=True)
class GroupLayout:
  """Flat-leaf indices of one group's parameters and their (non-negative) unit axes.

  ``in_bias``/``out_bias`` are ``None`` when the layer has no bias; ``followers``
  holds ``(leaf index, unit axis)`` of the "follow" parameters; ``normalized``
  says that ``w`` is a BatchNorm's scale (its followers, the conv before it, only
  set the direction of the normalised input); ``plain`` says the group has the
  Dense/Conv layout (units on the last axis of ``w``, the second-to-last of ``v``)
  and no followers but a BatchNorm's: the layer balance chains only such groups.
  ``chain`` is the balance chain its specs carry (``None``: none).
  """

  group: int
  units: int
  in_kernel: int
  in_axis: int
  in_bias: int | None
  in_bias_axis: int | None
  out_kernel: int
  out_axis: int
  out_bias: int | None
  followers: tuple[tuple[int, int], ...]
  normalized: bool
  plain: bool
  chain: int | None = None

  @property
  def unit_axes(self) -> dict[int, int | None]:
    """``{leaf: unit axis}`` of the leaves the prox rescales: the "in" and "out" kernels and
    the biases the layers have (``None``: the "out" bias, scaled as a whole)."""
    axes = {self.in_kernel: self.in_axis, self.out_kernel: self.out_axis}
    if self.in_bias is not None:
      axes[self.in_bias] = self.in_bias_axis
    if self.out_bias is not None:
      axes[self.out_bias] = None
    return axes

  @property
  def sliced(self) -> tuple[tuple[int, int], ...]:
    """``(leaf, unit axis)`` of every leaf with a slice per unit: what removing a unit cuts."""
    return (*((i, a) for i, a in self.unit_axes.items() if a is not None), *self.followers)


def _group_paths(groups: GroupSpecTree) -> set[str]:
  is_spec = lambda x: x is None or isinstance(x, GroupSpec)  # noqa: E731
  return {
    jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(groups, is_leaf=is_spec)
  }


def describes(params: Any, groups: GroupSpecTree) -> bool:
  """Whether ``groups`` has a leaf (a spec or ``None``) at each leaf of ``params``, and no other."""
  paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
  return paths == _group_paths(groups)


def spec_leaves(params: Any, groups: GroupSpecTree) -> list[GroupSpec | None]:
  """Flattens ``groups`` up to the structure of ``params``, with a clear error."""
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  params_paths = set(paths)
  group_paths = _group_paths(groups)
  if params_paths != group_paths:
    only_params = sorted(params_paths - group_paths)[:5]
    only_groups = sorted(group_paths - params_paths)[:5]
    raise ValueError(
      "PathProx groups do not match params: paths only in params "
      f"{only_params}, only in groups {only_groups}. Build groups with "
      "pathprox_jax.group_spec() from the same model's boxed params or NNX state "
      "(and pass unboxed params: flax.core.meta.unbox)."
    )
  treedef = jax.tree.structure(params)
  leaves = treedef.flatten_up_to(groups)
  for path, spec in zip(paths, leaves, strict=True):
    if spec is not None and not isinstance(spec, GroupSpec):
      raise ValueError(
        f"PathProx groups leaf at {path} is {spec!r}; expected a GroupSpec or None "
        "(use pathprox_jax.group_spec())."
      )
  return leaves


@dataclasses.dataclass(frozen=True)
class _Params:
  """The flat params with what validation reads: paths (as text), parent modules, the kernel
  rule, which a BatchNorm's scale (the scale rule) passes too."""

  paths: list[str]
  parents: list[tuple[Any, ...]]
  leaves: list[Any]
  kernel: list[bool]
  scale: list[bool]

  def describe(self, i: int) -> str:
    return f"{self.paths[i]} {tuple(self.leaves[i].shape)}"


def _explicit_axis(p: _Params, i: int, spec: GroupSpec) -> int | None:
  """The spec's unit axis of leaf ``i``, made non-negative (``None`` if not given)."""
  if spec.unit_axis is None:
    return None
  ndim = p.leaves[i].ndim
  if not -ndim <= spec.unit_axis < ndim:
    raise ValueError(
      f"PathProx: {p.describe(i)} has unit_axis={spec.unit_axis}, out of range for "
      f"{ndim} dimensions."
    )
  return spec.unit_axis % ndim


def _kernel_axis(p: _Params, i: int, spec: GroupSpec) -> int:
  """A kernel's unit axis: explicit, or the Dense/Conv layout's for its role."""
  axis = _explicit_axis(p, i, spec)
  if axis is None:
    axis = p.leaves[i].ndim - (2 if spec.role == "out" else 1)
  return axis


def _bias_axis(p: _Params, bias: int, spec: GroupSpec, kernel: int, kernel_axis: int) -> int:
  """A bias's unit axis (explicit, or the kernel's counted from the end), checked for shape."""
  b, k = p.leaves[bias], p.leaves[kernel]
  inferred = kernel_axis - k.ndim + b.ndim
  axis = _explicit_axis(p, bias, spec)
  if b.shape != k.shape[k.ndim - b.ndim :] or inferred < 0 or axis not in (None, inferred):
    raise ValueError(
      f"PathProx group {spec.group}: bias {p.describe(bias)} does not match kernel "
      f"{p.describe(kernel)} with units on axis {kernel_axis} (a bias has the kernel's trailing "
      "shape and its unit axis counted from the end)."
    )
  return inferred


def unit_counts(params: Any, groups: GroupSpecTree) -> dict[int, int]:
  """``{group: its number of units}``, in the order of the groups' "in" kernels in ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> import pathprox_jax
    >>> G = pathprox_jax.GroupSpec
    >>> params = {"w": jnp.ones((3, 4)), "v": jnp.ones((4, 2))}
    >>> pathprox_jax.unit_counts(params, {"w": G(0, "in"), "v": G(0, "out")})
    {0: 4}
  """
  layouts = group_layouts(params_lib.unwrap_variables(params), groups)
  return {g.group: g.units for g in sorted(layouts, key=lambda g: g.in_kernel)}


def group_layouts(params: Any, groups: GroupSpecTree) -> tuple[GroupLayout, ...]:
  """Validates the group annotations against ``params`` and locates each group.

  Args:
    params: the (unboxed) parameters; only shapes and dtypes are read.
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.

  Returns:
    One :class:`GroupLayout` per group, sorted by group index.

  Raises:
    ValueError: naming the offending parameter paths and shapes when the spec
      does not match the params, a grouped parameter is not floating point or
      is a scalar, a unit axis is out of range, a group lacks a side or has
      more than one kernel per role, the unit counts differ, a bias does not
      fit its kernel, or a grouped kernel's bias in the same module is outside
      the group (or a grouped bias has no grouped kernel).
  """
  specs = spec_leaves(params, groups)
  keyed = jax.tree_util.tree_leaves_with_path(params)
  scale = [params_lib.is_norm_scale(path, leaf) for path, leaf in keyed]
  p = _Params(
    paths=[jax.tree_util.keystr(path) for path, _ in keyed],
    parents=[tuple(path[:-1]) for path, _ in keyed],
    leaves=[leaf for _, leaf in keyed],
    kernel=[
      params_lib.is_kernel(path, leaf) or s for (path, leaf), s in zip(keyed, scale, strict=True)
    ],
    scale=scale,
  )

  kernels: dict[tuple[int, Role], list[int]] = defaultdict(list)
  biases: dict[tuple[int, Role], list[int]] = defaultdict(list)
  for i, spec in enumerate(specs):
    if spec is None:
      continue
    leaf = p.leaves[i]
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      raise ValueError(
        f"PathProx grouped parameter {p.describe(i)} has dtype {leaf.dtype}; "
        "grouped parameters must be floating point."
      )
    if leaf.ndim == 0:
      raise ValueError(
        f"PathProx grouped parameter {p.paths[i]} is a scalar; only kernels (2+ dims) "
        "and biases can be grouped."
      )
    if spec.role == "out" and p.scale[i]:
      raise ValueError(
        f"PathProx group {spec.group}: {p.describe(i)} is a BatchNorm scale with role 'out'; "
        "a BatchNorm's channels are the units its scale computes: give it role 'in'."
      )
    (kernels if p.kernel[i] else biases)[(spec.group, spec.role)].append(i)

  kernel_parents = {p.parents[i]: (*key, i) for key, idx in kernels.items() for i in idx}
  for i, spec in enumerate(specs):
    owner = kernel_parents.get(p.parents[i])
    if spec is None and owner is not None and not p.kernel[i] and p.leaves[i].ndim:
      if p.scale[owner[2]] and not p.paths[i].endswith("['bias']"):
        raise ValueError(
          f"PathProx: {p.describe(i)} is beside the BatchNorm scale of group {owner[0]} but is "
          "not a parameter (a running statistic?): give PathProx the params alone, e.g. "
          "nnx.state(model, nnx.Param); pp.compact takes the statistics as "
          '{"params": ..., "batch_stats": ...}.'
        )
      raise ValueError(
        f"PathProx: bias {p.describe(i)} is in the same module as a "
        f"kernel of group {owner[0]} role '{owner[1]}' but is not in the group; annotate "
        "it with the same group and role."
      )

  layouts = []
  for group in sorted({g for g, _ in kernels} | {g for g, _ in biases}):
    layouts.append(_layout(group, kernels, biases, specs, p))
  return tuple(layouts)


def _layout(group, kernels, biases, specs, p: _Params) -> GroupLayout:
  """Locates and checks one group."""
  for role in ("in", "out"):
    if len(kernels[(group, role)]) > 1:
      raise ValueError(
        f"PathProx group {group} has {len(kernels[(group, role)])} kernels with role '{role}': "
        f"{', '.join(p.describe(i) for i in kernels[(group, role)])}; each role "
        "takes exactly one kernel."
      )
  pairs = {role: _pair_biases(group, role, kernels, biases, p) for role in ("in", "out", "follow")}
  missing = [role for role in ("in", "out") if not kernels[(group, role)]]
  if missing:
    present = next(
      (r for r in ("in", "out", "follow") if r not in missing and kernels[(group, r)]), None
    )
    raise ValueError(
      f"PathProx group {group} has an '{present}' side "
      f"({', '.join(p.describe(i) for i in kernels[(group, present)])}) "
      f"but no '{missing[0]}' side; annotate the layer "
      f"{'reading' if missing[0] == 'out' else 'computing'} its units."
    )
  members = [i for r in ("in", "out", "follow") for i in kernels[(group, r)] + biases[(group, r)]]
  chains = {specs[i].chain for i in members}
  if len(chains) > 1:
    named = ", ".join(f"{p.paths[i]} chain={specs[i].chain}" for i in members)
    raise ValueError(
      f"PathProx group {group}'s parameters carry different balance chains ({named}); give "
      "every parameter of a group the same chain."
    )
  (w,), (v,) = kernels[(group, "in")], kernels[(group, "out")]
  in_axis = _kernel_axis(p, w, specs[w])
  out_axis = _kernel_axis(p, v, specs[v])
  units = p.leaves[w].shape[in_axis]
  sides = [(w, in_axis, "in")] + [
    (k, _kernel_axis(p, k, specs[k]), "follow") for k in kernels[(group, "follow")]
  ]
  for kernel, axis, role in [*sides[1:], (v, out_axis, "out")]:
    if p.leaves[kernel].shape[axis] != units:
      raise ValueError(
        f"PathProx group {group}: 'in' kernel {p.describe(w)} has {units} units "
        f"(axis {in_axis}) but '{role}' kernel {p.describe(kernel)} has "
        f"{p.leaves[kernel].shape[axis]} (axis {axis})."
      )
  axes = {kernel: axis for kernel, axis, _ in sides}
  bias_axes = {
    bias: _bias_axis(p, bias, specs[bias], kernel, axes[kernel])
    for role in ("in", "follow")
    for kernel, bias in pairs[role].items()
    if bias is not None
  }
  out_bias = pairs["out"][v]
  if out_bias is not None:
    if specs[out_bias].unit_axis is not None:
      raise ValueError(
        f"PathProx group {group}: 'out' bias {p.describe(out_bias)} has a unit_axis, but the "
        "'out' layer's bias adds to its outputs and has no units: drop the unit_axis."
      )
    _bias_axis(p, out_bias, specs[out_bias], v, p.leaves[v].ndim - 1)
  in_bias = pairs["in"][w]
  normalized = p.scale[w]
  followers = tuple(
    (i, axes[i] if i in axes else bias_axes[i])
    for kernel, bias in pairs["follow"].items()
    for i in (kernel, bias)
    if i is not None
  )
  return GroupLayout(
    group=group,
    units=units,
    in_kernel=w,
    in_axis=in_axis,
    in_bias=in_bias,
    in_bias_axis=None if in_bias is None else bias_axes[in_bias],
    out_kernel=v,
    out_axis=out_axis,
    out_bias=out_bias,
    followers=followers,
    normalized=normalized,
    plain=(
      (normalized or not followers)
      and in_axis == p.leaves[w].ndim - 1
      and out_axis == p.leaves[v].ndim - 2
    ),
    chain=chains.pop(),
  )


def _pair_biases(group, role, kernels, biases, p: _Params) -> dict[int, int | None]:
  """``{kernel: its bias or None}`` for one role, each bias in its kernel's module."""
  by_parent = {p.parents[k]: k for k in kernels[(group, role)]}
  pairs: dict[int, int | None] = dict.fromkeys(kernels[(group, role)])
  for i in biases[(group, role)]:
    kernel = by_parent.get(p.parents[i])
    if kernel is None:
      if not kernels[(group, role)]:
        raise ValueError(
          f"PathProx group {group} role '{role}' has bias {p.describe(i)} but no kernel "
          "in its module."
        )
      raise ValueError(
        f"PathProx group {group} role '{role}': bias {p.describe(i)} is not in the module "
        f"of its kernel {', '.join(p.describe(k) for k in kernels[(group, role)])}."
      )
    if pairs[kernel] is not None:
      raise ValueError(
        f"PathProx group {group} role '{role}' has more than one bias: "
        f"{p.describe(pairs[kernel])}, {p.describe(i)}."
      )
    pairs[kernel] = i
  return pairs


def update_grouped(
  params: Any,
  groups: GroupSpecTree,
  step: Callable[[list[jax.Array], tuple[GroupLayout, ...]], Mapping[int, jax.Array]],
) -> Any:
  """Applies ``step(flat leaves, layouts) -> {leaf index: new value}`` to (unboxed or NNX) params.

  Returns the params with the changed leaves, each cast back to its dtype.
  """
  params = params_lib.unwrap_variables(params)
  leaves, treedef = jax.tree.flatten(params)
  new = step(leaves, group_layouts(params, groups))
  return treedef.unflatten(
    [new[i].astype(leaf.dtype) if i in new else leaf for i, leaf in enumerate(leaves)]
  )
