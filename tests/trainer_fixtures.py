"""Small shard directories like rpn-preprocess writes, made without the pipeline.

Shape shorthand: N records, C feature channels (small: 8 or 16), A anchors (9).
  tiles   [N, 3, 3, C]  in the manifest's dtype
  labels  [N, A]        1, 0, -1
  deltas  [N, 4A]       exact for labels 1, 0 elsewhere

`learnable=True` makes labels and deltas a function of the tile's content, so a
short training run has something to learn.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

import numpy as np

from pipeline import config
from pipeline import schema

NUM_ANCHORS = 9


def make_manifest(channels: int = 8, num_shards: int = 2, dtype: str = "float32",
                  compression: str = "NONE", records: int = 0, **changes) -> Dict:
  """A manifest.json dict like rpn-preprocess writes (weights "none")."""
  suffix = ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"
  anchors = config.AnchorConfig()
  manifest = {
      "version": config.MANIFEST_VERSION, "backbone": "InceptionResNetV2", "weights": "none",
      "weights_seed": 0, "feature_channels": channels, "tile_size": schema.TILE_SIZE,
      "dtype": dtype, "compression": compression,
      "anchor": dict(config.to_dict(anchors), num_anchors=anchors.num_anchors),
      "targets": config.to_dict(config.TargetConfig()), "stride_mode": "ratio",
      "resize": {"min_side": None, "max_side": None}, "min_input_side": 75,
      "num_shards": num_shards,
      "shard_files": [f"{config.SHARD_PREFIX}-{i:05d}-of-{num_shards:05d}{suffix}"
                      for i in range(num_shards)],
      "counts": {"images_found": 1, "images_ok": 1, "images_failed": 0, "images_skipped": 0,
                 "boxes_dropped": 0, "records": records, "fg_anchors": 0, "bg_anchors": 0},
  }
  manifest.update(changes)
  return manifest


def make_records(num_records: int, channels: int, seed: int = 0, learnable: bool = False):
  """(tiles float32 [N, 3, 3, C], labels int64 [N, A], deltas float32 [N, 4A])."""
  rng = np.random.default_rng(seed)
  tiles = rng.normal(size=(num_records, 3, 3, channels)).astype(np.float32)
  anchor = np.arange(NUM_ANCHORS)
  if learnable:
    # Anchor a's evidence: centre channel a % C plus half the corner channel (a+1) % C.
    evidence = tiles[:, 1, 1, anchor % channels] + 0.5 * tiles[:, 0, 0, (anchor + 1) % channels]
    labels = np.where(evidence > 0.8, 1, np.where(evidence < 0.0, 0, -1))
    centre = tiles[:, 1, 1, :]
    deltas = np.stack([0.2 * centre[:, (anchor + k + 2) % channels] for k in range(4)], axis=-1)
  else:
    labels = rng.choice([-1, 0, 1], size=(num_records, NUM_ANCHORS), p=[0.6, 0.3, 0.1])
    deltas = rng.normal(0.0, 0.3, size=(num_records, NUM_ANCHORS, 4))
  deltas = np.where((labels == 1)[..., None], deltas, 0.0).reshape(num_records, 4 * NUM_ANCHORS)
  return tiles, labels.astype(np.int64), deltas.astype(np.float32)


def write_shards(directory: str, num_records: int = 60, channels: int = 8, num_shards: int = 2,
                 dtype: str = "float32", compression: str = "NONE", seed: int = 0,
                 learnable: bool = False, manifest_changes: Optional[Dict] = None):
  """Writes shards and manifest.json into `directory` (records dealt round robin).

  Returns (manifest, records) with records {(image_id, (y, x)): (tile, labels,
  deltas)}, tiles already rounded to `dtype`.
  """
  import tensorflow as tf
  os.makedirs(directory, exist_ok=True)
  manifest = make_manifest(channels, num_shards, dtype, compression, num_records,
                           **(manifest_changes or {}))
  tiles, labels, deltas = make_records(num_records, channels, seed, learnable)
  tiles = tiles.astype(dtype)
  options = tf.io.TFRecordOptions(compression_type="GZIP" if compression == "GZIP" else "")
  writers = [tf.io.TFRecordWriter(os.path.join(directory, name), options)
             for name in manifest["shard_files"]]
  records = {}
  for i in range(num_records):
    image_id, location = f"img{i // 50:04d}", (i % 50 // 10, i % 10)
    writers[i % num_shards].write(
        schema.make_example(tiles[i], labels[i], deltas[i], image_id, location))
    records[(image_id, location)] = (tiles[i], labels[i], deltas[i])
  for writer in writers:
    writer.close()
  manifest["counts"]["fg_anchors"] = int((labels == 1).sum())
  manifest["counts"]["bg_anchors"] = int((labels == 0).sum())
  with open(os.path.join(directory, config.MANIFEST_NAME), "w") as f:
    json.dump(manifest, f, indent=2)
  return manifest, records
