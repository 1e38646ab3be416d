"""`rpn-evaluate`: proposal recall of `rpn-propose`'s output against the XML boxes.

    rpn-evaluate --proposals DIR|FILE --input ROOT [--split DET/val] [--output DIR]

Brings the XML boxes into each proposals line's frame and computes the
recall of trainer/recall.py for the top 10, 100, 300 and 1000 proposals,
overall and by gt box size (COCO's small, medium and large, by the box's area
in the original image's pixels).
Images that rpn-propose could not read or propose for (its errors.jsonl) stay
in the denominator: their XML boxes count as missed at every IoU. Writes
recall.json and recall.png (recall versus IoU, one curve per top N) into
--output (default: the proposals directory) and prints a table.

Units: boxes are x1, y1, x2, y2 in continuous pixels of the frame fed to the
backbone (the frame whose width and height each proposals line records).
"""
from __future__ import annotations

import argparse
import json
import logging
import pickle
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from pipeline.commands import cli, preflight
from pipeline.core import boxes as boxes_lib
from pipeline.core import config
from pipeline.io import ilsvrc, storage
from pipeline.io import images as images_lib
from trainer import formats, plots, settings
from trainer import recall as recall_lib

PROPOSALS_NAME = settings.PROPOSALS_NAME
PROPOSALS_PATTERN = settings.PROPOSALS_PATTERN
FILE_SUFFIXES = (".pkl", ".json")  # rpn-propose --formats detectron2, coco
ERRORS_NAME = config.ERRORS_NAME  # rpn-propose's failed images
RECALL_NAME = "recall.json"
PLOT_NAME = "recall.png"

_LOGGER = logging.getLogger(__name__)


class EvaluateError(ValueError):
  """The inputs of rpn-evaluate cannot be used (missing file, bad line)."""


# ---------------------------------------------------------------------------
# Files


def _read_jsonl(path: str, keys: Sequence[str]) -> List[dict]:
  """The JSON objects of a .jsonl file, each checked for `keys`; EvaluateError names the line."""
  records = []
  for number, text in enumerate(storage.read_text(path).splitlines(), 1):
    if not text.strip():
      continue
    try:
      record = json.loads(text)
    except json.JSONDecodeError as e:
      raise EvaluateError(f"{path} line {number}: not JSON ({e})") from None
    if not isinstance(record, dict):
      raise EvaluateError(f"{path} line {number}: not a JSON object")
    missing = [k for k in keys if k not in record]
    if missing:
      raise EvaluateError(f"{path} line {number}: missing keys {missing}")
    records.append(record)
  return records


def proposals_directory(proposals: str) -> str:
  """--proposals' directory: itself, or the directory of a detectors' file."""
  if proposals.endswith(FILE_SUFFIXES):
    return proposals.rsplit("/", 1)[0] if "/" in proposals else "."
  return proposals


def read_proposals(proposals_dir: str) -> List[dict]:
  """The lines of DIR's proposal shards (or its one proposals.jsonl, of older
  outputs and other methods: settings.proposal_files), checked for the keys
  evaluation needs, in image id order. A detectors' file of rpn-propose
  --formats (a .pkl of detectron2's, a COCO results .json) gives lines whose
  frame is the decoded image (formats.read_detectron2, read_coco)."""
  if proposals_dir.endswith(FILE_SUFFIXES):
    read = formats.read_detectron2 if proposals_dir.endswith(".pkl") else formats.read_coco
    try:
      return read(proposals_dir)
    except ValueError as e:  # names the file
      raise EvaluateError(str(e)) from None
    except (KeyError, TypeError, OSError, pickle.UnpicklingError) as e:
      raise EvaluateError(f"{proposals_dir}: cannot be read ({type(e).__name__}: {e})") from None
  paths = settings.proposal_files(proposals_dir)
  if not paths:
    raise EvaluateError(f"no proposals in {proposals_dir} ({PROPOSALS_PATTERN} or "
                        f"{PROPOSALS_NAME})")
  lines = [line for path in paths
           for line in _read_jsonl(path, ("image_id", "width", "height", "boxes"))]
  return sorted(lines, key=lambda line: line["image_id"])


def read_errors(proposals_dir: str) -> Optional[List[dict]]:
  """The records of DIR/errors.jsonl (path, stage, reason, image_id), or None without one.

  rpn-propose writes the file on every run, empty when no image failed; an
  older output without it is evaluated over its proposal lines only (logged).
  """
  path = storage.join(proposals_dir, ERRORS_NAME)
  if not storage.exists(path):
    _LOGGER.warning("%s not found (output of an older rpn-propose?): recall covers the images "
                    "with proposals only; images rpn-propose could not read are not counted",
                    path)
    return None
  return _read_jsonl(path, ("path", "stage"))


def frame_gt_boxes(annotation, line: dict) -> np.ndarray:
  """gt boxes float64 [G, 4] of an XML annotation, in the frame of a proposals line.

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


def original_areas(frame_boxes: np.ndarray, line: dict) -> np.ndarray:
  """Areas float64 [G] of frame_gt_boxes' boxes in the original image's square pixels.

  The frame is the image scaled by the line's `box_scale` (padding adds none),
  so the area in the image is the frame's area over sx * sy.
  """
  resized = line.get("image_width") is not None and line.get("image_height") is not None
  sx, sy = line.get("box_scale", [1.0, 1.0]) if resized else (1.0, 1.0)  # as frame_gt_boxes
  frame_boxes = np.asarray(frame_boxes, np.float64).reshape(-1, 4)
  return boxes_lib.box_area(frame_boxes) / (float(sx) * float(sy))


def xml_gt_boxes(annotation) -> np.ndarray:
  """gt boxes float64 [G, 4] of an XML annotation alone, for an image that was never read.

  The box policy of readable images as far as the XML allows: sanitized
  against the XML <size> when it has one (ilsvrc.reconcile_size with the XML
  size as the image size); without a size, only the checks that need none:
  reversed boxes dropped, negative coordinates clipped to 0 and a box left
  with zero area dropped.
  """
  if annotation.width is not None and annotation.height is not None:
    boxes, _ = ilsvrc.reconcile_size(annotation, int(annotation.width), int(annotation.height))
    return boxes
  boxes, _ = ilsvrc.sanitize_boxes(annotation.boxes, np.inf, np.inf)
  return boxes


def _error_image_id(record: dict, images_dir: str, annotations_dir: str) -> Optional[str]:
  """The image id of an errors.jsonl record: its image_id, else from its path (older outputs)."""
  if record.get("image_id"):
    return str(record["image_id"])
  for root in (images_dir, annotations_dir):
    try:
      return ilsvrc.relative_id(str(record["path"]), root)
    except ValueError:
      continue
  return None


def load_unreadable_gt(error_records: Sequence[dict], lines: Sequence[dict], images_dir: str,
                       annotations_dir: str) -> Tuple[List[dict], Dict[str, int], List[dict]]:
  """(unreadable, counts, errors) for the images of errors.jsonl, whose gt all count as missed.

  unreadable: one {"image_id", "stage", "num_gt", "gt_areas"} per failed image
  (an image also among the proposals, or listed twice, counts once); num_gt is
  the number of its XML boxes (xml_gt_boxes), 0 without annotation, and
  gt_areas their areas (the XML's pixels are the original image's). counts:
  images_unreadable_without_annotation, images_unreadable_without_id (records
  whose image cannot be named). errors: annotations that cannot be parsed
  (stage "annotation"; their images count with 0 gt boxes).
  """
  proposed = {str(line["image_id"]) for line in lines}
  seen, unreadable, errors = set(), [], []
  counts = {"images_unreadable_without_annotation": 0, "images_unreadable_without_id": 0}
  for record in error_records:
    image_id = _error_image_id(record, images_dir, annotations_dir)
    if image_id is None:
      counts["images_unreadable_without_id"] += 1
      _LOGGER.warning("%s: cannot tell which image failed (no image_id); its gt boxes are not "
                      "counted", record["path"])
      unreadable.append({"image_id": None, "stage": record["stage"], "num_gt": 0,
                         "gt_areas": []})
      continue
    if image_id in proposed or image_id in seen:
      continue
    seen.add(image_id)
    path = f"{annotations_dir}/{image_id}{ilsvrc.ANNOTATION_EXTENSION}"
    gt_boxes = np.zeros((0, 4))
    if not storage.exists(path):
      counts["images_unreadable_without_annotation"] += 1
    else:
      try:
        gt_boxes = xml_gt_boxes(ilsvrc.parse_annotation(ilsvrc.read_bytes(path)))
      except (images_lib.InputError, OSError) as e:
        errors.append({"path": path, "stage": "annotation", "reason": str(e)})
    unreadable.append({"image_id": image_id, "stage": record["stage"],
                       "num_gt": int(len(gt_boxes)),
                       "gt_areas": boxes_lib.box_area(gt_boxes).tolist()})
  return unreadable, counts, errors


def load_gt(lines: List[dict], annotations_dir: str):
  """(gt_per_image, areas_per_image, counts, errors) for the images of the proposals.

  gt_per_image: [G, 4] boxes in each line's frame; areas_per_image: [G] their
  areas in the original image's pixels (original_areas).
  """
  gt_per_image, areas_per_image, errors = [], [], []
  counts = {"images": len(lines), "images_without_annotation": 0, "annotation_errors": 0}
  for line in lines:
    path = f"{annotations_dir}/{line['image_id']}{ilsvrc.ANNOTATION_EXTENSION}"
    if not storage.exists(path):
      counts["images_without_annotation"] += 1
      gt_per_image.append(np.zeros((0, 4)))
      areas_per_image.append(np.zeros(0))
      continue
    try:
      annotation = ilsvrc.parse_annotation(ilsvrc.read_bytes(path))
    except (images_lib.InputError, OSError) as e:
      counts["annotation_errors"] += 1
      errors.append({"path": path, "stage": "annotation", "reason": str(e)})
      gt_per_image.append(np.zeros((0, 4)))
      areas_per_image.append(np.zeros(0))
      continue
    boxes = frame_gt_boxes(annotation, line)
    gt_per_image.append(boxes)
    areas_per_image.append(original_areas(boxes, line))
  return gt_per_image, areas_per_image, counts, errors


def recall_plot(results: Dict[str, dict], title: str) -> bytes:
  """PNG bytes of recall against IoU, one curve per top N (plots.recall_png)."""
  # The legend gives the proposals actually used per image: top 1000 with
  # post_nms_top_n 300 is the same curve as top 300.
  curves = {f"top {key} ({r['mean_proposals']:.0f}/img)": (r["thresholds"], r["recalls"])
            for key, r in sorted(results.items(), key=lambda kv: int(kv[0]))}
  return plots.recall_png(curves, title=title)


EXAMPLES = (
    "rpn-evaluate --proposals out/proposals --input data/sample --split DET/val",
    "rpn-evaluate --proposals out/proposals --input ROOT --split DET/val --top_n 100,300,1000 \\",
    "    --output out/recall",
)


def build_parser() -> cli.Parser:
  parser = cli.Parser(prog="rpn-evaluate", description=__doc__.split("\n\n")[0],
                      examples=EXAMPLES)
  parser.add_argument("--proposals", required=True,
                      help="output directory of rpn-propose (its proposal shards, errors.jsonl),"
                      " or its proposals_detectron2.pkl or proposals_coco.json (--formats)")
  parser.add_argument("--input", required=True, help="dataset root of the ILSVRC 2015+ layout")
  parser.add_argument("--split", default="DET/val", help="split under Annotations/")
  parser.add_argument("--output", default=None,
                      help="where recall.json and recall.png go (default: --proposals)")
  parser.add_argument("--top_n", type=lambda s: tuple(int(v) for v in s.split(",")),
                      default=recall_lib.TOP_NS,
                      help="comma-separated numbers of proposals per image")
  return parser


def check(args: argparse.Namespace) -> None:
  """rpn-evaluate's checks: a finished rpn-propose output, the split's
  annotations, positive --top_n, an output that can be written."""
  if not args.top_n or min(args.top_n) < 1:
    raise cli.UsageError("--top_n", ",".join(map(str, args.top_n)), "must be numbers >= 1")
  if args.proposals.endswith(FILE_SUFFIXES):
    if not storage.exists(args.proposals):
      raise cli.UsageError("--proposals", args.proposals, "no such file")
  elif not preflight.is_dir(args.proposals):
    raise cli.UsageError("--proposals", args.proposals, "no such directory")
  elif not settings.proposal_files(args.proposals):
    raise cli.UsageError("--proposals", args.proposals, f"has no proposals ({PROPOSALS_PATTERN}"
                         f" or {PROPOSALS_NAME}): not the --output of an rpn-propose run")
  directory = proposals_directory(args.proposals)
  if not storage.exists(storage.join(directory, settings.PROPOSE_SETTINGS_NAME)):
    # Proposals of another method in the same format are welcome; a cut-short
    # rpn-propose run is the other reason.
    logging.getLogger(__name__).warning(
        "%s has no %s: rpn-propose did not finish there, or the proposals come from "
        "elsewhere; evaluating the lines it has", directory, settings.PROPOSE_SETTINGS_NAME)
  preflight.check_root(args.input, folder="Annotations")
  preflight.check_split(args.input, args.split, "Annotations")
  preflight.check_output(args.output or directory, "--output")


def run(argv: Optional[Sequence[str]] = None) -> dict:
  """Parses and checks the flags, evaluates, writes recall.json and recall.png;
  returns recall.json (with "output")."""
  args = build_parser().parse(argv)
  check(args)
  directory = proposals_directory(args.proposals)
  output = (args.output or directory).rstrip("/")
  images_dir, annotations_dir = ilsvrc.layout_roots(input_root=args.input, split=args.split)
  lines = read_proposals(args.proposals)
  error_records = read_errors(directory)
  gt_per_image, areas_per_image, counts, errors = load_gt(lines, annotations_dir)
  unreadable, unreadable_counts, unreadable_errors = load_unreadable_gt(
      error_records or [], lines, images_dir, annotations_dir)
  counts.update(unreadable_counts)
  errors += unreadable_errors
  num_gt_unreadable = sum(u["num_gt"] for u in unreadable)
  unreadable_with_gt = sum(1 for u in unreadable if u["num_gt"])
  results = recall_lib.evaluate(
      lines, gt_per_image, args.top_n, missed_gt=num_gt_unreadable,
      missed_images=unreadable_with_gt, areas_per_image=areas_per_image,
      missed_areas=[area for u in unreadable for area in u["gt_areas"]])
  recall = {
      "proposals": args.proposals,
      "annotations": annotations_dir,
      "errors_file": (storage.join(directory, ERRORS_NAME)
                      if error_records is not None else None),
      "iou_thresholds": list(recall_lib.IOU_THRESHOLDS),
      # results[N]["by_size"]: gt boxes by area in the original image's pixels, [low, high).
      "area_ranges": {name: [low, None if high == float("inf") else high]
                      for name, (low, high) in recall_lib.AREA_RANGES.items()},
      # Every image: those of the proposals and those of errors.jsonl.
      "num_images": len(lines) + len(unreadable),
      "num_images_proposed": len(lines),
      "num_images_with_gt": sum(1 for g in gt_per_image if len(g)) + unreadable_with_gt,
      "num_images_unreadable": len(unreadable),
      # gt boxes of every image; those of unreadable images count as missed.
      "num_gt": int(sum(len(g) for g in gt_per_image)) + num_gt_unreadable,
      "num_gt_unreadable": num_gt_unreadable,
      "counts": counts,
      "errors": errors,
      "results": results,
  }
  storage.makedirs(output)
  storage.write_json(storage.join(output, RECALL_NAME), recall)
  storage.write_bytes(storage.join(output, PLOT_NAME), recall_plot(
      results, f"proposal recall: {recall['num_gt']} gt boxes in "
      f"{recall['num_images_with_gt']} images"))
  recall["output"] = output
  return recall


def main(argv: Optional[Sequence[str]] = None) -> int:
  cli.setup_logging()
  return cli.run_command("rpn-evaluate", lambda: _report(run(argv)))


def _report(recall: dict) -> int:
  print(f"proposal recall: {recall['num_gt']} gt boxes in {recall['num_images_with_gt']} "
        f"of {recall['num_images']} images")
  print(recall_lib.format_table(recall))
  unreadable = recall["num_images_unreadable"]
  if unreadable:
    print(f"{unreadable} image{'s' if unreadable != 1 else ''} could not be read or proposed "
          f"for (see {recall['errors_file']}); their {recall['num_gt_unreadable']} gt boxes "
          f"count as misses")
  for error in recall["errors"]:
    print(f"  annotation error: {error['path']}: {error['reason']}", file=sys.stderr)
  print(f"wrote {recall['output']}/{RECALL_NAME} and {PLOT_NAME}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
