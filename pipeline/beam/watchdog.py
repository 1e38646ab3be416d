"""A local multi-process run whose worker process dies is ended, not waited on.

Beam's multi-process DirectRunner starts each SDK worker as `/bin/sh -c
python -m apache_beam.runners.worker.sdk_worker_main`. When one is killed
(SIGKILL, the kernel's out-of-memory killer), the runner sometimes fails the
bundle ("Channel closed prematurely") and sometimes waits for it forever
(seen in about one kill in three here). `watched()` notices a worker process
gone while the run still runs; if the run has not ended GRACE_S seconds
later, it ends the other workers and interrupts the launcher's wait with
WorkerDiedError. Linux only (/proc); elsewhere it watches nothing. Stdlib only.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Dict, Iterator, Set

GRACE_S = 20.0
INTERVAL_S = 0.5
WORKER_MARK = b"sdk_worker_main"


class WorkerDiedError(RuntimeError):
  """A worker process died and the runner went on waiting for it."""


def _parents() -> Dict[int, int]:
  """{pid: parent pid} of every process, from /proc."""
  found = {}
  for name in os.listdir("/proc"):
    if name.isdigit():
      try:
        with open(f"/proc/{name}/stat", "rb") as f:
          found[int(name)] = int(f.read().rsplit(b")", 1)[1].split()[1])
      except (OSError, IndexError, ValueError):
        continue
  return found


def worker_processes(root: int) -> Set[int]:
  """The Python SDK worker processes among the descendants of `root`."""
  parents = _parents()
  children: Dict[int, list] = {}
  for pid, parent in parents.items():
    children.setdefault(parent, []).append(pid)
  found, stack = set(), list(children.get(root, []))
  while stack:
    pid = stack.pop()
    stack.extend(children.get(pid, []))
    try:
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        command = f.read()
    except OSError:
      continue
    if WORKER_MARK in command and not command.startswith(b"/bin/sh"):
      found.add(pid)
  return found


@contextlib.contextmanager
def watched(grace_s: float = GRACE_S, interval_s: float = INTERVAL_S) -> Iterator[None]:
  """Inside the block (a Beam run in this process's main thread), a worker
  process that dies while the run waits on ends the run with WorkerDiedError
  after `grace_s` seconds."""
  if (threading.current_thread() is not threading.main_thread()
      or not os.path.isdir("/proc")):
    yield
    return
  me = os.getpid()
  stop = threading.Event()
  lost: Set[int] = set()

  def interrupt(signum, frame):
    raise WorkerDiedError(
        f"a worker process (pid {', '.join(map(str, sorted(lost)))}) died in the middle of "
        f"the run, and the runner waited {grace_s:.0f} s for it")

  def watch():
    seen: Set[int] = set()
    gone_at = None
    while not stop.wait(interval_s):
      alive = worker_processes(me)
      if seen - alive and gone_at is None:
        gone_at = time.monotonic()
        lost.update(seen - alive)
      seen |= alive
      if gone_at is not None and time.monotonic() - gone_at > grace_s and not stop.is_set():
        for pid in alive:  # the others: nothing will ask them for more
          with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        os.kill(me, signal.SIGUSR1)
        return

  previous = signal.signal(signal.SIGUSR1, interrupt)
  watcher = threading.Thread(target=watch, name="worker-watch", daemon=True)
  watcher.start()
  try:
    yield
  finally:
    stop.set()
    watcher.join()
    signal.signal(signal.SIGUSR1, previous)
