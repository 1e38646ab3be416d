"""Tests of pipeline/core/targets.py: labels, sampling, deltas, per-point records, tiles."""
import dataclasses
import math

import numpy as np
import pytest

from pipeline.core import anchors as anchors_lib
from pipeline.core import boxes as boxes_lib
from pipeline.core import config as config_lib
from pipeline.core import targets
from pipeline.core.config import IGNORE, NEGATIVE, POSITIVE
from tests import reference

ANCHORS = config_lib.AnchorConfig()
TARGETS = config_lib.TargetConfig()


def _compute(width, height, fh, fw, gt_boxes, image_id="img", **target_overrides):
  return targets.compute_targets(
      width, height, fh, fw, gt_boxes, image_id, anchor_config=ANCHORS,
      target_config=dataclasses.replace(TARGETS, **target_overrides))


def _random_gt(rng, n, width, height):
  xy = rng.uniform(0, [width, height], (n, 2))
  wh = rng.uniform(16, 250, (n, 2))
  return np.concatenate([xy, np.minimum(xy + wh, [width, height])], axis=1)


# --- image_seed -----------------------------------------------------------------


def test_image_seed_stable_value():
  # hashlib.sha256(b"0:n01440764/n01440764_10026").digest()[:8].hex() == "6c9034079ebda848"
  # int("6c9034079ebda848", 16) == 7822809760075196488
  assert targets.image_seed(0, "n01440764/n01440764_10026") == 7822809760075196488
  # sha256(b"0:a")[:8] == 9df3c5fab8ef8fe7; sha256(b"1:a")[:8] == 4162fddd39a3e422
  assert targets.image_seed(0, "a") == 0x9df3c5fab8ef8fe7
  assert targets.image_seed(1, "a") == 0x4162fddd39a3e422
  assert 0 <= targets.image_seed(7, "img") < 2**64


# --- label_anchors --------------------------------------------------------------


def test_label_thresholds_exactly_0_3_and_0_7():
  gt = np.array([[0, 0, 10, 3], [100, 0, 110, 10]], np.float64)
  anchors = np.array([
      [0, 0, 10, 3],  # IoU 1 with gt 0: its argmax -> 1
      [0, 0, 10, 10],  # IoU 0.3 == 30 / 100 with gt 0 (exact in float64): not < 0.3 -> -1
      [100, 0, 110, 10],  # IoU 1 with gt 1: its argmax -> 1
      [100, 0, 110, 7],  # IoU 0.7 == 70 / 100 with gt 1: >= 0.7 -> 1
      [100, 0, 110, 6.9],  # IoU 0.69 == 69 / 100: between -> -1
      [100, 0, 110, 2.9],  # IoU 0.29 == 29 / 100: < 0.3 -> 0
      [200, 200, 210, 210],  # no overlap -> 0
  ], np.float64)
  iou = boxes_lib.box_iou(anchors, gt)
  assert iou[1, 0] == 0.3 and iou[3, 1] == 0.7  # the edge cases really are exact
  labels, matched = targets.label_anchors(anchors, np.ones(7, bool), gt)
  assert labels.dtype == np.int8 and matched.dtype == np.int64
  np.testing.assert_array_equal(labels, [1, -1, 1, 1, -1, 0, 0])
  np.testing.assert_array_equal(matched, [0, 0, 1, 1, 1, 1, 0])  # argmax; 0 on all-zero rows


def test_label_ties_all_positive():
  gt = np.array([[0, 0, 10, 10]], np.float64)
  anchors = np.array([
      [-5, 0, 5, 10],  # IoU 1/3 == 50 / (100 + 100 - 50): best for gt 0 -> 1
      [5, 0, 15, 10],  # IoU 1/3 as well: a tie -> 1
      [-8, 0, 2, 10],  # IoU 1/9 == 20 / 180: < 0.3 -> 0
  ], np.float64)
  labels, matched = targets.label_anchors(anchors, np.ones(3, bool), gt)
  np.testing.assert_array_equal(labels, [1, 1, 0])
  np.testing.assert_array_equal(matched, [0, 0, 0])


def test_label_tie_within_tolerance():
  gt = np.array([[0, 0, 10, 10]], np.float64)
  # IoU 0.5 == 50 / 100 and 0.5 - 5e-7 (within 1e-6 of the best): both -> 1;
  # 0.5 - 2e-6 is not a tie (and not < 0.3) -> -1
  anchors = np.array([[0, 0, 10, 5], [0, 0, 10, 5 - 5e-6], [0, 0, 10, 5 - 2e-5]])
  labels, _ = targets.label_anchors(anchors, np.ones(3, bool), gt)
  np.testing.assert_array_equal(labels, [1, 1, -1])


def test_label_matched_is_argmax_gt():
  gt = np.array([[-10, 0, 10, 10], [2, 0, 12, 10]], np.float64)
  anchors = np.array([
      [0, 0, 10, 10],  # gt 0: 0.5 == 100 / 200 (gt 0's only overlap -> 1); gt 1: 0.667 == 80 / 120
      [2, 0, 12, 10],  # gt 0: 0.364 == 80 / 220; gt 1: 1
  ], np.float64)
  labels, matched = targets.label_anchors(anchors, np.ones(2, bool), gt)
  np.testing.assert_array_equal(labels, [1, 1])
  # anchor 0 is positive for gt 0 but matched (and regressed) to gt 1, its argmax
  np.testing.assert_array_equal(matched, [1, 1])


def test_label_gt_that_no_inside_anchor_overlaps():
  gt = np.array([[0, 0, 10, 10], [100, 100, 120, 120]], np.float64)
  anchors = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [100, 100, 120, 120]], np.float64)
  inside = np.array([True, True, False])
  labels, matched = targets.label_anchors(anchors, inside, gt)
  # gt 1 only overlaps the outside anchor 2: its best over inside anchors is 0,
  # so it makes no positive (and does not make every anchor a tie at 0)
  np.testing.assert_array_equal(labels, [1, 0, -1])
  np.testing.assert_array_equal(matched, [0, 0, -1])
  only_far = targets.label_anchors(anchors, inside, gt[1:])[0]
  np.testing.assert_array_equal(only_far, [0, 0, -1])


def test_label_no_gt_boxes_only_negatives():
  anchors = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [-5, 0, 5, 10]], np.float64)
  inside = np.array([True, True, False])
  labels, matched = targets.label_anchors(anchors, inside, np.zeros((0, 4)))
  np.testing.assert_array_equal(labels, [0, 0, -1])
  np.testing.assert_array_equal(matched, [-1, -1, -1])
  labels, matched = targets.label_anchors(anchors, np.zeros(3, bool), np.zeros((0, 4)))
  np.testing.assert_array_equal(labels, [-1, -1, -1])


def test_label_degenerate_gt_box():
  gt = np.array([[5, 5, 5, 9]], np.float64)  # zero width: IoU 0 with everything
  anchors = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float64)
  labels, matched = targets.label_anchors(anchors, np.ones(2, bool), gt)
  np.testing.assert_array_equal(labels, [0, 0])


def test_label_box_touching_image_border():
  # 60x50 image, 2x3 map: strides 20, 25. The gt box is the image's top-left
  # cell, touching the border; it equals the r 1, s 1 anchor (20 x 25) of point
  # (0, 0), which touches the border too and is inside.
  gt = np.array([[0, 0, 20, 25]], np.float64)
  anchors = anchors_lib.grid_anchors(2, 3, 20.0, 25.0, (1.0,), (1.0,))
  inside = anchors_lib.inside_mask(anchors, 60, 50)
  assert inside.all()
  labels, matched = targets.label_anchors(anchors, inside, gt)
  np.testing.assert_array_equal(labels, [1, 0, 0, 0, 0, 0])
  assert matched[0] == 0


def test_label_properties_random():
  rng = np.random.default_rng(3)
  width, height = 500, 375
  sx, sy = anchors_lib.ratio_strides(width, height, 16, 12)
  anchors = anchors_lib.grid_anchors(12, 16, sx, sy, ANCHORS.scales, ANCHORS.ratios)
  inside = anchors_lib.inside_mask(anchors, width, height)
  gt = _random_gt(rng, 8, width, height)
  labels, matched = targets.label_anchors(anchors, inside, gt)
  assert set(np.unique(labels)) <= {-1, 0, 1}
  assert (labels[~inside] == IGNORE).all() and (matched[~inside] == -1).all()
  iou = boxes_lib.box_iou(anchors[inside], gt)
  np.testing.assert_array_equal(matched[inside], iou.argmax(axis=1))
  best = iou.max(axis=1)
  sub = labels[inside]
  assert (sub[best >= 0.7] == POSITIVE).all()
  assert ((best < 0.3) | (sub != NEGATIVE)).all()
  for g in range(len(gt)):  # every gt box with an overlap has a positive anchor
    if iou[:, g].max() > 0:
      assert (sub[iou[:, g] == iou[:, g].max()] == POSITIVE).all()


# --- sample_labels --------------------------------------------------------------


def test_sample_labels_caps_and_subsets():
  rng = np.random.default_rng(4)
  labels = rng.choice(np.array([-1, 0, 1], np.int8), 6000, p=[0.3, 0.6, 0.1])
  sampled = targets.sample_labels(labels, 256, 0.5, np.random.default_rng(0))
  assert sampled.dtype == labels.dtype and sampled is not labels
  assert set(np.unique(sampled)) <= {-1, 0, 1}
  assert (sampled == POSITIVE).sum() == 128  # 128 == int(0.5 * 256), of ~600
  assert (sampled == NEGATIVE).sum() == 128  # 256 - 128
  assert (labels[sampled == POSITIVE] == POSITIVE).all()
  assert (labels[sampled == NEGATIVE] == NEGATIVE).all()


def test_sample_labels_few_positives_fill_with_negatives():
  labels = np.full(2000, NEGATIVE, np.int8)
  labels[[3, 50, 700]] = POSITIVE
  labels[:2] = IGNORE
  sampled = targets.sample_labels(labels, 256, 0.5, np.random.default_rng(0))
  np.testing.assert_array_equal(np.flatnonzero(sampled == POSITIVE), [3, 50, 700])
  assert (sampled == NEGATIVE).sum() == 253  # 256 - 3
  assert (sampled[:2] == IGNORE).all()
  small = np.array([1, 0, -1, 0], np.int8)  # fewer than batch_size: unchanged
  np.testing.assert_array_equal(targets.sample_labels(small, 256, 0.5, np.random.default_rng(0)),
                                small)


def test_sample_labels_rng_protocol():
  # Pins the draw order (reproducibility between versions): positives first,
  # rng.choice(ascending positive indices, 128, replace=False), then
  # rng.choice(ascending negative indices, 256 - 128, replace=False).
  labels = np.tile(np.array([1, 0, 0, -1], np.int8), 500)
  sampled = targets.sample_labels(labels, 256, 0.5, np.random.default_rng(42))
  rng = np.random.default_rng(42)
  fg = rng.choice(np.flatnonzero(labels == 1), 128, replace=False)
  bg = rng.choice(np.flatnonzero(labels == 0), 128, replace=False)
  np.testing.assert_array_equal(np.flatnonzero(sampled == 1), np.sort(fg))
  np.testing.assert_array_equal(np.flatnonzero(sampled == 0), np.sort(bg))


def test_sample_labels_needs_rng():
  with pytest.raises(ValueError, match="rng"):
    targets.sample_labels(np.zeros(3, np.int8))


# --- anchor_deltas, point_targets, extract_tiles -------------------------------


def test_anchor_deltas_exact_for_positives_zero_elsewhere():
  anchors = np.array([[0, 0, 10, 20], [0, 0, 10, 20], [0, 0, 10, 20]], np.float64)
  gt = np.array([[100, 100, 101, 101], [5, 5, 25, 45]], np.float64)
  matched = np.array([1, 1, -1])
  labels = np.array([1, 0, -1], np.int8)
  deltas = targets.anchor_deltas(anchors, gt, matched, labels)
  assert deltas.dtype == np.float32 and deltas.shape == (3, 4)
  # anchor centre (5, 10), size (10, 20); gt 1 centre (15, 25), size (20, 40):
  # dx 1.0 == 10 / 10, dy 0.75 == 15 / 20, dw == dh == log(2)
  np.testing.assert_array_equal(
      deltas, np.array([[1.0, 0.75, math.log(2), math.log(2)], [0] * 4, [0] * 4], np.float32))


def test_point_targets_golden():
  # A == 2, K == 4 points: point 0 all -1, point 1 (1, -1), point 2 (-1, -1), point 3 (0, 0)
  labels = np.array([-1, -1, 1, -1, -1, -1, 0, 0], np.int8)
  deltas = np.arange(32, dtype=np.float64).reshape(8, 4)  # anchor n: 4n .. 4n + 3
  points, point_labels, point_deltas = targets.point_targets(labels, deltas, 2)
  assert points.dtype == np.int64 and point_labels.dtype == np.int64
  assert point_deltas.dtype == np.float32
  np.testing.assert_array_equal(points, [1, 3])
  np.testing.assert_array_equal(point_labels, [[1, -1], [0, 0]])
  # point 1 holds anchors 2, 3: values 8 .. 15; point 3 anchors 6, 7: 24 .. 31
  np.testing.assert_array_equal(point_deltas, [np.arange(8, 16), np.arange(24, 32)])


def test_extract_tiles_golden():
  fmap = (np.arange(2 * 3 * 2, dtype=np.float16) + 1).reshape(2, 3, 2)  # H 2, W 3, C 2
  points = np.array([0, 4, 5])  # (0, 0), (1, 1) == 4 // 3, 4 % 3, (1, 2)
  tiles = targets.extract_tiles(fmap, points, 3)
  assert tiles.shape == (3, 3, 3, 2) and tiles.dtype == np.float16
  # corner (0, 0): the top row and left column come from the zero padding
  np.testing.assert_array_equal(tiles[0, 0], 0)
  np.testing.assert_array_equal(tiles[0, :, 0], 0)
  np.testing.assert_array_equal(tiles[0, 1:, 1:], fmap[0:2, 0:2])
  for k, p in enumerate(points):
    y, x = divmod(int(p), 3)
    np.testing.assert_array_equal(tiles[k, 1, 1], fmap[y, x])  # the centre is (y, x)
    np.testing.assert_array_equal(tiles[k], reference.tile(fmap, y, x))
  # (1, 1) in a 2-row map: the bottom row is padding
  np.testing.assert_array_equal(tiles[1, 2], 0)
  assert targets.extract_tiles(fmap, np.zeros(0, np.int64), 3).shape == (0, 3, 3, 2)


def test_extract_tiles_all_points_match_loop():
  rng = np.random.default_rng(5)
  fmap = rng.standard_normal((5, 7, 4)).astype(np.float32)
  tiles = targets.extract_tiles(fmap, np.arange(35), 7)
  for p in range(35):
    np.testing.assert_array_equal(tiles[p], reference.tile(fmap, *divmod(p, 7)))


# --- compute_targets ------------------------------------------------------------


def test_compute_targets_consistency():
  rng = np.random.default_rng(6)
  width, height, fh, fw = 500, 333, 10, 14
  gt = _random_gt(rng, 6, width, height)
  result = _compute(width, height, fh, fw, gt, "n01/n01_1")
  num_a = ANCHORS.num_anchors
  assert result.num_anchors == num_a == 9
  assert (result.stride_x, result.stride_y) == (500 / 14, 33.3)
  assert result.anchors.shape == (fh * fw * num_a, 4)
  assert result.labels.dtype == np.int8 and result.inside.dtype == bool
  assert set(np.unique(result.labels)) <= {-1, 0, 1}
  assert 0 < result.num_fg <= 128 and result.num_fg + result.num_bg <= 256
  assert result.num_fg == (result.labels == 1).sum()
  assert result.num_bg == (result.labels == 0).sum()
  assert result.num_inside == result.inside.sum()
  assert (result.labels[~result.inside] == IGNORE).all()
  assert np.all(np.diff(result.points) > 0)  # ascending, distinct
  assert result.locations.dtype == np.int64
  np.testing.assert_array_equal(result.locations[:, 0] * fw + result.locations[:, 1],
                                result.points)
  per_point = result.labels.reshape(-1, num_a)
  np.testing.assert_array_equal(result.point_labels, per_point[result.points])
  assert (per_point[np.setdiff1d(np.arange(fh * fw), result.points)] == IGNORE).all()
  # deltas: exact against the argmax gt for positives, 0 elsewhere
  labels_full, matched = targets.label_anchors(result.anchors, result.inside, gt)
  deltas = result.point_deltas.reshape(-1, num_a, 4)
  anchors = result.anchors.reshape(-1, num_a, 4)[result.points]
  for k, p in enumerate(result.points):
    for a in range(num_a):
      if result.point_labels[k, a] == POSITIVE:
        n = p * num_a + a
        assert labels_full[n] == POSITIVE
        expected = boxes_lib.encode_deltas(anchors[k, a][None], gt[matched[n]][None])[0]
        np.testing.assert_array_equal(deltas[k, a], expected.astype(np.float32))
      else:
        np.testing.assert_array_equal(deltas[k, a], 0)


def test_compute_targets_seeded_and_per_image():
  rng = np.random.default_rng(7)
  width, height = 600, 450
  gt = _random_gt(rng, 30, width, height)
  gt = np.concatenate([gt, gt + 0.5])  # many positives: the sampler must choose
  first = _compute(width, height, 14, 19, gt, "a/img_1")
  again = _compute(width, height, 14, 19, gt, "a/img_1")
  np.testing.assert_array_equal(first.labels, again.labels)
  np.testing.assert_array_equal(first.points, again.points)
  np.testing.assert_array_equal(first.point_deltas, again.point_deltas)
  other = _compute(width, height, 14, 19, gt, "a/img_2")
  assert not np.array_equal(first.labels, other.labels)
  other_seed = _compute(width, height, 14, 19, gt, "a/img_1", seed=1)
  assert not np.array_equal(first.labels, other_seed.labels)
  assert first.num_fg <= 128 and first.num_fg + first.num_bg == 256


def test_compute_targets_no_gt_boxes():
  result = _compute(500, 375, 10, 14, np.zeros((0, 4)))
  assert result.num_fg == 0 and result.num_bg == min(256, result.num_inside)
  assert (result.point_labels != POSITIVE).all()
  assert not result.point_deltas.any()


def test_compute_targets_tiny_map():
  # a 1x1 map: every default anchor (>= 3 strides wide) sticks out: no records
  result = _compute(40, 30, 1, 1, np.array([[0, 0, 40, 30]]))
  assert result.num_inside == 0 and result.points.shape == (0,)
  assert result.locations.shape == (0, 2) and result.point_labels.shape == (0, 9)
  assert result.point_deltas.shape == (0, 36)


def test_level_targets_label_every_levels_anchors_together():
  """Two levels: the anchors of both are labelled against the gt boxes as one
  set and batch_size anchors are sampled over both; each level's records are
  its slice of that labelling."""
  rng = np.random.default_rng(11)
  width, height = 400, 300
  gt = _random_gt(rng, 4, width, height)
  shapes = [(38, 50), (19, 25)]
  result = targets.compute_level_targets(width, height, shapes, gt, "img", anchor_config=ANCHORS,
                                         target_config=TARGETS)
  anchors, inside = [], []
  for fh, fw in shapes:
    sx, sy = anchors_lib.ratio_strides(width, height, fw, fh)
    anchors.append(anchors_lib.grid_anchors(fh, fw, sx, sy, ANCHORS.scales, ANCHORS.ratios))
    inside.append(anchors_lib.inside_mask(anchors[-1], width, height))
  labels, _ = targets.label_anchors(np.concatenate(anchors), np.concatenate(inside), gt)
  sampled = np.concatenate([level.labels for level in result.levels])
  # sampling only turns labels into IGNORE, over both levels at once
  assert ((sampled == labels) | (sampled == IGNORE)).all()
  assert result.num_fg + result.num_bg == min(256, int((labels != IGNORE).sum()))
  assert result.num_fg == sum(level.num_fg for level in result.levels)
  # each gt box's best anchor, on whichever level, is a positive before sampling
  iou = boxes_lib.box_iou(np.concatenate(anchors)[np.concatenate(inside)], gt)
  best = np.flatnonzero(np.concatenate(inside))[iou.argmax(axis=0)]
  assert (labels[best] == POSITIVE).all()
  assert result.num_points == sum(len(level.points) for level in result.levels) > 0
  for level, (fh, fw) in zip(result.levels, shapes, strict=True):
    assert len(level.anchors) == fh * fw * ANCHORS.num_anchors
    np.testing.assert_array_equal(level.locations, np.stack(np.divmod(level.points, fw), 1))


def test_one_level_is_compute_targets():
  rng = np.random.default_rng(2)
  gt = _random_gt(rng, 3, 320, 240)
  one = targets.compute_level_targets(320, 240, [(15, 20)], gt, "x", anchor_config=ANCHORS,
                                      target_config=TARGETS)
  plain = _compute(320, 240, 15, 20, gt, "x")
  assert len(one.levels) == 1
  for field in ("points", "point_labels", "point_deltas", "labels", "anchors"):
    np.testing.assert_array_equal(getattr(one.levels[0], field), getattr(plain, field))
  assert (one.num_fg, one.num_bg, one.num_inside) == (plain.num_fg, plain.num_bg,
                                                      plain.num_inside)
