"""What a running pipeline shows on the terminal: the progress lines and the
command's own log lines. Everything else written to stderr while it runs
(Beam's logs, the worker processes' stderr with their tracebacks and
TensorFlow's start-up notices) goes to a log file, which a failure's
failure.log takes in (cli.runtime_failure). With --verbose nothing is held back.

File-descriptor level: worker processes inherit stderr, and native code
writes to it directly, so the capture replaces file descriptor 2 with a pipe
that a thread drains. Stdlib only.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from typing import Iterator, List

from pipeline.commands import cli

# Lines of the worker processes shown on the terminal as they come.
SHOWN = re.compile(r"progress \(worker \d+\)")
# Marks this process's own log lines in the pipe: the drain shows them (and
# only them, of what it does not show anyway) without the mark, in the order
# everything reached the pipe.
OWN_MARK = b"\x1erpn-own\x1e"
# Loggers of this process whose records only go to the log (Beam's own:
# pipeline construction notes, the workers' logs forwarded with their tracebacks).
LOG_ONLY_LOGGERS = ("apache_beam",)


class _LogOnly(logging.Filter):
  def __init__(self, keep: bool):
    super().__init__()
    self._keep = keep

  def filter(self, record: logging.LogRecord) -> bool:
    # Beam also logs through the root logger (logging.warning in its modules).
    log_only = record.name.startswith(LOG_ONLY_LOGGERS) or (
        f"{os.sep}apache_beam{os.sep}" in (record.pathname or ""))
    return log_only if self._keep else not log_only


class _MarkedStream:
  """A text stream for this process's own log records inside held_back: each
  line goes into the captured stderr (the pipe) behind OWN_MARK, so that the
  drain puts it on the terminal in order with the worker processes' lines."""

  def __init__(self, fd: int):
    self._fd = fd
    self._at_line_start = True

  def write(self, text: str) -> int:
    out = bytearray()
    for piece in text.encode("utf-8", "replace").splitlines(keepends=True):
      if self._at_line_start:
        out += OWN_MARK
      out += piece
      self._at_line_start = piece.endswith(b"\n")
    view = memoryview(bytes(out))
    while view:  # a pipe may take a long write in parts
      view = view[os.write(self._fd, view):]
    return len(text)

  def flush(self) -> None:
    pass


@contextlib.contextmanager
def held_back(prog: str, enabled: bool = True) -> Iterator[None]:
  """Inside the block, stderr goes to a log file and the terminal sees only the
  progress lines and this process's own log records (Beam's excepted). A
  failure leaves the log for cli.runtime_failure (cli.RUN.captured_log);
  success deletes it. A no-op when not `enabled` (--verbose)."""
  if not enabled:
    yield
    return
  fd, path = tempfile.mkstemp(prefix=f"{prog}-", suffix=".log")
  log = os.fdopen(fd, "ab", buffering=0)
  sys.stderr.flush()
  terminal_fd = os.dup(2)
  read_end, write_end = os.pipe()
  os.dup2(write_end, 2)
  os.close(write_end)

  def drain():
    with os.fdopen(read_end, "rb") as pipe:
      for line in pipe:
        if line.startswith(OWN_MARK):  # this process's own record: the terminal only
          with contextlib.suppress(OSError):
            os.write(terminal_fd, line[len(OWN_MARK):])
          continue
        with contextlib.suppress(OSError):  # a full disk must not stop the drain
          log.write(line)
        if SHOWN.search(line.decode("utf-8", "replace")):
          with contextlib.suppress(OSError):
            os.write(terminal_fd, line)
  drainer = threading.Thread(target=drain, name="stderr-drain", daemon=True)
  drainer.start()
  # This process's log records: its own to the terminal (through the pipe,
  # marked, so in order with the workers' lines), Beam's to the log.
  marked = _MarkedStream(2)
  moved: List = []
  for handler in logging.getLogger().handlers:
    if isinstance(handler, logging.StreamHandler) and handler.stream in (
        sys.stderr, sys.__stderr__):
      only_ours = _LogOnly(keep=False)
      moved.append((handler, handler.setStream(marked), only_ours))
      handler.addFilter(only_ours)
  beam_records = logging.StreamHandler(sys.stderr)
  beam_records.addFilter(_LogOnly(keep=True))
  beam_records.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s "
                                              "%(message)s"))
  logging.getLogger().addHandler(beam_records)
  failed = True
  try:
    yield
    failed = False
  finally:
    logging.getLogger().removeHandler(beam_records)
    for handler, stream, only_ours in moved:
      handler.removeFilter(only_ours)
      handler.setStream(stream)
    sys.stderr.flush()
    os.dup2(terminal_fd, 2)  # closes the pipe's last write end in this process
    drainer.join(timeout=10)  # worker processes still alive may hold it open
    os.close(terminal_fd)
    log.close()
    if failed:
      cli.RUN.captured_log = path
    else:
      with contextlib.suppress(OSError):
        os.remove(path)
