"""Anchors of a feature map, as DESIGN.md "Conventions (fixed)" defines them.

Boxes are x1, y1, x2, y2 in pixels of the image as fed to the backbone;
ratio = height / width; scales are in units of the stride.

Shape shorthand:
  A  anchors per point = len(scales) * len(ratios);
     a = ratio_index * len(scales) + scale_index
  K  points = feature_height * feature_width, row-major: p = y * feature_width + x
  N  = K * A anchors, anchor index p * A + a
"""
import numpy as np

# inside_mask allows an anchor to poke out of the image by this fraction of the
# image side. Anchors that lie exactly on the border in exact arithmetic (e.g.
# scale 3, ratio 1 at x = feature_width - 2: x2 = (x + 2) * stride_x = width)
# come out of float64 an ulp or so either side of it: for widths 50..1199 and
# feature widths 3..39, 8% of the pairs put that x2 a hair beyond `width` while
# its mirror image at x = 1 has x1 == 0.0 exactly, so exact comparisons would
# make an arbitrary, asymmetric choice. 1e-9 of the side
# is far above float64 error (~1e-15 relative) and far below the distance to
# the border of any anchor that is really outside (a fraction of a stride).
INSIDE_TOLERANCE = 1e-9


def ratio_strides(width: float, height: float, feature_width: int,
                  feature_height: int) -> tuple[float, float]:
  """stride_mode "ratio": (width / feature_width, height / feature_height) in pixels."""
  if feature_width <= 0 or feature_height <= 0:
    raise ValueError(f"feature map must be at least 1x1, got "
                     f"{feature_height}x{feature_width} (height x width)")
  return float(width) / feature_width, float(height) / feature_height


def base_anchors(scales, ratios, stride_x: float, stride_y: float) -> np.ndarray:
  """float64 [A, 4] anchors centred on (0, 0).

  For scale s and ratio r: w = s * stride_x / sqrt(r), h = s * stride_y * sqrt(r);
  index a = ratio_index * len(scales) + scale_index.
  """
  s = np.asarray(scales, np.float64)[None, :]  # [1, S]
  root_r = np.sqrt(np.asarray(ratios, np.float64))[:, None]  # [R, 1]
  w = (s * stride_x / root_r).reshape(-1)  # [R, S] -> [A], ratio-major
  h = (s * stride_y * root_r).reshape(-1)
  return np.stack([-0.5 * w, -0.5 * h, 0.5 * w, 0.5 * h], axis=1)


def grid_anchors(feature_height: int, feature_width: int, stride_x: float, stride_y: float,
                 scales, ratios) -> np.ndarray:
  """float64 [K * A, 4] anchors of a feature_height x feature_width map.

  Point (y, x) is centred at ((x + 0.5) * stride_x, (y + 0.5) * stride_y); its
  anchors are base_anchors shifted there; anchor index p * A + a.
  """
  cx = (np.arange(feature_width, dtype=np.float64) + 0.5) * stride_x  # [Wf]
  cy = (np.arange(feature_height, dtype=np.float64) + 0.5) * stride_y  # [Hf]
  cy, cx = np.meshgrid(cy, cx, indexing="ij")  # [Hf, Wf] each
  centres = np.stack([cx, cy, cx, cy], axis=-1).reshape(-1, 1, 4)  # [K, 1, 4]
  base = base_anchors(scales, ratios, stride_x, stride_y)[None]  # [1, A, 4]
  return (centres + base).reshape(-1, 4)  # [K, A, 4] -> [N, 4]


def inside_mask(anchors: np.ndarray, width: float, height: float) -> np.ndarray:
  """bool [N]: anchor lies in the image, x1 >= 0, y1 >= 0, x2 <= width, y2 <= height.

  Compared in float64 with a tolerance of INSIDE_TOLERANCE * width on x and
  INSIDE_TOLERANCE * height on y, so that anchors exactly on the border in exact
  arithmetic count as inside whatever the float rounding (deterministic).
  """
  a = np.asarray(anchors, np.float64).reshape(-1, 4)
  tol_x = INSIDE_TOLERANCE * float(width)
  tol_y = INSIDE_TOLERANCE * float(height)
  return ((a[:, 0] >= -tol_x) & (a[:, 1] >= -tol_y)
          & (a[:, 2] <= width + tol_x) & (a[:, 3] <= height + tol_y))
