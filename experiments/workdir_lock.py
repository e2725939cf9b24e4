"""One writer per run directory: an OS lock held for the run's whole lifetime.

``fcntl.flock`` on ``<workdir>/.lock.p<process index>``: the kernel releases it when the
process dies, however it dies, so a crash never leaves a stale lock. Each process of a
multi-host job takes its own file, so one job never waits on itself, while a second job
is refused on every process.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path


class WorkdirInUseError(RuntimeError):
  """Another process holds the run directory's lock."""


class WorkdirLock:
  """Context manager holding ``<workdir>/.lock.p<process_index>``.

  Creates the workdir if needed; on exit removes the lock file, and the workdir
  too if it created it and nothing else was written there.

  Raises:
    WorkdirInUseError: on entry, naming the holder's pid and host.
  """

  def __init__(self, workdir: Path, process_index: int = 0):
    self.workdir = Path(workdir)
    self.path = self.workdir / f".lock.p{process_index}"
    self._fd: int | None = None
    self._created = False

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self) -> WorkdirLock:
    """Takes the lock (see the class)."""
    self._created = not self.workdir.exists()
    self.workdir.mkdir(parents=True, exist_ok=True)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown pid"
        os.close(fd)
        raise WorkdirInUseError(
          f"{self.workdir} is in use by another run ({holder}); wait for it to end, stop it, "
          "or choose another --workdir"
        ) from None
      try:
        if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
          break  # still the file at self.path: a previous holder may have just removed it
      except FileNotFoundError:
        pass
      os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    self._fd = fd
    return self

  def release(self) -> None:
    """Releases the lock, if held (see the class)."""
    if self._fd is None:
      return
    self.path.unlink(missing_ok=True)
    os.close(self._fd)  # releases the lock
    self._fd = None
    if self._created and not any(self.workdir.iterdir()):
      self.workdir.rmdir()
