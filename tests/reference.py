"""Plain-loop reference computations, written once, independently of the code.

Every vectorised function the tests check against a loop is checked against
the loop here: IoU, NMS, the anchor formula of DESIGN.md, delta decoding, the
proposal filter, the greedy recall matching and the zero-padded 3x3 tile.
Nothing here imports pipeline/ or trainer/: a bug there cannot hide in the
reference as well.

Units: boxes are x1, y1, x2, y2 in continuous pixels (no +1); ratio = height
/ width; deltas are (dx, dy, dw, dh) relative to the anchor's centre and size.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

# DESIGN.md's clamp of dw, dh when decoding: a box at most 1000 / 16 times an
# anchor's side.
MAX_LOG_SCALE = math.log(1000.0 / 16)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
  """IoU of two boxes, 0 where the union is 0."""
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def nms(boxes: Sequence[Sequence[float]], scores: Sequence[float], thresh: float) -> List[int]:
  """Greedy NMS: indices kept, best score first (ties: lower index first).

  A box is suppressed by a kept box with IoU > thresh (IoU == thresh is kept).
  """
  order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
  keep: List[int] = []
  for i in order:
    if all(iou(boxes[i], boxes[k]) <= thresh for k in keep):
      keep.append(i)
  return keep


def anchor_box(y: int, x: int, a: int, stride_x: float, stride_y: float,
               scales=(3, 6, 12), ratios=(0.5, 1, 2)) -> List[float]:
  """Anchor a of point (y, x), DESIGN.md's formula written out.

  a = ratio_index * len(scales) + scale_index; w = scale * stride_x / sqrt(ratio),
  h = scale * stride_y * sqrt(ratio), centred on ((x + 0.5) * stride_x,
  (y + 0.5) * stride_y).
  """
  ratio, scale = ratios[a // len(scales)], scales[a % len(scales)]
  w, h = scale * stride_x / math.sqrt(ratio), scale * stride_y * math.sqrt(ratio)
  cx, cy = (x + 0.5) * stride_x, (y + 0.5) * stride_y
  return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def decode(anchor: Sequence[float], delta: Sequence[float],
           max_log_scale: Optional[float] = None) -> List[float]:
  """The box that `delta` moves `anchor` onto; dw, dh clamped at max_log_scale if given."""
  ax1, ay1, ax2, ay2 = anchor
  aw, ah = ax2 - ax1, ay2 - ay1
  cx, cy = ax1 + 0.5 * aw + delta[0] * aw, ay1 + 0.5 * ah + delta[1] * ah
  dw, dh = delta[2], delta[3]
  if max_log_scale is not None:
    dw, dh = min(dw, max_log_scale), min(dh, max_log_scale)
  w, h = aw * math.exp(dw), ah * math.exp(dh)
  return [cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h]


def propose(scores, deltas, anchors, width: float, height: float, pre_nms_top_n: int,
            post_nms_top_n: int, nms_thresh: float, min_size: float
            ) -> Tuple[np.ndarray, np.ndarray]:
  """py-faster-rcnn's proposal steps as loops: (boxes [N, 4], scores [N]), best first.

  Decode (clamped), clip to the frame, drop boxes under min_size, top
  pre_nms_top_n by score (stable: ties keep anchor order), NMS, top post_nms_top_n.
  """
  candidates = []
  for score, delta, anchor in zip(scores, deltas, anchors, strict=True):
    x1, y1, x2, y2 = decode(anchor, delta, MAX_LOG_SCALE)
    box = [min(max(x1, 0.0), width), min(max(y1, 0.0), height),
           min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
    if box[2] - box[0] >= min_size and box[3] - box[1] >= min_size:
      candidates.append((score, box))
  candidates.sort(key=lambda c: -c[0])  # stable: ties keep anchor order
  candidates = candidates[:pre_nms_top_n]
  kept = []
  for score, box in candidates:
    if all(iou(box, other) <= nms_thresh for _, other in kept):
      kept.append((score, box))
  kept = kept[:post_nms_top_n]
  return (np.array([b for _, b in kept]).reshape(-1, 4), np.array([s for s, _ in kept]))


def match_gt_overlaps(proposals, gt_boxes) -> List[float]:
  """py-faster-rcnn's evaluate_recall matching as loops: sorted IoU per gt (0: unmatched).

  Repeat min(P, G) times: the gt best covered by any remaining proposal (first
  max over gts of each gt's first best proposal) takes that proposal.
  """
  taken_p, taken_g, matched = set(), set(), []
  for _ in range(min(len(proposals), len(gt_boxes))):
    best = (-1.0, None, None)
    for g in range(len(gt_boxes)):  # the best-covered gt: first max over gts ...
      if g in taken_g:
        continue
      cover = (-1.0, None)
      for p in range(len(proposals)):  # ... of each gt's best proposal (first max)
        if p not in taken_p:
          overlap = iou(proposals[p], gt_boxes[g])
          if overlap > cover[0]:
            cover = (overlap, p)
      if cover[0] > best[0]:
        best = (cover[0], g, cover[1])
    matched.append(best[0])
    taken_g.add(best[1])
    taken_p.add(best[2])
  return sorted(matched + [0.0] * (len(gt_boxes) - len(matched)))


def tile(feature_map: np.ndarray, y: int, x: int) -> np.ndarray:
  """The 3x3 window of [H, W, C] centred on (y, x), zeros outside the map."""
  h, w, c = feature_map.shape
  out = np.zeros((3, 3, c), feature_map.dtype)
  for i in range(3):
    for j in range(3):
      if 0 <= y - 1 + i < h and 0 <= x - 1 + j < w:
        out[i, j] = feature_map[y - 1 + i, x - 1 + j]
  return out


def tiles(feature_map: np.ndarray) -> np.ndarray:
  """tile(y, x) of every point, row-major: [H * W, 3, 3, C]."""
  h, w = feature_map.shape[:2]
  return np.stack([tile(feature_map, y, x) for y in range(h) for x in range(w)])


def coverage(frames, scales: Sequence[float], ratios: Sequence[float], threshold: float,
             inside_only: bool) -> Tuple[int, int]:
  """(gt boxes whose best anchor IoU >= threshold, gt boxes) over frames, one
  anchor at a time: frames are (width, height, feature_height, feature_width,
  gt boxes); an inside anchor lies within [0, width] x [0, height]."""
  covered = total = 0
  for width, height, feature_height, feature_width, gt_boxes in frames:
    stride_x, stride_y = width / feature_width, height / feature_height
    for gt in gt_boxes:
      total += 1
      best = 0.0
      for y in range(feature_height):
        for x in range(feature_width):
          for a in range(len(scales) * len(ratios)):
            box = anchor_box(y, x, a, stride_x, stride_y, scales, ratios)
            if inside_only and not (box[0] >= -1e-9 * width and box[1] >= -1e-9 * height
                                    and box[2] <= width * (1 + 1e-9)
                                    and box[3] <= height * (1 + 1e-9)):
              continue
            best = max(best, iou(box, gt))
      covered += best >= threshold
  return covered, total
