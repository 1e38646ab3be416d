"""tf.data input: shards of rpn-preprocess -> batches for the RPN tile model.

Shape shorthand: B batch, C feature channels, A anchors per point.
Each element: (tiles float32 [B, 3, 3, C],
               {"scores": labels float32 [B, A] (1, 0, -1 ignored),
                "deltas": labels and deltas packed float32 [B, A + 4A]}).
The losses (losses.py) unpack the labels to mask ignored anchors.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from pipeline import schema

DEFAULT_SHUFFLE_BUFFER_MB = 256


def record_bytes(manifest: Dict) -> int:
  """Approximate size of one record: the tile dominates."""
  itemsize = 2 if manifest["dtype"] == "float16" else 4
  return 9 * int(manifest["feature_channels"]) * itemsize + 400


def to_model_inputs(parsed: Dict):
  """Parsed records -> (tiles, targets) in the structure fit() needs."""
  import tensorflow as tf
  labels = tf.cast(parsed[schema.LABELS_KEY], tf.float32)
  packed = tf.concat([labels, parsed[schema.DELTAS_KEY]], axis=-1)
  return parsed[schema.TILE_KEY], {"scores": labels, "deltas": packed}


def make_dataset(files: List[str], manifest: Dict, batch_size: int, shuffle: bool = True,
                 repeat: bool = False, shuffle_buffer_mb: int = DEFAULT_SHUFFLE_BUFFER_MB,
                 seed: Optional[int] = None, drop_remainder: bool = False):
  """Streams `files` (checked shard paths) in parallel, shuffled, batched, parsed."""
  import tensorflow as tf
  autotune = tf.data.AUTOTUNE
  compression = "GZIP" if manifest["compression"] == "GZIP" else ""
  num_anchors = int(manifest["anchor"]["num_anchors"])
  channels = int(manifest["feature_channels"])
  dtype = manifest["dtype"]
  ds = tf.data.Dataset.from_tensor_slices(files)
  if shuffle:
    ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  ds = ds.interleave(
      lambda f: tf.data.TFRecordDataset(f, compression_type=compression,
                                        buffer_size=8 << 20),
      cycle_length=min(len(files), 16), block_length=1, num_parallel_calls=autotune,
      deterministic=not shuffle)
  if shuffle:
    buffer = max(4 * batch_size, (shuffle_buffer_mb << 20) // record_bytes(manifest))
    ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=autotune,
                deterministic=not shuffle)
  ds = ds.map(lambda s: to_model_inputs(schema.parse_examples(s, num_anchors, channels, dtype)),
              num_parallel_calls=autotune, deterministic=not shuffle)
  return ds.prefetch(autotune)
