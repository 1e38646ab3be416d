"""Box arithmetic in numpy: IoU, delta encoding/decoding, clipping, NMS.

Boxes are float arrays [N, 4] of x1, y1, x2, y2 in continuous pixel
coordinates; width = x2 - x1 (no +1 anywhere).
"""
from __future__ import annotations

import math

import numpy as np

DEFAULT_MAX_LOG_SCALE = math.log(1000.0 / 16)


def box_area(boxes: np.ndarray) -> np.ndarray:
  boxes = np.asarray(boxes, np.float64)
  return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
  """IoU [N, M] in float64; 0 where the union is 0."""
  b1 = np.asarray(boxes1, np.float64).reshape(-1, 4)
  b2 = np.asarray(boxes2, np.float64).reshape(-1, 4)
  iw = np.minimum(b1[:, None, 2], b2[None, :, 2]) - np.maximum(b1[:, None, 0], b2[None, :, 0])
  ih = np.minimum(b1[:, None, 3], b2[None, :, 3]) - np.maximum(b1[:, None, 1], b2[None, :, 1])
  inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
  union = box_area(b1)[:, None] + box_area(b2)[None, :] - inter
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _centre_size(boxes: np.ndarray):
  w = boxes[:, 2] - boxes[:, 0]
  h = boxes[:, 3] - boxes[:, 1]
  return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h


def encode_deltas(anchors: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
  """(dx, dy, dw, dh) [N, 4] moving each anchor onto its gt box (not normalised)."""
  ax, ay, aw, ah = _centre_size(np.asarray(anchors, np.float64).reshape(-1, 4))
  gx, gy, gw, gh = _centre_size(np.asarray(gt_boxes, np.float64).reshape(-1, 4))
  return np.stack([(gx - ax) / aw, (gy - ay) / ah, np.log(gw / aw), np.log(gh / ah)], axis=1)


def decode_deltas(anchors: np.ndarray, deltas: np.ndarray,
                  max_log_scale: float = DEFAULT_MAX_LOG_SCALE) -> np.ndarray:
  """Boxes [N, 4] from anchors and deltas; dw, dh clamped to max_log_scale before exp."""
  ax, ay, aw, ah = _centre_size(np.asarray(anchors, np.float64).reshape(-1, 4))
  d = np.asarray(deltas, np.float64).reshape(-1, 4)
  cx, cy = ax + d[:, 0] * aw, ay + d[:, 1] * ah
  w = aw * np.exp(np.minimum(d[:, 2], max_log_scale))
  h = ah * np.exp(np.minimum(d[:, 3], max_log_scale))
  return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=1)


def clip_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
  out = np.array(boxes, np.float64).reshape(-1, 4)
  out[:, 0::2] = np.clip(out[:, 0::2], 0, width)
  out[:, 1::2] = np.clip(out[:, 1::2], 0, height)
  return out


def remove_small_boxes(boxes: np.ndarray, min_size: float) -> np.ndarray:
  """Indices of boxes with width and height >= min_size."""
  b = np.asarray(boxes, np.float64).reshape(-1, 4)
  return np.flatnonzero(((b[:, 2] - b[:, 0]) >= min_size) & ((b[:, 3] - b[:, 1]) >= min_size))


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
  """Greedy NMS; kept indices in descending score order (ties: lower index first).

  A box is suppressed when its IoU with a kept, higher-scoring box is > iou_thresh.
  """
  b = np.asarray(boxes, np.float64).reshape(-1, 4)
  order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
  areas = box_area(b)
  keep = []
  while order.size:
    i = order[0]
    keep.append(i)
    rest = order[1:]
    iw = np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0])
    ih = np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = areas[i] + areas[rest] - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    order = rest[iou <= iou_thresh]
  return np.asarray(keep, np.int64)
