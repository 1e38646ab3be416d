"""Feature layers of a backbone and their shape arithmetic, from the Keras graph.

`check_feature_layer` validates a --feature_layer (one-line FeatureLayerError
with the nearest names) and returns its LayerInfo: channels, stride, the least
input side, and per axis the steps (pad, kernel, stride) that turn a frame's
side into the feature map's. `FeatureGrid` / `feature_size` apply those steps:
(H, W) of a frame -> (Hf, Wf), with no forward pass and, once the steps are
known (or pickled with a DoFn), no TensorFlow. Weights play no part; the
LayerInfo of each (backbone, layer) is cached per process.
"""
from __future__ import annotations

import dataclasses
import difflib
import random
import re
import threading
from typing import Dict, Optional, Tuple

from pipeline.model import registry

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
  registry.backbone_spec(backbone_name)
  key = (backbone_name, feature_layer or None)
  info = _LAYER_INFO.get(key)
  if info is not None:
    return info
  with _LAYER_INFO_LOCK:  # one build at a time, even with several threads asking
    info = _LAYER_INFO.get(key)
    if info is None:
      state = random.getstate()  # Keras' default initializer seeds come from `random`
      try:
        model = registry._architecture(backbone_name)
      finally:
        random.setstate(state)
      info = _remember(backbone_name, model, feature_layer)
      del model
  return info


def feature_channels(backbone_name: str, feature_layer: Optional[str] = None) -> int:
  """C of the feature map: the backbone's (spec.channels) for feature_layer None
  or "", else that layer's (check_feature_layer: builds the net once, no weights)."""
  spec = registry.backbone_spec(backbone_name)
  if not feature_layer:
    return spec.channels
  return check_feature_layer(backbone_name, feature_layer).channels


def run_channels(backbone_config):
  """C of a run's feature map (pipeline.core.config.BackboneConfig), or with
  several feature levels the list of each level's C, finest first."""
  names = tuple(backbone_config.feature_layers or ())
  if len(names) > 1:
    return [feature_channels(backbone_config.backbone, name) for name in names]
  return feature_channels(backbone_config.backbone, backbone_config.feature_layer)


def check_feature_levels(backbone_name: str, feature_layers) -> Tuple[LayerInfo, ...]:
  """The LayerInfo of each of several feature layers (--feature_layers, finest
  first), or a one-line FeatureLayerError naming the flag and the entry: a
  layer that does not exist (with the nearest names), the same layer twice,
  or a nominal stride that does not grow along the list. Levels may differ in
  channels: the RPN then projects each level to one width first (trainer.model)."""
  names = [str(name) for name in feature_layers]
  shown = ",".join(names)
  infos = []
  for name in names:
    if not name:
      raise FeatureLayerError(f"--feature_layers {shown}: an empty layer name")
    try:
      infos.append(check_feature_layer(backbone_name, name))
    except FeatureLayerError as e:
      message = str(e)
      if message.startswith("--feature_layer "):
        message = message[len("--feature_layer "):]
      raise FeatureLayerError(f"--feature_layers {shown}: {message}") from None
  for previous, info in zip(infos, infos[1:], strict=False):
    if info.nominal_stride <= previous.nominal_stride:
      raise FeatureLayerError(
          f"--feature_layers {shown}: the stride must grow along the list, finest first: "
          f"{info.name} has stride {info.nominal_stride}, {previous.name} before it "
          f"{previous.nominal_stride}")
  return tuple(infos)


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
    registry.backbone_spec(backbone_name)
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
      least = registry.backbone_spec(self.backbone).min_input_side
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
