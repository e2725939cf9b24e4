"""The histogram of a run's unit path norms, one panel per group.

``python -m experiments.unit_histogram RUN_DIR [RUN_DIR ...] [--out DIR]`` restores each
run's latest checkpoint (a sweep folder: each member's), computes every unit's path norm
:math:`\\|w_i\\| \\|v_i\\|` (:func:`pathprox_jax.unit_path_norms`: a neuron's "in" column
and "out" row, a head's value and output projections) and writes ``unit_path_norms.png``
into the run folder (or ``DIR/<run folder name>-unit_path_norms.png``): per group (a ViT's
heads and FFN neurons of each block apart), the histogram of the switched-on units' path
norms on a log scale, with the count of units at exactly zero in the panel's title. Units that
are on but numerically dead show as a separate cluster far left of the others.

Exit codes: 0 done; 2 bad input (not a run, no checkpoint).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import pathprox_jax as pp
from experiments import cli, models, run_folder, trained_run

FIGURE = "unit_path_norms.png"
BINS = 40


def unit_path_norms_figure(
  norms: Mapping[int, np.ndarray], names: Mapping[int, str], title: str
) -> Figure:
  """One panel per group: the histogram of its nonzero path norms (log x), zeros counted.

  Args:
    norms: ``{group: each unit's path norm}``.
    names: ``{group: what its units are}`` (missing: ``group k``).
    title: the figure's title.

  Returns:
    The figure.
  """
  nonzero = np.concatenate([np.asarray(n)[np.asarray(n) > 0] for n in norms.values()] + [[]])
  low, high = (nonzero.min(), nonzero.max()) if nonzero.size else (1e-3, 1.0)
  edges = np.geomspace(low / 1.5, high * 1.5, BINS + 1)  # shared, so panels compare
  ncols = min(2, len(norms))
  nrows = math.ceil(len(norms) / ncols)
  fig = Figure(figsize=(4.2 * ncols, 2.0 * nrows + 0.6), layout="constrained")
  axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False).flat
  for (group, values), ax in zip(sorted(norms.items()), axes, strict=False):
    values = np.asarray(values)
    on = values[values > 0]
    ax.hist(on, bins=edges, color="C0")
    ax.set_xscale("log")
    name = names.get(group, f"group {group}")
    ax.set_title(f"{name}: {on.size} on, {values.size - on.size} at 0", fontsize=9)
    ax.grid(alpha=0.3)
  for ax in axes:  # panels left over in the last row
    ax.set_visible(False)
  fig.supxlabel(r"unit path norm $\|w_i\|\,\|v_i\|$")
  fig.supylabel("units")
  fig.suptitle(title)
  return fig


def write_figure(run_dir: Path, path: Path) -> Path:
  """Draws the histogram of the latest checkpoint of the run in ``run_dir`` into ``path``.

  Raises:
    trained_run.UsageError: ``run_dir`` has no checkpoint, or one that does not fit its config.
    run_folder.NotARunError: its ``config.json`` is malformed.
  """
  config, state, groups = trained_run.restore_checkpoint(run_dir)[:3]
  norms = {g: np.asarray(n) for g, n in pp.unit_path_norms(state.params, groups).items()}
  title = f"{config.experiment}, {config.method}, λ {config.weight_decay:g}: step {int(state.step)}"
  fig = unit_path_norms_figure(norms, models.group_names(config), title)
  run_folder.write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
  return path


def main(argv: Sequence[str] | None = None) -> int:
  """Draws the histogram of every run named; returns the exit code."""
  parser = cli.ArgumentParser(prog="python -m experiments.unit_histogram", description=__doc__)
  parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run or sweep folders")
  parser.add_argument("--out", help="folder for the figures (default: each run's folder)")
  try:
    args = parser.parse_args(argv)
    runs = []
    for path in map(Path, args.run_dirs):
      members = run_folder.sweep_members(path)
      runs += [m for found in members.values() for m in found] if members else [path]
    written = []
    for run in runs:
      path = run / FIGURE if args.out is None else Path(args.out) / f"{run.name}-{FIGURE}"
      path.parent.mkdir(parents=True, exist_ok=True)
      written.append(write_figure(run, path))
  except (*trained_run.USAGE_ERRORS, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for path in written:
    print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
