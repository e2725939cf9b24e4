"""Evaluation of a run: loss and accuracy on every split, PathProx's metrics, the objectives.

Every split lives on the devices as whole batches, each batch sharded over all
devices. A split whose size does not divide into such batches is padded with
masked examples, so any device count evaluates every split exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import pathprox_jax as pp
from experiments import dataset_facts, input_pipeline, models
from experiments import groups as groups_lib
from experiments.config_checks import has_budget
from experiments.family import unfolded
from experiments.train_step import model_state


def eval_batch_size(num_examples: int, max_batch_size: int, num_devices: int) -> int:
  """The batch size that covers a split in the fewest batches with the least padding.

  The fewest batches of at most ``max_batch_size``, each a whole multiple of
  ``num_devices`` (so that every device gets the same share), as even as possible.

  Example:
    >>> eval_batch_size(59_000, 10_000, 3)  # 6 batches of 9,834: 4 padded examples
    9834
  """
  batches = math.ceil(num_examples / max_batch_size)
  return math.ceil(math.ceil(num_examples / batches) / num_devices) * num_devices


def active_unit_path_norms(params: Any, groups: Any) -> dict[str, jax.Array]:
  """Each group's smallest and median path norm :math:`\\|w_i\\| \\|v_i\\|` of its active units.

  Over the units still switched on (path norm > 0), so that the smallest tells how close
  the next unit comes to switching off (a ViT's heads and FFN neurons are separate
  groups); both are 0 in a group with no unit on, and a group of no units has no entry.

  Returns:
    ``{"unit_path_norm_min/g{k}": ..., "unit_path_norm_median/g{k}": ...}``, f32 scalars.
  """
  out = {}
  for g, norms in pp.unit_path_norms(params, groups).items():
    if norms.shape[0]:
      on = jnp.where(norms > 0, norms, jnp.nan)
      out[f"unit_path_norm_min/g{g}"] = jnp.nan_to_num(jnp.nanmin(on))
      out[f"unit_path_norm_median/g{g}"] = jnp.nan_to_num(jnp.nanmedian(on))
  return out


def flops_kept(
  active: Mapping[int, jax.Array], units: Mapping[int, int], unit_costs: Mapping[int, float]
) -> jax.Array:
  """The fraction of the grouped units' FLOPs per example that the active units need.

  .. math::
    \\frac{\\sum_g c_g \\, a_g}{\\sum_g c_g \\, n_g},

  with :math:`a_g` the active units of group :math:`g`, :math:`n_g` its units (the dense
  model's) and :math:`c_g` the FLOPs per example of one of them (``pp.unit_costs``): the kept
  fraction a FLOPs budget (``--target-flops``) aims at.

  Args:
    active: ``{group: active units}``.
    units: ``{group: units of the dense model}``.
    unit_costs: ``{group: cost of one unit}``.
  """
  kept = sum(unit_costs[g] * active[g] for g in units)
  return kept / sum(unit_costs[g] * n for g, n in units.items())


class Evaluator:
  """Loss, accuracy and PathProx metrics on the train, validation and test sets.

  Call it with the (host or replicated) parameters, or :meth:`each` with a
  sweep's parameters stacked on a leading member axis; it returns the metrics as
  Python numbers: ``{split}_loss``, ``{split}_acc``, ``wd_objective`` (the
  weight-decay objective at its best rescaling), ``wd_penalty`` and
  ``wd_raw_objective`` (``train_loss + wd_penalty``), ``path_norm``,
  ``active_units``, ``active_units_pct`` and their per-group values
  (``path_norm/g{k}``, ...), each group's smallest and median path norm of its active
  units (:func:`active_unit_path_norms`), and ``flops_kept`` (:func:`flops_kept`).

  Args:
    model: the linen model.
    config: the experiment config (``dataset``, ``weight_decay``, ``eval_batch_size``).
    splits: ``{name: (uint8 images, int32 labels)}`` on the host.
    groups: the model's PathProx group spec.
    mesh: the devices; each batch is sharded over all of its axes.
    fold_linear_layers: evaluate the model folded as its family says (an MLP's linear
      bottlenecks multiplied out, :func:`experiments.mlp.fold_linear_layers`: the same
      function, fewer products).
    unit_costs: ``{group: FLOPs per example of one unit}`` (``pp.unit_costs``; ``None``: traced
      from ``model`` here).
  """

  def __init__(
    self,
    model: nn.Module,
    config: ml_collections.ConfigDict,
    splits: dict[str, dataset_facts.Arrays],
    groups: Any,
    mesh: jax.sharding.Mesh,
    *,
    fold_linear_layers: bool = True,
    unit_costs: Mapping[int, float] | None = None,
  ):
    if unit_costs is None:
      image = splits["train"][0][:1]
      example = jax.ShapeDtypeStruct(image.shape, jnp.float32)
      variables = jax.eval_shape(model.init, jax.random.key(0), example)
      unit_costs = groups_lib.unit_costs(
        model, variables["params"], example, groups, model_state(variables)
      )
    # A budget's PathProx thresholds each group at c_g τ: its objective weighs them so.
    budget_costs = unit_costs if has_budget(config) and config.method == "pathprox" else None
    batch_sharding = NamedSharding(mesh, P(None, mesh.axis_names))
    self._splits = {
      name: tuple(
        jax.make_array_from_callback(a.shape, batch_sharding, lambda index, a=a: a[index])
        for a in input_pipeline.eval_batches(
          images, labels, eval_batch_size(len(labels), config.eval_batch_size, mesh.size)
        )
      )
      for name, (images, labels) in splits.items()
    }

    fold = models.family(config).fold if fold_linear_layers else unfolded

    def split_means(net, net_params, state, images, labels, mask):
      def batch_sums(args):
        x, y, m = args
        x = input_pipeline.normalize(x, config.dataset)
        logits = net.apply({"params": net_params, **state}, x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.sum(loss * m), jnp.sum((jnp.argmax(logits, -1) == y) * m)

      loss, correct = jax.lax.map(batch_sums, (images, labels, mask))
      count = jnp.sum(mask)
      return jnp.sum(loss) / count, jnp.sum(correct) / count

    def evaluate(params, state, weight_decay, splits):
      out, net = {}, fold(model, params)
      for name, arrays in splits.items():
        out[f"{name}_loss"], out[f"{name}_acc"] = split_means(*net, state, *arrays)
      summary = pp.summarize(
        params,
        groups,
        out["train_loss"],
        weight_decay,
        regularize_bias=config.regularize_bias,
        unit_costs=budget_costs,
      )
      path_norm, active = summary.path_norm, summary.active_units
      out["wd_objective"] = summary.objective
      out["wd_penalty"] = pp.weight_decay_penalty(
        params, weight_decay, regularize_bias=config.regularize_bias
      )
      out["wd_raw_objective"] = out["train_loss"] + out["wd_penalty"]
      out["path_norm"] = path_norm.total
      out["active_units"] = active.count
      out["active_units_pct"] = 100 * active.fraction
      for g in path_norm.per_group:
        out[f"path_norm/g{g}"] = path_norm.per_group[g]
        out[f"active_units/g{g}"] = active.per_group[g]
        out[f"active_units_pct/g{g}"] = 100 * active.per_group_fraction[g]
      out.update(active_unit_path_norms(params, groups))
      out["flops_kept"] = flops_kept(active.per_group, pp.unit_counts(params, groups), unit_costs)
      return out

    self._weight_decay = config.weight_decay
    self._evaluate = jax.jit(evaluate)
    self._evaluate_each = jax.jit(jax.vmap(evaluate, in_axes=(0, 0, 0, None)))
    self._replicated = NamedSharding(mesh, P())

  def __call__(self, params: Any, state: Any = None) -> dict[str, float]:
    """The metrics of ``params``, with the model's ``state`` (a BatchNorm's running statistics,
    ``{"batch_stats": ...}``; None: none)."""
    # a no-op for the replicated training state
    params, state = jax.device_put((params, state or {}), self._replicated)
    return _python_numbers(self._evaluate(params, state, self._weight_decay, self._splits))

  def each(self, params: Any, state: Any, weight_decays: Sequence[float]) -> list[dict[str, float]]:
    """The metrics of every member of a sweep, in one compiled pass.

    Args:
      params: the members' parameters, stacked on a leading axis.
      state: the members' model states (see :meth:`__call__`), stacked likewise.
      weight_decays: each member's :math:`\\lambda`.
    """
    params, state = jax.device_put((params, state), self._replicated)
    decays = jnp.asarray(weight_decays, jnp.float32)
    values = self._evaluate_each(params, state, decays, self._splits)
    stacked = _python_numbers(values)
    return [{k: v[m] for k, v in stacked.items()} for m in range(len(weight_decays))]


def _python_numbers(values: dict[str, jax.Array]) -> dict[str, Any]:
  """Metrics as Python ints and floats (lists of them for stacked values)."""
  arrays = {k: np.asarray(v) for k, v in jax.device_get(values).items()}
  # An integer array's tolist() gives Python ints already; floats of any width become floats.
  return {
    k: (a if np.issubdtype(a.dtype, np.integer) else a.astype(float)).tolist()
    for k, a in arrays.items()
  }
