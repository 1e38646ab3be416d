"""trainer.demo: which settings `make demo` picks."""
import argparse

from trainer import demo


def _args(**given):
  values = {"backbone": demo.AUTO, "weights": None, "feature_layer": None, "epochs": None}
  values.update(given)
  return argparse.Namespace(**values)


def test_auto_takes_real_vgg16_features_when_the_weights_file_exists(tmp_path, monkeypatch):
  weights = tmp_path / "vgg16.weights.h5"
  weights.write_bytes(b"x")
  monkeypatch.setenv(demo.VGG16_WEIGHTS_ENV, str(weights))
  args = _args()
  demo.choose_settings(args)
  assert (args.backbone, args.weights, args.feature_layer, args.epochs) == (
      "VGG16", str(weights), None, 10)  # None: rpn-anchors recommends the layers


def test_auto_falls_back_to_the_tiny_net_at_stride_8(tmp_path, monkeypatch):
  monkeypatch.setenv(demo.VGG16_WEIGHTS_ENV, str(tmp_path / "absent.weights.h5"))
  monkeypatch.setattr(demo, "DEFAULT_VGG16_WEIGHTS", str(tmp_path / "absent_too.weights.h5"))
  args = _args()
  demo.choose_settings(args)
  assert (args.backbone, args.weights, args.feature_layer, args.epochs) == (
      "TinyTestNet", "none", None, 40)
  assert "no real weights file" in args.reason


def test_given_settings_are_kept():
  args = _args(backbone="ResNet50", weights="none", feature_layer="", epochs=3)
  demo.choose_settings(args)
  assert (args.backbone, args.weights, args.feature_layer, args.epochs) == (
      "ResNet50", "none", "", 3)


def test_method_anchors_replace_the_recommended_scales_and_ratios():
  flags = ["--backbone", "VGG16", "--feature_layers", "block4_conv3,block5_conv3",
           "--scales", "3,6.727,22.627", "--ratios", "0.5,1,2", "--flip"]
  assert demo.with_anchors(flags, {"scales": [3.0, 6.0, 12.0], "ratios": [0.5, 1.0, 2.0]}) == [
      "--backbone", "VGG16", "--feature_layers", "block4_conv3,block5_conv3",
      "--scales", "3,6,12", "--ratios", "0.5,1,2", "--flip"]


def test_maps_layout_takes_the_anchor_flags_out_of_preprocessing():
  flags = ["--backbone", "VGG16", "--scales", "3,6.727,22.627", "--ratios", "0.5,1,2", "--flip"]
  assert demo.anchor_flags(flags) == ["--scales", "3,6.727,22.627", "--ratios", "0.5,1,2"]
