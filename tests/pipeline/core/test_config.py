"""Tests of pipeline/core/config.py: the range checks of the anchor and target configs."""
import pytest

from pipeline.core import config


def test_the_defaults_are_valid():
  config.AnchorConfig().validate()
  config.TargetConfig().validate()
  config.TargetConfig(fg_iou_thresh=1.0, bg_iou_thresh=0.0, batch_size=1,
                      fg_fraction=1.0).validate()  # the bounds are inside


@pytest.mark.parametrize("changes, message", [
    ({"scales": ()}, "^scales: must be positive numbers$"),
    ({"scales": (3.0, 0.0)}, "^scales 3,0: must be positive numbers$"),
    ({"ratios": (-1.0,)}, "^ratios -1: must be positive numbers$"),
    ({"scales": (-1.0,), "ratios": (0.0,)}, "^scales -1: "),  # scales first
])
def test_anchor_validate_refuses_each_bad_range(changes, message):
  with pytest.raises(config.ConfigError, match=message) as raised:
    config.AnchorConfig(**changes).validate()
  assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize("changes, field, value, problem", [
    ({"fg_fraction": 0.0}, "fg_fraction", 0.0, "must be in (0, 1]"),
    ({"fg_fraction": 1.5}, "fg_fraction", 1.5, "must be in (0, 1]"),
    ({"bg_iou_thresh": -0.1}, "bg_iou_thresh", -0.1,
     "need 0 <= --bg_iou_thresh (-0.1) <= --fg_iou_thresh (0.7) <= 1"),
    ({"bg_iou_thresh": 0.8}, "fg_iou_thresh", 0.7,
     "need 0 <= --bg_iou_thresh (0.8) <= --fg_iou_thresh (0.7) <= 1"),
    ({"fg_iou_thresh": 1.2}, "fg_iou_thresh", 1.2,
     "need 0 <= --bg_iou_thresh (0.3) <= --fg_iou_thresh (1.2) <= 1"),
    ({"batch_size": 0}, "batch_size", 0, "must be >= 1"),
    ({"fg_fraction": 0.0, "batch_size": 0}, "fg_fraction", 0.0, "must be in (0, 1]"),
])
def test_target_validate_refuses_each_bad_range(changes, field, value, problem):
  with pytest.raises(config.ConfigError) as raised:
    config.TargetConfig(**changes).validate()
  error = raised.value
  assert (error.field, error.value, error.problem) == (field, value, problem)
  assert str(error) == f"{field} {value}: {problem}"
