"""trainer.data: shard checks, corrupt and truncated shards, the tf.data round trip.

The manifest's own checks are tested in tests/pipeline/io/test_manifest.py.
"""
import dataclasses
import os
import struct

import numpy as np
import pytest
import tensorflow as tf

from pipeline.io import manifest as manifest_lib
from pipeline.io import schema
from tests import trainer_fixtures as fixtures
from trainer import data as data_lib

CHANNELS = fixtures.SHARD_DIR_CHANNELS  # of the shard_dir fixture (tests/conftest.py)


def _truncate(path, drop_bytes=100):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - drop_bytes)


def _flip_byte(path, offset):
  with open(path, "r+b") as f:
    f.seek(offset)
    byte = f.read(1)
    f.seek(offset)
    f.write(bytes([byte[0] ^ 0xFF]))


def _record_offsets(path):
  """Byte offset of each record's header in an uncompressed TFRecord file."""
  offsets, offset, size = [], 0, os.path.getsize(path)
  with open(path, "rb") as f:
    while offset < size:
      offsets.append(offset)
      f.seek(offset)
      length = struct.unpack("<Q", f.read(8))[0]
      offset += 12 + length + 4  # header (length, crc), payload, crc
  return offsets


def test_parse_examples_eagerly_and_in_dataset_map_give_what_was_written(shard_dir):
  directory, manifest, records = shard_dir
  loaded = manifest_lib.Manifest.load(directory)
  assert loaded == manifest
  paths = manifest.shard_paths(directory)
  compression = "GZIP" if manifest.compression == "GZIP" else ""

  def check(parsed):
    for i in range(len(parsed["labels"])):
      key = (parsed["image_id"][i].numpy().decode(), tuple(parsed["location"][i].numpy()))
      tile, labels, deltas = records.pop(key)
      # float16 tiles come back widened to float32, value for value.
      np.testing.assert_array_equal(parsed["tile"][i].numpy(), tile.astype(np.float32))
      np.testing.assert_array_equal(parsed["labels"][i].numpy(), labels)
      np.testing.assert_array_equal(parsed["deltas"][i].numpy(), deltas)

  raw = tf.data.TFRecordDataset(paths, compression_type=compression).batch(7)
  want = dict(records)
  for serialized in raw:  # eagerly
    check(schema.parse_examples(serialized, 9, CHANNELS, manifest.dtype))
  assert not records
  records.update(want)
  mapped = raw.map(lambda s: schema.parse_examples(s, 9, CHANNELS, manifest.dtype))
  for parsed in mapped:  # traced inside Dataset.map
    assert parsed["tile"].dtype == tf.float32 and parsed["labels"].dtype == tf.int32
    check(parsed)
  assert not records
  records.update(want)


def test_make_dataset_yields_every_record_once_in_the_model_structure(shard_dir):
  directory, manifest, records = shard_dir
  want = sorted((tile.astype(np.float32).tobytes(), labels.astype(np.float32).tobytes(),
                 np.concatenate([labels, deltas]).astype(np.float32).tobytes())
                for tile, labels, deltas in records.values())
  for shuffle in (True, False):
    got = []
    ds = data_lib.make_dataset(directory, manifest, batch_size=8, shuffle=shuffle, seed=3)
    for tiles, targets in ds:
      assert tiles.shape[1:] == (3, 3, CHANNELS) and tiles.dtype == tf.float32
      assert targets["scores"].shape[1:] == (9,) and targets["deltas"].shape[1:] == (45,)
      got += [(t.tobytes(), s.tobytes(), d.tobytes()) for t, s, d in
              zip(tiles.numpy(), targets["scores"].numpy(), targets["deltas"].numpy(),
                  strict=True)]
    assert sorted(got) == want  # 45 records: 5 full batches and one of 5


def test_repeat_and_drop_remainder_give_full_batches(shard_dir):
  directory, manifest, _ = shard_dir
  ds = data_lib.make_dataset(directory, manifest, 8, repeat=True, drop_remainder=True, seed=0)
  assert [int(t.shape[0]) for t, _ in ds.take(12)] == [8] * 12  # 96 tiles > 45 records


def test_record_bytes_estimate_is_close_for_the_real_channel_count():
  manifest = manifest_lib.Manifest.from_json(fixtures.make_manifest(channels=1536))
  tiles, labels, deltas = fixtures.make_records(1, 1536)
  size = len(schema.make_example(tiles[0], labels[0], deltas[0], "a/b", (3, 4)))
  # 9 * 1536 * 4 = 55296 bytes of tile: ~55 KB a record.
  assert abs(data_lib.record_bytes(manifest) - size) < 0.02 * size


@pytest.mark.parametrize("compression", ["NONE", "GZIP"])
def test_truncated_shard_is_named_or_skipped_with_a_count(tmp_path, compression):
  directory = str(tmp_path / "data")
  manifest, _ = fixtures.write_shards(directory, num_records=30, channels=CHANNELS,
                                      num_shards=3, compression=compression)
  victim = manifest.shard_paths(directory)[1]
  _truncate(victim, 100 if compression == "NONE" else 30)
  with pytest.raises(data_lib.CorruptShardError, match=os.path.basename(victim)):
    data_lib.check_shards(directory, manifest)
  with pytest.raises(data_lib.CorruptShardError, match=os.path.basename(victim)):
    data_lib.make_dataset(directory, manifest, 8)
  files, report = data_lib.check_shards(directory, manifest, skip_corrupt=True)
  assert victim not in files and list(report["skipped"]) == [victim]
  assert report["records"] == 20 and report["shards"] == 3  # 10 records a shard
  seen = sum(int(t.shape[0]) for t, _ in
             data_lib.make_dataset(directory, manifest, 8, skip_corrupt=True))
  assert seen == 20


def test_record_count_must_match_the_manifest(tmp_path):
  directory = str(tmp_path / "data")
  manifest, _ = fixtures.write_shards(directory, num_records=20, channels=CHANNELS)
  manifest = dataclasses.replace(manifest, counts=dict(manifest.counts, records=21))
  with pytest.raises(data_lib.CorruptShardError, match="counts.records is 21 but the shards "
                                                        "hold 20"):
    data_lib.check_shards(directory, manifest)


def test_corrupt_payload_is_found_by_the_full_check_and_skipped_on_request(tmp_path):
  directory = str(tmp_path / "data")
  manifest, _ = fixtures.write_shards(directory, num_records=30, channels=CHANNELS,
                                      num_shards=3)
  victim = manifest.shard_paths(directory)[2]
  _flip_byte(victim, _record_offsets(victim)[4] + 100)  # inside record 4's payload
  data_lib.check_shards(directory, manifest)  # the fast framing check passes
  with pytest.raises(tf.errors.DataLossError):
    for _ in data_lib.make_dataset(directory, manifest, 8):
      pass
  problems = data_lib.find_corrupt_shards(directory, manifest)
  assert list(problems) == [victim] and "record 4" in problems[victim]
  # Skipping: records 0-3 of the bad shard are kept, the rest of it dropped.
  seen = sum(int(t.shape[0]) for t, _ in
             data_lib.make_dataset(directory, manifest, 8, skip_corrupt=True))
  assert seen == 24


def test_reads_the_shards_of_the_real_pipeline(tmp_path):
  """rpn-preprocess (tiny backbone, float16, GZIP) -> the trainer's input, record for record."""
  from tests import dataset_fixtures
  from tests import pipeline_helpers as helpers
  root, output = str(tmp_path / "ilsvrc"), str(tmp_path / "shards")
  dataset_fixtures.write_dataset(root, num_images=3, seed=5)
  helpers.preprocess(root, output, num_shards=2,
                     extra=["--tile_dtype", "float16", "--compression", "GZIP"])
  manifest = manifest_lib.Manifest.load(output)
  channels = manifest.feature_channels
  want = sorted(
      (r["tile"].astype(np.float32).tobytes(), np.asarray(r["labels"], np.float32).tobytes())
      for r in (helpers.decode_record(s, channels, manifest.dtype)
                for s in helpers.read_records(output)))
  got = []
  for tiles, targets in data_lib.make_dataset(output, manifest, 16, seed=0):
    got += [(t.tobytes(), s.tobytes())
            for t, s in zip(tiles.numpy(), targets["scores"].numpy(), strict=True)]
  assert len(got) == manifest.counts["records"] > 0 and sorted(got) == want


# ---------------------------------------------------------------------------
# The default check: sizes from the manifest, no read


def _rchar():
  """Bytes this process has read through read() system calls, any file, any thread."""
  with open("/proc/self/io") as f:
    return int(dict(line.split(": ") for line in f.read().splitlines())["rchar"])


class _CountingGFile(tf.io.gfile.GFile):
  """tf.io.gfile.GFile that counts the files opened and the bytes read() returns."""
  opened, returned = [], 0

  def __init__(self, name, mode="r"):
    super().__init__(name, mode)
    _CountingGFile.opened.append(name)

  def read(self, n=-1):
    data = super().read(n)
    _CountingGFile.returned += len(data)
    return data


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux's /proc/self/io")
def test_default_check_reads_no_shard_bytes_through_gfile(tmp_path, monkeypatch):
  """Through tf.io.gfile (file:// paths take the remote-store path, as gs:// does)
  the default check reads under 1 % of the shard bytes; the framing walk of an
  older manifest reads most of them (each seek refills GFile's 512 KB buffer).

  Bytes are counted where they are read, by the process's read() system calls
  (/proc/self/io rchar): GFile's own buffer refills never reach Python. Beam's
  FileSystems (pipeline.io.storage) has no file:// scheme, so storage.join is
  given one here; the shards are read only through tf.io.gfile.
  """
  from pipeline.io import storage
  directory = str(tmp_path / "data")
  manifest, _ = fixtures.write_shards(directory, num_records=60, channels=256, num_shards=2)
  join = storage.join
  monkeypatch.setattr(storage, "join", lambda d, *names: "/".join((d, *names))
                      if d.startswith("file://") else join(d, *names))
  monkeypatch.setattr(tf.io.gfile, "GFile", _CountingGFile)
  monkeypatch.setattr(_CountingGFile, "opened", [])
  data_dir = "file://" + directory
  paths = manifest.shard_paths(data_dir)
  shard_bytes = sum(s.bytes for s in manifest.shards)
  assert all(p.startswith("file:///") for p in paths) and shard_bytes > 500_000

  before = _rchar()
  files, report = data_lib.check_shards(data_dir, manifest)
  read = _rchar() - before
  assert read < 0.01 * shard_bytes, read
  assert _CountingGFile.opened == [] and _CountingGFile.returned == 0
  assert files == paths and report["records"] == 60 and report["check"] == "sizes"
  assert report["records_per_shard"] == {paths[0]: 30, paths[1]: 30}

  # The same shards under a manifest without sizes: walked through GFile.
  old = dataclasses.replace(manifest, shards=None)
  before = _rchar()
  files, report = data_lib.check_shards(data_dir, old)
  read = _rchar() - before
  assert files == paths and report["records"] == 60 and report["check"] == "framing"
  assert sorted(_CountingGFile.opened) == paths
  assert read > 0.5 * shard_bytes, read


def _append(path, extra=b"\0" * 50):
  with open(path, "ab") as f:
    f.write(extra)


@pytest.mark.parametrize("compression", ["NONE", "GZIP"])
def test_default_check_names_truncated_and_grown_shards_by_size(tmp_path, compression):
  directory = str(tmp_path / "data")
  manifest, _ = fixtures.write_shards(directory, num_records=30, channels=CHANNELS,
                                      num_shards=3, compression=compression)
  paths = manifest.shard_paths(directory)
  sizes = [s.bytes for s in manifest.shards]
  _truncate(paths[0], 30)
  _append(paths[1])
  with pytest.raises(data_lib.CorruptShardError,
                     match=f"{paths[0]}: size {sizes[0] - 30} bytes, the manifest says "
                           rf"{sizes[0]}: truncated or overwritten \(and 1 more bad shards\)"):
    data_lib.check_shards(directory, manifest)
  files, report = data_lib.check_shards(directory, manifest, skip_corrupt=True)
  assert files == [paths[2]] and report["records"] == 10 and report["shards"] == 3
  assert report["records_per_shard"] == {paths[2]: 10}
  assert report["skipped"] == {
      paths[0]: f"size {sizes[0] - 30} bytes, the manifest says {sizes[0]}: "
                f"truncated or overwritten",
      paths[1]: f"size {sizes[1] + 50} bytes, the manifest says {sizes[1]}: "
                f"appended to or overwritten"}
  seen = sum(int(t.shape[0]) for t, _ in
             data_lib.make_dataset(directory, manifest, 4, skip_corrupt=True))
  assert seen == 10


def test_verify_names_a_corrupt_payload_the_default_check_misses(tmp_path):
  directory = str(tmp_path / "data")
  manifest, _ = fixtures.write_shards(directory, num_records=30, channels=CHANNELS,
                                      num_shards=3)
  paths = manifest.shard_paths(directory)
  offsets = _record_offsets(paths[2])
  _flip_byte(paths[2], (offsets[4] + offsets[5]) // 2)  # mid-payload of record 4
  files, report = data_lib.check_shards(directory, manifest)  # sizes agree
  assert files == paths and report["records"] == 30
  with pytest.raises(data_lib.CorruptShardError,
                     match=rf"{paths[2]}: corrupt record 4 \(payload checksum mismatch\)"):
    data_lib.check_shards(directory, manifest, verify=True)
  files, report = data_lib.check_shards(directory, manifest, skip_corrupt=True, verify=True)
  assert files == paths[:2] and report["records"] == 20 and report["check"] == "full"
  assert report["records_per_shard"] == {paths[0]: 10, paths[1]: 10}
  assert list(report["skipped"]) == [paths[2]]


def _with_shard_records(manifest, index, records, total=None):
  """The manifest with shard `index` said to hold `records` (and counts.records `total`)."""
  shards = list(manifest.shards)
  shards[index] = dataclasses.replace(shards[index], records=records)
  counts = manifest.counts if total is None else dict(manifest.counts, records=total)
  return dataclasses.replace(manifest, shards=tuple(shards), counts=counts)


def test_verify_compares_the_records_with_the_manifest(tmp_path):
  directory = str(tmp_path / "data")
  manifest, _ = fixtures.write_shards(directory, num_records=30, channels=CHANNELS,
                                      num_shards=3)
  paths = manifest.shard_paths(directory)
  # counts that add up, but not to the files
  manifest = _with_shard_records(manifest, 0, 11, total=31)
  assert data_lib.check_shards(directory, manifest)[1]["records"] == 31  # sizes only
  with pytest.raises(data_lib.CorruptShardError,
                     match=f"{paths[0]}: holds 10 records, the manifest says 11"):
    data_lib.check_shards(directory, manifest, verify=True)


def test_manifest_counts_must_add_up_without_reading(tmp_path):
  directory = str(tmp_path / "data")
  manifest, _ = fixtures.write_shards(directory, num_records=20, channels=CHANNELS)
  manifest = _with_shard_records(manifest, 1, 9)
  with pytest.raises(data_lib.CorruptShardError, match="counts.records is 20 but the shards "
                                                        "hold 19"):
    data_lib.check_shards(directory, manifest)


@pytest.mark.parametrize("compression", ["NONE", "GZIP"])
def test_manifest_without_shard_sizes_has_its_shards_walked(tmp_path, compression, caplog):
  directory = str(tmp_path / "data")
  manifest, _ = fixtures.write_shards(directory, num_records=30, channels=CHANNELS,
                                      num_shards=3, compression=compression, shard_info=False)
  assert manifest_lib.Manifest.load(directory).shards is None
  paths = manifest.shard_paths(directory)
  files, report = data_lib.check_shards(directory, manifest)
  assert files == paths and report["records"] == 30 and report["check"] == "framing"
  assert report["records_per_shard"] == dict.fromkeys(paths, 10)
  warnings = [r.getMessage() for r in caplog.records if "no shard sizes" in r.getMessage()]
  assert len(warnings) == 1 and "shards are scanned" in warnings[0]
  # The framing walk still names a truncated shard, and make_dataset still checks.
  _truncate(paths[1], 100 if compression == "NONE" else 30)
  with pytest.raises(data_lib.CorruptShardError, match=paths[1]):
    data_lib.check_shards(directory, manifest)
  seen = sum(int(t.shape[0]) for t, _ in
             data_lib.make_dataset(directory, manifest, 8, skip_corrupt=True))
  assert seen == 20
