"""pipeline/io/shards.py: TFRecord framing walked without TensorFlow (written here
with TensorFlow's writer, the reference)."""
import os

import pytest

from pipeline.io import shards


def _write(path, payloads, gzip=False):
  import tensorflow as tf
  options = tf.io.TFRecordOptions(compression_type="GZIP" if gzip else "")
  with tf.io.TFRecordWriter(path, options) as writer:
    for payload in payloads:
      writer.write(payload)


PAYLOADS = [bytes([i]) * (100 + 37 * i) for i in range(20)]


def test_chunked_reader_reads_and_skips_across_chunks(tmp_path):
  path = tmp_path / "f"
  path.write_bytes(bytes(range(256)) * 4)
  with open(path, "rb") as f:
    reader = shards.ChunkedReader(f, chunk_bytes=7)
    assert reader.read(10) == bytes(range(10))
    assert reader.skip(300) == 300
    assert reader.read(3) == bytes([54, 55, 56])
    assert reader.skip(10_000) == 1024 - 313
    assert reader.read(5) == b"" and reader.skip(5) == 0


@pytest.mark.parametrize("local", [True, False], ids=["seeks", "reads_through"])
@pytest.mark.parametrize("compression", ["NONE", "GZIP"])
def test_describe_shard_counts_the_records(tmp_path, monkeypatch, compression, local):
  path = str(tmp_path / "tiles-00000-of-00001.tfrecord")
  _write(path, PAYLOADS, gzip=compression == "GZIP")
  # A remote store's shard is read through in chunks, never seeked: forced here.
  monkeypatch.setattr(shards.storage, "is_local", lambda _: local)
  assert shards.describe_shard(path, compression) == {
      "file": os.path.basename(path), "bytes": os.path.getsize(path), "records": 20}


def test_walk_names_what_is_wrong(tmp_path):
  path = str(tmp_path / "t.tfrecord")
  _write(path, PAYLOADS)
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    data = f.read()

  def walk(content, verify_payload=False):
    (tmp_path / "w").write_bytes(content)
    with open(tmp_path / "w", "rb") as f:
      seeking = shards.walk_file(f, "NONE", len(content))
    with open(tmp_path / "w", "rb") as f:
      reading = shards.walk_file(f, "NONE", None, verify_payload)
    return seeking, reading

  assert walk(data) == ((20, ""), (20, ""))
  for records, problem in walk(data[:size - 10]):  # seeking, reading through
    assert records == 19 and problem.startswith("truncated record 19 ("), problem
  assert walk(data + b"\0" * 5)[0] == (20, "truncated header after record 20")
  flipped = bytearray(data)
  flipped[3] ^= 0xFF  # record 0's length
  assert walk(bytes(flipped))[0] == (0, "corrupt header of record 0 (at byte 0)")
  flipped = bytearray(data)
  flipped[12 + 50] ^= 0xFF  # record 0's payload: only the payload checksum sees it
  assert walk(bytes(flipped))[0] == (20, "")
  assert walk(bytes(flipped), verify_payload=True)[1] == (
      0, "corrupt record 0 (payload checksum mismatch)")


def test_describe_shard_refuses_a_shard_that_does_not_read_back(tmp_path):
  path = str(tmp_path / "tiles-00000-of-00001.tfrecord")
  _write(path, PAYLOADS)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 10)
  with pytest.raises(shards.ShardError, match=f"{path}: the shard just written does not "
                                               "read back: truncated record 19"):
    shards.describe_shard(path, "NONE")
