"""The backbones this project knows: their specs, stride-16 layers and Keras architecture.

`BACKBONES` maps a --backbone name to what the pipeline needs to know of its
Keras application (constructor, preprocessing, least input side, channels).
`_architecture` builds one with random weights (no download); model.backbone
loads weights into it, model.layers reads its graph. TensorFlow is imported
lazily.
"""
from __future__ import annotations

import dataclasses


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
# strides to 16 (tests/pipeline/model/test_feature_layer.py checks that).
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


# The feature layers rpn-anchors recommends for a backbone when none is given
# (issue 21 part 4). VGG16: its stride-8 and stride-16 layers as two levels of
# one head, the best of the settings measured on held-out real photographs
# (BENCHMARKS.md sections 14 to 16: AR@1000 0.235 against 0.211 at
# block5_conv3 alone, 0.202 at block4_conv3 alone); adding its stride-4
# block3_conv3 through a projection lost recall (section 19). The other
# backbones' finer layers have other channel counts than their stride-16
# layer; they would go through a projection per level, but with no ImageNet
# weights for them here that was never measured, so they get their stride-16
# layer, Faster R-CNN's choice; TinyTestNet its stride-8 conv1, the finer of
# its two maps (what make demo trains on without real weights). A backbone
# missing here gets its final output.
RECOMMENDED_LAYERS = {
    "VGG16": ("block4_conv3", "block5_conv3"),
    "ResNet50": (STRIDE16_LAYERS["ResNet50"],),
    "InceptionResNetV2": (STRIDE16_LAYERS["InceptionResNetV2"],),
    TINY_BACKBONE: ("conv1",),
}


def recommended_layers(name: str) -> tuple:
  """The layers rpn-anchors recommends for backbone `name` (RECOMMENDED_LAYERS):
  several for levels, one, or ("",) for the final output."""
  backbone_spec(name)  # a ValueError for an unknown name
  return RECOMMENDED_LAYERS.get(name, ("",))


def backbone_spec(name: str) -> BackboneSpec:
  try:
    return BACKBONES[name]
  except KeyError:
    raise ValueError(
        f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None


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
