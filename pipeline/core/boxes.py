"""Box arithmetic in numpy: area, IoU, delta encoding/decoding, clipping, NMS.

Boxes are float arrays [N, 4] of x1, y1, x2, y2 in continuous pixel
coordinates; width = x2 - x1 and height = y2 - y1 (no +1 anywhere).
Deltas are (dx, dy, dw, dh) [N, 4]: centre offsets in units of the anchor's
size and log size ratios, not normalised by any mean or std.

Shape shorthand:
  N  boxes (or anchors)       M  boxes of the second set of an IoU
"""
import math

import numpy as np

# dw, dh are clamped to this before exp() so that a wild delta cannot overflow:
# no box grows more than 1000 / 16 times its anchor (as in torchvision/detectron2).
DEFAULT_MAX_LOG_SCALE = math.log(1000.0 / 16)


def _as_boxes(boxes) -> np.ndarray:
  return np.asarray(boxes, np.float64).reshape(-1, 4)


def box_area(boxes: np.ndarray) -> np.ndarray:
  """Area [N] of boxes [N, 4]: (x2 - x1) * (y2 - y1), float64."""
  b = _as_boxes(boxes)
  return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
  """IoU float64 [N, M] of boxes1 [N, 4] with boxes2 [M, 4]; 0 where the union is 0."""
  b1, b2 = _as_boxes(boxes1), _as_boxes(boxes2)
  iw = np.minimum(b1[:, None, 2], b2[None, :, 2]) - np.maximum(b1[:, None, 0], b2[None, :, 0])
  ih = np.minimum(b1[:, None, 3], b2[None, :, 3]) - np.maximum(b1[:, None, 1], b2[None, :, 1])
  inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)  # [N, M]
  union = box_area(b1)[:, None] + box_area(b2)[None, :] - inter  # [N, M]
  positive = union > 0
  return np.where(positive, inter / np.where(positive, union, 1.0), 0.0)


def _centres_sizes(boxes: np.ndarray):
  """(cx, cy, w, h), each [N], of boxes [N, 4]."""
  w = boxes[:, 2] - boxes[:, 0]
  h = boxes[:, 3] - boxes[:, 1]
  return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h


def encode_deltas(anchors: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
  """Deltas float64 [N, 4] that move anchors [N, 4] onto gt_boxes [N, 4] (row by row).

  dx = (gx - ax) / aw, dy = (gy - ay) / ah, dw = log(gw / aw), dh = log(gh / ah),
  with (ax, ay), (gx, gy) the centres and aw, ah, gw, gh the sizes.
  """
  ax, ay, aw, ah = _centres_sizes(_as_boxes(anchors))
  gx, gy, gw, gh = _centres_sizes(_as_boxes(gt_boxes))
  return np.stack([(gx - ax) / aw, (gy - ay) / ah, np.log(gw / aw), np.log(gh / ah)], axis=1)


def decode_deltas(anchors: np.ndarray, deltas: np.ndarray,
                  max_log_scale: float = DEFAULT_MAX_LOG_SCALE) -> np.ndarray:
  """Boxes float64 [N, 4] from anchors [N, 4] and deltas [N, 4]; inverse of encode_deltas.

  dw and dh are clamped to <= max_log_scale before exp().
  """
  ax, ay, aw, ah = _centres_sizes(_as_boxes(anchors))
  d = _as_boxes(deltas)
  cx = ax + d[:, 0] * aw
  cy = ay + d[:, 1] * ah
  w = aw * np.exp(np.minimum(d[:, 2], max_log_scale))
  h = ah * np.exp(np.minimum(d[:, 3], max_log_scale))
  return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=1)


def clip_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
  """A float64 copy of boxes [N, 4] clipped to [0, width] x [0, height]."""
  out = np.array(boxes, np.float64).reshape(-1, 4)  # np.array copies
  out[:, 0::2] = np.clip(out[:, 0::2], 0.0, width)
  out[:, 1::2] = np.clip(out[:, 1::2], 0.0, height)
  return out


def remove_small_boxes(boxes: np.ndarray, min_size) -> np.ndarray:
  """int64 indices [<= N] of the boxes whose width and height are both >= min_size
  (a number, or (least width, least height))."""
  b = _as_boxes(boxes)
  min_width, min_height = np.broadcast_to(np.asarray(min_size, np.float64), (2,))
  keep = ((b[:, 2] - b[:, 0]) >= min_width) & ((b[:, 3] - b[:, 1]) >= min_height)
  return np.flatnonzero(keep).astype(np.int64)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
  """Greedy non-maximum suppression of boxes [N, 4] with scores [N].

  Returns the int64 indices kept, in descending score order (equal scores: lower
  index first). Going down that order, a box is dropped when its IoU with a box
  already kept is > iou_thresh. One vectorised IoU row per kept box.
  """
  b = _as_boxes(boxes)
  order = np.argsort(-np.asarray(scores, np.float64).reshape(-1), kind="stable")
  x1, y1, x2, y2 = (b[order, i] for i in range(4))  # each [N], in score order
  areas = (x2 - x1) * (y2 - y1)
  rest = np.arange(len(order))  # positions in score order still in play
  keep = []
  while rest.size:
    i, rest = rest[0], rest[1:]
    keep.append(order[i])
    iw = np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])
    ih = np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    union = areas[i] + areas[rest] - inter
    positive = union > 0
    iou = np.where(positive, inter / np.where(positive, union, 1.0), 0.0)
    rest = rest[iou <= iou_thresh]
  return np.asarray(keep, np.int64)
