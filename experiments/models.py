"""Which network a config builds, and what compaction makes of it: the model families' registry.

Each family has its module: :mod:`experiments.mlp` (the MLP, linen and NNX),
:mod:`experiments.vgg` and :mod:`experiments.vit`. This module picks the family of a config
(:func:`create_model`), names its groups (:func:`group_names`) and gives its widths after
compaction (:func:`compacted_config`). The families' public names are handed on here too
(``models.MLP``, ``models.ViT``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import ml_collections

import pathprox_jax as pp
from experiments.chain import compacted_widths
from experiments.mlp import MLP, NNXMLP, fold_linear_layers
from experiments.vgg import VGG
from experiments.vit import ViT, compacted_vit_widths, vit_group_names, vit_groups

__all__ = [
  "MLP",
  "NNXMLP",
  "VGG",
  "ViT",
  "compacted_config",
  "compacted_vit_widths",
  "compacted_widths",
  "create_model",
  "fold_linear_layers",
  "group_names",
  "vit_group_names",
  "vit_groups",
  "widths_keys",
]


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
