"""`python -m bench.levels`: the cost of several feature levels against one.

    python -m bench.levels [--data ROOT] [--split DET/val] [--weights PATH]
                           [--out out/bench_levels]

rpn-preprocess of the same images (default: the held-out real photographs,
coco_real DET/val) with VGG16 and the real weights file, one level
(block5_conv3, stride 16) against two (block4_conv3,block5_conv3, strides 8
and 16), in both layouts, each run alone on rpn-preprocess's default local
runner (one worker process per core). For each: the wall seconds of the
run (from the pipeline's start to its manifest), the records and the bytes
of its shards, per image; and the two-level figures over the one-level
ones. The anchors are the method's (3, 6, 12 strides, 3 ratios) in both, so
the tiles' bytes compare points sampled, not anchor sets.

Writes OUT/levels.json and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from typing import Dict, List, Optional, Sequence

from bench import common
from pipeline.commands import preprocess

SETTINGS = {
    "one level": ["--feature_layer", "block5_conv3"],
    "two levels": ["--feature_layers", "block4_conv3,block5_conv3"],
}
LAYOUTS = ("tiles", "maps")


def _log(message: str) -> None:
  print(f"[bench.levels {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_one(args, name: str, layout: str) -> Dict:
  out = os.path.join(args.out, f"{name.replace(' ', '_')}_{layout}")
  shutil.rmtree(out, ignore_errors=True)
  _log(f"rpn-preprocess {args.split}: {name}, {layout}")
  start = time.monotonic()
  result = preprocess.run(["--input", args.data, "--split", args.split, "--output", out,
                           "--backbone", "VGG16", "--weights", args.weights,
                           "--layout", layout, *SETTINGS[name]])
  seconds = time.monotonic() - start
  manifest = result.manifest
  images = manifest.counts["images_ok"] + manifest.counts.get("flipped_ok", 0)
  shard_bytes = sum(shard.bytes for shard in manifest.shards)
  return {"setting": name, "layout": layout, "images": images, "seconds": round(seconds, 2),
          "seconds_per_image": seconds / max(1, images),
          "records": manifest.counts["records"], "bytes": shard_bytes,
          "bytes_per_image": shard_bytes / max(1, images),
          "records_per_image": manifest.counts["records"] / max(1, images)}


def table(rows: Sequence[Dict]) -> str:
  lines = [f"{'setting':<11} {'layout':<6} {'images':>6} {'s/image':>8} {'records/image':>13} "
           f"{'KB/image':>9} {'x time':>7} {'x bytes':>8}"]
  one = {row["layout"]: row for row in rows if row["setting"] == "one level"}
  for row in rows:
    base = one.get(row["layout"])
    lines.append(
        f"{row['setting']:<11} {row['layout']:<6} {row['images']:>6} "
        f"{row['seconds_per_image']:>8.2f} {row['records_per_image']:>13.1f} "
        f"{row['bytes_per_image'] / 1024:>9.1f} "
        f"{row['seconds_per_image'] / base['seconds_per_image']:>7.2f} "
        f"{row['bytes_per_image'] / base['bytes_per_image']:>8.2f}")
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m bench.levels", description=__doc__)
  parser.add_argument("--data", default=common.real_photos())
  parser.add_argument("--split", default="DET/val")
  parser.add_argument("--weights", default=common.vgg16_weights())
  parser.add_argument("--out", default=os.path.join(common.REPO, "out", "bench_levels"))
  args = parser.parse_args(argv)
  for path, what in ((args.data, "--data (RPN_REAL_PHOTOS)"),
                     (args.weights, "--weights (RPN_VGG16_WEIGHTS)")):
    if not path or not os.path.exists(path):
      print(f"bench.levels: skipped: no {what} here")
      return 0
  rows: List[Dict] = [run_one(args, name, layout) for layout in LAYOUTS for name in SETTINGS]
  result = {"machine": common.machine_info(), "data": args.data, "split": args.split,
            "rows": rows}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "levels.json"), "w") as f:
    json.dump(result, f, indent=1)
  print(table(rows))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
