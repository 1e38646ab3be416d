"""A small synthetic dataset in the ILSVRC 2015 DET layout (numpy + Pillow only).

    python -m pipeline.commands.sample_data --output data/sample [--train 240] [--val 48] [--seed 0]

writes

    ROOT/Data/DET/train/ILSVRC2014_train_0000/ILSVRC2014_train_0000NNNN.JPEG
    ROOT/Annotations/DET/train/ILSVRC2014_train_0000/ILSVRC2014_train_0000NNNN.xml
    ROOT/Data/DET/val/ILSVRC2013_val_0000NNNN.JPEG
    ROOT/Annotations/DET/val/ILSVRC2013_val_0000NNNN.xml
    ROOT/ImageSets/DET/train.txt, val.txt   ("<image id> <1-based index>")

Images are textured backgrounds (gradients, blotches, stripes, noise) with 0 to
4 filled shapes (ellipses, rectangles, triangles) whose tight boxes are in the
XML, in the DET schema, as 0-based inclusive pixel indices (xmin..xmax within
0..W-1). Objects are mostly 60 to 400 px, the range of the RPN's anchors
(about 100, 200, 400 px at a stride of about 32), some smaller. The same seed
gives byte-identical files; image i of a split depends only on (seed, split, i).
"""
from __future__ import annotations

import io
import json
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pipeline.commands import cli

JPEG_QUALITY = 90

# A few real-looking WNIDs per shape class (ILSVRC DET synsets).
SHAPE_CLASSES = {
    "ellipse": ("n02084071", "n01503061", "n02121808"),    # dog, bird, domestic cat
    "rectangle": ("n02958343", "n04379243", "n03001627"),  # car, table, chair
    "triangle": ("n02691156", "n04530566", "n03790512"),   # airplane, vessel, motorcycle
}
SHAPES = tuple(SHAPE_CLASSES)

# P(number of objects = k), k = 0..4: about 10% of images have none.
NUM_OBJECTS_P = (0.10, 0.35, 0.25, 0.18, 0.12)

_SPLITS = {
    # split: (index for seeding, folder inside Data/DET/<split>, id prefix, XML <folder>,
    #         XML <database>)
    "train": (0, "ILSVRC2014_train_0000", "ILSVRC2014_train_", "ILSVRC2014_train_0000",
              "ILSVRC_2014"),
    "val": (1, "", "ILSVRC2013_val_", "ILSVRC2013_val", "ILSVRC_2013"),
}


# ---------------------------------------------------------------------------
# Drawing


def _image_size(rng: np.random.Generator) -> Tuple[int, int]:
  """(width, height) in pixels: long side mostly 300..500, a few up to 800; aspect 0.5..2."""
  u = rng.random()
  if u < 0.1:
    long_side = rng.integers(200, 300)
  elif u < 0.9:
    long_side = rng.integers(300, 501)
  else:
    long_side = rng.integers(500, 801)
  aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))  # width / height
  if aspect >= 1:
    width, height = long_side, long_side / aspect
  else:
    width, height = long_side * aspect, long_side
  return int(round(width)), int(round(height))


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
  """Low-frequency noise in [0, 1], float32 [H, W]."""
  small = (rng.random((cells, cells)) * 255).astype(np.uint8)
  big = Image.fromarray(small, "L").resize((width, height), Image.BICUBIC)
  return np.asarray(big, dtype=np.float32) / 255.0


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
  """Muted textured background, float32 [H, W, 3] in 0..255."""
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  angle = rng.uniform(0, 2 * np.pi)
  ramp = (np.cos(angle) * xx + np.sin(angle) * yy)
  ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
  start, end = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
  image = start + ramp[:, :, None] * (end - start)
  # Blotches: low-frequency colour noise.
  blotch = _smooth_noise(rng, width, height, int(rng.integers(3, 8)))
  image += (blotch[:, :, None] - 0.5) * rng.uniform(20, 70) * rng.choice([-1, 1], 3)
  # Stripes in half of the images.
  if rng.random() < 0.5:
    period = rng.uniform(8, 40)
    theta = rng.uniform(0, np.pi)
    phase = (np.cos(theta) * xx + np.sin(theta) * yy) * (2 * np.pi / period)
    image += (np.sin(phase)[:, :, None] * rng.uniform(8, 25))
  # Pixel noise.
  image += rng.normal(0, rng.uniform(3, 12), (height, width, 1)).astype(np.float32)
  # Keep the background muted: pull each pixel towards its grey level.
  grey = image.mean(axis=2, keepdims=True)
  image = grey + (image - grey) * 0.5
  return image.astype(np.float32)


def _object_size(rng: np.random.Generator, width: int, height: int) -> Tuple[int, int]:
  """(w, h) of one object in pixels: mostly 60..400, about 12% of 20..60."""
  largest = max(min(400.0, 0.8 * max(width, height)), 60.0)
  if rng.random() < 0.12:
    size = rng.uniform(20, 60)
  else:
    size = float(np.exp(rng.uniform(np.log(60), np.log(largest))))
  aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))  # h / w
  w = size / np.sqrt(aspect)
  h = size * np.sqrt(aspect)
  return (int(np.clip(w, 12, width - 2)), int(np.clip(h, 12, height - 2)))


def _overlap(a: Sequence[int], b: Sequence[int]) -> float:
  """Intersection over the smaller area of two inclusive boxes (xmin, ymin, xmax, ymax)."""
  iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
  ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
  if iw <= 0 or ih <= 0:
    return 0.0
  def area(r):
    return (r[2] - r[0] + 1) * (r[3] - r[1] + 1)
  return iw * ih / float(min(area(a), area(b)))


def _shape_mask(shape: str, rng: np.random.Generator, width: int, height: int,
                frame: Tuple[int, int, int, int]) -> Image.Image:
  """Binary mask (mode L, 0/255) of one shape drawn in frame (x0, y0, x1, y1) inclusive."""
  mask = Image.new("L", (width, height), 0)
  draw = ImageDraw.Draw(mask)
  x0, y0, x1, y1 = frame
  if shape == "ellipse":
    draw.ellipse([x0, y0, x1, y1], fill=255)
  elif shape == "rectangle":
    draw.rectangle([x0, y0, x1, y1], fill=255)
  else:
    # A triangle spanning the frame: one vertex on one side, two on the opposite.
    apex = x0 + rng.uniform(0.0, 1.0) * (x1 - x0)
    if rng.random() < 0.5:
      points = [(apex, y0), (x0, y1), (x1, y1)]
    else:
      points = [(apex, y1), (x0, y0), (x1, y0)]
    draw.polygon(points, fill=255)
  return mask


def _object_texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
  """Saturated fill with a pattern, float32 [H, W, 3] in 0..255."""
  hue_colour = np.zeros(3)
  while np.ptp(hue_colour) < 120:  # distinct, saturated colours
    hue_colour = rng.uniform(0, 255, 3)
  second = 255 - hue_colour * rng.uniform(0.3, 0.8)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  kind = rng.integers(0, 3)
  if kind == 0:  # checker
    cell = rng.integers(6, 20)
    pattern = ((xx // cell + yy // cell) % 2).astype(np.float32)
  elif kind == 1:  # stripes
    period = rng.uniform(6, 24)
    theta = rng.uniform(0, np.pi)
    pattern = (np.sin((np.cos(theta) * xx + np.sin(theta) * yy) * 2 * np.pi / period) > 0)
    pattern = pattern.astype(np.float32)
  else:  # spots
    pattern = (_smooth_noise(rng, width, height, int(rng.integers(8, 20))) > 0.55)
    pattern = pattern.astype(np.float32)
  weight = pattern[:, :, None] * rng.uniform(0.15, 0.4)
  return (hue_colour * (1 - weight) + second * weight).astype(np.float32)


Box = Tuple[int, int, int, int]  # xmin, ymin, xmax, ymax: 0-based inclusive pixel indices


def draw_image(rng: np.random.Generator) -> Tuple[Image.Image, List[Tuple[str, Box]]]:
  """(RGB image, [(name, (xmin, ymin, xmax, ymax))]) with inclusive pixel boxes."""
  width, height = _image_size(rng)
  canvas = _background(rng, width, height)
  num_objects = int(rng.choice(len(NUM_OBJECTS_P), p=NUM_OBJECTS_P))
  objects: List[Tuple[str, Box]] = []
  for _ in range(num_objects):
    w, h = _object_size(rng, width, height)
    for attempt in range(30):
      if attempt and attempt % 10 == 0:  # no room at this size: shrink it
        w, h = max(int(w * 0.7), 12), max(int(h * 0.7), 12)
      x0 = int(rng.integers(0, width - w + 1))
      y0 = int(rng.integers(0, height - h + 1))
      frame = (x0, y0, x0 + w - 1, y0 + h - 1)
      # Overlaps are allowed, hiding most of an object is not.
      if all(_overlap(frame, other) < 0.4 for _, other in objects):
        break
    else:
      continue  # no room for this object
    shape = SHAPES[int(rng.integers(0, len(SHAPES)))]
    mask_image = _shape_mask(shape, rng, width, height, frame)
    bbox = mask_image.getbbox()  # (left, upper, right, lower), right/lower exclusive
    if bbox is None:
      continue
    outline = mask_image.filter(ImageFilter.MaxFilter(3))
    fill = np.asarray(mask_image, dtype=np.float32)[:, :, None] / 255.0
    grown = np.asarray(outline, dtype=np.float32)[:, :, None] / 255.0
    texture = _object_texture(rng, width, height)
    edge_colour = rng.uniform(0, 50, 3).astype(np.float32)
    # Dark outline one pixel outside the shape, then the textured fill.
    ring = grown - fill
    canvas = canvas * (1 - ring) + edge_colour * ring
    canvas = canvas * (1 - fill) + texture * fill
    name = SHAPE_CLASSES[shape][int(rng.integers(0, len(SHAPE_CLASSES[shape])))]
    left, upper, right, lower = outline.getbbox()  # the object with its outline
    objects.append((name, (left, upper, right - 1, lower - 1)))
  pixels = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
  return Image.fromarray(pixels, "RGB"), objects


# ---------------------------------------------------------------------------
# Files


def annotation_xml(folder: str, filename: str, database: str, width: int, height: int,
                   objects: Sequence[Tuple[str, Box]]) -> bytes:
  """ILSVRC DET XML (tab-indented, like ILSVRC2013_DET_bbox_val) for one image."""
  lines = ["<annotation>", f"\t<folder>{folder}</folder>", f"\t<filename>{filename}</filename>",
           "\t<source>", f"\t\t<database>{database}</database>", "\t</source>",
           "\t<size>", f"\t\t<width>{width}</width>", f"\t\t<height>{height}</height>", "\t</size>"]
  for name, (xmin, ymin, xmax, ymax) in objects:
    lines += ["\t<object>", f"\t\t<name>{name}</name>", "\t\t<bndbox>",
              f"\t\t\t<xmin>{xmin}</xmin>", f"\t\t\t<xmax>{xmax}</xmax>",
              f"\t\t\t<ymin>{ymin}</ymin>", f"\t\t\t<ymax>{ymax}</ymax>",
              "\t\t</bndbox>", "\t</object>"]
  lines.append("</annotation>")
  return ("\n".join(lines) + "\n").encode("utf-8")


def _write(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def _image_id(split: str, index: int) -> str:
  _, folder, prefix, _, _ = _SPLITS[split]
  basename = f"{prefix}{index + 1:08d}"
  return f"{folder}/{basename}" if folder else basename


def write_split(output: str, split: str, num_images: int, seed: int) -> Dict[str, object]:
  """Writes one split; returns its summary (images, boxes, sizes)."""
  split_index, _, _, xml_folder, database = _SPLITS[split]
  ids, num_boxes, empty, sizes = [], 0, 0, []
  for i in range(num_images):
    rng = np.random.default_rng([seed, split_index, i])
    image, objects = draw_image(rng)
    image_id = _image_id(split, i)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    _write(os.path.join(output, "Data", "DET", split, image_id + ".JPEG"), buffer.getvalue())
    xml = annotation_xml(xml_folder, image_id.split("/")[-1], database, image.width,
                         image.height, objects)
    _write(os.path.join(output, "Annotations", "DET", split, image_id + ".xml"), xml)
    ids.append(image_id)
    num_boxes += len(objects)
    empty += not objects
    sizes.append((image.width, image.height))
  index_lines = "".join(f"{image_id} {k + 1}\n" for k, image_id in enumerate(ids))
  _write(os.path.join(output, "ImageSets", "DET", f"{split}.txt"), index_lines.encode())
  return {"images": num_images, "boxes": num_boxes, "images_without_objects": empty,
          "min_side": min((min(s) for s in sizes), default=0),
          "max_side": max((max(s) for s in sizes), default=0)}


def write_sample_dataset(output: str, num_train: int = 240, num_val: int = 48,
                         seed: int = 0) -> Dict[str, object]:
  """Writes the sample dataset under `output`; returns a summary dict.

  Existing files are overwritten, never deleted: files under `output` that this
  run did not write (e.g. from a run with more images) are reported in
  `stale_files`.
  """
  if num_train < 0 or num_val < 0:
    raise ValueError(f"image counts must be >= 0, got train={num_train}, val={num_val}")
  summary: Dict[str, object] = {"output": output, "seed": seed, "layout": "ILSVRC2015 DET"}
  written = set()
  for split, count in (("train", num_train), ("val", num_val)):
    summary[split] = write_split(output, split, count, seed)
    for i in range(count):
      image_id = _image_id(split, i)
      written.add(os.path.join("Data", "DET", split, image_id + ".JPEG"))
      written.add(os.path.join("Annotations", "DET", split, image_id + ".xml"))
    written.add(os.path.join("ImageSets", "DET", f"{split}.txt"))
  stale = []
  for top in ("Data", "Annotations", "ImageSets"):
    for dirpath, _, filenames in os.walk(os.path.join(output, top)):
      for filename in filenames:
        relative = os.path.relpath(os.path.join(dirpath, filename), output)
        if relative not in written:
          stale.append(relative)
  summary["stale_files"] = sorted(stale)
  return summary


EXAMPLES = (
    "rpn-sample-data --output data/sample",
    "rpn-sample-data --output /tmp/tiny --train 8 --val 4 --seed 1",
)


def build_parser() -> cli.Parser:
  parser = cli.Parser(prog="rpn-sample-data", description=__doc__.split("\n\n")[0],
                      examples=EXAMPLES, verbose_flag=False)
  parser.add_argument("--output", type=str, default="data/sample",
                      help="dataset root to write (ILSVRC 2015 DET layout)")
  parser.add_argument("--train", type=int, default=240, help="number of DET/train images")
  parser.add_argument("--val", type=int, default=48, help="number of DET/val images")
  parser.add_argument("--seed", type=int, default=0, help="random seed")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse(argv)
  summary = write_sample_dataset(args.output, args.train, args.val, args.seed)
  stale = summary["stale_files"]
  if stale:
    print(f"warning: {len(stale)} files under {args.output} were not written by this run "
          f"(e.g. {stale[0]}); delete the folder for a clean dataset", file=sys.stderr)
  print(json.dumps({k: v for k, v in summary.items() if k != "stale_files"}, sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
