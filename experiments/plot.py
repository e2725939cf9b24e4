"""Figures and ``report.md`` from run directories, finished or still running.

``python -m experiments.plot RUN_DIR [RUN_DIR ...] --out DIR [--at 5000,10000,20000]
[--title TEXT]`` reads each run's ``config.json`` and ``metrics.jsonl`` and writes
into ``DIR`` the files below. A ``RUN_DIR`` may also be a sweep folder, whose run
folders are named ``seed<s>`` (or ``wd<λ>-seed<s>``): each weight decay's runs
are drawn as their mean with a min–max band, and tabulated as "mean (min–max)".

* ``objective.png``: the weight-decay objective against the iteration (log scale),
  each run's training loss dashed in the same colour;
* ``active_units.png``: the active units (%) of all groups (thick) and of each group
  (thin, one line style per group);
* ``accuracy.png``: training (dashed) and test (solid) accuracy;
* ``active_units_by_group.png`` (only for runs whose ``config.json`` names their
  groups, such as the ViT's heads and neurons of each block): one panel per
  group with its number of active units;
* ``report.md``: a table of the metrics at the chosen iterations and at each run's
  last step, the commands that produced the runs, and which runs are incomplete.
  Given exactly two entries whose runs share seeds (a PathProx and a weight-decay
  sweep of the same seeds), it adds their seed statistics
  (:mod:`experiments.seed_statistics`): where the objectives cross, and active
  units, objective ratio and test accuracy at the chosen iterations, per seed and
  then as mean ± std (min–max) with n.

Each entry is named by its method, then by what differs among the entries shown
(optimiser, λ, threshold rule, seed: ``PathProx AdamW λ=0.05``), from their ``config.json``
(:func:`experiments.entries.run_names`); entries that still share a name get their path.

A sweep member that diverged (its ``config.json`` records ``diverged``) is left out
of its sweep's mean, band and cells, and named in the legend
(``PathProx (4 of 5 seeds; seed3 diverged at step 41)``) and in report.md; a run on
its own that diverged is drawn up to its last row and flagged the same way.

Every file is written to a temporary name and renamed, so an interrupted or failed
call leaves what ``DIR`` held before intact. A folder that is not a run is a
one-line error, exit code 2, before anything is written.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from experiments import cli, run_folder
from experiments.entries import (
  Entry,
  default_title,
  group_names,
  labels,
  legend_labels,
  load_entries,
)
from experiments.report import (
  DEFAULT_AT,
  GROUP_FIGURE,
  diverged_lines,
  incomplete_line,
  logged_keys,
  write_report,
)

_GROUP_KEY = re.compile(r"active_units_pct/g(\d+)$")
# Thin dash patterns told apart by shape, since all groups of a run share its colour.
_GROUP_STYLES = ((0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (2, 2)), (0, (9, 2, 1, 2)))


class _Curve(NamedTuple):
  key: str
  label: str
  linestyle: Any
  linewidth: float
  scale: float = 1.0
  band: bool = False  # a sweep's min–max band around its mean


def plot_runs(
  entries: Sequence[Entry], out_dir: str | os.PathLike[str], title: str = ""
) -> list[Path]:
  """Draws ``objective.png``, ``active_units.png`` and ``accuracy.png``, one colour per entry.

  Args:
    entries: the runs and sweeps to compare (:func:`load_entries`).
    out_dir: the folder to write to (created if needed).
    title: the figures' title; default: the experiments' names.

  Returns:
    The paths written, in the order of :data:`FIGURES`, then :data:`GROUP_FIGURE` if drawn.
  """
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  title = title or default_title(entries)
  groups = sorted({int(m[1]) for key in logged_keys(entries) if (m := _GROUP_KEY.match(key))})
  figures = {
    "objective.png": _draw(
      entries,
      [
        _Curve("wd_objective", "weight-decay objective", "-", 1.8, band=True),
        _Curve("train_loss", "train loss", "--", 1.2),
      ],
      "objective",
      title,
      log_y=True,
    ),
    "active_units.png": _draw(
      entries,
      [_Curve("active_units_pct", "all groups", "-", 1.8, band=True)]
      + [
        _Curve(f"active_units_pct/g{k}", f"group {k}", _GROUP_STYLES[i % len(_GROUP_STYLES)], 0.9)
        for i, k in enumerate(groups)
      ],
      "active units (%)",
      title,
    ),
    "accuracy.png": _draw(
      entries,
      [
        _Curve("test_acc", "test", "-", 1.8, scale=100, band=True),
        _Curve("train_acc", "train", "--", 1.2, scale=100),
      ],
      "accuracy (%)",
      title,
    ),
  }
  names = group_names(entries)
  if names:
    figures[GROUP_FIGURE] = _draw_groups(entries, names, title)
  paths = []
  for name in figures:
    path = out_dir / name
    run_folder.write_atomic(
      path, lambda tmp, fig=figures[name]: fig.savefig(tmp, format="png", dpi=150)
    )
    paths.append(path)
  return paths


def _draw(
  entries: Sequence[Entry],
  curves: Sequence[_Curve],
  ylabel: str,
  title: str,
  *,
  log_y: bool = False,
) -> Figure:
  """One axes: each entry in its colour, each curve in its line style, legends on the right."""
  fig = Figure(figsize=(8.0, 4.2), layout="constrained")
  ax = fig.add_subplot()
  run_handles = []
  for i, (entry, name) in enumerate(zip(entries, legend_labels(entries), strict=True)):
    color = f"C{i % 10}"
    for curve in curves:
      steps, values = entry.curve(curve.key)
      values = values * curve.scale
      if np.isnan(values).all():
        continue
      ax.plot(
        steps,
        values.mean(axis=0),
        color=color,
        linestyle=curve.linestyle,
        linewidth=curve.linewidth,
      )
      if curve.band and len(values) > 1:
        ax.fill_between(steps, values.min(0), values.max(0), color=color, alpha=0.2, lw=0)
    run_handles.append(Line2D([], [], color=color, linewidth=1.8, label=name))
  if log_y:
    ax.set_yscale("log")
  ax.set_xlabel("iteration")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3, which="major")
  ax.xaxis.set_major_formatter(FuncFormatter(_format_iteration))
  # Figure legends placed "outside" get room from the constrained layout; axes legends
  # anchored outside the axes would be clipped.
  fig.legend(handles=run_handles, loc="outside right upper")
  style_handles = [
    Line2D([], [], color="0.35", linestyle=c.linestyle, linewidth=c.linewidth, label=c.label)
    for c in curves
  ]
  if any(len(entry.drawn) > 1 for entry in entries) and any(c.band for c in curves):
    style_handles.append(Patch(color="0.35", alpha=0.2, label="min–max over seeds"))
  fig.legend(handles=style_handles, loc="outside right lower")
  return fig


def _draw_groups(entries: Sequence[Entry], names: dict[int, str], title: str) -> Figure:
  """One panel per named group: its active units against the iteration, each entry in its colour.

  A sweep's line is its runs' mean.
  """
  ncols = min(2, len(names))
  nrows = math.ceil(len(names) / ncols)
  fig = Figure(figsize=(4.0 * ncols + 1.6, 1.9 * nrows + 0.6), layout="constrained")
  axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False).flat
  for (group, name), ax in zip(sorted(names.items()), axes, strict=False):
    for i, entry in enumerate(entries):
      steps, values = entry.curve(f"active_units/g{group}")
      ax.plot(steps, values.mean(axis=0), color=f"C{i % 10}", linewidth=1.5)
    ax.set_title(name, fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_formatter(FuncFormatter(_format_iteration))
  for ax in axes:  # panels left over in the last row
    ax.set_visible(False)
  fig.supxlabel("iteration")
  fig.supylabel("active units")
  fig.suptitle(title)
  fig.legend(
    handles=[
      Line2D([], [], color=f"C{i % 10}", linewidth=1.5, label=label)
      for i, label in enumerate(legend_labels(entries))
    ],
    loc="outside right upper",
  )
  return fig


def _format_iteration(x: float, _) -> str:
  return f"{x / 1000:g}k" if abs(x) >= 1000 else f"{x:g}"


def _parse_at(text: str) -> tuple[int, ...]:
  try:
    steps = tuple(int(part) for part in text.split(",") if part.strip())
  except ValueError:
    steps = ()
  if not steps or min(steps) < 0:
    raise cli.ConfigError(f"--at: expected iterations such as 5000,10000, got {text!r}")
  return steps


def main(argv: Sequence[str] | None = None) -> int:
  """Reads the runs, writes the figures and ``report.md``; returns the exit code."""
  parser = cli.ArgumentParser(prog="python -m experiments.plot", description=__doc__)
  parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories")
  parser.add_argument("--out", required=True, help="folder for the figures and report.md")
  parser.add_argument(
    "--at", default=",".join(map(str, DEFAULT_AT)), help="iterations to tabulate (comma-separated)"
  )
  parser.add_argument("--title", default="", help="figure and report title")
  parser.add_argument("--notes", help="markdown file with findings to put in report.md")
  try:
    args = parser.parse_args(argv)
    at = _parse_at(args.at)
    notes = Path(args.notes).read_text(encoding="utf-8") if args.notes else ""
    entries = [entry for path in args.run_dirs for entry in load_entries(path)]
    paths = [
      *plot_runs(entries, args.out, args.title),
      write_report(entries, args.out, at, args.title, notes),
    ]
  except (cli.ConfigError, run_folder.NotARunError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for path in paths:
    print(f"wrote {path}")
  for entry, name in zip(entries, labels(entries), strict=True):
    if not entry.complete:
      print(f"incomplete: {incomplete_line(entry, name)}")
  for line in diverged_lines(entries):
    print(f"diverged: {line}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
