"""Which PathProx groups a run uses: the model's annotations, checked against its trace."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import pathprox_jax as pp
from experiments.family import Family


def group_spec(
  family: Family,
  model: nn.Module,
  boxed: Any,
  example: Any,
  source: str = "auto",
  model_state: Any = None,
) -> Any:
  """The model's PathProx groups: discovered from its trace, or read from its annotations.

  The annotations are the family's (:attr:`experiments.family.Family.group_spec`: the
  ViT's are path rules for the heads plus init annotations for the FFN neurons; the other
  models' are init annotations). With ``source="auto"`` the groups are
  also discovered from the traced model (:func:`pathprox_jax.discover_groups`) and must be
  the annotations' up to group numbering, which the annotations' numbering (and the
  family's group names) keep.

  Args:
    family: the model's family.
    model: the experiment's model.
    boxed: its boxed params (or their ``jax.eval_shape``).
    example: an input batch, or its ``jax.ShapeDtypeStruct``.
    source: ``"auto"`` or ``"annotations"``.
    model_state: the model's variables besides its params (a BatchNorm's running
      statistics, ``{"batch_stats": ...}``), with which it is traced (None: none).

  Returns:
    The spec pytree.

  Raises:
    GroupSourceError: the discovered groups are not the annotations'.
  """
  annotated = family.group_spec(model, boxed)
  if source == "annotations":
    return annotated
  report = pp.explain_groups(_as_function(model, model_state), nn.meta.unbox(boxed), example)
  found, expected = _groups_by_leaves(report.groups), _groups_by_leaves(annotated)
  if found != expected:
    raise GroupSourceError(
      "--group-source auto found groups other than the model's annotations "
      f"({len(found)} against {len(expected)}): pass --group-source annotations"
    )
  return annotated


def unit_costs(
  model: nn.Module, boxed: Any, example: Any, groups: Any, model_state: Any = None
) -> dict[int, float]:
  """``{group: FLOPs per example of one of its units}``, from the traced model (nothing runs).

  See :func:`pathprox_jax.unit_costs`; ``example`` is an input batch or its
  ``jax.ShapeDtypeStruct``, ``model_state`` as in :func:`group_spec`.
  """
  return pp.unit_costs(
    _as_function(model, model_state), nn.meta.unbox(boxed), example, groups=groups
  )


def _as_function(model: nn.Module, model_state: Any) -> Any:
  """``(params, x) -> outputs`` of the model in evaluation mode, its state fixed.

  Only the state's shapes matter to a trace: it may be a ``jax.eval_shape``'s.
  """
  state = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), model_state or {})
  return lambda params, x: model.apply({"params": params, **state}, x)


class GroupSourceError(ValueError):
  """The groups discovered from the trace differ from the model's annotations."""


def _groups_by_leaves(groups: Any) -> set[frozenset]:
  """Each group as the set of (leaf path, role, unit axis): the groups up to numbering."""
  members: dict[int, set] = {}
  for path, spec in jax.tree_util.tree_flatten_with_path(groups)[0]:
    if spec is not None:
      members.setdefault(spec.group, set()).add(
        (jax.tree_util.keystr(path), spec.role, spec.unit_axis)
      )
  return {frozenset(m) for m in members.values()}


def group_summary(params: Any, groups: Any, source: str, regularize_bias: bool) -> str:
  """The run's one line on its groups: how many, their units, where from, what else is decayed."""
  units = pp.unit_counts(params, groups)
  decayed = sum(jax.tree.leaves(pp.decayed_mask(params, groups, regularize_bias=regularize_bias)))
  verb = "parameter gets" if decayed == 1 else "parameters get"
  where = "from the trace (the annotations' groups)" if source == "auto" else "from annotations"
  return (
    f"PathProx groups: {len(units)} ({sum(units.values())} units) {where}; "
    f"{decayed} other {verb} ordinary weight decay"
  )
