"""Groups attached by parameter path: for modules whose initialisers cannot be annotated.

Flax's attention modules (``nn.MultiHeadDotProductAttention``, ``nnx.MultiHeadAttention``)
share one ``kernel_init`` between the query, key and value projections, so an init annotation
cannot single out the value projection. Path rules attach :class:`GroupSpec` leaves to the
parameters whose "/"-joined path matches a regular expression, without touching the model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import jax

from pathprox_jax._src import groups as groups_lib
from pathprox_jax._src import params as params_lib
from pathprox_jax._src.annotations import GroupSpec, GroupSpecTree

SpecOrRule: TypeAlias = GroupSpec | Callable[[re.Match[str]], GroupSpec | None]
PathRule: TypeAlias = tuple[str | re.Pattern[str], SpecOrRule]


def group_spec_from_paths(
  params: Any, rules: Sequence[PathRule], *, base: GroupSpecTree | None = None
) -> GroupSpecTree:
  """Builds the spec tree from rules on parameter paths.

  A leaf's path is its keys joined by "/", e.g.
  ``"Block_0/MultiHeadDotProductAttention_0/value/kernel"`` (for an NNX
  ``State``: ``"blocks/0/attn/value/kernel"``). Each rule is
  ``(regex, spec)``: the first rule whose regex matches the *whole* path
  (``re.fullmatch``) decides, and ``spec`` is a :class:`GroupSpec` or a
  function of the match returning one (or ``None``: the leaf gets no spec from
  the rules).

  Args:
    params: unboxed params, the (boxed) output of ``jax.eval_shape(model.init,
      ...)`` or ``model.init``, or an NNX ``State`` (``nnx.state(model,
      nnx.Param)``).
    rules: a sequence of ``(regex, GroupSpec | Callable[[re.Match], GroupSpec |
      None])``, e.g. :func:`attention_head_rules` plus your own.
    base: a spec tree to overlay, e.g. ``pathprox_jax.group_spec(boxed)`` for
      the layers annotated at init. A leaf given a spec by both is an error.

  Returns:
    A spec tree with the structure of the unboxed params (a ``State`` for NNX).

  Raises:
    ValueError: if a leaf gets a spec from both ``base`` and the rules, or no
      rule matches any path (naming a few paths, so a typo shows).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> import pathprox_jax as pp
    >>> model = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)
    >>> abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 3, 4)))
    >>> spec = pp.group_spec_from_paths(abstract["params"], pp.attention_head_rules("", 0))
    >>> spec["value"]["kernel"], spec["out"]["bias"]
    (GroupSpec(group=0, role='in', unit_axis=1), GroupSpec(group=0, role='out'))
  """
  compiled = [(re.compile(pattern), spec) for pattern, spec in rules]
  matched = []

  def from_rules(path: tuple[Any, ...], _: Any) -> GroupSpec | None:
    text = params_lib.path_string(path)
    for pattern, spec in compiled:
      match = pattern.fullmatch(text)
      if match:
        matched.append(text)
        return spec(match) if callable(spec) else spec
    return None

  ruled = jax.tree_util.tree_map_with_path(from_rules, params, is_leaf=params_lib.is_boxed)
  if not matched:
    paths = [params_lib.path_string(p) for p, _ in jax.tree_util.tree_leaves_with_path(ruled)]
    raise ValueError(
      f"pathprox_jax.group_spec_from_paths: no rule matched any parameter path; the paths "
      f"look like {paths[:4] or 'nothing (empty params)'} and the rules are "
      f"{[pattern.pattern for pattern, _ in compiled]}."
    )
  if base is None:
    return ruled
  is_spec = lambda x: x is None or isinstance(x, GroupSpec)  # noqa: E731
  keyed = jax.tree_util.tree_leaves_with_path(ruled, is_leaf=is_spec)
  shapes = jax.tree.map(lambda _: 0, ruled, is_leaf=is_spec)  # the params' structure, leaves 0
  base_leaves = groups_lib.spec_leaves(shapes, base)
  merged = []
  for (path, spec), base_spec in zip(keyed, base_leaves, strict=True):
    if spec is not None and base_spec is not None:
      raise ValueError(
        f"pathprox_jax.group_spec_from_paths: {params_lib.path_string(path)} has {base_spec} "
        f"from base and {spec} from the rules; give each parameter one spec."
      )
    merged.append(base_spec if spec is None else spec)
  return jax.tree.unflatten(jax.tree.structure(ruled, is_leaf=is_spec), merged)


def attention_head_rules(
  module_pattern: str, group: int | Callable[[re.Match[str]], int]
) -> list[PathRule]:
  """Path rules making each head of a Flax attention module a PathProx unit.

  For ``nn.MultiHeadDotProductAttention`` and ``nnx.MultiHeadAttention``
  (sub-modules ``query``, ``key``, ``value``, ``out``), head ``h``'s output is
  :math:`\\mathrm{softmax}(Q_h K_h^\\top) X V_h O_h`, unchanged by
  :math:`V_h \\to s V_h, O_h \\to O_h / s`: the value kernel
  ``[d_model, heads, head_dim]`` and its bias ``[heads, head_dim]`` are the
  "in" side (heads on axes 1 and 0), the out kernel ``[heads, head_dim,
  d_model]`` the "out" side (heads on axis 0) and the out bias is the out
  layer's bias. The query and key kernels and biases are "follow" parameters:
  ordinary weight decay, removed with their head by
  :func:`pathprox_jax.compact`. (Q/K pairs share the rescaling symmetry, but
  zeroing one gives uniform attention, not a removed head: they are left to
  weight decay.)

  Args:
    module_pattern: a regex matching the attention module's path, e.g.
      ``r"Block_(\\d+)/MultiHeadDotProductAttention_0"`` (``""`` for a
      top-level attention module's own params).
    group: the group index, or a function of the rule's match (whose groups
      are ``module_pattern``'s) returning it, e.g. ``lambda m: 2 * int(m[1])``.

  Returns:
    Rules for :func:`group_spec_from_paths`.
  """
  prefix = f"(?:{module_pattern})/" if module_pattern else ""
  layout = {
    "value/kernel": ("in", 1),
    "value/bias": ("in", 0),
    "out/kernel": ("out", 0),
    "out/bias": ("out", None),
    "query/kernel": ("follow", 1),
    "query/bias": ("follow", 0),
    "key/kernel": ("follow", 1),
    "key/bias": ("follow", 0),
  }

  def rule(role, unit_axis):
    def spec(match: re.Match[str]) -> GroupSpec:
      return GroupSpec(group(match) if callable(group) else group, role, unit_axis)

    return spec

  return [(prefix + re.escape(name), rule(*where)) for name, where in layout.items()]
