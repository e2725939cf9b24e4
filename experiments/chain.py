"""Networks whose layers pair into PathProx groups, one after the other: a chain (MLP, VGG).

Layer ``2k`` computes group ``k``'s units (role "in") and layer ``2k + 1`` reads them (role
"out"). An unpaired last layer is in no group and gets plain weight decay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pathprox_jax as pp


def layer_group(index: int, num_layers: int) -> pp.GroupSpec | None:
  """The group of a layer: layers ``2k, 2k + 1`` form group ``k``; an unpaired last is in none."""
  if num_layers % 2 and index == num_layers - 1:
    return None
  return pp.GroupSpec(index // 2, "out" if index % 2 else "in")


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
    >>> from experiments import chain
    >>> kept = {0: pp.KeptUnits(np.array([0, 2]), 4), 1: pp.KeptUnits(np.array([1]), 4)}
    >>> chain.compacted_widths((4, 4, 4, 3), kept)
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
