"""Many runs of one experiment as one compiled program: seeds and weight decays.

``python -m experiments.sweep mnist_subset_mlp --seeds 0,1,2,3,4 --workdir DIR [flags]``
trains every member (each seed, times each ``--weight-decays`` value) together:
the per-device training loop of :mod:`experiments.train` runs over a leading
member axis (``--member-loop``: vmapped on GPU and TPU, one member after another
inside the compiled loop on CPU), the data set is shared, and the evaluation of
all members is one vmapped pass. Each member writes an ordinary run folder, ``DIR/seed<s>``
(``DIR/wd<λ>-seed<s>`` when λ varies too; one folder per member), locked as a single
run's is, with its own ``config.json``,
``metrics.jsonl`` and checkpoints, so ``experiments.plot`` and
``experiments.compact`` read it as a single run; member ``seed<s>`` follows the
single run with ``--seed s`` to round-off. Every other flag is the experiment's
own.

The training loop is the single run's (:func:`experiments.train.train_members`):
Ctrl-C or SIGTERM saves every member at the step reached and prints the command
that resumes; ``--resume`` continues all members from one step (an unreadable
checkpoint of one member takes them all back to the newest step every member can
read) and refuses flags that change the trajectory. A member whose loss becomes
NaN or infinite stops alone: ``config.json`` records ``"diverged": {"step", "loss"}``,
the others go on, and the sweep exits with 1 naming it (a resumed sweep leaves it out).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import ml_collections

from experiments import cli, config_checks, parallel, resume, run_folder, train


def run_sweep(
  configs: Sequence[ml_collections.ConfigDict],
  workdirs: Sequence[Path],
  *,
  resume: bool = False,
  command: str = "",
  stop_requested: Callable[[], int | None] | None = None,
  member_loop: str = "auto",
) -> list[dict[str, float]]:
  """Trains all members together; each writes its run folder as a single run does.

  The loop is the single run's (:func:`experiments.train.train_members`): the
  sweep's folder and each member's are locked, a signal stops every member with a checkpoint at one
  step, and a member that diverges stops alone, recorded in its ``config.json``.

  Args:
    configs: each member's config; they differ only in ``seed`` and ``weight_decay``.
    workdirs: each member's run folder, all in the sweep's folder.
    resume: continue every member from its newest checkpoint readable in all of them
      (a member recorded as diverged stays so, and is left out).
    command: the sweep's command line, recorded in every member's ``config.json``.
    stop_requested: polled between stretches of steps (see :mod:`experiments.interrupts`).
    member_loop: ``"vmap"``, ``"map"`` or ``"auto"`` (:func:`parallel.over_members`).

  Returns:
    Each member's last metrics.

  Raises:
    resume.WorkdirError: another process holds the sweep's or a member's folder, a run folder holds
      checkpoints and ``resume`` is not set, or the members' checkpoints are at
      different steps.
    train.NonFiniteLossError: a member diverged (once the others have finished).
    train.Interrupted: ``stop_requested`` returned a signal; checkpoints were saved.
  """
  workdirs = [Path(w) for w in workdirs]
  return train.train_members(
    configs,
    workdirs,
    workdirs[0].parent,
    names=[w.name for w in workdirs],
    resume=resume,
    command=command,
    stop_requested=stop_requested,
    member_loop=member_loop,
  )


def parse_command(argv: Sequence[str]) -> tuple[argparse.Namespace, cli.Command]:
  """The sweep's own flags, and the experiment's command line (not yet validated; no JAX).

  Raises:
    cli.ConfigError: a flag not spelled out in full, no ``--seeds``, or ``--seed`` (or
      ``--weight-decay`` beside ``--weight-decays``), which the sweep sets for each member.
  """
  parser = cli.ArgumentParser(prog="python -m experiments.sweep", description=__doc__)
  parser.add_argument("experiment", help="the experiment (a file in configs/)")
  parser.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2,3,4 (required)")
  parser.add_argument(
    "--weight-decays", default="", help="comma-separated λ values (default: the config's)"
  )
  parser.add_argument(
    "--workdir", required=True, help="the sweep's folder; members go in sub-folders"
  )
  parser.add_argument(
    "--member-loop",
    choices=parallel.MEMBER_LOOPS,
    default="auto",
    help="vmap: the members batched (GPU, TPU); map: one after another in the compiled loop, "
    "each exactly a single run (faster on CPU); auto: map on CPU, else vmap",
  )
  args, rest = parser.parse_known_args(argv)
  command = cli.parse_command(args.experiment, rest)
  if "seed" in command.overrides:
    raise cli.ConfigError("--seed: a sweep sets each member's seed from --seeds; pass --seeds")
  if "weight_decay" in command.overrides and args.weight_decays:
    raise cli.ConfigError(
      "--weight-decay: the sweep sets each member's λ from --weight-decays; pass one of them"
    )
  if args.seeds is None:
    raise cli.ConfigError("--seeds is required (comma-separated seeds, e.g. 0,1,2,3,4)")
  return args, command


def members(
  args: argparse.Namespace, command: cli.Command
) -> tuple[list[ml_collections.ConfigDict], list[Path]]:
  """Each member's config (validated; on resume, its run's own) and run folder.

  Raises:
    cli.ConfigError: a bad ``--seeds`` or ``--weight-decays`` (none, a repeat, a seed
      outside [0, 2**32), a λ that is not a finite number >= 0), a run folder with a
      file where a folder belongs or the other way round, a bad config value, or a
      resume that changes a member's trajectory.
  """
  seeds = _distinct(args.seeds, "--seeds", lambda t: config_checks.seed("--seeds", t))
  if not seeds:
    raise cli.ConfigError(f"--seeds: {args.seeds!r} lists no seed")
  weight_decays = _distinct(
    args.weight_decays,
    "--weight-decays",
    lambda t: config_checks.finite_float("--weight-decays", t, minimum=0.0),
  )
  resume.check_workdir(args.workdir)
  configs, workdirs = [], []
  for weight_decay in weight_decays or [command.config.weight_decay]:
    for seed in seeds:
      config = ml_collections.ConfigDict(command.config.to_dict())
      config.seed, config.weight_decay = seed, weight_decay
      name = run_folder.member_name(seed, weight_decay if len(weight_decays) > 1 else None)
      workdir = Path(args.workdir) / name
      resume.check_workdir(str(workdir))
      if command.resume:
        config = resume.resumed_config(str(workdir), config, command.overrides)
      config_checks.validate(config)
      configs.append(config)
      workdirs.append(workdir)
  return configs, workdirs


def _distinct(text: str, flag: str, parse: Callable[[str], float]) -> list:
  """The comma-separated values of ``text``, each read by ``parse``; a repeat is refused."""
  values = [parse(t.strip()) for t in text.split(",") if t.strip()]
  if len(set(values)) != len(values):
    raise cli.ConfigError(f"{flag}: {text!r} repeats a value")
  return values


def main(argv: Sequence[str] | None = None) -> int:
  """Runs a sweep from the command line; returns the exit code (as :func:`cli.main`'s)."""
  argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
  try:
    args, command = parse_command(argv)
  except cli.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  from experiments import distributed, interrupts

  def run() -> None:
    distributed.initialize()  # multi-host: before anything touches the devices
    configs, workdirs = members(args, command)
    if jax.process_index() == 0:
      print(f"sweep directory: {args.workdir}", flush=True)
    with interrupts.Interrupts() as stop:
      run_sweep(
        configs,
        workdirs,
        resume=command.resume,
        command=shlex.join(["python", "-m", "experiments.sweep", *argv]),
        stop_requested=stop.requested,
        member_loop=args.member_loop,
      )

  return cli.exit_code(run, lambda: cli.resume_command("experiments.sweep", argv, args.workdir))


if __name__ == "__main__":
  sys.exit(main())
