"""pipeline.commands.backbone_check: the child process that builds the backbone,
run beside the other checks, and the cache of passed checks."""
import os

import pytest

from pipeline.commands import backbone_check
from pipeline.commands.cli import UsageError
from pipeline.model import backbone, layers, registry


def test_backbone_check_in_a_child_primes_the_layer_cache(monkeypatch):
  monkeypatch.setattr(layers, "_LAYER_INFO", {})
  check = backbone_check.start_backbone_check(registry.TINY_BACKBONE, "none", "conv1")
  answer = check.result()
  assert answer["ok"] and answer["layer_info"]["name"] == "conv1"
  info = layers._LAYER_INFO[(registry.TINY_BACKBONE, "conv1")]
  assert info.nominal_stride == 8 and isinstance(info.axes[0][0], tuple)
  # No child at all when there is nothing to load or check.
  assert backbone_check.start_backbone_check(registry.TINY_BACKBONE, "none", None).result() is None


def test_backbone_check_is_cancelled_when_another_check_fails():
  check = backbone_check.start_backbone_check("VGG16", "none", "block5_conv3")
  with pytest.raises(UsageError), backbone_check.Checks(check):
    raise UsageError("--input", "x", "no such directory")
  assert check._process.returncode is not None  # ended, not left running


def test_a_passed_check_is_remembered_until_the_weights_file_changes(tmp_path, monkeypatch):
  monkeypatch.setenv("RPN_CACHE_DIR", str(tmp_path / "cache"))
  weights = str(tmp_path / "vgg16.weights.h5")
  backbone.build_backbone("VGG16", "none").save_weights(weights)

  def check():
    return backbone_check.start_backbone_check("VGG16", weights, "block5_conv3")
  first = check()
  assert not first.from_cache and first.result()["weights_file"] == weights
  again = check()
  assert again.from_cache and again._process is None
  assert again.result()["layer_info"]["channels"] == 512
  stat = os.stat(weights)
  os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new file there
  changed = check()
  assert not changed.from_cache
  changed.cancel()
  # Another layer is another check.
  other = backbone_check.start_backbone_check("VGG16", weights, "block4_conv3")
  assert not other.from_cache
  other.cancel()


def test_a_failed_check_is_not_remembered(tmp_path, monkeypatch):
  monkeypatch.setenv("RPN_CACHE_DIR", str(tmp_path / "cache"))
  for _ in range(2):
    check = backbone_check.start_backbone_check(registry.TINY_BACKBONE, "none", "conv9")
    assert not check.from_cache
    with pytest.raises(UsageError, match="--feature_layer conv9: no such layer"):
      check.result()
