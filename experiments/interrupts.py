"""Ctrl-C and SIGTERM stop a run: cleanly when they can, at once when asked twice or stuck.

The first SIGINT or SIGTERM is recorded; the training loop checks
:meth:`Interrupts.requested` between compiled stretches of steps, saves a checkpoint and
stops. A second SIGINT or SIGTERM ends the process at once. If the run has not stopped
:data:`STOP_TIMEOUT` seconds (default 60) after the first signal — a save or a collective
that never returns — a watchdog ends it, naming where it was waiting.

The signals are read by a thread of their own (through :func:`signal.set_wakeup_fd`), so
that both work even while the main thread is blocked in native code, where Python's
signal handlers do not run. Either forced end exits with code 128 + the signal, after one
line on stderr; the run resumes from its last complete checkpoint.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from configs import ConfigError

SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_TIMEOUT = "PATHPROX_STOP_TIMEOUT"  # environment variable: seconds, default below
DEFAULT_STOP_TIMEOUT_S = 60.0
_PACKAGE = str(Path(__file__).resolve().parent)
_CLOSE = b"\0"  # not a signal number: tells the reader thread to end


def stop_timeout() -> float:
  """The watchdog's delay: ``$PATHPROX_STOP_TIMEOUT`` seconds, else 60.

  Raises:
    ConfigError: the variable is not a positive finite number.
  """
  text = os.environ.get(STOP_TIMEOUT)
  if text is None:
    return DEFAULT_STOP_TIMEOUT_S
  try:
    seconds = float(text)
  except ValueError:
    seconds = float("nan")
  if not 0 < seconds < float("inf"):
    raise ConfigError(f"{STOP_TIMEOUT}={text!r}: expected a positive number of seconds")
  return seconds


def waiting_in() -> str:
  """Where the main thread is: its innermost function in this package, and the line."""
  frame = sys._current_frames().get(threading.main_thread().ident)
  while frame is not None:
    if frame.f_code.co_filename.startswith(_PACKAGE):
      module = Path(frame.f_code.co_filename).stem
      return f"{module}.{frame.f_code.co_qualname} (line {frame.f_lineno})"
    frame = frame.f_back
  return "code outside the experiments package"


class Interrupts:
  """A context that turns the first SIGINT/SIGTERM into a request to stop.

  Example::

    with Interrupts() as stop:
      while not stop.requested():
        ...

  Args:
    timeout: seconds from the first signal to the watchdog's forced exit (default:
      :func:`stop_timeout`).
  """

  def __init__(self, timeout: float | None = None):
    self.timeout = stop_timeout() if timeout is None else timeout
    self.signum: int | None = None
    self._previous: dict[int, object] = {}
    self._previous_wakeup = -1
    self._reader: threading.Thread | None = None
    self._sockets: tuple[socket.socket, socket.socket] | None = None

  def requested(self) -> int | None:
    """The signal received (``signal.SIGINT`` or ``signal.SIGTERM``), or None."""
    return self.signum

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    """Python's handler: records the first signal (the default action would end the run)."""
    del frame
    if self.signum is None:
      self.signum = signum

  def _read(self, incoming: socket.socket) -> None:
    """The reader thread: records the first signal, then ends the process if asked or stuck."""
    deadline = None
    while True:
      incoming.settimeout(None if deadline is None else max(0.0, deadline - time.monotonic()))
      try:
        received = incoming.recv(1)
      except TimeoutError:
        _exit(
          self.signum,
          f"error: the run did not stop within {self.timeout:g} s of "
          f"{signal.Signals(self.signum).name} ({STOP_TIMEOUT}); it was waiting in "
          f"{waiting_in()}; stopped without a checkpoint at this step",
        )
      if received in (b"", _CLOSE):
        return
      if received[0] not in SIGNALS:
        continue
      name = signal.Signals(received[0]).name
      if deadline is not None:
        _exit(received[0], f"error: a second {name}: stopped at once, without a checkpoint")
      self._handle(received[0], None)
      deadline = time.monotonic() + self.timeout
      print(
        f"{name}: stopping with a checkpoint after this stretch of steps; another SIGINT or "
        "SIGTERM stops at once",
        file=sys.stderr,
        flush=True,
      )

  def __enter__(self) -> Interrupts:
    if threading.current_thread() is not threading.main_thread():
      return self  # signals stay as they are
    for signum in SIGNALS:
      self._previous[signum] = signal.signal(signum, self._handle)
    incoming, outgoing = socket.socketpair()
    outgoing.setblocking(False)
    self._sockets = incoming, outgoing
    self._previous_wakeup = signal.set_wakeup_fd(outgoing.fileno(), warn_on_full_buffer=False)
    self._reader = threading.Thread(target=self._read, args=(incoming,), daemon=True)
    self._reader.start()
    return self

  def __exit__(self, *exc) -> None:
    if self._reader is None:
      return
    signal.set_wakeup_fd(self._previous_wakeup)
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    incoming, outgoing = self._sockets
    outgoing.send(_CLOSE)
    self._reader.join()
    incoming.close()
    outgoing.close()


def _exit(signum: int, line: str) -> None:
  """Ends the process now with ``line`` on stderr and code 128 + ``signum``."""
  print(line, file=sys.stderr, flush=True)
  os._exit(128 + signum)
