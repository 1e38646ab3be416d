"""rpn-propose's outputs in the formats detectors read (--formats), and reading them back.

    jsonl       the proposal shards themselves (proposals-SSSSS-of-NNNNN.jsonl), always
                written: the pipeline's output, which the others are made from
    detectron2  proposals_detectron2.pkl: a dict of "ids" (image ids, str),
                "boxes" (float32 [N, 4] per image, x1, y1, x2, y2 in the original
                image's pixels: detectron2's BoxMode.XYXY_ABS), "objectness_logits"
                (float32 [N], the logits, not probabilities), "bbox_mode" (0,
                XYXY_ABS, as a plain int) and "image_sizes" ((height, width) per
                image; detectron2 ignores it), ordered by image id: what
                detectron2's load_proposals_into_dataset reads
                (DATASETS.PROPOSAL_FILES_TRAIN / _TEST)
    coco        proposals_coco.json: a COCO results list ({"image_id", "bbox":
                [x, y, w, h] in the original image's pixels, "score", "category_id":
                1}) for COCO.loadRes; and proposals_coco_images.json: a COCO-style
                {"images": [{"id", "file_name", "width", "height",
                "rpn_image_id"}], "categories": [...]} so that tools can match its
                integer ids (1, 2, ... in image id order) to the images

The detectron2 and coco files are made after the pipeline by reading the
shards line by line: the pickle holds every image's arrays (it is one
object), nothing else grows with the dataset beyond a list of the image ids.
No TensorFlow here.
"""
from __future__ import annotations

import io
import json
import os
import pickle
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np

from pipeline.io import storage
from trainer import settings

FORMATS = ("jsonl", "detectron2", "coco")
DETECTRON2_NAME = "proposals_detectron2.pkl"
COCO_RESULTS_NAME = "proposals_coco.json"
COCO_IMAGES_NAME = "proposals_coco_images.json"
BOX_MODE_XYXY_ABS = 0  # detectron2.structures.BoxMode.XYXY_ABS
COCO_CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}

# The units of each box and score key of a proposals line (also in propose.json).
UNITS = {
    "boxes": "x1, y1, x2, y2 in continuous pixels of the frame fed to the backbone "
             "(width x height: the image after the optional resize and padding)",
    "image_boxes": "x1, y1, x2, y2 in continuous pixels of the decoded image "
                   "(image_width x image_height: boxes with the resize undone, clipped to it)",
    "scores": "objectness probabilities in [0, 1], best first",
    "logits": "objectness logits, log(p / (1 - p)) of the float32 probabilities (within "
              "about +-16.6 and -87)",
}


def parse_formats(text: str) -> Tuple[str, ...]:
  """--formats "jsonl,detectron2" -> ("jsonl", "detectron2"); jsonl always comes
  first. ValueError naming the unknown one and listing the known ones."""
  names = [name.strip() for name in text.split(",") if name.strip()]
  unknown = [name for name in names if name not in FORMATS]
  if unknown or not names:
    raise ValueError(f"unknown format {unknown[0] if unknown else text!r}; the known ones: "
                     f"{', '.join(FORMATS)}")
  return ("jsonl",) + tuple(name for name in FORMATS[1:] if name in names)


def image_boxes(boxes: np.ndarray, box_scale: Sequence[float], image_width: int,
                image_height: int) -> np.ndarray:
  """Boxes [N, 4] of the frame in the decoded image's pixels: the resize
  undone (divided by box_scale (sx, sy)), clipped to the image (a frame's
  padding is outside it)."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4) / np.array(
      [box_scale[0], box_scale[1]] * 2, np.float64)
  return np.clip(boxes, 0.0, [image_width, image_height, image_width, image_height])


def logits(scores: np.ndarray) -> np.ndarray:
  """float64 logits of float32 probabilities, clipped where float32 rounds to 0 or 1."""
  p = np.asarray(scores, np.float32).astype(np.float64)
  tiny = float(np.finfo(np.float32).tiny)
  p = np.clip(p, tiny, 1.0 - 2.0 ** -24)
  return np.log(p) - np.log1p(-p)


def iter_lines(output_dir: str) -> Iterator[Dict[str, Any]]:
  """The proposals lines of an output directory, one at a time, shard after shard."""
  from apache_beam.io.filesystems import FileSystems  # lazy: a second's import
  for path in settings.proposal_files(output_dir):
    with FileSystems.open(path) as raw:
      for text in io.TextIOWrapper(raw, encoding="utf-8"):
        if text.strip():
          yield json.loads(text)


def write_detectron2(output_dir: str) -> Dict[str, Any]:
  """proposals_detectron2.pkl of an output's shards; returns {"files", "images"}."""
  entries = []
  for line in iter_lines(output_dir):
    entries.append((line["image_id"],
                    np.asarray(line["image_boxes"], np.float32).reshape(-1, 4),
                    np.asarray(line["logits"], np.float32).reshape(-1),
                    (int(line["image_height"]), int(line["image_width"]))))
  entries.sort(key=lambda entry: entry[0])
  proposals = {
      "ids": [entry[0] for entry in entries],
      "boxes": [entry[1] for entry in entries],
      "objectness_logits": [entry[2] for entry in entries],
      "bbox_mode": BOX_MODE_XYXY_ABS,
      "image_sizes": [entry[3] for entry in entries],
  }
  del entries
  with storage.atomic_writer(storage.join(output_dir, DETECTRON2_NAME)) as f:
    pickle.dump(proposals, f, protocol=pickle.HIGHEST_PROTOCOL)
  return {"files": [DETECTRON2_NAME], "images": len(proposals["ids"])}


def write_coco(output_dir: str) -> Dict[str, Any]:
  """proposals_coco.json and proposals_coco_images.json of an output's shards;
  returns {"files", "images", "results"}. Two passes over the shards: the ids
  first (their integer ids go in image id order), then the results, streamed."""
  images = []
  for line in iter_lines(output_dir):
    path = line.get("path")
    images.append({"file_name": os.path.basename(path) if path else line["image_id"],
                   "width": int(line["image_width"]), "height": int(line["image_height"]),
                   "rpn_image_id": line["image_id"]})
  images.sort(key=lambda image: image["rpn_image_id"])
  numbers = {}
  for number, image in enumerate(images, 1):
    image["id"] = number
    numbers[image["rpn_image_id"]] = number
  storage.write_json(storage.join(output_dir, COCO_IMAGES_NAME),
                     {"images": images, "categories": [COCO_CATEGORY]})
  del images
  results = 0
  with storage.atomic_writer(storage.join(output_dir, COCO_RESULTS_NAME)) as f:
    f.write(b"[")
    for line in iter_lines(output_dir):
      number = numbers[line["image_id"]]
      for box, score in zip(line["image_boxes"], line["scores"], strict=True):
        x1, y1, x2, y2 = box
        entry = {"image_id": number, "category_id": COCO_CATEGORY["id"],
                 "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                 "score": score}
        f.write((("," if results else "") + "\n" + json.dumps(entry)).encode("utf-8"))
        results += 1
    f.write(b"\n]\n")
  return {"files": [COCO_RESULTS_NAME, COCO_IMAGES_NAME], "images": len(numbers),
          "results": results}


WRITERS = {"detectron2": write_detectron2, "coco": write_coco}


def write_formats(output_dir: str, formats: Sequence[str]) -> Dict[str, Any]:
  """The files of every format but jsonl (the shards are there already)."""
  return {name: WRITERS[name](output_dir) for name in formats if name in WRITERS}


# ---------------------------------------------------------------------------
# Reading them back (rpn-evaluate)


def _image_line(image_id: str, boxes: np.ndarray, width: int, height: int) -> Dict[str, Any]:
  """A proposals line whose frame is the decoded image itself."""
  return {"image_id": image_id, "boxes": np.asarray(boxes, np.float64).reshape(-1, 4).tolist(),
          "width": int(width), "height": int(height), "image_width": int(width),
          "image_height": int(height), "box_scale": [1.0, 1.0]}


def read_detectron2(path: str) -> List[Dict[str, Any]]:
  """The lines of a proposals_detectron2.pkl: boxes best first by logit, in the
  decoded image's frame. ValueError for a pickle that is not one rpn-propose wrote."""
  proposals = pickle.loads(storage.read_bytes(path))  # noqa: S301 - a file the user names
  missing = [key for key in ("ids", "boxes", "objectness_logits", "image_sizes")
             if key not in proposals]
  if missing:
    raise ValueError(f"{path}: no {', '.join(missing)}: not a pickle of rpn-propose "
                     f"--formats detectron2")
  if proposals.get("bbox_mode", BOX_MODE_XYXY_ABS) != BOX_MODE_XYXY_ABS:
    raise ValueError(f"{path}: bbox_mode {proposals['bbox_mode']}, only XYXY_ABS (0) is read")
  lines = []
  for image_id, boxes, scores, (height, width) in zip(
      proposals["ids"], proposals["boxes"], proposals["objectness_logits"],
      proposals["image_sizes"], strict=True):
    order = np.argsort(-np.asarray(scores), kind="stable")
    lines.append(_image_line(str(image_id), np.asarray(boxes)[order], width, height))
  return lines


def read_coco(path: str) -> List[Dict[str, Any]]:
  """The lines of a proposals_coco.json (with proposals_coco_images.json beside
  it): boxes best first by score, in the decoded image's frame."""
  images_path = path[:-len(".json")] + "_images.json" if path.endswith(".json") else None
  if not images_path or not storage.exists(images_path):
    raise ValueError(f"{path}: no {os.path.basename(str(images_path))} beside it, whose "
                     f"images map the results' integer ids to image ids")
  images = {image["id"]: image for image in storage.read_json(images_path)["images"]}
  per_image: Dict[int, List] = {number: [] for number in images}
  for entry in storage.read_json(path):
    x, y, w, h = entry["bbox"]
    per_image[entry["image_id"]].append((entry["score"], [x, y, x + w, y + h]))
  lines = []
  for number, image in sorted(images.items(), key=lambda kv: kv[1]["rpn_image_id"]):
    ranked = sorted(per_image[number], key=lambda pair: -pair[0])
    lines.append(_image_line(image["rpn_image_id"], [box for _, box in ranked] or
                             np.zeros((0, 4)), image["width"], image["height"]))
  return lines
