"""What the harness knows of one kind of network: a model family (:class:`Family`).

Each family's module (``experiments/<name>.py``) holds its ``FAMILY``, and
:mod:`experiments.models` finds it by the config's ``model``. The harness's other modules ask
the family and never test which model they have. This module imports no JAX.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import ml_collections

import pathprox_jax as pp

if TYPE_CHECKING:
  import flax.linen as nn


def annotated_groups(model: nn.Module, boxed: Any) -> Any:
  """The groups of a model whose params carry them (``pp.group_spec`` of its boxed params)."""
  del model  # the annotations are in ``boxed``
  return pp.group_spec(boxed)


def no_group_names(config: ml_collections.ConfigDict) -> dict[int, str]:
  """No names: the group numbers say enough (a chain's group ``k`` is layers ``2k, 2k + 1``)."""
  del config
  return {}


def unfolded(model: nn.Module, params: Any) -> tuple[nn.Module, Any]:
  """The model as it is: nothing to fold for evaluation."""
  return model, params


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family: how the harness builds, groups, checks, evaluates and compacts its models.

  Attributes:
    create: the model of a config, with its PathProx groups annotated.
    check_config: raises :class:`configs.ConfigError` naming the first unusable value of the
      family's config keys (those of :data:`experiments.models.CONFIG_KEYS`), as the
      command line's one-line error.
    widths_keys: the config keys of the widths that compaction changes (``("features",)``).
    compacted_widths: ``(config, kept) -> {key: widths}``, the values of ``widths_keys`` for
      the model that takes :func:`pathprox_jax.compact`'s smaller params (``kept`` is its
      second output).
    group_spec: ``(model, boxed) -> spec``, the model's PathProx groups from its boxed params
      (or their ``jax.eval_shape``): its annotations (:func:`annotated_groups`), or its own
      rules.
    group_names: what each group holds, by group number ({}: the numbers say enough).
    groups_may_be_empty: whether a group may keep no unit. In a chain (MLP, VGG) the output
      would then not depend on the input; a residual block's skip carries the signal past an
      empty block (ViT, ResNet).
    fold: ``(model, params) -> (model, params)``, the same function with fewer products for
      evaluation (the MLP's linear bottlenecks multiplied out); :func:`unfolded` by default.
      ``params`` may have leading batch axes (``vmap``).

  Example:
    >>> from experiments import models
    >>> from configs import mnist_mlp
    >>> family = models.family(mnist_mlp.get_config())
    >>> family.widths_keys, family.groups_may_be_empty
    (('features',), False)
  """

  create: Callable[[ml_collections.ConfigDict], nn.Module]
  check_config: Callable[[ml_collections.ConfigDict], None]
  widths_keys: tuple[str, ...]
  compacted_widths: Callable[
    [ml_collections.ConfigDict, Mapping[int, pp.KeptUnits]], dict[str, tuple[int, ...]]
  ]
  group_spec: Callable[[nn.Module, Any], Any] = annotated_groups
  group_names: Callable[[ml_collections.ConfigDict], dict[int, str]] = no_group_names
  groups_may_be_empty: bool = False
  fold: Callable[[nn.Module, Any], tuple[nn.Module, Any]] = unfolded
