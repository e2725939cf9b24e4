"""The config's value tables and checks: what each key may hold, refused before anything runs.

:func:`validate` names the first unusable value as a :class:`configs.ConfigError` (the model's
keys are checked by its family, :mod:`experiments.models`); the tables say which keys only one
model family or split reads, and which a resumed run may change. :func:`finite_float` and
:func:`seed` are the checks every tool's number flags share, :func:`check_widths` the one of
every family's widths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import ml_collections

from configs import ConfigError
from experiments import models
from experiments.dataset_facts import DATASETS
from pathprox_jax import KEPT_THRESHOLDS, THRESHOLD_RULES

METHODS = ("pathprox", "wd", "gmp", "slimming")
OPTIMIZERS = ("sgd", "adamw")
GROUP_SOURCES = ("auto", "annotations")
LR_SCHEDULES = ("step", "cosine")
PARALLEL = ("shard_map", "pmap")
SPLITS = ("subset", "holdout")


# Keys that only one model family, one kind of split, one learning-rate schedule or one method
# reads: the others' are hidden from --help, refused as flags and left out of config.json
# (:func:`recorded`).
SPLIT_KEYS = {"subset": ("train_per_class",), "holdout": ("val_size",)}
SCHEDULE_KEYS = {"step": ("lr_milestones", "lr_decay")}
METHOD_KEYS = {"slimming": ("scale_l1",)}
_OWNERS = (
  ("model", models.CONFIG_KEYS),
  ("split", SPLIT_KEYS),
  ("lr_schedule", SCHEDULE_KEYS),
  ("method", METHOD_KEYS),
)
# Keys a resumed run may change. None but total_iter can change the parameters' trajectory;
# total_iter may change only where the learning rate stays the same at every step the run has
# taken or planned (see experiments.schedules.check_resumed_schedule).
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
    "group_source",
  )  # fmt: skip
)
# Bounds of float keys beyond being finite (every float key must be finite).
FLOAT_BOUNDS = {
  "lr": {"above": 0.0},
  "lr_decay": {"above": 0.0},
  "weight_decay": {"minimum": 0.0},
  "momentum": {"minimum": 0.0},
  "target_flops": {"minimum": 0.0},
  "heal_weight_decay": {"minimum": 0.0},
  "scale_l1": {"minimum": 0.0},
}
SEED_LIMIT = 2**32  # JAX's keys hold 32 bits: seed s and s + 2**32 would train one run


def flag(key: str) -> str:
  """The command-line flag of a config key: ``batch_size`` → ``--batch-size``."""
  return f"--{key.replace('_', '-')}"


def flag_value(value: Any) -> str:
  """A config value as the command-line text that ``cli.parse_command`` reads back."""
  if isinstance(value, (tuple, list)):
    return ",".join(map(flag_value, value))
  return str(value).lower() if isinstance(value, bool) else str(value)


def owner(key: str) -> tuple[str, str] | None:
  """``(setting, option)`` of a key only that option reads (``("lr_schedule", "step")``).

  None for the keys every config reads.
  """
  for setting, keys_of in _OWNERS:
    for option, keys in keys_of.items():
      if key in keys:
        return setting, option
  return None


def applies(key: str, config: ml_collections.ConfigDict) -> bool:
  """Whether the config's model, split and learning-rate schedule read ``key``."""
  setting = owner(key)
  return setting is None or config[setting[0]] == setting[1]


def recorded(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as ``config.json`` records it: the keys that apply (:func:`applies`) only.

  A cosine run records no ``lr_milestones``, a ViT no ``features``: nothing that never
  applied. Reading it back (``run_folder.read_config``) gives the others their defaults.
  """
  return {key: value for key, value in config.to_dict().items() if applies(key, config)}


def format_value(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return ",".join(map(str, value)) or "none"
  return repr(value) if isinstance(value, str) else str(value)


def check(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def finite_float(
  flag_name: str, value: str | float, *, minimum: float | None = None, above: float | None = None
) -> float:
  """``value`` (a flag's text or a config's number) as a finite float within its bounds.

  The one check of every float a tool reads: NaN fails every comparison, so a bare
  ``x < 0`` test lets it through; here NaN and ±inf are refused first.

  Args:
    flag_name: the flag the messages name (``--atol``).
    value: the text or number.
    minimum: the least value allowed (``>=``).
    above: a bound the value must exceed (``>``).

  Raises:
    ConfigError: ``value`` is no number, not finite, or out of bounds.

  Example:
    >>> finite_float("--atol", "1e-3", minimum=0.0)
    0.001
  """
  try:
    number = float(value)
  except ValueError:
    raise ConfigError(f"{flag_name}: {value!r} is not a valid float") from None
  bound = "" if minimum is None else f" >= {minimum:g}"
  bound += "" if above is None else f" > {above:g}"
  check(
    math.isfinite(number)
    and (minimum is None or number >= minimum)
    and (above is None or number > above),
    f"{flag_name} must be a finite number{bound}, got {number}",
  )
  return number


def config_value(key: str, default: Any, value: Any, *, text: bool = False) -> Any:
  """``value`` in the type of the config key's ``default``: the one conversion of a config value.

  A flag's value (``text``) is parsed: a list from comma-separated items, a bool from
  true/false, 1/0 or yes/no, a float finite and within :data:`FLOAT_BOUNDS`. A value read from
  ``config.json`` must have the type already (a float key accepts an integer; a list is a
  JSON list). A list's items take the type of the default's first item (float: none).

  Args:
    key: the config key.
    default: its value in the experiment's config.
    value: the flag's text (``text``), or the JSON value.
    text: whether ``value`` is a flag's text.

  Returns:
    The value, a tuple for a list.

  Raises:
    ConfigError: a flag's text is no value of the type (the message names the flag).
    TypeError: a JSON value is of another type (the message names the key).

  Example:
    >>> config_value("features", (400, 10), "32, 10", text=True), config_value("lr", 0.3, 1)
    ((32, 10), 1.0)
  """
  if isinstance(default, (tuple, list)):
    example = default[0] if default else 0.0
    if text:
      items = [t.strip() for t in value.split(",") if t.strip()]
    elif isinstance(value, list):
      items = value
    else:
      raise TypeError(f"{key} is {value!r}, expected list")
    return tuple(config_value(key, example, item, text=text) for item in items)
  if text:
    return _parsed(key, default, value)
  number = isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, bool):
    ok = isinstance(value, bool)
  elif isinstance(default, float):
    ok = number
  elif isinstance(default, int):
    ok = number and isinstance(value, int)
  else:
    ok = isinstance(value, type(default))
  if not ok:
    raise TypeError(f"{key} is {value!r}, expected {type(default).__name__}")
  return float(value) if isinstance(default, float) else value


def _parsed(key: str, default: Any, text: str) -> Any:
  """A flag's ``text`` as a value of the type of the config's (scalar) ``default``."""
  if isinstance(default, float):
    return finite_float(flag(key), text, **FLOAT_BOUNDS.get(key, {}))
  try:
    if isinstance(default, bool):
      lowered = text.lower()
      if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(text)
      return lowered in ("true", "1", "yes")
    if isinstance(default, int):
      return int(text)
    return text
  except ValueError:
    kind = type(default).__name__
    raise ConfigError(f"{flag(key)}: {text!r} is not a valid {kind}") from None


def seed(flag_name: str, value: str | int) -> int:
  """``value`` as a seed: an integer in [0, 2**32), one JAX key each.

  Raises:
    ConfigError: ``value`` is no integer or out of range.
  """
  try:
    number = int(value)
  except ValueError:
    number = -1
  check(
    0 <= number < SEED_LIMIT,
    f"{flag_name} takes integers in [0, 2**32) (JAX keys hold 32 bits), got {value}",
  )
  return number


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises :class:`ConfigError` naming the first unusable value (before anything is built)."""
  import jax

  check(config.method in METHODS, f"--method must be one of {METHODS}, got {config.method!r}")
  check(
    config.parallel in PARALLEL, f"--parallel must be one of {PARALLEL}, got {config.parallel!r}"
  )
  family = models.family(config)
  check(config.split in SPLITS, f"--split must be one of {SPLITS}, got {config.split!r}")
  check(
    config.dataset in DATASETS,
    f"unknown data set {config.dataset!r}; known: {', '.join(DATASETS)}",
  )
  for key, value in config.items():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, float):
        finite_float(flag(key), item, **FLOAT_BOUNDS.get(key, {}))
  for key in ("batch_size", "total_iter", "log_freq", "save_freq", "eval_batch_size"):
    check(config[key] > 0, f"{flag(key)} must be > 0, got {config[key]}")
  check(config.momentum < 1, f"--momentum must be in [0, 1), got {config.momentum}")
  check(
    config.method != "slimming" or config.optimizer == "sgd",
    f"--method slimming trains under --optimizer sgd, got {config.optimizer!r}",
  )
  seed("--seed", config.seed)
  check(
    config.group_source in GROUP_SOURCES,
    f"--group-source must be one of {GROUP_SOURCES}, got {config.group_source!r}",
  )
  check(
    config.optimizer in OPTIMIZERS,
    f"--optimizer must be one of {OPTIMIZERS}, got {config.optimizer!r}",
  )
  check(
    config.optimizer == "sgd" or config.momentum == 0,
    f"--momentum is SGD's; with --optimizer {config.optimizer} pass --momentum 0 "
    f"(AdamW's b1 is 0.9), got {config.momentum}",
  )
  check(
    config.threshold_rule in THRESHOLD_RULES,
    f"--threshold-rule must be one of {THRESHOLD_RULES}, got {config.threshold_rule!r}",
  )
  check(
    config.lr_schedule in LR_SCHEDULES,
    f"--lr-schedule must be one of {LR_SCHEDULES}, got {config.lr_schedule!r}",
  )
  check(
    0 <= config.warmup_iter < config.total_iter,
    f"--warmup-iter must be in [0, --total-iter), got {config.warmup_iter}",
  )
  check(
    all(m >= 0 for m in config.lr_milestones),
    f"--lr-milestones must be epochs >= 0, got {format_value(config.lr_milestones)}",
  )
  _validate_split(config)
  family.check_config(config)
  _validate_budget(config)
  check(
    0 <= config.num_devices <= jax.device_count(),
    f"--num-devices must be in [0, {jax.device_count()}], got {config.num_devices}",
  )
  processes = jax.process_count()
  check(
    config.num_devices % processes == 0,
    f"--num-devices {config.num_devices} must be a multiple of the {processes} processes",
  )
  check(
    config.parallel != "pmap" or processes == 1,
    f"--parallel pmap runs on one process, not {processes}: use --parallel shard_map",
  )


def has_budget(config: ml_collections.ConfigDict) -> bool:
  """Whether the run trains to a FLOPs budget: ``target_flops`` in (0, 1)."""
  return 0 < config.target_flops < 1


def _validate_budget(config: ml_collections.ConfigDict) -> None:
  check(
    config.target_flops <= 1,
    f"--target-flops must be in [0, 1] (0 or 1: no budget), got {config.target_flops}",
  )
  check(
    config.heal_weight_decay == 0 or (has_budget(config) and config.method == "pathprox"),
    "--heal-weight-decay applies only with --target-flops in (0, 1) and --method pathprox "
    f"(GMP heals under --weight-decay), got {config.heal_weight_decay}",
  )
  check(
    config.kept_threshold in KEPT_THRESHOLDS,
    f"--kept-threshold must be one of {KEPT_THRESHOLDS}, got {config.kept_threshold!r}",
  )
  check(
    config.kept_threshold == "cost" or (has_budget(config) and config.method == "pathprox"),
    "--kept-threshold applies only with --target-flops in (0, 1) and --method pathprox, got "
    f"{config.kept_threshold!r}",
  )
  if not has_budget(config):
    check(
      config.method != "gmp",
      "--method gmp needs --target-flops in (0, 1): the fraction of the FLOPs to keep",
    )
    check(
      config.prox_start == config.heal_start == 0,
      f"--prox-start and --heal-start apply only with --target-flops in (0, 1), got "
      f"{config.prox_start} and {config.heal_start}",
    )
    return
  check(
    config.method in ("pathprox", "gmp"),
    f"--target-flops needs --method pathprox or gmp (--method {config.method} trains without a "
    "budget)",
  )
  check(
    0 <= config.prox_start < config.heal_start <= config.total_iter,
    f"--target-flops needs 0 <= --prox-start < --heal-start <= --total-iter, got "
    f"{config.prox_start}, {config.heal_start} and {config.total_iter}",
  )
  if config.method == "pathprox":
    check(
      config.weight_decay > 0,
      "--target-flops with --method pathprox needs --weight-decay > 0 (the controller's "
      f"starting λ), got {config.weight_decay}",
    )
    check(
      config.optimizer != "sgd" or config.threshold_rule == "fixed_point",
      "--target-flops thresholds at λγ/(1-β) with λ set by its controller: pass "
      "--threshold-rule fixed_point",
    )


def _validate_split(config: ml_collections.ConfigDict) -> None:
  size = DATASETS[config.dataset]
  if config.split == "subset":
    check(
      1 <= config.train_per_class < size.smallest_class,
      f"--train-per-class must be in [1, {size.smallest_class - 1}] for {config.dataset} "
      f"(its rarest class has {size.smallest_class} training images), got "
      f"{config.train_per_class}",
    )
  else:
    check(
      1 <= config.val_size < size.train,
      f"--val-size must be in [1, {size.train - 1}] for {config.dataset} ({size.train} "
      f"training images), got {config.val_size}",
    )


def check_widths(key: str, widths: Sequence[int], least: int) -> None:
  """Refuses a model's widths (the config key ``key``'s) unless each is at least ``least``."""
  check(
    len(widths) > 0 and all(w >= least for w in widths),
    f"{flag(key)} must be widths >= {least}, got {format_value(widths)}",
  )
