"""A run folder on disk: reading its ``config.json`` and ``metrics.jsonl``, writing atomically.

A run folder (``experiments.train`` writes it) holds ``config.json`` (the
experiment's config keys plus the harness's records: command, devices, groups; written
here, :func:`write_config`), ``metrics.jsonl`` (one JSON object per evaluation) and
``checkpoints/`` (a folder per step, :func:`checkpoint_steps`).
``experiments.plot`` and ``experiments.compact`` read it through this module;
every command that writes a file or folder other commands read goes through
:func:`write_atomic`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

import configs
from experiments.config_checks import config_value, recorded

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
# The records that mark, and only mark, experiments.compact's and experiments.prune's outputs.
COMPACT_RECORD = "compact.json"
PRUNE_RECORD = "prune.json"
# A compact or prune output's model state beside its params/ (a BatchNorm's running statistics).
MODEL_STATE = "model_state"
# config.json's record of a run that stopped on a non-finite loss: {"step": S, "loss": "nan"}.
DIVERGED = "diverged"
# A sweep member's folder name: seed<s>, or wd<λ>-seed<s> when λ varies too.
_MEMBER = re.compile(r"(?:wd(?P<weight_decay>[0-9.]+(?:e[+-]?[0-9]+)?)-)?seed(?P<seed>[0-9]+)")


class NotARunError(ValueError):
  """A folder is not a run folder, or one of its files is unreadable or malformed."""


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> None:
  """Writes ``path`` (a file or a folder) through a temporary name and a rename.

  ``write(tmp)`` creates the new content at ``tmp``, beside ``path``. Readers see
  the old content or the new, never a part; if ``write`` fails, the old content
  stays and the temporary is removed. A folder replaces a folder: the old one is
  moved aside first and deleted once the new one is in place.

  Args:
    path: the file or folder to write.
    write: creates the content at the path it is given.

  Example:
    >>> write_atomic("runs/a/report.md", lambda tmp: tmp.write_text("# a"))  # doctest: +SKIP
  """
  path = Path(path)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  old = path.with_name(f".{path.name}.{os.getpid()}.old")
  try:
    write(tmp)
    if tmp.is_dir() and path.is_dir():
      path.rename(old)  # os.replace cannot replace a folder that is not empty
    os.replace(tmp, path)
  finally:
    for leftover in (tmp, old):
      if leftover.is_dir():
        shutil.rmtree(leftover)
      else:
        leftover.unlink(missing_ok=True)


def write_json(path: str | os.PathLike[str], record: Any) -> None:
  """Writes ``record`` as indented JSON through :func:`write_atomic`."""
  write_atomic(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))


def read_text(path: Path) -> str:
  """A run file's text; raises :class:`NotARunError` if it is not UTF-8 or unreadable."""
  try:
    return path.read_bytes().decode("utf-8")
  except UnicodeDecodeError as e:
    raise NotARunError(
      f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}): the file "
      "is damaged; restore it or remove the run"
    ) from None
  except OSError as e:
    raise NotARunError(f"{path} cannot be read: {e.strerror}") from None


def read_record(path: Path) -> dict[str, Any]:
  """A run's ``config.json`` as a dict, as written (config keys and the harness's records)."""
  try:
    record = json.loads(read_text(path))
  except json.JSONDecodeError as e:
    raise NotARunError(f"{path} is not a run's config.json: not JSON ({e})") from None
  if not isinstance(record, dict):
    raise NotARunError(f"{path} is not a run's config.json: not a JSON object")
  return record


def config_record(config: ml_collections.ConfigDict, **records: Any) -> dict[str, Any]:
  """What a ``config.json`` holds: the config's keys that apply, then the harness's ``records``.

  The keys are those that apply to the config's model, split and schedule
  (:func:`experiments.config_checks.recorded`); a run adds its command, the library's
  version, its devices and groups, a compact or prune output nothing.
  """
  return {**recorded(config), **records}


def write_config(
  path: Path,
  config: ml_collections.ConfigDict,
  command: str,
  resumed_from: int | None = None,
  **records: Any,
) -> None:
  """Writes a run's ``config.json``: :func:`config_record` with ``command`` and ``records``.

  A resumed run (``resumed_from``: the step) keeps the record it started with and appends
  ``{"command", "step", "changed"}`` to its ``resumes``: the command, the step it resumed
  from, and the config keys it changed (only those that cannot change the trajectory).
  """
  record = None
  if resumed_from is not None and path.exists():
    record = read_record(path)  # resume.resumed_config has read it already
    before = read_config(path)
    changed = {k: v for k, v in recorded(config).items() if config[k] != before[k]}
    resume = {"command": command, "step": resumed_from, "changed": changed}
    record.setdefault("resumes", []).append(resume)
  if record is None:
    record = config_record(config, command=command, **records)
  path.parent.mkdir(parents=True, exist_ok=True)
  write_json(path, record)


def record_divergence(workdir: Path, diverged: dict[str, Any]) -> None:
  """Adds ``{"step", "loss"}`` of a run that stopped on a non-finite loss to its ``config.json``."""
  record = read_record(workdir / CONFIG)
  record[DIVERGED] = diverged
  write_json(workdir / CONFIG, record)


def checkpoint_steps(checkpoints: str | os.PathLike[str]) -> list[int]:
  """The steps of the complete checkpoints in a ``checkpoints/`` folder, oldest first.

  A checkpoint is a folder named by its step; a save in progress has a temporary name
  (Orbax's). A folder that does not exist holds none.
  """
  path = Path(checkpoints)
  return sorted(int(p.name) for p in path.glob("*") if p.name.isdigit())


def read_config(path: Path) -> ml_collections.ConfigDict:
  """The experiment config recorded in a run's ``config.json``.

  The experiment's config (``configs/<experiment>.py``) takes the recorded value
  of each of its keys, with the changes of each resume (``resumes``) applied,
  checked against the type of its default (a float key accepts an integer). Keys
  the harness adds (command, devices, groups, ...) are no config keys and drop
  out; a key the file lacks keeps its default.

  Args:
    path: the ``config.json`` file.

  Returns:
    The config.

  Raises:
    NotARunError: the file is not JSON, names no known experiment, or holds a
      value of the wrong type (the message names the key).
  """
  record = read_record(path)
  try:
    config = configs.load_config(record["experiment"])
    for resume in record.get("resumes", []):  # keys a resumed run changed (e.g. total_iter)
      record.update(resume["changed"])
    for key, default in config.items():
      if key in record:
        config[key] = config_value(key, default, record[key])
  except (ValueError, KeyError, TypeError) as e:  # ConfigError included
    raise NotARunError(f"{path} is not a run's config.json ({type(e).__name__}: {e})") from None
  return config


@dataclasses.dataclass(frozen=True)
class Run:
  """One run folder: its config and its metric rows, sorted by step.

  Attributes:
    path: the run folder.
    config: ``config.json``, as written.
    rows: the well-formed rows of ``metrics.jsonl`` (at least one). A run that
      diverged stops at its last finite evaluation, or at the one that found it.
  """

  path: Path
  config: dict[str, Any]
  rows: list[dict[str, Any]]

  @property
  def method(self) -> str:
    """``"pathprox"`` or ``"wd"`` (the config's, else the metrics')."""
    return str(self.config.get("method") or self.rows[-1].get("method", "unknown"))

  @property
  def total_iter(self) -> int:
    return int(self.config["total_iter"])

  @property
  def last_step(self) -> int:
    return self.rows[-1]["step"]

  @property
  def complete(self) -> bool:
    """Whether the run logged its final step (``step == total_iter``)."""
    return self.last_step >= self.total_iter

  @property
  def seed(self) -> int | None:
    """The config's ``seed`` (``None`` if not recorded)."""
    seed = self.config.get("seed")
    return seed if isinstance(seed, int) else None

  @property
  def diverged_at(self) -> int | None:
    """The step at which the loss became non-finite (``config.json``'s ``diverged``), or None."""
    marker = self.config.get(DIVERGED)
    return None if marker is None else marker["step"]

  def row_at(self, step: int) -> dict[str, Any] | None:
    """The row logged at ``step``, else the last one before it; ``None`` if not reached."""
    if self.last_step < step:
      return None
    return [row for row in self.rows if row["step"] <= step][-1]


def load_run(path: str | os.PathLike[str]) -> Run:
  """Reads a run folder, tolerating a run that is still writing its metrics.

  A line of ``metrics.jsonl`` that is not a JSON object with an integer ``step``
  (such as a last line cut off mid-write) is skipped with a warning on stderr
  naming ``file:line``.

  Args:
    path: a folder written by ``experiments.train``.

  Returns:
    The :class:`Run`.

  Raises:
    NotARunError: ``path`` is not a folder, lacks ``config.json`` (or its
      ``total_iter``) or a ``metrics.jsonl`` with at least one row, one of
      them is not UTF-8 text, or its ``diverged`` record has no integer step.

  Example:
    >>> run = load_run("runs/cmp/pathprox")  # doctest: +SKIP
    >>> run.last_step, run.complete  # doctest: +SKIP
    (20000, True)
  """
  path = Path(path)
  if not path.is_dir():
    raise NotARunError(f"{path} is not a run directory: no such directory")
  missing = [name for name in (CONFIG, METRICS) if not (path / name).is_file()]
  if missing:
    raise NotARunError(f"{path} is not a run directory: no {' and no '.join(missing)}")
  config = read_record(path / CONFIG)
  if "total_iter" not in config:
    raise NotARunError(f"{path} is not a run directory: config.json has no total_iter")
  marker = config.get(DIVERGED)
  if marker is not None and not (isinstance(marker, dict) and type(marker.get("step")) is int):
    raise NotARunError(
      f"{path / CONFIG}: {DIVERGED} is {marker!r}, expected an object such as "
      '{"step": 41, "loss": "nan"}; mend or remove that key'
    )
  rows = read_rows(path / METRICS)
  if not rows:
    raise NotARunError(f"{path} is not a run directory: metrics.jsonl has no rows")
  return Run(path, config, sorted(rows, key=lambda row: row["step"]))


def read_rows(path: Path) -> list[dict[str, Any]]:
  """The rows of a ``metrics.jsonl``; malformed lines are skipped with a warning on stderr."""
  rows = []
  for number, line in enumerate(read_text(path).splitlines(), start=1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      row = None
    if isinstance(row, dict) and isinstance(row.get("step"), int):
      rows.append(row)
    else:
      print(f"warning: {path}:{number}: skipped a malformed metrics line", file=sys.stderr)
  return rows


def metric(row: dict[str, Any], key: str) -> float:
  """A metrics row's value of ``key`` as a float; NaN if it lacks one or it is not a number."""
  value = row.get(key)
  return float(value) if isinstance(value, (int, float)) else math.nan


def common_curve(runs: Sequence[Run], key: str) -> tuple[np.ndarray, np.ndarray]:
  """``(steps, values [runs, steps])`` of a metric at the steps every run logged.

  Example:
    >>> steps, values = common_curve([pathprox, wd], "wd_objective")  # doctest: +SKIP
    >>> values.shape == (2, len(steps))  # doctest: +SKIP
    True
  """
  steps = sorted(set.intersection(*({row["step"] for row in run.rows} for run in runs)))
  by_step = [{row["step"]: metric(row, key) for row in run.rows} for run in runs]
  return np.array(steps, dtype=int), np.array([[values[s] for s in steps] for values in by_step])


def member_name(seed: int, weight_decay: float | None = None) -> str:
  """A sweep member's run folder name: ``seed<s>``, or ``wd<λ>-seed<s>`` when λ varies too.

  λ is written with ``%g`` where that reads back as the same float, else as its ``repr``
  (which always does): two members with different λ never share a folder.

  Example:
    >>> member_name(3), member_name(0, 1e-4), member_name(0, 1.0000001e-4)
    ('seed3', 'wd0.0001-seed0', 'wd0.00010000001-seed0')
  """
  if weight_decay is None:
    return f"seed{seed}"
  text = f"{weight_decay:g}"
  return f"wd{text if float(text) == weight_decay else repr(weight_decay)}-seed{seed}"


def sweep_members(path: str | os.PathLike[str]) -> dict[str, list[Path]]:
  """A sweep folder's member run folders, by their ``wd<λ>`` prefix (``""``: none), by seed.

  Returns ``{}`` when ``path`` is a run folder itself or holds no member folders.
  """
  path = Path(path)
  if not path.is_dir() or (path / CONFIG).exists():
    return {}
  members: dict[str, list[tuple[int, Path]]] = {}
  for child in path.iterdir():
    if child.is_dir() and (match := _MEMBER.fullmatch(child.name)):
      prefix = match["weight_decay"] or ""
      members.setdefault(prefix, []).append((int(match["seed"]), child))
  by_weight_decay = sorted(members.items(), key=lambda item: float(item[0] or 0))
  return {prefix: [p for _, p in sorted(found)] for prefix, found in by_weight_decay}
