"""pipeline.beam.watchdog: a run left waiting on a dead worker process is ended."""
import subprocess
import sys
import threading
import time

import pytest

from pipeline.beam import watchdog
from pipeline.commands import failures

# A stand-in for an SDK worker: a Python process with the worker's mark in its command.
WORKER = [sys.executable, "-c", "import time; time.sleep(120)", "sdk_worker_main"]


def _wait_until(condition, timeout=20.0):
  deadline = time.monotonic() + timeout
  while not condition() and time.monotonic() < deadline:
    time.sleep(0.05)
  return condition()


def test_a_dead_worker_ends_a_wait_that_would_last_for_ever():
  first, second = subprocess.Popen(WORKER), subprocess.Popen(WORKER)
  try:
    started = time.monotonic()
    with pytest.raises(watchdog.WorkerDiedError) as died, \
        watchdog.watched(grace_s=1.0, interval_s=0.1):
      assert _wait_until(lambda: watchdog.worker_processes(watchdog.os.getpid())
                         == {first.pid, second.pid})
      time.sleep(0.3)  # seen by the watch
      first.kill()
      threading.Event().wait(60)  # the runner's wait on the dead worker
    assert time.monotonic() - started < 30
    assert str(died.value) == (f"a worker process (pid {first.pid}) died in the middle of the "
                               f"run, and the runner waited 1 s for it")
    assert second.wait(timeout=10) == -9  # the other worker is ended too
    assert failures.describe(died.value).startswith(
        "a worker process ended in the middle of the run")
  finally:
    for process in (first, second):
      process.kill()
      process.wait()


def test_a_run_that_ends_is_left_alone():
  worker = subprocess.Popen(WORKER)
  try:
    with watchdog.watched(grace_s=0.5, interval_s=0.1):
      assert _wait_until(lambda: worker.pid in watchdog.worker_processes(
          watchdog.os.getpid()))
    worker.kill()  # after the block: no interruption
    time.sleep(1.0)
  finally:
    worker.kill()
    worker.wait()


def test_other_processes_are_not_workers():
  other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    assert other.pid not in watchdog.worker_processes(watchdog.os.getpid())
  finally:
    other.kill()
    other.wait()
