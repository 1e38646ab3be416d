"""Small shard directories like rpn-preprocess writes, made without the pipeline,
and small job directories like rpn-train writes, made without training.

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

from pipeline.core import config
from pipeline.io import manifest as manifest_lib
from pipeline.io import schema

NUM_ANCHORS = 9
# The shard_dir fixture (tests/conftest.py): 45 records of this many channels in 3 shards.
SHARD_DIR_CHANNELS = 8


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
                 learnable: bool = False, manifest_changes: Optional[Dict] = None,
                 shard_info: bool = True):
  """Writes shards and manifest.json into `directory` (records dealt round robin).

  The manifest lists each shard's bytes and records (its "shards" key) as
  rpn-preprocess writes it; shard_info=False leaves that key out, as older
  versions did. Returns (manifest, records) with records {(image_id, (y, x)):
  (tile, labels, deltas)}, tiles already rounded to `dtype`.
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
  if shard_info:
    manifest["shards"] = [
        {"file": name, "bytes": os.path.getsize(os.path.join(directory, name)),
         "records": len(range(k, num_records, num_shards))}
        for k, name in enumerate(manifest["shard_files"])]
  manifest["counts"]["fg_anchors"] = int((labels == 1).sum())
  manifest["counts"]["bg_anchors"] = int((labels == 0).sum())
  with open(os.path.join(directory, config.MANIFEST_NAME), "w") as f:
    json.dump(manifest, f, indent=2)
  return manifest_lib.Manifest.from_json(manifest), records


# ---------------------------------------------------------------------------
# Job directories (rpn-propose's input) and a small DET/val split for them

JOB_BACKBONE, JOB_CHANNELS, JOB_MIN_INPUT_SIDE = "MobileNetV2", 1280, 32
JOB_HIDDEN = 32  # a small head keeps the tests fast; the product's default is 512


# The start of a `python -c` script in which this project cannot be imported:
# what is loaded after it must need Keras or TensorFlow only.
NO_PROJECT = """
import importlib.abc, sys
class NoProject(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("pipeline", "trainer", "tests", "bench"):
      raise ImportError(f"{name}: this project must not be needed")
sys.meta_path.insert(0, NoProject())
"""


def job_manifest(**changes) -> Dict:
  """The data manifest a job directory holds: MobileNetV2 features (weights "none")."""
  return make_manifest(channels=JOB_CHANNELS, **dict(
      {"created_by": "rpn-preprocess", "backbone": JOB_BACKBONE,
       "min_input_side": JOB_MIN_INPUT_SIDE, "max_pixels": config.DEFAULT_MAX_PIXELS},
      **changes))


def random_tile_model(channels: int, hidden: int, seed: int):
  """An untrained head with random biases too, so that scores differ between anchors."""
  from trainer import model as model_lib
  tile_model = model_lib.build_tile_model(channels, NUM_ANCHORS, hidden)
  rng = np.random.default_rng(seed)
  for layer in tile_model.layers:
    weights = layer.get_weights()
    if weights:
      layer.set_weights([rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in weights])
  return tile_model


def save_job(job: str, manifest: Dict, channels: int, hidden: int, seed: int = 0):
  """A job directory with a random head; returns its tile model."""
  from trainer import model as model_lib
  tile_model = random_tile_model(channels, hidden, seed)
  model_lib.save_rpn(job, tile_model, manifest_lib.Manifest.from_json(manifest),
                     {"hidden": hidden, "epochs": 0})
  return tile_model


# (image id, width, height, boxes as 0-based inclusive xmin, ymin, xmax, ymax)
VAL_IMAGES = [
    ("ILSVRC2013_val/a_0001", 96, 64, [(10, 8, 60, 50), (50, 20, 90, 60)]),
    ("ILSVRC2013_val/a_0002", 40, 24, [(2, 3, 29, 19)]),  # under 32 px high: padded to 32
    ("b_0003", 72, 72, []),  # an XML without objects (a negative)
]
VAL_SPLIT = "DET/val"


def write_val_dataset(root: str) -> str:
  """VAL_IMAGES with their XML under root (ILSVRC layout, DET/val), plus an image
  without XML (c_0004) and a file that is not an image at all (d_0005)."""
  from tests import dataset_fixtures as fx
  rng = np.random.default_rng(0)
  for image_id, width, height, boxes in VAL_IMAGES:
    fx.write_pair(root, VAL_SPLIT, image_id, fx.random_image(rng, width, height, boxes),
                  fx.det_xml(image_id, width, height, boxes))
  fx.write_pair(root, VAL_SPLIT, "c_0004", fx.random_image(rng, 50, 40), None)
  fx.write_pair(root, VAL_SPLIT, "d_0005", None, None, image_bytes=b"not a jpeg")
  return root


# ---------------------------------------------------------------------------
# Maps-layout shard directories (rpn-preprocess --layout maps)


def map_image(image_id: str, feature_height: int = 4, feature_width: int = 5, channels: int = 8,
              stride: int = 32, gt=((10.0, 20.0, 90.0, 100.0),), seed: int = 0):
  """(feature map float32 [Hf, Wf, C], (height, width), gt [G, 4], image_id) of one
  image whose frame is stride times the map."""
  rng = np.random.default_rng(seed)
  feature_map = rng.normal(size=(feature_height, feature_width, channels)).astype(np.float32)
  return (feature_map, (feature_height * stride, feature_width * stride),
          np.asarray(gt, np.float64).reshape(-1, 4), image_id)


def write_map_shards(directory: str, images, channels: int = 8, dtype: str = "float32",
                     compression: str = "NONE", num_shards: int = 1,
                     raw_records=()) -> manifest_lib.Manifest:
  """Writes maps shards (images dealt round robin, then `raw_records`, serialized
  Examples, into the last shard) and their manifest.json; returns the manifest."""
  import tensorflow as tf
  os.makedirs(directory, exist_ok=True)
  suffix = ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"
  files = [f"{config.MAPS_PREFIX}-{i:05d}-of-{num_shards:05d}{suffix}" for i in range(num_shards)]
  manifest = make_manifest(channels, num_shards, dtype, compression,
                           len(images) + len(raw_records), layout=config.MAPS_LAYOUT,
                           shard_files=files)
  options = tf.io.TFRecordOptions(compression_type="GZIP" if compression == "GZIP" else "")
  counts = [0] * num_shards
  writers = [tf.io.TFRecordWriter(os.path.join(directory, name), options) for name in files]
  for i, (feature_map, size, gt, image_id) in enumerate(images):
    writers[i % num_shards].write(
        schema.make_map_example(feature_map.astype(dtype), size, gt, image_id))
    counts[i % num_shards] += 1
  for record in raw_records:
    writers[-1].write(record)
    counts[-1] += 1
  for writer in writers:
    writer.close()
  manifest["shards"] = [{"file": name, "bytes": os.path.getsize(os.path.join(directory, name)),
                         "records": counts[k]} for k, name in enumerate(files)]
  with open(os.path.join(directory, config.MANIFEST_NAME), "w") as f:
    json.dump(manifest, f, indent=2)
  return manifest_lib.Manifest.from_json(manifest)
