"""Where a run's evaluations go: ``metrics.jsonl``, and TensorBoard if asked for."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from experiments import run_folder


class MetricsWriter:
  """Appends one JSON object per evaluation to ``metrics.jsonl``.

  On resume the file is rewritten from the checkpoint's history first, so rows
  written after that checkpoint are dropped and none is duplicated. With
  ``tensorboard_dir``, every numeric value is also written as a TensorBoard
  scalar (``tensorboardX``, no TensorFlow needed).

  Args:
    path: the ``metrics.jsonl`` file.
    history: the rows already logged (from the checkpoint).
    enabled: write files (only process 0 does on several hosts).
    tensorboard_dir: where to write TensorBoard event files, or None.
  """

  def __init__(
    self,
    path: Path,
    history: list[dict[str, Any]],
    *,
    enabled: bool = True,
    tensorboard_dir: Path | None = None,
  ):
    self.path = path
    self.rows = list(history)
    self.enabled = enabled
    self.tensorboard = None
    if not enabled:
      return
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row) + "\n" for row in self.rows)
    run_folder.write_atomic(path, lambda tmp: tmp.write_text(text))
    if tensorboard_dir is not None:
      from tensorboardX import SummaryWriter

      self.tensorboard = SummaryWriter(str(tensorboard_dir))

  def append(self, row: dict[str, Any]) -> None:
    """Logs one evaluation (a dict with a ``step``)."""
    self.rows.append(row)
    if not self.enabled:
      return
    with self.path.open("a") as f:
      f.write(json.dumps(row) + "\n")
    if self.tensorboard is not None:
      for key, value in row.items():
        if isinstance(value, (int, float)) and key != "step":
          self.tensorboard.add_scalar(key, value, row["step"])
      self.tensorboard.flush()

  def roll_back(self, step: int | None) -> None:
    """Drops the rows past ``step`` (None: all), in the file too (truncated: no new space)."""
    self.rows = [row for row in self.rows if step is not None and row["step"] <= step]
    if self.enabled:
      kept = sum(len((json.dumps(row) + "\n").encode()) for row in self.rows)
      os.truncate(self.path, kept)

  def close(self) -> None:
    if self.tensorboard is not None:
      self.tensorboard.close()
