"""Command line of every experiment: a config file, each key overridable as a flag.

``python -m experiments.mnist_mlp --workdir runs/a --batch-size 100 --momentum 0.9``:
``--workdir`` and ``--resume`` are run options; every other flag is a config key
(``--batch-size`` or ``--batch_size``). Bad input is a one-line error, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

METHODS = ("pathprox", "wd")
PARALLEL = ("shard_map", "pmap")
MODELS = ("mlp", "vgg")
SPLITS = ("subset", "holdout")


class ConfigError(ValueError):
  """A command-line or config value is not usable."""


class ArgumentParser(argparse.ArgumentParser):
  """argparse with one-line errors (``error: ...``, exit code 2) and docstrings kept as written."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    super().__init__(*args, **kwargs)

  def error(self, message: str):
    raise ConfigError(message)


def load_config(experiment: str) -> ml_collections.ConfigDict:
  """``configs.<experiment>.get_config()``."""
  try:
    module = importlib.import_module(f"configs.{experiment}")
  except ModuleNotFoundError as e:
    raise ConfigError(f"unknown experiment {experiment!r}: no configs/{experiment}.py") from e
  return module.get_config()


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
    raise ConfigError(f"--{key.replace('_', '-')}: {text!r} is not a valid {kind}") from None


def parse_args(experiment: str, argv: Sequence[str] | None = None):
  """``(config, workdir, resume)`` from the command line.

  Raises:
    ConfigError: unknown flag, missing value or a value of the wrong type.
  """
  config = load_config(experiment)
  parser = ArgumentParser(prog=f"python -m experiments.{experiment}", description=__doc__)
  parser.add_argument(
    "--workdir", help="run directory (default: runs/<experiment>-<method>-<time>)"
  )
  parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
  for key, value in config.items():
    parser.add_argument(
      f"--{key.replace('_', '-')}",
      f"--{key}",
      dest=key,
      metavar="VALUE",
      help=f"(default: {value!r})",
    )
  args = parser.parse_args(argv)
  overrides = {k: v for k, v in vars(args).items() if k in config and v is not None}
  for key, text in overrides.items():
    config[key] = _parse_value(key, config[key], text)
  validate(config)
  workdir = args.workdir or os.path.join(
    "runs", f"{config.experiment}-{config.method}-{time.strftime('%Y%m%d-%H%M%S')}"
  )
  return config, workdir, args.resume


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises :class:`ConfigError` naming the first unusable value."""
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
  for key in ("lr", "batch_size", "total_iter", "log_freq", "save_freq", "eval_batch_size"):
    _check(config[key] > 0, f"--{key.replace('_', '-')} must be positive, got {config[key]}")
  for key in ("weight_decay", "train_per_class", "val_size"):
    _check(config[key] >= 0, f"--{key.replace('_', '-')} must be >= 0, got {config[key]}")
  _check(0 <= config.momentum < 1, f"--momentum must be in [0, 1), got {config.momentum}")
  _check(
    len(config.relu) == len(config.features),
    f"--relu has {len(config.relu)} entries but --features has {len(config.features)}",
  )
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


def main(experiment: str, argv: Sequence[str] | None = None) -> int:
  """Runs one experiment from the command line; returns the exit code."""
  from experiments import data, distributed, train

  try:
    distributed.initialize()  # multi-host: before anything touches the devices
    config, workdir, resume = parse_args(experiment, argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "-m", f"experiments.{experiment}", *map(str, argv)])
    train.train_and_evaluate(config, workdir, resume=resume, command=command)
  except (
    ConfigError,
    distributed.LaunchError,
    data.DatasetUnavailableError,
    train.WorkdirError,
  ) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except train.NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def run(experiment: str) -> None:
  """Entry point of ``python -m experiments.<experiment>``."""
  sys.exit(main(experiment))
