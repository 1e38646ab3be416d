"""FeatureExtractor: a frame (uint8 [H, W, 3]) -> feature map (float32 [Hf, Wf, C]).

One tf.function with a size-agnostic input signature serves every image size;
`set_threads` / `intra_op_threads` cap and report TensorFlow's intra-op
threads (the manifest's backbone_threads). TensorFlow is imported lazily, so
Beam DoFns that hold a factory of extractors pickle cheaply.
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Tuple

import numpy as np

from pipeline.model import backbone as backbone_lib
from pipeline.model import layers, registry


class FeatureExtractor:
  """Image (uint8 [H, W, 3]) -> feature map (float32 [Hf, Wf, C]).

  One `tf.function` with a size-agnostic input signature serves every image
  size: the graph is traced once, not once per new size (Keras `predict`
  re-traces for every new shape, which costs seconds per ILSVRC image size).
  feature_layer: None or "" for the backbone's final output, else the layer
  whose output is the feature map (build_backbone; FeatureLayerError if bad).
  feature_layers: several layers, finest first (layers.check_feature_levels):
  a call then returns a list of maps, one per level, in that order.
  """

  def __init__(self, backbone: str = "InceptionResNetV2", weights: str = "imagenet",
               seed: int = 0, threads: Optional[int] = None,
               feature_layer: Optional[str] = None, feature_layers=()):
    import importlib

    import keras  # lazy: see the module doc
    import tensorflow as tf  # lazy: see the module doc
    if threads:
      set_threads(threads)
    # What computes the features (the manifest's backbone_threads): the cap
    # set here, or TensorFlow's own when it had started already.
    self.threads = intra_op_threads()
    self.spec = registry.backbone_spec(backbone)
    self.feature_layers = tuple(feature_layers) if len(feature_layers) > 1 else ()
    self.feature_layer = self.feature_layers[0] if self.feature_layers else feature_layer or None
    self.model = backbone_lib.build_backbone(backbone, weights, seed, self.feature_layer,
                                             self.feature_layers)
    self.model.trainable = False
    # cached by the build
    self.layer_info = layers.check_feature_layer(backbone, self.feature_layer)
    self.grid = layers.FeatureGrid(backbone, self.feature_layer)
    if self.spec.preprocess_module:
      preprocess_input = importlib.import_module(
          f"keras.applications.{self.spec.preprocess_module}").preprocess_input
    else:
      def preprocess_input(x):
        return x / 127.5 - 1.0
    self.traces = 0

    def forward(images):
      self.traces += 1  # Python side effect: runs once per trace only
      x = preprocess_input(tf.cast(images, tf.float32))
      return self.model(x, training=False)

    self._forward = tf.function(
        forward, input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
    del keras

  @property
  def channels(self) -> int:
    """C of the feature map: the chosen layer's, or the backbone's final one."""
    return self.layer_info.channels if self.feature_layer else self.spec.channels

  @property
  def min_input_side(self) -> int:
    return self.spec.min_input_side

  def __call__(self, image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
      raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    if min(image.shape[:2]) < self.min_input_side:
      raise ValueError(
          f"image {image.shape[1]}x{image.shape[0]} is smaller than {self.min_input_side} px, "
          f"the least the backbone accepts: pad it first (prepare_image)")
    outputs = self._forward(image[np.newaxis])
    if self.feature_layers:
      return [output.numpy()[0] for output in outputs]
    return outputs.numpy()[0]


def set_threads(threads: int) -> bool:
  """Caps TensorFlow's threads in this process (before TF starts its runtime:
  in a fresh worker process, at setup). Returns whether it took effect."""
  import tensorflow as tf  # lazy: see the module doc
  try:
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    return True
  except RuntimeError:  # TF's runtime already started in this process
    logging.getLogger(__name__).warning(
        "TensorFlow already started in this process: --backbone_threads %d not applied", threads)
    return False


def intra_op_threads() -> int:
  """The intra-op threads TensorFlow runs this process's ops with: the cap
  set by set_threads, else TF_NUM_INTRAOP_THREADS, else (TensorFlow's
  default) the CPUs this process may run on."""
  import tensorflow as tf  # lazy: see the module doc
  configured = tf.config.threading.get_intra_op_parallelism_threads()
  if configured > 0:
    return configured
  from_env = os.environ.get("TF_NUM_INTRAOP_THREADS", "")
  if from_env.isdigit() and int(from_env) > 0:
    return int(from_env)
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def feature_shape(extractor_or_model, height: int, width: int) -> Tuple[int, int]:
  """Feature-map (Hf, Wf) for an image of the given size (runs the net once;
  feature_size gives the same without a forward pass)."""
  fmap = extractor_or_model(np.zeros((height, width, 3), np.uint8))
  return fmap.shape[0], fmap.shape[1]
