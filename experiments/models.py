"""The paper's networks with PathProx group annotations (MLPs, VGG19, a ViT), built from a config.

Every model-specific rule sits here: which model a config builds (:func:`create_model`), its
groups (:func:`group_spec`, :func:`group_names`) and its widths after compaction
(:func:`compacted_config`). Layers pair up into unit groups: layer ``2k`` computes group
``k``'s units (role "in") and layer ``2k + 1`` reads them (role "out"). An unpaired last
layer is in no group and gets plain weight decay.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

import pathprox_jax as pp


def pytorch_linear_init(fan_in: int) -> jax.nn.initializers.Initializer:
  """PyTorch's default ``nn.Linear`` initializer, for its kernel and its bias alike.

  .. math::
    \\theta \\sim \\mathcal{U}\\big(-1/\\sqrt{\\text{fan\\_in}},\\ 1/\\sqrt{\\text{fan\\_in}}\\big)

  The bias's own shape does not give the fan-in, hence the argument.

  Args:
    fan_in: the layer's number of inputs.

  Returns:
    An initializer ``(key, shape, dtype) -> array``.
  """
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def layer_group(index: int, num_layers: int) -> pp.GroupSpec | None:
  """The group of a layer: layers ``2k, 2k + 1`` form group ``k``; an unpaired last is in none."""
  if num_layers % 2 and index == num_layers - 1:
    return None
  return pp.GroupSpec(index // 2, "out" if index % 2 else "in")


def _linen_inits(spec: pp.GroupSpec | None, kernel_init, bias_init) -> dict[str, Any]:
  if spec is None:
    return {"kernel_init": kernel_init, "bias_init": bias_init}
  return pp.group_inits(spec.group, spec.role, kernel_init, bias_init)


def _check_mlp(features: Sequence[int], relu: Sequence[bool]) -> None:
  if len(features) != len(relu):
    raise ValueError(
      f"MLP needs one relu flag per layer: got {len(features)} features {tuple(features)} "
      f"and {len(relu)} relu flags {tuple(relu)}."
    )


class MLP(nn.Module):
  """A PathProx-annotated MLP on flattened inputs, with PyTorch's default init.

  Attributes:
    features: the output width of every Dense layer; the last is the number of classes.
    relu: whether a ReLU follows layer ``i``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import pathprox_jax as pp
    >>> from experiments import models
    >>> model = models.MLP((400, 400, 400, 400, 400, 10), (True, False) * 3)
    >>> boxed = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    >>> pp.group_spec(boxed)["Dense_5"]["kernel"]
    GroupSpec(group=2, role='out')
  """

  features: Sequence[int]
  relu: Sequence[bool]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_mlp(self.features, self.relu)
    x = x.reshape(x.shape[0], -1)
    for i, (width, relu) in enumerate(zip(self.features, self.relu, strict=True)):
      init = pytorch_linear_init(x.shape[-1])
      x = nn.Dense(width, **_linen_inits(layer_group(i, len(self.features)), init, init))(x)
      if relu:
        x = nn.relu(x)
    return x


def fold_linear_layers(model: MLP, params: Mapping[str, Any]) -> tuple[MLP, dict[str, Any]]:
  """An MLP's function with fewer products: its linear bottlenecks multiplied out.

  Two Dense layers with no ReLU between them are one affine map,

  .. math::
    (x K_i + b_i) K_{i+1} + b_{i+1} = x (K_i K_{i+1}) + (b_i K_{i+1} + b_{i+1}),

  and the product costs ``in · out`` multiply-adds per example against
  ``(in + out) · mid`` for the two layers. A layer is folded into the next when
  that is fewer: the factorised MLP's 400-400-400 bottlenecks cost half. The
  outputs equal ``model``'s to round-off. This is for inference only: training
  needs the factors, which are what PathProx regularises.

  Args:
    model: the MLP.
    params: its parameters, unboxed (leading batch axes are fine, as under ``vmap``).

  Returns:
    The folded MLP and its parameters (``Dense_0``, ``Dense_1``, ... renumbered).
  """
  _check_mlp(model.features, model.relu)
  folded = []  # (width, relu, params) of each layer of the folded MLP
  for i, (width, relu) in enumerate(zip(model.features, model.relu, strict=True)):
    layer = params[f"Dense_{i}"]
    if folded and not folded[-1][1]:
      mid, _, first = folded[-1]
      inputs = first["kernel"].shape[-2]
      if inputs * width < (inputs + width) * mid:
        folded.pop()
        bias = jnp.einsum("...m,...mo->...o", first["bias"], layer["kernel"]) + layer["bias"]
        layer = {"kernel": first["kernel"] @ layer["kernel"], "bias": bias}
    folded.append((width, relu, layer))
  net = MLP(features=tuple(w for w, _, _ in folded), relu=tuple(r for _, r, _ in folded))
  return net, {f"Dense_{i}": layer for i, (_, _, layer) in enumerate(folded)}


class NNXMLP(nnx.Module):
  """:class:`MLP` in NNX: same layers, init, annotations and parameter names.

  Layer ``i`` is the attribute ``Dense_{i}``, linen's automatic name, so a
  linen params dict is a pure dict of this model's ``nnx.Param`` state.

  Example:
    >>> from flax import nnx
    >>> import pathprox_jax as pp
    >>> from experiments import models
    >>> model = models.NNXMLP(784, (400, 400, 10), (True, True, False), rngs=nnx.Rngs(0))
    >>> pp.group_spec(nnx.state(model, nnx.Param))["Dense_0"]["bias"]
    GroupSpec(group=0, role='in')
  """

  def __init__(
    self, in_features: int, features: Sequence[int], relu: Sequence[bool], *, rngs: nnx.Rngs
  ):
    _check_mlp(features, relu)
    self.relu = tuple(relu)
    for i, (fan_in, width) in enumerate(zip((in_features, *features[:-1]), features, strict=True)):
      spec = layer_group(i, len(features))
      metadata = {} if spec is None else pp.group_metadata(spec.group, spec.role)
      init = pytorch_linear_init(fan_in)
      layer = nnx.Linear(
        fan_in,
        width,
        kernel_init=init,
        bias_init=init,
        kernel_metadata=metadata,
        bias_metadata=metadata,
        rngs=rngs,
      )
      setattr(self, f"Dense_{i}", layer)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for i, relu in enumerate(self.relu):
      x = getattr(self, f"Dense_{i}")(x)
      if relu:
        x = nnx.relu(x)
    return x


class VGG(nn.Module):
  """VGG without batch norm for 32x32 images, conv pairs annotated as PathProx groups.

  3x3 convs (bias, SAME padding, ReLU after each), 2x2 max-pools after the convs
  in ``pool_after``, a 2x2 average pool, then an ungrouped Dense classifier.
  Every layer, the classifier included, is initialised as in the paper's code:
  Kaiming-normal kernels (fan-in, gain √2) and zero biases. Convs ``2k`` and
  ``2k + 1`` form group ``k``. VGG19's widths are in ``configs/common.py``.

  Attributes:
    channels: the output channels of every conv; an even number of convs.
    pool_after: the conv indices followed by a 2x2 max-pool.
    num_classes: the classifier's outputs.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from experiments import models
    >>> model = models.VGG(channels=(64, 64, 128, 128), pool_after=(1, 3))
    >>> shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    >>> shapes["params"]["Dense_0"]["kernel"].shape
    (2048, 10)
  """

  channels: Sequence[int]
  pool_after: Sequence[int]
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if len(self.channels) % 2:
      raise ValueError(
        f"VGG pairs its convs into PathProx groups, so it needs an even number of convs; "
        f"got {len(self.channels)} channels {tuple(self.channels)}."
      )
    kaiming = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
    for i, width in enumerate(self.channels):
      spec = layer_group(i, len(self.channels))
      inits = pp.group_inits(spec.group, spec.role, kaiming)
      x = nn.Conv(width, (3, 3), padding="SAME", **inits)(x)
      x = nn.relu(x)
      if i in self.pool_after:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes, kernel_init=kaiming, bias_init=nn.initializers.zeros)(x)


def compacted_widths(widths: Sequence[int], kept: Mapping[int, pp.KeptUnits]) -> tuple[int, ...]:
  """The layer widths of the model that takes :func:`pathprox_jax.compact`'s smaller params.

  Group ``k``'s units are the outputs of layer ``2k`` (an MLP's ``features``, a
  VGG's ``channels``), so that width becomes ``kept[k].width``.

  Args:
    widths: the original model's ``features`` or ``channels``.
    kept: the second output of :func:`pathprox_jax.compact`.

  Returns:
    The new widths.

  Raises:
    ValueError: if a group's original width is not that of layer ``2k``.

  Example:
    >>> import numpy as np
    >>> import pathprox_jax as pp
    >>> from experiments import models
    >>> kept = {0: pp.KeptUnits(np.array([0, 2]), 4), 1: pp.KeptUnits(np.array([1]), 4)}
    >>> models.compacted_widths((4, 4, 4, 3), kept)
    (2, 4, 1, 3)
  """
  new = list(widths)
  for group, units in kept.items():
    if 2 * group >= len(widths) or widths[2 * group] != units.original_width:
      raise ValueError(
        f"Group {group} had {units.original_width} units but layer {2 * group} of "
        f"{tuple(widths)} is not that wide: kept is from another model."
      )
    new[2 * group] = units.width
  return tuple(new)


def vit_groups(block: int) -> tuple[int, int]:
  """The PathProx groups of ViT block ``block``: ``(its heads, its FFN neurons)``."""
  return 2 * block, 2 * block + 1


def vit_group_names(num_blocks: int) -> dict[int, str]:
  """What each group of a :class:`ViT` with ``num_blocks`` blocks holds, by group number.

  Example:
    >>> from experiments import models
    >>> models.vit_group_names(2)
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
    >>> from experiments import models
    >>> model = models.ViT(num_heads=(4, 4), mlp_dim=(128, 128), width=64, head_dim=16)
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
    >>> from experiments import models
    >>> kept = {0: pp.KeptUnits(np.array([], int), 4), 1: pp.KeptUnits(np.array([5, 9]), 16)}
    >>> models.compacted_vit_widths((4, 4), (16, 16), kept)
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


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
  """The experiment's model, with PathProx group annotations."""
  if config.model == "mlp":
    return MLP(features=tuple(config.features), relu=tuple(config.relu))
  if config.model == "vit":
    return ViT(
      num_heads=tuple(config.num_heads),
      mlp_dim=tuple(config.mlp_dim),
      width=config.width,
      head_dim=config.head_dim,
      patch_size=config.patch_size,
    )
  return VGG(channels=tuple(config.channels), pool_after=tuple(config.pool_after))


def group_names(config: ml_collections.ConfigDict) -> dict[int, str]:
  """What each PathProx group holds, by group number ({}: the numbers say enough)."""
  return vit_group_names(len(config.num_heads)) if config.model == "vit" else {}


def widths_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The config keys of the layer widths that compaction changes."""
  return {"mlp": ("features",), "vgg": ("channels",), "vit": ("num_heads", "mlp_dim")}[config.model]


def compacted_config(
  config: ml_collections.ConfigDict, kept: Mapping[int, pp.KeptUnits]
) -> ml_collections.ConfigDict:
  """The config of the model that takes :func:`pathprox_jax.compact`'s smaller params."""
  small = config.copy_and_resolve_references()
  small.group_source = "annotations"  # discovery takes a block's single head for its features
  if config.model == "vit":
    small.num_heads, small.mlp_dim = compacted_vit_widths(config.num_heads, config.mlp_dim, kept)
  else:
    (key,) = widths_keys(config)
    small[key] = compacted_widths(config[key], kept)
  return small
