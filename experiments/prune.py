"""Magnitude pruning of a run: the baseline that PathProx's exact compaction is compared with.

``python -m experiments.prune RUN_DIR (--match COMPACT_DIR | --keep N,N,... | --target-flops F)
[--out DIR] [--score path-norm|scale] [--repeats N]`` restores the run's latest checkpoint
(typically a weight-decay run) and keeps the units of largest score: :math:`\\|w_i\\| \\|v_i\\|`
(:func:`pathprox_jax.unit_path_norms`: a neuron's "in" column and "out" row, a head's value and
output projections), or with ``--score scale`` :math:`|\\gamma_i|` (a BatchNorm unit's scale
alone, as network slimming prunes). ``--match`` and ``--keep`` rank the units inside each group
and keep as many per group as ``--match``'s compact output (of ``experiments.compact``) keeps
there, or as ``--keep`` lists in group order. ``--target-flops F`` makes one global cut instead
(:func:`global_cut`): the units of all groups are ranked together by score :math:`/ c_g`, with
:math:`c_g` the FLOPs per example of one unit of group :math:`g` over the cheapest group's
(:func:`pathprox_jax.unit_costs`, :func:`pathprox_jax.relative_costs`), and the smallest go
while the grouped units keep a fraction :math:`\\ge F` of their FLOPs, a unit that no longer
fits being skipped for the next ranks (:func:`pathprox_jax.magnitude_masks`, gradual magnitude
pruning's rule, filled to the target): at equal costs and
``--score scale``, network slimming's one threshold on :math:`|\\gamma_i|`. A group that may not
be empty (an MLP's or VGG's layer) keeps its largest-score unit where the cut would empty it.
The others are removed (:func:`pathprox_jax.compact` with ``keep``): the smaller model computes
the run's function with their "out" weights set to zero.

``DIR`` (default ``RUN_DIR/prune``; an existing ``DIR`` that is not empty is never replaced:
the command refuses, exit code 2) has the layout of a compact output: ``params/``,
``config.json`` (the run's config with the new widths) and ``prune.json`` (the kept units of
each group, test accuracy before and after pruning, parameters and FLOPs kept (the model's,
and ``flops_kept``, the grouped units' :math:`\\sum_g c_g \\mathrm{kept}_g / \\sum_g c_g n_g`
as :func:`experiments.evaluation.flops_kept` counts it), ``target_flops``, ``unit_costs``
(:math:`c_g`), ``kept_largest_unit`` (the groups the cut would have emptied), and the
``experiments.heal`` command that fine-tunes the pruned model as it fine-tunes a compact
output: ordinary runs from ``--init-params DIR/params``, for a tenth of the run's steps).
The command prints it too.

Exit codes: 0 done; 2 bad input (not a run, no compact output to match, counts of the wrong
length or out of range, a target outside (0, 1], an output folder that is not empty, bad
flags).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import pathprox_jax as pp
from experiments import cli, evaluation, heal, models, run_folder, trained_run
from experiments import groups as groups_lib
from experiments import inference_speed as speed
from experiments.experiment import unit_scale_mask
from experiments.trained_run import UsageError

MARKER = run_folder.PRUNE_RECORD


def parse_keep(text: str) -> list[int]:
  """``--keep``'s comma-separated unit counts, in group order.

  Args:
    text: the flag's value, e.g. ``"4,100,3,90"``.

  Returns:
    The counts.

  Raises:
    cli.ConfigError: ``text`` is not a list of integers >= 0.
  """
  if not re.fullmatch(r"\s*\d+\s*(,\s*\d+\s*)*", text):
    raise cli.ConfigError(f"--keep: {text!r} is not a comma-separated list of unit counts >= 0")
  return [int(t) for t in text.split(",")]


def parse_target_flops(text: str) -> float:
  """``--target-flops``'s fraction of the grouped units' FLOPs.

  Args:
    text: the flag's value, e.g. ``"0.5"``.

  Returns:
    The fraction, in (0, 1].

  Raises:
    cli.ConfigError: ``text`` is not a number in (0, 1] (NaN is not).
  """
  try:
    fraction = float(text)
  except ValueError:
    fraction = float("nan")
  if not 0 < fraction <= 1:
    raise cli.ConfigError(f"--target-flops: {text!r} is not a fraction of the FLOPs in (0, 1]")
  return fraction


def read_match(folder: Path) -> dict[int, tuple[int, int]]:
  """The units per group of an ``experiments.compact`` output, from its ``compact.json``.

  Args:
    folder: the compact output.

  Returns:
    ``{group: (its units before compaction, the units it kept)}``.

  Raises:
    UsageError: ``folder`` is no compact output, or its record is malformed.
  """
  path = folder / run_folder.COMPACT_RECORD
  if not path.is_file():
    raise UsageError(
      f"--match {folder} is not a compact output: it has no {run_folder.COMPACT_RECORD}"
    )
  try:
    record = json.loads(path.read_text())
    return {int(g): (int(record["original_units"][g]), len(k)) for g, k in record["kept"].items()}
  except (ValueError, KeyError, TypeError) as e:
    raise UsageError(f"--match {path} is malformed ({type(e).__name__}: {e})") from None


def kept_counts(
  requested: Sequence[int] | Mapping[int, tuple[int, int]],
  widths: Mapping[int, int],
  may_be_empty: bool,
) -> dict[int, int]:
  """The units each group keeps, checked against the run's group widths.

  Args:
    requested: ``--keep``'s counts in group order, or :func:`read_match`'s mapping.
    widths: ``{group: units}`` of the run's model.
    may_be_empty: whether a group may keep no unit (the run's family's
      ``groups_may_be_empty``: not in a chain, whose output would then not depend on the
      input; yes where a residual connection bypasses the group).

  Returns:
    ``{group: units to keep}``.

  Raises:
    UsageError: the counts do not fit the groups.
  """
  shown = ",".join(str(w) for w in widths.values())
  if isinstance(requested, Mapping):
    matched = {g: width for g, (width, _) in requested.items()}
    if matched != dict(widths):
      raise UsageError(
        f"--match was compacted from a model whose groups have "
        f"{','.join(map(str, matched.values()))} units, not this run's {shown}"
      )
    counts = {g: kept for g, (_, kept) in requested.items()}
  else:
    if len(requested) != len(widths):
      raise UsageError(
        f"--keep lists {len(requested)} counts, but the run has {len(widths)} groups "
        f"(of {shown} units)"
      )
    counts = dict(zip(widths, requested, strict=True))
  least = 0 if may_be_empty else 1
  for g, count in counts.items():
    if not least <= count <= widths[g]:
      raise UsageError(
        f"group {g} has {widths[g]} units: it can keep {least} to {widths[g]}, not {count}"
      )
  return counts


def largest_units(
  scores: Mapping[int, np.ndarray], counts: Mapping[int, int]
) -> dict[int, np.ndarray]:
  """Each group's ``counts[g]`` units with the largest scores, sorted by index.

  Ties go to the lower index.

  Args:
    scores: ``{group: one score per unit}``.
    counts: ``{group: units to keep}``.

  Returns:
    ``{group: kept unit indices}`` (int64, ascending).
  """
  return {
    g: np.sort(np.argsort(-np.asarray(s), kind="stable")[: counts[g]]) for g, s in scores.items()
  }


def global_cut(
  scores: Mapping[int, np.ndarray],
  costs: Mapping[int, float],
  fraction: float,
  may_be_empty: bool,
) -> tuple[dict[int, np.ndarray], list[int]]:
  """The units one global, cost-aware cut keeps (``--target-flops``).

  :func:`pathprox_jax.magnitude_masks` on the relative costs: the units of all groups are
  ranked together by score :math:`/ c_g` and switched off from the smallest up while the
  grouped units keep a fraction :math:`\\ge` ``fraction`` of their cost, skipping the units that
  no longer fit (the kept fraction then exceeds ``fraction`` by less than the cheapest unit
  on). A group that may not be empty and that the cut empties keeps its largest-score unit
  (the kept fraction then exceeds ``fraction`` by more than that).

  Args:
    scores: ``{group: one score >= 0 per unit}``.
    costs: ``{group: FLOPs per example of one unit}`` (``pp.unit_costs``; only ratios matter).
    fraction: the fraction of the grouped units' FLOPs to keep, in (0, 1].
    may_be_empty: whether a group may keep no unit (the family's ``groups_may_be_empty``).

  Returns:
    ``({group: kept unit indices (int64, ascending)}, the groups that keep their
    largest-score unit because the cut would have emptied them)``.
  """
  masks = pp.magnitude_masks(scores, pp.relative_costs(costs), fraction)
  kept = {g: np.flatnonzero(np.asarray(m)) for g, m in masks.items()}
  emptied = [] if may_be_empty else [g for g, k in kept.items() if not len(k) and len(scores[g])]
  for g in emptied:
    kept[g] = np.array([np.argmax(scores[g])])
  return kept, emptied


def run_unit_costs(run: trained_run.TrainedRun) -> dict[int, float]:
  """``{group: FLOPs per example of one unit}`` of the run's model (``pp.unit_costs``)."""
  example = jax.ShapeDtypeStruct((1, *run.test_images.shape[1:]), jnp.float32)
  model = models.create_model(run.config)
  return groups_lib.unit_costs(model, run.params, example, run.groups, run.model_state)


def unit_scales(params: Any, groups: Any) -> dict[int, np.ndarray]:
  """``{group: |γ_i|}``: each unit's BatchNorm scale, network slimming's score.

  Raises:
    UsageError: a group's units have no BatchNorm scale.
  """
  specs = jax.tree.leaves(groups, is_leaf=lambda s: s is None or isinstance(s, pp.GroupSpec))
  leaves = zip(
    jax.tree.leaves(params), specs, jax.tree.leaves(unit_scale_mask(groups)), strict=True
  )
  scales = {spec.group: np.abs(np.asarray(leaf)) for leaf, spec, scale in leaves if scale}
  missing = sorted(set(pp.unit_counts(params, groups)) - set(scales))
  if missing:
    raise UsageError(
      f"--score scale: the units of group {missing[0]} have no BatchNorm scale; "
      "use --score path-norm"
    )
  return scales


SCORES = {
  "path-norm": lambda params, groups: {
    g: np.asarray(s) for g, s in pp.unit_path_norms(params, groups).items()
  },
  "scale": unit_scales,
}


def main(argv: Sequence[str] | None = None) -> int:
  """Prunes one run from the command line; returns the exit code."""
  parser = cli.ArgumentParser(prog="python -m experiments.prune", description=__doc__)
  parser.add_argument("run_dir", help="a run folder (config.json and checkpoints/)")
  match = parser.add_mutually_exclusive_group(required=True)
  match.add_argument(
    "--match", metavar="COMPACT_DIR", help="keep as many units per group as this compact output"
  )
  match.add_argument("--keep", metavar="N,N,...", help="units to keep per group, in group order")
  match.add_argument(
    "--target-flops",
    metavar="F",
    help="one global cut: rank the units of all groups together by score/c_g (c_g: the FLOPs "
    "of one unit of group g over the cheapest group's) and keep the largest, a fraction >= F "
    "in (0, 1] of the grouped units' FLOPs; a group of an MLP or VGG keeps at least its best unit",
  )
  parser.add_argument(
    "--out", help="output folder, absent or empty: never replaced (default: RUN_DIR/prune)"
  )
  parser.add_argument(
    "--score",
    choices=tuple(SCORES),
    default="path-norm",
    help="keep the largest ||w_i|| ||v_i|| (path-norm, the default) or |gamma_i| (scale: "
    "network slimming's, for BatchNorm units; with --target-flops, |gamma_i|/c_g over all "
    "groups, network slimming's global threshold at equal costs)",
  )
  parser.add_argument("--repeats", type=int, default=20, help="timed calls per benchmark")
  try:
    args = parser.parse_args(argv)
    if args.repeats < 1:
      raise cli.ConfigError("--repeats must be >= 1")
    if args.target_flops is not None:
      target = parse_target_flops(args.target_flops)
    else:
      requested = parse_keep(args.keep) if args.keep is not None else read_match(Path(args.match))
    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir / "prune"
    trained_run.check_output_folder(out)
    run = trained_run.restore_run(run_dir)
    scores = SCORES[args.score](run.params, run.groups)
    widths = {g: len(s) for g, s in scores.items()}
    may_be_empty = models.family(run.config).groups_may_be_empty
    if args.target_flops is None:
      keep = largest_units(scores, kept_counts(requested, widths, may_be_empty))
  except trained_run.USAGE_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  config = run.config
  costs = run_unit_costs(run)
  score = "|gamma_i|" if args.score == "scale" else "||w_i|| ||v_i||"
  if args.target_flops is not None:
    keep, emptied = global_cut(scores, costs, target, may_be_empty)
    how, matched = f"largest {score}/c_g over all groups, --target-flops {target}", None
  elif args.keep is not None:
    emptied, target = [], None
    how, matched = f"largest {score}, --keep", args.keep
  else:
    emptied, target = [], None
    how, matched = f"largest {score}, --match {args.match}", str(Path(args.match).absolute())
  small, small_state, kept, small_config = trained_run.compact_run(run, run_dir, how, keep=keep)
  flops_kept = float(evaluation.flops_kept({g: len(k) for g, k in keep.items()}, widths, costs))
  print(f"grouped units' FLOPs kept: {flops_kept:.4f}" + (f" (target {target})" if target else ""))
  for g in emptied:
    print(f"group {g} keeps its largest-score unit: the cut would have emptied it")
  keys = models.widths_keys(config)
  model, small_model = models.create_model(config), models.create_model(small_config)
  dense_acc = trained_run.accuracy(
    trained_run.logits_on_test_set(model, run.params, run, state=run.model_state), run.test_labels
  )
  pruned_acc = trained_run.accuracy(
    trained_run.logits_on_test_set(small_model, small, run, state=small_state), run.test_labels
  )
  dense = trained_run.benchmark(run, model, run.params, args.repeats, run.model_state)
  pruned = trained_run.benchmark(run, small_model, small, args.repeats, small_state)
  command = heal.heal_command(out, config)

  def kept_share(before: float | None, after: float | None) -> dict[str, float | None]:
    ratio = after / before if before and after is not None else None
    return {"dense": before, "pruned": after, "ratio": ratio}

  record = {
    "run_dir": str(run_dir.absolute()),
    "step": run.step,
    "match": matched,
    "score": args.score,
    "target_flops": target,
    "flops_kept": flops_kept,
    "unit_costs": {str(g): c for g, c in pp.relative_costs(costs).items()},
    "kept_largest_unit": emptied,
    "original_widths": {key: list(config[key]) for key in keys},
    "widths": {key: list(small_config[key]) for key in keys},
    "kept": {str(g): k.indices.tolist() for g, k in kept.items()},
    "original_units": {str(g): k.original_width for g, k in kept.items()},
    "test_acc": {"dense": dense_acc, "pruned": pruned_acc},
    "parameters": kept_share(dense.parameters, pruned.parameters),
    "flops_per_example": kept_share(dense.flops, pruned.flops),
    "heal_command": command,
  }
  trained_run.write_output(out, small_config, small, record, MARKER, small_state)
  speed.print_table(
    dense,
    pruned,
    args.repeats,
    names=("dense", "pruned"),
    rows=[speed.table_row("test accuracy", dense_acc, pruned_acc, ".4f")],
  )
  print(f"wrote {out}")
  print(f"heal: {command}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
