"""Compacts a run: drops the units PathProx switched off, checks, saves and benchmarks.

``python -m experiments.compact RUN_DIR [--out DIR] [--atol 0.0] [--path-norm-tol TOL]
[--repeats N]`` restores the run's latest checkpoint, removes every unit whose "out" weights
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

Exit codes: 0 done; 1 the smaller model's outputs differ, or a group of a chain
(MLP, VGG) has no units left; 2 bad input (not a run, an output folder that is not empty,
bad flags).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

import pathprox_jax as pp
from experiments import (
  checkpointing,
  cli,
  config_checks,
  data,
  heal,
  input_pipeline,
  models,
  run_folder,
)
from experiments import groups as groups_lib
from experiments import inference_speed as speed
from experiments.experiment import create_optimizer
from experiments.train_step import TrainState

MARKER = run_folder.COMPACT_RECORD
OUTPUT_TOLERANCE = 1e-5


class UsageError(ValueError):
  """The run folder or the output folder cannot be used."""


# What the commands that read a run report as bad input (one line, exit code 2).
USAGE_ERRORS = (cli.ConfigError, UsageError, run_folder.NotARunError, data.DatasetUnavailableError)


class TrainedRun(NamedTuple):
  """A run's config, latest parameters, test set and validation set.

  Attributes:
    config: the run's config (the config keys of its ``config.json``).
    params: the parameters of the latest checkpoint.
    groups: the model's PathProx group spec.
    step: the latest checkpoint's step.
    test_images: the run's test images, uint8 ``[N, H, W, C]``.
    test_labels: their labels, ``[N]``.
    val_images: the run's validation images (its config's split), uint8 ``[M, H, W, C]``.
    val_labels: their labels, ``[M]``.
  """

  config: ml_collections.ConfigDict
  params: Any
  groups: Any
  step: int
  test_images: np.ndarray
  test_labels: np.ndarray
  val_images: np.ndarray
  val_labels: np.ndarray


class Check(NamedTuple):
  """How the compact model's outputs on a split compare with the sparse model's."""

  max_abs_diff: float
  tolerance: float
  sparse_acc: float
  compact_acc: float

  @property
  def ok(self) -> bool:
    return self.max_abs_diff <= self.tolerance and self.sparse_acc == self.compact_acc


def abstract_state(config: ml_collections.ConfigDict) -> tuple[TrainState, Any]:
  """The shapes and dtypes of a run's training state, and its model's group spec.

  Built with ``jax.eval_shape``: nothing is allocated and no data is read. The
  learning-rate schedule is a constant one here: the schedule's values do not
  change the optimiser state's shapes (a schedule rather than a float does).
  """
  model = models.create_model(config)
  image = jax.ShapeDtypeStruct((1, *data.BUILDERS[config.dataset].IMAGE_SHAPE), jnp.float32)
  boxed = jax.eval_shape(model.init, jax.random.key(0), image)["params"]
  groups = groups_lib.group_spec(model, boxed, image, config.group_source)
  params = nn.meta.unbox(boxed)
  tx = create_optimizer(config, groups, optax.constant_schedule(config.lr))
  step = jax.ShapeDtypeStruct((), jnp.int32)
  return TrainState(step, params, jax.eval_shape(tx.init, params)), groups


def restore_run(directory: Path) -> TrainedRun:
  """Restores the latest checkpoint of the run in ``directory``, then reads its test and
  validation sets.

  Raises:
    UsageError: ``directory`` has no ``config.json`` or no checkpoint, or its
      checkpoint does not fit the model and method its ``config.json`` records.
    run_folder.NotARunError: its ``config.json`` is malformed.
    data.DatasetUnavailableError: the run's data set cannot be loaded here.
  """
  config, state, groups = restore_latest(directory)
  splits = input_pipeline.split(
    data.load_arrays(
      config.dataset,
      data_dir=config.data_dir or None,
      raw_dir=config.raw_data_dir or None,
      splits=("train", "test"),  # the validation set is part of the training split
      allow_unofficial=config.allow_unofficial_data,
    ),
    config.split,
    val_size=config.val_size,
    train_per_class=config.train_per_class,
  )
  return TrainedRun(config, state.params, groups, int(state.step), *splits["test"], *splits["val"])


def restore_latest(directory: Path) -> tuple[ml_collections.ConfigDict, TrainState, Any]:
  """``(config, training state, group spec)`` of the latest checkpoint of the run in
  ``directory``; no data is read. Raises as :func:`restore_run`, but reads no data set.
  """
  config_file, checkpoint_dir = directory / run_folder.CONFIG, directory / run_folder.CHECKPOINTS
  if not config_file.is_file():
    raise UsageError(f"{directory} is not a run folder: it has no config.json")
  # Checked before Checkpoints(), whose manager would create the folder.
  if not checkpoint_dir.is_dir():
    raise UsageError(f"{directory} has no checkpoint: no checkpoints/ folder")
  checkpoints = checkpointing.Checkpoints(checkpoint_dir)
  try:
    if checkpoints.latest_step() is None:
      raise UsageError(f"{directory} has no checkpoint: checkpoints/ is empty")
    config = run_folder.read_config(config_file)
    template, groups = abstract_state(config)
    try:
      state, _, _ = checkpoints.restore_latest(template, jax.random.key(0))
    except ValueError as e:  # orbax: the saved tree's structure or shapes differ
      raise UsageError(
        f"{directory}: the latest checkpoint does not fit the model and method in its "
        f"config.json ({str(e).splitlines()[0]})"
      ) from e
  finally:
    checkpoints.close()
  return config, state, groups


def logits_on_test_set(model, params: Any, run: TrainedRun, split: str = "test") -> np.ndarray:
  """The model's logits on the run's test set (or ``split="val"``: its validation set),
  ``[N, classes]``, at full f32 precision."""

  @jax.jit
  def logits(params, images):
    return model.apply({"params": params}, input_pipeline.normalize(images, run.config.dataset))

  if split == "val":
    images, labels = run.val_images, run.val_labels
  else:
    images, labels = run.test_images, run.test_labels
  size = min(run.config.eval_batch_size, len(labels))
  batches, _, mask = input_pipeline.eval_batches(images, labels, size)
  # Accelerators may multiply f32 in lower precision (TF32) by default, which would
  # hide or fake differences of the order of the tolerance.
  with jax.default_matmul_precision("highest"):
    out = np.concatenate([np.asarray(logits(params, batch)) for batch in batches])
  return out[mask.reshape(-1)]


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  """The fraction of examples whose largest logit is their label's."""
  return float(np.mean(logits.argmax(-1) == labels))


def check_outputs(sparse: np.ndarray, compact: np.ndarray, labels: np.ndarray) -> Check:
  """Compares two models' logits on the same examples, whose labels are ``labels``.

  The tolerance is :math:`10^{-5} \\max(1, \\max |y_\\text{sparse}|)`: removing
  units whose out weights are exact zeros changes only the order of the f32 sums,
  so the differences grow with the logits' size.
  """
  return Check(
    max_abs_diff=float(np.max(np.abs(sparse - compact))),
    tolerance=OUTPUT_TOLERANCE * max(1.0, float(np.max(np.abs(sparse)))),
    sparse_acc=accuracy(sparse, labels),
    compact_acc=accuracy(compact, labels),
  )


def check_figures(check: Check) -> str:
  """A check's largest logit change and accuracies, as printed."""
  change = 100 * (check.compact_acc - check.sparse_acc)
  return (
    f"max |logit difference| {check.max_abs_diff:.3g} (tolerance {check.tolerance:.3g}), "
    f"accuracy {check.sparse_acc:.4f} -> {check.compact_acc:.4f} ({change:+.2f} points)"
  )


def without_empty_arrays(tree: Mapping[str, Any]) -> dict[str, Any]:
  """``tree`` without its zero-size arrays, and without the dicts they leave empty.

  A ViT block with no heads (or no FFN neurons) left keeps only its out bias,
  so its smaller model has no other parameters there; orbax cannot save
  zero-size arrays anyway.
  """
  out = {}
  for name, value in tree.items():
    if isinstance(value, Mapping):
      value = without_empty_arrays(value)
      if value:
        out[name] = value
    elif np.size(value):
      out[name] = value
  return out


def check_output_folder(out: Path) -> None:
  """Raises :class:`UsageError` unless ``out`` is absent or an empty folder: an output is never
  replaced (a fine-tune started from it could no longer resume, nor its command reproduce it)."""
  if out.exists() and not (out.is_dir() and not any(out.iterdir())):
    raise UsageError(
      f"{out} exists and is not empty; outputs are never replaced: pass another --out"
    )


def write_output(
  out: Path,
  config: ml_collections.ConfigDict,
  params: Any,
  record: dict,
  marker: str = MARKER,
) -> None:
  """Writes ``params/``, ``config.json`` and the record ``marker`` into ``out`` (absent or empty).

  The folder is written under a temporary name and renamed at the end, so that
  an interrupted write never leaves a folder that looks like a complete output.
  """

  def write(folder: Path) -> None:
    folder.mkdir()
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(folder.absolute() / "params", params)
      checkpointer.wait_until_finished()
    recorded = json.dumps(config_checks.recorded(config), indent=2)  # the keys that apply
    (folder / run_folder.CONFIG).write_text(recorded + "\n")
    (folder / marker).write_text(json.dumps(record, indent=2) + "\n")

  out.absolute().parent.mkdir(parents=True, exist_ok=True)
  run_folder.write_atomic(out, write)


def compact_run(
  run: TrainedRun, run_dir: Path, how: str, **options: Any
) -> tuple[Any, dict[int, pp.KeptUnits], ml_collections.ConfigDict]:
  """The run's smaller model (:func:`pathprox_jax.compact`), printing what it keeps.

  Args:
    run: the restored run.
    run_dir: its folder (for the printout).
    how: what chose the units (for the printout), e.g. ``"--atol 0"``.
    **options: :func:`pathprox_jax.compact`'s ``atol``, ``path_norm_tol`` or ``keep``.

  Returns:
    ``(smaller params without zero-size arrays, kept units per group, smaller config)``.
  """
  config = run.config
  print(
    f"run {run_dir}: {config.experiment}, {config.method}, "
    f"checkpoint at step {run.step} of {config.total_iter}"
  )
  small, kept = pp.compact(run.params, run.groups, **options)
  print(
    f"kept units ({how}): "
    + ", ".join(f"group {g} {k.width}/{k.original_width}" for g, k in kept.items())
  )
  small_config = models.compacted_config(config, kept)
  for key in models.widths_keys(config):
    print(f"{key}: {tuple(config[key])} -> {small_config[key]}")
  return without_empty_arrays(small), kept, small_config


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
  try:
    args = parser.parse_args(argv)
    args.atol = config_checks.finite_float("--atol", args.atol, minimum=0.0)
    if args.path_norm_tol is not None:
      args.path_norm_tol = config_checks.finite_float(
        "--path-norm-tol", args.path_norm_tol, minimum=0.0
      )
    if args.repeats < 1:
      raise cli.ConfigError("--repeats must be >= 1")
    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir / "compact"
    check_output_folder(out)
    run = restore_run(run_dir)
  except USAGE_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  config = run.config
  exact = args.atol == 0 and args.path_norm_tol is None
  how = f"--atol {args.atol:g}"
  if args.path_norm_tol is not None:
    how += f", --path-norm-tol {args.path_norm_tol:g}"
  options = {} if args.path_norm_tol is None else {"path_norm_tol": args.path_norm_tol}
  small, kept, small_config = compact_run(run, run_dir, how, atol=args.atol, **options)
  # A ViT's residual connections carry the signal past a block with no units left.
  empty = [g for g, k in kept.items() if k.width == 0 and config.model != "vit"]
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
        logits_on_test_set(model, run.params, run, split),
        logits_on_test_set(small_model, small, run, split),
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

  x = input_pipeline.normalize(run.test_images[: max(speed.BENCHMARK_BATCHES)], config.dataset)
  sparse = speed.benchmark(model, run.params, x, args.repeats)
  compact = speed.benchmark(small_model, small, x, args.repeats)
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
  write_output(out, small_config, small, record)
  speed.print_table(sparse, compact, args.repeats)
  print(f"wrote {out}")
  print(f"heal: {command}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
