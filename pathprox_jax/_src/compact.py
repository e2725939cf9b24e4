"""Structured compaction: removing the units PathProx switched off.

A unit ``i`` of a group computes :math:`h_i = \\sigma(w_i^\\top x + a_i)` and
reaches the rest of the network only through its "out" weights :math:`v_i`
(the "out" layer computes :math:`y = \\sum_i h_i v_i + c`). When :math:`v_i = 0`
the unit contributes nothing, so deleting its column of ``w``, its entry of ``a``
and its row of ``v`` gives a smaller network computing the same function. The
same holds for any unit layout: an attention head ``h`` with :math:`O_h = 0`
contributes nothing, so its slices of the value, query and key projections
(the query and key are its "follow" parameters) and of the out projection go.
A BatchNorm channel with :math:`v_i = 0` goes with its scale, bias, running mean
and variance and the filter of the conv before it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from pathprox_jax._src import budget as budget_lib
from pathprox_jax._src import groups as groups_lib
from pathprox_jax._src import params as params_lib
from pathprox_jax._src import unit_norms
from pathprox_jax._src.annotations import GroupSpecTree
from pathprox_jax._src.checks import check_hyperparameter


class KeptUnits(NamedTuple):
  """The units of one group that :func:`compact` kept.

  Attributes:
    indices: the kept units' positions in the original layer, sorted (int64).
    original_width: the group's number of units before compaction.
  """

  indices: np.ndarray
  original_width: int

  @property
  def width(self) -> int:
    """The group's number of units after compaction."""
    return len(self.indices)


def compact(
  params: Any,
  groups: GroupSpecTree,
  *,
  atol: float = 0.0,
  path_norm_tol: float | None = None,
  keep: Mapping[int, Sequence[int]] | None = None,
) -> tuple[Any, dict[int, KeptUnits]]:
  """Drops every unit whose "out" weights are (at most ``atol``) zero, or those not in ``keep``.

  Unit ``i`` of a group is dropped when :math:`\\max_j |v_{ij}| \\le`
  ``atol``: its slice of the "in" kernel ``w`` (for Dense and Conv: its
  column, the last axis), of the "in" bias and of the "out" kernel ``v`` (for
  Dense and Conv: its row, the second-to-last axis) are removed, and its slices
  of the group's "follow" parameters (an attention head's query and key, a
  SwiGLU neuron's gate); "out" biases and ungrouped parameters are unchanged.
  For attention heads, build the smaller model with ``num_heads`` the kept
  count (and ``qkv_features`` that count times the head dimension).

  Given a model's whole variables (a mapping with a ``"params"`` key, e.g.
  ``{"params": ..., "batch_stats": ...}``; for NNX, of the states
  ``nnx.state(model, nnx.Param)`` and ``nnx.state(model, nnx.BatchStat)``) and the
  params' spec (or the whole variables' spec), the other collections go with the units
  too: a leaf in the module of a group's "in" kernel, of that kernel's shape (a BatchNorm's
  running mean and variance, beside its scale), loses the dropped units' entries on the
  kernel's unit axis. Every other leaf of these collections is unchanged.

  With ``atol=0`` the result is exact: a unit with :math:`v_i = 0` adds nothing
  downstream, whatever its input weights. A unit with :math:`w_i = 0` but
  :math:`v_i \\ne 0` is kept, since it still adds the constant
  :math:`\\sigma(a_i)\\, v_i`. Networks trained with PathProx have exact zeros
  (the group soft-threshold sets :math:`v_i = 0`); networks trained otherwise
  have none, so nothing is dropped unless ``atol > 0``. Then, for a Dense "out"
  layer with ``out`` outputs, the output changes by at most

  .. math::
    \\|\\Delta y\\| \\le \\sum_{i\\ \\text{dropped}} |h_i|\\, \\|v_i\\|
      \\le \\texttt{atol} \\sqrt{\\texttt{out}} \\sum_{i\\ \\text{dropped}} |h_i| .

  Shapes depend on the values, so this runs eagerly on concrete arrays (it
  reads the "out" kernels with ``np.asarray``) and cannot be traced by
  ``jax.jit``. The same ``groups`` spec describes the smaller params, whose
  tree structure and dtypes are those of ``params``.

  With ``path_norm_tol``, a unit also goes when its path norm
  :math:`\\|w_i\\| \\|v_i\\|` (:func:`pathprox_jax.unit_path_norms`) is at most
  ``path_norm_tol``: units that are small but not exactly zero, such as those weight
  decay leaves, or those a schedule's tail brings back. Dropping unit ``i`` changes the
  "out" layer's input by :math:`h_i v_i`, so the output changes, as with ``atol > 0``;
  a unit with :math:`w_i = 0` goes even though its bias still adds :math:`\\sigma(a_i)\\, v_i`.

  With ``keep``, a group it lists keeps exactly the units it names, whatever their
  weights: structured pruning (e.g. by :func:`pathprox_jax.unit_path_norms`). The
  result then computes the function of ``params`` with the other units' "out"
  weights set to zero.

  Args:
    params: the (unboxed) parameters, or an NNX ``State`` of Params (its
      Variables are replaced by their values); or a model's whole variables, of which
      ``params["params"]`` are the parameters.
    groups: the spec pytree from :func:`pathprox_jax.group_spec`.
    atol: the largest absolute "out" weight of a unit that is dropped.
    path_norm_tol: the largest path norm of a unit that is dropped (``None``: units go by
      ``atol`` only).
    keep: ``{group: indices of the units to keep}`` (distinct, in range); the
      groups it does not list go by ``atol`` and ``path_norm_tol``.

  Returns:
    ``(smaller, kept)``: ``smaller`` the params (or variables) with the structure of
    the input, and ``kept[group]`` a :class:`KeptUnits`. Build the smaller model with
    each group's "in" layer ``kept[group].width`` wide.

  Raises:
    ValueError: ``keep`` names a group that does not exist, or units out of range
      or twice; ``atol`` or ``path_norm_tol`` is not a finite number >= 0.

  Example:
    >>> import jax.numpy as jnp
    >>> import pathprox_jax
    >>> G = pathprox_jax.GroupSpec
    >>> params = {"w": jnp.ones((2, 3)), "v": jnp.array([[1.0], [0.0], [2.0]])}
    >>> groups = {"w": G(0, "in"), "v": G(0, "out")}
    >>> smaller, kept = pathprox_jax.compact(params, groups)
    >>> smaller["w"].shape, smaller["v"].shape, kept[0].indices.tolist(), kept[0].width
    ((2, 2), (2, 1), [0, 2], 2)
  """
  check_hyperparameter("atol", atol, "finite and >= 0", lambda x: x >= 0, schedule=False)
  if path_norm_tol is not None:
    check_hyperparameter(
      "path_norm_tol", path_norm_tol, "finite and >= 0", lambda x: x >= 0, schedule=False
    )
  variables = params
  params, groups, collections = _split_variables(variables, groups)
  leaves, treedef = jax.tree.flatten(params)
  new = list(leaves)
  kept = {}
  layouts = groups_lib.group_layouts(params, groups)
  keep = {} if keep is None else keep
  unknown = sorted(set(keep) - {g.group for g in layouts})
  if unknown:
    raise ValueError(f"compact: keep names group {unknown[0]}, which the groups do not have.")
  for g in layouts:
    if g.group in keep:
      indices = np.unique(np.asarray(keep[g.group], np.int64))  # sorted, each once
      if len(indices) != np.size(keep[g.group]) or np.any((indices < 0) | (indices >= g.units)):
        raise ValueError(
          f"compact: keep[{g.group}] must be distinct unit indices in [0, {g.units}), got "
          f"{np.asarray(keep[g.group]).tolist()}."
        )
    else:
      # Max, not the norm ||v_i||: squares of tiny weights underflow to zero in f32.
      v = np.abs(np.asarray(leaves[g.out_kernel], np.float32))
      largest = v.max(axis=tuple(a for a in range(v.ndim) if a != g.out_axis))
      on = largest > atol
      if path_norm_tol is not None:
        w_norms = unit_norms.unit_norms(leaves[g.in_kernel], g.in_axis)
        v_norms = unit_norms.unit_norms(leaves[g.out_kernel], g.out_axis)
        on &= np.asarray(w_norms * v_norms) > path_norm_tol
      indices = np.flatnonzero(on)
    for i, axis in g.sliced:
      new[i] = leaves[i][(slice(None),) * axis + (indices,)]
    kept[g.group] = KeptUnits(indices, g.units)
  smaller = treedef.unflatten(new)
  if collections is None:
    return smaller, kept
  sliced = _sliced_collections(params, layouts, kept, collections)
  return type(variables)(
    {name: smaller if name == "params" else sliced[name] for name in variables}
  ), kept


def _split_variables(tree: Any, groups: GroupSpecTree) -> tuple[Any, GroupSpecTree, dict | None]:
  """``(params, their spec, the other collections)`` of params or a model's variables.

  NNX Variables are replaced by their values. A mapping with a ``"params"`` key that the spec
  (the params' spec, or ``spec["params"]`` of a whole variables' spec whose other collections
  hold no group) describes is a model's variables; anything else is params alone, with no
  other collections (``None``).
  """
  tree = params_lib.unwrap_variables(tree)
  if isinstance(tree, Mapping) and "params" in tree:
    spec = groups
    if isinstance(groups, Mapping) and "params" in groups:
      others = {name: s for name, s in groups.items() if name != "params"}
      spec = groups if jax.tree.leaves(others) else groups["params"]
    if groups_lib.describes(tree["params"], spec):
      return tree["params"], spec, {name: c for name, c in tree.items() if name != "params"}
  return tree, groups, None


def _sliced_collections(
  params: Any,
  layouts: Sequence[groups_lib.GroupLayout],
  kept: Mapping[int, KeptUnits],
  collections: Mapping[str, Any],
) -> dict[str, Any]:
  """The other collections with the kept units of each leaf beside a group's "in" kernel."""
  keyed = jax.tree_util.tree_leaves_with_path(params)
  module = lambda path: tuple(params_lib.key_name(k) for k in path[:-1])  # noqa: E731
  by_module = {}  # {module of an "in" kernel: (its shape, unit axis, kept units)}
  for g in layouts:
    path, kernel = keyed[g.in_kernel]
    by_module[module(path)] = (kernel.shape, g.in_axis, kept[g.group].indices)

  def slice_units(path, leaf):
    shape, axis, indices = by_module.get(module(path), (None, None, None))
    if shape is None or np.shape(leaf) != shape:
      return leaf
    return leaf[(slice(None),) * axis + (indices,)]

  return {
    name: jax.tree_util.tree_map_with_path(slice_units, collection)
    for name, collection in collections.items()
  }


def compact_state(
  tx: optax.GradientTransformation,
  opt_state: optax.OptState,
  groups: GroupSpecTree,
  kept: Mapping[int, KeptUnits],
) -> optax.OptState:
  """Slices an optimiser state to the units :func:`compact` kept, to train on the smaller model.

  Every params-shaped part of the state (SGD's momentum trace, Adam's :math:`\\mu` and
  :math:`\\nu`, a wrapped optimiser's, found by ``optax.tree_utils.tree_map_params``) is
  compacted as :func:`compact` compacts the params, and a :class:`pathprox_jax.BudgetState`'s
  unit masks keep the same units. Counts, schedules and the controller's state are unchanged.
  For an optimiser that acts on each parameter entry alone (SGD, Adam, AdamW, the heal of
  :func:`pathprox_jax.with_budget`) and a model whose dropped units are off (their "out"
  weights zero), one step on the compacted model from the sliced state equals the dense step
  restricted to the kept units.

  Args:
    tx: the optimiser whose state this is (its ``init`` tells the params-shaped parts).
    opt_state: its state for the dense params.
    groups: the spec pytree from :func:`pathprox_jax.group_spec` (of the dense params).
    kept: ``{group: KeptUnits}`` from :func:`compact`, for every group.

  Returns:
    The state for the compacted params.

  Example:
    >>> import jax.numpy as jnp, optax, pathprox_jax as pp
    >>> G = pp.GroupSpec
    >>> params = {"w": jnp.ones((2, 3)), "v": jnp.array([[1.0], [0.0], [2.0]])}
    >>> groups = {"w": G(0, "in"), "v": G(0, "out")}
    >>> tx = optax.sgd(0.1, momentum=0.9)
    >>> smaller, kept = pp.compact(params, groups)
    >>> state = pp.compact_state(tx, tx.init(params), groups, kept)
    >>> state[0].trace["w"].shape
    (2, 2)
  """
  keep = {g: k.indices for g, k in kept.items()}

  def compact_copy(copy):
    return compact(copy, groups, keep=keep)[0]

  # is_leaf: each params-shaped copy is compacted as a whole, so the group layouts are seen.
  state = optax.tree_utils.tree_map_params(tx, compact_copy, opt_state, is_leaf=lambda _: True)
  budget_states = lambda x: isinstance(x, budget_lib.BudgetState)  # noqa: E731

  def compact_masks(x):
    if not budget_states(x):
      return x
    return x._replace(masks={g: m[..., keep[g]] for g, m in x.masks.items()})

  return jax.tree.map(compact_masks, state, is_leaf=budget_states)
