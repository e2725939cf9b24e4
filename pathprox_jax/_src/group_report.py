"""What group discovery reports: the groups, the chains, and a line per layer saying why.

A layer's line names its group and role (the "in" line lists the units, the ops to the next
layer and the "follow" parameters) or says why it has none, in the words of the rule that
stopped its units (:mod:`jaxpr_rules`) or of the layer's own reason (:mod:`layers`).
"""

from __future__ import annotations

import dataclasses

from pathprox_jax._src import params as params_lib
from pathprox_jax._src.annotations import GroupSpec, GroupSpecTree
from pathprox_jax._src.layers import Layer, Unit


@dataclasses.dataclass(frozen=True)
class GroupReport:
  """What :func:`pathprox_jax.explain_groups` found.

  Attributes:
    groups: the spec tree (as :func:`pathprox_jax.discover_groups` returns it; all ``None`` if
      no group), each spec carrying its group's chain (:attr:`pathprox_jax.GroupSpec.chain`), so
      that ``balance=True`` balances exactly :attr:`balance`.
    chains: the groups in forward order split into chains: in each, a group's "out" layer feeds
      the next group's "in" layer through positively homogeneous operations only, so the layer
      balance preserves the function along it.
    lines: one line per layer (product with a parameter kernel), in forward order.
  """

  groups: GroupSpecTree
  chains: tuple[tuple[int, ...], ...]
  lines: tuple[str, ...]

  @property
  def balance(self) -> tuple[tuple[int, ...], ...] | bool:
    """What to pass as ``balance``: the chains of two or more groups, or ``False`` if none.

    ``pathprox_sgd(lr, wd, report.groups, balance=report.balance)`` balances exactly the chains
    along which the layer balance preserves the function, and no other group; so does the
    default ``balance=True``, since ``report.groups`` carries the chains.
    """
    return tuple(chain for chain in self.chains if len(chain) > 1) or False

  def __str__(self) -> str:
    chains = ", ".join(str(c) for c in self.chains) or "none"
    return "\n".join([*self.lines, f"chains (layer balance): {chains}"])


def layer_line(layer: Layer, unit: Unit | str, specs: dict[int, GroupSpec], paths) -> str:
  """The report's line for ``layer``: its group and role, or why it has none."""
  spec = specs.get(layer.kernel)
  own = (
    unit
    if isinstance(unit, str)
    else (f"units would reach {unit.consumer.name.split()[0]}, but a layer has one role")
  )
  if spec is None:
    if isinstance(unit, str):
      return f"{layer.name}: no group: its {unit}"
    return f"{layer.name}: no group: its reader {unit.consumer.name} already has a role"
  normalised = not isinstance(unit, str) and unit.norm is not None and spec.role == "follow"
  normalised = normalised and getattr(specs.get(unit.norm.scale[0]), "group", None) == spec.group
  if spec.role == "in" or normalised:
    ops = " -> ".join(unit.ops + (unit.consumer.name.split()[0],))
    follow = sorted(params_lib.path_string(paths[f]) for f, _ in unit.followers if f in specs)
    follow_text = f"; follow: {', '.join(follow)}" if follow else ""
    role = f'follows group {spec.group}, whose "in" side is {unit.ops[0]}\'s scale and bias'
    role = role if normalised else f'group {spec.group} "in"'
    return (
      f"{layer.name}: {role}: {unit.count} units (kernel axis {unit.in_axis}) -> {ops}{follow_text}"
    )
  role = "follows group" if spec.role == "follow" else "group"
  suffix = "" if spec.role == "follow" else ' "out"'
  return f"{layer.name}: {role} {spec.group}{suffix}; its own {own}"
