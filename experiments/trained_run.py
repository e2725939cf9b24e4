"""A trained run, restored: what the commands that read a run share (compact, prune, histograms).

:func:`restore_run` restores a checkpoint of a run folder (the latest, or a step's) with its
test and validation sets, :func:`compact_run` makes its smaller model, :func:`benchmark`
measures a model on its test images, and :func:`write_output` writes a compact or prune
output (``params/``, ``config.json``, the command's record, and with a training state a
checkpoint), never over an output that exists. Bad input is one of :data:`USAGE_ERRORS` (one
line, exit code 2).
"""

from __future__ import annotations

from collections.abc import Mapping
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
from experiments import checkpointing, cli, data, input_pipeline, models, run_folder
from experiments import groups as groups_lib
from experiments import inference_speed as speed
from experiments.experiment import create_optimizer
from experiments.train_step import TrainState, model_state


class UsageError(ValueError):
  """The run folder or the output folder cannot be used."""


# What the commands that read a run report as bad input (one line, exit code 2).
USAGE_ERRORS = (cli.ConfigError, UsageError, run_folder.NotARunError, data.DatasetUnavailableError)


class TrainedRun(NamedTuple):
  """A run's config, one checkpoint, test set and validation set.

  Attributes:
    config: the run's config (the config keys of its ``config.json``).
    state: the checkpoint's training state (step, params, optimiser state).
    groups: the model's PathProx group spec.
    data_key: the checkpoint's data-order key (the batches of the steps after it).
    history: the metrics rows up to the checkpoint.
    test_images: the run's test images, uint8 ``[N, H, W, C]``.
    test_labels: their labels, ``[N]``.
    val_images: the run's validation images (its config's split), uint8 ``[M, H, W, C]``.
    val_labels: their labels, ``[M]``.
  """

  config: ml_collections.ConfigDict
  state: TrainState
  groups: Any
  data_key: jax.Array
  history: list[dict[str, Any]]
  test_images: np.ndarray
  test_labels: np.ndarray
  val_images: np.ndarray
  val_labels: np.ndarray

  @property
  def params(self) -> Any:
    """The checkpoint's parameters."""
    return self.state.params

  @property
  def step(self) -> int:
    """The checkpoint's step."""
    return int(self.state.step)

  @property
  def model_state(self) -> Any:
    """The model's other variables there (a BatchNorm's ``{"batch_stats": ...}``; ``{}``: none)."""
    return self.state.model_state


class Checkpoint(NamedTuple):
  """One checkpoint of a run, restored: what :meth:`checkpointing.Checkpoints.save` saved."""

  config: ml_collections.ConfigDict
  state: TrainState
  groups: Any
  data_key: jax.Array
  history: list[dict[str, Any]]


def abstract_state(config: ml_collections.ConfigDict) -> tuple[TrainState, Any]:
  """The shapes and dtypes of a run's training state, and its model's group spec.

  Built with ``jax.eval_shape``: nothing is allocated and no data is read.
  """
  model = models.create_model(config)
  image = jax.ShapeDtypeStruct((1, *data.BUILDERS[config.dataset].IMAGE_SHAPE), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), image)
  boxed, state = variables["params"], nn.meta.unbox(model_state(variables))
  family = models.family(config)
  groups = groups_lib.group_spec(family, model, boxed, image, config.group_source, state)
  params = nn.meta.unbox(boxed)
  tx = create_run_optimizer(config, groups)
  step = jax.ShapeDtypeStruct((), jnp.int32)
  return TrainState(step, params, jax.eval_shape(tx.init, params), state), groups


def create_run_optimizer(
  config: ml_collections.ConfigDict, groups: Any
) -> optax.GradientTransformation:
  """The run's optimiser, with a constant schedule: its state's structure and shapes are those
  of the run's (a schedule's values do not change them)."""
  return create_optimizer(config, groups, optax.constant_schedule(config.lr))


def restore_run(directory: Path, step: int | None = None) -> TrainedRun:
  """Restores a checkpoint of the run in ``directory`` (:func:`restore_checkpoint`), then reads
  its test and validation sets.

  Raises:
    UsageError: as :func:`restore_checkpoint`.
    run_folder.NotARunError: its ``config.json`` is malformed.
    data.DatasetUnavailableError: the run's data set cannot be loaded here.
  """
  saved = restore_checkpoint(directory, step)
  config = saved.config
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
  return TrainedRun(*saved, *splits["test"], *splits["val"])


def restore_checkpoint(directory: Path, step: int | None = None) -> Checkpoint:
  """The checkpoint of ``step`` (None: the latest) of the run in ``directory``; no data is read.

  Raises:
    UsageError: ``directory`` has no ``config.json``, no checkpoint, or none at ``step``, or
      the checkpoint does not fit the model and method its ``config.json`` records.
    run_folder.NotARunError: its ``config.json`` is malformed.
  """
  config_file, checkpoint_dir = directory / run_folder.CONFIG, directory / run_folder.CHECKPOINTS
  if not config_file.is_file():
    raise UsageError(f"{directory} is not a run folder: it has no config.json")
  # Checked before Checkpoints(), whose manager would create the folder.
  if not checkpoint_dir.is_dir():
    raise UsageError(f"{directory} has no checkpoint: no checkpoints/ folder")
  checkpoints = checkpointing.Checkpoints(checkpoint_dir)
  try:
    steps = checkpoints.steps()
    if not steps:
      raise UsageError(f"{directory} has no checkpoint: checkpoints/ is empty")
    if step is not None and step not in steps:
      raise UsageError(
        f"{directory} has no checkpoint at step {step} (its steps: "
        f"{', '.join(map(str, steps))}); pass one of those"
      )
    config = run_folder.read_config(config_file)
    template, groups = abstract_state(config)
    try:
      state, data_key, history = checkpoints.restore_latest(template, jax.random.key(0), step)
    except ValueError as e:  # orbax: the saved tree's structure or shapes differ
      which = "latest checkpoint" if step is None else f"checkpoint of step {step}"
      raise UsageError(
        f"{directory}: the {which} does not fit the model and method in its config.json "
        f"({str(e).splitlines()[0]})"
      ) from e
  finally:
    checkpoints.close()
  if step is not None and int(state.step) != step:
    raise UsageError(f"{directory}: the checkpoint of step {step} is unreadable")
  return Checkpoint(config, state, groups, data_key, history)


def logits_on_test_set(
  model, params: Any, run: TrainedRun, split: str = "test", state: Any = None
) -> np.ndarray:
  """The model's logits on the run's test set (or ``split="val"``: its validation set),
  ``[N, classes]``, at full f32 precision, with the model's ``state`` (None: none)."""

  @jax.jit
  def logits(params, images):
    x = input_pipeline.normalize(images, run.config.dataset)
    return model.apply({"params": params, **(state or {})}, x)

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


def state_like(template: Any, state: Any) -> Any:
  """``state`` rebuilt in ``template``'s structure: the leaf at each of the template's key paths.

  A compacted ViT block with no heads (or no FFN neurons) left has no kernels there, and its
  budget no mask for that group: an optimiser state sliced to the kept units
  (:func:`pathprox_jax.compact_state`) holds zero-size arrays at those paths, which the smaller
  model's state (``template``: :func:`abstract_state` of its config) does not have.

  Raises:
    ValueError: a template path is not in ``state``, its shape differs, or a leaf of ``state``
      with entries has no place in the template.
  """
  leaves = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(state)}
  paths, treedef = jax.tree_util.tree_flatten_with_path(template)
  out = []
  for path, like in paths:
    key = jax.tree_util.keystr(path)
    if key not in leaves or np.shape(leaves[key]) != like.shape:
      found = np.shape(leaves[key]) if key in leaves else "nothing"
      raise ValueError(f"the compacted state has {found} at {key}, the smaller model {like.shape}")
    out.append(leaves.pop(key))
  extra = [key for key, x in leaves.items() if np.size(x)]
  if extra:
    raise ValueError(f"the compacted state's {extra[0]} has no place in the smaller model's state")
  return treedef.unflatten(out)


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
  marker: str,
  state: Any = None,
  checkpoint: tuple[TrainState, jax.Array, list[dict[str, Any]]] | None = None,
) -> None:
  """Writes ``params/``, ``config.json`` and the record ``marker`` into ``out`` (absent or empty),
  and ``model_state/`` where the model has ``state`` (its BatchNorms' running statistics).

  The folder is written under a temporary name and renamed at the end, so that
  an interrupted write never leaves a folder that looks like a complete output.

  Args:
    out: the output folder (see :func:`check_output_folder`).
    config: the smaller model's config.
    params: its parameters.
    record: what the command records (``compact.json``'s or ``prune.json``'s content).
    marker: the record's file name (:data:`run_folder.COMPACT_RECORD` or
      :data:`run_folder.PRUNE_RECORD`), which marks the folder as that command's output.
    state: the smaller model's variables besides its params (None or ``{}``: none).
    checkpoint: ``(training state, data key, history)`` to save as ``checkpoints/<step>``: it makes
      ``out`` a run folder that ``--resume`` goes on with (None: none).
  """

  def write(folder: Path) -> None:
    folder.mkdir()
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(folder.absolute() / "params", params)
      checkpointer.wait_until_finished()
      if state:
        checkpointer.save(folder.absolute() / run_folder.MODEL_STATE, state)
        checkpointer.wait_until_finished()
    if checkpoint is not None:
      saved = checkpointing.Checkpoints(folder / run_folder.CHECKPOINTS)
      try:
        saved.save(*checkpoint)
        saved.wait()
      finally:
        saved.close()
    run_folder.write_json(folder / run_folder.CONFIG, run_folder.config_record(config))
    run_folder.write_json(folder / marker, record)

  out.absolute().parent.mkdir(parents=True, exist_ok=True)
  run_folder.write_atomic(out, write)


def benchmark(
  run: TrainedRun, model: nn.Module, params: Any, repeats: int, state: Any = None
) -> speed.Benchmark:
  """:func:`experiments.inference_speed.benchmark` of ``model`` (with its ``state``) on the
  run's test images."""
  x = input_pipeline.normalize(run.test_images[: max(speed.BENCHMARK_BATCHES)], run.config.dataset)
  return speed.benchmark(model, params, x, repeats, state)


def compact_run(
  run: TrainedRun, run_dir: Path, how: str, **options: Any
) -> tuple[Any, Any, dict[int, pp.KeptUnits], ml_collections.ConfigDict]:
  """The run's smaller model (:func:`pathprox_jax.compact`), printing what it keeps.

  Args:
    run: the restored run.
    run_dir: its folder (for the printout).
    how: what chose the units (for the printout), e.g. ``"--atol 0"``.
    **options: :func:`pathprox_jax.compact`'s ``atol``, ``path_norm_tol`` or ``keep``.

  Returns:
    ``(smaller params without zero-size arrays, smaller model state (the running statistics
    of the units kept; ``{}``: none), kept units per group, smaller config)``.
  """
  config = run.config
  print(
    f"run {run_dir}: {config.experiment}, {config.method}, "
    f"checkpoint at step {run.step} of {config.total_iter}"
  )
  small, kept = pp.compact({"params": run.params, **run.model_state}, run.groups, **options)
  small_params, small_state = small["params"], model_state(small)
  print(
    f"kept units ({how}): "
    + ", ".join(f"group {g} {k.width}/{k.original_width}" for g, k in kept.items())
  )
  small_config = models.compacted_config(config, kept)
  for key in models.widths_keys(config):
    print(f"{key}: {tuple(config[key])} -> {small_config[key]}")
  return without_empty_arrays(small_params), without_empty_arrays(small_state), kept, small_config
