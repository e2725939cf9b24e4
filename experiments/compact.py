"""Compacts a run: drops the units PathProx switched off, checks, saves and benchmarks.

``python -m experiments.compact RUN_DIR [--out DIR] [--atol 0.0] [--path-norm-tol TOL]
[--repeats N] [--step S] [--with-state]`` restores the run's latest checkpoint (``--step``: the
one of step ``S``), removes every unit whose "out" weights
are zero (at most ``--atol``) with :func:`pathprox_jax.compact`, checks on the
run's test and validation sets that the smaller model computes the same logits (to
1e-5 * max(1, max |logit|): only the order of f32 sums changes) and the same
accuracy, writes it to ``DIR`` (default ``RUN_DIR/compact``; a ``DIR`` that exists and is not
empty is never replaced: the command refuses, exit code 2), and prints the
parameters, FLOPs per example and inference throughput of both models, and the
``experiments.heal`` command that fine-tunes the smaller model. With
``--atol`` > 0, units with small nonzero out weights go too, and with ``--path-norm-tol``
those whose path norm ``||w_i|| ||v_i||`` is at most ``TOL`` (heads too: value and output
projections): the largest logit change and the accuracy change on each split are then
reported, not enforced.

``DIR`` holds ``params/`` (an orbax checkpoint of the smaller params),
``config.json`` (the run's config with the new ``features``, ``channels``, or
a ViT's ``num_heads`` and ``mlp_dim``)
and ``compact.json`` (the kept units of each group, the checks' figures on the test set,
``check``, and on the validation set, ``check_val``, and ``heal_command``)::

  config = ml_collections.ConfigDict(json.loads((DIR / "config.json").read_text()))
  params = orbax.checkpoint.StandardCheckpointer().restore((DIR / "params").absolute())
  x = input_pipeline.normalize(images, config.dataset)
  logits = models.create_model(config).apply({"params": params}, x)

A run starts from the smaller model with ``--init-params DIR/params`` and ``DIR``'s widths,
as from a prune output.

With ``--with-state`` (exact compaction only), ``DIR`` is also a run folder that goes on where
the run's checkpoint stopped, on the smaller model: ``DIR/checkpoints/S`` holds the step, the
smaller params, the optimiser state sliced to the kept units (:func:`pathprox_jax.compact_state`:
momentum, Adam's moments, a budget's masks and controller), the data-order key and the metrics
so far, so ``python -m experiments.<experiment> --workdir DIR --resume`` trains on from step
``S`` to the run's ``--total-iter`` with the same batches and schedule. That is how a budget
run heals on its compacted model: compact its checkpoint of step ``--heal-start`` (save it with
``--save-freq``), where the mask is frozen, and resume. Each step then equals the dense run's
step restricted to the kept units; ``flops_kept`` of the rows after ``S`` is relative to the
smaller model.

Exit codes: 0 done; 1 the smaller model's outputs differ, or a group of a chain
(MLP, VGG) has no units left; 2 bad input (not a run, an output folder that is not empty,
bad flags).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

import pathprox_jax as pp
from experiments import cli, config_checks, heal, models, run_folder, trained_run
from experiments import inference_speed as speed

MARKER = run_folder.COMPACT_RECORD
OUTPUT_TOLERANCE = 1e-5


class Check(NamedTuple):
  """How the compact model's outputs on a split compare with the sparse model's."""

  max_abs_diff: float
  tolerance: float
  sparse_acc: float
  compact_acc: float

  @property
  def ok(self) -> bool:
    return self.max_abs_diff <= self.tolerance and self.sparse_acc == self.compact_acc


def check_outputs(sparse: np.ndarray, compact: np.ndarray, labels: np.ndarray) -> Check:
  """Compares two models' logits on the same examples, whose labels are ``labels``.

  The tolerance is :math:`10^{-5} \\max(1, \\max |y_\\text{sparse}|)`: removing
  units whose out weights are exact zeros changes only the order of the f32 sums,
  so the differences grow with the logits' size.
  """
  return Check(
    max_abs_diff=float(np.max(np.abs(sparse - compact))),
    tolerance=OUTPUT_TOLERANCE * max(1.0, float(np.max(np.abs(sparse)))),
    sparse_acc=trained_run.accuracy(sparse, labels),
    compact_acc=trained_run.accuracy(compact, labels),
  )


def check_figures(check: Check) -> str:
  """A check's largest logit change and accuracies, as printed."""
  change = 100 * (check.compact_acc - check.sparse_acc)
  return (
    f"max |logit difference| {check.max_abs_diff:.3g} (tolerance {check.tolerance:.3g}), "
    f"accuracy {check.sparse_acc:.4f} -> {check.compact_acc:.4f} ({change:+.2f} points)"
  )


def main(argv: Sequence[str] | None = None) -> int:
  """Compacts one run from the command line; returns the exit code."""
  parser = cli.ArgumentParser(prog="python -m experiments.compact", description=__doc__)
  parser.add_argument("run_dir", help="a run folder (config.json and checkpoints/)")
  parser.add_argument(
    "--out", help="output folder, absent or empty: never replaced (default: RUN_DIR/compact)"
  )
  parser.add_argument(
    "--atol", default="0", help="drop units whose |out weights| are all <= ATOL (default: 0)"
  )
  parser.add_argument(
    "--path-norm-tol",
    metavar="TOL",
    help="also drop units whose path norm ||w_i|| ||v_i|| is <= TOL (default: off)",
  )
  parser.add_argument("--repeats", type=int, default=20, help="timed calls per benchmark")
  parser.add_argument(
    "--step", type=int, help="compact the checkpoint of this step (default: the latest)"
  )
  parser.add_argument(
    "--with-state",
    action="store_true",
    help="also write the compacted training state: DIR becomes a run folder that "
    "--resume trains on from the checkpoint's step",
  )
  try:
    args = parser.parse_args(argv)
    args.atol = config_checks.finite_float("--atol", args.atol, minimum=0.0)
    if args.path_norm_tol is not None:
      args.path_norm_tol = config_checks.finite_float(
        "--path-norm-tol", args.path_norm_tol, minimum=0.0
      )
    if args.repeats < 1:
      raise cli.ConfigError("--repeats must be >= 1")
    if args.with_state and (args.atol != 0 or args.path_norm_tol is not None):
      raise cli.ConfigError(
        "--with-state needs exact compaction (--atol 0, no --path-norm-tol): only then does "
        "training go on as the run's would"
      )
    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir / "compact"
    trained_run.check_output_folder(out)
    run = trained_run.restore_run(run_dir, args.step)
  except trained_run.USAGE_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  config = run.config
  exact = args.atol == 0 and args.path_norm_tol is None
  how = f"--atol {args.atol:g}"
  if args.path_norm_tol is not None:
    how += f", --path-norm-tol {args.path_norm_tol:g}"
  options = {} if args.path_norm_tol is None else {"path_norm_tol": args.path_norm_tol}
  small, small_state, kept, small_config = trained_run.compact_run(
    run, run_dir, how, atol=args.atol, **options
  )
  # Residual connections (a ViT's) carry the signal past a block with no units left.
  may_be_empty = models.family(config).groups_may_be_empty
  empty = [g for g, k in kept.items() if k.width == 0 and not may_be_empty]
  if empty:
    print(
      f"error: group {empty[0]} has no units left, so the network's output does not depend "
      "on its input; there is no smaller network to save",
      file=sys.stderr,
    )
    return 1
  keys = models.widths_keys(config)
  model, small_model = models.create_model(config), models.create_model(small_config)

  checks = {}
  for split, labels in (("test", run.test_labels), ("val", run.val_labels)):
    if len(labels):  # a holdout split of val_size 0 has no validation set
      checks[split] = check_outputs(
        trained_run.logits_on_test_set(model, run.params, run, split, run.model_state),
        trained_run.logits_on_test_set(small_model, small, run, split, small_state),
        labels,
      )
      print(f"{split} set ({len(labels)} examples): {check_figures(checks[split])}")
  if not all(check.ok for check in checks.values()):
    if exact:
      print(
        "error: the compact model's outputs differ from the sparse model's "
        f"({check_figures(checks['test'])}); nothing written",
        file=sys.stderr,
      )
      return 1
    print(f"outputs changed: {how} also dropped units with nonzero out weights")

  sparse = trained_run.benchmark(run, model, run.params, args.repeats, run.model_state)
  compact = trained_run.benchmark(run, small_model, small, args.repeats, small_state)
  command = heal.heal_command(out, config)
  record = {
    "run_dir": str(run_dir.absolute()),
    "step": run.step,
    "atol": args.atol,
    "path_norm_tol": args.path_norm_tol,
    "original_widths": {key: list(config[key]) for key in keys},
    "widths": {key: list(small_config[key]) for key in keys},
    "kept": {str(g): k.indices.tolist() for g, k in kept.items()},
    "original_units": {str(g): k.original_width for g, k in kept.items()},
    "check": checks["test"]._asdict(),
    "check_val": checks["val"]._asdict() if "val" in checks else None,
    "parameters": {"sparse": sparse.parameters, "compact": compact.parameters},
    "flops_per_example": {"sparse": sparse.flops, "compact": compact.flops},
    "heal_command": command,
  }
  checkpoint = None
  if args.with_state:
    tx = trained_run.create_run_optimizer(config, run.groups)
    opt_state = trained_run.state_like(
      trained_run.abstract_state(small_config)[0].opt_state,
      pp.compact_state(tx, run.state.opt_state, run.groups, kept),
    )
    state = run.state._replace(params=small, opt_state=opt_state, model_state=small_state)
    checkpoint = (state, run.data_key, run.history)
  trained_run.write_output(out, small_config, small, record, MARKER, small_state, checkpoint)
  speed.print_table(sparse, compact, args.repeats)
  print(f"wrote {out}")
  print(f"heal: {command}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
