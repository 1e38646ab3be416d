"""One run per output directory: a lock held for the run's whole life.

    with lock.hold(output, "--output", "rpn-preprocess"):
        ...  # clear old outputs, run, write the manifest

The lock is the file DIR/.rpn-run.lock, holding the run's command, host,
process id and start time (JSON), which is what a refused run names:

    rpn-preprocess: error: --output out/shards: another run is using it
    (rpn-preprocess, pid 4242 on host a1, started 2026-12-06 21:50:01 UTC); wait
    for it to end, or use another --output

Local (and NFS) directories: the file is locked with flock(2), which the
kernel drops when the holder dies however it dies (SIGKILL, out of memory), so
a lock file left by a dead run is taken over, with a warning naming that run.
A live run's lock is never taken.

Object stores (gs://, s3://) have no locks. There the lock is an object that
the holder rewrites every HEARTBEAT_S seconds; an object older than STALE_S is
taken for a dead run's and taken over. What that protects: a second run
started while the first is alive and beating is refused. What it does not:
two runs started within a second or two of each other can both write it and
both go on (object stores have no atomic create that Beam's FileSystems
exposes), and a launcher that stops beating for STALE_S while its pipeline
still runs (suspended, cut off from the store) can lose its lock. A run
submitted and left to run (a Dataflow job whose launcher exits) holds the
lock only while its launcher lives.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
import threading
import time
from typing import Dict, Iterator, Optional

from pipeline.commands import cli
from pipeline.io import storage

LOCK_NAME = ".rpn-run.lock"
HEARTBEAT_S = 30.0
STALE_S = 300.0

_LOGGER = logging.getLogger(__name__)


def _now() -> float:
  return time.time()


def _utc(seconds: float) -> str:
  return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(
      "%Y-%m-%d %H:%M:%S UTC")


def owner(command: str) -> Dict:
  """What a lock says of the run holding it."""
  now = _now()
  return {"command": command, "host": socket.gethostname(), "pid": os.getpid(),
          "started": now, "heartbeat": now}


def describe(holder: Optional[Dict]) -> str:
  """'rpn-preprocess, pid 4242 on host a1, started 2026-12-06 21:50:01 UTC'."""
  if not holder:
    return "a run that left no details"
  started = holder.get("started")
  when = f", started {_utc(started)}" if isinstance(started, (int, float)) else ""
  return f"{holder.get('command', '?')}, pid {holder.get('pid', '?')} on host " \
         f"{holder.get('host', '?')}{when}"


def _parse(text: str) -> Optional[Dict]:
  try:
    value = json.loads(text)
  except ValueError:
    return None
  return value if isinstance(value, dict) else None


class LockedError(cli.UsageError):
  """The directory is held by another live run."""


def _refusal(flag: str, directory: str, holder: Optional[Dict]) -> LockedError:
  return LockedError(flag, directory, f"another run is using it ({describe(holder)}); wait "
                     f"for it to end, or use another {flag}")


@contextlib.contextmanager
def hold(directory: str, flag: str, command: str, remote: Optional[bool] = None
         ) -> Iterator[Dict]:
  """Holds the run lock of `directory` (created if missing) inside the block;
  yields what the lock says. A live holder: LockedError (a cli.UsageError
  naming it). `remote` forces the object-store way (tests); by default it
  follows the path."""
  remote = (not storage.is_local(directory)) if remote is None else remote
  holder = owner(command)
  with (_hold_object(directory, flag, holder) if remote
        else _hold_file(directory, flag, holder)):
    yield holder


@contextlib.contextmanager
def _hold_file(directory: str, flag: str, holder: Dict) -> Iterator[None]:
  import fcntl  # POSIX only: imported where it is used
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, LOCK_NAME)
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        os.close(fd)
        raise
      previous = _parse(os.pread(fd, 1 << 16, 0).decode("utf-8", "replace"))
      os.close(fd)
      raise _refusal(flag, directory, previous) from None
    # The holder before us may have removed the file between our open and our
    # flock: then we locked a file no one else sees; start again.
    try:
      same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  try:
    previous = _parse(os.pread(fd, 1 << 16, 0).decode("utf-8", "replace"))
    if previous is not None:
      _LOGGER.warning("%s: took over the lock of a run that is no longer running (%s)",
                      directory, describe(previous))
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder, sort_keys=True) + "\n").encode(), 0)
    os.fsync(fd)
    yield
  finally:
    # Removed while still locked, so that no run sees a released file.
    with contextlib.suppress(OSError):
      os.unlink(path)
    os.close(fd)


@contextlib.contextmanager
def _hold_object(directory: str, flag: str, holder: Dict) -> Iterator[None]:
  path = storage.join(directory, LOCK_NAME)
  previous = _read_object(path)
  if previous is not None:
    age = _now() - float(previous.get("heartbeat", 0) or 0)
    if age < STALE_S:
      raise _refusal(flag, directory, previous)
    _LOGGER.warning("%s: took over the lock of a run that stopped beating %.0f s ago (%s)",
                    directory, age, describe(previous))
  storage.write_json(path, holder)
  mine = dict(holder)
  stop = threading.Event()

  def beat():
    while not stop.wait(HEARTBEAT_S):
      mine["heartbeat"] = _now()
      try:
        storage.write_json(path, mine)
      except Exception as e:  # noqa: BLE001 - a missed beat is retried
        _LOGGER.warning("%s: could not renew the run lock (%s)", path, e)
  beater = threading.Thread(target=beat, name="rpn-run-lock", daemon=True)
  beater.start()
  try:
    yield
  finally:
    stop.set()
    beater.join()
    current = _read_object(path)
    if current is not None and (current.get("host"), current.get("pid"),
                                current.get("started")) == (
        holder["host"], holder["pid"], holder["started"]):
      from apache_beam.io.filesystems import FileSystems  # lazy: see storage
      with contextlib.suppress(Exception):
        FileSystems.delete([path])


def _read_object(path: str) -> Optional[Dict]:
  if not storage.exists(path):
    return None
  try:
    return _parse(storage.read_text(path)) or {}
  except (OSError, UnicodeDecodeError):
    return {}
