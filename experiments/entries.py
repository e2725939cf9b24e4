"""What the figures and ``report.md`` draw: each run folder or sweep as an entry, and its label.

An entry is a run on its own or a sweep's runs of one weight decay (drawn as their mean with a
min–max band); its label names the method, then what differs among the entries shown
(:func:`run_names`: optimiser, λ, threshold rule, seed), and tells apart any that still share one.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments import run_folder

METHOD_NAMES = {
  "pathprox": "PathProx",
  "wd": "Weight decay",
  "gmp": "GMP",
  "slimming": "Network slimming",
}
# How a run's name gives each config key that tells the runs shown apart, in this order.
NAMED_KEYS = {
  "optimizer": {"sgd": "SGD", "adamw": "AdamW"}.get,
  "weight_decay": lambda value: f"λ={value:g}",
  "threshold_rule": {"fixed_point": "τ=λγ/(1−β)", "paper": "τ=λγ"}.get,
  "seed": lambda value: f"seed {value}",
}


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
  """Legend names: :func:`run_names`, told apart when they repeat, and a sweep's seeds.

  A name that repeats gets the shortest distinct path tail; a sweep gets its
  number of seeds, and the members that diverged. Example: runs ``a/pathprox``,
  ``b/pathprox`` and ``b/wd`` are named ``PathProx (a/pathprox)``,
  ``PathProx (b/pathprox)`` and ``Weight decay``; a 5-seed sweep
  ``PathProx (5 seeds)``, or ``PathProx (4 of 5 seeds; seed3 diverged at step 41)``;
  a run that diverged ``PathProx (diverged at step 41)``.
  """
  result = []
  for entry, (name, tail) in zip(entries, told_apart(entries), strict=True):
    extras = [tail] if tail else []
    extras += _seeds_note(entry)
    result.append(f"{name} ({'; '.join(extras)})" if extras else name)
  return result


def told_apart(entries: Sequence[Entry]) -> list[tuple[str, str]]:
  """Each entry's :func:`run_names` name, and its shortest distinct path tail if that repeats."""
  names = run_names([_shared_config(entry) for entry in entries])
  result = []
  for entry, name in zip(entries, names, strict=True):
    twins = [entries[i].path for i, other in enumerate(names) if other == name]
    result.append((name, "" if len(twins) == 1 else _distinct_tail(entry.path, twins)))
  return result


def legend_labels(entries: Sequence[Entry]) -> list[str]:
  """:func:`labels` on several lines, one per note, so a long one does not squeeze the axes."""
  return [label.replace("; ", ";\n") for label in labels(entries)]


def run_names(configs: Sequence[Mapping[str, Any]]) -> list[str]:
  """Each run's name: its method, then each key of :data:`NAMED_KEYS` that differs among them.

  A key is named only where it applies (the threshold rule: PathProx with SGD) and is
  known (a ``None`` or missing value names nothing, as a sweep's seeds in one entry); a
  key that every run holding it shares names nothing.

  Args:
    configs: the runs' ``config.json`` records, one per run (or per sweep) shown.

  Returns:
    Their names, in order.

  Example:
    >>> run_names([
    ...   {"method": "pathprox", "optimizer": "sgd", "weight_decay": 0.01, "seed": 0},
    ...   {"method": "pathprox", "optimizer": "adamw", "weight_decay": 0.05, "seed": 0},
    ...   {"method": "wd", "optimizer": "sgd", "weight_decay": 0.01, "seed": 0},
    ... ])
    ['PathProx SGD λ=0.01', 'PathProx AdamW λ=0.05', 'Weight decay SGD λ=0.01']
  """
  held = [{key: _named_value(config, key) for key in NAMED_KEYS} for config in configs]
  differing = [key for key in NAMED_KEYS if len({h[key] for h in held if h[key] is not None}) > 1]
  names = []
  for config, values in zip(configs, held, strict=True):
    method = str(config.get("method", "unknown"))
    parts = [METHOD_NAMES.get(method, method)]
    for key in differing:
      if values[key] is not None:
        parts.append(NAMED_KEYS[key](values[key]) or str(values[key]))
    names.append(" ".join(parts))
  return names


def _named_value(config: Mapping[str, Any], key: str) -> Any:
  """``config[key]`` where it applies, else ``None``."""
  if key == "threshold_rule" and (config.get("method"), config.get("optimizer", "sgd")) != (
    "pathprox",
    "sgd",
  ):
    return None
  return config.get(key)


def _shared_config(entry: Entry) -> dict[str, Any]:
  """The method and :data:`NAMED_KEYS` of ``entry``'s runs (``None``: its runs differ in it).

  A sweep member's λ is its folder's ``wd<λ>`` where its config does not record it.
  """
  shared = {"method": entry.method}
  for key in NAMED_KEYS:
    values = {_named_value(run.config, key) for run in entry.runs}
    shared[key] = values.pop() if len(values) == 1 else None
  if shared["weight_decay"] is None and entry.weight_decay:
    shared["weight_decay"] = float(entry.weight_decay)
  return shared


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


def group_names(entries: Sequence[Entry]) -> dict[int, str]:
  """The groups' names recorded in the runs' ``config.json`` (``group_names``), by group."""
  return {
    int(g): name
    for entry in entries
    for run in entry.runs
    for g, name in run.config.get("group_names", {}).items()
  }


def default_title(entries: Sequence[Entry]) -> str:
  """The experiments the entries ran, as a title."""
  return ", ".join(dict.fromkeys(str(e.config.get("experiment", "runs")) for e in entries))
