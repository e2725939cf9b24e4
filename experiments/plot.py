"""Figures and ``report.md`` from run directories, finished or still running.

``python -m experiments.plot RUN_DIR [RUN_DIR ...] --out DIR [--at 5000,10000,20000]
[--title TEXT]`` reads each run's ``config.json`` and ``metrics.jsonl`` and writes
into ``DIR``:

* ``objective.png``: the weight-decay objective against the iteration (log scale),
  each run's training loss dashed in the same colour;
* ``active_units.png``: the active units (%) of all groups (thick) and of each group
  (thin, one line style per group);
* ``accuracy.png``: training (dashed) and test (solid) accuracy;
* ``report.md``: a table of the metrics at the chosen iterations and at each run's
  last step, the commands that produced the runs, and which runs are incomplete.

Every file is written to a temporary name and renamed, so an interrupted or failed
call leaves what ``DIR`` held before intact. A folder that is not a run is a
one-line error, exit code 2, before anything is written.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from experiments import cli, run_folder

METHOD_NAMES = {"pathprox": "PathProx", "wd": "Weight decay"}
DEFAULT_AT = (5000, 10000, 20000)
FIGURES = ("objective.png", "active_units.png", "accuracy.png")
MISSING = "—"
_GROUP_KEY = re.compile(r"active_units_pct/g(\d+)$")
# Thin dash patterns told apart by shape, since all groups of a run share its colour.
_GROUP_STYLES = ((0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (2, 2)), (0, (9, 2, 1, 2)))


def labels(runs: Sequence[run_folder.Run]) -> list[str]:
  """Legend names: the method, plus the shortest distinct path tail when methods repeat.

  Example: runs ``a/pathprox``, ``b/pathprox`` and ``b/wd`` are named
  ``PathProx (a/pathprox)``, ``PathProx (b/pathprox)`` and ``Weight decay``.
  """
  names = [METHOD_NAMES.get(run.method, run.method) for run in runs]
  result = []
  for run, name in zip(runs, names, strict=True):
    twins = [runs[i].path for i, other in enumerate(names) if other == name]
    result.append(name if len(twins) == 1 else f"{name} ({_distinct_tail(run.path, twins)})")
  return result


def _distinct_tail(path: Path, paths: Sequence[Path]) -> str:
  parts = path.resolve().parts
  for k in range(1, len(parts) + 1):
    if sum(other.resolve().parts[-k:] == parts[-k:] for other in paths) == 1:
      return "/".join(parts[-k:])
  return str(path)  # the same folder given twice


class _Curve(NamedTuple):
  key: str
  label: str
  linestyle: Any
  linewidth: float
  scale: float = 1.0


def plot_runs(
  runs: Sequence[run_folder.Run], out_dir: str | os.PathLike[str], title: str = ""
) -> list[Path]:
  """Draws ``objective.png``, ``active_units.png`` and ``accuracy.png``, one colour per run.

  Args:
    runs: the runs to compare.
    out_dir: the folder to write to (created if needed).
    title: the figures' title; default: the experiments' names.

  Returns:
    The paths written, in the order of :data:`FIGURES`.
  """
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  title = title or _default_title(runs)
  groups = sorted(
    {int(m[1]) for run in runs for row in run.rows for key in row if (m := _GROUP_KEY.match(key))}
  )
  figures = {
    "objective.png": _draw(
      runs,
      [
        _Curve("wd_objective", "weight-decay objective", "-", 1.8),
        _Curve("train_loss", "train loss", "--", 1.2),
      ],
      "objective",
      title,
      log_y=True,
    ),
    "active_units.png": _draw(
      runs,
      [_Curve("active_units_pct", "all groups", "-", 1.8)]
      + [
        _Curve(f"active_units_pct/g{k}", f"group {k}", _GROUP_STYLES[i % len(_GROUP_STYLES)], 0.9)
        for i, k in enumerate(groups)
      ],
      "active units (%)",
      title,
    ),
    "accuracy.png": _draw(
      runs,
      [
        _Curve("test_acc", "test", "-", 1.8, scale=100),
        _Curve("train_acc", "train", "--", 1.2, scale=100),
      ],
      "accuracy (%)",
      title,
    ),
  }
  paths = []
  for name in FIGURES:
    path = out_dir / name
    run_folder.write_atomic(
      path, lambda tmp, fig=figures[name]: fig.savefig(tmp, format="png", dpi=150)
    )
    paths.append(path)
  return paths


def _draw(
  runs: Sequence[run_folder.Run],
  curves: Sequence[_Curve],
  ylabel: str,
  title: str,
  *,
  log_y: bool = False,
) -> Figure:
  """One axes: each run in its colour, each curve in its line style, legends on the right."""
  fig = Figure(figsize=(8.0, 4.2), layout="constrained")
  ax = fig.add_subplot()
  run_handles = []
  for i, (run, name) in enumerate(zip(runs, labels(runs), strict=True)):
    color = f"C{i % 10}"
    steps = np.array([row["step"] for row in run.rows])
    for curve in curves:
      values = np.array([_number(row.get(curve.key)) for row in run.rows]) * curve.scale
      if not np.isnan(values).all():
        ax.plot(steps, values, color=color, linestyle=curve.linestyle, linewidth=curve.linewidth)
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
  fig.legend(handles=style_handles, loc="outside right lower")
  return fig


def _format_iteration(x: float, _) -> str:
  return f"{x / 1000:g}k" if abs(x) >= 1000 else f"{x:g}"


def _number(value: Any) -> float:
  return float(value) if isinstance(value, (int, float)) else math.nan


def _default_title(runs: Sequence[run_folder.Run]) -> str:
  return ", ".join(dict.fromkeys(str(run.config.get("experiment", "runs")) for run in runs))


# (header, metrics key, format): losses and norms to 4 significant digits, active
# units to 0.1 percentage point, accuracies in % to 0.01 (one image in 10,000).
_COLUMNS: tuple[tuple[str, str, Callable[[float], str]], ...] = (
  ("wd objective", "wd_objective", lambda x: f"{x:#.4g}"),
  ("path norm", "path_norm", lambda x: f"{x:#.4g}"),
  ("active units (%)", "active_units_pct", lambda x: f"{x:.1f}"),
  ("train acc (%)", "train_acc", lambda x: f"{100 * x:.2f}"),
  ("test acc (%)", "test_acc", lambda x: f"{100 * x:.2f}"),
  ("val acc (%)", "val_acc", lambda x: f"{100 * x:.2f}"),
)


def write_report(
  runs: Sequence[run_folder.Run],
  out_dir: str | os.PathLike[str],
  at: Sequence[int] = DEFAULT_AT,
  title: str = "",
  notes: str = "",
) -> Path:
  """Writes ``report.md``: the metrics table, the runs' commands and which are incomplete.

  The table has one row per run at each iteration of ``at`` (the row logged there,
  else the last one before it; ``—`` if the run has not got there yet) and at each
  run's last step. Iterations beyond every run's ``total_iter`` are left out. The
  val acc column appears when some run has a validation split. Precision: wd
  objective and path norm to 4 significant digits, active units (%) to 1 decimal,
  accuracies (%) to 2 decimals.

  Args:
    runs: the runs to compare.
    out_dir: the folder to write to (created if needed); figures already there
      are linked.
    at: the iterations to tabulate.
    title: the report's heading; default: the experiments' names.
    notes: markdown placed after the table as a "Findings" section (the
      reader's interpretation of the numbers).

  Returns:
    The path of ``report.md``.
  """
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  names = labels(runs)
  columns = [c for c in _COLUMNS if c[1] != "val_acc" or _any_row_has(runs, "val_acc")]
  targets = [step for step in at if any(step <= run.total_iter for run in runs)]
  lines = [f"# {title or _default_title(runs)}", ""]
  header = ["at", "run", "method", "step", *(c[0] for c in columns)]
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for target in [*targets, None]:
    for run, name in zip(runs, names, strict=True):
      row = run.rows[-1] if target is None else run.row_at(target)
      cells = ["last" if target is None else str(target), name, run.method]
      cells.append(MISSING if row is None else str(row["step"]))
      cells += [_cell(row, key, fmt) for _, key, fmt in columns]
      lines.append("| " + " | ".join(cells) + " |")
  lines += [
    "",
    f"Precision: wd objective and path norm to 4 significant digits, active units to "
    f"1 decimal, accuracies (%) to 2 decimals. {MISSING}: the run has not reached that "
    "iteration; otherwise the row logged there, else the last one before it.",
    "",
  ]
  if notes.strip():
    lines += ["## Findings", "", notes.strip(), ""]
  lines += [f"![{name}]({name})" for name in FIGURES if (out_dir / name).exists()]
  lines += ["", "## Runs", ""]
  for run, name in zip(runs, names, strict=True):
    config = run.config
    lines += [
      f"- **{name}** (`{run.path}`): step {run.last_step} of {run.total_iter}"
      f"{'' if run.complete else ' (incomplete)'}; pathprox_jax "
      f"{config.get('pathprox_jax_version', '?')} on {config.get('devices', '?')}",
      "",
      "  ```",
      f"  {config.get('command', '(no command recorded)')}",
      "  ```",
      "",
    ]
  lines += ["## Incomplete runs", ""]
  incomplete = [
    f"- {_incomplete_line(run, name)}"
    for run, name in zip(runs, names, strict=True)
    if not run.complete
  ]
  lines += incomplete or ["None: every run reached its total_iter."]
  path = out_dir / "report.md"
  text = "\n".join(lines) + "\n"
  run_folder.write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
  return path


def _any_row_has(runs: Sequence[run_folder.Run], key: str) -> bool:
  return any(key in row for run in runs for row in run.rows)


def _cell(row: dict[str, Any] | None, key: str, fmt: Callable[[float], str]) -> str:
  value = None if row is None else row.get(key)
  return fmt(float(value)) if isinstance(value, (int, float)) else MISSING


def _incomplete_line(run: run_folder.Run, name: str) -> str:
  return f"{name} ({run.path}): step {run.last_step} of {run.total_iter}"


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
    runs = [run_folder.load_run(path) for path in args.run_dirs]
    paths = [
      *plot_runs(runs, args.out, args.title),
      write_report(runs, args.out, at, args.title, notes),
    ]
  except (cli.ConfigError, run_folder.NotARunError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for path in paths:
    print(f"wrote {path}")
  for run, name in zip(runs, labels(runs), strict=True):
    if not run.complete:
      print(f"incomplete: {_incomplete_line(run, name)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
