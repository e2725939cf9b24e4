"""A ResNet-20-style network with BatchNorm whose blocks' inner channels are PathProx units.

Channel ``i`` of a basic block's conv1 → BatchNorm → ReLU → conv2 is a unit: the BatchNorm's
scale and bias are its "in" weights (:func:`pathprox_jax.batch_norm_inits`), conv1 follows
it and conv2's input channel ``i`` is its "out" weights. The stem and the block outputs,
added to the skip, are in no group. :data:`FAMILY` is what the harness knows of it (config
keys ``stage_widths``, ``blocks`` and ``inner_widths``).

The BatchNorms normalise by the batch's statistics while ``batch_stats`` is mutable
(training: ``model.apply(variables, x, mutable=["batch_stats"])``), by their running
averages otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

import pathprox_jax as pp
from experiments.config_checks import check, check_widths, format_value
from experiments.family import Family
from experiments.parallel import AXIS

BATCH_NORM_MOMENTUM = 0.9  # of the running averages: short runs need them to follow quickly


def resnet_group_names(stages: int, blocks: int) -> dict[int, str]:
  """What each group of a :class:`ResNet` holds: block ``b`` (counted over the stages) is group
  ``b``.

  Example:
    >>> from experiments import resnet
    >>> resnet.resnet_group_names(2, 1)
    {0: 'stage 0 block 0 inner channels', 1: 'stage 1 block 0 inner channels'}
  """
  return {
    s * blocks + j: f"stage {s} block {j} inner channels"
    for s in range(stages)
    for j in range(blocks)
  }


class BasicBlock(nn.Module):
  """conv3x3 → BN → ReLU → conv3x3 → BN, plus the skip (a 1x1 conv and BN where the stride or
  width changes), then ReLU. The inner channels are group ``group``; with none left the block
  adds norm2's shift of zeros to its skip."""

  width: int
  inner: int
  strides: int
  group: int
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    training = self.is_mutable_collection("batch_stats")
    norm = dict(
      use_running_average=not training, momentum=BATCH_NORM_MOMENTUM, axis_name=self.axis_name
    )
    kaiming = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
    strides = (self.strides, self.strides)
    skip = x
    if self.strides != 1 or x.shape[-1] != self.width:
      skip = nn.Conv(
        self.width, (1, 1), strides, use_bias=False, kernel_init=kaiming, name="skip_conv"
      )(x)
      skip = nn.BatchNorm(**norm, name="skip_norm")(skip)
    if self.inner:
      follow = pp.group_inits(self.group, "follow", kaiming)
      out = pp.group_inits(self.group, "out", kaiming)
      y = nn.Conv(self.inner, (3, 3), strides, use_bias=False, name="conv1", **follow)(x)
      y = nn.BatchNorm(**norm, name="norm1", **pp.batch_norm_inits(self.group))(y)
      y = nn.Conv(self.width, (3, 3), use_bias=False, name="conv2", **out)(nn.relu(y))
    else:  # a compacted block with no unit left: conv2 adds zeros, which norm2 shifts
      y = jnp.zeros_like(skip)
    y = nn.BatchNorm(**norm, name="norm2")(y)
    return nn.relu(y + skip)


class ResNet(nn.Module):
  """A ResNet-20-style network for small images, its blocks' inner channels PathProx units.

  A stem (3x3 conv, BN, ReLU) to ``stage_widths[0]`` channels; ``len(stage_widths)`` stages of
  ``blocks`` basic blocks (:class:`BasicBlock`), each stage after the first halving the
  resolution in its first block; global average pooling and a Dense classifier. Block ``b``
  (counted over the stages) has ``inner_widths[b]`` inner channels, group ``b``. ResNet-20 is
  ``stage_widths=(16, 32, 64)``, ``blocks=3`` and inner widths equal to their stage's.

  Attributes:
    stage_widths: each stage's output channels.
    blocks: basic blocks per stage.
    inner_widths: each block's inner channels (``len(stage_widths) * blocks`` of them; a
      compacted model's may be smaller, or 0).
    num_classes: the classifier's outputs.
    axis_name: the data-parallel axis over which the BatchNorms average the batch statistics in
      training (the global batch's, whatever the number of devices); None: each device's own.
      Training must then run inside ``shard_map`` or ``pmap`` over that axis.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from experiments import resnet
    >>> model = resnet.ResNet((4, 8), blocks=1, inner_widths=(4, 8))
    >>> shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    >>> shapes["batch_stats"]["block_1"]["norm1"]["mean"].shape
    (8,)
  """

  stage_widths: Sequence[int]
  blocks: int
  inner_widths: Sequence[int]
  num_classes: int = 10
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if len(self.inner_widths) != len(self.stage_widths) * self.blocks:
      raise ValueError(
        f"ResNet needs one inner width per block: {len(self.stage_widths)} stages of "
        f"{self.blocks} blocks, got inner_widths {tuple(self.inner_widths)}."
      )
    training = self.is_mutable_collection("batch_stats")
    kaiming = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
    x = nn.Conv(self.stage_widths[0], (3, 3), use_bias=False, kernel_init=kaiming, name="stem")(x)
    x = nn.BatchNorm(
      not training, momentum=BATCH_NORM_MOMENTUM, axis_name=self.axis_name, name="stem_norm"
    )(x)
    x = nn.relu(x)
    for s, width in enumerate(self.stage_widths):
      for j in range(self.blocks):
        b = s * self.blocks + j
        strides = 2 if s > 0 and j == 0 else 1
        x = BasicBlock(width, self.inner_widths[b], strides, b, self.axis_name, name=f"block_{b}")(
          x
        )
    return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses ``stage_widths``, ``blocks`` and ``inner_widths`` that make no ResNet."""
  check(config.blocks >= 1, f"--blocks must be >= 1, got {config.blocks}")
  check_widths("stage_widths", config.stage_widths, least=1)
  expected = len(config.stage_widths) * config.blocks
  check(
    len(config.inner_widths) == expected,
    f"--inner-widths must list one width per block ({len(config.stage_widths)} stages of "
    f"{config.blocks} blocks: {expected}), got {format_value(config.inner_widths)}",
  )
  # A block with no inner channel left is still a block (a compact model's): its skip
  # carries the signal past it.
  check_widths("inner_widths", config.inner_widths, least=0)
  check(
    not config.balance,
    "--balance true: a ResNet's blocks are joined by skip connections (and their units are "
    "BatchNorm channels), so its groups form no chain to balance; pass --balance false",
  )


def create(config: ml_collections.ConfigDict) -> ResNet:
  """The config's ResNet."""
  return ResNet(
    stage_widths=tuple(config.stage_widths),
    blocks=config.blocks,
    inner_widths=tuple(config.inner_widths),
    axis_name=AXIS,  # the training step's: batch statistics of the global batch
  )


def compacted_widths(
  config: ml_collections.ConfigDict, kept: Mapping[int, pp.KeptUnits]
) -> dict[str, tuple[int, ...]]:
  """The ``inner_widths`` of the ResNet that takes :func:`pathprox_jax.compact`'s smaller
  variables: block ``b``'s becomes ``kept[b].width``.

  Raises:
    ValueError: if a group's original width is not that of its block.
  """
  inner = list(config.inner_widths)
  for group, units in kept.items():
    if group >= len(inner) or inner[group] != units.original_width:
      raise ValueError(
        f"Group {group} had {units.original_width} units but block {group} of inner widths "
        f"{tuple(inner)} has not: kept is from another model."
      )
    inner[group] = units.width
  return {"inner_widths": tuple(inner)}


FAMILY = Family(
  create=create,
  check_config=check_config,
  widths_keys=("inner_widths",),
  compacted_widths=compacted_widths,
  group_names=lambda config: resnet_group_names(len(config.stage_widths), config.blocks),
  groups_may_be_empty=True,
)
