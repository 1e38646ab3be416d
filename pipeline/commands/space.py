"""How many bytes rpn-preprocess will write, and whether the output disk has them.

A dry count, before any Beam step: the number of image files in the split
(or ids in --image_set) times the bytes of an average image's records, worked
out for SAMPLE_IMAGES images spread over the listing from their headers alone
(the frame, its feature grid by shape arithmetic, the points with an inside
anchor): tiles write at most min(--batch_size, such points) records of
9 C bytes of features plus labels, deltas and id; maps one [Hf, Wf, C] map.
GZIP is not predicted, so the figure is the uncompressed one.

Only for local inputs and outputs: an object store's listing would cost a
full scan, and its free space is not a number to check.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from typing import List, Optional, Tuple

import numpy as np

from pipeline.core import anchors as anchors_lib
from pipeline.core import config as config_lib
from pipeline.core import frame as frame_lib
from pipeline.io import ilsvrc, storage
from pipeline.io import images as images_lib
from pipeline.model import layers

SAMPLE_IMAGES = 32
# Refuse when the free space is under this share of the estimate (the
# estimate counts every sampled point a record, an upper bound for tiles).
REFUSE_BELOW = 0.5
RECORD_OVERHEAD = 64  # protobuf keys and lengths, TFRecord framing (16), location
LABEL_BYTES = 10  # an int64 of -1 is a 10-byte varint; most labels are -1
DELTA_BYTES = 4
LEVEL_BYTES = 10  # the level key of a record of several feature levels


@dataclasses.dataclass(frozen=True)
class Estimate:
  images: int
  sampled: int
  bytes_per_image: float

  @property
  def total(self) -> int:
    return int(self.images * self.bytes_per_image)


def human(num_bytes: float) -> str:
  for unit in ("B", "KB", "MB", "GB", "TB"):
    if abs(num_bytes) < 1000 or unit == "TB":
      return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
    num_bytes /= 1000.0
  return f"{num_bytes:.1f} TB"


def image_files(images_dir: str) -> List[str]:
  """The image files under a local images_dir, sorted (as the pipeline lists them)."""
  found = []
  for folder, _, names in os.walk(images_dir):
    found.extend(os.path.join(folder, n) for n in names
                 if n.endswith(ilsvrc.IMAGE_EXTENSIONS))
  return sorted(found)


def _listed_ids(image_set: str) -> int:
  with open(image_set, encoding="utf-8", errors="replace") as f:
    return sum(1 for line in f if line.split())


def image_bytes(width: int, height: int, cfg: config_lib.PreprocessConfig, channels,
                min_input_side: int, id_length: int = 48) -> int:
  """The bytes one width x height image adds to the output (at most, for tiles);
  with several feature levels, every level's map (maps) or points (tiles).
  `channels`: C, or each level's C (levels of different channel counts; a
  tile is then counted at the most, an upper bound)."""
  per_level = (list(channels) if isinstance(channels, (list, tuple))
               else [channels] * len(config_lib.levels(cfg.backbone)))
  backbone = cfg.backbone
  frame = frame_lib.frame_size(width, height, min_input_side, backbone.min_side,
                                  backbone.max_side)
  shapes = [layers.FeatureGrid(backbone.backbone, layer)(frame.height, frame.width)
            for layer in config_lib.levels(backbone)]
  itemsize = np.dtype(cfg.output_format.tile_dtype).itemsize
  if cfg.output_format.layout == config_lib.MAPS_LAYOUT:
    return (sum(h * w * c for (h, w), c in zip(shapes, per_level, strict=True)) * itemsize
            + RECORD_OVERHEAD + id_length)
  num_anchors = cfg.anchors.num_anchors
  points = 0
  for feature_height, feature_width in shapes:
    stride_x, stride_y = anchors_lib.ratio_strides(frame.width, frame.height, feature_width,
                                                   feature_height)
    anchors = anchors_lib.grid_anchors(feature_height, feature_width, stride_x, stride_y,
                                       cfg.anchors.scales, cfg.anchors.ratios)
    inside = anchors_lib.inside_mask(anchors, frame.width, frame.height)
    points += int(inside.reshape(-1, num_anchors).any(axis=1).sum())
  records = min(cfg.targets.batch_size, points)
  record = (9 * max(per_level) * itemsize + num_anchors * (LABEL_BYTES + 4 * DELTA_BYTES)
            + id_length + RECORD_OVERHEAD + (LEVEL_BYTES if len(shapes) > 1 else 0))
  return records * record


def estimate(cfg: config_lib.PreprocessConfig, channels, min_input_side: int
             ) -> Optional[Estimate]:
  """The output's size for a local input, or None (an object store's input)."""
  if not storage.is_local(cfg.images_dir):
    return None
  files = image_files(cfg.images_dir)
  images = len(files)
  if cfg.image_set and storage.is_local(cfg.image_set):
    images = min(images, _listed_ids(cfg.image_set))
  if not files:
    return Estimate(0, 0, 0.0)
  step = max(1, len(files) // SAMPLE_IMAGES)
  sizes: List[Tuple[int, int, int]] = []
  for path in files[::step][:SAMPLE_IMAGES]:
    try:
      width, height = images_lib.image_size(path)
    except Exception:  # noqa: BLE001 - a bad image is the pipeline's to report
      continue
    rel = os.path.splitext(os.path.relpath(path, cfg.images_dir))[0]
    sizes.append((width, height, len(rel)))
  if not sizes:
    return Estimate(images, 0, 0.0)
  per_image = float(np.mean([image_bytes(w, h, cfg, channels, min_input_side, n)
                             for w, h, n in sizes]))
  if cfg.flip:  # each image twice: itself and its mirrored copy
    per_image *= 2
  return Estimate(images, len(sizes), per_image)


def free_bytes(output: str) -> int:
  """Free bytes on the disk of a local output (its nearest existing folder)."""
  path = os.path.abspath(output)
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return shutil.disk_usage(path).free


def check(cfg: config_lib.PreprocessConfig, found: Estimate, free: int,
          flag: str = "--output") -> Optional[str]:
  """None when `free` bytes can hold the output, else the problem (one line)."""
  if cfg.output_format.compression == "GZIP" or found.total == 0:
    return None  # compression unknown: nothing clear to refuse on
  if free >= REFUSE_BELOW * found.total:
    return None
  return (f"needs about {human(found.total)} ({found.images} images x about "
          f"{human(found.bytes_per_image)}) but its disk has {human(free)} free: free space, "
          f"write to another {flag}, or pass --no_space_check if the estimate is wrong")


def describe(found: Estimate, free: Optional[int], output: str,
             compression: str = "NONE") -> str:
  """The line printed at the start of a run."""
  gzip = " before GZIP" if compression == "GZIP" else ""
  room = f"; {human(free)} free there" if free is not None else ""
  return (f"output: about {human(found.total)}{gzip} into {output} ({found.images} images x "
          f"about {human(found.bytes_per_image)}, estimated from {found.sampled} images' "
          f"sizes){room}")
