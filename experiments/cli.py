"""Command line of every experiment: a config file, each key overridable as a flag.

``python -m experiments.mnist_mlp --workdir runs/a --batch-size 100 --momentum 0.9``:
``--workdir`` and ``--resume`` are run options; every other flag is a config key
(``--batch-size`` or ``--batch_size``). Bad input is a one-line error, exit code 2,
with nothing written. ``--help`` imports no JAX.
"""

from __future__ import annotations

import argparse
import importlib
import io
import math
import os
import shlex
import sys
import time
import tokenize
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import ml_collections

METHODS = ("pathprox", "wd")
OPTIMIZERS = ("sgd", "adamw")
THRESHOLD_RULES = ("fixed_point", "paper")
LR_SCHEDULES = ("step", "cosine")
PARALLEL = ("shard_map", "pmap")
MODELS = ("mlp", "vgg", "vit")
SPLITS = ("subset", "holdout")
RUNS_DIR = "runs"  # where runs go without --workdir: runs/<experiment>-<method>-<time>

# Keys that only one model or one kind of split reads: the others' are hidden from --help
# and refused as flags.
MODEL_KEYS = {
  "mlp": ("features", "relu"),
  "vgg": ("channels", "pool_after"),
  "vit": ("num_heads", "mlp_dim", "width", "head_dim", "patch_size"),
}
SPLIT_KEYS = {"subset": ("train_per_class",), "holdout": ("val_size",)}
# Keys a resumed run may change: none of them changes the parameters' trajectory.
RESUMABLE_KEYS = frozenset(
  (
    "total_iter",
    "log_freq",
    "save_freq",
    "eval_batch_size",
    "data_dir",
    "raw_data_dir",
    "allow_unofficial_data",
    "progress",
    "tensorboard",
  )  # fmt: skip
)


class DataSetSize(NamedTuple):
  """What the split checks need to know of a data set before loading it."""

  train: int  # training images
  smallest_class: int  # training images of the rarest class
  classes: int


DATA_SET_SIZES = {
  "mnist": DataSetSize(60_000, 5_421, 10),
  "fashion_mnist": DataSetSize(60_000, 6_000, 10),
  "cifar10": DataSetSize(50_000, 5_000, 10),
}


class ConfigError(ValueError):
  """A command-line or config value is not usable."""


class ArgumentParser(argparse.ArgumentParser):
  """argparse with one-line errors (``error: ...``, exit code 2) and docstrings kept as written."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    super().__init__(*args, **kwargs)

  def error(self, message: str):
    raise ConfigError(message)


class Command(NamedTuple):
  """A parsed command line: the config, which keys it set, and the run options."""

  config: ml_collections.ConfigDict
  overrides: frozenset[str]
  workdir: str | None
  resume: bool


def load_config(experiment: str) -> ml_collections.ConfigDict:
  """``configs.<experiment>.get_config()``."""
  try:
    module = importlib.import_module(f"configs.{experiment}")
  except ModuleNotFoundError as e:
    raise ConfigError(f"unknown experiment {experiment!r}: no configs/{experiment}.py") from e
  return module.get_config()


def key_descriptions(experiment: str) -> dict[str, str]:
  """Each config key's trailing comment in ``configs/common.py``, else in the experiment's file."""
  descriptions: dict[str, str] = {}
  folder = Path(importlib.import_module("configs").__file__).parent
  for name in (experiment, "common"):  # common last: its comments describe the key itself
    path = folder / f"{name}.py"
    if not path.is_file():
      continue
    lines: dict[int, list[tokenize.TokenInfo]] = {}
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
      lines.setdefault(token.start[0], []).append(token)
    for tokens in lines.values():
      text = [t.string for t in tokens[:4]]
      if text[:2] == ["config", "."] and len(text) == 4 and text[3] == "=":
        comments = [t.string for t in tokens if t.type == tokenize.COMMENT]
        if comments:
          descriptions[text[2]] = comments[-1].lstrip("#").strip()
  return descriptions


def flag(key: str) -> str:
  """The command-line flag of a config key: ``batch_size`` → ``--batch-size``."""
  return f"--{key.replace('_', '-')}"


def _metavar(default: Any) -> str:
  if isinstance(default, bool):
    return "BOOL"
  if isinstance(default, (tuple, list)):
    return "LIST"
  return {int: "INT", float: "FLOAT"}.get(type(default), "TEXT")


def _owner(key: str) -> tuple[str, str] | None:
  """``("model" or "split", option)`` of a key only that option reads; None for the others."""
  for setting, keys_of in (("model", MODEL_KEYS), ("split", SPLIT_KEYS)):
    for option, keys in keys_of.items():
      if key in keys:
        return setting, option
  return None


def _applies(key: str, config: ml_collections.ConfigDict) -> bool:
  """Whether the config's model and split read ``key``."""
  owner = _owner(key)
  return owner is None or config[owner[0]] == owner[1]


def add_config_arguments(
  parser: argparse.ArgumentParser, experiment: str, exclude: Sequence[str] = ()
) -> ml_collections.ConfigDict:
  """Adds a flag per config key (those that do not apply to the experiment hidden)."""
  config = load_config(experiment)
  descriptions = key_descriptions(experiment)
  for key, value in config.items():
    if key == "experiment" or key in exclude:
      continue
    shown = f"{descriptions.get(key, '')} (default: {_format(value)})".strip()
    parser.add_argument(
      flag(key),
      dest=key,
      metavar=_metavar(value),
      help=shown if _applies(key, config) else argparse.SUPPRESS,
    )
  return config


def flag_value(value: Any) -> str:
  """A config value as the command-line text that :func:`parse_command` reads back."""
  if isinstance(value, (tuple, list)):
    return ",".join(map(flag_value, value))
  return str(value).lower() if isinstance(value, bool) else str(value)


def _format(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return ",".join(map(str, value)) or "none"
  return repr(value) if isinstance(value, str) else str(value)


def _dashed(argv: Sequence[str]) -> list[str]:
  """``--batch_size`` → ``--batch-size`` (the spelling argparse knows), values untouched."""
  out = []
  for arg in argv:
    if arg.startswith("--"):
      name, eq, value = arg.partition("=")
      arg = name.replace("_", "-") + eq + value
    out.append(arg)
  return out


def _parse_value(key: str, default: Any, text: str) -> Any:
  """Parses ``text`` with the type of the config's default value."""
  try:
    if isinstance(default, bool):
      lowered = text.lower()
      if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(text)
      return lowered in ("true", "1", "yes")
    if isinstance(default, (tuple, list)):
      example = default[0] if default else 0.0
      return tuple(_parse_value(key, example, t.strip()) for t in text.split(",") if t.strip())
    if isinstance(default, float):
      return float(text)
    if isinstance(default, int):
      return int(text)
    return text
  except ValueError:
    kind = type(default).__name__
    raise ConfigError(f"{flag(key)}: {text!r} is not a valid {kind}") from None


def parse_command(experiment: str, argv: Sequence[str] | None = None) -> Command:
  """The command line, parsed but not yet validated (``--help`` exits here, without JAX).

  Raises:
    ConfigError: unknown flag, missing value, a value of the wrong type or a flag
      that does not apply to the model or split.
  """
  parser = ArgumentParser(
    prog=f"python -m experiments.{experiment}",
    usage="%(prog)s [--workdir DIR] [--resume] [--KEY VALUE ...]",
    description=__doc__,
  )
  parser.add_argument(
    "--workdir",
    metavar="DIR",
    help=f"run directory (default: {RUNS_DIR}/<experiment>-<method>-<time>; with --resume, "
    "the newest such run)",
  )
  parser.add_argument(
    "--resume", action="store_true", help="continue the run in --workdir from its last checkpoint"
  )
  config = add_config_arguments(parser, experiment)
  args = parser.parse_args(_dashed(sys.argv[1:] if argv is None else argv))
  overrides = {k: v for k, v in vars(args).items() if k in config and v is not None}
  for key, text in overrides.items():
    config[key] = _parse_value(key, config[key], text)
  for key in overrides:
    if not _applies(key, config):
      setting, option = _owner(key)
      raise ConfigError(f"{flag(key)} applies only to --{setting} {option}")
  from experiments.data import RAW_DIR_ENV

  if not config.raw_data_dir and os.environ.get(RAW_DIR_ENV):
    config.raw_data_dir = os.environ[RAW_DIR_ENV]  # config.json records the directory used
    overrides["raw_data_dir"] = config.raw_data_dir
  return Command(config, frozenset(overrides), args.workdir, args.resume)


def parse_args(experiment: str, argv: Sequence[str] | None = None):
  """``(config, workdir, resume)`` from the command line, validated.

  Raises:
    ConfigError: see :func:`parse_command` and :func:`validate`.
  """
  command = parse_command(experiment, argv)
  validate(command.config)
  return command.config, command.workdir or new_workdir(command.config), command.resume


def new_workdir(config: ml_collections.ConfigDict) -> str:
  """``runs/<experiment>-<method>-<time>``."""
  stamp = time.strftime("%Y%m%d-%H%M%S")
  return os.path.join(RUNS_DIR, f"{config.experiment}-{config.method}-{stamp}")


def newest_run(config: ml_collections.ConfigDict) -> str:
  """The newest ``runs/<experiment>-<method>-<time>`` (for ``--resume`` without ``--workdir``)."""
  prefix = f"{config.experiment}-{config.method}-"
  runs = sorted(p.name for p in Path(RUNS_DIR).glob(prefix + "*") if p.is_dir())
  if not runs:
    raise ConfigError(
      f"--resume: no run of {config.experiment} with --method {config.method} in "
      f"{RUNS_DIR}/ to resume; pass --workdir"
    )
  return os.path.join(RUNS_DIR, runs[-1])


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises :class:`ConfigError` naming the first unusable value (before anything is built)."""
  import jax

  from experiments import data

  _check(config.method in METHODS, f"--method must be one of {METHODS}, got {config.method!r}")
  _check(
    config.parallel in PARALLEL, f"--parallel must be one of {PARALLEL}, got {config.parallel!r}"
  )
  _check(config.model in MODELS, f"--model must be one of {MODELS}, got {config.model!r}")
  _check(config.split in SPLITS, f"--split must be one of {SPLITS}, got {config.split!r}")
  _check(
    config.dataset in data.DATASETS,
    f"unknown data set {config.dataset!r}; known: {', '.join(data.DATASETS)}",
  )
  for key in ("lr", "lr_decay", "batch_size", "total_iter", "log_freq", "save_freq"):
    _check(
      math.isfinite(config[key]) and config[key] > 0,
      f"{flag(key)} must be a finite number > 0, got {config[key]}",
    )
  _check(config.eval_batch_size > 0, f"--eval-batch-size must be > 0, got {config.eval_batch_size}")
  _check(
    math.isfinite(config.weight_decay) and config.weight_decay >= 0,
    f"--weight-decay must be a finite number >= 0, got {config.weight_decay}",
  )
  _check(0 <= config.momentum < 1, f"--momentum must be in [0, 1), got {config.momentum}")
  _check(
    config.optimizer in OPTIMIZERS,
    f"--optimizer must be one of {OPTIMIZERS}, got {config.optimizer!r}",
  )
  _check(
    config.optimizer == "sgd" or config.momentum == 0,
    f"--momentum is SGD's; with --optimizer {config.optimizer} pass --momentum 0 "
    f"(AdamW's b1 is 0.9), got {config.momentum}",
  )
  _check(
    config.threshold_rule in THRESHOLD_RULES,
    f"--threshold-rule must be one of {THRESHOLD_RULES}, got {config.threshold_rule!r}",
  )
  _check(
    config.lr_schedule in LR_SCHEDULES,
    f"--lr-schedule must be one of {LR_SCHEDULES}, got {config.lr_schedule!r}",
  )
  _check(
    0 <= config.warmup_iter < config.total_iter,
    f"--warmup-iter must be in [0, --total-iter), got {config.warmup_iter}",
  )
  _check(
    all(m >= 0 for m in config.lr_milestones),
    f"--lr-milestones must be epochs >= 0, got {_format(config.lr_milestones)}",
  )
  _validate_split(config)
  _validate_model(config)
  _check(
    0 <= config.num_devices <= jax.device_count(),
    f"--num-devices must be in [0, {jax.device_count()}], got {config.num_devices}",
  )
  processes = jax.process_count()
  _check(
    config.num_devices % processes == 0,
    f"--num-devices {config.num_devices} must be a multiple of the {processes} processes",
  )
  _check(
    config.parallel != "pmap" or processes == 1,
    f"--parallel pmap runs on one process, not {processes}: use --parallel shard_map",
  )


def _validate_split(config: ml_collections.ConfigDict) -> None:
  size = DATA_SET_SIZES.get(config.dataset)
  if size is None:
    return
  if config.split == "subset":
    _check(
      1 <= config.train_per_class < size.smallest_class,
      f"--train-per-class must be in [1, {size.smallest_class - 1}] for {config.dataset} "
      f"(its rarest class has {size.smallest_class} training images), got "
      f"{config.train_per_class}",
    )
  else:
    _check(
      1 <= config.val_size < size.train,
      f"--val-size must be in [1, {size.train - 1}] for {config.dataset} ({size.train} "
      f"training images), got {config.val_size}",
    )


def _validate_model(config: ml_collections.ConfigDict) -> None:
  classes = DATA_SET_SIZES[config.dataset].classes if config.dataset in DATA_SET_SIZES else 1
  if config.model == "mlp":
    widths, key = config.features, "features"
    _check(
      len(config.relu) == len(config.features),
      f"--relu has {len(config.relu)} entries but --features has {len(config.features)}",
    )
  elif config.model == "vit":
    widths, key = (*config.num_heads, *config.mlp_dim), "num_heads"
    _check(
      len(config.num_heads) == len(config.mlp_dim),
      f"--num-heads has {len(config.num_heads)} blocks but --mlp-dim has {len(config.mlp_dim)}",
    )
  else:
    widths, key = config.channels, "channels"
    _check(len(widths) % 2 == 0, f"--channels must list an even number of convs, got {len(widths)}")
    _check(
      all(0 <= i < len(widths) for i in config.pool_after),
      f"--pool-after must be conv indices in [0, {len(widths) - 1}], got "
      f"{_format(config.pool_after)}",
    )
  # A ViT block without heads or neurons is still a block (a pruned or compact model's):
  # its residual connection carries the signal past it.
  least = 0 if config.model == "vit" else 1
  _check(
    len(widths) > 0 and all(w >= least for w in widths),
    f"{flag(key)} must be widths >= {least}, got {_format(widths)}",
  )
  if config.model == "mlp":
    _check(
      widths[-1] >= classes,
      f"--features: the last width is the number of outputs and must be >= the {classes} "
      f"classes of {config.dataset}, got {widths[-1]}",
    )


def check_workdir(workdir: str) -> None:
  """The run directory can be created and written (checked before anything is written)."""
  path = Path(workdir)
  _check(not path.exists() or path.is_dir(), f"--workdir {workdir} is a file, not a directory")
  existing = next(p for p in (path, *path.absolute().parents) if p.exists())
  _check(
    existing.is_dir() and os.access(existing, os.W_OK | os.X_OK),
    f"--workdir {workdir}: {existing} is not writable",
  )


def _command_line(experiment: str, argv: Sequence[str]) -> str:
  return shlex.join(["python", "-m", f"experiments.{experiment}", *map(str, argv)])


def resume_command(module: str, argv: Sequence[str], workdir: str) -> str:
  """``python -m <module> <argv>`` with ``--workdir`` and ``--resume``: what continues a run."""
  argv = [str(a) for a in argv]
  if not any(a == "--workdir" or a.startswith("--workdir=") for a in argv):
    argv += ["--workdir", workdir]
  if "--resume" not in argv:
    argv.append("--resume")
  return shlex.join(["python", "-m", module, *argv])


def main(
  experiment: str, argv: Sequence[str] | None = None, *, resume_with: str | None = None
) -> int:
  """Runs one experiment from the command line; returns the exit code.

  Args:
    experiment: the config's name (``configs/<experiment>.py``).
    argv: the flags (default: ``sys.argv[1:]``).
    resume_with: the command an interrupted run tells the user to resume with
      (default: this one, with ``--workdir`` and ``--resume``).
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    command = parse_command(experiment, argv)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  import jax

  from experiments import distributed, interrupts, train

  workdir = command.workdir

  def run() -> None:
    nonlocal workdir
    distributed.initialize()  # multi-host: before anything touches the devices
    config = command.config
    workdir = workdir or (newest_run(config) if command.resume else new_workdir(config))
    check_workdir(workdir)
    if command.resume:
      config = resumed_config(workdir, config, command.overrides)
    validate(config)
    if jax.process_index() == 0:
      print(f"run directory: {workdir}", flush=True)
    with interrupts.Interrupts() as stop:
      train.train_and_evaluate(
        config,
        workdir,
        resume=command.resume,
        command=_command_line(experiment, argv),
        stop_requested=stop.requested,
      )

  return exit_code(
    run, lambda: resume_with or resume_command(f"experiments.{experiment}", argv, workdir)
  )


def exit_code(run: Callable[[], Any], resume_with: Callable[[], str]) -> int:
  """Runs a command's ``run()``; returns its exit code, its errors printed as one line.

  0: done; 1: the training loss became non-finite; 2: bad input (config, data set,
  ``init_params``, run directory, launch); 128 + the signal: interrupted, with the command that
  resumes (``resume_with()``).
  """
  from experiments import checkpointing, data, distributed, train

  try:
    run()
  except (
    ConfigError,
    checkpointing.InitParamsError,
    distributed.LaunchError,
    data.DatasetUnavailableError,
    train.WorkdirError,
  ) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except train.NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except train.Interrupted as e:
    print(
      f"interrupted at step {e.step}; checkpoint saved; resume with: {resume_with()}",
      file=sys.stderr,
    )
    return 128 + e.signum
  return 0


def run(experiment: str) -> None:
  """Entry point of ``python -m experiments.<experiment>``."""
  sys.exit(main(experiment))


def resumed_config(
  workdir: str, config: ml_collections.ConfigDict, overrides: frozenset[str]
) -> ml_collections.ConfigDict:
  """The config of the run in ``workdir``, with this command's changes to resumable keys.

  Keys not on the command line keep the run's values. Keys that change the
  trajectory (all but :data:`RESUMABLE_KEYS`) must equal the run's.

  Raises:
    ConfigError: a key that changes the trajectory differs (all such keys listed), or
      the run has checkpoints but no readable ``config.json``.
  """
  from experiments import run_folder

  try:
    before = run_folder.read_config(Path(workdir) / run_folder.CONFIG)
  except run_folder.NotARunError as e:
    if any(p.name.isdigit() for p in Path(workdir, "checkpoints").glob("*")):
      raise ConfigError(f"--resume: {workdir} has checkpoints but {e}") from None
    return config  # nothing was run there yet: the run starts now
  differing = [key for key in sorted(overrides - RESUMABLE_KEYS) if config[key] != before[key]]
  if differing:
    changes = ", ".join(
      f"{flag(k)} {_format(before[k])} (here {_format(config[k])})" for k in differing
    )
    raise ConfigError(
      f"--resume: {workdir} was run with {changes}; these change the training trajectory, so "
      "resume with the run's values or start a new run in another --workdir"
    )
  resumed = config.copy_and_resolve_references()
  for key in config:
    if key not in overrides:
      resumed[key] = before[key]
  return resumed
