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
from trainer.settings import DEFAULT_HIDDEN


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


def num_levels_of(feature_mean) -> int:
  """The feature levels a model's statistics are for: [L, C] statistics are of
  L levels (rpn-train --data of several levels), [C] or None of one."""
  if feature_mean is None:
    return 1
  mean = np.asarray(feature_mean)
  return int(mean.shape[0]) if mean.ndim == 2 else 1


def _standardise(channels: int, feature_mean=None, feature_variance=None):
  """Fixed per-channel (x - mean) / sqrt(variance) layer (identity by default)."""
  mean = np.zeros(channels) if feature_mean is None else np.asarray(feature_mean, np.float64)
  variance = (np.ones(channels) if feature_variance is None
              else np.asarray(feature_variance, np.float64))
  if mean.shape != (channels,) or variance.shape != (channels,):
    raise ValueError(f"feature statistics of shape {mean.shape} / {variance.shape} do not fit "
                     f"{channels} channels")
  # float32 also under a mixed precision policy: a variance of 1e-8 is 0 in float16.
  return keras.layers.Normalization(mean=mean.astype(np.float32),
                                    variance=variance.astype(np.float32), name="standardise",
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
                     logits: bool = False, dropout: float = 0.0):
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
  """
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
    x = conv(LevelStandardise(mean, variance, name="standardise", dtype="float32")(
        [tile, level]))
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


def build_inference_model(tile_model, channels: int, level: int = 0):
  """Feature map [B, Hf, Wf, C] -> {"scores": [B, Hf, Wf, A], "deltas": [B, Hf, Wf, 4A]},
  with the tile model's weights; for a model of several levels, the one of
  feature level `level` (its standardisation, the shared head)."""
  source = {layer.name: layer for layer in tile_model.layers}
  hidden = source["rpn_conv"].filters
  num_anchors = source["rpn_cls"].filters
  norm = source["standardise"]
  if isinstance(norm, LevelStandardise):
    mean, variance = norm.mean[level], norm.variance[level]
  elif level:
    raise ValueError(f"level {level}: the RPN was trained on one feature level")
  else:
    mean, variance = norm.input_mean, norm.input_variance
  feature_map = keras.Input((None, None, channels), name="feature_map")
  conv, cls, bbox = _layers(hidden, num_anchors, "valid")
  padded = keras.layers.ZeroPadding2D(1)(feature_map)
  x = conv(_standardise(channels, mean, variance)(padded))
  model = keras.Model(feature_map, {"scores": _objectness()(cls(x)), "deltas": bbox(x)},
                      name="rpn_full")
  for layer in (conv, cls, bbox):
    layer.set_weights(source[layer.name].get_weights())
  return model


def inference_models(tile_model, channels: int) -> list:
  """build_inference_model of every feature level of the tile model, finest first."""
  norm = {layer.name: layer for layer in tile_model.layers}["standardise"]
  levels = len(norm.mean) if isinstance(norm, LevelStandardise) else 1
  return [build_inference_model(tile_model, channels, level) for level in range(levels)]


def save_rpn(job_dir: str, tile_model, manifest: manifest_lib.Manifest,
             train_config: dict) -> None:
  """Writes JOB/rpn.weights.h5, JOB/manifest.json (verbatim) and JOB/train_config.json."""
  storage.makedirs(job_dir)
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, job.WEIGHTS_NAME)
    tile_model.save_weights(local)
    with open(local, "rb") as f:
      storage.write_bytes(storage.join(job_dir, job.WEIGHTS_NAME), f.read())
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
      train_config.get("feature_variance"))
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
                                train_config.get("feature_variance"))
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
