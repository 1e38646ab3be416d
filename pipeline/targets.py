"""Anchor labels, sampling, deltas and per-point records of one image.

Shape shorthand:
  A  anchors per point        K  points (feature_height * feature_width)
  N  = K * A anchors          G  gt boxes
  P  distinct sampled points  C  feature channels
Boxes are x1, y1, x2, y2 in pixels of the frame fed to the backbone.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence, Tuple

import numpy as np

from pipeline import anchors as anchors_lib
from pipeline import boxes as boxes_lib
from pipeline.config import IGNORE, NEGATIVE, POSITIVE

TIE_TOLERANCE = 1e-6


def image_seed(seed: int, image_id: str) -> int:
  """Stable per-image seed: first 8 bytes (big-endian) of sha256("{seed}:{image_id}")."""
  digest = hashlib.sha256(f"{seed}:{image_id}".encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big")


def label_anchors(anchors: np.ndarray, inside: np.ndarray, gt_boxes: np.ndarray,
                  fg_iou_thresh: float = 0.7, bg_iou_thresh: float = 0.3
                  ) -> Tuple[np.ndarray, np.ndarray]:
  """Labels int8 [N] in {-1, 0, 1} and matched gt index int64 [N] (-1: none).

  Inside anchors only: IoU < bg_iou_thresh with every gt -> 0; then, for each
  gt whose best IoU over the inside anchors is > 0, every inside anchor within
  1e-6 of that best (ties included) -> 1; then IoU >= fg_iou_thresh -> 1.
  matched is the argmax gt of each inside anchor (py-faster-rcnn's rule),
  also for the anchors made positive by the gt-argmax rule.
  """
  num = len(anchors)
  labels = np.full(num, IGNORE, np.int8)
  matched = np.full(num, -1, np.int64)
  inside_idx = np.flatnonzero(inside)
  gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  if len(inside_idx) == 0:
    return labels, matched
  if len(gt_boxes) == 0:
    labels[inside_idx] = NEGATIVE
    return labels, matched
  iou = boxes_lib.box_iou(anchors[inside_idx], gt_boxes)  # [n_inside, G]
  best_gt = iou.argmax(axis=1)
  best_iou = iou[np.arange(len(inside_idx)), best_gt]
  sub = np.full(len(inside_idx), IGNORE, np.int8)
  sub[best_iou < bg_iou_thresh] = NEGATIVE
  gt_best = iou.max(axis=0)  # [G]
  has_overlap = gt_best > 0
  ties = (iou >= gt_best[None, :] - TIE_TOLERANCE) & has_overlap[None, :]
  sub[ties.any(axis=1)] = POSITIVE
  sub[best_iou >= fg_iou_thresh] = POSITIVE
  labels[inside_idx] = sub
  matched[inside_idx] = best_gt
  return labels, matched


def sample_labels(labels: np.ndarray, batch_size: int, fg_fraction: float,
                  rng: np.random.Generator) -> np.ndarray:
  """At most int(fg_fraction * batch_size) positives, negatives up to batch_size; rest -1."""
  out = labels.copy()
  fg = np.flatnonzero(out == POSITIVE)
  max_fg = int(fg_fraction * batch_size)
  if len(fg) > max_fg:
    out[rng.choice(fg, len(fg) - max_fg, replace=False)] = IGNORE
  max_bg = batch_size - int((out == POSITIVE).sum())
  bg = np.flatnonzero(out == NEGATIVE)
  if len(bg) > max_bg:
    out[rng.choice(bg, len(bg) - max_bg, replace=False)] = IGNORE
  return out


def anchor_deltas(anchors: np.ndarray, gt_boxes: np.ndarray, matched: np.ndarray,
                  labels: np.ndarray) -> np.ndarray:
  """float32 [N, 4]: encode_deltas to the matched gt for labels == 1, zeros elsewhere."""
  deltas = np.zeros((len(anchors), 4), np.float32)
  fg = np.flatnonzero(labels == POSITIVE)
  if len(fg):
    gt = np.asarray(gt_boxes, np.float64).reshape(-1, 4)[matched[fg]]
    deltas[fg] = boxes_lib.encode_deltas(anchors[fg], gt)
  return deltas


def point_targets(labels: np.ndarray, deltas: np.ndarray, num_anchors: int
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Distinct points with a sampled anchor: points [P], labels [P, A], deltas [P, 4A]."""
  per_point = labels.reshape(-1, num_anchors)
  points = np.flatnonzero((per_point != IGNORE).any(axis=1)).astype(np.int64)
  point_labels = per_point[points].astype(np.int64)
  point_deltas = deltas.reshape(-1, 4 * num_anchors)[points].astype(np.float32)
  return points, point_labels, point_deltas


def extract_tiles(feature_map: np.ndarray, points: np.ndarray, feature_width: int) -> np.ndarray:
  """[P, 3, 3, C]: tile(y, x) = pad(feature_map, 1)[y:y + 3, x:x + 3]."""
  padded = np.pad(feature_map, ((1, 1), (1, 1), (0, 0)))
  y, x = np.divmod(np.asarray(points, np.int64), feature_width)
  offsets = np.arange(3)
  rows = (y[:, None, None] + offsets[None, :, None])  # [P, 3, 1]
  cols = (x[:, None, None] + offsets[None, None, :])  # [P, 1, 3]
  return padded[rows, cols]


@dataclasses.dataclass
class ImageTargets:
  stride_x: float
  stride_y: float
  num_anchors: int
  anchors: np.ndarray  # [N, 4]
  inside: np.ndarray  # [N] bool
  labels: np.ndarray  # [N] int8, after sampling
  points: np.ndarray  # [P] int64
  locations: np.ndarray  # [P, 2] int64 (y, x)
  point_labels: np.ndarray  # [P, A] int64
  point_deltas: np.ndarray  # [P, 4A] float32
  num_fg: int
  num_bg: int
  num_inside: int


def compute_targets(width: float, height: float, feature_height: int, feature_width: int,
                    gt_boxes: np.ndarray, image_id: str, *, scales: Sequence[float],
                    ratios: Sequence[float], fg_iou_thresh: float, bg_iou_thresh: float,
                    batch_size: int, fg_fraction: float, seed: int) -> ImageTargets:
  """All targets of one image (no feature map: tiles are cut with extract_tiles)."""
  stride_x, stride_y = anchors_lib.ratio_strides(width, height, feature_width, feature_height)
  anchors = anchors_lib.grid_anchors(feature_height, feature_width, stride_x, stride_y,
                                     scales, ratios)
  inside = anchors_lib.inside_mask(anchors, width, height)
  gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  labels, matched = label_anchors(anchors, inside, gt_boxes, fg_iou_thresh, bg_iou_thresh)
  rng = np.random.default_rng(image_seed(seed, image_id))
  labels = sample_labels(labels, batch_size, fg_fraction, rng)
  deltas = anchor_deltas(anchors, gt_boxes, matched, labels)
  num_anchors = len(scales) * len(ratios)
  points, point_labels, point_deltas = point_targets(labels, deltas, num_anchors)
  locations = np.stack(np.divmod(points, feature_width), axis=1).astype(np.int64).reshape(-1, 2)
  return ImageTargets(
      stride_x=stride_x, stride_y=stride_y, num_anchors=num_anchors, anchors=anchors,
      inside=inside, labels=labels, points=points, locations=locations,
      point_labels=point_labels, point_deltas=point_deltas,
      num_fg=int((labels == POSITIVE).sum()), num_bg=int((labels == NEGATIVE).sum()),
      num_inside=int(inside.sum()))
