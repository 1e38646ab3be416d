"""The frozen Keras backbone: built from its architecture plus weights.

`build_backbone` gives the Keras application without its top, with ImageNet
weights (downloaded by Keras), random weights (--weights none, seeded), or a
weights file (local or any filesystem TensorFlow reads), cut at a feature
layer if one is given. The registry of backbones is model.registry, the
feature layers' shape arithmetic model.layers, the forward pass
model.extractor. `check_manifest` checks that a manifest's features are what
its backbone computes.

Framework code only: no Beam here. TensorFlow is imported lazily so that
importing this module stays cheap (Beam pickles DoFns that reference it).
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Optional

from pipeline.io import manifest as manifest_lib
from pipeline.io.manifest import ManifestError
from pipeline.model import layers, registry


class WeightsUnavailableError(RuntimeError):
  """The requested weights cannot be loaded (no network, bad file)."""


def _local_copy(path: str) -> str:
  """A local file with the content of `path` (gs://, s3:// ... or local)."""
  if os.path.exists(path):
    return path
  import tensorflow as tf  # lazy: see the module doc
  if not tf.io.gfile.exists(path):
    raise WeightsUnavailableError(f"weights file not found: {path}")
  suffix = ".weights.h5" if path.endswith(".weights.h5") else os.path.splitext(path)[1]
  fd, local = tempfile.mkstemp(suffix=suffix)
  os.close(fd)
  tf.io.gfile.copy(path, local, overwrite=True)
  return local


def build_backbone(name: str = "InceptionResNetV2", weights: str = "imagenet", seed: int = 0,
                   feature_layer: Optional[str] = None, feature_layers=()):
  """The Keras application `name` without its top, for any input size.

  weights: "imagenet" (downloaded by Keras), "none" (random init, seeded by
  `seed` so that every worker builds the same net), or a path to a weights
  file (.h5 / .weights.h5, local or any filesystem TensorFlow reads).
  feature_layer: None or "" for the net's final output; else the name of a
  layer of the application: the model returned then ends at that layer's
  output (a keras.Model on the full net's input, built after its weights are
  loaded, so that weights load exactly as for the full net). A bad layer
  raises FeatureLayerError (see check_feature_layer); the layer's LayerInfo
  is cached on the way, so that check_feature_layer and feature_size need no
  second build in this process.
  feature_layers: several layers (finest first; layers.check_feature_levels):
  the model returned then has one output per layer, in that order.
  """
  import keras  # lazy: see the module doc
  spec = registry.backbone_spec(name)
  if name == registry.TINY_BACKBONE:
    if weights != "none":
      raise ValueError(f"{registry.TINY_BACKBONE} has no pretrained weights: use --weights none")
    keras.utils.set_random_seed(seed)
    return _truncate(name, registry._architecture(name), feature_layer, feature_layers)
  if weights == "imagenet":
    constructor = getattr(keras.applications, spec.constructor)
    try:
      model = constructor(include_top=False, weights="imagenet", input_shape=(None, None, 3))
    except Exception as e:  # network errors come in many types (URLError, OSError, ...)
      raise WeightsUnavailableError(
          f"could not get the ImageNet weights of {name} through Keras ({type(e).__name__}: {e}). "
          f"On a machine with network access, run once: python -c \"import keras; "
          f"keras.applications.{spec.constructor}(include_top=False, weights='imagenet')\" "
          f"(it caches the file under ~/.keras/models/), then pass --weights PATH_TO_THAT_FILE; "
          f"or pass --weights none for random weights (tests, offline demo).") from e
    return _truncate(name, model, feature_layer, feature_layers)
  keras.utils.set_random_seed(seed)
  model = registry._architecture(name)
  layers._remember(name, model, feature_layer)  # a bad layer fails before the weights load
  if weights not in ("none", "", None):
    local = _local_copy(weights)
    try:
      model.load_weights(local, skip_mismatch=False)
    except Exception as e:
      raise WeightsUnavailableError(
          f"could not load weights file {weights} into {name} without top "
          f"({type(e).__name__}: {e})") from e
  return _truncate(name, model, feature_layer, feature_layers)


def _truncate(name: str, model, feature_layer: Optional[str], feature_layers=()):
  """`model`, or the model from its input to `feature_layer`'s output (to the
  outputs of every one of `feature_layers`, in order, when there are several)."""
  if len(feature_layers) > 1:
    import keras  # lazy: see the module doc
    infos = [layers._remember(name, model, layer) for layer in feature_layers]
    return keras.Model(model.inputs[0], [model.get_layer(i.name).output for i in infos],
                       name=f"{model.name}_levels")
  info = layers._remember(name, model, feature_layer)
  if not feature_layer or info.name == layers._output_layer(model).name:
    return model
  import keras  # lazy: see the module doc
  return keras.Model(model.inputs[0], model.get_layer(info.name).output,
                     name=f"{model.name}_{info.name}")


def check_manifest(manifest: manifest_lib.Manifest, path: str) -> None:
  """Checks that the manifest's features are what its backbone computes.

  Needed where the backbone is run again on new images (rpn-propose, rpn-draw).
  """
  try:
    spec = registry.backbone_spec(manifest.backbone)
  except ValueError as e:
    raise ManifestError(f"{path}: {e}") from None
  if manifest.min_input_side is None:
    raise ManifestError(f"{path}: missing keys ['min_input_side']")
  for layer, expected in zip(manifest.levels, manifest.channels_per_level, strict=True):
    try:
      channels = layers.feature_channels(manifest.backbone, layer)
    except ValueError as e:
      raise ManifestError(f"{path}: {e}") from None
    if expected != channels:
      where = f" layer {layer}" if layer else ""
      key = "level_channels" if manifest.level_channels else "feature_channels"
      raise ManifestError(f"{path}: {key} {expected} does not match backbone "
                          f"{manifest.backbone}{where} ({channels} channels)")
  if int(manifest.min_input_side) < spec.min_input_side:
    raise ManifestError(f"{path}: min_input_side {manifest.min_input_side} is below the "
                        f"{spec.min_input_side} px backbone {manifest.backbone} accepts")
  if manifest.stride_mode != "ratio":
    raise ManifestError(f"{path}: stride_mode {manifest.stride_mode!r} is not supported "
                        f"(only 'ratio')")


logging.getLogger(__name__).addHandler(logging.NullHandler())
