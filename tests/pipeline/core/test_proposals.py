"""Tests of pipeline/core/proposals.py: the RPN's outputs of one image -> proposals.

Box post-processing is checked against the plain loop of tests/reference.py,
with golden cases for clipping, min_size, top-N, NMS and the delta clamp.
"""
import dataclasses
import math

import numpy as np
import pytest

from pipeline.core import anchors as anchors_lib
from pipeline.core import config, proposals
from tests import reference


def _random_case(rng, k=400, width=320.0, height=240.0):
  xy = rng.uniform(-40, 300, (k, 2))
  wh = rng.uniform(8, 160, (k, 2))
  anchors = np.hstack([xy, xy + wh])
  deltas = rng.normal(0, 0.3, (k, 4))
  scores = rng.uniform(0, 1, k)
  return scores, deltas, anchors, width, height


# ---------------------------------------------------------------------------
# propose_boxes


@pytest.mark.parametrize("seed,pre,post,thresh,min_size", [
    (0, 6000, 300, 0.7, 16.0),
    (1, 100, 20, 0.5, 8.0),
    (2, 50, 300, 0.3, 0.0),
    (3, 0, 0, 0.9, 24.0),  # 0: no top-N limit
])
def test_propose_boxes_matches_plain_loop(seed, pre, post, thresh, min_size):
  scores, deltas, anchors, width, height = _random_case(np.random.default_rng(seed))
  boxes, kept_scores = proposals.propose_boxes(scores, deltas, anchors, width, height,
                                             pre, post, thresh, min_size)
  want_boxes, want_scores = reference.propose(scores, deltas, anchors, width, height,
                                          pre or len(scores), post or len(scores),
                                          thresh, min_size)
  assert len(boxes) == len(want_boxes) > 0
  np.testing.assert_allclose(boxes, want_boxes, rtol=0, atol=1e-9)
  np.testing.assert_array_equal(kept_scores, want_scores)


def test_kept_boxes_do_not_overlap_above_threshold():
  scores, deltas, anchors, width, height = _random_case(np.random.default_rng(5), k=600)
  boxes, kept = proposals.propose_boxes(scores, deltas, anchors, width, height, 6000, 300, 0.6, 4)
  for i in range(len(boxes)):
    for j in range(i):
      assert reference.iou(boxes[i], boxes[j]) <= 0.6 + 1e-12


def test_clip_and_min_size():
  # Frame 100 x 80. Zero deltas: the boxes are the anchors themselves.
  anchors = np.array([
      [-20, -10, 50, 40],  # partly outside: clipped to (0, 0, 50, 40), 50 x 40, kept
      [60, 50, 130, 120],  # clipped to (60, 50, 100, 80): 40 x 30, kept
      [10, 10, 25, 60],    # 15 wide < 16: dropped
      [90, 0, 140, 70],    # clipped to (90, 0, 100, 70): 10 wide only after clipping: dropped
      [0, 0, 16, 16],      # exactly 16 x 16: kept (drop only boxes *under* min_size)
  ], np.float64)
  scores = np.array([0.9, 0.8, 0.99, 0.95, 0.1])
  boxes, kept = proposals.propose_boxes(scores, np.zeros((5, 4)), anchors, 100, 80,
                                      6000, 300, 1.0, 16)
  np.testing.assert_allclose(boxes, [[0, 0, 50, 40], [60, 50, 100, 80], [0, 0, 16, 16]])
  np.testing.assert_allclose(kept, [0.9, 0.8, 0.1])
  assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= 100).all()
  assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= 80).all()


def test_min_size_is_in_pixels_of_the_original_image():
  # A frame resized to half the original in x and a quarter in y (box_scale 0.5, 0.25):
  # --min_size 16 of the original is 8 x 4 in the frame.
  anchors = np.array([
      [0, 0, 8, 4],      # 16 x 16 in the original: kept
      [20, 0, 27, 10],   # 14 wide in the original: dropped
      [40, 0, 60, 3.9],  # 15.6 high in the original: dropped
  ], np.float64)
  cfg = config.ProposalConfig(nms_thresh=1.0, min_size=16)
  boxes, _ = proposals.propose(np.array([0.9, 0.8, 0.7]), np.zeros((3, 4)), anchors, 100, 80,
                               cfg, box_scale=(0.5, 0.25))
  np.testing.assert_allclose(boxes, [[0, 0, 8, 4]])
  # An unresized frame: the frame's pixels are the original's.
  boxes, _ = proposals.propose(np.array([0.9, 0.8, 0.7]), np.zeros((3, 4)), anchors, 100, 80,
                               dataclasses.replace(cfg, min_size=4))
  np.testing.assert_allclose(boxes, [[0, 0, 8, 4], [20, 0, 27, 10]])


def test_top_n_ordering_and_limits():
  # Ten disjoint 20x20 boxes on a row (no NMS interaction), scores shuffled.
  anchors = np.array([[20.0 * i, 0, 20.0 * i + 20, 20] for i in range(10)])
  scores = np.array([0.3, 0.9, 0.1, 0.7, 0.5, 0.8, 0.2, 0.6, 0.4, 0.0])
  boxes, kept = proposals.propose_boxes(scores, np.zeros((10, 4)), anchors, 200, 20, 6000, 300,
                                      0.7, 1)
  np.testing.assert_array_equal(kept, np.sort(scores)[::-1])  # best first
  assert boxes[0, 0] == 20.0  # 0.9 is anchor 1
  # post_nms_top_n: the best 3.
  _, kept = proposals.propose_boxes(scores, np.zeros((10, 4)), anchors, 200, 20, 6000, 3, 0.7, 1)
  np.testing.assert_array_equal(kept, [0.9, 0.8, 0.7])
  # pre_nms_top_n happens before NMS: with the best 4 only, a box that NMS
  # removes is not replaced by the 5th best. Anchor 1 duplicated at 0.85
  # (IoU 1 with the 0.9 box) takes a pre-NMS slot and is then suppressed.
  anchors2 = np.vstack([anchors, anchors[1:2]])
  scores2 = np.append(scores, 0.85)
  _, kept = proposals.propose_boxes(scores2, np.zeros((11, 4)), anchors2, 200, 20, 4, 300, 0.7, 1)
  np.testing.assert_array_equal(kept, [0.9, 0.8, 0.7])  # 0.9, [0.85 suppressed], 0.8, 0.7


def test_nms_threshold():
  # Two 100x100 boxes shifted by 15 px: IoU = 8500 / 11500 = 0.739.
  anchors = np.array([[0, 0, 100, 100], [15, 0, 115, 100]], np.float64)
  scores = np.array([0.6, 0.9])
  args = (scores, np.zeros((2, 4)), anchors, 200, 200, 6000, 300)
  boxes, kept = proposals.propose_boxes(*args, 0.7, 16)  # 0.739 > 0.7: suppressed
  np.testing.assert_array_equal(kept, [0.9])
  np.testing.assert_allclose(boxes, [[15, 0, 115, 100]])
  _, kept = proposals.propose_boxes(*args, 0.8, 16)  # 0.739 <= 0.8: both kept
  np.testing.assert_array_equal(kept, [0.9, 0.6])


def test_decode_clamps_scale():
  # Anchor 16 x 16 centred at (500, 500); dw = dh = 50 would be e^50 times
  # wider: clamped to log(1000 / 16) -> 16 * 1000 / 16 = 1000 px wide and high.
  anchors = np.array([[492.0, 492.0, 508.0, 508.0]])
  deltas = np.array([[0.0, 0.0, 50.0, 50.0]])
  boxes, _ = proposals.propose_boxes([0.5], deltas, anchors, 2000, 2000, 10, 10, 0.7, 0)
  np.testing.assert_allclose(boxes, [[0, 0, 1000, 1000]])
  # A moderate delta is decoded exactly: dx = 0.5 moves the centre half a width.
  deltas = np.array([[0.5, -0.25, math.log(2.0), 0.0]])
  boxes, _ = proposals.propose_boxes([0.5], deltas, anchors, 2000, 2000, 10, 10, 0.7, 0)
  # centre (500 + 8, 500 - 4), size 32 x 16.
  np.testing.assert_allclose(boxes, [[492, 488, 524, 504]])


def test_non_finite_and_empty():
  anchors = np.array([[0, 0, 50, 50], [10, 10, 60, 60]], np.float64)
  boxes, kept = proposals.propose_boxes([np.nan, 0.5], np.zeros((2, 4)), anchors, 100, 100)
  np.testing.assert_array_equal(kept, [0.5])
  boxes, kept = proposals.propose_boxes(np.zeros(0), np.zeros((0, 4)), np.zeros((0, 4)), 10, 10)
  assert boxes.shape == (0, 4) and kept.shape == (0,)
  with pytest.raises(ValueError, match="same number of anchors"):
    proposals.propose_boxes(np.zeros(3), np.zeros((2, 4)), np.zeros((2, 4)), 10, 10)




# ---------------------------------------------------------------------------
# select_anchors and propose


def test_select_anchors_inside_all_and_fallback():
  # Frame 100 x 80: anchors 0 and 2 inside (2 touches the border), 1 and 3 stick out.
  anchors = np.array([[10, 10, 50, 50], [-10, 0, 40, 40], [60, 40, 100, 80],
                      [50, 50, 110, 90]], np.float64)
  scores = np.array([0.1, 0.2, 0.3, 0.4])
  deltas = np.arange(16, dtype=np.float64).reshape(4, 4)
  s, d, a = proposals.select_anchors(scores, deltas, anchors, 100, 80, "inside")
  np.testing.assert_array_equal(s, [0.1, 0.3])
  np.testing.assert_array_equal(d, deltas[[0, 2]])  # deltas and anchors stay aligned
  np.testing.assert_array_equal(a, anchors[[0, 2]])
  s, d, a = proposals.select_anchors(scores, deltas, anchors, 100, 80, "all")
  np.testing.assert_array_equal(s, scores)
  np.testing.assert_array_equal(a, anchors)
  # A 30 x 30 frame: no anchor inside, so all of them (an image smaller than
  # the smallest anchor still gets proposals).
  s, d, a = proposals.select_anchors(scores, deltas, anchors, 30, 30, "inside")
  np.testing.assert_array_equal(s, scores)
  np.testing.assert_array_equal(d, deltas)
  with pytest.raises(ValueError, match="'inside' or 'all', got 'some'"):
    proposals.select_anchors(scores, deltas, anchors, 100, 80, "some")


def test_select_anchors_inside_matches_the_plain_rule_on_a_grid():
  width, height = 330, 250
  stride_x, stride_y = anchors_lib.ratio_strides(width, height, 11, 8)
  grid = anchors_lib.grid_anchors(8, 11, stride_x, stride_y, (1.0, 2.0, 4.0), (0.5, 1.0, 2.0))
  scores = np.random.default_rng(0).uniform(size=len(grid))
  _, _, kept = proposals.select_anchors(scores, np.zeros((len(grid), 4)), grid, width, height,
                                        "inside")
  # "inside": the anchors within the frame (1e-9 relative tolerance for float
  # error on the border, as anchors.py).
  tol_x, tol_y = 1e-9 * width, 1e-9 * height
  want = [box for box in grid if box[0] >= -tol_x and box[1] >= -tol_y
          and box[2] <= width + tol_x and box[3] <= height + tol_y]
  assert 0 < len(want) < len(grid)
  np.testing.assert_array_equal(kept, want)


@pytest.mark.parametrize("which", ["inside", "all"])
def test_propose_is_select_then_propose_boxes_with_the_config(which):
  rng = np.random.default_rng(7)
  scores, deltas, anchors, width, height = _random_case(rng, k=500)
  cfg = config.ProposalConfig(pre_nms_top_n=200, post_nms_top_n=40, nms_thresh=0.6,
                              min_size=6.0, anchors=which)
  boxes, kept = proposals.propose(scores, deltas, anchors, width, height, cfg)
  inside = ((anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] <= width)
            & (anchors[:, 3] <= height))
  assert 0 < inside.sum() < len(anchors)  # the choice matters in this case
  pick = inside if which == "inside" else np.ones(len(anchors), bool)
  want_boxes, want_scores = reference.propose(scores[pick], deltas[pick], anchors[pick],
                                              width, height, 200, 40, 0.6, 6.0)
  assert 0 < len(boxes) <= 40
  # clipped to the frame, also those of anchors that stick out of it
  assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all()
  assert (boxes[:, 3] <= height).all()
  np.testing.assert_allclose(boxes, want_boxes, rtol=0, atol=1e-9)
  np.testing.assert_array_equal(kept, want_scores)


def test_proposal_config_defaults_are_py_faster_rcnn_test_settings():
  cfg = config.ProposalConfig()
  # From all anchors, clipped, as py-faster-rcnn at test time: better than the
  # inside ones in every setting of BENCHMARKS.md's proposal-quality table.
  assert dataclasses.astuple(cfg) == (6000, 300, 0.7, 16.0, "all")
  # propose() without a config uses them.
  scores, deltas, anchors, width, height = _random_case(np.random.default_rng(8), k=300)
  boxes, kept = proposals.propose(scores, deltas, anchors, width, height)
  want = proposals.propose(scores, deltas, anchors, width, height, cfg)
  np.testing.assert_array_equal(boxes, want[0])
  np.testing.assert_array_equal(kept, want[1])


def test_an_image_with_anchors_gets_proposals_when_min_size_drops_them_all():
  # An RPN that shrinks every box to 1/50 of its anchor: all under min_size 16.
  anchors = anchors_lib.grid_anchors(6, 9, 33.3, 36.7, (3, 6, 12), (0.5, 1, 2))
  scores = np.linspace(0.1, 0.9, len(anchors))
  deltas = np.tile([0.0, 0.0, np.log(1 / 50), np.log(1 / 50)], (len(anchors), 1))
  sizes = (anchors[:, 2:] - anchors[:, :2]) / 50
  assert sizes.min(axis=1).max() < 16  # every decoded box is under min_size
  stats = {}
  boxes, kept = proposals.propose(scores, deltas, anchors, 300, 220, stats=stats)
  assert len(boxes) > 0 and stats == {"min_size_relaxed": 1}
  assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
  assert kept[0] == kept.max()


def test_no_proposals_only_when_every_box_is_unusable_and_the_reason_says_so():
  anchors = anchors_lib.grid_anchors(2, 2, 40.0, 40.0, (1,), (1,))
  scores = np.full(len(anchors), np.nan)
  deltas = np.zeros((len(anchors), 4))
  boxes, _ = proposals.propose(scores, deltas, anchors, 80, 80)
  assert len(boxes) == 0
  reason = proposals.no_proposals_reason(scores, deltas, anchors, 80, 80)
  assert reason == ("no proposals: of 4 anchors, 4 have a non-finite score or box and the "
                    "other 0 decode to zero-area boxes in the 80x80 frame")


def test_levels_keep_the_top_n_of_each_level_then_nms_over_all():
  """With anchor levels, pre_nms_top_n is a per-level top-N (detectron2): a level
  of low scores still sends its best boxes to NMS, which then runs over the
  boxes of all levels together."""
  rng = np.random.default_rng(7)
  high = _random_case(rng, k=300)
  low = _random_case(rng, k=100)
  scores = np.concatenate([high[0] + 10.0, low[0]])  # level 0 outscores level 1 everywhere
  deltas, anchors = np.concatenate([high[1], low[1]]), np.concatenate([high[2], low[2]])
  levels = np.repeat([0, 1], [300, 100])
  boxes, kept = proposals.propose_boxes(scores, deltas, anchors, 320.0, 240.0, 20, 0, 0.7, 0.0,
                                        levels=levels)
  _, plain = proposals.propose_boxes(scores, deltas, anchors, 320.0, 240.0, 20, 0, 0.7, 0.0)
  assert (plain >= 10).all()  # without levels the top 20 are all of level 0 ...
  assert (kept < 10).any() and kept[0] >= 10  # ... with them level 1's best come too, after
  # the same as NMS over each level's own top 20, merged by score
  want_boxes, want_scores = reference.propose(
      *(np.concatenate([v[:300][np.argsort(-scores[:300], kind="stable")[:20]],
                        v[300:][np.argsort(-scores[300:], kind="stable")[:20]]])
        for v in (scores, deltas, anchors)), 320.0, 240.0, 40, 40, 0.7, 0.0)
  np.testing.assert_allclose(boxes, want_boxes, atol=1e-9)
  np.testing.assert_array_equal(kept, want_scores)


def test_levels_follow_the_inside_selection():
  scores, deltas, anchors, width, height = _random_case(np.random.default_rng(3))
  levels = np.arange(len(scores)) % 2
  chosen = proposals.select_anchors(scores, deltas, anchors, width, height, "inside", levels)
  inside = anchors_lib.inside_mask(anchors, width, height)
  np.testing.assert_array_equal(chosen[3], levels[inside])
  np.testing.assert_array_equal(chosen[0], scores[inside])
