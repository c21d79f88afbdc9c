"""One writer per workdir: an exclusive `flock` on WORKDIR/.lock, held for the whole run.

The lock file holds the holder's host, pid and start time (JSON). A second run into the
same workdir is refused at once with `WorkdirLockedError` naming the holder, before it
reads or writes anything there. The kernel drops a `flock` when its process dies (crash,
SIGKILL), so a lock file whose holder is gone is simply taken over, with a warning naming
the run that left it. A clean release empties the file.

Only process 0 of a multi-process run takes the lock (the processes of one run share the
workdir). `flock` is advisory and local to one machine's kernel on most network file
systems: runs on different hosts sharing a workdir are not detected by it.

Why hand-written: `fcntl.flock` is the whole mechanism; lock-file packages (filelock,
portalocker) wrap the same call without the holder record this error message needs.

Example:
  >>> with WorkdirLock(workdir):
  ...   pass  # train, evaluate, write results
"""
import datetime
import fcntl
import json
import os
import socket
import threading
from typing import Any, Dict

from absl import logging

LOCK_NAME = ".lock"
_held: Dict[str, int] = {}   # realpath -> depth: re-entrant within one process
_held_files: Dict[str, int] = {}
_mutex = threading.Lock()


class WorkdirLockedError(RuntimeError):
  """Another run holds the workdir's lock."""


def _describe(holder: Dict[str, Any]) -> str:
  return (f"pid {holder.get('pid')} on host {holder.get('host')}, started "
          f"{holder.get('started')}")


def _read_holder(fd: int) -> Dict[str, Any]:
  os.lseek(fd, 0, os.SEEK_SET)
  raw = os.read(fd, 4096).decode("utf-8", "replace").strip()
  if not raw:
    return {}
  try:
    holder = json.loads(raw)
    return holder if isinstance(holder, dict) else {"record": raw}
  except ValueError:
    return {"record": raw[:200]}


class WorkdirLock:
  """Context manager: takes WORKDIR/.lock (creating WORKDIR) or raises WorkdirLockedError.

  Args:
    workdir: the run's output folder.
    enabled: False on processes other than 0 (they do nothing).
  """

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.workdir = workdir
    self.enabled = enabled
    self.path = os.path.join(workdir, LOCK_NAME)
    self._key = None

  def __enter__(self) -> "WorkdirLock":
    if not self.enabled:
      return self
    try:
      os.makedirs(self.workdir, exist_ok=True)
    except OSError as e:
      from projnce_jax.train.validate import WorkdirError  # pylint: disable=g-import-not-at-top
      raise WorkdirError(f"workdir {os.path.abspath(self.workdir)} is not writable: {e}"
                         ) from e
    key = os.path.realpath(self.path)
    with _mutex:
      if key in _held:   # this process holds it already (run -> train_and_evaluate)
        _held[key] += 1
        self._key = key
        return self
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise WorkdirLockedError(
            f"{self.workdir} is in use by another run ({_describe(holder)}); wait for it "
            f"to finish or stop it, or use another --workdir") from None
      except OSError:
        os.close(fd)
        raise
      previous = _read_holder(fd)
      if previous:
        logging.warning("%s: taking over the lock left by a run that is no longer running "
                        "(%s)", self.workdir, _describe(previous))
      record = {"host": socket.gethostname(), "pid": os.getpid(),
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds")}
      os.ftruncate(fd, 0)
      os.lseek(fd, 0, os.SEEK_SET)
      os.write(fd, (json.dumps(record) + "\n").encode())
      os.fsync(fd)
      _held[key] = 1
      _held_files[key] = fd
      self._key = key
    return self

  def __exit__(self, *exc) -> None:
    if self._key is None:
      return
    with _mutex:
      _held[self._key] -= 1
      if _held[self._key] == 0:
        fd = _held_files.pop(self._key)
        del _held[self._key]
        try:
          os.ftruncate(fd, 0)   # a clean release leaves no holder behind
        finally:
          fcntl.flock(fd, fcntl.LOCK_UN)
          os.close(fd)
    self._key = None
