"""tf.data input of the maps layout: the anchors' targets drawn afresh every epoch.

A maps shard holds one record per image (pipeline/io/schema.py): its whole
feature map, the frame size, the gt boxes and the image id. For each image and
epoch, the pipeline's own numpy target code (pipeline.core.targets.compute_targets:
anchors, labels, sampling, deltas, points) runs in a tf.numpy_function on the
small fields only (feature-map shape, frame size, gt boxes, image id), seeded
by (seed, epoch, image id); the 3x3 tiles of the sampled points are then cut
from the decoded map in the graph. So every epoch draws new samples, and
epoch 0 with the preprocessing defaults draws exactly the (tile, labels,
deltas, location) records that `rpn-preprocess --layout tiles` writes.

Shape shorthand: Hf, Wf, C feature map; A anchors per point; P sampled points
of an image; B tiles per step.

For training, the input runs on from pass to pass over the shards without
end, pass p drawn with epoch p, and rpn-train sets Keras' steps_per_epoch to
about one pass (the tiles per image of the feature-statistics sample times
the images, over the batch size): every tile drawn is trained on once, and no
iterator is thrown away. Validation draws epoch 0 every time.

A record that does not hold together (a feature_shape that disagrees with its
bytes, a gt box outside its frame) stops the input with a MapRecordError
naming the file and the record. An image where no anchor of the chosen set
lies inside its frame gives no tile that pass (it is skipped, never a stall);
such images are counted per pass (EpochLog) and logged.
"""
from __future__ import annotations

import collections
import logging
import re
import threading
from typing import Dict, List, Optional, Sequence, Union

import keras
import numpy as np
import tensorflow as tf

from pipeline.core import config as config_lib
from pipeline.core import targets
from pipeline.io import manifest as manifest_lib
from pipeline.io import schema
from trainer.settings import DEFAULT_SHUFFLE_BUFFER_MB

_LOGGER = logging.getLogger(__name__)
_MAX_INTERLEAVE = 16
# A gt box may poke out of its frame by this much (pixels): float32 storage.
FRAME_TOLERANCE = 1e-3
# MapRecordError's messages cross tf.numpy_function inside TensorFlow's own
# error; this marks where they start.
ERROR_MARK = "rpn-map-record-error: "


class MapRecordError(manifest_lib.ManifestError):
  """A maps record that does not hold together; the message names the file and record."""


class EpochLog:
  """The passes of the training input over the maps, and what each drew.

  The training input runs on from pass to pass; pass p draws its samples
  with epoch p. The first pass is `first`, read when the iterator starts
  (EpochClock sets it to the epoch Keras starts from, so a resumed job draws
  on from there). add() is called from the input's threads; a pass whose
  `images_per_pass` images are all drawn is logged and kept in `done`.
  """

  def __init__(self, images_per_pass: Optional[int] = None, first: int = 0):
    self.first = first
    self.images_per_pass = images_per_pass
    self.done: List[Dict[str, int]] = []
    self._lock = threading.Lock()
    self._counts: Dict[int, collections.Counter] = collections.defaultdict(collections.Counter)

  def passes(self):
    """The pass numbers of one iterator: from `first` on, without end."""
    epoch = self.first
    while True:
      yield np.int64(epoch)
      epoch += 1

  def add(self, epoch: int, tiles: int, no_anchor: bool) -> None:
    with self._lock:
      counts = self._counts[int(epoch)]
      counts["images"] += 1
      counts["tiles"] += int(tiles)
      counts["images_no_anchor"] += int(no_anchor)
      if counts["images"] != self.images_per_pass:
        return
      summary = dict(self._counts_of(epoch), epoch=int(epoch))
      self.done.append(summary)
    _LOGGER.warning("maps pass %d (sampled with epoch %d): drew %d tiles from %d images; %d "
                    "images had no anchor inside their frame (no tile)", epoch + 1, epoch,
                    summary["tiles"], summary["images"], summary["images_no_anchor"])

  def _counts_of(self, epoch: int) -> Dict[str, int]:
    counts = self._counts.get(int(epoch), collections.Counter())
    return {key: int(counts[key]) for key in ("images", "tiles", "images_no_anchor")}

  def counts(self, epoch: int) -> Dict[str, int]:
    """{"images", "tiles", "images_no_anchor"} drawn with `epoch` so far."""
    with self._lock:
      return self._counts_of(epoch)


class EpochClock(keras.callbacks.Callback):
  """Starts the EpochLog's passes at the epoch Keras starts from (0, or the
  epoch a resumed job goes on with). Keras makes the iterator of an input
  with steps_per_epoch once, after the first on_epoch_begin."""

  def __init__(self, log: EpochLog):
    super().__init__()
    self.log = log
    self._started = False

  def on_epoch_begin(self, epoch, logs=None):
    if not self._started:
      self.log.first = int(epoch)
      self._started = True


def check_record(where: str, feature_shape, nbytes: int, image_size, gt, channels: int,
                 itemsize: int) -> np.ndarray:
  """gt boxes float64 [G, 4] of a record whose fields hold together, else a
  MapRecordError naming `where` (file and record)."""
  shape = [int(v) for v in np.asarray(feature_shape).reshape(-1)]
  if len(shape) != 3 or min(shape) <= 0:
    raise MapRecordError(f"{where}: feature_shape {shape} is not a [Hf, Wf, C] shape")
  if shape[2] != channels:
    raise MapRecordError(f"{where}: feature_shape {shape} has {shape[2]} channels, the "
                         f"manifest {channels}")
  expected = shape[0] * shape[1] * shape[2] * itemsize
  if int(nbytes) != expected:
    raise MapRecordError(f"{where}: feature_shape {shape} needs {expected} bytes of "
                         f"features, the record holds {int(nbytes)}")
  height, width = (int(v) for v in np.asarray(image_size).reshape(-1))
  if height <= 0 or width <= 0:
    raise MapRecordError(f"{where}: image_size {height}x{width} (height x width) is empty")
  gt = np.asarray(gt, np.float64).reshape(-1)
  if len(gt) % 4:
    raise MapRecordError(f"{where}: gt_boxes holds {len(gt)} values, not 4 per box")
  gt = gt.reshape(-1, 4)
  tol = FRAME_TOLERANCE
  bad = ~np.isfinite(gt).all(axis=1) | (gt[:, 0] < -tol) | (gt[:, 1] < -tol) | (
      gt[:, 2] > width + tol) | (gt[:, 3] > height + tol) | (gt[:, 2] <= gt[:, 0]) | (
      gt[:, 3] <= gt[:, 1])
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise MapRecordError(f"{where}: gt box {i} {[round(float(v), 3) for v in gt[i]]} is not "
                         f"a box inside its {width}x{height} frame")
  return gt


def _targets_fn(anchors: config_lib.AnchorConfig, target_config: config_lib.TargetConfig,
                level_channels, itemsize: int, log: Optional[EpochLog]):
  """The numpy side: one record's fields (feature_shape [L, 3] and nbytes [L]
  of its L levels' maps, level l of level_channels[l] channels) ->
  (locations [P, 2], labels [P, A], deltas [P, 4A], levels [P]), the points
  level after level."""
  num_anchors = anchors.num_anchors

  def run(epoch, path, index, feature_shapes, nbytes, image_size, gt, image_id):
    image_id = image_id.decode("utf-8")
    where = f"{path.decode('utf-8')}: record {int(index)} (image {image_id})"
    try:
      for level, (feature_shape, level_bytes, channels) in enumerate(zip(
          np.asarray(feature_shapes).reshape(-1, 3), np.asarray(nbytes).reshape(-1),
          level_channels, strict=True)):
        checked = check_record(where + (f" level {level}" if level else ""), feature_shape,
                               level_bytes, image_size, gt, channels, itemsize)
    except MapRecordError as e:
      raise ValueError(ERROR_MARK + str(e)) from None
    height, width = (int(v) for v in image_size)
    result = targets.compute_level_targets(
        width, height, [(int(s[0]), int(s[1])) for s in np.asarray(feature_shapes).reshape(-1, 3)],
        checked, image_id, anchor_config=anchors, target_config=target_config,
        epoch=int(epoch))
    if log is not None:
      log.add(int(epoch), result.num_points, result.num_inside == 0)
    levels = result.levels
    return (np.concatenate([lt.locations for lt in levels]).astype(np.int32).reshape(-1, 2),
            np.concatenate([lt.point_labels for lt in levels]).astype(np.int32).reshape(
                -1, num_anchors),
            np.concatenate([lt.point_deltas for lt in levels]).astype(np.float32).reshape(
                -1, 4 * num_anchors),
            np.concatenate([np.full(len(lt.points), i, np.int32)
                            for i, lt in enumerate(levels)]))
  return run


def cut_tiles(feature_map, locations):
  """Tiles [P, 3, 3, C] of feature_map [Hf, Wf, C] at locations [P, 2] (y, x):
  the zero-padded 3x3 window centred on each, as pipeline.core.targets.extract_tiles."""
  padded = tf.pad(feature_map, [[1, 1], [1, 1], [0, 0]])  # [Hf + 2, Wf + 2, C]
  offsets = tf.stack(tf.meshgrid(tf.range(3), tf.range(3), indexing="ij"), axis=-1)  # [3, 3, 2]
  return tf.gather_nd(padded, locations[:, None, None, :] + offsets[None])  # [P, 3, 3, C]


def image_records(epoch, path, index, record, manifest: manifest_lib.Manifest,
                  anchors: config_lib.AnchorConfig, target_config: config_lib.TargetConfig,
                  log: Optional[EpochLog] = None) -> Dict:
  """One maps record -> the tiles layout's records of its sampled points, as
  tensors: tile float32 [P, 3, 3, C], labels int32 [P, A], deltas float32
  [P, 4A], location int32 [P, 2], image_id string [P]; with several feature
  levels also level int32 [P] (each tile cut from its level's map; a level of
  fewer channels than C, the manifest's level_channels, padded with zero
  channels to C, as the tiles layout's tiles are when read)."""
  channels = int(manifest.feature_channels)
  level_channels = manifest.channels_per_level
  dtype = tf.dtypes.as_dtype(manifest.dtype)
  num_anchors = anchors.num_anchors
  num_levels = manifest.num_levels
  parsed = tf.io.parse_single_example(record, schema.map_feature_spec(num_levels))
  gt = tf.sparse.to_dense(parsed[schema.GT_BOXES_KEY])
  feature_shapes = tf.reshape(parsed[schema.FEATURE_SHAPE_KEY], [num_levels, 3])
  raws = parsed[schema.FEATURE_MAP_KEY]
  raws = [raws] if num_levels == 1 else [raws[level] for level in range(num_levels)]
  locations, labels, deltas, levels = tf.numpy_function(
      _targets_fn(anchors, target_config, level_channels, dtype.size, log),
      [epoch, path, index, feature_shapes, tf.stack([tf.strings.length(r) for r in raws]),
       parsed[schema.IMAGE_SIZE_KEY], gt, parsed[schema.IMAGE_ID_KEY]],
      [tf.int32, tf.int32, tf.float32, tf.int32])
  locations = tf.ensure_shape(locations, [None, 2])
  labels = tf.ensure_shape(labels, [None, num_anchors])
  deltas = tf.ensure_shape(deltas, [None, 4 * num_anchors])
  levels = tf.ensure_shape(levels, [None])
  tiles = []
  for level, raw in enumerate(raws):
    with tf.control_dependencies([locations]):  # the record is checked before it is decoded
      feature_map = tf.reshape(tf.io.decode_raw(raw, dtype, little_endian=True),
                               tf.cast(feature_shapes[level], tf.int32))
    feature_map = tf.ensure_shape(tf.cast(feature_map, tf.float32),
                                  [None, None, level_channels[level]])
    if level_channels[level] < channels:
      feature_map = tf.pad(feature_map, [[0, 0], [0, 0], [0, channels - level_channels[level]]])
    # the points come level after level: each level's tiles in their order
    at_level = locations if num_levels == 1 else tf.boolean_mask(locations, levels == level)
    tiles.append(cut_tiles(feature_map, at_level))
  out = {
      schema.TILE_KEY: tiles[0] if num_levels == 1 else tf.concat(tiles, axis=0),
      schema.LABELS_KEY: labels,
      schema.DELTAS_KEY: deltas,
      schema.LOCATION_KEY: locations,
      schema.IMAGE_ID_KEY: tf.fill([tf.shape(locations)[0]], parsed[schema.IMAGE_ID_KEY]),
  }
  if num_levels > 1:
    out[schema.LEVEL_KEY] = levels
  return out


def tile_records(files: Sequence[str], manifest: manifest_lib.Manifest,
                 anchors: config_lib.AnchorConfig,
                 target_config: config_lib.TargetConfig,
                 epochs: Union[int, EpochLog] = 0, shuffle: bool = False, seed: int = 0,
                 skip_corrupt: bool = False, cycle_length: int = _MAX_INTERLEAVE,
                 log: Optional[EpochLog] = None):
  """Per-tile records (dicts as image_records gives, one point each) of the maps
  shards `files`: one pass drawn with a fixed epoch, or pass after pass
  without end, each drawn with its own epoch, with an EpochLog.

  With shuffle, each pass reads the files in an order drawn from (seed, pass)
  and interleaves them non-deterministically; without, in the given order,
  round-robin over cycle_length files. `log` counts a fixed epoch's draws.
  """
  compression = manifest.tfrecord_compression
  if isinstance(epochs, EpochLog):  # pass after pass, without end
    log = epochs
    passes = tf.data.Dataset.from_generator(
        log.passes, output_signature=tf.TensorSpec([], tf.int64))
  else:
    passes = tf.data.Dataset.from_tensors(tf.constant(int(epochs), tf.int64))
  file_names = tf.constant(list(files))
  cycle = max(1, min(len(files), cycle_length))

  def read(path):
    records = tf.data.TFRecordDataset(path, compression_type=compression, buffer_size=8 << 20)
    numbered = records.enumerate()
    if skip_corrupt:  # the rest of a corrupt file is dropped (logged by TensorFlow)
      numbered = numbered.ignore_errors(log_warning=True)
    return numbered.map(lambda index, record: (path, index, record))

  def one_pass(epoch):
    names = file_names
    if shuffle:
      names = tf.random.experimental.stateless_shuffle(
          names, seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
    images = tf.data.Dataset.from_tensor_slices(names).interleave(
        read, cycle_length=cycle, block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not shuffle)
    return images.map(
        lambda path, index, record: image_records(epoch, path, index, record, manifest,
                                                  anchors, target_config, log),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)

  return passes.flat_map(one_pass).unbatch()


def tile_bytes(manifest: manifest_lib.Manifest, anchors: config_lib.AnchorConfig) -> int:
  """About the bytes of one decoded tile and its targets (the shuffle buffer's unit)."""
  channels = int(manifest.feature_channels)
  return schema.TILE_SIZE ** 2 * channels * 4 + 24 * anchors.num_anchors + 64


def make_dataset(files: Sequence[str], manifest: manifest_lib.Manifest,
                 anchors: config_lib.AnchorConfig,
                 target_config: config_lib.TargetConfig, batch_size: int,
                 epochs: Union[int, EpochLog] = 0, shuffle: bool = True,
                 shuffle_buffer_mb: int = DEFAULT_SHUFFLE_BUFFER_MB, seed: int = 0,
                 skip_corrupt: bool = False, drop_remainder: bool = False,
                 tiles_per_pass: Optional[int] = None):
  """Batches (tiles, targets) for the tile model's fit(), as trainer.data's,
  from maps shards: tile_records, shuffled in a buffer of about
  shuffle_buffer_mb megabytes of tiles (at least 4 batches), batched.

  With an EpochLog the passes run on without end: the buffer then holds at
  most `tiles_per_pass` tiles, so that it mixes a pass with its neighbours
  only (a buffer bigger than the data would fill with many passes at once).
  """
  from trainer import data as data_lib  # to_model_inputs, shared with the tiles layout
  ds = tile_records(files, manifest, anchors, target_config, epochs, shuffle, seed,
                    skip_corrupt)
  if shuffle:
    buffer = (shuffle_buffer_mb << 20) // tile_bytes(manifest, anchors)
    if tiles_per_pass:
      buffer = min(buffer, int(tiles_per_pass))
    buffer = max(4 * batch_size, buffer)
    ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=not shuffle)
  levels = manifest.num_levels > 1
  ds = ds.map(lambda records: data_lib.to_model_inputs(records, levels),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)
  return ds.prefetch(tf.data.AUTOTUNE)


def sample_centres(files: Sequence[str], manifest: manifest_lib.Manifest,
                   anchors: config_lib.AnchorConfig,
                   target_config: config_lib.TargetConfig, max_tiles: int,
                   skip_corrupt: bool = False):
  """(centre features [N, C], what was sampled) of up to max_tiles epoch-0 tiles,
  the images taken round-robin over (up to 64 of) the shards. What was
  sampled includes "tiles_per_image": the mean over the images drawn (those
  without a tile included), which sizes rpn-train's epochs."""
  log = EpochLog()
  ds = tile_records(files, manifest, anchors, target_config, 0, shuffle=False,
                    skip_corrupt=skip_corrupt, cycle_length=64, log=log)
  several = manifest.num_levels > 1
  ds = ds.take(max_tiles).batch(1024).map(
      lambda r: (r[schema.TILE_KEY][:, 1, 1, :], r[schema.IMAGE_ID_KEY],
                 r[schema.LEVEL_KEY] if several else tf.zeros_like(r[schema.IMAGE_ID_KEY],
                                                                   tf.int32)))
  centres, images, levels = [], set(), []
  for features, image_ids, level in ds:
    centres.append(features.numpy())
    images.update(image_ids.numpy().tolist())
    levels.append(level.numpy())
  channels = int(manifest.feature_channels)
  centres = np.concatenate(centres) if centres else np.zeros((0, channels), np.float32)
  if not len(centres):
    raise MapRecordError(f"{files[0]}: no tile could be drawn for the feature statistics "
                         f"(no anchor inside any frame read?)")
  drawn = log.counts(0)
  info = {"records": int(len(centres)), "images": len(images),
          "of_shards": len(files), "max_records": max_tiles, "epoch": 0,
          "tiles_per_image": drawn["tiles"] / max(1, drawn["images"]),
          "images_no_anchor": drawn["images_no_anchor"]}
  if several:  # the level of each centre, for each level's statistics
    info["levels"] = np.concatenate(levels)
  return centres, info


def record_error(error: tf.errors.OpError) -> Optional[MapRecordError]:
  """The MapRecordError inside a TensorFlow error from the maps input, or None."""
  match = re.search(re.escape(ERROR_MARK) + r"(.*)", error.message or "")
  return MapRecordError(match.group(1).strip()) if match else None
