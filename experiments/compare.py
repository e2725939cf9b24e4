"""PathProx against weight decay: both runs, then the plots and the report.

``python -m experiments.compare mnist_subset_mlp --workdir DIR [flags]`` trains
``DIR/pathprox`` and ``DIR/wd`` with the same flags, seed (so the same
initialisation and data order) and hyper-parameters, then writes the figures
and ``report.md`` into ``DIR`` (``python -m experiments.plot`` redraws them).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import jax

from experiments import cli, plot


def main(argv: Sequence[str] | None = None) -> int:
  """Runs both methods of one experiment and compares them; returns the exit code."""
  parser = cli.ArgumentParser(prog="python -m experiments.compare", description=__doc__)
  parser.add_argument("experiment", help="e.g. mnist_subset_mlp")
  parser.add_argument("--workdir", required=True, help="the runs go to WORKDIR/pathprox and /wd")
  try:
    args, flags = parser.parse_known_args(argv)
    if any(f.split("=")[0] == "--method" for f in flags):
      raise cli.ConfigError("--method is not a flag of compare: it runs both methods")
  except cli.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  runs = []
  for method in cli.METHODS:
    run_dir = os.path.join(args.workdir, method)
    code = cli.main(args.experiment, [*flags, "--method", method, "--workdir", run_dir])
    if code:
      return code
    runs.append(run_dir)
  if jax.process_index() != 0:  # on several hosts only process 0 writes
    return 0
  return plot.main([*runs, "--out", args.workdir])


if __name__ == "__main__":
  sys.exit(main())
