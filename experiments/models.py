"""The model families' registry: which family a config's ``model`` names, and what it reads.

A family (:class:`experiments.family.Family`) is everything the harness knows of one kind of
network. Each lives in its module, ``experiments/<name>.py``, as ``FAMILY``:
:mod:`experiments.mlp`, :mod:`experiments.vgg`, :mod:`experiments.vit` and
:mod:`experiments.resnet`. Adding a family
means writing its module, its config and its line in :data:`CONFIG_KEYS`; no other module
of the harness changes.

This module imports no JAX, and imports a family's module only when :func:`family` first asks
for it: ``--help`` reads :data:`CONFIG_KEYS` to hide the other families' keys. The families'
public names are handed on here too (``models.MLP``, ``models.ViT``, ...), loaded on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import ml_collections

from configs import ConfigError

if TYPE_CHECKING:
  import flax.linen as nn

  import pathprox_jax as pp
  from experiments.family import Family

# The families by name (a config's ``model``), each with the config keys that only it reads:
# the others' are hidden from --help, refused as flags and left out of config.json.
CONFIG_KEYS = {
  "mlp": ("features", "relu"),
  "vgg": ("channels", "pool_after"),
  "vit": ("num_heads", "mlp_dim", "width", "head_dim", "patch_size"),
  "resnet": ("stage_widths", "blocks", "inner_widths"),
}

# Names handed on from the families' modules: {name: module}.
_HANDED_ON = {
  "MLP": "mlp",
  "NNXMLP": "mlp",
  "fold_linear_layers": "mlp",
  "VGG": "vgg",
  "compacted_widths": "chain",
  "ViT": "vit",
  "compacted_vit_widths": "vit",
  "vit_group_names": "vit",
  "vit_groups": "vit",
  "ResNet": "resnet",
  "resnet_group_names": "resnet",
}

__all__ = [
  "CONFIG_KEYS",
  "compacted_config",
  "create_model",
  "family",
  "group_names",
  "model_keys",
  "widths_keys",
  *_HANDED_ON,
]


def family(config: ml_collections.ConfigDict) -> Family:
  """The family of the config's ``model`` (its module's ``FAMILY``).

  Raises:
    ConfigError: no family has that name.
  """
  name = config.model
  if name not in CONFIG_KEYS:
    raise ConfigError(f"--model must be one of {tuple(CONFIG_KEYS)}, got {name!r}")
  return importlib.import_module(f"experiments.{name}").FAMILY


def model_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The keys that say which model a config builds: ``model`` and its family's keys."""
  return ("model", *CONFIG_KEYS[config.model])


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
  """The experiment's model, with PathProx group annotations."""
  return family(config).create(config)


def group_names(config: ml_collections.ConfigDict) -> dict[int, str]:
  """What each PathProx group holds, by group number ({}: the numbers say enough)."""
  return family(config).group_names(config)


def widths_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The config keys of the layer widths that compaction changes."""
  return family(config).widths_keys


def compacted_config(
  config: ml_collections.ConfigDict, kept: Mapping[int, pp.KeptUnits]
) -> ml_collections.ConfigDict:
  """The config of the model that takes :func:`pathprox_jax.compact`'s smaller params."""
  small = config.copy_and_resolve_references()
  small.group_source = "annotations"  # discovery takes a block's single head for its features
  small.update(family(config).compacted_widths(config, kept))
  return small


def __getattr__(name: str) -> Any:
  """A family module's public name, imported on first use (PEP 562)."""
  if name not in _HANDED_ON:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  value = getattr(importlib.import_module(f"experiments.{_HANDED_ON[name]}"), name)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(__all__)
