"""Where a run's evaluations go: ``metrics.jsonl``, and TensorBoard if asked for."""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path
from typing import Any

from experiments import run_folder


class MetricsWriter:
  """Appends one JSON object per evaluation to ``metrics.jsonl``.

  On resume the file is rewritten from the checkpoint's history first, so rows
  written after that checkpoint are dropped and none is duplicated. With
  ``tensorboard_dir``, every numeric value is also written as a TensorBoard
  scalar (``tensorboardX``, no TensorFlow needed); its event files are cut back with
  ``metrics.jsonl`` (:func:`cut_events`), on resume and by :meth:`roll_back`.

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
    self.tensorboard_dir = tensorboard_dir
    self.tensorboard = None
    if not enabled:
      return
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row) + "\n" for row in self.rows)
    run_folder.write_atomic(path, lambda tmp: tmp.write_text(text))
    if tensorboard_dir is not None:
      from tensorboardX import SummaryWriter

      cut_events(tensorboard_dir, self.rows[-1]["step"] if self.rows else None)
      # A new file, named after its start to the second (and, here, to the nanosecond: a
      # writer started in the same second must not replace it).
      self.tensorboard = SummaryWriter(str(tensorboard_dir), filename_suffix=f".{time.time_ns()}")

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
    """Drops the rows past ``step`` (None: all), in the files too (truncated: no new space).

    The TensorBoard writer is closed first (its queued events written): call it last,
    once the run has ended (after a failed save).
    """
    self.rows = [row for row in self.rows if step is not None and row["step"] <= step]
    if self.enabled:
      kept = sum(len((json.dumps(row) + "\n").encode()) for row in self.rows)
      os.truncate(self.path, kept)
      if self.tensorboard_dir is not None:
        self.close()
        cut_events(self.tensorboard_dir, step)

  def close(self) -> None:
    if self.tensorboard is not None:
      self.tensorboard.close()
      self.tensorboard = None


_HEADER = struct.Struct("<QI")  # a record's length and its checksum; the data's checksum follows


def cut_events(folder: Path, step: int | None) -> None:
  """Truncates each TensorBoard event file in ``folder`` before its first scalar past ``step``.

  An event file is a sequence of records (the length, its checksum, an ``Event``, its
  checksum) that a run appends in step order, so the scalars past ``step`` (None: all)
  are the file's tail; a record cut off mid-write (a killed run) goes too. Truncating
  needs no new space (a full disk).
  """
  from tensorboardX.proto.event_pb2 import Event

  for path in sorted(Path(folder).glob("events.out.tfevents.*")):
    data, offset = path.read_bytes(), 0
    while offset + _HEADER.size <= len(data):
      length, _ = _HEADER.unpack_from(data, offset)
      end = offset + _HEADER.size + length + 4
      if end > len(data):
        break
      event = Event.FromString(data[offset + _HEADER.size : end - 4])
      if event.HasField("summary") and (step is None or event.step > step):
        break
      offset = end
    if offset < len(data):
      os.truncate(path, offset)
