"""Where each unit group lives in a params pytree, validated once per trace.

A group's *layout* names the flat-leaf positions of its four parameters: the
"in" kernel ``w`` (units on its last axis) and bias ``a``, and the "out" kernel
``v`` (units on its second-to-last axis) and bias ``c``. Kernels are the grouped
parameters with two or more dimensions (Dense ``[in, out]``, Conv
``[kh, kw, in, out]``), biases the one-dimensional ones; a bias pairs with the
kernel of the same module (the same parent path).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pathprox_jax._src.annotations import GroupSpec, Role


@dataclasses.dataclass(frozen=True)
class GroupLayout:
  """Flat-leaf indices of one group's parameters (``None``: no such bias)."""

  group: int
  units: int
  in_kernel: int
  in_bias: int | None
  out_kernel: int
  out_bias: int | None


def unwrap_variables(tree: Any) -> Any:
  """Replaces NNX Variables by their values (``nnx.Optimizer`` passes Variables to init)."""
  return jax.tree.map(
    lambda x: x.get_value() if isinstance(x, nnx.Variable) else x,
    tree,
    is_leaf=lambda x: isinstance(x, nnx.Variable),
  )


def spec_leaves(params: Any, groups: Any) -> list[GroupSpec | None]:
  """Flattens ``groups`` up to the structure of ``params``, with a clear error."""
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  params_paths = set(paths)
  group_paths = {
    jax.tree_util.keystr(p)
    for p, _ in jax.tree_util.tree_leaves_with_path(
      groups, is_leaf=lambda x: x is None or isinstance(x, GroupSpec)
    )
  }
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


def _describe(path: str, leaf: Any) -> str:
  return f"{path} {tuple(leaf.shape)}"


def group_layouts(params: Any, groups: Any) -> tuple[GroupLayout, ...]:
  """Validates the group annotations against ``params`` and locates each group.

  Args:
    params: the (unboxed) parameters; only shapes and dtypes are read.
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.

  Returns:
    One :class:`GroupLayout` per group, sorted by group index.

  Raises:
    ValueError: naming the offending parameter paths and shapes when the spec
      does not match the params, a grouped parameter is not floating point or
      is a scalar, a group lacks a side or has more than one kernel per role,
      the two sides' unit counts differ, or a grouped kernel's bias in the same
      module is outside the group (or a grouped bias has no grouped kernel).
  """
  specs = spec_leaves(params, groups)
  keyed = jax.tree_util.tree_leaves_with_path(params)
  paths = [jax.tree_util.keystr(p) for p, _ in keyed]
  parents = [tuple(p[:-1]) for p, _ in keyed]
  leaves = [leaf for _, leaf in keyed]

  kernels: dict[tuple[int, Role], list[int]] = defaultdict(list)
  biases: dict[tuple[int, Role], list[int]] = defaultdict(list)
  for i, spec in enumerate(specs):
    if spec is None:
      continue
    leaf = leaves[i]
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      raise ValueError(
        f"PathProx grouped parameter {_describe(paths[i], leaf)} has dtype {leaf.dtype}; "
        "grouped parameters must be floating point."
      )
    if leaf.ndim == 0:
      raise ValueError(
        f"PathProx grouped parameter {paths[i]} is a scalar; only kernels (2+ dims) "
        "and biases (1 dim) can be grouped."
      )
    (kernels if leaf.ndim >= 2 else biases)[(spec.group, spec.role)].append(i)

  kernel_parents = {parents[i]: key for key, idx in kernels.items() for i in idx}
  for i, spec in enumerate(specs):
    owner = kernel_parents.get(parents[i])
    if spec is None and owner is not None and leaves[i].ndim == 1:
      raise ValueError(
        f"PathProx: bias {_describe(paths[i], leaves[i])} is in the same module as a "
        f"kernel of group {owner[0]} role '{owner[1]}' but is not in the group; annotate "
        "it with the same group and role."
      )

  layouts = []
  for group in sorted({g for g, _ in kernels} | {g for g, _ in biases}):
    sides = {}
    for role in ("in", "out"):
      sides[role] = _side(
        group, role, kernels[(group, role)], biases[(group, role)], paths, parents, leaves
      )
    missing = [role for role, side in sides.items() if side is None]
    if missing:
      present = [r for r in ("in", "out") if r not in missing]
      raise ValueError(
        f"PathProx group {group} has an '{present[0]}' side "
        f"({', '.join(_describe(paths[i], leaves[i]) for i in kernels[(group, present[0])])}) "
        f"but no '{missing[0]}' side; annotate the layer "
        f"{'reading' if missing[0] == 'out' else 'computing'} its units."
      )
    (w, a), (v, c) = sides["in"], sides["out"]
    units_in, units_out = leaves[w].shape[-1], leaves[v].shape[-2]
    if units_in != units_out:
      raise ValueError(
        f"PathProx group {group}: 'in' kernel {_describe(paths[w], leaves[w])} has "
        f"{units_in} units (last axis) but 'out' kernel {_describe(paths[v], leaves[v])} "
        f"has {units_out} (second-to-last axis)."
      )
    for bias, kernel, axis in ((a, w, -1), (c, v, -1)):
      if bias is not None and leaves[bias].shape != (leaves[kernel].shape[axis],):
        raise ValueError(
          f"PathProx group {group}: bias {_describe(paths[bias], leaves[bias])} does not "
          f"match kernel {_describe(paths[kernel], leaves[kernel])}."
        )
    layouts.append(GroupLayout(group, units_in, w, a, v, c))
  return tuple(layouts)


def _side(group, role, kernel_idx, bias_idx, paths, parents, leaves):
  """The (kernel, bias) leaf indices of one side of a group, or None if absent."""
  if len(kernel_idx) > 1:
    raise ValueError(
      f"PathProx group {group} has {len(kernel_idx)} kernels with role '{role}': "
      f"{', '.join(_describe(paths[i], leaves[i]) for i in kernel_idx)}; each role "
      "takes exactly one kernel."
    )
  if not kernel_idx:
    if bias_idx:
      raise ValueError(
        f"PathProx group {group} role '{role}' has bias "
        f"{_describe(paths[bias_idx[0]], leaves[bias_idx[0]])} but no kernel in its module."
      )
    return None
  (kernel,) = kernel_idx
  for i in bias_idx:
    if parents[i] != parents[kernel]:
      raise ValueError(
        f"PathProx group {group} role '{role}': bias {_describe(paths[i], leaves[i])} is "
        f"not in the module of its kernel {_describe(paths[kernel], leaves[kernel])}."
      )
  if len(bias_idx) > 1:
    raise ValueError(
      f"PathProx group {group} role '{role}' has more than one bias: "
      f"{', '.join(_describe(paths[i], leaves[i]) for i in bias_idx)}."
    )
  return kernel, (bias_idx[0] if bias_idx else None)


def input_norms(w: jax.Array) -> jax.Array:
  """Per-unit norms ``||w_i||`` of an "in" kernel, over all axes but the last, in f32."""
  w = w.astype(jnp.float32)
  return jnp.sqrt(jnp.sum(w * w, axis=tuple(range(w.ndim - 1))))


def output_norms(v: jax.Array) -> jax.Array:
  """Per-unit norms ``||v_i||`` of an "out" kernel, over all axes but the second-to-last, in f32."""
  v = v.astype(jnp.float32)
  axes = tuple(a for a in range(v.ndim) if a != v.ndim - 2)
  return jnp.sqrt(jnp.sum(v * v, axis=axes))


def unit_path_norms(leaves: Any, group: GroupLayout) -> jax.Array:
  """Each unit's path norm ``||w_i|| ||v_i||`` (weights only, f32)."""
  return input_norms(leaves[group.in_kernel]) * output_norms(leaves[group.out_kernel])


def scale_outputs(v: jax.Array, scale: jax.Array) -> jax.Array:
  """Multiplies each unit's row of an "out" kernel (axis -2) by ``scale[i]``, in f32."""
  return v.astype(jnp.float32) * scale[:, None]
