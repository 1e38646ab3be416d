"""Small files over local and remote paths (gs://, s3://, hdfs://, local).

Every path goes through Beam's FileSystems, so the same call works on a
laptop and on Dataflow. Beam is imported inside each function on purpose:
the trainer and the numeric modules import this one, and importing Beam
costs about a second that a plain `import pipeline.io.manifest` should not pay.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator, List


def join(directory: str, *names: str) -> str:
  from apache_beam.io.filesystems import FileSystems  # lazy: see the module doc
  return FileSystems.join(directory, *names)


def exists(path: str) -> bool:
  from apache_beam.io.filesystems import FileSystems  # lazy: see the module doc
  return FileSystems.exists(path)


def is_local(path: str) -> bool:
  return "://" not in path


def makedirs(directory: str) -> None:
  """Creates a local directory; a no-op for object stores, which have none."""
  if is_local(directory):
    os.makedirs(directory, exist_ok=True)


def glob(pattern: str) -> List[str]:
  """Sorted paths matching `pattern` (empty when nothing matches)."""
  from apache_beam.io.filesystems import FileSystems  # lazy: see the module doc
  return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def glob_some(pattern: str, limit: int = 1) -> List[str]:
  """Up to `limit` paths matching `pattern`: cheap on object stores (the listing
  stops there)."""
  from apache_beam.io.filesystems import FileSystems  # lazy: see the module doc
  try:
    return [m.path for m in FileSystems.match([pattern], limits=[limit])[0].metadata_list]
  except Exception:  # BeamIOError: nothing there to list
    return []


def read_bytes(path: str) -> bytes:
  from apache_beam.io.filesystems import FileSystems  # lazy: see the module doc
  with FileSystems.open(path) as f:
    return f.read()


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


def read_json(path: str) -> Any:
  return json.loads(read_text(path))


def read_jsonl(path: str) -> List[Any]:
  """One JSON value per non-blank line."""
  return [json.loads(line) for line in read_text(path).splitlines() if line.strip()]


@contextlib.contextmanager
def atomic_writer(path: str) -> Iterator[Any]:
  """A binary file that appears at `path` only when written whole: written as
  path + ".tmp", renamed when the block ends (atomic on local disks)."""
  from apache_beam.io.filesystems import FileSystems  # lazy: see the module doc
  if is_local(path):
    makedirs(os.path.dirname(path) or ".")
  temp = path + ".tmp"
  with FileSystems.create(temp) as f:
    yield f
  FileSystems.rename([temp], [path])


def write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` through a temp file and a rename (atomic_writer)."""
  with atomic_writer(path) as f:
    f.write(data)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_json(path: str, value: Any) -> None:
  """Indented, key-sorted JSON with a final newline."""
  write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")
