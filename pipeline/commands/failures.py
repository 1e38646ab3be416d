"""A run that fails while it runs: one line that says what, where and what to
do; the full traceback in a log file.

    rpn-preprocess: error: out of disk space (No space left on device) writing
    /data/out/beam-temp-tiles-1a2b/3c4d at step WriteOutputs/WriteShards/...:
    free space there or write to another --output; the run's partial output
    was removed (traceback: /data/out/failure.log)

Beam re-raises a worker's exception with the step appended ("[while running
'STEP']"), and from worker processes as text inside another exception, so
describe() reads the whole chain of exceptions and their messages. Stdlib
only (the commands' front ends import no TensorFlow).
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import os
import re
import socket
import sys
import tempfile
import traceback
from typing import Iterator, List, Optional, Tuple

LOG_NAME = "failure.log"

# (errno, the words of the line, what to do)
_OS_ERRORS = {
    errno.ENOSPC: ("out of disk space", "free space there or write to another {flag}"),
    errno.EDQUOT: ("disk quota exceeded", "free space there or write to another {flag}"),
    errno.EACCES: ("permission denied", "make it writable for this user or write to another "
                                        "{flag}"),
    errno.EPERM: ("operation not permitted", "make it writable for this user or write to "
                                             "another {flag}"),
    errno.EROFS: ("read-only file system", "write to another {flag}"),
    errno.EIO: ("input/output error", "check the disk or the mount, then rerun"),
}
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\] ([^:'\[\]\n]+)(?:: '([^'\n]+)')?")
_STEP = re.compile(r"\[while running '([^']+)'\]")
_WORKER_DIED = re.compile(r"Channel closed prematurely|Socket closed|worker.*(died|exited|"
                          r"killed)|SDK harness.*(crash|exit)", re.IGNORECASE)
_STORE_REFUSED = re.compile(r"\b(403|Forbidden|AccessDenied|Access Denied|PermissionDenied|"
                            r"does not have storage\.objects\.\w+ access|InvalidAccessKeyId|"
                            r"SignatureDoesNotMatch)\b")


def _chain(error: BaseException) -> Iterator[BaseException]:
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def _texts(error: BaseException) -> List[str]:
  return [str(e) for e in _chain(error)]


def step_of(error: BaseException) -> Optional[str]:
  """The Beam step the error happened in, where Beam named it."""
  for text in _texts(error):
    match = _STEP.search(text)
    if match:
      return match.group(1)
  return None


# HDF5 (h5py, Keras' weights files) puts the system error inside its own text.
_HDF5_FILE = re.compile(r"filename = '([^']+)'")
_HDF5_MESSAGE = re.compile(r"error message = '([^']+)'")


def _os_error(error: BaseException) -> Optional[Tuple[int, str, Optional[str]]]:
  """(errno, strerror, path) of the first OS error in the chain or its texts."""
  for e in _chain(error):
    if isinstance(e, OSError) and e.errno in _OS_ERRORS:
      strerror, path = e.strerror or os.strerror(e.errno), e.filename
      message, named = _HDF5_MESSAGE.search(strerror), _HDF5_FILE.search(strerror)
      if message:
        strerror = message.group(1)
      if named and not path:
        path = named.group(1)
      return e.errno, strerror, path
  for text in _texts(error):
    for match in _ERRNO_TEXT.finditer(text):
      number = int(match.group(1))
      if number in _OS_ERRORS:
        return number, match.group(2).strip(), match.group(3)
  return None


def describe(error: BaseException, flag: str = "--output", output: Optional[str] = None
             ) -> str:
  """One line: what went wrong, the path (else the `flag` `output` written to)
  or Beam step, and what to do."""
  step = step_of(error)
  at = f" at step {step}" if step else ""
  found = _os_error(error)
  if found:
    number, strerror, path = found
    what, todo = _OS_ERRORS[number]
    where = (f" writing {path}" if path else
             f" writing to {flag} {output}" if output else "")
    return f"{what} ({strerror}){where}{at}: {todo.format(flag=flag)}"
  texts = " ".join(_texts(error))
  if isinstance(error, MemoryError) or any(isinstance(e, MemoryError) for e in _chain(error)):
    return (f"out of memory{at}: use fewer worker processes (--direct_num_workers) or a "
            f"smaller --max_pixels, or a machine with more memory")
  if _WORKER_DIED.search(texts):
    return (f"a worker process ended in the middle of the run{at} (killed, e.g. for memory: "
            f"see dmesg): rerun; if memory is short, use fewer worker processes "
            f"(--direct_num_workers) or a smaller --max_pixels")
  if _STORE_REFUSED.search(texts):
    return (f"the store refused a request{at} ({_first_line(error)}): check the credentials "
            f"and their permissions on {flag}, then rerun")
  return f"{type(error).__name__}{at}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  text = _STEP.sub("", text).strip()
  line = text.splitlines()[0] if text else type(error).__name__
  return line[:300]


CAPTURED_TAIL_BYTES = 4 << 20


def write_log(directory: Optional[str], prog: str, error: BaseException,
              argv: Optional[List[str]] = None, captured: Optional[str] = None,
              formatted: Optional[str] = None) -> Optional[str]:
  """Writes the traceback (and the last 4 MB of `captured`, what the run wrote
  to stderr: Beam's and the workers' logs) to DIRECTORY/failure.log (a local
  directory), or to a file in the temp directory when that cannot be written;
  returns its path, or None when neither could be."""
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
  text = (f"{prog} failed at {stamp} on host {socket.gethostname()}, pid {os.getpid()}\n"
          f"command line: {' '.join(argv if argv is not None else sys.argv)}\n\n"
          + (formatted or "".join(traceback.format_exception(error))))
  full = text
  if captured:
    try:
      with open(captured, "rb") as f:
        f.seek(max(0, os.path.getsize(captured) - CAPTURED_TAIL_BYTES))
        tail = f.read().decode("utf-8", "replace")
      full += f"\n--- what the run wrote to stderr (Beam, its workers) ---\n{tail}"
    except OSError:
      pass
  # In the output directory, the traceback alone if the whole does not fit
  # (a full disk); else the whole in the temp directory.
  candidates = []
  if directory and "://" not in directory and os.path.isdir(directory):
    local = os.path.join(directory, LOG_NAME)
    candidates += [(local, full), (local, text)] if full != text else [(local, text)]
  candidates.append((os.path.join(tempfile.gettempdir(), f"{prog}-{os.getpid()}-{LOG_NAME}"),
                     full))
  for path, content in candidates:
    try:
      with open(path, "w") as f:
        f.write(content)
      return path
    except OSError:  # e.g. the full disk itself: leave no partial log filling it
      with contextlib.suppress(OSError):
        os.remove(path)
  return None


def release(error: BaseException, caught: List[str]) -> None:
  """Frees what the failure's frames hold (an h5py file half written on a full
  disk, a sink's open temp files, say) now: their space is freed, and the
  errors of their clean-up are appended to `caught`, not printed."""
  import gc
  for e in _chain(error):
    if e.__traceback__ is not None:
      traceback.clear_frames(e.__traceback__)
  previous = sys.unraisablehook

  def hook(unraisable):
    caught.append(f"\n--- while freeing the failed run's objects: "
                  f"{unraisable.err_msg or 'Exception ignored in'} {unraisable.object!r}\n"
                  + "".join(traceback.format_exception(unraisable.exc_value)))
  sys.unraisablehook = hook
  try:
    gc.collect()
  finally:
    sys.unraisablehook = previous


def clear_log(directory: str) -> None:
  """Removes an earlier failed run's failure.log from a local `directory`."""
  if directory and "://" not in directory:
    with contextlib.suppress(OSError):
      os.remove(os.path.join(directory, LOG_NAME))
