"""`rpn-draw`: a picture of what the pipeline decided for an image.

    rpn-draw --shards DIR --input ROOT [--split DET/train] [--image_id ID ...]
             [--count 4] --output PICTURES_DIR

For each image: the gt boxes (green), the feature-map grid (dots; white where
the point has at least one inside anchor), the inside anchors (faint grey),
and the anchors sampled as positives (red) and negatives (blue). The targets
are recomputed from the manifest's settings and the image's seed, exactly as
the pipeline did, and checked against the image's line in images.jsonl.

On a maps-layout directory (rpn-preprocess --layout maps) the pictures show
what rpn-train draws at epoch 0: with the method's anchors, or with
--scales/--ratios, the ones training is given.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from pipeline.commands import cli, preflight
from pipeline.core import config as config_lib
from pipeline.core import frame as frame_lib
from pipeline.core import targets
from pipeline.io import ilsvrc, storage
from pipeline.io import manifest as manifest_lib

GT_COLOUR = (40, 220, 60, 255)
POSITIVE_COLOUR = (235, 40, 40, 255)
NEGATIVE_COLOUR = (60, 120, 255, 150)
INSIDE_COLOUR = (200, 200, 200, 40)


def read_images_jsonl(shards_dir: str) -> List[dict]:
  return storage.read_jsonl(storage.join(shards_dir, config_lib.IMAGES_NAME))


def draw_targets(image: np.ndarray, gt_boxes: np.ndarray, result, feature_width: int,
                 more_levels=()):
  """RGB picture of one image's anchors and sampled labels (see module doc).
  more_levels: (ImageTargets, feature_width) of the other feature levels of an
  image of several (their anchors drawn alike; their points smaller)."""
  base = Image.fromarray(image).convert("RGBA")
  overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
  draw = ImageDraw.Draw(overlay)
  levels = [(result, feature_width)] + list(more_levels)
  for level, _ in levels:
    for box in level.anchors[level.inside]:
      draw.rectangle([float(v) for v in box], outline=INSIDE_COLOUR, width=1)
  for level, _ in levels:
    for box in level.anchors[level.labels == config_lib.NEGATIVE]:
      draw.rectangle([float(v) for v in box], outline=NEGATIVE_COLOUR, width=1)
  for level, _ in levels:
    for box in level.anchors[level.labels == config_lib.POSITIVE]:
      draw.rectangle([float(v) for v in box], outline=POSITIVE_COLOUR, width=2)
  for index, (level, level_width) in enumerate(levels):
    radius = 2 if index == len(levels) - 1 else 1
    num_points = len(level.anchors) // level.num_anchors
    point_inside = level.inside.reshape(num_points, level.num_anchors).any(axis=1)
    for p in range(num_points):
      y, x = divmod(p, level_width)
      cx, cy = (x + 0.5) * level.stride_x, (y + 0.5) * level.stride_y
      colour = (255, 255, 255, 255) if point_inside[p] else (120, 120, 120, 200)
      draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
  for box in gt_boxes:
    draw.rectangle([float(v) for v in box], outline=GT_COLOUR, width=3)
  picture = Image.alpha_composite(base, overlay).convert("RGB")
  inside = sum(int(level.inside.sum()) for level, _ in levels)
  num_fg = sum(level.num_fg for level, _ in levels)
  num_bg = sum(level.num_bg for level, _ in levels)
  legend = (f"gt {len(gt_boxes)}  inside anchors {inside}  "
            f"positives {num_fg} (red)  negatives {num_bg} (blue)")
  canvas = Image.new("RGB", (picture.width, picture.height + 18), (0, 0, 0))
  canvas.paste(picture, (0, 18))
  ImageDraw.Draw(canvas).text((4, 3), legend, fill=(255, 255, 255))
  return canvas


def source_id(image_id: str) -> Tuple[str, bool]:
  """(the input's image id, whether `image_id` is its mirrored copy: rpn-preprocess
  --flip's id + FLIP_SUFFIX)."""
  if image_id.endswith(config_lib.FLIP_SUFFIX):
    return image_id[:-len(config_lib.FLIP_SUFFIX)], True
  return image_id, False


def draw_image(shards_dir: str, manifest: manifest_lib.Manifest, line: dict, image_path: str,
               annotation_path: Optional[str], scales=None, ratios=None):
  """Recomputes the targets of one image as the pipeline did (a mirrored copy
  mirrored as --flip does, before the frame); returns the picture."""
  image, gt_boxes, _, _ = ilsvrc.load_example(image_path, annotation_path, manifest.max_pixels)
  if source_id(line["image_id"])[1]:
    image, gt_boxes = frame_lib.mirror(image, gt_boxes)
  image, gt_boxes, _ = frame_lib.prepare_image(
      image, gt_boxes, manifest.min_input_side, manifest.resize.min_side,
      manifest.resize.max_side)
  anchor_config = manifest.anchor_config
  anchor_config = dataclasses.replace(anchor_config, scales=tuple(scales or anchor_config.scales),
                                      ratios=tuple(ratios or anchor_config.ratios))
  # one level, or every level of an image of several (its "levels" entries)
  shapes = [(level["feature_height"], level["feature_width"])
            for level in line.get("levels") or [line]]
  result = targets.compute_level_targets(
      line["width"], line["height"], shapes,
      np.asarray(line["gt_boxes"], np.float64).reshape(-1, 4), line["image_id"],
      anchor_config=anchor_config, target_config=manifest.target_config)
  if "num_fg" in line and (result.num_fg, result.num_bg) != (line["num_fg"], line["num_bg"]):
    raise RuntimeError(
        f"{line['image_id']}: recomputed {result.num_fg} positives / {result.num_bg} negatives, "
        f"images.jsonl says {line['num_fg']} / {line['num_bg']}: settings differ from the run")
  return draw_targets(image, np.asarray(line["gt_boxes"]).reshape(-1, 4), result.levels[0],
                      shapes[0][1], [(level, shape[1]) for level, shape in
                                     zip(result.levels[1:], shapes[1:], strict=True)])


def check(args: argparse.Namespace) -> manifest_lib.Manifest:
  """rpn-draw's checks: a finished shard directory, the images, a positive
  --count, an output that can be written; returns the manifest."""
  if args.count < 1:
    raise cli.UsageError("--count", args.count, "must be >= 1")
  if not preflight.is_dir(args.shards):
    raise cli.UsageError("--shards", args.shards, "no such directory")
  try:
    manifest = manifest_lib.Manifest.load(args.shards)
  except manifest_lib.ManifestError as e:
    raise cli.UsageError("--shards", args.shards, str(e)) from None
  for flag in ("scales", "ratios"):
    values = getattr(args, flag)
    if values is None:
      continue
    if not manifest.is_maps:
      raise cli.UsageError(f"--{flag}", ",".join(f"{v:g}" for v in values),
                           "only for a maps-layout --shards (the tiles' anchors are fixed)")
    if not values or min(values) <= 0:
      raise cli.UsageError(f"--{flag}", ",".join(f"{v:g}" for v in values),
                           "must be positive numbers")
  preflight.check_ilsvrc_input(args.input, args.split, args.images, args.annotations,
                               missing_annotations="negative")
  preflight.check_output(args.output)
  return manifest


EXAMPLES = (
    "rpn-draw --shards out/shards/train --input data/sample --output out/pictures",
    "rpn-draw --shards out/shards/train --input data/sample --output out/pictures \\",
    "    --image_id ILSVRC2014_train_0000/ILSVRC2014_train_00000001 \\",
    "    'ILSVRC2014_train_0000/ILSVRC2014_train_00000001#flipped'",
)


def build_parser() -> cli.Parser:
  parser = cli.Parser(prog="rpn-draw", description=__doc__.split("\n\n")[0], examples=EXAMPLES)
  parser.add_argument("--shards", required=True, help="output directory of rpn-preprocess")
  parser.add_argument("--input", help="dataset root (ILSVRC 2015+ layout)")
  parser.add_argument("--split", default="DET/train", help="split under Data/ and Annotations/")
  parser.add_argument("--images", help="image directory (2014 layout)")
  parser.add_argument("--annotations", help="annotation directory (2014 layout)")
  parser.add_argument("--image_id", nargs="*",
                      help="images to draw, mirrored copies of --flip (ID#flipped) too "
                      "(default: the first --count of images.jsonl)")
  parser.add_argument("--count", type=int, default=4,
                      help="without --image_id: draw this many images, the first ids of "
                      "images.jsonl")
  parser.add_argument("--scales", type=cli.floats, default=None,
                      help="maps layout: draw with these anchor scales (default: the method's)")
  parser.add_argument("--ratios", type=cli.floats, default=None,
                      help="maps layout: draw with these anchor ratios (default: the method's)")
  parser.add_argument("--output", required=True, help="directory for the PNGs")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  cli.setup_logging()
  args = build_parser().parse(argv)
  try:
    manifest = check(args)
  except ValueError as e:  # cli.UsageError and layout_roots' errors
    return cli.fail("rpn-draw", e)
  images_dir, annotations_dir = ilsvrc.layout_roots(args.input, args.split, args.images,
                                                    args.annotations)
  lines = {line["image_id"]: line for line in read_images_jsonl(args.shards)}
  wanted = args.image_id or sorted(lines)[:args.count]
  paths = {ilsvrc.relative_id(p, images_dir): p
           for p in ilsvrc.list_files(images_dir, ilsvrc.IMAGE_EXTENSIONS)}
  os.makedirs(args.output, exist_ok=True)
  for image_id in wanted:
    source = source_id(image_id)[0]  # a mirrored copy is drawn from its input's files
    if image_id not in lines or source not in paths:
      print(f"rpn-draw: {image_id}: not among the images of this run", file=sys.stderr)
      return 2
    annotation = storage.join(annotations_dir, source + ilsvrc.ANNOTATION_EXTENSION)
    picture = draw_image(args.shards, manifest, lines[image_id], paths[source],
                         annotation if storage.exists(annotation) else None,
                         args.scales, args.ratios)
    out = os.path.join(args.output, image_id.replace("/", "__") + ".png")
    picture.save(out)
    print(out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
