"""Every default of the product, written once (stdlib only).

Units: boxes are x1, y1, x2, y2 in pixels of the image as fed to the backbone;
anchor ratio = height / width; scales are in units of the feature stride.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

POSITIVE, NEGATIVE, IGNORE = 1, 0, -1

SHARD_PREFIX = "tiles"  # the shards of the tiles layout (the method)
MAPS_PREFIX = "maps"  # the shards of the maps layout: one record per image
TILES_LAYOUT, MAPS_LAYOUT = "tiles", "maps"
LAYOUTS = (TILES_LAYOUT, MAPS_LAYOUT)
MANIFEST_NAME = "manifest.json"
IMAGES_NAME = "images.jsonl"
ERRORS_NAME = "errors.jsonl"
# The image id of an image's mirrored copy (rpn-preprocess --flip): '#' is in
# no ILSVRC or COCO file name, so the id cannot be another image's.
FLIP_SUFFIX = "#flipped"
MANIFEST_VERSION = 1
# Images declaring more pixels are refused before decoding (decompression bombs).
DEFAULT_MAX_PIXELS = 40_000_000


class ConfigError(ValueError):
  """A setting out of range, raised by the configs' validate().

  `field` names the setting (the command-line flags have the same names, and
  the problem names them as flags), `value` is the value as shown, `problem`
  what is wrong; str(): "FIELD VALUE: problem" (or "FIELD: problem" without a
  value, e.g. no scales at all).
  """

  def __init__(self, field: str, value, problem: str):
    self.field, self.value, self.problem = field, value, problem
    head = field if value is None or value == "" else f"{field} {value}"
    super().__init__(f"{head}: {problem}")


@dataclasses.dataclass(frozen=True)
class AnchorConfig:
  scales: Tuple[float, ...] = (3.0, 6.0, 12.0)
  ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
  # a = ratio_index * len(scales) + scale_index
  order: str = "ratio_major"

  @property
  def num_anchors(self) -> int:
    return len(self.scales) * len(self.ratios)

  def validate(self) -> None:
    """ConfigError unless the scales and the ratios are non-empty lists of
    positive numbers (scales first)."""
    for field in ("scales", "ratios"):
      values = getattr(self, field)
      if not values or min(values) <= 0:
        raise ConfigError(field, ",".join(f"{v:g}" for v in values), "must be positive numbers")


@dataclasses.dataclass(frozen=True)
class TargetConfig:
  fg_iou_thresh: float = 0.7
  bg_iou_thresh: float = 0.3
  batch_size: int = 256
  fg_fraction: float = 0.5
  seed: int = 0

  def validate(self) -> None:
    """ConfigError at the first setting out of range, in this order:
    fg_fraction in (0, 1]; 0 <= bg_iou_thresh <= fg_iou_thresh <= 1 (naming
    bg_iou_thresh when it is outside [0, 1], else fg_iou_thresh); batch_size >= 1."""
    if not 0 < self.fg_fraction <= 1:
      raise ConfigError("fg_fraction", self.fg_fraction, "must be in (0, 1]")
    if not 0 <= self.bg_iou_thresh <= self.fg_iou_thresh <= 1:
      field = "bg_iou_thresh" if not 0 <= self.bg_iou_thresh <= 1 else "fg_iou_thresh"
      raise ConfigError(field, getattr(self, field), f"need 0 <= --bg_iou_thresh "
                        f"({self.bg_iou_thresh}) <= --fg_iou_thresh ({self.fg_iou_thresh}) <= 1")
    if self.batch_size < 1:
      raise ConfigError("batch_size", self.batch_size, "must be >= 1")


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
  backbone: str = "InceptionResNetV2"
  weights: str = "imagenet"  # imagenet | none | PATH to a weights file
  # Layer of the Keras application whose output is the feature map (None: its
  # final output, as in the method).
  feature_layer: Optional[str] = None
  # Several feature levels (--feature_layers, finest first, strides growing):
  # the layers' names, feature_layer being the first; () for one level.
  feature_layers: Tuple[str, ...] = ()
  # Optional resize before the backbone; off by default, as in the method.
  min_side: Optional[int] = None
  max_side: Optional[int] = None
  max_pixels: int = DEFAULT_MAX_PIXELS
  stride_mode: str = "ratio"
  # TensorFlow threads per worker process for the forward pass (None: TF's
  # default, all cores). With one worker process per core, 1 avoids
  # oversubscribing the cores.
  threads: Optional[int] = None


def levels(backbone: BackboneConfig) -> Tuple[Optional[str], ...]:
  """The feature layers of a run, finest first: feature_layers, or the one
  feature_layer (None: the backbone's final output)."""
  return tuple(backbone.feature_layers) or (backbone.feature_layer,)


@dataclasses.dataclass(frozen=True)
class OutputConfig:
  num_shards: int = 16
  compression: str = "NONE"  # NONE | GZIP
  tile_dtype: str = "float32"  # float32 | float16 (of the tiles, or of the maps)
  # tiles: the sampled 3x3 tiles and their targets (the method); maps: one
  # record per image, its whole feature map and gt boxes, the targets drawn
  # by rpn-train (DESIGN.md, "Feature-map layout").
  layout: str = TILES_LAYOUT
  # With num_shards 0 (the runner decides), a shard is closed and a new one
  # started after this many megabytes of records (before compression).
  max_shard_mb: float = 1024.0


@dataclasses.dataclass(frozen=True)
class ProposalConfig:
  """Turning the RPN's outputs into proposals (py-faster-rcnn's test-time defaults)."""
  pre_nms_top_n: int = 6000  # 0: no limit
  post_nms_top_n: int = 300  # 0: no limit
  nms_thresh: float = 0.7
  min_size: float = 16.0  # pixels of the original image (scaled into the frame)
  # "all": every anchor, its box clipped to the frame, as py-faster-rcnn does
  # at test time; "inside": only the anchors inside the frame, the ones
  # training labels. "all" gave the better recall in every setting measured
  # (BENCHMARKS.md, "Proposal quality": e.g. R@0.7 at top 300 0.733 against
  # 0.644 with stride-16 VGG16 features and tuned anchors), and only "all"
  # proposes near the borders of an image, where inside anchors are few.
  anchors: str = "all"


def shard_prefix(layout: str) -> str:
  """The file name prefix of the shards of a layout."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout {layout!r} not in {LAYOUTS}")
  return MAPS_PREFIX if layout == MAPS_LAYOUT else SHARD_PREFIX


def to_dict(config) -> dict:
  """A JSON-ready dict of a config dataclass (tuples become lists)."""
  out = dataclasses.asdict(config)
  return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
  """Everything one `rpn-preprocess` run needs, parsed and validated."""
  images_dir: str
  annotations_dir: str
  output: str
  image_set: Optional[str] = None
  missing_annotations: str = "skip"  # skip | negative
  backbone: BackboneConfig = BackboneConfig()
  anchors: AnchorConfig = AnchorConfig()
  targets: TargetConfig = TargetConfig()
  output_format: OutputConfig = OutputConfig()
  split: Optional[str] = None
  input_root: Optional[str] = None
  shuffle_records: bool = False
  # also write every image mirrored left to right, as one more image (id + FLIP_SUFFIX)
  flip: bool = False
