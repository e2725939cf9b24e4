"""``report.md``: the metrics table at chosen iterations, the commands, and the seed statistics.

See :mod:`experiments.plot` for the command line that writes it beside the figures.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from experiments import run_folder, seed_statistics
from experiments.entries import Entry, default_title, labels, told_apart

DEFAULT_AT = (5000, 10000, 20000)
# The figures experiments.plot writes beside report.md, which links those that exist.
FIGURES = ("objective.png", "active_units.png", "accuracy.png")
GROUP_FIGURE = "active_units_by_group.png"
MISSING = "—"

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
  columns = [c for c in _COLUMNS if c[1] != "val_acc" or "val_acc" in logged_keys(entries)]
  targets = [step for step in at if any(step <= entry.total_iter for entry in entries)]
  lines = [f"# {title or default_title(entries)}", ""]
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
  diverged = diverged_lines(entries)
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
    f"- {incomplete_line(entry, name)}"
    for entry, name in zip(entries, names, strict=True)
    if not entry.complete
  ]
  lines += incomplete or ["None: every run reached its total_iter."]
  path = out_dir / "report.md"
  text = "\n".join(lines) + "\n"
  run_folder.write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
  return path


def logged_keys(entries: Sequence[Entry]) -> set[str]:
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


def diverged_lines(entries: Sequence[Entry]) -> list[str]:
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
  names = tuple(f"{name} ({tail})" if tail else name for name, tail in told_apart((first, second)))
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


def incomplete_line(entry: Entry, name: str) -> str:
  return f"{name} ({entry.path}): step {entry.last_step} of {entry.total_iter}"
