"""Tests of pipeline/core/boxes.py: IoU, deltas, clipping, small boxes, NMS."""
import math
import subprocess
import sys

import numpy as np
import pytest

from pipeline.core import boxes as boxes_lib
from tests import reference


def _random_boxes(rng, n, size=100.0):
  xy = rng.uniform(0, size, (n, 2))
  wh = rng.uniform(0, size / 2, (n, 2))
  wh[rng.random(n) < 0.1] = 0.0  # some degenerate (zero-area) boxes
  return np.concatenate([xy, xy + wh], axis=1)


def test_imports_no_beam_or_tensorflow():
  code = ("import sys\n"
          "import pipeline.core.boxes, pipeline.core.anchors, pipeline.core.targets\n"
          "bad = [m for m in ('apache_beam', 'tensorflow') if m in sys.modules]\n"
          "assert not bad, bad\n")
  subprocess.run([sys.executable, "-c", code], check=True)


def test_box_area_golden():
  boxes = np.array([[0, 0, 10, 20], [5, 5, 5, 9], [1.5, 2, 4, 3]])
  # 200 == 10 * 20; 0 == 0 * 4 (degenerate); 2.5 == (4 - 1.5) * (3 - 2)
  np.testing.assert_array_equal(boxes_lib.box_area(boxes), [200.0, 0.0, 2.5])


def test_box_iou_golden():
  boxes1 = np.array([[0, 0, 10, 10]], np.float32)
  boxes2 = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10], [0, 0, 10, 3]])
  iou = boxes_lib.box_iou(boxes1, boxes2)
  assert iou.dtype == np.float64 and iou.shape == (1, 4)
  # 1 == identical; 1/3 == 50 / (100 + 100 - 50); 0 == touching edges; 0.3 == 30 / 100
  np.testing.assert_array_equal(iou[0], [1.0, 50.0 / 150.0, 0.0, 0.3])


def test_box_iou_zero_union_is_zero():
  point = np.array([[3.0, 3.0, 3.0, 3.0]])
  assert boxes_lib.box_iou(point, point)[0, 0] == 0.0
  assert boxes_lib.box_iou(np.zeros((0, 4)), point).shape == (0, 1)


def test_box_iou_matches_double_loop():
  rng = np.random.default_rng(0)
  b1, b2 = _random_boxes(rng, 40), _random_boxes(rng, 30)
  b2[:5] = b1[:5]  # some identical pairs
  expected = np.array([[reference.iou(a, b) for b in b2] for a in b1])
  np.testing.assert_allclose(boxes_lib.box_iou(b1, b2), expected, rtol=1e-12, atol=0)


def test_encode_deltas_golden():
  anchors = np.array([[0, 0, 10, 20]])
  gt = np.array([[5, 5, 25, 45]])
  # anchor centre (5, 10), size (10, 20); gt centre (15, 25), size (20, 40):
  # dx 1.0 == (15 - 5) / 10; dy 0.75 == (25 - 10) / 20; dw == dh == log(2) == log(20 / 10)
  np.testing.assert_allclose(boxes_lib.encode_deltas(anchors, gt),
                             [[1.0, 0.75, math.log(2), math.log(2)]], rtol=1e-15)


def test_decode_inverts_encode():
  rng = np.random.default_rng(1)
  anchors = _random_boxes(rng, 200) + np.array([0, 0, 1, 1])  # positive sizes
  gt = _random_boxes(rng, 200) + np.array([0, 0, 1, 1])
  deltas = boxes_lib.encode_deltas(anchors, gt)
  assert deltas.dtype == np.float64
  np.testing.assert_allclose(boxes_lib.decode_deltas(anchors, deltas), gt, rtol=0, atol=1e-9)


def test_decode_clamps_log_scale():
  anchors = np.array([[0.0, 0.0, 16.0, 16.0]])
  deltas = np.array([[0.0, 0.0, 100.0, -1.0]])
  boxes = boxes_lib.decode_deltas(anchors, deltas)
  # w: 1000 == 16 * exp(log(1000 / 16)) (clamped), centred on 8; h == 16 * exp(-1), not clamped
  np.testing.assert_allclose(boxes[0, [0, 2]], [8 - 500, 8 + 500])
  np.testing.assert_allclose(boxes[0, 3] - boxes[0, 1], 16 * math.exp(-1))
  assert np.isfinite(boxes_lib.decode_deltas(anchors, [[0, 0, 1e6, 1e6]])).all()


def test_clip_boxes_returns_clipped_copy():
  boxes = np.array([[-5.0, -1.0, 70.0, 30.0], [10.0, 60.0, 20.0, 80.0]])
  before = boxes.copy()
  clipped = boxes_lib.clip_boxes(boxes, 60, 50)
  np.testing.assert_array_equal(clipped, [[0, 0, 60, 30], [10, 50, 20, 50]])
  np.testing.assert_array_equal(boxes, before)


def test_remove_small_boxes():
  boxes = np.array([[0, 0, 4, 4], [0, 0, 3.9, 10], [0, 0, 10, 3.9], [1, 1, 11, 11]])
  # widths 4, 3.9, 10, 10 and heights 4, 10, 3.9, 10 against min_size 4
  keep = boxes_lib.remove_small_boxes(boxes, 4.0)
  np.testing.assert_array_equal(keep, [0, 3])
  assert np.issubdtype(keep.dtype, np.integer)


@pytest.mark.parametrize("thresh", [0.0, 0.3, 0.5, 0.7])
def test_nms_matches_loop(thresh):
  rng = np.random.default_rng(2)
  for _ in range(5):
    boxes = _random_boxes(rng, 120)
    scores = np.round(rng.random(120), 1)  # many ties
    keep = boxes_lib.nms(boxes, scores, thresh)
    assert keep.dtype == np.int64
    assert keep.tolist() == reference.nms(boxes.tolist(), scores.tolist(), thresh)


def test_nms_golden_and_ties():
  boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]])
  scores = np.array([0.5, 0.9, 0.9, 0.1])
  # 1 and 2 tie at 0.9: 1 (lower index) goes first and suppresses 0 (IoU 1) and
  # 2 (IoU 90 / 110 == 0.818 > 0.5); 3 overlaps nothing
  np.testing.assert_array_equal(boxes_lib.nms(boxes, scores, 0.5), [1, 3])
  # IoU exactly 0.5 (50 / 100) is not > 0.5: kept
  half = np.array([[0, 0, 10, 10], [0, 0, 10, 5]])
  np.testing.assert_array_equal(boxes_lib.nms(half, [1.0, 0.5], 0.5), [0, 1])
  assert boxes_lib.nms(np.zeros((0, 4)), np.zeros(0), 0.7).shape == (0,)
