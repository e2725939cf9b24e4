"""VGG without batch norm, with PathProx group annotations: the paper's CIFAR-10 network.

Its convs pair into groups as a chain (:mod:`experiments.chain`). :data:`FAMILY` is what the
harness knows of it (config keys ``channels`` and ``pool_after``).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import ml_collections

import pathprox_jax as pp
from experiments.chain import compacted_widths, layer_group
from experiments.config_checks import check, check_widths, format_value
from experiments.family import Family


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
    >>> from experiments import vgg
    >>> model = vgg.VGG(channels=(64, 64, 128, 128), pool_after=(1, 3))
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


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses ``channels`` and ``pool_after`` that make no VGG."""
  widths = config.channels
  check(len(widths) % 2 == 0, f"--channels must list an even number of convs, got {len(widths)}")
  check(
    all(0 <= i < len(widths) for i in config.pool_after),
    f"--pool-after must be conv indices in [0, {len(widths) - 1}], got "
    f"{format_value(config.pool_after)}",
  )
  check_widths("channels", widths, least=1)


FAMILY = Family(
  create=lambda config: VGG(channels=tuple(config.channels), pool_after=tuple(config.pool_after)),
  check_config=check_config,
  widths_keys=("channels",),
  compacted_widths=lambda config, kept: {"channels": compacted_widths(config.channels, kept)},
)
