"""pipeline.model.backbone feature layers: truncated nets, validation, channels, and the
shape arithmetic (feature_size, FeatureGrid) against real forward passes.

Random weights throughout (weights "none"); one FeatureExtractor per (backbone,
layer) for the whole module (InceptionResNetV2 takes about 2 s to build).
"""
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest

from pipeline.model import backbone, layers, registry
from pipeline.model import extractor as extractor_lib

IRV2 = "InceptionResNetV2"
TINY = registry.TINY_BACKBONE

# (backbone, layer or None, probe side, expected [Hf, Wf, C] at probe x probe):
# maps of known shapes (Faster R-CNN's conv5_3, detectron2's C4, ...).
KNOWN_MAPS = [
    ("VGG16", None, 224, (7, 7, 512)),
    ("VGG16", "block5_conv3", 224, (14, 14, 512)),
    ("ResNet50", None, 224, (7, 7, 2048)),
    ("ResNet50", "conv4_block6_out", 224, (14, 14, 1024)),
    (IRV2, None, 299, (8, 8, 1536)),
    (IRV2, "block17_20_ac", 299, (17, 17, 1088)),  # the 17 x 17 stage, by a forward pass
    (TINY, None, 224, (7, 7, 16)),
    (TINY, "conv1", 224, (28, 28, 16)),
]
CASES = [(name, layer) for name, layer, _, _ in KNOWN_MAPS]
CASE_IDS = [f"{name}-{layer or 'final'}" for name, layer in CASES]

# ILSVRC-like and odd sizes, as (height, width).
SIZES = [(75, 301), (333, 500), (500, 375), (97, 1001), (224, 224), (299, 299)]


@pytest.fixture(scope="module")
def extractor():
  """extractor(backbone, layer): a FeatureExtractor with random weights, built once."""
  built = {}

  def get(name, layer):
    if (name, layer) not in built:
      built[name, layer] = extractor_lib.FeatureExtractor(name, "none", seed=0, feature_layer=layer)
    return built[name, layer]
  return get


def _zeros(height, width):
  return np.zeros((height, width, 3), np.uint8)


@pytest.mark.parametrize("name, layer, side, expected", KNOWN_MAPS, ids=CASE_IDS)
def test_known_feature_map_shapes_and_channels(extractor, name, layer, side, expected):
  ext = extractor(name, layer)
  fmap = ext(_zeros(side, side))
  assert fmap.shape == expected and fmap.dtype == np.float32
  assert ext.channels == expected[2] == layers.feature_channels(name, layer)
  assert layers.feature_size(name, layer, side, side) == expected[:2]
  info = layers.check_feature_layer(name, layer)
  assert info.channels == expected[2]
  if layer:
    assert info.name == layer and ext.model.output.shape[-1] == expected[2]


@pytest.mark.parametrize("name, layer", CASES, ids=CASE_IDS)
def test_feature_size_equals_the_forward_pass(extractor, name, layer):
  ext = extractor(name, layer)
  side = ext.min_input_side
  # Sizes of every residue mod 32 at the smallest side (cheap frames), then ILSVRC-like ones.
  sizes = [(side, side + extra) for extra in range(0, 32, 3)] + [(side + 1, side)] + SIZES
  grid = layers.FeatureGrid(name, layer)
  for height, width in sizes:
    expected = ext(_zeros(height, width)).shape[:2]
    assert layers.feature_size(name, layer, height, width) == expected, (height, width)
    assert grid(height, width) == expected


def test_stride16_layers(extractor):
  # (Hf, Wf) for a 500 x 375 ILSVRC image: 375 / 16 = 23.4, 500 / 16 = 31.2; valid
  # padding trims InceptionResNetV2's map, ResNet50's same padding rounds up.
  at_500x375 = {"VGG16": (23, 31), "ResNet50": (24, 32), IRV2: (21, 29)}
  assert set(registry.STRIDE16_LAYERS) == set(at_500x375)
  for name, layer in registry.STRIDE16_LAYERS.items():
    info = layers.check_feature_layer(name, layer)
    assert info.nominal_stride == 16 and 16 <= info.stride < 17.1, info
    assert layers.feature_size(name, layer, 375, 500) == at_500x375[name]
    assert extractor(name, layer)(_zeros(375, 500)).shape[:2] == at_500x375[name]
    # It is the deepest named stride-16 layer: the one an unknown name suggests.
    with pytest.raises(layers.FeatureLayerError, match=f"e.g. {layer} \\(stride 16\\)"):
      layers.check_feature_layer(name, "zzz")
  assert layers.check_feature_layer(IRV2, None).name == "conv_7b_ac"
  assert TINY not in registry.STRIDE16_LAYERS  # conv1 is stride 8, conv2 stride 32
  assert layers.check_feature_layer(TINY, "conv1").stride == 8


def _one_line_error(name, layer) -> str:
  with pytest.raises(layers.FeatureLayerError) as raised:
    layers.check_feature_layer(name, layer)
  message = str(raised.value)
  assert "\n" not in message and isinstance(raised.value, ValueError)
  return message


def test_unknown_layer_lists_the_nearest_names():
  message = _one_line_error("VGG16", "block5_conv9")
  assert message.startswith("--feature_layer block5_conv9: no such layer in VGG16; nearest: "
                            "block5_conv3, block5_conv2, block5_conv1")
  assert "conv4_block6_out" in _one_line_error("ResNet50", "conv4_block6")
  assert "block17_20_ac" in _one_line_error(IRV2, "block17_20")
  assert "conv1" in _one_line_error(TINY, "conv3")
  with pytest.raises(layers.FeatureLayerError, match="no such layer in VGG16"):
    backbone.build_backbone("VGG16", "none", feature_layer="block5_conv9")


def test_layer_under_stride_4_is_refused():
  message = _one_line_error("VGG16", "block1_conv1")
  assert "stride 1 in VGG16" in message and "at least 4" in message
  assert "stride 2 in ResNet50" in _one_line_error("ResNet50", "conv1_conv")
  assert layers.check_feature_layer("VGG16", "block2_pool").stride == 4  # the least allowed


def test_layers_without_a_4d_map_or_a_stable_name_are_refused(monkeypatch):
  import keras

  class Pair(keras.layers.Layer):
    def call(self, x):
      return x, 2 * x

    def compute_output_shape(self, shape):
      return shape, shape

  def fake_vgg16(**kwargs):
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, strides=8, name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="pooled")(x)
    first, second = Pair(name="two_maps")(x)
    # A name like the ones Keras makes up for unnamed layers (InceptionResNetV2 has
    # hundreds): it changes with the layers a process made before, so it is refused.
    generated = keras.layers.Conv2D(4, 1, name="conv2d_811")(x)
    return keras.Model(inputs, [x, pooled, first, second, generated])
  monkeypatch.setattr(keras.applications, "VGG16", fake_vgg16)
  monkeypatch.setattr(layers, "_LAYER_INFO", {})  # what the fake gives stays in this test
  assert "not a 4-D map [B, H, W, C]" in _one_line_error("VGG16", "pooled")
  assert "has 2 outputs" in _one_line_error("VGG16", "two_maps")
  assert "Keras generated this name" in _one_line_error("VGG16", "conv2d_811")
  assert layers.check_feature_layer("VGG16", "conv").channels == 4  # the fake is sound
  assert _one_line_error("VGG16", "xyz").endswith("no similar name, e.g. conv (stride 8)")


def test_feature_size_refuses_frames_the_net_maps_to_nothing():
  assert layers.feature_size(IRV2, None, 75, 75) == (1, 1)
  assert layers.check_feature_layer(IRV2, None).min_side == 75  # = spec.min_input_side
  with pytest.raises(ValueError, match="height of 74 px gives an empty feature map"):
    layers.feature_size(IRV2, None, 74, 500)
  with pytest.raises(ValueError, match="width of 31 px"):
    layers.feature_size("VGG16", "", 500, 31)
  assert layers.feature_size("VGG16", "block5_conv3", 31, 31) == (1, 1)  # a shallower layer


def test_truncated_net_has_the_full_nets_weights(tmp_path):
  full = backbone.build_backbone("VGG16", "none", seed=5)
  path = str(tmp_path / "vgg16.weights.h5")
  full.save_weights(path)
  import keras
  reference = keras.Model(full.input, full.get_layer("block4_pool").output)
  truncated = backbone.build_backbone("VGG16", path, seed=99, feature_layer="block4_pool")
  assert truncated.output.shape[-1] == 512 and len(truncated.layers) < len(full.layers)
  x = np.random.default_rng(0).normal(size=(1, 64, 48, 3)).astype(np.float32)
  np.testing.assert_allclose(truncated(x).numpy(), reference(x).numpy(), atol=1e-5)
  # Seeded random weights: the same as the full net's layer, seed for seed.
  tiny = backbone.build_backbone(TINY, "none", seed=3)
  tiny_conv1 = backbone.build_backbone(TINY, "none", seed=3, feature_layer="conv1")
  np.testing.assert_array_equal(
      tiny_conv1(x).numpy(), keras.Model(tiny.inputs[0], tiny.get_layer("conv1").output)(x).numpy())
  assert [layer.name for layer in tiny.layers] == ["conv1", "conv2"]


def test_check_feature_layer_keeps_the_callers_random_state():
  random.seed(7)
  expected = random.random()
  random.seed(7)
  layers.check_feature_layer("VGG16", "block4_conv3")  # builds VGG16: first time asked
  assert random.random() == expected


def test_feature_grid_pickles_without_keras(repo_root):
  grid = layers.FeatureGrid(IRV2, "block17_20_ac")
  assert len(pickle.dumps(grid)) < 2000
  expected = grid(375, 500)
  script = ("import pickle, sys; grid = pickle.loads(sys.stdin.buffer.read()); "
            "print(grid(375, 500), 'keras' in sys.modules, 'tensorflow' in sys.modules)")
  done = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(grid), cwd=repo_root,
                        capture_output=True, check=True)
  assert done.stdout.decode().split() == [f"({expected[0]},", f"{expected[1]})", "False", "False"]
  with pytest.raises(ValueError, match="unknown backbone"):
    layers.FeatureGrid("ResNet9000")


@pytest.mark.parametrize("backbone_name,names", [("VGG16", ("block4_conv3", "block5_conv3")),
                                                 (TINY, ("conv1", "conv2"))])
def test_levels_maps_follow_each_levels_shape_arithmetic(backbone_name, names):
  """One forward pass gives every level's map; where a level rounds its size
  differently from another (odd sides), each follows its own arithmetic."""
  infos = layers.check_feature_levels(backbone_name, names)
  assert [i.name for i in infos] == list(names)
  assert infos[0].nominal_stride < infos[1].nominal_stride
  extractor = extractor_lib.FeatureExtractor(backbone_name, "none", seed=0,
                                             feature_layers=names)
  grids = [layers.FeatureGrid(backbone_name, name) for name in names]
  for height, width in ((64, 64), (97, 131), (150, 77), (223, 225)):
    maps = extractor(np.zeros((height, width, 3), np.uint8))
    assert len(maps) == len(names)
    for feature_map, grid in zip(maps, grids, strict=True):
      assert feature_map.shape[:2] == tuple(grid(height, width)), (height, width)


@pytest.mark.parametrize("names,problem", [
    (("block5_conv3", "block4_conv3"), "the stride must grow along the list, finest first: "
     "block4_conv3 has stride 8, block5_conv3 before it 16"),
    (("block4_conv3", "block4_conv3"), "the stride must grow along the list"),
    (("block4_conv3", "block5_conv9"), "block5_conv9: no such layer in VGG16; nearest: "),
])
def test_bad_levels_are_one_line_naming_the_entry(names, problem):
  with pytest.raises(layers.FeatureLayerError) as raised:
    layers.check_feature_levels("VGG16", names)
  message = str(raised.value)
  assert "\n" not in message
  assert message.startswith(f"--feature_layers {','.join(names)}: {problem}"), message


def test_levels_of_different_channel_counts_are_accepted():
  """The RPN projects each level to one width (trainer.model), so levels of
  other channel counts pass: VGG16's block3_conv3 has 256, the others 512."""
  infos = layers.check_feature_levels("VGG16", ("block3_conv3", "block4_conv3", "block5_conv3"))
  assert [info.channels for info in infos] == [256, 512, 512]
  assert [info.nominal_stride for info in infos] == [4, 8, 16]


def test_recommended_layers_are_valid_levels_of_their_backbone():
  """What rpn-anchors recommends with no layer flag passes rpn-preprocess's checks:
  VGG16's two levels share a head; the others' single layers are stride 16."""
  assert registry.recommended_layers("VGG16") == ("block4_conv3", "block5_conv3")
  for name, names in registry.RECOMMENDED_LAYERS.items():
    if len(names) > 1:
      infos = layers.check_feature_levels(name, names)
      assert len({i.channels for i in infos}) == 1
    else:
      info = layers.check_feature_layer(name, names[0])
      assert info.nominal_stride == (8 if name == TINY else 16), (name, info)
  assert registry.recommended_layers("Xception") == ("",)  # its final output
  with pytest.raises(ValueError, match="unknown backbone"):
    registry.recommended_layers("ResNet9000")
