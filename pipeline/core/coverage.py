"""Anchor coverage of gt boxes, and the search for better anchor scales and ratios.

Coverage at IoU t: the fraction of gt boxes whose best IoU over their image's
anchors is >= t, over all anchors or over the inside ones (those training
labels). The anchors are exactly the ones rpn-preprocess builds for the frame
(anchors.grid_anchors, anchors.inside_mask) and the IoU is boxes.box_iou.

Units: boxes are x1, y1, x2, y2 in pixels of the frame fed to the backbone;
scales are in units of the stride, ratios are height / width.

Shape shorthand:
  G  gt boxes of an image         A  anchors per point
  N  anchors of an image          B  boxes of a search sample
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from pipeline.core import anchors as anchors_lib
from pipeline.core import boxes as boxes_lib

THRESHOLDS = (0.5, 0.7)
# sqrt(area) bounds of the size buckets, in pixels of the frame.
SIZE_BUCKETS = ((0.0, 64.0, "<64"), (64.0, 128.0, "64-128"), (128.0, 256.0, "128-256"),
                (256.0, math.inf, ">=256"))
HISTOGRAM_BINS = 100  # best-IoU histogram over [0, 1]
WHICH = ("inside", "all")


@dataclasses.dataclass(frozen=True)
class FrameBoxes:
  """One image as the anchors see it: frame and feature-map sizes, gt boxes [G, 4]."""
  image_id: str
  width: int
  height: int
  feature_height: int
  feature_width: int
  gt_boxes: np.ndarray
  path: str = ""  # the image file, for errors lines
  # With several feature levels: (Hf, Wf) of every level, finest first (the
  # first is feature_height, feature_width); () for one level.
  level_shapes: Tuple[Tuple[int, int], ...] = ()

  @property
  def strides(self) -> Tuple[float, float]:
    return anchors_lib.ratio_strides(self.width, self.height, self.feature_width,
                                     self.feature_height)

  @property
  def shapes(self) -> Tuple[Tuple[int, int], ...]:
    """(Hf, Wf) of each level, finest first."""
    return tuple(self.level_shapes) or ((self.feature_height, self.feature_width),)

  def at_level(self, level: int) -> "FrameBoxes":
    """This frame as one level sees it (its map's size), with no level_shapes."""
    feature_height, feature_width = self.shapes[level]
    return dataclasses.replace(self, feature_height=int(feature_height),
                               feature_width=int(feature_width), level_shapes=())


def best_ious(frame: FrameBoxes, scales: Sequence[float], ratios: Sequence[float]
              ) -> Dict[str, np.ndarray]:
  """{"inside": [G], "all": [G]}: each gt box's best IoU over the frame's anchors;
  also "num_inside" and "num_anchors", the frame's anchor counts, and with
  several levels "level" [G]: the level of each box's best inside anchor.

  The anchors are those rpn-preprocess builds (grid_anchors, inside_mask; on
  every level, the scales in units of its stride); a box with no inside
  anchor in its image has best inside IoU 0.
  """
  gt = np.asarray(frame.gt_boxes, np.float64).reshape(-1, 4)
  anchors, levels = [], []
  for level, (feature_height, feature_width) in enumerate(frame.shapes):
    stride_x, stride_y = anchors_lib.ratio_strides(frame.width, frame.height, feature_width,
                                                   feature_height)
    anchors.append(anchors_lib.grid_anchors(feature_height, feature_width, stride_x, stride_y,
                                            scales, ratios))
    levels.append(np.full(len(anchors[-1]), level, np.int64))
  anchors = np.concatenate(anchors) if len(anchors) > 1 else anchors[0]
  inside = anchors_lib.inside_mask(anchors, frame.width, frame.height)
  counts = {"num_inside": int(inside.sum()), "num_anchors": len(anchors)}
  several = len(levels) > 1
  if len(gt) == 0:
    extra = {"level": np.zeros(0, np.int64)} if several else {}
    return dict(counts, inside=np.zeros(0), all=np.zeros(0), **extra)
  iou = boxes_lib.box_iou(anchors, gt)  # [N, G]
  best_inside = iou[inside].max(axis=0) if inside.any() else np.zeros(len(gt))
  result = dict(counts, inside=best_inside, all=iou.max(axis=0))
  if several:
    level_of = np.concatenate(levels)[inside]
    result["level"] = (level_of[iou[inside].argmax(axis=0)] if inside.any()
                       else np.zeros(len(gt), np.int64))
  return result


def size_bucket(gt_boxes: np.ndarray) -> np.ndarray:
  """int [G]: index into SIZE_BUCKETS of each box's sqrt(area)."""
  side = np.sqrt(boxes_lib.box_area(gt_boxes))
  edges = np.array([upper for _, upper, _ in SIZE_BUCKETS[:-1]])
  return np.searchsorted(edges, side, side="right")


class CoverageStats:
  """Sums of one anchor set's best IoUs: enough for coverage, mean and histograms.

  Mergeable (Beam combines partial sums), JSON-ready through `summary`.
  """

  def __init__(self):
    self.boxes = np.zeros(len(SIZE_BUCKETS), np.int64)  # per size bucket
    # [which, bucket, threshold] boxes covered
    self.covered = np.zeros((len(WHICH), len(SIZE_BUCKETS), len(THRESHOLDS)), np.int64)
    self.iou_sum = np.zeros((len(WHICH), len(SIZE_BUCKETS)))
    self.histogram = np.zeros((len(WHICH), HISTOGRAM_BINS), np.int64)
    # with several levels: [level, (boxes, covered at each threshold)] of the
    # boxes whose best inside anchor is on that level
    self.levels = np.zeros((0, 1 + len(THRESHOLDS)), np.int64)

  def add(self, ious: Dict[str, np.ndarray], buckets: np.ndarray) -> "CoverageStats":
    np.add.at(self.boxes, buckets, 1)
    if "level" in ious:
      level = np.asarray(ious["level"], np.int64)
      if len(level):
        self._grow_levels(int(level.max()) + 1)
      np.add.at(self.levels[:, 0], level, 1)
      for t, threshold in enumerate(THRESHOLDS):
        np.add.at(self.levels[:, 1 + t], level, (ious["inside"] >= threshold).astype(np.int64))
    for w, which in enumerate(WHICH):
      best = ious[which]
      for t, threshold in enumerate(THRESHOLDS):
        np.add.at(self.covered[w, :, t], buckets, (best >= threshold).astype(np.int64))
      np.add.at(self.iou_sum[w], buckets, best)
      bins = np.minimum((best * HISTOGRAM_BINS).astype(np.int64), HISTOGRAM_BINS - 1)
      np.add.at(self.histogram[w], bins, 1)
    return self

  def merge(self, other: "CoverageStats") -> "CoverageStats":
    self.boxes += other.boxes
    self.covered += other.covered
    self.iou_sum += other.iou_sum
    self.histogram += other.histogram
    self._grow_levels(len(other.levels))
    self.levels[:len(other.levels)] += other.levels
    return self

  def _grow_levels(self, num_levels: int) -> None:
    if num_levels > len(self.levels):
      grown = np.zeros((num_levels, self.levels.shape[1]), np.int64)
      grown[:len(self.levels)] = self.levels
      self.levels = grown

  @property
  def num_boxes(self) -> int:
    return int(self.boxes.sum())

  def coverage(self, which: str = "inside", threshold: float = 0.7) -> float:
    covered = self.covered[WHICH.index(which), :, THRESHOLDS.index(threshold)].sum()
    return float(covered / max(1, self.num_boxes))

  def summary(self) -> Dict:
    """coverage {inside, all} x {"0.5", "0.7"}, mean_best_iou (inside), by_size, boxes."""
    def block(mask):
      n = int(self.boxes[mask].sum())
      cov = {which: {str(t): round(float(self.covered[w, mask, i].sum()) / max(1, n), 6)
                     for i, t in enumerate(THRESHOLDS)}
             for w, which in enumerate(WHICH)}
      mean = float(self.iou_sum[0, mask].sum()) / max(1, n)
      return n, cov, round(mean, 6)
    n, cov, mean = block(np.ones(len(SIZE_BUCKETS), bool))
    by_size = {}
    for b, (_, _, name) in enumerate(SIZE_BUCKETS):
      mask = np.zeros(len(SIZE_BUCKETS), bool)
      mask[b] = True
      nb, covb, meanb = block(mask)
      by_size[name] = {"boxes": nb, "coverage": covb, "mean_best_iou": meanb}
    out = {"boxes": n, "coverage": cov, "mean_best_iou": mean, "by_size": by_size,
           "histogram": {which: self.histogram[w].tolist() for w, which in enumerate(WHICH)}}
    if len(self.levels):
      out["by_level"] = [
          {"level": level, "boxes": int(row[0]),
           "coverage": {str(t): round(float(row[1 + i]) / max(1, int(row[0])), 6)
                        for i, t in enumerate(THRESHOLDS)}}
          for level, row in enumerate(self.levels)]
    return out


# ---------------------------------------------------------------------------
# The search


@dataclasses.dataclass
class BoxSample:
  """The gt boxes of a set of frames, one row per box (arrays [B]), for the search."""
  width: np.ndarray
  height: np.ndarray
  stride_x: np.ndarray
  stride_y: np.ndarray
  feature_width: np.ndarray
  feature_height: np.ndarray
  boxes: np.ndarray  # [B, 4]

  @classmethod
  def of(cls, frames: Sequence[FrameBoxes], level: int = 0) -> "BoxSample":
    """The boxes of `frames` with the strides and map sizes of one feature level."""
    rows = []
    for f in frames:
      if f.level_shapes:
        f = f.at_level(level)
      gt = np.asarray(f.gt_boxes, np.float64).reshape(-1, 4)
      stride_x, stride_y = f.strides
      for box in gt:
        rows.append((f.width, f.height, stride_x, stride_y, f.feature_width, f.feature_height,
                     *box))
    a = np.asarray(rows, np.float64).reshape(-1, 10)
    return cls(a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4], a[:, 5], a[:, 6:10])

  def __len__(self) -> int:
    return len(self.boxes)


def _nearest_centre(centre, stride, size, extent, cells, inside: bool):
  """Per box: the grid centre (i + 0.5) * stride nearest to `centre` among the
  points whose anchor of this `size` is allowed (inside: lies within [0, extent]).
  Returns (centre [B], allowed [B])."""
  low = np.zeros_like(centre)
  high = cells - 1.0
  if inside:
    tol = anchors_lib.INSIDE_TOLERANCE * extent
    low = np.maximum(low, np.ceil((0.5 * size - tol) / stride - 0.5))
    high = np.minimum(high, np.floor((extent + tol - 0.5 * size) / stride - 0.5))
  i = np.clip(np.round(centre / stride - 0.5), low, high)
  return (i + 0.5) * stride, low <= high


def levels_of(frames: Sequence[FrameBoxes]):
  """The search's sample of `frames`: a BoxSample, or with several levels a
  list of them, one per level (the same boxes, each level's strides)."""
  num_levels = max((len(f.shapes) for f in frames), default=1)
  if num_levels == 1:
    return BoxSample.of(frames)
  return [BoxSample.of(frames, level) for level in range(num_levels)]


def fast_best_iou(sample: BoxSample, scales: Sequence[float], ratios: Sequence[float],
                  inside: bool = True) -> np.ndarray:
  """[B]: each box's best IoU over its frame's anchors, without building the grid.

  IoU of two axis-aligned boxes grows as either centre offset shrinks, and the
  inside condition restricts x and y separately, so the best anchor of each
  shape sits at the allowed grid point nearest the box centre on each axis.
  Equals best_ious up to float rounding (tests/pipeline/core/test_coverage.py);
  the search calls it thousands of times. A list of samples (levels_of:
  the same boxes at several levels) gives the best over the levels.
  """
  if isinstance(sample, list):
    return np.max([fast_best_iou(level, scales, ratios, inside) for level in sample], axis=0)
  gx1, gy1, gx2, gy2 = sample.boxes.T
  gcx, gcy = 0.5 * (gx1 + gx2), 0.5 * (gy1 + gy2)
  g_area = (gx2 - gx1) * (gy2 - gy1)
  best = np.zeros(len(sample))
  for r in ratios:
    for s in scales:
      w = s * sample.stride_x / math.sqrt(r)
      h = s * sample.stride_y * math.sqrt(r)
      cx, ok_x = _nearest_centre(gcx, sample.stride_x, w, sample.width, sample.feature_width,
                                 inside)
      cy, ok_y = _nearest_centre(gcy, sample.stride_y, h, sample.height,
                                 sample.feature_height, inside)
      iw = np.maximum(np.minimum(gx2, cx + 0.5 * w) - np.maximum(gx1, cx - 0.5 * w), 0.0)
      ih = np.maximum(np.minimum(gy2, cy + 0.5 * h) - np.maximum(gy1, cy - 0.5 * h), 0.0)
      inter = iw * ih
      iou = inter / (w * h + g_area - inter)
      best = np.maximum(best, np.where(ok_x & ok_y, iou, 0.0))
  return best


def _score(sample: BoxSample, scales, ratios, threshold: float) -> Tuple[float, float, float]:
  """(objective, boxes covered at `threshold`, mean best IoU), inside anchors, on the sample.

  objective: boxes covered at IoU 0.5 plus boxes covered at `threshold` (0.7):
  the two thresholds rpn-preprocess labels with and the recall table reports.
  Coverage at 0.7 alone buys it by giving up boxes at 0.5 (on the sample
  data, stride 16: 0.90 -> 0.76 at 0.5 for 0.35 -> 0.58 at 0.7; the sum gives
  0.84 and 0.54).
  """
  best = fast_best_iou(sample, scales, ratios, inside=True)
  covered = float((best >= threshold).sum())
  objective = covered + float((best >= min(0.5, threshold)).sum())
  return objective, covered, float(best.mean()) if len(best) else 0.0


def candidate_grid(low: float, high: float, steps_per_octave: int = 4) -> List[float]:
  """Values 2 ** (k / steps_per_octave) from about `low` to about `high`, rounded to 3 places."""
  k_low = math.floor(math.log2(low) * steps_per_octave)
  k_high = math.ceil(math.log2(high) * steps_per_octave)
  return [round(2.0 ** (k / steps_per_octave), 3) for k in range(k_low, k_high + 1)]


@dataclasses.dataclass(frozen=True)
class SearchResult:
  scales: Tuple[float, ...]
  ratios: Tuple[float, ...]
  sample_boxes: int
  covered: float  # boxes of the sample covered at `threshold` (inside)
  start_covered: float  # the same for the given anchors
  evaluations: int
  threshold: float

  def to_dict(self) -> Dict:
    return {"method": "coordinate ascent over log-spaced scales and ratios (4 per octave), "
                      "from the given set and from quantiles of the boxes' sizes and shapes, "
                      "maximising boxes covered at IoU 0.5 plus at 0.7 (inside anchors) "
                      "without covering fewer at 0.7",
            "threshold": self.threshold, "sample_boxes": self.sample_boxes,
            "sample_covered": {"current": self.start_covered, "suggested": self.covered},
            "evaluations": self.evaluations}


def _quantile_start(sample: BoxSample, num_scales: int, num_ratios: int):
  """Scales and ratios at evenly spaced quantiles of the boxes' sizes (in strides) and shapes.
  With several levels (a list of samples), sizes in strides of the middle level."""
  if isinstance(sample, list):
    sample = sample[len(sample) // 2]
  w = (sample.boxes[:, 2] - sample.boxes[:, 0]) / sample.stride_x
  h = (sample.boxes[:, 3] - sample.boxes[:, 1]) / sample.stride_y
  qs = (np.arange(num_scales) + 0.5) / num_scales
  qr = (np.arange(num_ratios) + 0.5) / num_ratios
  scales = np.quantile(np.sqrt(w * h), qs)
  ratios = np.quantile(h / w, qr)
  return [round(float(v), 3) for v in scales], [round(float(v), 3) for v in ratios]


def resample(values: Sequence[float], count: int) -> List[float]:
  """`count` values spaced geometrically over the range of `values` (the
  values themselves when the count is theirs), rounded to 3 places."""
  if count == len(values):
    return [float(v) for v in values]  # as given, in the given order
  values = sorted(float(v) for v in values)
  if count == 1:
    return [round(float(np.exp(np.mean(np.log(values)))), 3)]
  return [round(float(v), 3) for v in np.geomspace(values[0], values[-1], count)]


def search_anchors(sample, scales: Sequence[float], ratios: Sequence[float],
                   threshold: float = 0.7, max_rounds: int = 6,
                   num_scales: Optional[int] = None, num_ratios: Optional[int] = None
                   ) -> SearchResult:
  """`num_scales` scales and `num_ratios` ratios (default: as many as given)
  that cover more of the sample's boxes with inside anchors, never fewer at
  IoU `threshold` than the given set.

  Coordinate ascent on _score's objective (boxes covered at 0.5 plus at 0.7,
  ties broken by the mean best IoU): one value at a time (a scale or a ratio)
  takes the grid value (4 per octave) that scores best among those that cover
  at least as many boxes at `threshold` as the given set, until a round
  changes nothing. It runs from the given set and from the sizes' quantiles;
  the better end point wins, and the given set is kept unless something
  scores strictly more. With other counts than the given set's, it runs
  from the given set resampled to those counts (resample) instead, and the
  given set only sets the floor at `threshold`. `sample` is a BoxSample, or
  with several feature levels a list of them (levels_of): one set of scales
  (in each level's strides) and ratios serves every level, as one RPN head
  does, so the search scores a set by each box's best anchor over the levels.
  """
  scales, ratios = [float(s) for s in scales], [float(r) for r in ratios]
  start = _score(sample, scales, ratios, threshold)
  num_boxes = len(sample[0]) if isinstance(sample, list) else len(sample)
  counts = (num_scales or len(scales), num_ratios or len(ratios))
  if num_boxes == 0:
    return SearchResult(tuple(resample(scales, counts[0])), tuple(resample(ratios, counts[1])),
                        0, 0.0, 0.0, 1, threshold)
  floor = start[1]

  def rank(score):  # comparable; infeasible sets rank below every feasible one
    return (score[1] >= floor, score[0], score[2])
  side = np.concatenate([
      np.sqrt((level.boxes[:, 2] - level.boxes[:, 0]) / level.stride_x
              * (level.boxes[:, 3] - level.boxes[:, 1]) / level.stride_y)
      for level in (sample if isinstance(sample, list) else [sample])])
  scale_grid = candidate_grid(max(0.25, float(side.min()) / 1.5), float(side.max()) * 1.5)
  ratio_grid = candidate_grid(0.125, 8.0)
  evaluations = 1
  same_counts = counts == (len(scales), len(ratios))
  best_set, best_score = (scales, ratios), start
  if not same_counts:  # the given set is no candidate: every end point beats it
    best_set, best_score = None, (-1.0, -1.0, -1.0)
  for initial in ((resample(scales, counts[0]), resample(ratios, counts[1])),
                  _quantile_start(sample, *counts)):
    current = [list(initial[0]), list(initial[1])]
    score = _score(sample, *current, threshold)
    evaluations += 1
    for _ in range(max_rounds):
      changed = False
      for part, grid in ((0, scale_grid), (1, ratio_grid)):
        for slot in range(len(current[part])):
          for value in grid:
            if value in current[part]:
              continue
            trial = [list(current[0]), list(current[1])]
            trial[part][slot] = value
            trial_score = _score(sample, *trial, threshold)
            evaluations += 1
            if rank(trial_score) > rank(score):
              current, score, changed = trial, trial_score, True
      if not changed:
        break
    if rank(score) > rank(best_score):
      best_set, best_score = (current[0], current[1]), score
  return SearchResult(tuple(sorted(best_set[0])), tuple(sorted(best_set[1])), num_boxes,
                      best_score[1] / num_boxes, start[1] / num_boxes, evaluations,
                      threshold)


def frames_summary(frames: Sequence[FrameBoxes], scales, ratios) -> CoverageStats:
  """CoverageStats of a list of frames (a plain loop; the Beam pipeline sums the same)."""
  stats = CoverageStats()
  for frame in frames:
    stats.add(best_ious(frame, scales, ratios), size_bucket(frame.gt_boxes))
  return stats


def anchor_shapes(scales, ratios) -> np.ndarray:
  """[A, 2] anchor (width, height) in units of the stride, index ratio-major."""
  base = anchors_lib.base_anchors(scales, ratios, 1.0, 1.0)
  return np.stack([base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]], axis=1)


def choose_suggestion(current: Dict, suggested: Dict, threshold: float = 0.7
                      ) -> Optional[str]:
  """None when `suggested` covers at least as many boxes as `current` at the
  threshold (inside) on the whole dataset; else the reason to fall back."""
  key = str(threshold)
  cur, sug = current["coverage"]["inside"][key], suggested["coverage"]["inside"][key]
  if sug < cur:
    return (f"the set found on the search sample covers fewer boxes of the whole dataset "
            f"({sug:.4f} < {cur:.4f} at IoU {threshold}): suggesting the current set")
  return None
