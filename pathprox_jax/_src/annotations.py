"""PathProx group annotations on Flax parameters (linen boxes and NNX metadata).

A *unit group* is a set of hidden units computed by one layer (role ``"in"``:
by default the units are the last axis of its kernel and its bias) and read by
the next (role ``"out"``: by default the units are the second-to-last axis of
its kernel; its bias belongs to the group too). ``unit_axis`` places the units
on another axis (attention heads). Role ``"follow"`` marks parameters that are
not regularised by PathProx but whose unit slices go with the group's units
when :func:`pathprox_jax.compact` removes them (the query and key of a head, the
gate of a SwiGLU neuron). A BatchNorm's channels are units too: its scale and
bias are the "in" side and the conv (or Dense) before it follows
(:func:`batch_norm_inits`). Annotations are static metadata, read back by
:func:`group_spec` into a pytree of :class:`GroupSpec` leaves, in the spirit of
``nn.with_partitioning`` and ``nn.get_partition_spec``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeAlias, Union

import flax.struct
import jax
from flax import nnx
from flax.core import meta
from flax.linen import initializers

from pathprox_jax._src import params as params_lib

Role = Literal["in", "out", "follow"]
ROLES: tuple[Role, ...] = ("in", "out", "follow")
NNX_METADATA_KEY = "pathprox"
DEFAULT_KERNEL_INIT = initializers.lecun_normal()
DEFAULT_BIAS_INIT = initializers.zeros_init()
DEFAULT_SCALE_INIT = initializers.ones_init()


@dataclasses.dataclass(frozen=True, repr=False)
class GroupSpec:
  """The PathProx group of one parameter: a pytree *leaf* (not a NamedTuple).

  Attributes:
    group: position of the unit group in the network (forward order).
    role: ``"in"`` for the layer computing the units, ``"out"`` for the layer
      reading them, ``"follow"`` for a parameter whose unit slices are removed
      with dead units by :func:`pathprox_jax.compact` but which PathProx
      otherwise treats as ungrouped (ordinary weight decay).
    unit_axis: the axis of this parameter that indexes the units: unit ``j``
      is the slice at index ``j`` along it, and its norm runs over all the
      other axes. ``None`` infers the Dense/Conv layout: the last axis of an
      "in" (or "follow") kernel, the second-to-last axis of an "out" kernel,
      and for a bias its kernel's unit axis counted from the end. An "out"
      bias is never split into units. For Flax
      attention heads: value kernel ``[d_model, heads, head_dim]`` "in" with
      ``unit_axis=1``, value bias ``[heads, head_dim]`` "in" with
      ``unit_axis=0``, out kernel ``[heads, head_dim, d_model]`` "out" with
      ``unit_axis=0`` (see :func:`pathprox_jax.attention_head_rules`).
    chain: the layer-balance chain of the group (``None``: none given), as
      :func:`pathprox_jax.discover_groups` sets it from the trace: with
      ``balance=True`` the groups sharing a chain are balanced together, in group
      order, and a group alone in its chain is not balanced. A spec whose groups
      carry no chain balances all groups as one chain. Every parameter of a group
      carries the same chain. A hint for the balance, not part of the group:
      specs that differ only in ``chain`` compare equal.
  """

  group: int
  role: Role
  unit_axis: int | None = None
  chain: int | None = dataclasses.field(default=None, compare=False)

  def __post_init__(self):
    if not _is_int(self.group) or self.group < 0:
      raise ValueError(f"PathProx group must be an int >= 0, got {self.group!r}.")
    if self.role not in ROLES:
      raise ValueError(
        f"PathProx role must be 'in' or 'out', got {self.role!r} (or 'follow', for a "
        "parameter whose unit slices follow the group's units)."
      )
    if self.unit_axis is not None and not _is_int(self.unit_axis):
      raise ValueError(f"PathProx unit_axis must be an int or None, got {self.unit_axis!r}.")
    if self.chain is not None and not (_is_int(self.chain) and self.chain >= 0):
      raise ValueError(f"PathProx chain must be an int >= 0 or None, got {self.chain!r}.")

  def __repr__(self) -> str:
    axis = "" if self.unit_axis is None else f", unit_axis={self.unit_axis}"
    chain = "" if self.chain is None else f", chain={self.chain}"
    return f"GroupSpec(group={self.group}, role={self.role!r}{axis}{chain})"


def regularized_by_pathprox(spec: GroupSpec | None) -> bool:
  """Whether the prox regularises a parameter: "in" and "out" yes; "follow" and ``None`` no."""
  return spec is not None and spec.role != "follow"


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


GroupSpecTree: TypeAlias = Union[  # noqa: UP007 (a recursive alias needs string references)
  GroupSpec, None, Mapping[Any, "GroupSpecTree"], Iterable["GroupSpecTree"]
]
"""A pytree of :class:`GroupSpec` or ``None`` leaves with the structure of the params (an NNX
``State`` for NNX models), as :func:`group_spec` and :func:`pathprox_jax.group_spec_from_paths`
build it."""


class PathProxGroup(flax.struct.PyTreeNode, meta.AxisMetadata):
  """A linen parameter box carrying a :class:`GroupSpec` as static metadata.

  Like ``nn.Partitioned``: the value is the pytree child, the metadata static,
  and ``flax.core.meta.unbox`` strips it (nested boxes included).
  """

  value: Any
  spec: GroupSpec = flax.struct.field(pytree_node=False)

  def unbox(self) -> Any:
    return self.value

  def replace_boxed(self, val: Any) -> PathProxGroup:
    return self.replace(value=val)

  def get_partition_spec(self) -> jax.sharding.PartitionSpec | None:
    # ``nn.get_partition_spec`` stops at the outermost box: look through this one, so a
    # grouped parameter keeps the sharding of an inner ``nn.with_partitioning`` (or is
    # replicated, ``P()``, like any unannotated array).
    return meta.get_partition_spec(self.value)

  def add_axis(self, index: int, params: dict[str, Any]) -> PathProxGroup:
    if isinstance(self.value, meta.AxisMetadata):  # e.g. an inner nn.with_partitioning box
      return self.replace(value=self.value.add_axis(index, params))
    return self

  def remove_axis(self, index: int, params: dict[str, Any]) -> PathProxGroup:
    if isinstance(self.value, meta.AxisMetadata):
      return self.replace(value=self.value.remove_axis(index, params))
    return self


def with_group(
  init_fn: Callable[..., Any], group: int, role: Role, unit_axis: int | None = None
) -> Callable[..., Any]:
  """Wraps a linen initializer so that its parameter carries a PathProx group.

  Use it for the kernel *and* the bias of a layer, with the same group and role.
  It composes with ``nn.with_partitioning`` in either order.

  Args:
    init_fn: a Flax initializer, e.g. ``nn.initializers.lecun_normal()``.
    group: the unit group's position in the network (0, 1, 2, ... forward).
    role: ``"in"`` for the layer computing the units, ``"out"`` for the layer
      reading them (or ``"follow"``, see :class:`GroupSpec`).
    unit_axis: the parameter's axis of units (``None``: Dense/Conv layout).

  Returns:
    An initializer returning a :class:`PathProxGroup` box.

  Example:
    >>> import flax.linen as nn
    >>> import pathprox_jax
    >>> layer = nn.Dense(
    ...     16,
    ...     kernel_init=pathprox_jax.with_group(nn.initializers.lecun_normal(), 0, "in"),
    ...     bias_init=pathprox_jax.with_group(nn.initializers.zeros, 0, "in"))
  """
  spec = GroupSpec(group, role, unit_axis)

  @functools.wraps(init_fn)
  def wrapper(*args, **kwargs):
    return PathProxGroup(init_fn(*args, **kwargs), spec)

  return wrapper


def group_inits(
  group: int,
  role: Role,
  kernel_init: Callable[..., Any] = DEFAULT_KERNEL_INIT,
  bias_init: Callable[..., Any] = DEFAULT_BIAS_INIT,
  unit_axis: int | None = None,
) -> dict[str, Callable[..., Any]]:
  """The ``kernel_init`` and ``bias_init`` of one linen layer in one group.

  Args:
    group: the unit group's position in the network.
    role: ``"in"`` or ``"out"``, as in :func:`with_group`.
    kernel_init: the kernel initializer to wrap (linen's default by default).
    bias_init: the bias initializer to wrap (zeros by default).
    unit_axis: the kernel's axis of units (``None``: Dense/Conv layout). The
      bias's spec has none: its unit axis is the kernel's, counted from the end.

  Returns:
    Keyword arguments for ``nn.Dense``, ``nn.Conv`` or ``nn.DenseGeneral``.

  Example:
    >>> import flax.linen as nn
    >>> import pathprox_jax
    >>> hidden = nn.Dense(400, **pathprox_jax.group_inits(0, "in"))
    >>> readout = nn.Dense(10, **pathprox_jax.group_inits(0, "out"))
  """
  return {
    "kernel_init": with_group(kernel_init, group, role, unit_axis),
    "bias_init": with_group(bias_init, group, role),
  }


def batch_norm_inits(
  group: int,
  scale_init: Callable[..., Any] = DEFAULT_SCALE_INIT,
  bias_init: Callable[..., Any] = DEFAULT_BIAS_INIT,
) -> dict[str, Callable[..., Any]]:
  """The ``scale_init`` and ``bias_init`` of a linen ``nn.BatchNorm`` whose channels are units.

  Channel ``i`` of conv → BatchNorm → ReLU computes

  .. math::
    h_i = \\mathrm{relu}(\\gamma_i \\hat a_i + \\beta_i),

  with :math:`\\hat a_i` the conv's channel ``i`` normalised (by the batch's statistics
  or the running ones). :math:`h_i` is positively homogeneous of degree one in
  :math:`(\\gamma_i, \\beta_i)`, and the conv's filter only sets the direction of
  :math:`\\hat a_i`. So the scale :math:`\\gamma` is the units' "in" weights and
  :math:`\\beta` their "in" bias; the conv before follows (``group_inits(group,
  "follow")``: sliced with the units by :func:`pathprox_jax.compact`, never normalised),
  and the layer after reads the units (``group_inits(group, "out")``). The prox normalises
  :math:`|\\gamma_i|` to one (:math:`\\beta_i` by the same norm); the unit's path norm is
  :math:`|\\gamma_i| \\|v_i\\|`, or :math:`\\|(\\gamma_i, \\beta_i)\\| \\|v_i\\|` with
  ``regularize_bias``. For ``nnx.BatchNorm`` pass :func:`group_metadata` ``(group, "in")``
  as its ``scale_metadata`` and ``bias_metadata``.

  Args:
    group: the unit group's position in the network.
    scale_init: the scale initializer to wrap (ones by default, as ``nn.BatchNorm``'s).
    bias_init: the bias initializer to wrap (zeros by default).

  Returns:
    Keyword arguments for ``nn.BatchNorm``.

  Example:
    >>> import flax.linen as nn
    >>> import pathprox_jax
    >>> conv = nn.Conv(16, (3, 3), **pathprox_jax.group_inits(0, "follow"))
    >>> norm = nn.BatchNorm(use_running_average=False, **pathprox_jax.batch_norm_inits(0))
    >>> readout = nn.Conv(32, (3, 3), **pathprox_jax.group_inits(0, "out"))
  """
  return {
    "scale_init": with_group(scale_init, group, "in"),
    "bias_init": with_group(bias_init, group, "in"),
  }


def group_metadata(group: int, role: Role, unit_axis: int | None = None) -> dict[str, GroupSpec]:
  """NNX Variable metadata placing a parameter in a PathProx group.

  Args:
    group: the unit group's position in the network (0, 1, 2, ... forward).
    role: ``"in"`` or ``"out"``, as in :func:`with_group`.
    unit_axis: the parameter's axis of units (``None``: Dense/Conv layout, or
      for a bias the kernel's unit axis counted from the end). Give a kernel
      with ``unit_axis`` set and its bias separate dicts.

  Returns:
    A metadata dict for ``kernel_metadata=``/``bias_metadata=`` of
    ``nnx.Linear``/``nnx.Conv``, ``scale_metadata=``/``bias_metadata=`` of
    ``nnx.BatchNorm`` (role "in", see :func:`batch_norm_inits`), or for
    ``nnx.Param(value, **metadata)``.

  Example:
    >>> from flax import nnx
    >>> import pathprox_jax
    >>> meta = pathprox_jax.group_metadata(0, "in")
    >>> layer = nnx.Linear(4, 8, kernel_metadata=meta, bias_metadata=meta,
    ...                    rngs=nnx.Rngs(0))
  """
  return {NNX_METADATA_KEY: GroupSpec(group, role, unit_axis)}


def _spec_of(node: Any) -> GroupSpec | None:
  """The GroupSpec of a (possibly nested) linen box or an NNX Variable."""
  if isinstance(node, nnx.Variable):
    return node.get_metadata().get(NNX_METADATA_KEY)
  while isinstance(node, meta.AxisMetadata):
    if isinstance(node, PathProxGroup):
      return node.spec
    node = node.value
  return None


def group_spec(tree: Any) -> GroupSpecTree:
  """Reads PathProx annotations into a pytree of :class:`GroupSpec` or ``None``.

  Args:
    tree: boxed linen params or variables (e.g. ``model.init(...)`` or
      ``jax.eval_shape(model.init, ...)``), or an NNX ``State`` of Variables
      (``nnx.state(model, nnx.Param)``).

  Returns:
    A pytree with the structure of the *unboxed* params (for NNX: of the
    state's plain arrays) whose leaves are :class:`GroupSpec` or ``None``. Map
    it with the params first: ``jax.tree.map(f, params, spec)``.

  Raises:
    ValueError: if ``tree`` holds no annotation at all (unboxed params carry
      none: without this error PathProx would silently become plain SGD).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> import pathprox_jax
    >>> init = pathprox_jax.with_group(nn.initializers.lecun_normal(), 0, "in")
    >>> model = nn.Dense(3, kernel_init=init, use_bias=False)
    >>> boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 2)))
    >>> pathprox_jax.group_spec(boxed["params"])
    {'kernel': GroupSpec(group=0, role='in')}
  """
  specs = jax.tree.map(
    _spec_of,
    tree,
    is_leaf=params_lib.is_boxed,
  )
  if not jax.tree.leaves(specs):  # None is an empty subtree: no GroupSpec leaf at all
    raise ValueError(
      "pathprox_jax.group_spec found no PathProx group annotation in the tree: pass the boxed "
      "params of model.init or jax.eval_shape(model.init, ...) (before nn.meta.unbox) or "
      "nnx.state(model, nnx.Param), built with group_inits/with_group/group_metadata; or "
      "attach groups by parameter path with pathprox_jax.group_spec_from_paths."
    )
  return specs
