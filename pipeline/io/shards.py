"""TFRecord framing without TensorFlow: count and check the records of a shard.

A TFRecord file is a run of records, each (little endian)
  uint64 length | uint32 masked crc32c of the length | payload | uint32 masked crc32c of the payload

rpn-preprocess counts each shard's records once, right after the shards are
written (describe_shard, on the workers, through Beam's FileSystems), so that
the manifest lists every shard's bytes and records (its "shards" key) and
rpn-train can check the shards by their sizes alone. The trainer walks the
framing with the same code (trainer.data) where it must look inside a shard.

No TensorFlow here: the workers of some rpn commands never import it.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from typing import Dict, Optional, Tuple

from google_crc32c import value as crc32c

from pipeline.io import storage

HEADER_BYTES = 12  # uint64 length, uint32 masked crc32c of the length
FOOTER_BYTES = 4  # uint32 masked crc32c of the payload
# Sequential reads come in chunks this big: one request a chunk on an object
# store (Beam's own GCS read buffer is as big).
CHUNK_BYTES = 16 << 20


class ShardError(IOError):
  """A shard that does not read back as TFRecord framing; the message names it."""


def masked_crc(data: bytes) -> int:
  """TFRecord's masked crc32c of `data`."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class ChunkedReader:
  """Sequential reads (and skips) served from `chunk_bytes` reads of a file object."""

  def __init__(self, f, chunk_bytes: int = CHUNK_BYTES):
    self._f = f
    self._chunk_bytes = chunk_bytes
    self._buffer = b""
    self._pos = 0

  def _available(self) -> int:
    """Bytes left in the buffer, refilled when empty; 0 at the end of the file."""
    if self._pos >= len(self._buffer):
      self._buffer, self._pos = self._f.read(self._chunk_bytes), 0
    return len(self._buffer) - self._pos

  def read(self, n: int) -> bytes:
    """The next `n` bytes (fewer at the end of the file)."""
    parts = []
    while n > 0:
      step = min(n, self._available())
      if not step:
        break
      parts.append(self._buffer[self._pos:self._pos + step])
      self._pos += step
      n -= step
    return b"".join(parts)

  def skip(self, n: int) -> int:
    """Moves `n` bytes on; returns how many there were (fewer at the end of the file)."""
    skipped = 0
    while n > 0:
      step = min(n, self._available())
      if not step:
        break
      self._pos += step
      n -= step
      skipped += step
    return skipped


def walk(f, size: Optional[int] = None, verify_payload: bool = False) -> Tuple[int, str]:
  """(records, problem) of an uncompressed TFRecord stream; problem is "" for a sound one.

  With `size` (the file's length), `f` is a seekable file walked by seeking
  from header to header: about 12 bytes read a record, each header's length
  checksum checked and each payload's end checked against the size. Without,
  `f` is a ChunkedReader read through, payloads skipped, or read and their
  checksums checked with verify_payload.
  """
  records, offset = 0, 0
  try:
    while True:
      if size is not None:
        f.seek(offset)
      header = f.read(HEADER_BYTES)
      if not header:
        return records, ""
      if len(header) < HEADER_BYTES:
        return records, f"truncated header after record {records}"
      length, length_crc = struct.unpack("<QI", header)
      if masked_crc(header[:8]) != length_crc:
        return records, f"corrupt header of record {records} (at byte {offset})"
      body = length + FOOTER_BYTES
      end = offset + HEADER_BYTES + body
      if size is not None:
        if end > size:
          return records, f"truncated record {records} (ends at byte {end} of {size})"
      elif verify_payload:
        payload = f.read(body)
        if len(payload) < body:
          return records, f"truncated record {records} ({len(payload)} of {body} bytes)"
        if masked_crc(payload[:-FOOTER_BYTES]) != struct.unpack("<I", payload[-FOOTER_BYTES:])[0]:
          return records, f"corrupt record {records} (payload checksum mismatch)"
      else:
        got = f.skip(body)
        if got < body:
          return records, f"truncated record {records} ({got} of {body} bytes)"
      records, offset = records + 1, end
  except (OSError, EOFError, zlib.error) as e:  # gzip stream errors
    return records, f"unreadable after record {records} ({type(e).__name__}: {e})"


def walk_file(raw, compression: str, size: Optional[int] = None,
              verify_payload: bool = False) -> Tuple[int, str]:
  """walk() over an open shard file `raw` (its bytes as stored).

  A GZIP shard is decompressed and read through; an uncompressed one is
  walked header to header when `size` is given (and not verify_payload),
  else read through in CHUNK_BYTES reads.
  """
  if compression == "GZIP":
    return walk(ChunkedReader(gzip.GzipFile(fileobj=ChunkedReader(raw), mode="rb")),
                verify_payload=verify_payload)
  if size is not None and not verify_payload:
    return walk(raw, size)
  return walk(ChunkedReader(raw), verify_payload=verify_payload)


def describe_shard(path: str, compression: str) -> Dict[str, object]:
  """{"file": name, "bytes": size, "records": count} of a written shard (the
  manifest's "shards" entry), through Beam's FileSystems.

  Counts by the framing: a local file is walked header to header; a remote
  one is read through once in big chunks (a seek there costs a read-buffer
  refill), which is cheap beside writing it, and done once. Raises ShardError
  when the file does not read back.
  """
  from apache_beam.io.filesystem import CompressionTypes  # lazy: Beam costs a second
  from apache_beam.io.filesystems import FileSystems
  size = FileSystems.get_filesystem(path).size(path)
  local = storage.is_local(path)
  # UNCOMPRESSED: Beam would otherwise decompress a .gz by its name.
  with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
    records, problem = walk_file(raw, compression, size if local else None)
  if problem:
    raise ShardError(f"{path}: the shard just written does not read back: {problem}")
  return {"file": os.path.basename(path), "bytes": int(size), "records": records}
