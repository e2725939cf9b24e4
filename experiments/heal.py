"""Heal: the same fine-tune for a compacted PathProx model and a pruned weight-decay model.

``python -m experiments.heal SOURCE [SOURCE ...] --steps N [--lrs A,B,C] [--method wd]
[--out DIR] [--KEY VALUE ...]`` fine-tunes each ``SOURCE``, an output folder of
``experiments.compact`` or ``experiments.prune``, for ``N`` steps at each learning rate of
the grid, picks the learning rate whose run ends with the best validation accuracy (ties: the
lower validation loss; the test set plays no part), and writes ``heal.json``.

Every fine-tune is an ordinary run of the source's experiment (``DIR/lr<lr>``, resumed when
the command is run again) that starts from ``SOURCE/params`` (``--init-params``) with the
source's model, data and seed, and with the same training settings for every source: the
keys of :data:`HEAL_KEYS` take the experiment's defaults, then ``--method`` (default ``wd``:
weight decay on the kept units, which keeps them all; ``pathprox`` may switch more off), a
cosine schedule to 0 without warm-up, and any experiment flag given here (``--weight-decay``,
``--batch-size``, ``--log-freq``...). Nothing the source was trained with carries over, so a
PathProx model and a weight-decay model healed with the same flags are healed alike. Sources
given together must come from one experiment and from main runs of equal length, so that
main run + heal totals are equal.

``DIR`` (default ``SOURCE-heal``; ``--out`` with one source) holds the runs and
``heal.json``: the source, its main run's steps, the heal's steps and their total, the
settings, each learning rate's validation and test loss and accuracy, the accuracies before
the heal, the chosen learning rate and its accuracies. The default grid is the experiment's
default learning rate times 0.1, 0.03 and 0.01.

Exit codes: 0 done; 1 a fine-tune failed (its error printed); 2 bad input; 128 + signal:
interrupted (run the command again to resume).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

import configs
from experiments import cli, config_checks, run_folder

# The training settings every healed source shares: the experiment's defaults, then the flags.
HEAL_KEYS = ("method", "optimizer", "threshold_rule", "momentum", "lr", "lr_schedule",
             "lr_milestones", "lr_decay", "warmup_iter", "weight_decay", "regularize_bias",
             "balance", "batch_size", "augment", "total_iter")  # fmt: skip
SET_BY_HEAL = ("lr", "total_iter", "init_params")  # from --lrs, --steps and the source
LR_FACTORS = (0.1, 0.03, 0.01)  # the default grid, times the experiment's default lr
STEPS_FRACTION = 0.1  # the printed heal command's steps, as a share of the main run's
RECORD = "heal.json"


class UsageError(ValueError):
  """A source or a flag of the heal cannot be used."""


def heal_config(
  source: ml_collections.ConfigDict,
  params_dir: Path,
  steps: int,
  lr: float,
  settings: dict[str, Any],
) -> ml_collections.ConfigDict:
  """The config of one fine-tune of a compact or prune output.

  Args:
    source: the output's config (its model's widths, data and seed).
    params_dir: the output's ``params/``.
    steps: the fine-tune's steps.
    lr: its learning rate.
    settings: config keys that override the defaults of :data:`HEAL_KEYS` (the flags).

  Returns:
    The source's config with :data:`HEAL_KEYS` from the experiment's defaults, a cosine
    schedule without warm-up, then ``settings``, ``lr``, ``steps`` and ``init_params``.
  """
  config = source.copy_and_resolve_references()
  defaults = configs.load_config(source.experiment)
  for key in HEAL_KEYS:
    config[key] = defaults[key]
  config.lr_schedule, config.lr_milestones, config.warmup_iter = "cosine", (), 0
  config.update(settings)
  config.lr, config.total_iter = lr, steps
  config.init_params = str(params_dir.absolute())
  return config


def run_argv(config: ml_collections.ConfigDict) -> list[str]:
  """The flags of a run of ``config``: every key that applies to it (``config_checks.recorded``)
  whose value differs from the experiment's.

  Values are compared as the flags' text, so a list read from JSON equals its tuple default.
  """
  defaults = configs.load_config(config.experiment)
  text = config_checks.flag_value
  return [
    item
    for key, value in config_checks.recorded(config).items()
    if key != "experiment" and text(value) != text(defaults[key])
    for item in (config_checks.flag(key), text(value))
  ]


def default_lrs(experiment: str) -> list[float]:
  """The default grid: the experiment's default learning rate times :data:`LR_FACTORS`."""
  lr = configs.load_config(experiment).lr
  return [float(f"{lr * f:.6g}") for f in LR_FACTORS]


def heal_command(out: Path, run_config: ml_collections.ConfigDict) -> str:
  """The command that heals a compact or prune output ``out`` of a run of ``run_config``.

  The steps are :data:`STEPS_FRACTION` of the run's, the grid the default one.
  """
  steps = max(1, round(STEPS_FRACTION * run_config.total_iter))
  lrs = ",".join(f"{lr:g}" for lr in default_lrs(run_config.experiment))
  return shlex.join(
    ["python", "-m", "experiments.heal", str(out), "--steps", str(steps), "--lrs", lrs]
  )


def lr_folder(lr: float) -> str:
  """A fine-tune's folder name, ``lr<lr>``, that reads back as the same float."""
  text = f"{lr:g}"
  return f"lr{text if float(text) == lr else repr(lr)}"


def read_source(folder: Path) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """``(config, record)`` of a compact or prune output; the record gains ``"kind"``.

  Raises:
    UsageError: ``folder`` is neither output, or its files are malformed.
  """
  markers = (run_folder.COMPACT_RECORD, run_folder.PRUNE_RECORD)
  for marker in markers:
    if (folder / marker).is_file():
      try:
        record = run_folder.read_record(folder / marker)
        config = run_folder.read_config(folder / run_folder.CONFIG)
        int(record["step"])
      except (run_folder.NotARunError, KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{folder} is a malformed {Path(marker).stem} output ({e})") from None
      if not (folder / "params").is_dir():
        raise UsageError(f"{folder} has no params/ folder")
      return config, {**record, "kind": Path(marker).stem}
  raise UsageError(f"{folder} is not a compact or prune output (no {markers[0]} or {markers[1]})")


def _parse(argv: Sequence[str]):
  """``(args, sources {folder: (config, record)}, settings, lrs)``; raises on bad input."""
  parser = cli.ArgumentParser(
    prog="python -m experiments.heal",
    usage="%(prog)s SOURCE [SOURCE ...] --steps N [--lrs A,B,C] [--method M] [--out DIR] "
    "[--KEY VALUE ...]",
    description=__doc__,
    allow_abbrev=False,  # --lr is the experiment's flag (refused), not --lrs
  )
  parser.add_argument("sources", nargs="+", help="compact or prune output folders")
  parser.add_argument("--steps", type=int, required=True, help="the fine-tune's steps")
  parser.add_argument("--lrs", help="the learning rates, comma-separated (default: see above)")
  parser.add_argument("--method", default="wd", choices=config_checks.METHODS, help="default: wd")
  parser.add_argument("--out", help="output folder (one source only; default: SOURCE-heal)")
  args, rest = parser.parse_known_args(argv)
  if args.steps < 1:
    raise cli.ConfigError("--steps must be >= 1")
  if args.out and len(args.sources) > 1:
    raise cli.ConfigError("--out takes one source; with several, each heals into SOURCE-heal")
  sources = {Path(s): read_source(Path(s)) for s in args.sources}
  experiments = {config.experiment for config, _ in sources.values()}
  if len(experiments) > 1:
    raise UsageError(f"the sources come from different experiments: {sorted(experiments)}")
  main_steps = {folder: record["step"] for folder, (_, record) in sources.items()}
  if len(set(main_steps.values())) > 1:
    shown = ", ".join(f"{folder}: {step}" for folder, step in main_steps.items())
    raise UsageError(f"the sources' main runs differ in length ({shown}): totals would differ")
  (experiment,) = experiments
  command = cli.parse_command(experiment, rest)
  if command.workdir or command.resume:
    raise cli.ConfigError("--workdir and --resume are the heal's own: use --out, rerun to resume")
  settings = {k: command.config[k] for k in command.overrides}
  taken = sorted(set(settings) & set(SET_BY_HEAL))
  if taken:
    raise cli.ConfigError(f"{config_checks.flag(taken[0])} is set by the heal (--lrs, --steps)")
  settings["method"] = args.method
  if args.lrs is None:
    lrs = default_lrs(experiment)
  else:
    lrs = [config_checks.finite_float("--lrs", t, above=0.0) for t in args.lrs.split(",")]
  if len(set(lrs)) != len(lrs):
    raise cli.ConfigError(f"--lrs {args.lrs}: the learning rates must differ")
  return args, sources, settings, lrs


def _result(workdir: Path, lr: float) -> dict[str, Any]:
  """A finished fine-tune's last validation and test figures."""
  last = run_folder.read_rows(workdir / run_folder.METRICS)[-1]
  figures = {k: last.get(k) for k in ("val_acc", "val_loss", "test_acc", "test_loss")}
  return {"lr": lr, "workdir": str(workdir.absolute()), "step": last["step"], **figures}


def heal_source(
  folder: Path,
  source: tuple[ml_collections.ConfigDict, dict[str, Any]],
  out: Path,
  steps: int,
  lrs: Sequence[float],
  settings: dict[str, Any],
  command: str,
) -> int:
  """Runs (or resumes) a source's fine-tunes, then writes ``out/heal.json``; the exit code."""
  config, record = source
  runs = []
  for lr in lrs:
    run = heal_config(config, folder / "params", steps, lr, settings)
    workdir = out / lr_folder(lr)
    resume = (workdir / run_folder.METRICS).exists() or (workdir / run_folder.CHECKPOINTS).exists()
    argv = [*run_argv(run), "--workdir", str(workdir), *(["--resume"] if resume else [])]
    print(f"heal {folder}, lr {lr:g}: {workdir}", flush=True)
    code = cli.main(config.experiment, argv, resume_with=command)
    if code:
      return code
    runs.append(_result(workdir, lr))
  if any(not isinstance(r["val_acc"], (int, float)) for r in runs):
    print(f"error: {folder}'s runs have no validation accuracy to choose by", file=sys.stderr)
    return 2
  best = max(runs, key=lambda r: (r["val_acc"], -r["val_loss"]))
  first = run_folder.read_rows(Path(best["workdir"]) / run_folder.METRICS)[0]
  healed = {
    "source": str(folder.absolute()),
    "kind": record["kind"],
    "command": command,
    "main_steps": record["step"],
    "heal_steps": steps,
    "total_steps": record["step"] + steps,
    "settings": {k: run[k] for k in HEAL_KEYS if k not in SET_BY_HEAL},
    "widths": record.get("widths"),
    "flops_per_example": record.get("flops_per_example"),
    "before": {k: first.get(k) for k in ("val_acc", "test_acc")},
    "runs": runs,
    "chosen_lr": best["lr"],
    "val_acc": best["val_acc"],
    "test_acc": best["test_acc"],
  }
  run_folder.write_json(out / RECORD, healed)
  print(
    f"healed {folder}: lr {best['lr']:g} chosen on validation; val acc {best['val_acc']:.4f}, "
    f"test acc {best['test_acc']:.4f} (before: {healed['before']['test_acc']:.4f}); "
    f"wrote {out / RECORD}"
  )
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Heals the sources from the command line; returns the exit code."""
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    args, sources, settings, lrs = _parse(argv)
  except (cli.ConfigError, UsageError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  command = shlex.join(["python", "-m", "experiments.heal", *argv])
  for folder, source in sources.items():
    out = Path(args.out) if args.out else folder.with_name(f"{folder.name}-heal")
    code = heal_source(folder, source, out, args.steps, lrs, settings, command)
    if code:
      return code
  return 0


if __name__ == "__main__":
  sys.exit(main())
