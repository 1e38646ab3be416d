"""Every default of the product, written once (stdlib only).

Units: boxes are x1, y1, x2, y2 in pixels of the image as fed to the backbone;
anchor ratio = height / width; scales are in units of the feature stride.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

POSITIVE, NEGATIVE, IGNORE = 1, 0, -1

SHARD_PREFIX = "tiles"
MANIFEST_NAME = "manifest.json"
IMAGES_NAME = "images.jsonl"
ERRORS_NAME = "errors.jsonl"
MANIFEST_VERSION = 1


@dataclasses.dataclass(frozen=True)
class AnchorConfig:
  scales: Tuple[float, ...] = (3.0, 6.0, 12.0)
  ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
  # a = ratio_index * len(scales) + scale_index
  order: str = "ratio_major"

  @property
  def num_anchors(self) -> int:
    return len(self.scales) * len(self.ratios)


@dataclasses.dataclass(frozen=True)
class TargetConfig:
  fg_iou_thresh: float = 0.7
  bg_iou_thresh: float = 0.3
  batch_size: int = 256
  fg_fraction: float = 0.5
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
  backbone: str = "InceptionResNetV2"
  weights: str = "imagenet"  # imagenet | none | PATH to a weights file
  # Optional resize before the backbone; off by default, as in the method.
  min_side: Optional[int] = None
  max_side: Optional[int] = None
  # Images larger than this many pixels are refused (decompression bombs).
  max_pixels: int = 40_000_000
  stride_mode: str = "ratio"
  # TensorFlow threads per worker process for the forward pass (None: TF's
  # default, all cores). With one worker process per core, 1 avoids
  # oversubscribing the cores.
  threads: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class OutputConfig:
  num_shards: int = 16
  compression: str = "NONE"  # NONE | GZIP
  tile_dtype: str = "float32"  # float32 | float16
  # With num_shards 0 (the runner decides), a shard is closed and a new one
  # started after this many megabytes of records (before compression).
  max_shard_mb: float = 1024.0


def to_dict(config) -> dict:
  """A JSON-ready dict of a config dataclass (tuples become lists)."""
  out = dataclasses.asdict(config)
  return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
