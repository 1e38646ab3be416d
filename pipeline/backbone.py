"""The frozen Keras backbone: building it, loading weights, computing feature maps.

Shape shorthand:
  H, W   image height and width in pixels (the frame fed to the backbone)
  Hf, Wf feature-map height and width
  C      feature channels (1536 for InceptionResNetV2)

Framework code only: no Beam here. TensorFlow is imported lazily so that
importing this module stays cheap (Beam pickles DoFns that reference it).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from typing import Optional, Tuple

import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
  """What the pipeline needs to know of a Keras application."""
  constructor: str  # attribute of keras.applications
  preprocess_module: str  # keras.applications.<module>.preprocess_input
  min_input_side: int  # smallest image side the net accepts (valid padding)
  channels: int


TINY_BACKBONE = "TinyTestNet"

BACKBONES = {
    "InceptionResNetV2": BackboneSpec("InceptionResNetV2", "inception_resnet_v2", 75, 1536),
    "InceptionV3": BackboneSpec("InceptionV3", "inception_v3", 75, 2048),
    "Xception": BackboneSpec("Xception", "xception", 71, 2048),
    "ResNet50": BackboneSpec("ResNet50", "resnet50", 32, 2048),
    "VGG16": BackboneSpec("VGG16", "vgg16", 32, 512),
    "MobileNetV2": BackboneSpec("MobileNetV2", "mobilenet_v2", 32, 1280),
    # Two strided convolutions (stride 32, 16 channels): not a real feature
    # extractor, but the same Keras code path in milliseconds, for tests and
    # for benchmarks of the pipeline's own overhead.
    TINY_BACKBONE: BackboneSpec(TINY_BACKBONE, "", 32, 16),
}


def backbone_spec(name: str) -> BackboneSpec:
  try:
    return BACKBONES[name]
  except KeyError:
    raise ValueError(
        f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None


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


def build_backbone(name: str = "InceptionResNetV2", weights: str = "imagenet", seed: int = 0):
  """The Keras application `name` without its top, for any input size.

  weights: "imagenet" (downloaded by Keras), "none" (random init, seeded by
  `seed` so that every worker builds the same net), or a path to a weights
  file (.h5 / .weights.h5, local or any filesystem TensorFlow reads).
  """
  import keras  # lazy: see the module doc
  spec = backbone_spec(name)
  if name == TINY_BACKBONE:
    if weights != "none":
      raise ValueError(f"{TINY_BACKBONE} has no pretrained weights: use --weights none")
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((None, None, 3)),
        keras.layers.Conv2D(spec.channels, 8, strides=8, activation="relu"),
        keras.layers.Conv2D(spec.channels, 4, strides=4, activation="relu"),
    ], name=TINY_BACKBONE)
  constructor = getattr(keras.applications, spec.constructor)
  if weights == "imagenet":
    try:
      return constructor(include_top=False, weights="imagenet", input_shape=(None, None, 3))
    except Exception as e:  # network errors come in many types (URLError, OSError, ...)
      raise WeightsUnavailableError(
          f"could not get the ImageNet weights of {name} through Keras ({type(e).__name__}: {e}). "
          f"On a machine with network access, run once: python -c \"import keras; "
          f"keras.applications.{spec.constructor}(include_top=False, weights='imagenet')\" "
          f"(it caches the file under ~/.keras/models/), then pass --weights PATH_TO_THAT_FILE; "
          f"or pass --weights none for random weights (tests, offline demo).") from e
  keras.utils.set_random_seed(seed)
  model = constructor(include_top=False, weights=None, input_shape=(None, None, 3))
  if weights not in ("none", "", None):
    local = _local_copy(weights)
    try:
      model.load_weights(local, skip_mismatch=False)
    except Exception as e:
      raise WeightsUnavailableError(
          f"could not load weights file {weights} into {name} without top "
          f"({type(e).__name__}: {e})") from e
  return model


class FeatureExtractor:
  """Image (uint8 [H, W, 3]) -> feature map (float32 [Hf, Wf, C]).

  One `tf.function` with a size-agnostic input signature serves every image
  size: the graph is traced once, not once per new size (Keras `predict`
  re-traces for every new shape, which costs seconds per ILSVRC image size).
  """

  def __init__(self, backbone: str = "InceptionResNetV2", weights: str = "imagenet",
               seed: int = 0, threads: Optional[int] = None):
    import importlib

    import keras  # lazy: see the module doc
    import tensorflow as tf  # lazy: see the module doc
    if threads:
      set_threads(threads)
    self.spec = backbone_spec(backbone)
    self.model = build_backbone(backbone, weights, seed)
    self.model.trainable = False
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
    return self.spec.channels

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
    return self._forward(image[np.newaxis]).numpy()[0]


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


def prepare_image(image: np.ndarray, boxes: np.ndarray, min_input_side: int,
                  min_side: Optional[int] = None, max_side: Optional[int] = None
                  ) -> Tuple[np.ndarray, np.ndarray, float]:
  """The frame fed to the backbone: optional resize, then zero padding.

  Resize (off unless min_side or max_side is set): scale so that the shorter
  side is min_side, but the longer side at most max_side. Then an image with a
  side under `min_input_side` is padded with black pixels on the bottom and
  right, so that box coordinates do not move; the padded image is the frame
  (its width and height are the ones recorded). Returns (image, boxes, scale).
  """
  height, width = image.shape[:2]
  scale = 1.0
  if min_side or max_side:
    scale = (min_side / min(height, width)) if min_side else 1.0
    if max_side and max(height, width) * scale > max_side:
      scale = max_side / max(height, width)
    if scale != 1.0:
      new_w = max(1, int(round(width * scale)))
      new_h = max(1, int(round(height * scale)))
      image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
      boxes = boxes * np.array([new_w / width, new_h / height] * 2)
      height, width = new_h, new_w
  pad_h = max(0, min_input_side - height)
  pad_w = max(0, min_input_side - width)
  if pad_h or pad_w:
    image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
  return image, boxes, scale


def feature_shape(extractor_or_model, height: int, width: int) -> Tuple[int, int]:
  """Feature-map (Hf, Wf) for an image of the given size (runs the net once)."""
  fmap = extractor_or_model(np.zeros((height, width, 3), np.uint8))
  return fmap.shape[0], fmap.shape[1]


logging.getLogger(__name__).addHandler(logging.NullHandler())
