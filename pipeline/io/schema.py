"""The record schemas shared by the pipeline (writing) and the trainer (reading).

Layout tiles (the method): one tf.train.Example per sampled feature-map point:
  tile      bytes   raw little-endian [3, 3, C] array, dtype from the manifest
                    (levels of different channel counts: C of the record's level,
                    the manifest's level_channels; read back padded to the most)
  labels    int64   x A   1 positive, 0 negative, -1 not sampled/ignored/outside
  deltas    float   x 4A  (dx, dy, dw, dh) per anchor, anchor-major
  image_id  bytes   image path relative to the split root, no extension
  location  int64   x 2   (y, x) of the point in the feature map
  level     int64         the point's feature level, 0 the finest (only in the
                          records of several levels, --feature_layers; absent: 0)

Layout maps: one tf.train.Example per image:
  feature_map    bytes   raw little-endian [Hf, Wf, C] array, dtype from the manifest
                         (several feature levels, --feature_layers: one per level,
                         finest first)
  feature_shape  int64   x 3   (Hf, Wf, C) (several levels: x 3L, level after level)
  image_size     int64   x 2   (height, width) of the frame fed to the backbone
  gt_boxes       float   x 4G  x1, y1, x2, y2 of each gt box in that frame
  image_id       bytes   as above
  source_size    int64   x 2   (height, width) of the decoded image, before the
                               optional resize and the padding (written after
                               0.8.0; rpn-propose --maps takes boxes back to it)

No Beam here; TensorFlow is imported only where a function needs it.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

TILE_KEY = "tile"
LABELS_KEY = "labels"
DELTAS_KEY = "deltas"
IMAGE_ID_KEY = "image_id"
LOCATION_KEY = "location"
TILE_SIZE = 3
FEATURE_MAP_KEY = "feature_map"
FEATURE_SHAPE_KEY = "feature_shape"
IMAGE_SIZE_KEY = "image_size"
GT_BOXES_KEY = "gt_boxes"
LEVEL_KEY = "level"
SOURCE_SIZE_KEY = "source_size"

TILE_DTYPES = ("float32", "float16")


def make_example(tile: np.ndarray, labels: np.ndarray, deltas: np.ndarray,
                 image_id: str, location, level=None) -> bytes:
  """Serialized tf.train.Example for one point (tile already in its dtype);
  `level` only for records of several feature levels (None: no level key)."""
  from tensorflow.core.example import example_pb2  # lazy: as below
  example = example_pb2.Example()
  feature = example.features.feature
  feature[TILE_KEY].bytes_list.value.append(
      np.ascontiguousarray(tile, dtype=tile.dtype.newbyteorder("<")).tobytes())
  feature[LABELS_KEY].int64_list.value.extend(np.asarray(labels, np.int64).tolist())
  feature[DELTAS_KEY].float_list.value.extend(np.asarray(deltas, np.float32).tolist())
  feature[IMAGE_ID_KEY].bytes_list.value.append(image_id.encode("utf-8"))
  feature[LOCATION_KEY].int64_list.value.extend([int(location[0]), int(location[1])])
  if level is not None:
    feature[LEVEL_KEY].int64_list.value.append(int(level))
  return example.SerializeToString(deterministic=True)


def make_map_example(feature_map, image_size, gt_boxes: np.ndarray,
                     image_id: str, source_size=None) -> bytes:
  """Serialized tf.train.Example of one image's feature map [Hf, Wf, C] (already in
  its dtype; a list of them, finest first, for several feature levels), its
  frame's (height, width) and gt boxes [G, 4] in that frame; source_size: the
  decoded image's (height, width), when known."""
  from tensorflow.core.example import example_pb2  # lazy: as below
  example = example_pb2.Example()
  feature = example.features.feature
  for level_map in feature_map if isinstance(feature_map, list) else [feature_map]:
    if level_map.ndim != 3:
      raise ValueError(f"feature_map must be [H, W, C], got shape {level_map.shape}")
    feature[FEATURE_MAP_KEY].bytes_list.value.append(np.ascontiguousarray(
        level_map, dtype=level_map.dtype.newbyteorder("<")).tobytes())
    feature[FEATURE_SHAPE_KEY].int64_list.value.extend(int(v) for v in level_map.shape)
  feature[IMAGE_SIZE_KEY].int64_list.value.extend([int(image_size[0]), int(image_size[1])])
  feature[GT_BOXES_KEY].float_list.value.extend(
      np.asarray(gt_boxes, np.float32).reshape(-1).tolist())
  feature[IMAGE_ID_KEY].bytes_list.value.append(image_id.encode("utf-8"))
  if source_size is not None:
    feature[SOURCE_SIZE_KEY].int64_list.value.extend([int(source_size[0]),
                                                      int(source_size[1])])
  return example.SerializeToString(deterministic=True)


class MapRecord(NamedTuple):
  """A maps record read back with numpy (parse_map_example)."""
  image_id: str
  feature_maps: List[np.ndarray]  # [Hf, Wf, C] each, finest first, in the stored dtype
  image_size: Tuple[int, int]  # (height, width) of the frame
  gt_boxes: np.ndarray  # float32 [G, 4]
  source_size: Optional[Tuple[int, int]]  # (height, width) of the decoded image, or None


def parse_map_example(serialized: bytes, dtype: str) -> MapRecord:
  """A serialized maps record -> MapRecord, without TensorFlow ops (Beam
  workers that run only the RPN head). ValueError naming what does not hold
  together (a missing key, a shape that disagrees with the bytes)."""
  from tensorflow.core.example import example_pb2  # lazy: as above
  example = example_pb2.Example.FromString(serialized)
  feature = example.features.feature
  for key in (FEATURE_MAP_KEY, FEATURE_SHAPE_KEY, IMAGE_SIZE_KEY, IMAGE_ID_KEY):
    if key not in feature:
      raise ValueError(f"not a maps record: no {key!r}")
  image_id = feature[IMAGE_ID_KEY].bytes_list.value[0].decode("utf-8")
  shapes = list(feature[FEATURE_SHAPE_KEY].int64_list.value)
  blobs = list(feature[FEATURE_MAP_KEY].bytes_list.value)
  if len(shapes) != 3 * len(blobs):
    raise ValueError(f"record {image_id!r}: {len(blobs)} feature maps but feature_shape "
                     f"{shapes}")
  dtype = np.dtype(dtype).newbyteorder("<")
  maps = []
  for index, blob in enumerate(blobs):
    shape = tuple(int(v) for v in shapes[3 * index:3 * index + 3])
    if len(blob) != int(np.prod(shape)) * dtype.itemsize:
      raise ValueError(f"record {image_id!r}: feature map {index} holds {len(blob)} bytes, "
                       f"shape {shape} of {dtype.name} needs "
                       f"{int(np.prod(shape)) * dtype.itemsize}")
    maps.append(np.frombuffer(blob, dtype).reshape(shape))
  height, width = (int(v) for v in feature[IMAGE_SIZE_KEY].int64_list.value)
  gt = np.asarray(feature[GT_BOXES_KEY].float_list.value, np.float32).reshape(-1, 4) \
      if GT_BOXES_KEY in feature else np.zeros((0, 4), np.float32)
  source = tuple(int(v) for v in feature[SOURCE_SIZE_KEY].int64_list.value) \
      if SOURCE_SIZE_KEY in feature else None
  return MapRecord(image_id, maps, (height, width), gt, source)


def map_feature_spec(num_levels: int = 1) -> Dict:
  """tf.io.parse_single_example spec of a maps record (of num_levels feature
  levels: feature_map then holds num_levels strings, feature_shape 3 * num_levels)."""
  import tensorflow as tf  # lazy: the pipeline imports this module without TensorFlow
  return {
      FEATURE_MAP_KEY: tf.io.FixedLenFeature([] if num_levels == 1 else [num_levels],
                                             tf.string),
      FEATURE_SHAPE_KEY: tf.io.FixedLenFeature([3 * num_levels], tf.int64),
      IMAGE_SIZE_KEY: tf.io.FixedLenFeature([2], tf.int64),
      GT_BOXES_KEY: tf.io.VarLenFeature(tf.float32),
      IMAGE_ID_KEY: tf.io.FixedLenFeature([], tf.string),
  }


def feature_spec(num_anchors: int) -> Dict:
  """tf.io.parse_example spec for records with `num_anchors` anchors a point."""
  import tensorflow as tf  # lazy: the pipeline imports this module without TensorFlow
  return {
      TILE_KEY: tf.io.FixedLenFeature([], tf.string),
      LABELS_KEY: tf.io.FixedLenFeature([num_anchors], tf.int64),
      DELTAS_KEY: tf.io.FixedLenFeature([4 * num_anchors], tf.float32),
      IMAGE_ID_KEY: tf.io.FixedLenFeature([], tf.string),
      LOCATION_KEY: tf.io.FixedLenFeature([2], tf.int64),
      LEVEL_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=0),
  }


def parse_examples(serialized, num_anchors: int, channels: int, tile_dtype: str = "float32",
                   level_channels: Optional[Sequence[int]] = None):
  """Parse a batch (1-D string tensor) of records into a dict of dense tensors.

  Works eagerly and inside Dataset.map. tile -> float32 [B, 3, 3, C] (float16
  tiles are widened), labels int32 [B, A], deltas float32 [B, 4A], level
  int32 [B] (0 for records without one).

  `level_channels` (the manifest's, levels of different channel counts; C is
  their most): each record's tile holds its level's channels, and is padded
  with zero channels to C here (pad_tiles), so that tiles of every level
  batch together; a tile whose size is not its level's stops the read
  (InvalidArgumentError naming the sizes).
  """
  import tensorflow as tf  # lazy: the pipeline imports this module without TensorFlow
  if tile_dtype not in TILE_DTYPES:
    raise ValueError(f"tile dtype {tile_dtype!r} not in {TILE_DTYPES}")
  parsed = tf.io.parse_example(serialized, feature_spec(num_anchors))
  dtype = tf.dtypes.as_dtype(tile_dtype)
  level = tf.cast(parsed[LEVEL_KEY], tf.int32)
  if level_channels and len(set(level_channels)) > 1:
    sizes = tf.constant([TILE_SIZE ** 2 * int(c) * dtype.size for c in level_channels],
                        tf.int32)
    length = tf.strings.length(parsed[TILE_KEY])
    most = TILE_SIZE ** 2 * channels * dtype.size
    with tf.control_dependencies([tf.debugging.assert_equal(
        length, tf.gather(sizes, level),
        message="a tile's bytes are not 3 x 3 x its level's channels (manifest "
                "level_channels)")]):
      # zero bytes appended up to the widest tile's (decode_raw's own padding
      # has no float16 kernel)
      zeros = tf.fill(tf.shape(length), tf.constant(b"\0" * most))
      same = tf.strings.join([parsed[TILE_KEY],
                              tf.strings.substr(zeros, tf.zeros_like(length), most - length)])
    flat = tf.io.decode_raw(same, dtype, little_endian=True)
    tiles = pad_tiles(flat, level, level_channels)
  else:
    tiles = tf.io.decode_raw(parsed[TILE_KEY], dtype, little_endian=True)
    tiles = tf.reshape(tiles, [-1, TILE_SIZE, TILE_SIZE, channels])
  return {
      TILE_KEY: tf.cast(tiles, tf.float32),
      LABELS_KEY: tf.cast(parsed[LABELS_KEY], tf.int32),
      DELTAS_KEY: parsed[DELTAS_KEY],
      IMAGE_ID_KEY: parsed[IMAGE_ID_KEY],
      LOCATION_KEY: tf.cast(parsed[LOCATION_KEY], tf.int32),
      LEVEL_KEY: level,
  }


def padded_tile_index(level_channels: Sequence[int]) -> np.ndarray:
  """int32 [L, 9 * C] (C the most of level_channels): where each value of a
  tile padded to C channels comes from in its level's flat [3, 3, C_l] tile,
  zero-filled to 9 * C values, with one more zero appended (pad_tiles);
  every padded channel points at that last zero (index 9 * C), which exists
  for the widest level too."""
  most = max(int(c) for c in level_channels)
  points = TILE_SIZE ** 2
  index = np.full((len(level_channels), points, most), points * most, np.int32)
  for level, c in enumerate(level_channels):
    index[level, :, :c] = np.arange(points)[:, None] * int(c) + np.arange(int(c))[None, :]
  return index.reshape(len(level_channels), points * most)


def pad_tiles(flat, level, level_channels: Sequence[int]):
  """Tiles [B, 3, 3, C] of flat [B, 9 * C] tiles (each its level's [3, 3, C_l]
  values, then zeros) and their level [B]: every
  tile's channels beyond its level's C_l zero (padded_tile_index)."""
  import tensorflow as tf  # lazy: see parse_examples
  most = max(int(c) for c in level_channels)
  flat = tf.concat([flat, tf.zeros_like(flat[:, :1])], axis=1)
  index = tf.gather(tf.constant(padded_tile_index(level_channels)), level)
  return tf.reshape(tf.gather(flat, index, batch_dims=1), [-1, TILE_SIZE, TILE_SIZE, most])
