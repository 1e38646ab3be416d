"""pipeline.model.backbone and extractor: one trace for every size, weights handling."""
import numpy as np
import pytest

from pipeline.model import backbone, registry
from pipeline.model import extractor as extractor_lib


def test_one_trace_serves_every_image_size():
  extractor = extractor_lib.FeatureExtractor(registry.TINY_BACKBONE, "none", seed=0)
  sizes = [(32, 32), (240, 320), (375, 500), (333, 500), (80, 1000), (512, 64)]
  for height, width in sizes:
    fmap = extractor(np.zeros((height, width, 3), np.uint8))
    # Two valid strided convs: (n - 8) // 8 + 1 then (m - 4) // 4 + 1.
    expected_h = ((height - 8) // 8 + 1 - 4) // 4 + 1
    expected_w = ((width - 8) // 8 + 1 - 4) // 4 + 1
    assert fmap.shape == (expected_h, expected_w, 16)
    assert fmap.dtype == np.float32
  assert extractor.traces == 1


def test_random_init_is_seeded():
  image = np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8)
  a = extractor_lib.FeatureExtractor(registry.TINY_BACKBONE, "none", seed=3)(image)
  b = extractor_lib.FeatureExtractor(registry.TINY_BACKBONE, "none", seed=3)(image)
  c = extractor_lib.FeatureExtractor(registry.TINY_BACKBONE, "none", seed=4)(image)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_inception_resnet_v2_smallest_input():
  extractor = extractor_lib.FeatureExtractor("InceptionResNetV2", "none", seed=0)
  assert extractor.min_input_side == 75
  assert extractor(np.zeros((75, 75, 3), np.uint8)).shape == (1, 1, 1536)
  with pytest.raises(ValueError, match="smaller than 75"):
    extractor(np.zeros((74, 200, 3), np.uint8))


def test_unknown_backbone_and_missing_weights_file(tmp_path):
  with pytest.raises(ValueError, match="unknown backbone 'ResNet9000'"):
    registry.backbone_spec("ResNet9000")
  with pytest.raises(backbone.WeightsUnavailableError, match="not found"):
    backbone.build_backbone("MobileNetV2", str(tmp_path / "nope.weights.h5"))


def test_weights_file_round_trip(tmp_path):
  model = backbone.build_backbone("MobileNetV2", "none", seed=5)
  path = str(tmp_path / "mobilenet.weights.h5")
  model.save_weights(path)
  loaded = backbone.build_backbone("MobileNetV2", path, seed=99)
  x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype(np.float32)
  np.testing.assert_allclose(model(x).numpy(), loaded(x).numpy(), atol=1e-6)


def test_imagenet_download_failure_says_what_to_do(monkeypatch):
  import keras

  def offline(**kwargs):
    raise OSError("URL fetch failure: name or service not known")
  monkeypatch.setattr(keras.applications, "InceptionResNetV2", offline)
  with pytest.raises(backbone.WeightsUnavailableError, match="--weights PATH"):
    backbone.build_backbone("InceptionResNetV2", "imagenet")


def test_real_vgg16_weights_load_and_differ_from_random(vgg16_weights):
  # The optional real VGG16 convolution weights (RPN_VGG16_WEIGHTS; see tests/conftest.py)
  # load into the VGG16 backbone without its top: 512 channels at stride 32.
  image = np.random.default_rng(2).integers(0, 256, (224, 320, 3), dtype=np.uint8)
  real = extractor_lib.FeatureExtractor("VGG16", vgg16_weights, seed=0)
  features = real(image)
  assert features.shape == (7, 10, 512) and np.isfinite(features).all()
  random = extractor_lib.FeatureExtractor("VGG16", "none", seed=0)(image)
  assert not np.allclose(features, random)
