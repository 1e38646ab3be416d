"""Selective Search proposals for the held-out images: the baseline row of `make quality`.

    python -m bench.selective_search --input ROOT --split DET/val --output DIR
                                     [--max_boxes 2000] [--processes N]

OpenCV's Selective Search (opencv-contrib-python-headless: the `bench` extra,
not a dependency of the product), fast mode, on each image as it is stored
(no resize), boxes in its own order (its hierarchy levels, randomly
ranked as in the method's paper; seeded from each image id so that a run
repeats), the first --max_boxes of them. Writes DIR/proposals.jsonl in
rpn-propose's format (image_id, width, height, boxes; no scores: the order
is the ranking) and DIR/errors.jsonl, so that rpn-evaluate reads it as it
reads the RPN's.

Units: boxes are x1, y1, x2, y2 in continuous pixels of the stored image
(OpenCV's x, y, w, h rectangle becomes x, y, x + w, y + h).
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import multiprocessing
import os
import sys
import time
from typing import Optional, Sequence, Tuple

import numpy as np

from pipeline.io import ilsvrc, storage
from pipeline.io import images as images_lib

MAX_BOXES = 2000
INSTALL_HINT = ("Selective Search needs OpenCV's contrib modules: "
                "pip install -e '.[bench]' (opencv-contrib-python-headless)")


def available() -> Optional[str]:
  """None when OpenCV's Selective Search can be used, else why not (one line)."""
  try:
    import cv2
  except ImportError:
    return INSTALL_HINT
  if not hasattr(cv2, "ximgproc"):
    return f"OpenCV {cv2.__version__} has no ximgproc (the contrib modules). {INSTALL_HINT}"
  return None


def rects_to_boxes(rects: np.ndarray) -> np.ndarray:
  """OpenCV rectangles int [N, 4] (x, y, w, h) -> float64 [N, 4] x1, y1, x2, y2, same order."""
  rects = np.asarray(rects, np.float64).reshape(-1, 4)
  return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)


def seed_ranking(image_id: str) -> None:
  """Seeds Selective Search's pseudo-random ranking for one image (sha256 of its id).

  OpenCV ranks the regions as the method's paper does, each hierarchy level
  times a random number from the C library's rand() (cv2.setRNGSeed does not
  reach it), so without a seed the order changes from run to run.
  """
  seed = int.from_bytes(hashlib.sha256(image_id.encode("utf-8")).digest()[:4], "little")
  ctypes.CDLL(None).srand(ctypes.c_uint(seed))


def propose_image(rgb: np.ndarray, max_boxes: int = MAX_BOXES) -> np.ndarray:
  """Selective Search (fast mode) boxes float64 [<= max_boxes, 4] of an RGB uint8 [H, W, 3].

  Its order depends on the C library's rand(): seed_ranking first for the same
  boxes every time.
  """
  import cv2

  cv2.setNumThreads(1)  # one image per process; the processes share the cores
  search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
  search.setBaseImage(np.ascontiguousarray(rgb[:, :, ::-1]))  # OpenCV wants BGR
  search.switchToSelectiveSearchFast()
  return rects_to_boxes(search.process()[:max_boxes])


def _propose_path(task: Tuple[str, str, int]) -> dict:
  """One image: its proposals.jsonl line, or an errors.jsonl record (key "error")."""
  path, image_id, max_boxes = task
  try:
    rgb = images_lib.decode_image(ilsvrc.read_bytes(path))
  except (images_lib.InputError, OSError) as e:
    return {"error": {"path": path, "image_id": image_id, "stage": "decode", "reason": str(e)}}
  start = time.monotonic()
  seed_ranking(image_id)
  boxes = propose_image(rgb, max_boxes)
  height, width = rgb.shape[:2]
  return {"image_id": image_id, "width": width, "height": height, "image_width": width,
          "image_height": height, "box_scale": [1.0, 1.0],
          "seconds": round(time.monotonic() - start, 3), "boxes": boxes.round(2).tolist()}


def run(input_root: str, split: str, output: str, max_boxes: int = MAX_BOXES,
        processes: Optional[int] = None) -> dict:
  """Proposes for every image of the split; writes proposals.jsonl and errors.jsonl.

  Returns {"images", "errors", "seconds_per_image" (mean compute per image on
  one core), "output"}.
  """
  images_dir, _ = ilsvrc.layout_roots(input_root=input_root, split=split)
  paths = ilsvrc.list_files(images_dir, ilsvrc.IMAGE_EXTENSIONS)
  tasks = [(path, ilsvrc.relative_id(path, images_dir), max_boxes) for path in paths]
  processes = processes or os.cpu_count() or 1
  with multiprocessing.get_context("spawn").Pool(processes) as pool:
    results = pool.map(_propose_path, tasks, chunksize=1)
  lines = sorted((r for r in results if "error" not in r), key=lambda r: r["image_id"])
  errors = [r["error"] for r in results if "error" in r]
  storage.makedirs(output)
  storage.write_text(storage.join(output, "proposals.jsonl"),
                     "".join(json.dumps(line) + "\n" for line in lines))
  storage.write_text(storage.join(output, "errors.jsonl"),
                     "".join(json.dumps(e) + "\n" for e in errors))
  seconds = [line["seconds"] for line in lines]
  return {"images": len(lines), "errors": len(errors), "max_boxes": max_boxes,
          "seconds_per_image": round(float(np.mean(seconds)), 3) if seconds else None,
          "output": output}


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m bench.selective_search",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--input", required=True, help="dataset root of the ILSVRC layout")
  parser.add_argument("--split", default="DET/val", help="split under Data/")
  parser.add_argument("--output", required=True, help="where proposals.jsonl goes")
  parser.add_argument("--max_boxes", type=int, default=MAX_BOXES,
                      help="boxes kept per image, in Selective Search's order")
  parser.add_argument("--processes", type=int, default=None,
                      help="worker processes (default: one per core)")
  args = parser.parse_args(argv)
  missing = available()
  if missing:
    print(f"selective search: {missing}", file=sys.stderr)
    return 2
  result = run(args.input, args.split, args.output, args.max_boxes, args.processes)
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
