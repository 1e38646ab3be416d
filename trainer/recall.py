"""Proposal recall (numpy only): how many gt boxes the proposals find.

For the top N proposals of each image: recall at IoU 0.5 and 0.7, and average
recall (AR: the mean recall over the IoU thresholds 0.5:0.05:0.95), with the
greedy one-to-one matching of py-faster-rcnn's `evaluate_recall` and
detectron2's `_evaluate_box_proposals`. Images without gt boxes contribute
nothing; gt boxes of images without proposals (`missed_gt`) count as missed.

By size (COCO's area ranges): the same recall over the gt boxes of one size
only, small (area < 32²), medium (32² to 96²) or large (>= 96²), the area
measured in the original image's pixels. As detectron2's
`_evaluate_box_proposals` does, the other gt boxes are left out before the
matching, so a proposal can match a box of the size asked for only.

Units: boxes are x1, y1, x2, y2 in continuous pixels of one frame; areas in
square pixels of the original image; IoU thresholds and recalls are fractions
in [0, 1].

Shape shorthand:
  P  proposals of one image, sorted by score (descending)
  G  gt boxes of one image
  T  IoU thresholds
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from pipeline.core import boxes as boxes_lib

TOP_NS = (10, 100, 300, 1000)
# 0.5, 0.55, ..., 0.95, rounded so that 0.7 is exactly 0.7.
IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
# COCO's gt box sizes: [low, high) of the area in square pixels of the original image.
AREA_RANGES: Dict[str, Tuple[float, float]] = {
    "small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2), "large": (96.0 ** 2, math.inf)}


def match_gt_overlaps(proposals: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
  """IoU of the proposal matched to each gt box ([G]; 0 for a gt left unmatched).

  Greedy one-to-one matching (py-faster-rcnn / detectron2): find the gt box
  best covered by any proposal, assign that proposal to it, remove both, repeat
  min(P, G) times. A proposal covers at most one gt box.
  """
  proposals = np.asarray(proposals, np.float64).reshape(-1, 4)
  gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  matched = np.zeros(len(gt_boxes), np.float64)
  if len(proposals) == 0 or len(gt_boxes) == 0:
    return matched
  overlaps = boxes_lib.box_iou(proposals, gt_boxes).astype(np.float64)  # [P, G]
  for j in range(min(len(proposals), len(gt_boxes))):
    best_proposal = overlaps.argmax(axis=0)  # [G]
    best_iou = overlaps[best_proposal, np.arange(len(gt_boxes))]  # [G]
    gt_index = int(best_iou.argmax())
    box_index = int(best_proposal[gt_index])
    assert best_iou[gt_index] >= 0  # a gt left to match and a proposal left for it
    matched[j] = best_iou[gt_index]
    overlaps[box_index, :] = -1.0
    overlaps[:, gt_index] = -1.0
  # matched is in matching order, like the reference implementations; the
  # recall only counts values, so the order does not matter.
  return matched


def evaluate_recall(proposals_per_image: Sequence[np.ndarray],
                    gt_per_image: Sequence[np.ndarray], top_n: Optional[int] = None,
                    thresholds: Sequence[float] = IOU_THRESHOLDS, missed_gt: int = 0,
                    missed_images: int = 0) -> dict:
  """Recall of the top `top_n` proposals of each image (None: all of them).

  proposals_per_image: [P, 4] arrays sorted by score (descending);
  gt_per_image: [G, 4] arrays, same order. missed_gt: gt boxes of images
  without any proposals array (e.g. images rpn-propose could not read), each
  counted as missed (overlap 0) at every threshold; missed_images: those of
  such images that hold gt boxes. Returns a JSON-ready dict: top_n, num_images
  (images with gt, missed_images included), num_gt (missed_gt included),
  missed_gt, mean_proposals (proposals used per image with gt among
  proposals_per_image only: the missed images have no proposals to count),
  recall@0.5, recall@0.7, ar (mean recall over `thresholds`), and the curve
  (thresholds, recalls). Recalls are None when there is no gt box at all.
  """
  if missed_gt < 0 or missed_images < 0:
    raise ValueError(f"missed_gt and missed_images must be >= 0, got {missed_gt}, "
                     f"{missed_images}")
  if len(proposals_per_image) != len(gt_per_image):
    raise ValueError(f"{len(proposals_per_image)} proposal arrays but "
                     f"{len(gt_per_image)} gt arrays")
  overlaps, num_used = [], []
  for proposals, gt_boxes in zip(proposals_per_image, gt_per_image, strict=True):
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    if len(gt_boxes) == 0:
      continue  # images without gt contribute nothing
    proposals = np.asarray(proposals, np.float64).reshape(-1, 4)
    if top_n is not None:
      proposals = proposals[:top_n]
    num_used.append(len(proposals))
    overlaps.append(match_gt_overlaps(proposals, gt_boxes))
  overlaps.append(np.zeros(int(missed_gt)))  # gt boxes with no proposal at all
  gt_overlaps = np.concatenate(overlaps)  # [sum G + missed_gt]
  thresholds = [float(t) for t in thresholds]

  def recall_at(threshold: float) -> Optional[float]:
    return float((gt_overlaps >= threshold).mean()) if len(gt_overlaps) else None

  recalls = [recall_at(t) for t in thresholds]
  return {
      "top_n": top_n,
      "num_images": len(num_used) + int(missed_images),
      "num_gt": int(len(gt_overlaps)),
      "missed_gt": int(missed_gt),
      "mean_proposals": float(np.mean(num_used)) if num_used else 0.0,
      "recall@0.5": recall_at(0.5),
      "recall@0.7": recall_at(0.7),
      "ar": float(np.mean(recalls)) if len(gt_overlaps) else None,
      "thresholds": thresholds,
      "recalls": recalls,
  }


def size_masks(areas: np.ndarray) -> Dict[str, np.ndarray]:
  """{size name: bool mask [G]} of gt areas (square pixels of the original image)."""
  areas = np.asarray(areas, np.float64).reshape(-1)
  return {name: (areas >= low) & (areas < high) for name, (low, high) in AREA_RANGES.items()}


def evaluate_by_size(proposals_per_image: Sequence[np.ndarray],
                     gt_per_image: Sequence[np.ndarray],
                     areas_per_image: Sequence[np.ndarray], top_n: Optional[int] = None,
                     thresholds: Sequence[float] = IOU_THRESHOLDS,
                     missed_areas: Sequence[float] = ()) -> Dict[str, dict]:
  """{"small"|"medium"|"large": {num_gt, recall@0.5, recall@0.7, ar}} (AREA_RANGES).

  areas_per_image: [G] arrays, the area of each gt box in the original
  image's pixels (the boxes themselves are in the proposals' frame);
  missed_areas: the areas of gt boxes without any proposals array (see
  evaluate_recall's missed_gt). Each size is evaluated with the gt boxes of
  that size alone, so the one-to-one matching runs among them only.
  """
  if len(areas_per_image) != len(gt_per_image):
    raise ValueError(f"{len(areas_per_image)} area arrays but {len(gt_per_image)} gt arrays")
  masks_per_image = [size_masks(areas) for areas in areas_per_image]
  missed_masks = size_masks(np.asarray(missed_areas, np.float64))
  out = {}
  for name in AREA_RANGES:
    gt_of_size = [np.asarray(gt, np.float64).reshape(-1, 4)[masks[name]]
                  for gt, masks in zip(gt_per_image, masks_per_image, strict=True)]
    r = evaluate_recall(proposals_per_image, gt_of_size, top_n, thresholds,
                        missed_gt=int(missed_masks[name].sum()))
    out[name] = {key: r[key] for key in ("num_gt", "recall@0.5", "recall@0.7", "ar")}
  return out


# ---------------------------------------------------------------------------
# Tables


def _fmt(value: Optional[float], width: int = 6) -> str:
  return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"


def format_table(recall: dict) -> str:
  """recall.json (or its "results" part) as a text table, one row per top N.

  AR by size (AR_S, AR_M, AR_L) shows where the results hold it ("by_size"),
  with a last line giving the gt boxes of each size.
  """
  per_top = recall.get("results", recall)
  by_size = all("by_size" in r for r in per_top.values()) and bool(per_top)
  header = f"{'top N':>6} {'props/img':>9} {'R@0.5':>6} {'R@0.7':>6} {'AR':>6}"
  if by_size:
    header += f" {'AR_S':>6} {'AR_M':>6} {'AR_L':>6}"
  lines = [header]
  for key in sorted(per_top, key=int):
    r = per_top[key]
    row = (f"{int(key):>6} {r['mean_proposals']:>9.1f} {_fmt(r['recall@0.5'])} "
           f"{_fmt(r['recall@0.7'])} {_fmt(r['ar'])}")
    if by_size:
      row += "".join(f" {_fmt(r['by_size'][name]['ar'])}" for name in AREA_RANGES)
    lines.append(row)
  if by_size:
    sizes = next(iter(per_top.values()))["by_size"]
    lines.append("(gt boxes by size, area in original pixels: " + ", ".join(
        f"{sizes[name]['num_gt']} {name}" for name in AREA_RANGES)
        + "; small < 32², medium < 96²)")
  return "\n".join(lines)


def format_comparison(results_by_name: Dict[str, dict]) -> str:
  """Several recall.json results side by side: one row per top N, a column group per name.

  results_by_name: name -> recall.json content (or its "results" part).
  A top N that a result lacks shows as "-".
  """
  names = list(results_by_name)
  per_top = {name: results_by_name[name].get("results", results_by_name[name])
             for name in names}
  top_ns = sorted({int(k) for results in per_top.values() for k in results})
  group = max([20] + [len(name) for name in names])
  header1 = f"{'':>6}" + "".join(f"   {name:^{group}}" for name in names)
  header2 = f"{'top N':>6}" + "".join(
      f"   {'R@0.5':>{group - 14}} {'R@0.7':>6} {'AR':>6}" for _ in names)
  lines = [header1.rstrip(), header2]
  for top_n in top_ns:
    row = f"{top_n:>6}"
    for name in names:
      r = per_top[name].get(str(top_n), per_top[name].get(top_n))
      if r is None:
        row += f"   {'-':>{group - 14}} {'-':>6} {'-':>6}"
      else:
        row += (f"   {_fmt(r['recall@0.5'], group - 14)} {_fmt(r['recall@0.7'])} "
                f"{_fmt(r['ar'])}")
    lines.append(row)
  counts = [f"{name}: {_num_gt(results_by_name[name])} gt boxes in "
            f"{_num_images(results_by_name[name])} images" for name in names]
  return "\n".join(lines + ["(" + "; ".join(counts) + ")"])


def _num_gt(result: dict):
  if "num_gt" in result:
    return result["num_gt"]
  per_top = result.get("results", result)
  return next(iter(per_top.values()))["num_gt"] if per_top else 0


def _num_images(result: dict):
  if "num_images_with_gt" in result:
    return result["num_images_with_gt"]
  per_top = result.get("results", result)
  return next(iter(per_top.values()))["num_images"] if per_top else 0


def evaluate(lines: List[dict], gt_per_image: List[np.ndarray],
             top_ns: Sequence[int] = TOP_NS,
             thresholds: Sequence[float] = IOU_THRESHOLDS, missed_gt: int = 0,
             missed_images: int = 0,
             areas_per_image: Optional[Sequence[np.ndarray]] = None,
             missed_areas: Sequence[float] = ()) -> Dict[str, dict]:
  """{str(top_n): evaluate_recall(...)} over proposals.jsonl lines (boxes sorted by score).

  missed_gt, missed_images: gt boxes (and the images holding them) that have
  no line, counted as missed in every result (see evaluate_recall). With
  areas_per_image (and missed_areas, the areas of the missed_gt boxes), each
  result also holds "by_size": evaluate_by_size(...).
  """
  if areas_per_image is not None and len(missed_areas) != missed_gt:
    raise ValueError(f"{len(missed_areas)} missed areas for {missed_gt} missed gt boxes")
  proposals_per_image = [np.asarray(line["boxes"], np.float64).reshape(-1, 4) for line in lines]
  results = {}
  for n in top_ns:
    result = evaluate_recall(proposals_per_image, gt_per_image, n, thresholds, missed_gt,
                             missed_images)
    if areas_per_image is not None:
      result["by_size"] = evaluate_by_size(proposals_per_image, gt_per_image, areas_per_image,
                                           n, thresholds, missed_areas)
    results[str(n)] = result
  return results
