"""The per-worker progress line: images done, errors, rate, every few seconds.

Logged on logger "pipeline.progress" at INFO, which the launcher lets through
to the terminal while Beam's own logging stays in the run's log.
"""
from __future__ import annotations

import logging
import os
import threading
import time


class WorkerProgress:
  """A plain progress line per worker process: images done, rate, errors so far.

  One per process (PROGRESS below): every DoFn instance of the process adds
  to it. Logged at INFO on the `pipeline.progress` logger at most every
  `every_s` seconds; rpn-preprocess turns that logger on, also on workers.
  """

  def __init__(self, every_s: float = 10.0):
    self._every_s = every_s
    self._lock = threading.Lock()
    self._start = self._last = None
    self._done = self._errors = 0

  def image_done(self) -> None:
    self._add(done=1)

  def error(self) -> None:
    self._add(errors=1)

  def _add(self, done: int = 0, errors: int = 0) -> None:
    with self._lock:
      now = time.monotonic()
      if self._start is None:
        self._start = self._last = now
      self._done += done
      self._errors += errors
      if self._done + self._errors > 1 and now - self._last < self._every_s:
        return
      self._last = now
      elapsed = now - self._start
      rate = f", {self._done / elapsed:.2f} images/s" if elapsed >= 1 else ""
      line = (f"progress (worker {os.getpid()}): {self._done} images done in {elapsed:.0f} s"
              f"{rate}, {self._errors} errors so far")
    PROGRESS_LOGGER.info(line)


PROGRESS_LOGGER = logging.getLogger("pipeline.progress")


PROGRESS = WorkerProgress()
