"""Filtering the RPN's outputs of one image into proposals (numpy only).

Shape shorthand: K anchors of the image, N proposals kept.
Units: boxes are x1, y1, x2, y2 in continuous pixels of the frame fed to the
backbone; deltas are (dx, dy, dw, dh) as boxes.encode_deltas makes them.

The steps of py-faster-rcnn's proposal layer: decode, clip, drop tiny boxes,
top-N by score, NMS, top-N; before them, optionally, keep the anchors that lie
inside the frame (the ones training labels).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from pipeline.core import anchors as anchors_lib
from pipeline.core import boxes as boxes_lib
from pipeline.core import config

_DEFAULTS = config.ProposalConfig()


def select_anchors(scores: np.ndarray, deltas: np.ndarray, anchors: np.ndarray, width: float,
                   height: float, which: str = _DEFAULTS.anchors, levels=None):
  """(scores, deltas, anchors) of the anchors to propose from; with `levels`
  (the feature level of each anchor, int [K]), (scores, deltas, anchors, levels).

  which "inside": the anchors inside the W x H frame, or all of them when none
  is inside (an image smaller than the smallest anchor); "all": all of them.
  """
  if which not in ("inside", "all"):
    raise ValueError(f"anchors must be 'inside' or 'all', got {which!r}")
  chosen = (scores, deltas, anchors) + (() if levels is None else (levels,))
  if which == "inside":
    inside = anchors_lib.inside_mask(anchors, width, height)
    if inside.any():
      return tuple(values[inside] for values in chosen)
  return chosen


def propose_boxes(scores: np.ndarray, deltas: np.ndarray, anchors: np.ndarray, width: float,
                  height: float, pre_nms_top_n: int = _DEFAULTS.pre_nms_top_n,
                  post_nms_top_n: int = _DEFAULTS.post_nms_top_n,
                  nms_thresh: float = _DEFAULTS.nms_thresh,
                  min_size=_DEFAULTS.min_size,
                  stats: Optional[Dict[str, int]] = None,
                  levels: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
  """(boxes float64 [N, 4], scores float64 [N]) of one image, best score first.

  scores [K], deltas [K, 4] (dx, dy, dw, dh), anchors [K, 4] in the W x H frame.
  Decode (dw, dh clamped), clip to [0, W] x [0, H], drop non-finite boxes and
  boxes narrower or lower than min_size pixels (a number, or (least width,
  least height)), keep the top pre_nms_top_n by
  score, NMS at nms_thresh, keep the top post_nms_top_n (a top-N of 0 or None
  keeps all). Equal scores keep anchor order.

  When min_size would drop every box (an RPN that shrinks all its boxes, a
  frame smaller than min_size), the boxes of non-zero width and height are kept
  instead, so that an image with anchors still gets proposals; `stats`
  (optional) counts that as "min_size_relaxed". The result is empty only when
  every box is non-finite or of zero area.

  levels (int [K], the feature level of each anchor; several levels): the
  top pre_nms_top_n are kept per level, as detectron2 does, then NMS runs
  over the boxes of all levels together and the top post_nms_top_n are kept.
  """
  scores = np.asarray(scores, np.float64).reshape(-1)
  deltas = np.asarray(deltas, np.float64).reshape(-1, 4)
  anchors = np.asarray(anchors, np.float64).reshape(-1, 4)
  if not len(scores) == len(deltas) == len(anchors):
    raise ValueError(f"scores {scores.shape}, deltas {deltas.shape} and anchors "
                     f"{anchors.shape} do not have the same number of anchors")
  boxes = boxes_lib.decode_deltas(anchors, deltas)
  boxes = boxes_lib.clip_boxes(boxes, width, height)
  finite = np.flatnonzero(np.isfinite(scores) & np.isfinite(boxes).all(axis=1))
  boxes, scores = boxes[finite], scores[finite]
  if levels is not None:
    levels = np.asarray(levels, np.int64).reshape(-1)[finite]
  keep = np.asarray(boxes_lib.remove_small_boxes(boxes, min_size), np.int64)
  if len(keep) == 0 and len(boxes) and np.max(min_size) > 0:
    keep = np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    if stats is not None and len(keep):
      stats["min_size_relaxed"] = stats.get("min_size_relaxed", 0) + 1
  boxes, scores = boxes[keep], scores[keep]
  order = np.argsort(-scores, kind="stable")
  if pre_nms_top_n and levels is not None:
    levels = levels[keep]
    order = np.concatenate([order[levels[order] == level][:pre_nms_top_n]
                            for level in np.unique(levels)])
    order = order[np.argsort(-scores[order], kind="stable")]
  elif pre_nms_top_n:
    order = order[:pre_nms_top_n]
  boxes, scores = boxes[order], scores[order]
  keep = np.asarray(boxes_lib.nms(boxes, scores, nms_thresh), np.int64)
  if post_nms_top_n:
    keep = keep[:post_nms_top_n]
  return boxes[keep], scores[keep]


def propose(scores: np.ndarray, deltas: np.ndarray, anchors: np.ndarray, width: float,
            height: float, cfg: config.ProposalConfig = _DEFAULTS,
            stats: Optional[Dict[str, int]] = None,
            box_scale: Tuple[float, float] = (1.0, 1.0),
            levels: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
  """select_anchors, then propose_boxes, with the settings of `cfg` (and the
  anchors' feature `levels`, with several).

  cfg.min_size is in pixels of the original image, as py-faster-rcnn's
  (min_size times the image scale): box_scale (sx, sy) is the frame's size
  over the original image's, so a box is kept when it is at least
  min_size * sx wide and min_size * sy high in the frame.
  """
  chosen = select_anchors(scores, deltas, anchors, width, height, cfg.anchors, levels)
  min_size = (cfg.min_size * box_scale[0], cfg.min_size * box_scale[1])
  return propose_boxes(*chosen[:3], width, height, cfg.pre_nms_top_n,
                       cfg.post_nms_top_n, cfg.nms_thresh, min_size, stats,
                       chosen[3] if levels is not None else None)


def no_proposals_reason(scores: np.ndarray, deltas: np.ndarray, anchors: np.ndarray,
                        width: float, height: float) -> str:
  """Why propose() gave nothing for an image: what its decoded boxes were."""
  scores = np.asarray(scores, np.float64).reshape(-1)
  if len(scores) == 0:
    return f"no anchors for the {width:g}x{height:g} frame"
  boxes = boxes_lib.clip_boxes(boxes_lib.decode_deltas(
      np.asarray(anchors, np.float64).reshape(-1, 4),
      np.asarray(deltas, np.float64).reshape(-1, 4)), width, height)
  finite = np.isfinite(scores) & np.isfinite(boxes).all(axis=1)
  return (f"no proposals: of {len(scores)} anchors, {int((~finite).sum())} have a non-finite "
          f"score or box and the other {int(finite.sum())} decode to zero-area boxes in the "
          f"{width:g}x{height:g} frame")
