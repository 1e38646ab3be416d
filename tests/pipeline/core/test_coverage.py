"""pipeline.core.coverage: best anchor IoUs, coverage sums, the fast IoU and the search."""
import numpy as np
import pytest

from pipeline.core import coverage
from tests import reference

SCALES, RATIOS = (3.0, 6.0, 12.0), (0.5, 1.0, 2.0)


def _frame(i, width, height, feature_height, feature_width, boxes):
  return coverage.FrameBoxes(str(i), width, height, feature_height, feature_width,
                             np.asarray(boxes, np.float64).reshape(-1, 4))


def hand_made_frames():
  """Frames whose boxes sit on, between and outside anchors, small and large."""
  return [
      # 320 x 320 at stride 32: a box equal to the scale-3 square anchor at (4, 4).
      _frame(0, 320, 320, 10, 10, [[96, 96, 192, 192], [10, 10, 40, 30]]),
      # an elongated box and a box touching the border
      _frame(1, 500, 375, 11, 15, [[0, 100, 480, 160], [300, 0, 499, 374]]),
      # a tiny frame: the scale-3 anchors hardly fit inside
      _frame(2, 96, 96, 3, 3, [[20, 20, 70, 80]]),
      # no boxes
      _frame(3, 200, 300, 6, 4, []),
  ]


@pytest.mark.parametrize("threshold", [0.5, 0.7])
@pytest.mark.parametrize("which", ["inside", "all"])
def test_coverage_matches_a_plain_loop(which, threshold):
  frames = hand_made_frames()
  stats = coverage.frames_summary(frames, SCALES, RATIOS)
  covered, total = reference.coverage(
      [(f.width, f.height, f.feature_height, f.feature_width, f.gt_boxes) for f in frames],
      SCALES, RATIOS, threshold, inside_only=which == "inside")
  assert stats.num_boxes == total == 5
  assert stats.coverage(which, threshold) == pytest.approx(covered / total)
  assert stats.summary()["coverage"][which][str(threshold)] == pytest.approx(covered / total)


def test_exact_anchor_box_is_covered_and_counted_by_size():
  frame = hand_made_frames()[0]
  ious = coverage.best_ious(frame, SCALES, RATIOS)
  assert ious["inside"][0] == pytest.approx(1.0)
  assert ious["num_anchors"] == 10 * 10 * 9 and 0 < ious["num_inside"] < ious["num_anchors"]
  # sqrt(96 * 96) = 96 px -> bucket 64-128; sqrt(30 * 20) ~ 24 -> <64
  np.testing.assert_array_equal(coverage.size_bucket(frame.gt_boxes), [1, 0])
  summary = coverage.frames_summary([frame], SCALES, RATIOS).summary()
  assert summary["by_size"]["64-128"] == {
      "boxes": 1, "coverage": {"inside": {"0.5": 1.0, "0.7": 1.0}, "all": {"0.5": 1.0, "0.7": 1.0}},
      "mean_best_iou": 1.0}
  assert summary["by_size"]["<64"]["boxes"] == 1


def test_merged_sums_equal_one_pass():
  frames = hand_made_frames()
  one = coverage.frames_summary(frames, SCALES, RATIOS)
  parts = coverage.frames_summary(frames[:2], SCALES, RATIOS).merge(
      coverage.frames_summary(frames[2:], SCALES, RATIOS))
  assert one.summary() == parts.summary()


def random_frames(count, seed=0, stride=16):
  rng = np.random.default_rng(seed)
  frames = []
  for i in range(count):
    width, height = int(rng.integers(75, 900)), int(rng.integers(75, 900))
    feature_width, feature_height = max(1, width // stride - 1), max(1, height // stride - 1)
    g = int(rng.integers(0, 4))
    x1, y1 = rng.uniform(0, width - 5, g), rng.uniform(0, height - 5, g)
    x2 = np.minimum(width, x1 + rng.uniform(4, width, g))
    y2 = np.minimum(height, y1 + rng.uniform(4, height, g))
    frames.append(_frame(i, width, height, feature_height, feature_width,
                         np.stack([x1, y1, x2, y2], axis=1)))
  return frames


@pytest.mark.parametrize("scales,ratios", [(SCALES, RATIOS), ((2, 4, 8, 16), (0.33, 1, 3))])
def test_fast_best_iou_equals_the_anchor_grid(scales, ratios):
  frames = random_frames(150) + hand_made_frames()
  sample = coverage.BoxSample.of(frames)
  exact = [coverage.best_ious(f, scales, ratios) for f in frames]
  for which, inside in (("inside", True), ("all", False)):
    expected = np.concatenate([e[which] for e in exact])
    np.testing.assert_allclose(coverage.fast_best_iou(sample, scales, ratios, inside),
                               expected, atol=1e-12)


def test_search_never_covers_fewer_and_keeps_the_counts():
  frames = random_frames(200, seed=3)
  sample = coverage.BoxSample.of(frames)
  result = coverage.search_anchors(sample, SCALES, RATIOS)
  assert len(result.scales) == 3 and len(result.ratios) == 3
  assert result.covered >= result.start_covered
  before = coverage.frames_summary(frames, SCALES, RATIOS).coverage("inside", 0.7)
  after = coverage.frames_summary(frames, result.scales, result.ratios).coverage("inside", 0.7)
  assert after == pytest.approx(result.covered) and after >= before
  assert after > before  # random boxes: the method's set is far from the best here


def test_search_keeps_a_set_nothing_beats():
  # Every box is exactly one of the given anchors: nothing covers more.
  frame = _frame(0, 320, 320, 10, 10, [[96, 96, 192, 192], [48, 48, 240, 240]])
  result = coverage.search_anchors(coverage.BoxSample.of([frame]), (3, 6), (1,))
  assert result.covered == result.start_covered == 1.0
  assert (result.scales, result.ratios) == ((3.0, 6.0), (1.0,))


def test_search_on_no_boxes_returns_the_given_set():
  result = coverage.search_anchors(coverage.BoxSample.of([]), SCALES, RATIOS)
  assert (result.scales, result.ratios, result.sample_boxes) == (SCALES, RATIOS, 0)


def test_fallback_when_the_suggestion_covers_fewer():
  current = {"coverage": {"inside": {"0.7": 0.5}}}
  assert coverage.choose_suggestion(current, {"coverage": {"inside": {"0.7": 0.5}}}) is None
  reason = coverage.choose_suggestion(current, {"coverage": {"inside": {"0.7": 0.4}}})
  assert "fewer boxes" in reason


def test_anchor_shapes_in_strides():
  shapes = coverage.anchor_shapes((2.0,), (0.25, 1.0))
  np.testing.assert_allclose(shapes, [[4.0, 1.0], [2.0, 2.0]])


def _two_level_frames(count=60, seed=5):
  """random_frames with a second level at twice the stride (the map's size halved, rounded up)."""
  return [coverage.FrameBoxes(
      f.image_id, f.width, f.height, f.feature_height, f.feature_width, f.gt_boxes,
      level_shapes=((f.feature_height, f.feature_width),
                    (-(-f.feature_height // 2), -(-f.feature_width // 2))))
      for f in random_frames(count, seed=seed)]


def test_levels_take_each_boxs_best_anchor_over_the_levels():
  frames = _two_level_frames()
  for frame in frames:
    both = coverage.best_ious(frame, SCALES, RATIOS)
    alone = [coverage.best_ious(frame.at_level(level), SCALES, RATIOS) for level in (0, 1)]
    for which in ("inside", "all"):
      np.testing.assert_allclose(both[which], np.maximum(alone[0][which], alone[1][which]))
    np.testing.assert_array_equal(
        both["level"], np.where(alone[1]["inside"] > alone[0]["inside"], 1, 0))
    assert both["num_anchors"] == alone[0]["num_anchors"] + alone[1]["num_anchors"]
  summary = coverage.frames_summary(frames, SCALES, RATIOS).summary()
  assert sum(level["boxes"] for level in summary["by_level"]) == summary["boxes"]
  assert "by_level" not in coverage.frames_summary(random_frames(5), SCALES, RATIOS).summary()


def test_search_over_levels_scores_the_best_level_and_never_covers_fewer():
  frames = _two_level_frames(150, seed=8)
  sample = coverage.levels_of(frames)
  assert len(sample) == 2 and len(sample[0]) == len(sample[1])
  exact = np.concatenate([coverage.best_ious(f, SCALES, RATIOS)["inside"] for f in frames])
  np.testing.assert_allclose(coverage.fast_best_iou(sample, SCALES, RATIOS), exact, atol=1e-12)
  result = coverage.search_anchors(sample, SCALES, RATIOS)
  before = coverage.frames_summary(frames, SCALES, RATIOS).coverage("inside", 0.7)
  after = coverage.frames_summary(frames, result.scales, result.ratios).coverage("inside", 0.7)
  assert after == pytest.approx(result.covered) and after >= before


def test_search_can_change_the_counts_and_more_scales_cover_more():
  frames = random_frames(200, seed=3)
  sample = coverage.BoxSample.of(frames)
  three = coverage.search_anchors(sample, SCALES, RATIOS)
  five = coverage.search_anchors(sample, SCALES, RATIOS, num_scales=5)
  assert len(five.scales) == 5 and len(five.ratios) == 3
  assert five.start_covered == three.start_covered  # the floor: the given set's
  assert five.covered >= five.start_covered and five.covered > three.covered
  after = coverage.frames_summary(frames, five.scales, five.ratios).coverage("inside", 0.7)
  assert after == pytest.approx(five.covered)
  one_ratio = coverage.search_anchors(sample, SCALES, RATIOS, num_scales=2, num_ratios=1)
  assert (len(one_ratio.scales), len(one_ratio.ratios)) == (2, 1)


def test_resample_spaces_values_geometrically_over_the_given_range():
  assert coverage.resample((12, 3, 6), 3) == [12.0, 3.0, 6.0]  # the given set, as given
  assert coverage.resample((3, 6, 12), 5) == [3.0, 4.243, 6.0, 8.485, 12.0]
  assert coverage.resample((2, 8), 1) == [4.0]
  empty = coverage.search_anchors(coverage.BoxSample.of([]), SCALES, RATIOS, num_scales=2)
  assert empty.scales == (3.0, 12.0) and empty.sample_boxes == 0
