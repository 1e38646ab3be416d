"""tf.data input: the shards of rpn-preprocess -> batches for the RPN tile model.

Shape shorthand: B batch, C feature channels, A anchors per point (9).
With feature levels of different channel counts C is their most: a
narrower level's tiles are padded with zero channels (schema.parse_examples).
Each element is (tiles, targets) as the tile model's fit() takes them:
  tiles               float32 [B, 3, 3, C]   (float16 tiles are widened)
  targets["scores"]   float32 [B, A]         labels 1, 0, -1 (ignored)
  targets["deltas"]   float32 [B, A + 4A]    labels, then (dx, dy, dw, dh) per anchor
The labels ride along with the box targets so that the box loss (losses.py)
can pick the positive anchors.

Corrupt shards: check_shards compares each shard's size with the one the
manifest records (a stat a shard, no read) and names a truncated or
overwritten file; --verify_shards walks every record and checks its payload
checksum instead. Shards of a manifest without sizes (older rpn-preprocess)
have their framing walked (headers only for uncompressed shards). A payload
corrupted inside a sound frame surfaces as tf's DataLossError during
training, which rpn-train turns into an error naming the file
(find_corrupt_shards). With skip_corrupt the bad shards are left out (and
reported), and a payload error skips the rest of that file with a logged
warning instead of stopping.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

import tensorflow as tf

from pipeline.io import manifest as manifest_lib
from pipeline.io import schema
from pipeline.io import shards as shards_lib
from trainer.settings import DEFAULT_SHUFFLE_BUFFER_MB

_MAX_INTERLEAVE = 16
_LOGGER = logging.getLogger(__name__)


class CorruptShardError(manifest_lib.ManifestError):
  """A shard that cannot be read to its end; the message names it."""


def record_bytes(manifest: manifest_lib.Manifest) -> int:
  """Approximate bytes of one serialized record (the tile dominates)."""
  itemsize = 2 if manifest.dtype == "float16" else 4
  num_anchors = manifest.num_anchors
  tile_values = schema.TILE_SIZE ** 2 * int(manifest.feature_channels)
  return tile_values * itemsize + 40 * num_anchors + 100


def _open(path: str):
  return open(path, "rb") if "://" not in path else tf.io.gfile.GFile(path, "rb")


def _size(path: str) -> Optional[int]:
  """The file's length in bytes; None when there is no such file."""
  try:
    return tf.io.gfile.stat(path).length
  except tf.errors.NotFoundError:
    return None


def scan_shard(path: str, compression: str, verify_payload: bool = False) -> Tuple[int, str]:
  """(records, problem) of one TFRecord file; problem is "" for a sound file.

  Walks the framing (pipeline.io.shards.walk): each header's length checksum, and
  that each payload is all there. An uncompressed shard is walked by seeking
  from header to header (reads ~12 bytes a record locally; through tf.io.gfile
  each seek refills a 512 KB buffer, which reads nearly the whole file) unless
  verify_payload, which also checks each payload's checksum (reads
  everything); a GZIP shard is decompressed whole.
  """
  size = None
  if not (verify_payload or compression == "GZIP"):
    size = _size(path)
    if size is None:
      return 0, "missing"
  try:
    with _open(path) as raw:
      return shards_lib.walk_file(raw, compression, size, verify_payload)
  except (tf.errors.NotFoundError, FileNotFoundError):  # GFile opens at its first read
    return 0, "missing"


def _size_problem(path: str, expected: int) -> str:
  """What is wrong with the file's size; empty when it is `expected` bytes long."""
  size = _size(path)
  if size is None:
    return "missing"
  if size != expected:
    return (f"size {size} bytes, the manifest says {expected}: "
            f"{'truncated' if size < expected else 'appended to'} or overwritten")
  return ""


def _check_shard(path: str, compression: str, listed: Optional[manifest_lib.ShardInfo],
                 verify: bool) -> Tuple[int, str]:
  """(records, problem) of one shard; `listed` is its manifest "shards" entry or None."""
  if listed is not None and not verify:
    return listed.records, _size_problem(path, listed.bytes)
  records, problem = scan_shard(path, compression, verify_payload=verify)
  if listed is not None and not problem:
    if records != listed.records:
      problem = f"holds {records} records, the manifest says {listed.records}"
    else:
      problem = _size_problem(path, listed.bytes)
  return records, problem


def check_shards(data_dir: str, manifest: manifest_lib.Manifest, skip_corrupt: bool = False,
                 verify: bool = False, log: bool = True) -> Tuple[List[str], Dict]:
  """Checks every shard of a loaded manifest; returns (usable paths, report).

  By default each shard's size is compared with the manifest's "shards" entry
  (a stat, no read) and its records are taken from there; a manifest without
  that key (older rpn-preprocess) has each shard's framing walked instead.
  `verify` walks every record and checks its payload checksum (reads every
  byte), and compares with the manifest's counts where it has them.

  A bad shard raises CorruptShardError naming it, unless skip_corrupt: then it
  is left out, logged (unless not `log`), and listed in report["skipped"]
  ({path: problem}).
  Sound shards must hold the manifest's counts["records"] in all. The report
  also holds "shards" (how many are listed), "records" (in the usable ones),
  "records_per_shard" ({path: records} of the usable ones) and "check" (what
  was done: "sizes", "framing" or "full").
  """
  paths = manifest.shard_paths(data_dir)
  listed = manifest.shards
  if listed is None and not verify:
    _LOGGER.warning("%s has no shard sizes (an older rpn-preprocess wrote it), so its %d "
                    "shards are scanned: their record framing is walked",
                    manifest_lib.path_in(data_dir), len(paths))
  entries = listed if listed is not None else [None] * len(paths)
  compression = manifest.compression
  with ThreadPoolExecutor(max(1, min(16, len(paths)))) as pool:
    results = list(pool.map(lambda a: _check_shard(a[0], compression, a[1], verify),
                            zip(paths, entries, strict=True)))
  bad = {p: problem for p, (_, problem) in zip(paths, results, strict=True) if problem}
  if bad and not skip_corrupt:
    path, problem = next(iter(bad.items()))
    raise CorruptShardError(f"{path}: {problem}" + (
        f" (and {len(bad) - 1} more bad shards)" if len(bad) > 1 else "") +
        "; rerun rpn-preprocess, or pass --skip_corrupt_shards to train without it")
  per_shard = {p: n for p, (n, _) in zip(paths, results, strict=True) if p not in bad}
  records = sum(per_shard.values())
  expected = manifest.counts.get("records")
  if not bad and expected is not None and records != expected:
    raise CorruptShardError(f"{manifest_lib.path_in(data_dir)}: counts.records is "
                            f"{expected} but the shards hold {records} records")
  if bad and log:
    _LOGGER.warning("%s: leaving out %d of %d shards: %s", data_dir, len(bad), len(paths), bad)
  report = {"shards": len(paths), "records": records, "skipped": bad,
            "records_per_shard": per_shard,
            "check": "full" if verify else "sizes" if listed is not None else "framing"}
  return [p for p in paths if p not in bad], report


def find_corrupt_shards(data_dir: str, manifest: manifest_lib.Manifest) -> Dict[str, str]:
  """{path: problem} of every shard whose framing or payload checksums fail."""
  return check_shards(data_dir, manifest, skip_corrupt=True, verify=True,
                      log=False)[1]["skipped"]


def to_model_inputs(parsed: Dict, levels: bool = False):
  """Parsed records (schema.parse_examples) -> (tiles, targets) for fit(); with
  levels (data of several feature levels), ({"tile", "level"}, targets)."""
  labels = tf.cast(parsed[schema.LABELS_KEY], tf.float32)
  packed = tf.concat([labels, parsed[schema.DELTAS_KEY]], axis=-1)
  inputs = parsed[schema.TILE_KEY]
  if levels:
    inputs = {"tile": inputs, "level": parsed[schema.LEVEL_KEY]}
  return inputs, {"scores": labels, "deltas": packed}


def make_dataset(data_dir: str, manifest: manifest_lib.Manifest, batch_size: int,
                 shuffle: bool = True, repeat: bool = False,
                 shuffle_buffer_mb: int = DEFAULT_SHUFFLE_BUFFER_MB,
                 seed: Optional[int] = None, skip_corrupt: bool = False,
                 files: Optional[List[str]] = None, num_records: Optional[int] = None,
                 drop_remainder: bool = False):
  """The shards of `data_dir` read in parallel, shuffled, batched, then parsed.

  `manifest` is Manifest.load(data_dir). `files` (paths already through
  check_shards, holding num_records records) skips the shard check; by
  default every shard is checked here. The shuffle buffer holds about
  shuffle_buffer_mb megabytes of records, and at least 4 batches. Unless
  skip_corrupt or repeat, the dataset knows its length in batches (Keras
  shows it in the first epoch's progress bar).
  """
  if files is None:
    files, report = check_shards(data_dir, manifest, skip_corrupt)
    num_records = report["records"]
  if not files:
    raise CorruptShardError(f"{data_dir}: no readable shard")
  autotune = tf.data.AUTOTUNE
  compression = manifest.tfrecord_compression
  num_anchors = manifest.num_anchors
  channels = int(manifest.feature_channels)
  dtype = manifest.dtype

  def read(path):
    records = tf.data.TFRecordDataset(path, compression_type=compression,
                                      buffer_size=8 << 20)
    # On a DataLossError tf.data moves on to the next file; ignoring it thus
    # drops the rest of the bad file only (logged by TensorFlow).
    return records.ignore_errors(log_warning=True) if skip_corrupt else records

  ds = tf.data.Dataset.from_tensor_slices(files)
  if shuffle:
    ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  ds = ds.interleave(read, cycle_length=min(len(files), _MAX_INTERLEAVE), block_length=1,
                     num_parallel_calls=autotune, deterministic=not shuffle)
  if shuffle:
    buffer = max(4 * batch_size, (shuffle_buffer_mb << 20) // record_bytes(manifest))
    ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=autotune,
                deterministic=not shuffle)
  levels = manifest.num_levels > 1
  level_channels = manifest.level_channels
  ds = ds.map(lambda s: to_model_inputs(schema.parse_examples(s, num_anchors, channels, dtype,
                                                              level_channels), levels),
              num_parallel_calls=autotune, deterministic=not shuffle)
  if num_records is not None and not (skip_corrupt or repeat):
    batches = num_records // batch_size if drop_remainder else -(-num_records // batch_size)
    ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
  return ds.prefetch(autotune)
