"""`rpn-evaluate`: proposal recall of `rpn-propose`'s output against the XML boxes.

    rpn-evaluate --proposals DIR --input ROOT [--split DET/val] [--output DIR]

Brings the XML boxes into each proposals.jsonl line's frame and computes the
recall of trainer/recall.py for the top 10, 100, 300 and 1000 proposals.
Writes recall.json and recall.png (recall versus IoU, one curve per top N)
into --output (default: the proposals directory) and prints a table.

Units: boxes are x1, y1, x2, y2 in continuous pixels of the frame fed to the
backbone (the frame whose width and height proposals.jsonl records).
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from pipeline import ilsvrc, storage
from trainer import draw
from trainer import recall as recall_lib

PROPOSALS_NAME = "proposals.jsonl"
RECALL_NAME = "recall.json"
PLOT_NAME = "recall.png"


class EvaluateError(ValueError):
  """The inputs of rpn-evaluate cannot be used (missing file, bad line)."""


# ---------------------------------------------------------------------------
# Files


def read_proposals(proposals_dir: str) -> List[dict]:
  """The lines of DIR/proposals.jsonl, checked for the keys evaluation needs."""
  path = storage.join(proposals_dir, PROPOSALS_NAME)
  if not storage.exists(path):
    raise EvaluateError(f"file not found: {path}")
  lines = []
  for number, text in enumerate(storage.read_text(path).splitlines(), 1):
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
  gt_per_image, errors = [], []
  counts = {"images": len(lines), "images_without_annotation": 0, "annotation_errors": 0}
  for line in lines:
    path = f"{annotations_dir}/{line['image_id']}{ilsvrc.ANNOTATION_EXTENSION}"
    if not storage.exists(path):
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


def recall_plot(results: Dict[str, dict], title: str):
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
                      default=recall_lib.TOP_NS,
                      help="comma-separated numbers of proposals per image")
  return parser


def run(argv: Optional[Sequence[str]] = None) -> dict:
  """Parses flags, evaluates, writes recall.json and recall.png; returns recall.json."""
  args = build_parser().parse_args(argv)
  output = (args.output or args.proposals).rstrip("/")
  _, annotations_dir = ilsvrc.layout_roots(input_root=args.input, split=args.split)
  lines = read_proposals(args.proposals)
  gt_per_image, counts, errors = load_gt(lines, annotations_dir)
  results = recall_lib.evaluate(lines, gt_per_image, args.top_n)
  recall = {
      "proposals": args.proposals,
      "annotations": annotations_dir,
      "iou_thresholds": list(recall_lib.IOU_THRESHOLDS),
      "num_images": len(lines),
      "num_images_with_gt": sum(1 for g in gt_per_image if len(g)),
      "num_gt": int(sum(len(g) for g in gt_per_image)),
      "counts": counts,
      "errors": errors,
      "results": results,
  }
  storage.makedirs(output)
  storage.write_json(storage.join(output, RECALL_NAME), recall)
  buffer = io.BytesIO()
  recall_plot(results, f"proposal recall: {recall['num_gt']} gt boxes in "
              f"{recall['num_images_with_gt']} images").save(buffer, format="PNG")
  storage.write_bytes(storage.join(output, PLOT_NAME), buffer.getvalue())
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
  print(recall_lib.format_table(recall))
  for error in recall["errors"]:
    print(f"  annotation error: {error['path']}: {error['reason']}", file=sys.stderr)
  print(f"wrote {recall['output']}/{RECALL_NAME} and {PLOT_NAME}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
