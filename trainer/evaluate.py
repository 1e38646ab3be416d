"""`rpn-evaluate`: proposal recall of `rpn-propose`'s output against the XML boxes.

    rpn-evaluate --proposals DIR --input ROOT [--split DET/val] [--output DIR]

For the top 10, 100, 300 and 1000 proposals of each image: recall at IoU 0.5
and 0.7, and average recall (AR: the mean recall over the IoU thresholds
0.5:0.05:0.95), with the greedy one-to-one matching of py-faster-rcnn's
`evaluate_recall` and detectron2's `_evaluate_box_proposals`. Images without gt
boxes contribute nothing. Writes recall.json and recall.png (recall versus IoU,
one curve per top N) into --output (default: the proposals directory) and
prints a table.

Units: boxes are x1, y1, x2, y2 in continuous pixels of the frame fed to the
backbone (the frame whose width and height proposals.jsonl records); IoU
thresholds and recalls are fractions in [0, 1].

Shape shorthand:
  P  proposals of one image, sorted by score (descending)
  G  gt boxes of one image
  T  IoU thresholds
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from pipeline import boxes as boxes_lib

TOP_NS = (10, 100, 300, 1000)
# 0.5, 0.55, ..., 0.95, rounded so that 0.7 is exactly 0.7.
IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
PROPOSALS_NAME = "proposals.jsonl"
RECALL_NAME = "recall.json"
PLOT_NAME = "recall.png"


class EvaluateError(ValueError):
  """The inputs of rpn-evaluate cannot be used (missing file, bad line)."""


# ---------------------------------------------------------------------------
# Numeric part (numpy only)


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
                    thresholds: Sequence[float] = IOU_THRESHOLDS) -> dict:
  """Recall of the top `top_n` proposals of each image (None: all of them).

  proposals_per_image: [P, 4] arrays sorted by score (descending);
  gt_per_image: [G, 4] arrays, same order. Returns a JSON-ready dict: top_n,
  num_images (images with gt), num_gt, mean_proposals (proposals used per such
  image), recall@0.5, recall@0.7, ar (mean recall over `thresholds`), and the
  curve (thresholds, recalls). Recalls are None when there is no gt box at all.
  """
  if len(proposals_per_image) != len(gt_per_image):
    raise ValueError(f"{len(proposals_per_image)} proposal arrays but "
                     f"{len(gt_per_image)} gt arrays")
  overlaps, num_used = [], []
  for proposals, gt_boxes in zip(proposals_per_image, gt_per_image):
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    if len(gt_boxes) == 0:
      continue  # images without gt contribute nothing
    proposals = np.asarray(proposals, np.float64).reshape(-1, 4)
    if top_n is not None:
      proposals = proposals[:top_n]
    num_used.append(len(proposals))
    overlaps.append(match_gt_overlaps(proposals, gt_boxes))
  gt_overlaps = np.concatenate(overlaps) if overlaps else np.zeros(0)  # [sum G]
  thresholds = [float(t) for t in thresholds]

  def recall_at(threshold: float) -> Optional[float]:
    return float((gt_overlaps >= threshold).mean()) if len(gt_overlaps) else None

  recalls = [recall_at(t) for t in thresholds]
  return {
      "top_n": top_n,
      "num_images": len(num_used),
      "num_gt": int(len(gt_overlaps)),
      "mean_proposals": float(np.mean(num_used)) if num_used else 0.0,
      "recall@0.5": recall_at(0.5),
      "recall@0.7": recall_at(0.7),
      "ar": float(np.mean(recalls)) if len(gt_overlaps) else None,
      "thresholds": thresholds,
      "recalls": recalls,
  }


# ---------------------------------------------------------------------------
# Tables


def _fmt(value: Optional[float], width: int = 6) -> str:
  return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"


def format_table(recall: dict) -> str:
  """recall.json (or its "results" part) as a text table, one row per top N."""
  per_top = recall.get("results", recall)
  lines = [f"{'top N':>6} {'props/img':>9} {'R@0.5':>6} {'R@0.7':>6} {'AR':>6}"]
  for key in sorted(per_top, key=int):
    r = per_top[key]
    lines.append(f"{int(key):>6} {r['mean_proposals']:>9.1f} {_fmt(r['recall@0.5'])} "
                 f"{_fmt(r['recall@0.7'])} {_fmt(r['ar'])}")
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


# ---------------------------------------------------------------------------
# Files


def read_text(path: str) -> str:
  from apache_beam.io.filesystems import FileSystems
  if not FileSystems.exists(path):
    raise EvaluateError(f"file not found: {path}")
  with FileSystems.open(path) as f:
    return f.read().decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
  from apache_beam.io.filesystems import FileSystems
  with FileSystems.create(path) as f:
    f.write(data)


def read_proposals(proposals_dir: str) -> List[dict]:
  """The lines of DIR/proposals.jsonl, checked for the keys evaluation needs."""
  from apache_beam.io.filesystems import FileSystems
  path = FileSystems.join(proposals_dir, PROPOSALS_NAME)
  lines = []
  for number, text in enumerate(read_text(path).splitlines(), 1):
    if not text.strip():
      continue
    try:
      line = json.loads(text)
    except json.JSONDecodeError as e:
      raise EvaluateError(f"{path} line {number}: not JSON ({e})") from None
    missing = [k for k in ("image_id", "width", "height", "boxes") if k not in line]
    if missing:
      raise EvaluateError(f"{path} line {number}: missing keys {missing}")
    lines.append(line)
  return lines


def frame_gt_boxes(annotation, line: dict) -> np.ndarray:
  """gt boxes float64 [G, 4] of an XML annotation, in the frame of a proposals.jsonl line.

  As rpn-propose did: boxes are reconciled to the decoded image's size
  (`image_width`, `image_height`), then scaled by `box_scale` (the optional
  resize; padding at the bottom/right keeps coordinates). A line without those
  keys is taken as not resized: the image is the XML <size> when that fits in
  the frame (the frame may be padded), else the frame itself.
  """
  from pipeline import ilsvrc
  width, height = int(line["width"]), int(line["height"])
  image_width, image_height = line.get("image_width"), line.get("image_height")
  box_scale = line.get("box_scale", [1.0, 1.0])
  if image_width is None or image_height is None:
    box_scale = [1.0, 1.0]
    if (annotation.width is not None and annotation.height is not None
        and annotation.width <= width and annotation.height <= height):
      image_width, image_height = annotation.width, annotation.height
    else:
      image_width, image_height = width, height
  boxes, _ = ilsvrc.reconcile_size(annotation, int(image_width), int(image_height))
  return boxes * np.array([box_scale[0], box_scale[1]] * 2, np.float64)


def load_gt(lines: List[dict], annotations_dir: str):
  """(gt_per_image, counts, errors) for the images of proposals.jsonl."""
  from apache_beam.io.filesystems import FileSystems
  from pipeline import ilsvrc
  gt_per_image, errors = [], []
  counts = {"images": len(lines), "images_without_annotation": 0, "annotation_errors": 0}
  for line in lines:
    path = f"{annotations_dir}/{line['image_id']}{ilsvrc.ANNOTATION_EXTENSION}"
    if not FileSystems.exists(path):
      counts["images_without_annotation"] += 1
      gt_per_image.append(np.zeros((0, 4)))
      continue
    try:
      annotation = ilsvrc.parse_annotation(ilsvrc.read_bytes(path))
    except (ilsvrc.InputError, OSError) as e:
      counts["annotation_errors"] += 1
      errors.append({"path": path, "stage": "annotation", "reason": str(e)})
      gt_per_image.append(np.zeros((0, 4)))
      continue
    gt_per_image.append(frame_gt_boxes(annotation, line))
  return gt_per_image, counts, errors


def evaluate(lines: List[dict], gt_per_image: List[np.ndarray],
             top_ns: Sequence[int] = TOP_NS,
             thresholds: Sequence[float] = IOU_THRESHOLDS) -> Dict[str, dict]:
  """{str(top_n): evaluate_recall(...)} over proposals.jsonl lines (boxes sorted by score)."""
  proposals_per_image = [np.asarray(line["boxes"], np.float64).reshape(-1, 4) for line in lines]
  return {str(n): evaluate_recall(proposals_per_image, gt_per_image, n, thresholds)
          for n in top_ns}


def recall_plot(results: Dict[str, dict], title: str):
  from trainer import draw
  # The legend gives the proposals actually used per image: top 1000 with
  # post_nms_top_n 300 is the same curve as top 300.
  curves = {f"top {key} ({r['mean_proposals']:.0f}/img)": (r["thresholds"], r["recalls"])
            for key, r in sorted(results.items(), key=lambda kv: int(kv[0]))}
  return draw.draw_recall_plot(curves, title=title)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="rpn-evaluate", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--proposals", required=True,
                      help="output directory of rpn-propose (holds proposals.jsonl)")
  parser.add_argument("--input", required=True, help="dataset root of the ILSVRC 2015+ layout")
  parser.add_argument("--split", default="DET/val", help="split under Annotations/")
  parser.add_argument("--output", default=None,
                      help="where recall.json and recall.png go (default: --proposals)")
  parser.add_argument("--top_n", type=lambda s: tuple(int(v) for v in s.split(",")),
                      default=TOP_NS, help="comma-separated numbers of proposals per image")
  return parser


def run(argv: Optional[Sequence[str]] = None) -> dict:
  """Parses flags, evaluates, writes recall.json and recall.png; returns recall.json."""
  import io
  from apache_beam.io.filesystems import FileSystems
  from pipeline import ilsvrc
  args = build_parser().parse_args(argv)
  output = (args.output or args.proposals).rstrip("/")
  _, annotations_dir = ilsvrc.layout_roots(input_root=args.input, split=args.split)
  lines = read_proposals(args.proposals)
  gt_per_image, counts, errors = load_gt(lines, annotations_dir)
  results = evaluate(lines, gt_per_image, args.top_n)
  recall = {
      "proposals": args.proposals,
      "annotations": annotations_dir,
      "iou_thresholds": list(IOU_THRESHOLDS),
      "num_images": len(lines),
      "num_images_with_gt": sum(1 for g in gt_per_image if len(g)),
      "num_gt": int(sum(len(g) for g in gt_per_image)),
      "counts": counts,
      "errors": errors,
      "results": results,
  }
  if "://" not in output:
    import os
    os.makedirs(output, exist_ok=True)
  write_bytes(FileSystems.join(output, RECALL_NAME),
              (json.dumps(recall, indent=2) + "\n").encode("utf-8"))
  buffer = io.BytesIO()
  recall_plot(results, f"proposal recall: {recall['num_gt']} gt boxes in "
              f"{recall['num_images_with_gt']} images").save(buffer, format="PNG")
  write_bytes(FileSystems.join(output, PLOT_NAME), buffer.getvalue())
  recall["output"] = output
  return recall


def main(argv: Optional[Sequence[str]] = None) -> int:
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
  try:
    recall = run(argv)
  except ValueError as e:  # EvaluateError, bad flags or layout
    print(f"rpn-evaluate: error: {e}", file=sys.stderr)
    return 2
  print(f"proposal recall: {recall['num_gt']} gt boxes in {recall['num_images_with_gt']} "
        f"of {recall['num_images']} images")
  print(format_table(recall))
  for error in recall["errors"]:
    print(f"  annotation error: {error['path']}: {error['reason']}", file=sys.stderr)
  print(f"wrote {recall['output']}/{RECALL_NAME} and {PLOT_NAME}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
