"""Tests of pipeline/core/anchors.py: strides, base and grid anchors, the inside mask."""
import math

import numpy as np
import pytest

from pipeline.core import anchors as anchors_lib
from tests import reference

# A 2x3 map (feature_height 2, feature_width 3) on a 60x50 image (width 60,
# height 50): different strides on x and y, so that a swap shows.
WIDTH, HEIGHT, FH, FW = 60, 50, 2, 3
STRIDE_X, STRIDE_Y = 20.0, 25.0  # 20 == 60 / 3; 25 == 50 / 2
# Ratios whose square roots are exact: sqrt = 0.5, 1, 2.
SCALES, RATIOS = (1.0, 2.0), (0.25, 1.0, 4.0)


def test_ratio_strides():
  assert anchors_lib.ratio_strides(WIDTH, HEIGHT, FW, FH) == (STRIDE_X, STRIDE_Y)
  sx, sy = anchors_lib.ratio_strides(70, 35, 3, 2)
  assert (sx, sy) == (70 / 3, 17.5)  # 23.333... == 70 / 3; 17.5 == 35 / 2
  assert isinstance(sx, float) and isinstance(sy, float)
  with pytest.raises(ValueError, match="0x3"):
    anchors_lib.ratio_strides(70, 35, 3, 0)


def test_base_anchors_golden():
  base = anchors_lib.base_anchors(SCALES, RATIOS, STRIDE_X, STRIDE_Y)
  assert base.shape == (6, 4) and base.dtype == np.float64
  expected = [
      # a = ratio_index * 2 + scale_index; w = s * 20 / sqrt(r), h = s * 25 * sqrt(r)
      [-20.0, -6.25, 20.0, 6.25],  # a 0: r 0.25, s 1: w 40 == 20 / 0.5, h 12.5 == 25 * 0.5
      [-40.0, -12.5, 40.0, 12.5],  # a 1: r 0.25, s 2: w 80, h 25
      [-10.0, -12.5, 10.0, 12.5],  # a 2: r 1, s 1: w 20, h 25
      [-20.0, -25.0, 20.0, 25.0],  # a 3: r 1, s 2: w 40, h 50
      [-5.0, -25.0, 5.0, 25.0],  # a 4: r 4, s 1: w 10 == 20 / 2, h 50 == 25 * 2
      [-10.0, -50.0, 10.0, 50.0],  # a 5: r 4, s 2: w 20, h 100
  ]
  np.testing.assert_array_equal(base, expected)


def test_base_anchors_default_ratios():
  base = anchors_lib.base_anchors((3.0, 6.0, 12.0), (0.5, 1.0, 2.0), 32.0, 32.0)
  w, h = base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]
  # a 0: r 0.5, s 3: w == 96 / sqrt(0.5) == 135.76..., h == 96 * sqrt(0.5) == 67.88...
  np.testing.assert_allclose([w[0], h[0]], [96 / math.sqrt(0.5), 96 * math.sqrt(0.5)])
  # a 4: r 1, s 6: 192 x 192; a 8: r 2, s 12: w == 384 / sqrt(2), h == 384 * sqrt(2)
  np.testing.assert_allclose([w[4], h[4]], [192.0, 192.0])
  np.testing.assert_allclose([w[8], h[8]], [384 / math.sqrt(2), 384 * math.sqrt(2)])
  np.testing.assert_allclose(h / w, np.repeat([0.5, 1.0, 2.0], 3))  # ratio = h / w
  np.testing.assert_allclose(base[:, :2] + base[:, 2:], 0.0, atol=1e-12)  # centred on 0


def test_grid_anchors_golden():
  grid = anchors_lib.grid_anchors(FH, FW, STRIDE_X, STRIDE_Y, SCALES, RATIOS)
  num_anchors = 6
  assert grid.shape == (FH * FW * num_anchors, 4) and grid.dtype == np.float64
  base = anchors_lib.base_anchors(SCALES, RATIOS, STRIDE_X, STRIDE_Y)
  centres = {  # p = y * 3 + x: centre ((x + 0.5) * 20, (y + 0.5) * 25)
      0: (10.0, 12.5),  # (y 0, x 0)
      2: (50.0, 12.5),  # (y 0, x 2): 50 == 2.5 * 20
      3: (10.0, 37.5),  # (y 1, x 0): 37.5 == 1.5 * 25
      5: (50.0, 37.5),  # (y 1, x 2)
  }
  for p, (cx, cy) in centres.items():
    np.testing.assert_array_equal(grid[p * num_anchors:(p + 1) * num_anchors],
                                  base + [cx, cy, cx, cy])
  # anchor 5 * 6 + 2 (point (1, 2), r 1, s 1): centre (50, 37.5), 20 x 25
  np.testing.assert_array_equal(grid[32], [40.0, 25.0, 60.0, 50.0])
  # anchor 1 * 6 + 3 (point (0, 1), r 1, s 2): centre (30, 12.5), 40 x 50
  np.testing.assert_array_equal(grid[9], [10.0, -12.5, 50.0, 37.5])


@pytest.mark.parametrize("scales, ratios", [((3.0, 6.0, 12.0), (0.5, 1.0, 2.0)),
                                            (SCALES, RATIOS)], ids=["default", "exact"])
def test_grid_anchors_match_the_formula_loop(scales, ratios):
  # Every anchor of a 5 x 7 map on a 230 x 170 image (non-integer strides),
  # index p * A + a with p = y * W + x, against DESIGN.md's formula.
  sx, sy = anchors_lib.ratio_strides(230, 170, 7, 5)
  grid = anchors_lib.grid_anchors(5, 7, sx, sy, scales, ratios)
  num_anchors = len(scales) * len(ratios)
  want = [reference.anchor_box(y, x, a, sx, sy, scales, ratios)
          for y in range(5) for x in range(7) for a in range(num_anchors)]
  np.testing.assert_allclose(grid, want, rtol=1e-12, atol=1e-9)


def test_grid_anchors_non_integer_stride():
  # 70 / 3 == 23.333...: point (y 0, x 1) is centred at 35.0 == (1 + 0.5) * 23.333...
  sx, sy = anchors_lib.ratio_strides(70, 35, 3, 2)
  grid = anchors_lib.grid_anchors(2, 3, sx, sy, (3.0,), (1.0,))
  # x: 35 -+ 35 == 3 * 23.333... / 2; y: 8.75 == 0.5 * 17.5, -+ 26.25 == 3 * 17.5 / 2
  np.testing.assert_allclose(grid[1], [0.0, -17.5, 70.0, 35.0], rtol=1e-15, atol=1e-13)


def test_inside_mask_at_border():
  anchors = np.array([
      [0.0, 0.0, 60.0, 50.0],  # exactly the image: inside
      [-1e-6, 0.0, 10.0, 10.0],  # a micro-pixel left of 0: outside
      [0.0, -1e-6, 10.0, 10.0],
      [50.0, 40.0, 60.000001, 50.0],  # a micro-pixel right of 60: outside
      [50.0, 40.0, 60.0, 50.000001],
      [50.0, 40.0, 60.0 + 1e-12, 50.0],  # float error beyond 60: inside
  ])
  np.testing.assert_array_equal(anchors_lib.inside_mask(anchors, WIDTH, HEIGHT),
                                [True, False, False, False, False, True])


def test_inside_mask_on_grid():
  grid = anchors_lib.grid_anchors(FH, FW, STRIDE_X, STRIDE_Y, SCALES, RATIOS)
  inside = anchors_lib.inside_mask(grid, WIDTH, HEIGHT)
  # a 2 (r 1, s 1, 20 x 25) is one cell of the 3 x 2 grid of 20 x 25 cells at
  # every point, touching the border: inside at p * 6 + 2. a 0 (40 x 12.5) fits
  # only at x 1 (x from 30 - 20 == 10 to 50): p 1 and 4, anchors 6 and 24.
  # a 1 is 80 wide, a 3, a 4, a 5 are >= 50 high around centres 12.5 or 37.5.
  assert np.flatnonzero(inside).tolist() == [2, 6, 8, 14, 20, 24, 26, 32]


def test_inside_mask_float_border_is_symmetric():
  # 50 / 11 is not exact: with scale 3, ratio 1 the anchor at x 1 has x1 == 0.0
  # and the one at x 9 has x2 == 11 * (50 / 11) == 50 in exact arithmetic,
  # which float64 puts a hair above 50; both count as inside. On y, 3 rows of
  # stride 10 in a height of 30: only row 1 (y from 15 - 15 to 15 + 15) fits.
  stride = 50 / 11
  grid = anchors_lib.grid_anchors(3, 11, stride, 10.0, (3.0,), (1.0,))
  assert grid[11 + 9, 2] != 50.0  # the float error that the tolerance is there for
  inside = anchors_lib.inside_mask(grid, 50, 30)
  assert np.flatnonzero(inside).tolist() == [11 + x for x in range(1, 10)]
