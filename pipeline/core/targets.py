"""Anchor labels, sampling, deltas and the per-point records of one image.

Boxes are x1, y1, x2, y2 in pixels of the image as fed to the backbone; labels
are POSITIVE (1), NEGATIVE (0) or IGNORE (-1, not sampled / ignored / outside);
deltas are (dx, dy, dw, dh) as in boxes.encode_deltas.

Shape shorthand:
  A  anchors per point        K  points (feature_height * feature_width)
  N  = K * A anchors          G  gt boxes
  P  distinct sampled points  C  feature channels
"""
import dataclasses
import hashlib

import numpy as np

from pipeline.core import anchors as anchors_lib
from pipeline.core import boxes as boxes_lib
from pipeline.core.config import IGNORE, NEGATIVE, POSITIVE, AnchorConfig, TargetConfig

# An inside anchor whose IoU with a gt box is within this of that gt box's best
# IoU over the inside anchors is one of its argmax anchors (ties included).
TIE_TOLERANCE = 1e-6


def image_seed(seed: int, image_id: str) -> int:
  """Stable per-image seed: sha256(f"{seed}:{image_id}"), first 8 bytes, big-endian.

  Never Python's hash(), which is salted per process.
  """
  digest = hashlib.sha256(f"{seed}:{image_id}".encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big")


def epoch_image_seed(seed: int, epoch: int, image_id: str) -> int:
  """The sampling seed of an image at a training epoch (the maps layout).

  Epoch 0 is image_seed(seed, image_id), the seed rpn-preprocess samples the
  tiles layout with, so that epoch 0 draws the same samples; epoch e > 0 is
  sha256(f"{seed}:{e}:{image_id}") the same way.
  """
  if epoch == 0:
    return image_seed(seed, image_id)
  digest = hashlib.sha256(f"{seed}:{epoch}:{image_id}".encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big")


def label_anchors(anchors: np.ndarray, inside: np.ndarray, gt_boxes: np.ndarray,
                  fg_iou_thresh: float = 0.7, bg_iou_thresh: float = 0.3
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Labels int8 [N] in {-1, 0, 1} and matched gt index int64 [N] of anchors [N, 4].

  Inside anchors only (IoU in float64), in this order:
    1. IoU < bg_iou_thresh with every gt box -> 0;
    2. for each gt box whose best IoU over the inside anchors is > 0, every
       inside anchor within TIE_TOLERANCE of that best IoU (ties included) -> 1;
    3. IoU >= fg_iou_thresh with some gt box -> 1.
  Anchors that none of these touch stay -1, outside anchors are always -1, and
  with no gt box every inside anchor is 0.

  matched is py-faster-rcnn's rule: the argmax over gt boxes of each inside
  anchor's IoU (lowest gt index on equal IoU), also for anchors that step 2
  made positive for another gt box; -1 for outside anchors and when G == 0.
  """
  anchors = np.asarray(anchors, np.float64).reshape(-1, 4)
  gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  labels = np.full(len(anchors), IGNORE, np.int8)
  matched = np.full(len(anchors), -1, np.int64)
  inside_idx = np.flatnonzero(np.asarray(inside, bool).reshape(-1))
  if len(inside_idx) == 0:
    return labels, matched
  if len(gt_boxes) == 0:
    labels[inside_idx] = NEGATIVE
    return labels, matched
  iou = boxes_lib.box_iou(anchors[inside_idx], gt_boxes)  # [n_inside, G]
  best_gt = iou.argmax(axis=1)  # [n_inside]
  best_iou = iou[np.arange(len(inside_idx)), best_gt]  # [n_inside]
  gt_best = iou.max(axis=0)  # [G]
  sub = np.full(len(inside_idx), IGNORE, np.int8)
  sub[best_iou < bg_iou_thresh] = NEGATIVE
  is_gt_argmax = (iou >= gt_best[None, :] - TIE_TOLERANCE) & (gt_best > 0)[None, :]
  sub[is_gt_argmax.any(axis=1)] = POSITIVE
  sub[best_iou >= fg_iou_thresh] = POSITIVE
  labels[inside_idx] = sub
  matched[inside_idx] = best_gt
  return labels, matched


def sample_labels(labels: np.ndarray, batch_size: int = 256, fg_fraction: float = 0.5,
                  rng: np.random.Generator = None) -> np.ndarray:
  """A copy of labels [N] with at most batch_size anchors left non-IGNORE.

  Keeps at most int(fg_fraction * batch_size) positives, a random subset
  rng.choice(idx, size, replace=False) of their ascending indices; then, the
  same way, negatives up to batch_size minus the positives kept. Every other
  positive or negative becomes IGNORE. rng is required (it has a default only
  so that the signature can keep the other defaults); seed it with
  image_seed so that the choice is deterministic.
  """
  if rng is None:
    raise ValueError("sample_labels needs rng, e.g. "
                     "np.random.default_rng(image_seed(seed, image_id))")
  labels = np.asarray(labels)
  out = np.full_like(labels, IGNORE)
  fg = np.flatnonzero(labels == POSITIVE)
  max_fg = int(fg_fraction * batch_size)
  if len(fg) > max_fg:
    fg = rng.choice(fg, max_fg, replace=False)
  out[fg] = POSITIVE
  bg = np.flatnonzero(labels == NEGATIVE)
  max_bg = batch_size - len(fg)
  if len(bg) > max_bg:
    bg = rng.choice(bg, max_bg, replace=False)
  out[bg] = NEGATIVE
  return out


def anchor_deltas(anchors: np.ndarray, gt_boxes: np.ndarray, matched: np.ndarray,
                  labels: np.ndarray) -> np.ndarray:
  """float32 [N, 4]: encode_deltas of each anchor to its matched gt box where
  labels == 1, zeros elsewhere."""
  anchors = np.asarray(anchors, np.float64).reshape(-1, 4)
  deltas = np.zeros((len(anchors), 4), np.float32)
  fg = np.flatnonzero(np.asarray(labels) == POSITIVE)
  if len(fg):
    gt = np.asarray(gt_boxes, np.float64).reshape(-1, 4)[np.asarray(matched)[fg]]
    deltas[fg] = boxes_lib.encode_deltas(anchors[fg], gt)
  return deltas


def point_targets(labels: np.ndarray, deltas: np.ndarray, num_anchors: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per-point targets from per-anchor labels [K * A] and deltas [K * A, 4].

  Returns points int64 [P] (ascending, the distinct points with at least one
  anchor labelled != -1), point_labels int64 [P, A] and point_deltas float32
  [P, 4A], anchor-major (anchor a's four values at 4a .. 4a + 3).
  """
  per_point = np.asarray(labels).reshape(-1, num_anchors)  # [K, A]
  points = np.flatnonzero((per_point != IGNORE).any(axis=1)).astype(np.int64)  # [P]
  point_labels = per_point[points].astype(np.int64)  # [P, A]
  point_deltas = np.asarray(deltas).reshape(-1, 4 * num_anchors)[points]  # [P, 4A]
  return points, point_labels, point_deltas.astype(np.float32)


def extract_tiles(feature_map: np.ndarray, points: np.ndarray, feature_width: int) -> np.ndarray:
  """Tiles [P, 3, 3, C] (feature_map's dtype) of feature_map [H, W, C] at points [P].

  tile(y, x) = pad(feature_map, 1 zero row/column each side)[y:y + 3, x:x + 3],
  the 3x3 window centred on (y, x), with p = y * feature_width + x.
  """
  if feature_map.ndim != 3:
    raise ValueError(f"feature_map must be [H, W, C], got shape {feature_map.shape}")
  padded = np.pad(feature_map, ((1, 1), (1, 1), (0, 0)))  # [H + 2, W + 2, C]
  y, x = np.divmod(np.asarray(points, np.int64).reshape(-1), feature_width)  # [P] each
  offsets = np.arange(3)
  rows = y[:, None, None] + offsets[None, :, None]  # [P, 3, 1]
  cols = x[:, None, None] + offsets[None, None, :]  # [P, 1, 3]
  return padded[rows, cols]  # [P, 3, 3, C]


@dataclasses.dataclass
class ImageTargets:
  """Everything compute_targets works out for one image (shapes in the shorthand)."""
  stride_x: float  # pixels
  stride_y: float
  num_anchors: int  # A
  anchors: np.ndarray  # float64 [N, 4]
  inside: np.ndarray  # bool [N]
  labels: np.ndarray  # int8 [N], after sampling
  points: np.ndarray  # int64 [P], ascending
  locations: np.ndarray  # int64 [P, 2], (y, x) of each point
  point_labels: np.ndarray  # int64 [P, A]
  point_deltas: np.ndarray  # float32 [P, 4A], anchor-major
  num_fg: int  # positives after sampling
  num_bg: int  # negatives after sampling
  num_inside: int  # inside anchors


def compute_targets(width: float, height: float, feature_height: int, feature_width: int,
                    gt_boxes: np.ndarray, image_id: str, *, anchor_config: AnchorConfig,
                    target_config: TargetConfig, epoch: int = 0) -> ImageTargets:
  """All targets of one width x height image with a feature_height x feature_width map.

  Anchors of anchor_config's scales and ratios; labels and sampling by
  target_config. Strides in stride_mode "ratio"; sampling seeded by
  epoch_image_seed(target_config.seed, epoch, image_id), which is
  image_seed(seed, image_id) at epoch 0 (the tiles layout's; rpn-train draws
  the maps layout's afresh every epoch).
  The feature map is not needed: cut the tiles with extract_tiles(..., points, ...).
  compute_level_targets with one level, whose only level this is.
  """
  return compute_level_targets(
      width, height, [(feature_height, feature_width)], gt_boxes, image_id,
      anchor_config=anchor_config, target_config=target_config, epoch=epoch).levels[0]


@dataclasses.dataclass
class LevelTargets:
  """compute_level_targets' result: each level's ImageTargets (its anchors,
  inside mask, sampled labels, points and per-point targets; num_fg, num_bg,
  num_inside of that level) and the image's totals over the levels."""
  levels: list  # [ImageTargets], finest level first
  num_fg: int
  num_bg: int
  num_inside: int

  @property
  def num_points(self) -> int:
    """Records (points with a sampled anchor) over every level."""
    return sum(len(level.points) for level in self.levels)


def compute_level_targets(width: float, height: float, level_shapes, gt_boxes: np.ndarray,
                          image_id: str, *, anchor_config: AnchorConfig,
                          target_config: TargetConfig, epoch: int = 0) -> LevelTargets:
  """The targets of one width x height image over several feature levels
  (the feature-pyramid idea): level_shapes [(Hf, Wf)] of each level's map,
  finest first.

  Every level has anchor_config's scales and ratios in units of its own
  stride (as FPN: an anchor's level follows from its size). The anchors of
  all levels are labelled against the gt boxes together (a gt box's best
  anchor may lie on any level), and batch_size anchors are sampled over all
  of them, seeded as compute_targets; the anchors are concatenated level
  after level, each level's in its own order (anchor index p * A + a).
  With one level this is exactly compute_targets.
  """
  scales, ratios, t = anchor_config.scales, anchor_config.ratios, target_config
  grids = []
  for feature_height, feature_width in level_shapes:
    stride_x, stride_y = anchors_lib.ratio_strides(width, height, feature_width, feature_height)
    anchors = anchors_lib.grid_anchors(feature_height, feature_width, stride_x, stride_y,
                                       scales, ratios)  # [N_l, 4]
    grids.append((int(feature_width), stride_x, stride_y, anchors,
                  anchors_lib.inside_mask(anchors, width, height)))
  anchors = np.concatenate([grid[3] for grid in grids]) if len(grids) > 1 else grids[0][3]
  inside = np.concatenate([grid[4] for grid in grids]) if len(grids) > 1 else grids[0][4]
  gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)  # [G, 4]
  labels, matched = label_anchors(anchors, inside, gt_boxes, t.fg_iou_thresh, t.bg_iou_thresh)
  rng = np.random.default_rng(epoch_image_seed(t.seed, epoch, image_id))
  labels = sample_labels(labels, t.batch_size, t.fg_fraction, rng)
  deltas = anchor_deltas(anchors, gt_boxes, matched, labels)  # [N, 4]
  num_anchors = anchor_config.num_anchors
  levels, start = [], 0
  for feature_width, stride_x, stride_y, level_anchors, level_inside in grids:
    end = start + len(level_anchors)
    level_labels = labels[start:end]
    points, point_labels, point_deltas = point_targets(level_labels, deltas[start:end],
                                                       num_anchors)
    locations = np.stack(np.divmod(points, feature_width), axis=1).astype(np.int64)  # [P, 2]
    levels.append(ImageTargets(
        stride_x=stride_x, stride_y=stride_y, num_anchors=num_anchors, anchors=level_anchors,
        inside=level_inside, labels=level_labels, points=points,
        locations=locations.reshape(-1, 2), point_labels=point_labels,
        point_deltas=point_deltas,
        num_fg=int(np.count_nonzero(level_labels == POSITIVE)),
        num_bg=int(np.count_nonzero(level_labels == NEGATIVE)),
        num_inside=int(np.count_nonzero(level_inside))))
    start = end
  return LevelTargets(levels, num_fg=sum(level.num_fg for level in levels),
                      num_bg=sum(level.num_bg for level in levels),
                      num_inside=sum(level.num_inside for level in levels))
