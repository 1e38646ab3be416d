"""`python -m bench.anchors`: rpn-anchors' rate per core and its projection to ILSVRC DET train.

    python -m bench.anchors [--images 2000] [--backbone VGG16] [--feature_layer block5_conv3]

On a synthetic DET-layout dataset (pipeline.commands.sample_data, JPEG + XML, long
side mostly 300-500 px) of --images images:

  per image   the work rpn-anchors does per image, in this process, no Beam:
              XML parse, image header, box policy, frame, shape arithmetic,
              best IoUs of two anchor sets (LoadFrameFn + ScoreFrameFn's calls)
  in-process  the command end to end, one worker process (DirectRunner in_memory)
  all cores   the command end to end as it ships (one worker process per core)

and the projection for ILSVRC DET train's 456,567 XMLs, from the per-core rate
of the in-process run (which includes Beam's own per-element cost). Prints a
table; BENCHMARKS.md quotes it. Local disk: on GCS each image costs two more
requests (XML, image header), which more workers hide.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import time
from typing import Optional, Sequence

import numpy as np

from pipeline.commands import anchors as coverage_run
from pipeline.commands import sample_data
from pipeline.core import coverage
from pipeline.core import frame as frame_lib
from pipeline.io import ilsvrc
from pipeline.model import layers, registry

DET_TRAIN_XMLS = 456_567
WORK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "work", "anchors")


def per_image_seconds(root: str, backbone_name: str, layer: Optional[str]) -> float:
  """Seconds per image of rpn-anchors' per-image work, in this process."""
  grid = layers.FeatureGrid(backbone_name, layer)
  grid(500, 500)  # builds the arithmetic once, as a worker's setup does
  min_input_side = registry.backbone_spec(backbone_name).min_input_side
  images = sorted(glob.glob(os.path.join(root, "Data", "DET", "train", "**", "*.JPEG"),
                            recursive=True))
  start = time.perf_counter()
  for path in images:
    xml = path.replace(os.sep + "Data" + os.sep, os.sep + "Annotations" + os.sep)[:-5] + ".xml"
    (width, height), boxes, _ = ilsvrc.load_boxes(path, xml if os.path.exists(xml) else None)
    frame = frame_lib.frame_size(width, height, min_input_side)
    feature_height, feature_width = grid(frame.height, frame.width)
    frame_boxes = coverage.FrameBoxes(path, frame.width, frame.height, feature_height,
                                      feature_width, np.asarray(boxes))
    coverage.best_ious(frame_boxes, (3, 6, 12), (0.5, 1, 2))
    coverage.best_ious(frame_boxes, (4.757, 8, 11.129), (0.707, 1, 1.576))
  return (time.perf_counter() - start) / max(1, len(images))


def command_seconds(root: str, out: str, backbone_name: str, layer: Optional[str],
                    runner_args: Sequence[str]) -> float:
  start = time.perf_counter()
  coverage_run.run(["--input", root, "--split", "DET/train", "--output", out,
                    "--backbone", backbone_name, *(["--feature_layer", layer] if layer else []),
                    *runner_args])
  return time.perf_counter() - start


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m bench.anchors", description=__doc__)
  parser.add_argument("--images", type=int, default=2000)
  parser.add_argument("--backbone", default="VGG16")
  parser.add_argument("--feature_layer", default="block5_conv3")
  args = parser.parse_args(argv)
  root = os.path.join(WORK, f"data_{args.images}")
  if not os.path.isdir(os.path.join(root, "Data")):
    shutil.rmtree(root, ignore_errors=True)
    sample_data.main(["--output", root, "--train", str(args.images), "--val", "1"])
  cores = os.cpu_count() or 1
  per_image = per_image_seconds(root, args.backbone, args.feature_layer)
  in_process = command_seconds(root, os.path.join(WORK, "out_1"), args.backbone,
                               args.feature_layer, ["--direct_running_mode=in_memory"])
  all_cores = command_seconds(root, os.path.join(WORK, "out_all"), args.backbone,
                              args.feature_layer, [])
  rate_core = args.images / in_process
  print(f"\nrpn-anchors on {args.images} synthetic DET images ({args.backbone} "
        f"{args.feature_layer or 'final output'}, {cores} cores)")
  print(f"{'measure':<34} {'seconds':>8} {'images/s':>9}")
  print(f"{'per-image work, no Beam':<34} {per_image * args.images:>8.1f} "
        f"{1 / per_image:>9.0f}")
  print(f"{'command, 1 worker process':<34} {in_process:>8.1f} {rate_core:>9.0f}")
  print(f"{f'command, {cores} worker processes':<34} {all_cores:>8.1f} "
        f"{args.images / all_cores:>9.0f}")
  hours = DET_TRAIN_XMLS / rate_core / 3600
  print(f"projection, DET train ({DET_TRAIN_XMLS:,} XMLs): {hours:.2f} core-hours at "
        f"{rate_core:.0f} images/s per core; {hours * 60 / 32:.1f} min on 32 vCPUs")
  return 0


if __name__ == "__main__":
  sys.exit(main())
