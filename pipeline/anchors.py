"""Anchors of a feature map, as DESIGN.md fixes them.

Shape shorthand: A = anchors per point (len(scales) * len(ratios)),
K = feature_height * feature_width points, row-major (p = y * Wf + x),
anchor index p * A + a with a = ratio_index * len(scales) + scale_index.
Boxes are x1, y1, x2, y2 in pixels; ratio = height / width; scales are in
units of the stride.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np


def ratio_strides(width: float, height: float, feature_width: int,
                  feature_height: int) -> Tuple[float, float]:
  """stride_mode "ratio": (width / feature_width, height / feature_height)."""
  return float(width) / feature_width, float(height) / feature_height


def base_anchors(scales: Sequence[float], ratios: Sequence[float], stride_x: float,
                 stride_y: float) -> np.ndarray:
  """[A, 4] anchors centred on (0, 0): w = s * stride_x / sqrt(r), h = s * stride_y * sqrt(r)."""
  s = np.asarray(scales, np.float64)[None, :]
  r = np.sqrt(np.asarray(ratios, np.float64))[:, None]
  w = (s * stride_x / r).reshape(-1)  # ratio-major: a = ratio_index * len(scales) + scale_index
  h = (s * stride_y * r).reshape(-1)
  return np.stack([-0.5 * w, -0.5 * h, 0.5 * w, 0.5 * h], axis=1)


def grid_anchors(feature_height: int, feature_width: int, stride_x: float, stride_y: float,
                 scales: Sequence[float], ratios: Sequence[float]) -> np.ndarray:
  """[K * A, 4] anchors; point (y, x) is centred at ((x + 0.5) * stride_x, (y + 0.5) * stride_y)."""
  cx = (np.arange(feature_width, dtype=np.float64) + 0.5) * stride_x
  cy = (np.arange(feature_height, dtype=np.float64) + 0.5) * stride_y
  cy, cx = np.meshgrid(cy, cx, indexing="ij")  # [Hf, Wf], row-major
  centres = np.stack([cx, cy, cx, cy], axis=-1).reshape(-1, 1, 4)  # [K, 1, 4]
  base = base_anchors(scales, ratios, stride_x, stride_y)[None]  # [1, A, 4]
  return (centres + base).reshape(-1, 4)


def inside_mask(anchors: np.ndarray, width: float, height: float) -> np.ndarray:
  """[N] bool: x1 >= 0, y1 >= 0, x2 <= width, y2 <= height (exact float64 comparisons)."""
  a = np.asarray(anchors, np.float64)
  return (a[:, 0] >= 0) & (a[:, 1] >= 0) & (a[:, 2] <= width) & (a[:, 3] <= height)
