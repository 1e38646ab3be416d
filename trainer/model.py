"""The RPN head: a tile model for training and a fully convolutional twin for inference.

Shape shorthand: B batch, C feature channels, A anchors per point (9),
Hf, Wf feature-map height and width.

  tile model:      tile [B, 3, 3, C] --3x3 conv (valid), ReLU--> [B, 1, 1, 512]
                   --1x1 linear, sigmoid--> scores [B, A] (logits in training)
                   --1x1 linear--> deltas [B, 4A]
  inference model: map [B, Hf, Wf, C] --the same layers, 3x3 conv 'same'-->
                   scores [B, Hf, Wf, A], deltas [B, Hf, Wf, 4A]

Because a tile is the zero-padded 3x3 window around (y, x), the inference
model's output at (y, x) equals the tile model's output for that tile.

Feature levels of different channel counts (the manifest's level_channels)
first go through a 1x1 projection of their own to one width P (rpn-train
--projection), then the shared layers; tiles of every level come padded
with zero channels to the most, C (trainer input):

  tile model:      [tile [B, 3, 3, C], level [B]] --standardise (the level's)-->
                   --project (the level's 1x1, C_l -> P)--> [B, 3, 3, P] --> as above
  inference model: map of level l [B, Hf, Wf, C_l] --standardise_l, project_l-->
                   the same layers

Both models first standardise the features per channel with fixed statistics
of the training shards (`feature_mean`, `feature_variance`: computed once by
rpn-train, saved in train_config.json, not trained; identity by default),
because badly scaled features train much slower (BENCHMARKS.md, "Feature
standardisation"). So that tile and map outputs stay equal, the inference
model zero-pads the raw map by one point, standardises, then applies the 3x3
conv with `valid` padding: the same as a `same` conv over the raw map, padding
included, as the tile sees it.
"""
from __future__ import annotations

import os
import tempfile
from typing import Tuple

import keras
import numpy as np

from pipeline.core.config import MANIFEST_NAME, AnchorConfig
from pipeline.io import manifest as manifest_lib
from pipeline.io import schema, storage
from trainer import job
from trainer.settings import DEFAULT_HIDDEN, DEFAULT_PROJECTION


def _layers(channels_hidden: int, num_anchors: int, padding: str):
  """rpn_conv, rpn_cls (objectness logits) and rpn_bbox; the heads compute in float32."""
  conv = keras.layers.Conv2D(channels_hidden, 3, padding=padding, activation="relu",
                             name="rpn_conv")
  cls = keras.layers.Conv2D(num_anchors, 1, name="rpn_cls", dtype="float32")
  bbox = keras.layers.Conv2D(4 * num_anchors, 1, name="rpn_bbox", dtype="float32")
  return conv, cls, bbox


def _objectness(logits: bool = False):
  """The sigmoid on rpn_cls; the identity with logits, so that both variants
  have the same layers (and weight files)."""
  return keras.layers.Activation("linear" if logits else "sigmoid", name="objectness",
                                 dtype="float32")


@keras.saving.register_keras_serializable(package="rpn")
class LevelStandardise(keras.layers.Layer):
  """[tile [B, 3, 3, C], level int [B]] -> (tile - mean[level]) / sqrt(variance[level]):
  the fixed standardisation of tiles of several feature levels, each level
  with its own training statistics (mean, variance [L, C]; not trained, not
  in the weight files, as the one-level Normalization)."""

  def __init__(self, mean, variance, **kwargs):
    super().__init__(**kwargs)
    self.mean = np.asarray(mean, np.float32)
    self.variance = np.asarray(variance, np.float32)

  def call(self, inputs):
    tile, level = inputs
    level = keras.ops.cast(keras.ops.reshape(level, [-1]), "int32")
    mean = keras.ops.take(keras.ops.convert_to_tensor(self.mean), level, axis=0)  # [B, C]
    scale = keras.ops.take(keras.ops.convert_to_tensor(1.0 / np.sqrt(self.variance)), level,
                           axis=0)
    return (keras.ops.cast(tile, "float32") - mean[:, None, None, :]) * scale[:, None, None, :]

  def compute_output_shape(self, input_shape):
    return input_shape[0]

  def get_config(self):
    return dict(super().get_config(), mean=self.mean.tolist(), variance=self.variance.tolist())


@keras.saving.register_keras_serializable(package="rpn")
class LevelProjection(keras.layers.Layer):
  """[tile [B, 3, 3, C], level int [B]] -> [B, 3, 3, units]: each tile through
  its own level's 1x1 projection (kernel [L, C, units], bias [L, units]), for
  feature levels of different channel counts `level_channels` (C their most).
  A tile's channels beyond its level's count are zero, so level l's kernel
  rows past level_channels[l] never act; the inference model keeps only the
  rows that do (a plain 1x1 Conv2D per level). Each level's kernel starts as
  a Glorot-uniform Dense of its own fan-in and out."""

  def __init__(self, level_channels, units: int, **kwargs):
    super().__init__(**kwargs)
    self.level_channels = [int(c) for c in level_channels]
    self.units = int(units)

  def build(self, input_shape):
    channels = int(input_shape[0][-1])
    levels = len(self.level_channels)
    if channels != max(self.level_channels):
      raise ValueError(f"tiles of {channels} channels for levels of {self.level_channels}")

    def initial(shape, dtype=None):
      kernel = np.zeros(shape, np.float32)
      for level, count in enumerate(self.level_channels):
        kernel[level, :count] = keras.ops.convert_to_numpy(
            keras.initializers.GlorotUniform()((count, self.units)))
      return keras.ops.convert_to_tensor(kernel, dtype=dtype)

    self.kernel = self.add_weight(name="kernel", shape=(levels, channels, self.units),
                                  initializer=initial)
    self.bias = self.add_weight(name="bias", shape=(levels, self.units), initializer="zeros")

  def call(self, inputs):
    tile, level = inputs
    level = keras.ops.cast(keras.ops.reshape(level, [-1]), "int32")
    one_hot = keras.ops.one_hot(level, len(self.level_channels), dtype=tile.dtype)  # [B, L]
    kernel = keras.ops.cast(self.kernel, tile.dtype)
    bias = keras.ops.cast(self.bias, tile.dtype)
    every = keras.ops.einsum("bhwc,lcp->bhwlp", tile, kernel) + bias  # each level's
    return keras.ops.einsum("bhwlp,bl->bhwp", every, one_hot)

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[0][:-1]) + (self.units,)

  def level_weights(self, level: int):
    """[kernel [1, 1, C_l, units], bias [units]]: level `level`'s projection as
    the weights of a 1x1 Conv2D over its own C_l channels."""
    count = self.level_channels[level]
    kernel = keras.ops.convert_to_numpy(self.kernel)[level, :count]
    return [kernel[None, None], keras.ops.convert_to_numpy(self.bias)[level]]

  def get_config(self):
    return dict(super().get_config(), level_channels=self.level_channels, units=self.units)


def num_levels_of(feature_mean) -> int:
  """The feature levels a model's statistics are for: [L, C] statistics are of
  L levels (rpn-train --data of several levels), [C] or None of one."""
  if feature_mean is None:
    return 1
  mean = np.asarray(feature_mean)
  return int(mean.shape[0]) if mean.ndim == 2 else 1


def _standardise(channels: int, feature_mean=None, feature_variance=None,
                 name: str = "standardise"):
  """Fixed per-channel (x - mean) / sqrt(variance) layer (identity by default)."""
  mean = np.zeros(channels) if feature_mean is None else np.asarray(feature_mean, np.float64)
  variance = (np.ones(channels) if feature_variance is None
              else np.asarray(feature_variance, np.float64))
  if mean.shape != (channels,) or variance.shape != (channels,):
    raise ValueError(f"feature statistics of shape {mean.shape} / {variance.shape} do not fit "
                     f"{channels} channels")
  # float32 also under a mixed precision policy: a variance of 1e-8 is 0 in float16.
  return keras.layers.Normalization(mean=mean.astype(np.float32),
                                    variance=variance.astype(np.float32), name=name,
                                    dtype="float32")


def feature_statistics(center_features, floor: float = 1e-3):
  """(mean, variance) per channel of feature vectors [N, C]; the variance is
  floored at `floor` times its mean so that near-constant channels are not
  blown up."""
  x = np.asarray(center_features, np.float64)
  mean, variance = x.mean(axis=0), x.var(axis=0)
  variance = np.maximum(variance, floor * variance.mean() + 1e-12)
  return mean, variance


def build_tile_model(channels: int, num_anchors: int = AnchorConfig().num_anchors,
                     hidden: int = DEFAULT_HIDDEN, feature_mean=None, feature_variance=None,
                     logits: bool = False, dropout: float = 0.0, level_channels=None,
                     projection: int = DEFAULT_PROJECTION):
  """Tile [B, 3, 3, C] -> {"scores": [B, A], "deltas": [B, 4A]}.

  Layers rpn_conv (3x3 valid, ReLU), rpn_cls (1x1 linear: objectness logits),
  then a sigmoid, and rpn_bbox (1x1 linear), behind a fixed `standardise`
  layer: identity unless the training statistics feature_mean,
  feature_variance ([C] each) are given. With logits=True (training: the loss
  takes logits) "scores" are the logits, without the sigmoid; the weights are
  the same either way. The standardisation and the heads compute in float32
  under a mixed precision policy. dropout > 0 adds a Dropout layer
  (rpn_dropout, active in training only) on rpn_conv's output; it holds no
  weights, so the weight files are the same with and without it.

  Statistics of several feature levels (feature_mean, feature_variance [L, C])
  make a model of inputs {"tile": [B, 3, 3, C], "level": int32 [B]}: one head
  for every level, behind each level's own standardisation (LevelStandardise).
  Levels of different channel counts (`level_channels`, finest first; C their
  most, the tiles padded with zero channels) add each level's own 1x1
  projection to `projection` channels (LevelProjection, "project") between
  the standardisation and rpn_conv; its weights are in the weight files.
  """
  mixed = bool(level_channels) and len({int(c) for c in level_channels}) > 1
  if mixed and (num_levels_of(feature_mean) != len(level_channels)
                or max(int(c) for c in level_channels) != channels):
    raise ValueError(f"level_channels {list(level_channels)} need statistics of "
                     f"{len(level_channels)} levels and tiles of {max(level_channels)} "
                     f"channels, not {num_levels_of(feature_mean)} and {channels}")
  size = schema.TILE_SIZE
  tile = keras.Input((size, size, channels), name="tile")
  conv, cls, bbox = _layers(hidden, num_anchors, "valid")
  if num_levels_of(feature_mean) > 1:
    mean, variance = np.asarray(feature_mean), np.asarray(feature_variance)
    if mean.shape != variance.shape or mean.shape[1] != channels:
      raise ValueError(f"feature statistics of shape {mean.shape} / {variance.shape} do not "
                       f"fit {channels} channels")
    level = keras.Input((), dtype="int32", name="level")
    inputs = {"tile": tile, "level": level}
    x = LevelStandardise(mean, variance, name="standardise", dtype="float32")([tile, level])
    if mixed:
      x = LevelProjection(level_channels, projection, name="project")([x, level])
    x = conv(x)
  else:
    inputs = tile
    x = conv(_standardise(channels, feature_mean, feature_variance)(tile))
  if dropout:
    x = keras.layers.Dropout(dropout, name="rpn_dropout")(x)
  objectness = _objectness(logits)(cls(x))
  scores = keras.layers.Reshape((num_anchors,), name="scores", dtype="float32")(objectness)
  # An identity on the box branch too keeps both branches equally deep, so that
  # the layers keep the order of the weight files of 0.3.0 and earlier (whose
  # rpn_cls held the sigmoid); Keras matches layers to a file by their order.
  box = keras.layers.Identity(name="box_deltas", dtype="float32")(bbox(x))
  deltas = keras.layers.Reshape((4 * num_anchors,), name="deltas", dtype="float32")(box)
  return keras.Model(inputs, {"scores": scores, "deltas": deltas}, name="rpn_tile")


def _level_statistics(tile_model, level: int):
  """(mean, variance) [C] of feature level `level` of the tile model's standardisation."""
  norm = {layer.name: layer for layer in tile_model.layers}["standardise"]
  if isinstance(norm, LevelStandardise):
    return norm.mean[level], norm.variance[level]
  if level:
    raise ValueError(f"level {level}: the RPN was trained on one feature level")
  return norm.input_mean, norm.input_variance


def _projection(tile_model):
  """The tile model's LevelProjection, or None (levels of the same channels)."""
  return {layer.name: layer for layer in tile_model.layers}.get("project")


def level_channels_of_model(tile_model, channels: int) -> list:
  """Each feature level's C, finest first: the projection's, else `channels` each."""
  projection = _projection(tile_model)
  if projection is not None:
    return list(projection.level_channels)
  return [channels] * num_levels_of_model(tile_model)


def num_levels_of_model(tile_model) -> int:
  """The feature levels a tile model was built for (1 unless it has LevelStandardise)."""
  norm = {layer.name: layer for layer in tile_model.layers}["standardise"]
  return len(norm.mean) if isinstance(norm, LevelStandardise) else 1


def tile_channels(tile_model) -> int:
  """C of the tile model's tile input [B, 3, 3, C]."""
  inputs = tile_model.inputs
  tile = next((x for x in inputs if x.name == "tile"), inputs[0])
  return int(tile.shape[-1])


def _full_head(tile_model, channels: int, levels):
  """Keras inputs and outputs of the fully convolutional head over the feature
  maps of `levels`: one shared rpn_conv/rpn_cls/rpn_bbox, with the tile
  model's weights, behind each level's own standardisation (and, for levels
  of different channel counts, its own 1x1 projection, a Conv2D "project"
  with the rows of the level's channels). Built-in layers only, so that a
  saved model loads without this project's code. One level:
  ([feature_map], [{"scores", "deltas"}]); several: feature_map_L, scores_L, deltas_L."""
  source = {layer.name: layer for layer in tile_model.layers}
  conv, cls, bbox = _layers(source["rpn_conv"].filters, source["rpn_cls"].filters, "valid")
  projection = _projection(tile_model)
  per_level = level_channels_of_model(tile_model, channels)
  inputs, outputs, projected = [], {}, []
  for level in levels:
    suffix = "" if len(levels) == 1 else f"_{level}"
    level_channels = per_level[level]
    feature_map = keras.Input((None, None, level_channels), name="feature_map" + suffix)
    padded = keras.layers.ZeroPadding2D(1, name="pad" + suffix)(feature_map)
    mean, variance = _level_statistics(tile_model, level)
    x = _standardise(level_channels, np.asarray(mean)[:level_channels],
                     np.asarray(variance)[:level_channels], "standardise" + suffix)(padded)
    if projection is not None:
      project = keras.layers.Conv2D(projection.units, 1, name="project" + suffix,
                                    dtype="float32")
      x = project(x)
      projected.append((project, projection.level_weights(level)))
    x = conv(x)
    objectness = keras.layers.Activation("sigmoid", name="objectness" + suffix,
                                         dtype="float32")
    inputs.append(feature_map)
    outputs["scores" + suffix] = objectness(cls(x))
    outputs["deltas" + suffix] = bbox(x)
  for layer in (conv, cls, bbox):
    layer.set_weights(source[layer.name].get_weights())
  for project, weights in projected:
    project.set_weights(weights)
  return inputs, outputs


def build_inference_model(tile_model, channels: int, level: int = 0):
  """Feature map [B, Hf, Wf, C] -> {"scores": [B, Hf, Wf, A], "deltas": [B, Hf, Wf, 4A]},
  with the tile model's weights; for a model of several levels, the one of
  feature level `level` (its standardisation, the shared head)."""
  inputs, outputs = _full_head(tile_model, channels, [level])
  return keras.Model(inputs[0], outputs, name="rpn_full")


def inference_models(tile_model, channels: int) -> list:
  """build_inference_model of every feature level of the tile model, finest first."""
  return [build_inference_model(tile_model, channels, level)
          for level in range(num_levels_of_model(tile_model))]


def build_keras_model(tile_model, channels: int):
  """The inference model of every level in one Keras model, the one saved as
  JOB/rpn.keras. One level: build_inference_model's model (input
  "feature_map", outputs "scores", "deltas"). L levels, finest first: inputs
  feature_map_0 .. feature_map_{L-1} (each level's own map of one image) and
  outputs scores_l [B, Hl, Wl, A], deltas_l [B, Hl, Wl, 4A] for each level l."""
  levels = list(range(num_levels_of_model(tile_model)))
  inputs, outputs = _full_head(tile_model, channels, levels)
  return keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs, name="rpn_full")


def save_rpn(job_dir: str, tile_model, manifest: manifest_lib.Manifest,
             train_config: dict) -> None:
  """Writes JOB/rpn.weights.h5, JOB/rpn.keras (build_keras_model), JOB/manifest.json
  (verbatim) and JOB/train_config.json."""
  storage.makedirs(job_dir)
  with tempfile.TemporaryDirectory() as tmp:
    for name, save in ((job.WEIGHTS_NAME, tile_model.save_weights),
                       (job.KERAS_NAME, build_keras_model(tile_model,
                                                          tile_channels(tile_model)).save)):
      local = os.path.join(tmp, name)
      save(local)
      with open(local, "rb") as f:
        storage.write_bytes(storage.join(job_dir, name), f.read())
  for name, content in ((MANIFEST_NAME, manifest.to_json()),
                        (job.TRAIN_CONFIG_NAME, train_config)):
    storage.write_json(storage.join(job_dir, name), content)


def save_untrained_rpn(job_dir: str, manifest: manifest_lib.Manifest,
                       train_config: dict) -> None:
  """Saves an RPN with freshly initialised weights, built as `train_config` says
  (hidden filters, feature statistics): the baseline to compare a trained one with."""
  tile_model = build_tile_model(
      manifest.feature_channels, manifest.num_anchors,
      int(train_config.get("hidden", DEFAULT_HIDDEN)), train_config.get("feature_mean"),
      train_config.get("feature_variance"), level_channels=manifest.level_channels,
      projection=int(train_config.get("projection", DEFAULT_PROJECTION)))
  save_rpn(job_dir, tile_model, manifest, dict(train_config, epochs=0, epochs_run=[]))


def load_rpn(job_dir: str) -> Tuple[object, object, manifest_lib.Manifest, dict]:
  """(tile_model, inference_model, manifest, train_config) of a job dir."""
  lacking = job.missing(job_dir)
  if lacking:
    raise FileNotFoundError(f"{job.path(job_dir, lacking[0])}: missing; {job_dir} is not the "
                            f"job dir of a finished rpn-train run")
  paths = {name: job.path(job_dir, name) for name in job.FILES}
  manifest = manifest_lib.Manifest.read(paths[MANIFEST_NAME])
  train_config = storage.read_json(paths[job.TRAIN_CONFIG_NAME])
  channels = manifest.feature_channels
  tile_model = build_tile_model(channels, manifest.num_anchors,
                                int(train_config.get("hidden", DEFAULT_HIDDEN)),
                                train_config.get("feature_mean"),
                                train_config.get("feature_variance"),
                                level_channels=manifest.level_channels,
                                projection=int(train_config.get("projection",
                                                                DEFAULT_PROJECTION)))
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, job.WEIGHTS_NAME)
    with open(local, "wb") as f:
      f.write(storage.read_bytes(paths[job.WEIGHTS_NAME]))
    try:
      tile_model.load_weights(local)
    except Exception as e:
      raise ValueError(f"{paths[job.WEIGHTS_NAME]}: does not fit an RPN for "
                       f"{channels}-channel features ({type(e).__name__}: {e})") from e
  return tile_model, build_inference_model(tile_model, channels), manifest, train_config
