"""A small Vision Transformer whose attention heads and FFN neurons are PathProx units.

Block ``b``'s heads are group ``2b`` and its FFN neurons group ``2b + 1``
(:func:`vit_groups`); a compacted ViT may keep no head or no neuron in a block, whose
residual connection then carries the signal past it. :data:`FAMILY` is what the harness knows
of it (config keys ``num_heads``, ``mlp_dim``, ``width``, ``head_dim`` and ``patch_size``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

import pathprox_jax as pp
from experiments.config_checks import check, check_widths, flag, format_value
from experiments.family import Family


def vit_groups(block: int) -> tuple[int, int]:
  """The PathProx groups of ViT block ``block``: ``(its heads, its FFN neurons)``."""
  return 2 * block, 2 * block + 1


def vit_group_names(num_blocks: int) -> dict[int, str]:
  """What each group of a :class:`ViT` with ``num_blocks`` blocks holds, by group number.

  Example:
    >>> from experiments import vit
    >>> vit.vit_group_names(2)
    {0: 'block 0 heads', 1: 'block 0 neurons', 2: 'block 1 heads', 3: 'block 1 neurons'}
  """
  names = {}
  for block in range(num_blocks):
    heads, neurons = vit_groups(block)
    names[heads], names[neurons] = f"block {block} heads", f"block {block} neurons"
  return names


class OutBias(nn.Module):
  """What a layer with no units left computes: its bias, the same for every token."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    bias = self.param("bias", nn.initializers.zeros_init(), (x.shape[-1],), x.dtype)
    return jnp.broadcast_to(bias, x.shape)


class NoHeads(nn.Module):
  """An attention layer whose heads were all removed: only its out projection's bias is left."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return OutBias(name="out")(x)


class ViTBlock(nn.Module):
  """A pre-LayerNorm transformer block: ``x + attention(LN(x))``, then ``x + FFN(LN(x))``.

  Each head of flax's ``nn.MultiHeadDotProductAttention`` and each ReLU neuron
  of the FFN is a PathProx unit. The FFN's Dense pair carries its group in its
  init annotations; the heads' groups are attached by path
  (:meth:`ViT.group_spec`), since query, key and value share one ``kernel_init``.

  Attributes:
    num_heads: attention heads (0: the attention adds only its out bias).
    head_dim: features per head.
    mlp_dim: FFN neurons (0: the FFN adds only its out bias).
    group: the FFN neurons' PathProx group.
  """

  num_heads: int
  head_dim: int
  mlp_dim: int
  group: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    xavier = nn.initializers.xavier_uniform()
    h = nn.LayerNorm(name="norm_attention")(x)
    if self.num_heads:
      attention = nn.MultiHeadDotProductAttention(
        self.num_heads, qkv_features=self.num_heads * self.head_dim, kernel_init=xavier,
        name="attention",
      )  # fmt: skip
      x = x + attention(h)
    else:
      x = x + NoHeads(name="attention")(h)
    h = nn.LayerNorm(name="norm_ffn")(x)
    if self.mlp_dim:
      h = nn.relu(
        nn.Dense(self.mlp_dim, name="ffn_in", **pp.group_inits(self.group, "in", xavier))(h)
      )
      return x + nn.Dense(width, name="ffn_out", **pp.group_inits(self.group, "out", xavier))(h)
    return x + OutBias(name="ffn_out")(h)


class ViT(nn.Module):
  """A small Vision Transformer whose attention heads and FFN neurons are PathProx units.

  Non-overlapping ``patch_size`` patches, linearly embedded, plus a class token
  and learned position embeddings; pre-LayerNorm blocks with ReLU FFNs; a final
  LayerNorm and a linear classifier on the class token. Block ``b``'s heads are
  group ``2b`` and its FFN neurons group ``2b + 1`` (:func:`vit_groups`). The
  blocks are joined by residual connections, so the groups form no chain: train
  with ``balance=False``.

  Attributes:
    num_heads: the heads of each block (a compacted model may have fewer, or 0).
    mlp_dim: the FFN neurons of each block (likewise).
    width: the token width (d_model).
    head_dim: features per head.
    patch_size: the side of the square patches.
    num_classes: the classifier's outputs.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from experiments import vit
    >>> model = vit.ViT(num_heads=(4, 4), mlp_dim=(128, 128), width=64, head_dim=16)
    >>> shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    >>> shapes["params"]["block_1"]["attention"]["value"]["kernel"].shape
    (64, 4, 16)
  """

  num_heads: Sequence[int]
  mlp_dim: Sequence[int]
  width: int = 64
  head_dim: int = 16
  patch_size: int = 7
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if len(self.num_heads) != len(self.mlp_dim):
      raise ValueError(
        f"ViT needs num_heads and mlp_dim for every block: got {tuple(self.num_heads)} and "
        f"{tuple(self.mlp_dim)}."
      )
    batch, height, width, channels = x.shape
    p = self.patch_size
    if height % p or width % p:
      raise ValueError(f"ViT patch size {p} does not divide the {height}x{width} images.")
    patches = x.reshape(batch, height // p, p, width // p, p, channels).swapaxes(2, 3)
    tokens = nn.Dense(self.width, name="embedding")(patches.reshape(batch, -1, p * p * channels))
    cls = self.param("cls", nn.initializers.zeros_init(), (1, 1, self.width))
    tokens = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, self.width)), tokens], axis=1)
    position = self.param(
      "position", nn.initializers.normal(0.02), (1, tokens.shape[1], self.width)
    )
    tokens = tokens + position
    for b, (heads, neurons) in enumerate(zip(self.num_heads, self.mlp_dim, strict=True)):
      block = ViTBlock(heads, self.head_dim, neurons, vit_groups(b)[1], name=f"block_{b}")
      tokens = block(tokens)
    cls = nn.LayerNorm(name="norm")(tokens[:, 0])
    return nn.Dense(self.num_classes, name="head")(cls)

  def group_spec(self, boxed: Any) -> Any:
    """The PathProx spec: the FFN neurons' init annotations plus every block's heads.

    Args:
      boxed: this model's boxed params (``model.init(...)["params"]`` or its ``eval_shape``).

    Returns:
      The spec pytree: block ``b``'s heads in group ``2b`` (value projection "in", out
      projection "out", query and key removed with their head by :func:`pathprox_jax.compact`),
      its FFN neurons in group ``2b + 1`` (where it has any), everything else ``None``.
    """
    base = pp.group_spec(boxed) if any(self.mlp_dim) else None  # a compact ViT may have none
    with_heads = "|".join(str(b) for b, heads in enumerate(self.num_heads) if heads)
    if not with_heads:  # every block lost its heads
      return base
    rules = pp.attention_head_rules(
      rf"block_({with_heads})/attention", lambda match: vit_groups(int(match[1]))[0]
    )
    return pp.group_spec_from_paths(nn.meta.unbox(boxed), rules, base=base)


def compacted_vit_widths(
  num_heads: Sequence[int], mlp_dim: Sequence[int], kept: Mapping[int, pp.KeptUnits]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """The ``num_heads`` and ``mlp_dim`` of the :class:`ViT` that takes compacted params.

  Args:
    num_heads: the original model's heads per block.
    mlp_dim: its FFN neurons per block.
    kept: the second output of :func:`pathprox_jax.compact` (groups as in :func:`vit_groups`).

  Returns:
    The new ``(num_heads, mlp_dim)``.

  Raises:
    ValueError: if a group's original width is not that of its block.

  Example:
    >>> import numpy as np
    >>> import pathprox_jax as pp
    >>> from experiments import vit
    >>> kept = {0: pp.KeptUnits(np.array([], int), 4), 1: pp.KeptUnits(np.array([5, 9]), 16)}
    >>> vit.compacted_vit_widths((4, 4), (16, 16), kept)
    ((0, 4), (2, 16))
  """
  widths = (list(num_heads), list(mlp_dim))
  for group, units in kept.items():
    block, kind = divmod(group, 2)
    if block >= len(widths[kind]) or widths[kind][block] != units.original_width:
      raise ValueError(
        f"Group {group} had {units.original_width} units but block {block} of a ViT with "
        f"num_heads {tuple(num_heads)} and mlp_dim {tuple(mlp_dim)} has not: kept is from "
        "another model."
      )
    widths[kind][block] = units.width
  return tuple(widths[0]), tuple(widths[1])


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses ViT settings that make no ViT or no PathProx unit, and layer balance."""
  check(
    len(config.num_heads) == len(config.mlp_dim),
    f"--num-heads has {len(config.num_heads)} blocks but --mlp-dim has {len(config.mlp_dim)}",
  )
  for key in ("width", "head_dim", "patch_size"):
    check(config[key] >= 1, f"{flag(key)} must be >= 1, got {config[key]}")
  check(
    any(config.num_heads) or any(config.mlp_dim),
    f"--num-heads {format_value(config.num_heads)} and --mlp-dim "
    f"{format_value(config.mlp_dim)} leave the ViT no head or neuron, so it has no PathProx "
    "unit; keep at least one",
  )
  check(
    not config.balance,
    "--balance true: a ViT's blocks are joined by residual connections, so its groups form no "
    "chain to balance; pass --balance false",
  )
  # A ViT block without heads or neurons is still a block (a pruned or compact model's):
  # its residual connection carries the signal past it.
  check_widths("num_heads", (*config.num_heads, *config.mlp_dim), least=0)


def create(config: ml_collections.ConfigDict) -> ViT:
  """The config's ViT."""
  return ViT(
    num_heads=tuple(config.num_heads),
    mlp_dim=tuple(config.mlp_dim),
    width=config.width,
    head_dim=config.head_dim,
    patch_size=config.patch_size,
  )


def compacted_config_widths(
  config: ml_collections.ConfigDict, kept: Mapping[int, pp.KeptUnits]
) -> dict[str, tuple[int, ...]]:
  """The ``num_heads`` and ``mlp_dim`` of the compacted ViT (:func:`compacted_vit_widths`)."""
  num_heads, mlp_dim = compacted_vit_widths(config.num_heads, config.mlp_dim, kept)
  return {"num_heads": num_heads, "mlp_dim": mlp_dim}


FAMILY = Family(
  create=create,
  check_config=check_config,
  widths_keys=("num_heads", "mlp_dim"),
  compacted_widths=compacted_config_widths,
  group_spec=lambda model, boxed: model.group_spec(boxed),
  group_names=lambda config: vit_group_names(len(config.num_heads)),
  groups_may_be_empty=True,
)
