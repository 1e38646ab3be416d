"""The frozen Keras backbone: building it, loading weights, computing feature maps.

Shape shorthand:
  H, W   image height and width in pixels (the frame fed to the backbone)
  Hf, Wf feature-map height and width
  C      feature channels (1536 for InceptionResNetV2)

The feature map is the backbone's final output, or with a feature layer
(--feature_layer) the output of that layer of the Keras application: e.g.
STRIDE16_LAYERS, the stride-16 maps Faster R-CNN uses. feature_size gives
(Hf, Wf) for an H x W frame from the network's shape arithmetic alone (no
forward pass), cheap enough to call once per image.

Framework code only: no Beam here. TensorFlow is imported lazily so that
importing this module stays cheap (Beam pickles DoFns that reference it).
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import random
import re
import tempfile
import threading
from typing import Dict, NamedTuple, Optional, Tuple

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
    # Two strided convolutions, "conv1" (stride 8) and "conv2" (stride 32, the
    # output), 16 channels each: not a real feature extractor, but the same
    # Keras code path in milliseconds, for tests and for benchmarks of the
    # pipeline's own overhead.
    TINY_BACKBONE: BackboneSpec(TINY_BACKBONE, "", 32, 16),
}

# The stride-16 feature layer of a backbone (--feature_layer), for the RPN of
# Faster R-CNN: the deepest layer whose path from the input multiplies the
# strides to 16 (tests/pipeline/test_feature_layer.py checks that).
#   VGG16              block5_conv3: conv5_3 of the Faster R-CNN paper, 512 channels
#   ResNet50           conv4_block6_out: C4 of detectron2's R50-C4, 1024 channels
#   InceptionResNetV2  block17_20_ac: the last 17 x 17 block at 299 px (the
#                      output of the Inception-ResNet-B stage, before the
#                      stride-2 reduction mixed_7a), 1088 channels; valid
#                      padding makes the stride a little over 16 (17.1 at 512 px)
# TinyTestNet has no stride-16 layer (only conv1, stride 8, and conv2, stride 32).
STRIDE16_LAYERS = {
    "VGG16": "block5_conv3",
    "ResNet50": "conv4_block6_out",
    "InceptionResNetV2": "block17_20_ac",
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


def _architecture(name: str):
  """The Keras application `name` without its top and with random weights, for
  any input size ([B, None, None, 3]). Seeds nothing: callers that need a
  reproducible init call keras.utils.set_random_seed first."""
  import keras  # lazy: see the module doc
  spec = backbone_spec(name)
  if name == TINY_BACKBONE:
    return keras.Sequential([
        keras.Input((None, None, 3)),
        keras.layers.Conv2D(spec.channels, 8, strides=8, activation="relu", name="conv1"),
        keras.layers.Conv2D(spec.channels, 4, strides=4, activation="relu", name="conv2"),
    ], name=TINY_BACKBONE)
  constructor = getattr(keras.applications, spec.constructor)
  return constructor(include_top=False, weights=None, input_shape=(None, None, 3))


def build_backbone(name: str = "InceptionResNetV2", weights: str = "imagenet", seed: int = 0,
                   feature_layer: Optional[str] = None):
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
  """
  import keras  # lazy: see the module doc
  spec = backbone_spec(name)
  if name == TINY_BACKBONE:
    if weights != "none":
      raise ValueError(f"{TINY_BACKBONE} has no pretrained weights: use --weights none")
    keras.utils.set_random_seed(seed)
    return _truncate(name, _architecture(name), feature_layer)
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
    return _truncate(name, model, feature_layer)
  keras.utils.set_random_seed(seed)
  model = _architecture(name)
  _remember(name, model, feature_layer)  # a bad layer fails before the weights load
  if weights not in ("none", "", None):
    local = _local_copy(weights)
    try:
      model.load_weights(local, skip_mismatch=False)
    except Exception as e:
      raise WeightsUnavailableError(
          f"could not load weights file {weights} into {name} without top "
          f"({type(e).__name__}: {e})") from e
  return _truncate(name, model, feature_layer)


def _truncate(name: str, model, feature_layer: Optional[str]):
  """`model`, or the model from its input to `feature_layer`'s output."""
  info = _remember(name, model, feature_layer)
  if not feature_layer or info.name == _output_layer(model).name:
    return model
  import keras  # lazy: see the module doc
  return keras.Model(model.inputs[0], model.get_layer(info.name).output,
                     name=f"{model.name}_{info.name}")


# ---------------------------------------------------------------------------
# Feature layers: validation, channels, shape arithmetic

STRIDE_PROBE = 512  # px: the input side at which LayerInfo.stride is measured
MIN_STRIDE = 4  # the least stride a feature layer may have (anchors, map size)


class FeatureLayerError(ValueError):
  """A --feature_layer the backbone cannot give a feature map from (one-line message)."""


@dataclasses.dataclass(frozen=True)
class LayerInfo:
  """A feature layer of a backbone, from the Keras graph (weights play no part).

  name: the layer (for feature_layer None: the layer of the final output).
  channels: C of its output [B, Hf, Wf, C].
  stride: STRIDE_PROBE / Hf (and / Wf; the smaller) for a 512 x 512 input, in
    px per feature cell: about nominal_stride, a little more where valid
    padding trims the map (InceptionResNetV2's final output: 36.6).
  nominal_stride: the product of the strides on the path input -> layer.
  size_at_probe: (Hf, Wf) for a 512 x 512 input.
  min_side: the least image side (px) for which the map is not empty.
  axes: the shape arithmetic, per axis (H, W): a tuple of steps (pad, k, s),
    each n -> (n + pad - k) // s + 1, defined while n + pad - k >= 0 (see
    FeatureGrid). A convolution or pooling with valid padding is (0, k_eff, s)
    with k_eff = dilation * (kernel - 1) + 1; with same padding (0, 1, s), that
    is ceil(n / s); ZeroPadding2D (p, 1, 1); Cropping2D (-c, 1, 1).
  """
  backbone: str
  name: str
  channels: int
  stride: float
  nominal_stride: int
  size_at_probe: Tuple[int, int]
  min_side: int
  axes: Tuple[Tuple[Tuple[int, int, int], ...], Tuple[Tuple[int, int, int], ...]] = (
      dataclasses.field(repr=False))


_LAYER_INFO: Dict[Tuple[str, Optional[str]], LayerInfo] = {}  # (backbone, layer or None)
_LAYER_INFO_LOCK = threading.RLock()


def check_feature_layer(backbone_name: str, feature_layer: Optional[str] = None) -> LayerInfo:
  """The LayerInfo of `feature_layer` of the backbone (None or "": its final
  output), or FeatureLayerError (a ValueError, one line) when the layer does not
  exist (the message lists the nearest names), its output is not a 4-D map
  [B, H, W, C], or its stride is under MIN_STRIDE. ValueError for an unknown
  backbone.

  Needs no weights: builds the architecture with random weights (InceptionResNetV2:
  about 2 s; the state of `random`, which Keras' initializers draw seeds from,
  is restored after), once per (backbone, layer) in a process; build_backbone
  fills the same cache from the net it builds.
  """
  backbone_spec(backbone_name)
  key = (backbone_name, feature_layer or None)
  info = _LAYER_INFO.get(key)
  if info is not None:
    return info
  with _LAYER_INFO_LOCK:  # one build at a time, even with several threads asking
    info = _LAYER_INFO.get(key)
    if info is None:
      state = random.getstate()  # Keras' default initializer seeds come from `random`
      try:
        model = _architecture(backbone_name)
      finally:
        random.setstate(state)
      info = _remember(backbone_name, model, feature_layer)
      del model
  return info


def feature_channels(backbone_name: str, feature_layer: Optional[str] = None) -> int:
  """C of the feature map: the backbone's (spec.channels) for feature_layer None
  or "", else that layer's (check_feature_layer: builds the net once, no weights)."""
  spec = backbone_spec(backbone_name)
  if not feature_layer:
    return spec.channels
  return check_feature_layer(backbone_name, feature_layer).channels


class FeatureGrid:
  """(height, width) of a frame in px -> (Hf, Wf) of the feature map the
  network gives for it, by shape arithmetic: no forward pass, no TensorFlow
  once the per-axis steps are known (LayerInfo.axes; deriving them builds the
  net once per process, see check_feature_layer, unless the grid was pickled
  with them). Each axis is memoised per size: about a microsecond a call.

  Picklable cheaply (Beam DoFns hold one): the state is the names and, once
  known here or in this process's cache, the steps (a few dozen ints).
  Raises ValueError for a size the network maps to an empty map (under
  LayerInfo.min_side; frames padded to spec.min_input_side never are).
  """

  def __init__(self, backbone_name: str, feature_layer: Optional[str] = None):
    backbone_spec(backbone_name)
    self.backbone = backbone_name
    self.feature_layer = feature_layer or None
    self._axes = None
    self._memo = ({}, {})

  @property
  def axes(self):
    if self._axes is None:
      self._axes = check_feature_layer(self.backbone, self.feature_layer).axes
    return self._axes

  def __call__(self, height: int, width: int) -> Tuple[int, int]:
    memo_h, memo_w = self._memo
    hf = memo_h.get(height)
    if hf is None:
      hf = memo_h[height] = self._axis(0, height, "height")
    wf = memo_w.get(width)
    if wf is None:
      wf = memo_w[width] = self._axis(1, width, "width")
    return hf, wf

  def _axis(self, axis: int, n: int, what: str) -> int:
    size = _apply_steps(self.axes[axis], int(n))
    if size < 1:
      layer = self.feature_layer or "final output"
      least = backbone_spec(self.backbone).min_input_side
      raise ValueError(f"a frame {what} of {n} px gives an empty feature map at {self.backbone} "
                       f"{layer}: pad frames to at least {least} px (prepare_image)")
    return size

  def __getstate__(self):
    axes = self._axes
    if axes is None:  # known in this process without a build? then ship it
      info = _LAYER_INFO.get((self.backbone, self.feature_layer))
      axes = info.axes if info is not None else None
    return {"backbone": self.backbone, "feature_layer": self.feature_layer, "axes": axes}

  def __setstate__(self, state):
    self.backbone = state["backbone"]
    self.feature_layer = state["feature_layer"]
    self._axes = state["axes"]
    self._memo = ({}, {})

  def __repr__(self):
    return f"FeatureGrid({self.backbone!r}, {self.feature_layer!r})"


_GRIDS: Dict[Tuple[str, Optional[str]], FeatureGrid] = {}


def feature_size(backbone_name: str, feature_layer: Optional[str], height: int,
                 width: int) -> Tuple[int, int]:
  """(Hf, Wf) of the feature map the backbone gives at `feature_layer` (None or
  "": the final output) for a frame of height x width px; the same as the
  forward pass's, by shape arithmetic (FeatureGrid, one per (backbone, layer)
  in this process). ValueError for a frame the net maps to an empty map."""
  key = (backbone_name, feature_layer or None)
  grid = _GRIDS.get(key)
  if grid is None:
    grid = _GRIDS.setdefault(key, FeatureGrid(backbone_name, feature_layer))
  return grid(height, width)


def _apply_steps(steps, n: int) -> int:
  """n px -> the size after `steps` ((pad, k, s): see LayerInfo); 0 if empty."""
  if n < 1:
    return 0
  for pad, k, s in steps:
    n += pad - k
    if n < 0:
      return 0
    n = n // s + 1
  return n


# Layers that leave H and W as they are (elementwise, per-pixel or merging
# maps of equal size); conv and pooling layers go through _layer_steps.
_SPATIAL_IDENTITY = frozenset({
    "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "BatchNormalization",
    "LayerNormalization", "GroupNormalization", "Normalization", "Rescaling", "Dropout",
    "SpatialDropout2D", "GaussianNoise", "Identity", "Add", "Subtract", "Multiply",
    "Average", "Maximum", "Minimum", "Concatenate",
    "CustomScaleLayer",  # InceptionResNetV2: x + scale * residual
})
_CONV_LAYERS = frozenset({"Conv2D", "DepthwiseConv2D", "SeparableConv2D"})
_POOL_LAYERS = frozenset({"MaxPooling2D", "AveragePooling2D"})


def _layer_steps(layer):
  """The steps (see LayerInfo) of one layer on each axis: ((), ()) for a layer
  that keeps H and W; FeatureLayerError for one whose arithmetic is unknown."""
  kind = type(layer).__name__
  if kind in _SPATIAL_IDENTITY:
    if kind == "Concatenate" and layer.get_config().get("axis") not in (-1, 3):
      raise FeatureLayerError(f"layer {layer.name} concatenates along a spatial axis: its "
                              f"feature-map size is not supported")
    return (), ()
  config = layer.get_config()
  if config.get("data_format", "channels_last") != "channels_last":
    raise FeatureLayerError(f"layer {layer.name} is {config['data_format']}: only "
                            f"channels_last backbones are supported")
  if kind in _CONV_LAYERS or kind in _POOL_LAYERS:
    if kind in _CONV_LAYERS:
      kernel, dilation = config["kernel_size"], config.get("dilation_rate", (1, 1))
    else:
      kernel, dilation = config["pool_size"], (1, 1)
    strides = config["strides"] or kernel
    padding = config["padding"].lower()
    steps = []
    for axis in (0, 1):
      if padding == "valid":
        steps.append((0, dilation[axis] * (kernel[axis] - 1) + 1, strides[axis]))
      elif padding == "same":
        steps.append((0, 1, strides[axis]))
      else:
        raise FeatureLayerError(f"layer {layer.name} has padding {padding!r}: not supported")
    return tuple((step,) if step != (0, 1, 1) else () for step in steps)
  if kind in ("ZeroPadding2D", "Cropping2D"):
    amounts = config["padding" if kind == "ZeroPadding2D" else "cropping"]
    sign = 1 if kind == "ZeroPadding2D" else -1
    return tuple(((sign * sum(amount), 1, 1),) if sum(amount) else () for amount in amounts)
  raise FeatureLayerError(f"layer {layer.name} ({kind}) on the path to the feature layer: its "
                          f"effect on the feature-map size is not known to pipeline.model.backbone")


def _output_layer(model):
  return model.outputs[0]._keras_history.operation


def _path_steps(tensor, memo):
  """The steps (per axis) from the model's input to the Keras tensor `tensor`,
  along first inputs (a layer with several inputs merges maps of one size, so
  any path gives the same arithmetic). memo: {(id(layer), node): steps}."""
  pending = []
  while True:
    layer, node_index, _ = tensor._keras_history
    key = (id(layer), node_index)
    if key in memo:
      steps = memo[key]
      break
    node = layer._inbound_nodes[node_index]
    if type(layer).__name__ == "InputLayer" or not node.input_tensors:
      steps = memo[key] = ((), ())
      break
    pending.append((key, layer))
    tensor = node.input_tensors[0]
  for key, layer in reversed(pending):
    own = _layer_steps(layer)
    steps = memo[key] = (steps[0] + own[0], steps[1] + own[1])
  return steps


def _nominal_stride(steps) -> int:
  stride = 1
  for _, _, s in steps:
    stride *= s
  return stride


def _min_side(steps) -> int:
  n = 1
  while _apply_steps(steps, n) < 1:
    n += 1
  return n


def _layer_info(backbone_name: str, model, feature_layer: Optional[str]) -> LayerInfo:
  """Validates `feature_layer` of `model` (see check_feature_layer)."""
  where = f"--feature_layer {feature_layer}"
  if feature_layer:
    try:
      layer = model.get_layer(feature_layer)
    except ValueError:
      raise FeatureLayerError(
          f"{where}: no such layer in {backbone_name}; "
          f"{_nearest_layers(model, feature_layer)}") from None
    if _generated_name(layer):
      raise FeatureLayerError(
          f"{where}: Keras generated this name in {backbone_name} (it depends on how many "
          f"layers the process made before, so a worker may not have it): choose a named "
          f"layer; {_nearest_layers(model, feature_layer)}")
  else:
    layer = _output_layer(model)
  try:
    output = layer.output
  except (AttributeError, ValueError) as e:  # a shared layer: no single output
    raise FeatureLayerError(f"{where}: layer of {backbone_name} has no single output "
                            f"({' '.join(str(e).split())})") from None
  if isinstance(output, (list, tuple, dict)):
    raise FeatureLayerError(f"{where}: layer of {backbone_name} has {len(output)} outputs, "
                            f"not one 4-D map [B, H, W, C]; choose a convolutional layer")
  if len(output.shape) != 4:
    raise FeatureLayerError(f"{where}: the output of this layer of {backbone_name} has shape "
                            f"{tuple(output.shape)}, not a 4-D map [B, H, W, C]; choose a "
                            f"convolutional layer")
  steps = _path_steps(output, {})
  size = tuple(_apply_steps(axis, STRIDE_PROBE) for axis in steps)
  if min(size) < 1:
    raise FeatureLayerError(f"{where}: {backbone_name} gives an empty map at this layer for "
                            f"a {STRIDE_PROBE} px input")
  stride = STRIDE_PROBE / max(size)
  if stride < MIN_STRIDE:
    raise FeatureLayerError(
        f"{where}: stride {stride:.3g} in {backbone_name} ({STRIDE_PROBE} px input -> "
        f"{size[0]}x{size[1]} map); a feature layer needs a stride of at least {MIN_STRIDE}: "
        f"choose a deeper layer{_for_example(model)}")
  return LayerInfo(backbone_name, layer.name, int(output.shape[-1]), stride,
                   max(_nominal_stride(axis) for axis in steps), size,
                   max(_min_side(axis) for axis in steps), steps)


def layer_info_dict(info: LayerInfo, feature_layer: Optional[str]) -> Dict:
  """A JSON-ready dict of `info`, asked for as `feature_layer` (remember_layer_info)."""
  return dict(dataclasses.asdict(info), feature_layer=feature_layer or None)


def _tuples(value):
  return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def remember_layer_info(info: Dict) -> LayerInfo:
  """Puts a layer_info_dict (e.g. from a child process that built the net) into
  this process's cache, so check_feature_layer and feature_size need no build."""
  fields = {f.name for f in dataclasses.fields(LayerInfo)}
  layer = LayerInfo(**{k: _tuples(v) for k, v in info.items() if k in fields})
  with _LAYER_INFO_LOCK:
    return _LAYER_INFO.setdefault((layer.backbone, info.get("feature_layer") or None), layer)


def _remember(backbone_name: str, model, feature_layer: Optional[str]) -> LayerInfo:
  """_layer_info, from the cache of check_feature_layer or into it."""
  key = (backbone_name, feature_layer or None)
  info = _LAYER_INFO.get(key)
  if info is None:
    info = _LAYER_INFO.setdefault(key, _layer_info(backbone_name, model, feature_layer))
  return info


def _generated_name(layer) -> bool:
  """Whether Keras named the layer after its class (conv2d_811, activation_973):
  such a name changes with the layers made before in the process."""
  snake = re.sub(r"\W+", "", type(layer).__name__)  # keras.src.utils.naming.to_snake_case
  snake = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", snake)
  snake = re.sub("([a-z])([A-Z])", r"\1_\2", snake).lower()
  return re.fullmatch(re.escape(snake) + r"(_\d+)?", layer.name) is not None


def _feature_layers(model):
  """[(layer name, nominal stride)] of the layers that can be feature layers
  (one 4-D output, stride at least MIN_STRIDE, a name not generated by Keras),
  in the model's order."""
  memo, found = {}, []
  for layer in model.layers:
    if _generated_name(layer):
      continue
    try:
      output = layer.output
      if isinstance(output, (list, tuple, dict)) or len(output.shape) != 4:
        continue
      steps = _path_steps(output, memo)
    except (AttributeError, ValueError):
      continue
    size = min(_apply_steps(axis, STRIDE_PROBE) for axis in steps)
    if size >= 1 and STRIDE_PROBE / size >= MIN_STRIDE:
      found.append((layer.name, max(_nominal_stride(axis) for axis in steps)))
  return found


def _deepest_by_stride(model) -> str:
  """'block5_conv3 (stride 16), block5_pool (stride 32)': the deepest feature
  layer of nominal stride 16 and 32 (of the two largest strides, if the model
  has neither)."""
  deepest = {}
  for name, stride in _feature_layers(model):
    deepest[stride] = name
  strides = [s for s in (16, 32) if s in deepest] or sorted(deepest)[-2:]
  return ", ".join(f"{deepest[s]} (stride {s})" for s in strides)


def _nearest_layers(model, name: str, count: int = 5) -> str:
  """The feature layers whose names are nearest `name`, for an error message."""
  candidates = [layer for layer, _ in _feature_layers(model)]
  near = difflib.get_close_matches(name, candidates, n=count, cutoff=0.5)
  if near:
    return "nearest: " + ", ".join(near)
  return "no similar name" + _for_example(model)


def _for_example(model) -> str:
  """', e.g. block5_conv3 (stride 16), block5_pool (stride 32)', or '' if none."""
  deepest = _deepest_by_stride(model)
  return f", e.g. {deepest}" if deepest else ""


class FeatureExtractor:
  """Image (uint8 [H, W, 3]) -> feature map (float32 [Hf, Wf, C]).

  One `tf.function` with a size-agnostic input signature serves every image
  size: the graph is traced once, not once per new size (Keras `predict`
  re-traces for every new shape, which costs seconds per ILSVRC image size).
  feature_layer: None or "" for the backbone's final output, else the layer
  whose output is the feature map (build_backbone; FeatureLayerError if bad).
  """

  def __init__(self, backbone: str = "InceptionResNetV2", weights: str = "imagenet",
               seed: int = 0, threads: Optional[int] = None,
               feature_layer: Optional[str] = None):
    import importlib

    import keras  # lazy: see the module doc
    import tensorflow as tf  # lazy: see the module doc
    if threads:
      set_threads(threads)
    # What computes the features (the manifest's backbone_threads): the cap
    # set here, or TensorFlow's own when it had started already.
    self.threads = intra_op_threads()
    self.spec = backbone_spec(backbone)
    self.feature_layer = feature_layer or None
    self.model = build_backbone(backbone, weights, seed, self.feature_layer)
    self.model.trainable = False
    self.layer_info = check_feature_layer(backbone, self.feature_layer)  # cached by the build
    self.grid = FeatureGrid(backbone, self.feature_layer)
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
  frame = frame_size(width, height, min_input_side, min_side, max_side)
  if frame.scale != 1.0:
    new_w, new_h = frame.resized_width, frame.resized_height
    image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    boxes = frame.boxes_in_frame(boxes, width, height)
  if frame.padded:
    image = np.pad(image, ((0, frame.height - frame.resized_height),
                           (0, frame.width - frame.resized_width), (0, 0)))
  return image, boxes, frame.scale


class FrameSize(NamedTuple):
  """The frame prepare_image makes of a width x height image, in px."""
  width: int  # of the frame fed to the backbone (after padding)
  height: int
  resized_width: int  # of the image in it (after the optional resize)
  resized_height: int
  scale: float  # resize factor, 1.0 without resize

  @property
  def padded(self) -> bool:
    return (self.width, self.height) != (self.resized_width, self.resized_height)

  def boxes_in_frame(self, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes [N, 4] of the width x height image, in this frame (padding moves none)."""
    return np.asarray(boxes) * np.array(
        [self.resized_width / width, self.resized_height / height] * 2)


def frame_size(width: int, height: int, min_input_side: int, min_side: Optional[int] = None,
               max_side: Optional[int] = None) -> FrameSize:
  """prepare_image's arithmetic alone: the frame of a width x height image.

  Resize (off unless min_side or max_side is set): the shorter side to
  min_side, the longer at most max_side; then zero padding at the bottom and
  right up to min_input_side.
  """
  scale = 1.0
  new_w, new_h = width, height
  if min_side or max_side:
    scale = (min_side / min(height, width)) if min_side else 1.0
    if max_side and max(height, width) * scale > max_side:
      scale = max_side / max(height, width)
    if scale != 1.0:
      new_w = max(1, int(round(width * scale)))
      new_h = max(1, int(round(height * scale)))
  return FrameSize(max(new_w, min_input_side), max(new_h, min_input_side), new_w, new_h, scale)


def feature_shape(extractor_or_model, height: int, width: int) -> Tuple[int, int]:
  """Feature-map (Hf, Wf) for an image of the given size (runs the net once;
  feature_size gives the same without a forward pass)."""
  fmap = extractor_or_model(np.zeros((height, width, 3), np.uint8))
  return fmap.shape[0], fmap.shape[1]


logging.getLogger(__name__).addHandler(logging.NullHandler())
