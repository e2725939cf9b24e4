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

A sweep member that diverged (its ``config.json`` records ``diverged``) is left out
of its sweep's mean, band and cells, and named in the legend
(``PathProx (4 of 5 seeds; seed3 diverged at step 41)``) and in report.md; a run on
its own that diverged is drawn up to its last row and flagged the same way.

Every file is written to a temporary name and renamed, so an interrupted or failed
call leaves what ``DIR`` held before intact. A folder that is not a run is a
one-line error, exit code 2, before anything is written.
"""

from __future__ import annotations

import dataclasses
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
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from experiments import cli, run_folder, seed_statistics

METHOD_NAMES = {"pathprox": "PathProx", "wd": "Weight decay"}
DEFAULT_AT = (5000, 10000, 20000)
FIGURES = ("objective.png", "active_units.png", "accuracy.png")
GROUP_FIGURE = "active_units_by_group.png"
MISSING = "—"
_GROUP_KEY = re.compile(r"active_units_pct/g(\d+)$")
# Thin dash patterns told apart by shape, since all groups of a run share its colour.
_GROUP_STYLES = ((0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (2, 2)), (0, (9, 2, 1, 2)))


@dataclasses.dataclass(frozen=True)
class Entry:
  """One legend entry and table row: a run, or a sweep's runs that differ only in their seed.

  A sweep (several runs) is drawn as its runs' mean with a min–max band and
  tabulated as "mean (min–max)", at the steps every run logged. A member that
  diverged is left out of them (:attr:`drawn`), so its early rows do not cut the
  band short; a run on its own is drawn up to its last row whether it diverged or not.

  Attributes:
    path: the run folder, or the sweep folder.
    runs: the run, or the sweep's runs in seed order.
    weight_decay: the sweep members' ``wd<λ>`` name prefix (``""``: none).
  """

  path: Path
  runs: tuple[run_folder.Run, ...]
  weight_decay: str = ""

  @property
  def method(self) -> str:
    return self.runs[0].method

  @property
  def config(self) -> dict[str, Any]:
    return self.runs[0].config

  @property
  def diverged(self) -> tuple[run_folder.Run, ...]:
    """The runs whose loss became non-finite (:attr:`run_folder.Run.diverged_at`)."""
    return tuple(run for run in self.runs if run.diverged_at is not None)

  @property
  def drawn(self) -> tuple[run_folder.Run, ...]:
    """The runs the curves and cells are made of: those that did not diverge (all, if all did)."""
    return tuple(run for run in self.runs if run.diverged_at is None) or self.runs

  @property
  def total_iter(self) -> int:
    return min(run.total_iter for run in self.drawn)

  @property
  def last_step(self) -> int:
    """The last step every drawn run logged (for a sweep still running, the slowest run's)."""
    return min(run.last_step for run in self.drawn)

  @property
  def complete(self) -> bool:
    return all(run.complete for run in self.drawn)

  def rows_at(self, step: int) -> list[dict[str, Any]] | None:
    """Drawn runs' rows at ``step`` (:meth:`run_folder.Run.row_at`); ``None`` if one lacks it."""
    rows = [run.row_at(step) for run in self.drawn]
    return None if any(row is None for row in rows) else rows

  def curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values [runs, steps])`` of a metric at the steps every drawn run logged."""
    return run_folder.common_curve(self.drawn, key)


def load_entries(path: str | os.PathLike[str]) -> list[Entry]:
  """A run folder as one entry, or a sweep folder as one entry per weight decay.

  A sweep folder holds run folders named ``seed<s>`` or ``wd<λ>-seed<s>``
  (:func:`run_folder.member_name`).

  Raises:
    run_folder.NotARunError: ``path`` is neither, or a run in it is malformed.
  """
  members = run_folder.sweep_members(path)
  if not members:
    return [Entry(Path(path), (run_folder.load_run(path),))]
  return [
    Entry(Path(path), tuple(run_folder.load_run(member) for member in paths), weight_decay)
    for weight_decay, paths in members.items()
  ]


def labels(entries: Sequence[Entry]) -> list[str]:
  """Legend names: the method (and λ for a sweep over it), told apart when they repeat.

  A name that repeats gets the shortest distinct path tail; a sweep gets its
  number of seeds, and the members that diverged. Example: runs ``a/pathprox``,
  ``b/pathprox`` and ``b/wd`` are named ``PathProx (a/pathprox)``,
  ``PathProx (b/pathprox)`` and ``Weight decay``; a 5-seed sweep
  ``PathProx (5 seeds)``, or ``PathProx (4 of 5 seeds; seed3 diverged at step 41)``;
  a run that diverged ``PathProx (diverged at step 41)``.
  """
  result = []
  for entry, (name, tail) in zip(entries, _told_apart(entries), strict=True):
    extras = [tail] if tail else []
    extras += _seeds_note(entry)
    result.append(f"{name} ({'; '.join(extras)})" if extras else name)
  return result


def _told_apart(entries: Sequence[Entry]) -> list[tuple[str, str]]:
  """Each entry's :func:`method_name`, and its shortest distinct path tail if that repeats."""
  names = [method_name(entry) for entry in entries]
  result = []
  for entry, name in zip(entries, names, strict=True):
    twins = [entries[i].path for i, other in enumerate(names) if other == name]
    result.append((name, "" if len(twins) == 1 else _distinct_tail(entry.path, twins)))
  return result


def _legend_labels(entries: Sequence[Entry]) -> list[str]:
  """:func:`labels` on several lines, one per note, so a long one does not squeeze the axes."""
  return [label.replace("; ", ";\n") for label in labels(entries)]


def method_name(entry: Entry) -> str:
  """The entry's method, and its λ for a sweep over it: ``PathProx λ=0.0001``."""
  name = METHOD_NAMES.get(entry.method, entry.method)
  return name + (f" λ={entry.weight_decay}" if entry.weight_decay else "")


def _seeds_note(entry: Entry) -> list[str]:
  """A sweep's number of seeds and which diverged; whether a lone run diverged."""
  diverged = [f"diverged at step {run.diverged_at}" for run in entry.diverged]
  if len(entry.runs) == 1:
    return diverged
  count = f"{len(entry.runs)} seeds"
  if entry.diverged:
    live = len(entry.runs) - len(entry.diverged)
    count = f"{count}, all diverged" if live == 0 else f"{live} of {count}"
  members = [f"seed{run.seed} {note}" for run, note in zip(entry.diverged, diverged, strict=True)]
  return [count, *([", ".join(members)] if members else [])]


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
  title = title or _default_title(entries)
  groups = sorted({int(m[1]) for key in _logged_keys(entries) if (m := _GROUP_KEY.match(key))})
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
  for i, (entry, name) in enumerate(zip(entries, _legend_labels(entries), strict=True)):
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


def group_names(entries: Sequence[Entry]) -> dict[int, str]:
  """The groups' names recorded in the runs' ``config.json`` (``group_names``), by group."""
  return {
    int(g): name
    for entry in entries
    for run in entry.runs
    for g, name in run.config.get("group_names", {}).items()
  }


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
      for i, label in enumerate(_legend_labels(entries))
    ],
    loc="outside right upper",
  )
  return fig


def _format_iteration(x: float, _) -> str:
  return f"{x / 1000:g}k" if abs(x) >= 1000 else f"{x:g}"


def _default_title(entries: Sequence[Entry]) -> str:
  return ", ".join(dict.fromkeys(str(e.config.get("experiment", "runs")) for e in entries))


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
  entries: Sequence[Entry],
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
    entries: the runs and sweeps to compare (:func:`load_entries`).
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
  names = labels(entries)
  columns = [c for c in _COLUMNS if c[1] != "val_acc" or "val_acc" in _logged_keys(entries)]
  targets = [step for step in at if any(step <= entry.total_iter for entry in entries)]
  lines = [f"# {title or _default_title(entries)}", ""]
  header = ["at", "run", "method", "step", *(c[0] for c in columns)]
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for target in [*targets, None]:
    for entry, name in zip(entries, names, strict=True):
      rows = entry.rows_at(entry.last_step if target is None else target)
      cells = ["last" if target is None else str(target), name, entry.method]
      cells.append(MISSING if rows is None else str(min(row["step"] for row in rows)))
      cells += [_cell(rows, key, fmt) for _, key, fmt in columns]
      lines.append("| " + " | ".join(cells) + " |")
  lines += [
    "",
    f"Precision: wd objective and path norm to 4 significant digits, active units to "
    f"1 decimal, accuracies (%) to 2 decimals. {MISSING}: the run has not reached that "
    "iteration; otherwise the row logged there, else the last one before it. A sweep's "
    "cells are the mean (min–max) of its runs.",
    "",
  ]
  diverged = _diverged_lines(entries)
  if diverged:
    lines += ["Diverged (a sweep's mean, band and cells leave these out; a lone run is drawn up "
              "to its last row): " + "; ".join(diverged) + ".", ""]  # fmt: skip
  lines += _seed_statistics_section(entries, targets)
  if notes.strip():
    lines += ["## Findings", "", notes.strip(), ""]
  lines += [f"![{name}]({name})" for name in (*FIGURES, GROUP_FIGURE) if (out_dir / name).exists()]
  lines += ["", "## Runs", ""]
  for entry, name in zip(entries, names, strict=True):
    config = entry.config
    lines += [
      f"- **{name}** (`{entry.path}`): step {entry.last_step} of {entry.total_iter}"
      f"{'' if entry.complete else ' (incomplete)'}; pathprox_jax "
      f"{config.get('pathprox_jax_version', '?')} on {config.get('devices', '?')}",
      "",
      "  ```",
      *dict.fromkeys(
        f"  {run.config.get('command', '(no command recorded)')}" for run in entry.runs
      ),
      "  ```",
      "",
    ]
  lines += ["## Incomplete runs", ""]
  incomplete = [
    f"- {_incomplete_line(entry, name)}"
    for entry, name in zip(entries, names, strict=True)
    if not entry.complete
  ]
  lines += incomplete or ["None: every run reached its total_iter."]
  path = out_dir / "report.md"
  text = "\n".join(lines) + "\n"
  run_folder.write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
  return path


def _logged_keys(entries: Sequence[Entry]) -> set[str]:
  """The metrics keys that any row of any run logged."""
  return {key for entry in entries for run in entry.runs for row in run.rows for key in row}


def _cell(rows: list[dict[str, Any]] | None, key: str, fmt: Callable[[float], str]) -> str:
  """A row's value, or the mean (min–max) of a sweep's rows; ``—`` if none has it."""
  values = [float(row[key]) for row in rows or () if isinstance(row.get(key), (int, float))]
  if not values:
    return MISSING
  if len(values) == 1:
    return fmt(values[0])
  return f"{fmt(sum(values) / len(values))} ({fmt(min(values))}–{fmt(max(values))})"


def _diverged_lines(entries: Sequence[Entry]) -> list[str]:
  """Each diverged run: ``/runs/pathprox/seed3 at step 41 (loss nan)``."""
  lines = []
  for run in (run for entry in entries for run in entry.diverged):
    loss = str(run.config[run_folder.DIVERGED].get("loss", "?"))
    what = f"loss {loss}" if loss in ("nan", "inf", "-inf", "?") else loss  # or a sentence
    lines.append(f"{run.path} at step {run.diverged_at} ({what})")
  return lines


# How a seed statistic's values are written: steps to the iteration, counts to 0.1,
# ratios (about 1) and their spreads to 4 decimals, metrics as in the table.
_SEED_FORMATS: dict[str, Callable[[float], str]] = {
  "step": lambda x: f"{x:.0f}",
  "count": lambda x: f"{x:.1f}",
  "ratio": lambda x: f"{x:.4f}",
  **{key: fmt for _, key, fmt in _COLUMNS},
}


def _seed_statistics_section(entries: Sequence[Entry], at: Sequence[int]) -> list[str]:
  """report.md's "Seed statistics" of two entries whose runs share seeds; ``[]`` otherwise.

  PathProx comes first when the two entries are PathProx and weight decay.
  """
  if len(entries) != 2:
    return []
  first, second = entries
  if (first.method, second.method) == ("wd", "pathprox"):
    first, second = second, first
  pairing = seed_statistics.pair_by_seed(first.runs, second.runs)
  if not pairing.pairs:
    return []
  names = tuple(f"{name} ({tail})" if tail else name for name, tail in _told_apart((first, second)))
  unpaired = [f"seed{s} ({names[0]} only)" for s in pairing.only_first]
  unpaired += [f"seed{s} ({names[1]} only)" for s in pairing.only_second]
  lines = [
    "## Seed statistics",
    "",
    f"{names[0]} against {names[1]}, paired by seed (same initialisation, same batches): "
    f"seeds {', '.join(str(pair.seed) for pair in pairing.pairs)}"
    + (f"; unpaired, left out: {', '.join(unpaired)}" if unpaired else "")
    + ". Each statistic is computed on each seed's pair, then given as mean ± sample std "
    "(min–max) over the n seeds that have it; the last column says why the others have "
    "none. A crossing is a step where the sign of the difference of the wd objectives "
    "changes, linearly interpolated between evaluations; a run that diverged is left out "
    "of every point from its divergence on.",
    "",
    "| statistic | mean ± std (min–max) | n | left out |",
    "|---|---|---|---|",
  ]
  for statistic in seed_statistics.seed_statistics(pairing.pairs, at, names):
    summary, fmt = statistic.summary, _SEED_FORMATS[statistic.key]
    if summary is None:
      cell = MISSING
    elif summary.n == 1:
      cell = fmt(summary.mean)
    else:
      spread = f"{fmt(summary.low)}–{fmt(summary.high)}"
      cell = f"{fmt(summary.mean)} ± {fmt(summary.std)} ({spread})"
    seeds_by_reason: dict[str, list[str]] = {}
    for seed, why in statistic.left_out.items():
      seeds_by_reason.setdefault(why, []).append(f"seed{seed}")
    left_out = "; ".join(f"{', '.join(seeds)}: {why}" for why, seeds in seeds_by_reason.items())
    lines.append(f"| {statistic.name} | {cell} | {summary.n if summary else 0} | {left_out} |")
  return [*lines, ""]


def _incomplete_line(entry: Entry, name: str) -> str:
  return f"{name} ({entry.path}): step {entry.last_step} of {entry.total_iter}"


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
      print(f"incomplete: {_incomplete_line(entry, name)}")
  for line in _diverged_lines(entries):
    print(f"diverged: {line}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
