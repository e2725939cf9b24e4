"""Ctrl-C and SIGTERM stop a run cleanly: the loop finishes its step, saves and exits.

The first SIGINT or SIGTERM is only recorded; the training loop checks
:meth:`Interrupts.requested` between compiled stretches of steps, saves a checkpoint and
stops. A second SIGINT aborts at once (the default action: the process dies).
"""

from __future__ import annotations

import signal
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupts:
  """A context that records the first SIGINT/SIGTERM instead of dying of it.

  Example::

    with Interrupts() as stop:
      while not stop.requested():
        ...
  """

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, object] = {}

  def requested(self) -> int | None:
    """The signal received (``signal.SIGINT`` or ``signal.SIGTERM``), or None."""
    return self.signum

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    del frame
    if self.signum is None:
      self.signum = signum
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C kills the process

  def __enter__(self) -> Interrupts:
    for signum in SIGNALS:
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # not the main thread: signals stay as they are
        break
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
