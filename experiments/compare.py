"""PathProx against weight decay: both runs, then the plots and the report.

``python -m experiments.compare mnist_subset_mlp --workdir DIR [flags]`` trains
``DIR/pathprox`` and ``DIR/wd`` with the same flags, seed (so the same
initialisation and data order) and hyper-parameters, then writes the figures
and ``report.md`` into ``DIR`` (``python -m experiments.plot`` redraws them).
Every flag of the experiment but ``--method`` passes through to both runs
(``--resume`` too); ``compare EXPERIMENT --help`` lists them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from experiments import cli

EXPERIMENTS = tuple(
  sorted(
    p.stem
    for p in Path(__file__).parent.parent.glob("configs/*.py")
    if not p.stem.startswith("_") and p.stem != "common"
  )
)
NO_VALUE = ("--resume", "-h", "--help")


def _parser(experiment: str | None) -> cli.ArgumentParser:
  """compare's flags, with ``experiment``'s pass-through flags when it is known."""
  parser = cli.ArgumentParser(
    prog="python -m experiments.compare",
    usage="%(prog)s EXPERIMENT --workdir DIR [--resume] [--KEY VALUE ...]",
    description=__doc__,
  )
  parser.add_argument("experiment", help=f"one of {', '.join(EXPERIMENTS)}")
  parser.add_argument("--workdir", required=True, metavar="DIR", help="DIR/pathprox and DIR/wd")
  parser.add_argument("--resume", action="store_true", help="continue both runs")
  if experiment in EXPERIMENTS:
    group = parser.add_argument_group(f"flags of {experiment}, passed to both runs")
    cli.add_config_arguments(group, experiment, exclude=("method",))
  return parser


def _experiment_index(argv: Sequence[str]) -> int | None:
  """Where the experiment's name is in ``argv``: the first value that no flag takes."""
  takes_value = False
  for i, arg in enumerate(argv):
    if takes_value:
      takes_value = False
    elif arg.startswith("-"):
      takes_value = "=" not in arg and arg not in NO_VALUE
    else:
      return i
  return None


def main(argv: Sequence[str] | None = None) -> int:
  """Runs both methods of one experiment and compares them; returns the exit code."""
  argv = sys.argv[1:] if argv is None else list(argv)
  index = _experiment_index(argv)
  flags = [a for i, a in enumerate(argv) if i != index]
  try:
    if any(a.split("=")[0] == "--method" for a in argv):
      raise cli.ConfigError("--method is not a flag of compare: it runs both methods")
    args = _parser(None if index is None else argv[index]).parse_args(argv)
  except cli.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  runs = []
  for method in ("pathprox", "wd"):
    run_dir = str(Path(args.workdir) / method)
    code = cli.main(
      args.experiment,
      [*flags, "--method", method, "--workdir", run_dir],
      resume_with=cli.resume_command("experiments.compare", argv, args.workdir),
    )
    if code:
      return code
    runs.append(run_dir)
  import jax

  from experiments import plot

  if jax.process_index() != 0:  # on several hosts only process 0 writes
    return 0
  return plot.main([*runs, "--out", args.workdir])


if __name__ == "__main__":
  sys.exit(main())
