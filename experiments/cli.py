"""Command line of every experiment: a config file, each key overridable as a flag.

``python -m experiments.mnist_mlp --workdir runs/a --batch-size 100 --momentum 0.9``:
``--workdir`` and ``--resume`` are run options; every other flag is a config key
(``--batch-size`` or ``--batch_size``). Bad input is a one-line error, exit code 2,
with nothing written. ``--help`` imports no JAX.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import ml_collections

from configs import ConfigError, key_descriptions, load_config
from experiments.config_checks import (
  applies,
  config_value,
  flag,
  format_value,
  owner,
  validate,
)
from experiments.dataset_facts import raw_data_dir
from experiments.resume import (
  RUNS_DIR,
  WorkdirError,
  check_workdir,
  new_workdir,
  newest_run,
  resumed_config,
)


class ArgumentParser(argparse.ArgumentParser):
  """argparse with one-line errors (``error: ...``, exit code 2) and docstrings kept as written.

  Flags are taken by their exact names only: no prefix of a flag stands for it (argparse's
  default would read ``--seed 3`` as a sweep's ``--seeds 3``).
  """

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    kwargs.setdefault("allow_abbrev", False)
    super().__init__(*args, **kwargs)

  def error(self, message: str):
    raise ConfigError(message)


class Command(NamedTuple):
  """A parsed command line: the config, which keys it set, and the run options."""

  config: ml_collections.ConfigDict
  overrides: frozenset[str]
  workdir: str | None
  resume: bool


def _metavar(default: Any) -> str:
  if isinstance(default, bool):
    return "BOOL"
  if isinstance(default, (tuple, list)):
    return "LIST"
  return {int: "INT", float: "FLOAT"}.get(type(default), "TEXT")


def add_config_arguments(
  parser: argparse.ArgumentParser, experiment: str, exclude: Sequence[str] = ()
) -> ml_collections.ConfigDict:
  """Adds a flag per config key (those that do not apply to the experiment hidden)."""
  config = load_config(experiment)
  descriptions = key_descriptions(experiment)
  for key, value in config.items():
    if key == "experiment" or key in exclude:
      continue
    shown = f"{descriptions.get(key, '')} (default: {format_value(value)})".strip()
    parser.add_argument(
      flag(key),
      dest=key,
      metavar=_metavar(value),
      help=shown if applies(key, config) else argparse.SUPPRESS,
    )
  return config


def _dashed(argv: Sequence[str]) -> list[str]:
  """``--batch_size`` → ``--batch-size`` (the spelling argparse knows), values untouched."""
  out = []
  for arg in argv:
    if arg.startswith("--"):
      name, eq, value = arg.partition("=")
      arg = name.replace("_", "-") + eq + value
    out.append(arg)
  return out


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
    "the newest such run; in a multi-process job, process 0's choice)",
  )
  parser.add_argument(
    "--resume", action="store_true", help="continue the run in --workdir from its last checkpoint"
  )
  config = add_config_arguments(parser, experiment)
  args = parser.parse_args(_dashed(sys.argv[1:] if argv is None else argv))
  overrides = {k: v for k, v in vars(args).items() if k in config and v is not None}
  for key, text in overrides.items():
    config[key] = config_value(key, config[key], text, text=True)
  for key in overrides:
    if not applies(key, config):
      setting, option = owner(key)
      raise ConfigError(f"{flag(key)} applies only to {flag(setting)} {option}")
  if not config.raw_data_dir and (found := raw_data_dir(config.raw_data_dir)):
    config.raw_data_dir = found  # config.json records the directory used
    overrides["raw_data_dir"] = found
  return Command(config, frozenset(overrides), args.workdir, args.resume)


def parse_args(experiment: str, argv: Sequence[str] | None = None):
  """``(config, workdir, resume)`` from the command line, validated.

  Raises:
    ConfigError: see :func:`parse_command` and :func:`validate`.
  """
  command = parse_command(experiment, argv)
  validate(command.config)
  return command.config, command.workdir or new_workdir(command.config), command.resume


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
    workdir = workdir or _chosen_by_process_zero(
      lambda: newest_run(config) if command.resume else new_workdir(config)
    )
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


def _chosen_by_process_zero(choose: Callable[[], str]) -> str:
  """Process 0's ``choose()`` (a run folder) on every process, or its error on every process.

  Without ``--workdir`` each process would stamp its own ``runs/...-<time>`` (clocks and
  start-up differ); process 0 chooses, and the job's processes all use its choice.

  Raises:
    ConfigError: ``choose()`` raised it on process 0.
  """
  import json

  from experiments import distributed

  try:
    chosen = [choose(), ""]
  except ConfigError as e:
    chosen = ["", str(e)]
  folder, error = json.loads(distributed.text_from_process_zero(json.dumps(chosen)))
  if error:
    raise ConfigError(error)
  return folder


def exit_code(run: Callable[[], Any], resume_with: Callable[[], str]) -> int:
  """Runs a command's ``run()``; returns its exit code, its errors printed as one line.

  0: done; 1: the training loss became non-finite, or a checkpoint could not be written (the
  run folder keeps its complete checkpoints and their rows); 2: bad input (config, data set,
  ``init_params``, run directory, launch, processes of one job that disagree); 128 + the
  signal: interrupted, with the command that resumes (``resume_with()``). A process of a
  multi-process job whose collective fails (a process is gone) exits 1 at once, without
  JAX's shutdown (it would wait for the gone process).
  """
  import jax

  from experiments import checkpointing, data, distributed, groups, init_params, train

  try:
    run()
  except (
    ConfigError,
    init_params.InitParamsError,
    groups.GroupSourceError,
    distributed.LaunchError,
    distributed.DisagreementError,
    data.DatasetUnavailableError,
    WorkdirError,
  ) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (train.NonFiniteLossError, checkpointing.SaveError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    distributed.leave(
      f"error: this job lost a process ({reason}); every process stops: resume the job "
      "from its last checkpoint"
    )
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
