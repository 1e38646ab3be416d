"""Beam glue: DoFns and composite PTransforms of `rpn-preprocess`.

The numeric work lives in anchors.py / targets.py / boxes.py, the reading in
ilsvrc.py and the model in backbone.py; this module only moves elements
between them, counts what happens (Beam metrics) and routes bad input to the
errors output instead of failing the run.

Element flow (one element per image until SampleTargets fans out to records):

  ListImages ─┐
  ListAnnotations ─┼─ PairInputs ─ LoadImages ─ ComputeFeatures ─ SampleTargets ─ records
  [ReadImageSet] ─┘                                                  └─ images.jsonl lines
  every step ──────────────────────────────────────────── errors.jsonl lines + counts
"""
from __future__ import annotations

import collections
import json
import logging
import threading
import time
from typing import Any, Dict, Iterable, NamedTuple, Optional

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from pipeline import config as config_lib
from pipeline import ilsvrc

NAMESPACE = "rpn"
ERRORS = "errors"
IMAGES = "images"
STATS = "stats"

# Outcomes of one listed image; exactly one per image file.
FAILED, SKIPPED = "failed", "skipped"

_LOGGER = logging.getLogger(__name__)


class ImageInput(NamedTuple):
  image_id: str
  image_path: str
  annotation_path: Optional[str]


class LoadedImage(NamedTuple):
  image_id: str
  image_path: str
  image: Any  # uint8 [H, W, 3], the frame fed to the backbone
  gt_boxes: Any  # float64 [G, 4]
  stats: Dict[str, int]


class ImageFeatures(NamedTuple):
  image_id: str
  image_path: str
  width: int
  height: int
  gt_boxes: Any
  feature_map: Any  # float32 [Hf, Wf, C]
  stats: Dict[str, int]


def error_record(path: str, stage: str, reason: str, outcome: str = FAILED,
                 image_id: Optional[str] = None) -> Dict[str, Any]:
  """One errors.jsonl line (path, stage, reason) plus what it means for counts."""
  return {"path": path, "stage": stage, "reason": reason, "outcome": outcome,
          "image_id": image_id}


def _counter(name: str):
  return Metrics.counter(NAMESPACE, name)


# ---------------------------------------------------------------------------
# Listing and pairing


class ListFiles(beam.PTransform):
  """(relative id, path) of every file under `root` with one of `extensions`."""

  def __init__(self, root: str, extensions):
    super().__init__()
    self._root = root.rstrip("/")
    self._extensions = tuple(extensions)

  def expand(self, pbegin):
    root, extensions = self._root, self._extensions
    return (pbegin
            | "Match" >> fileio.MatchFiles(root + "/**", empty_match_treatment="ALLOW")
            | "FilterExtension" >> beam.Filter(lambda m: m.path.endswith(extensions))
            | "KeyById" >> beam.Map(lambda m: (ilsvrc.relative_id(m.path, root), m.path)))


class PairInputsFn(beam.DoFn):
  """(image id, {images, annotations, listed}) -> ImageInput or an error record.

  Every image file gives exactly one outcome: an ImageInput, or an errors line
  (skipped: no annotation with --missing_annotations skip; failed: a second
  image file with the same id). Annotations without an image and image-set ids
  without an image are reported as errors lines of their own (stage pairing)
  and counted apart: they are not images.
  """

  def __init__(self, missing_annotations: str, use_image_set: bool):
    self._missing = missing_annotations
    self._use_image_set = use_image_set

  def process(self, element):
    image_id, grouped = element
    images = sorted(grouped["images"])
    annotations = sorted(grouped["annotations"])
    listed = bool(list(grouped.get("listed", [])))
    if self._use_image_set and not listed:
      return  # not part of the requested image set: not an input
    if not images:
      if self._use_image_set and listed:
        _counter("image_set_ids_without_image").inc()
        yield beam.pvalue.TaggedOutput(ERRORS, error_record(
            image_id, "pairing", "listed in the image set but no image file found",
            outcome="unpaired", image_id=image_id))
      for path in annotations:
        _counter("annotations_without_image").inc()
        yield beam.pvalue.TaggedOutput(ERRORS, error_record(
            path, "pairing", "annotation without an image file", outcome="unpaired",
            image_id=image_id))
      return
    first, duplicates = images[0], images[1:]
    for path in duplicates:
      _counter("images_failed").inc()
      yield beam.pvalue.TaggedOutput(ERRORS, error_record(
          path, "pairing", f"duplicate image id {image_id!r} (also {first})", image_id=image_id))
    annotation = annotations[0] if annotations else None
    if annotation is None and self._missing == "skip":
      _counter("images_skipped").inc()
      yield beam.pvalue.TaggedOutput(ERRORS, error_record(
          first, "pairing", "no annotation file (--missing_annotations skip)",
          outcome=SKIPPED, image_id=image_id))
      return
    if annotation is None:
      _counter("images_without_annotation").inc()
    yield ImageInput(image_id, first, annotation)


# ---------------------------------------------------------------------------
# Per-image steps


class LoadImageFn(beam.DoFn):
  """ImageInput -> LoadedImage: read, decode, parse, clip boxes, resize, pad."""

  def __init__(self, backbone_config: config_lib.BackboneConfig, min_input_side: int):
    self._config = backbone_config
    self._min_input_side = min_input_side

  def process(self, item: ImageInput):
    from pipeline import backbone
    try:
      image, gt_boxes, _, stats = ilsvrc.load_example(
          item.image_path, item.annotation_path, self._config.max_pixels)
    except ilsvrc.InputError as e:
      _counter("images_failed").inc()
      _counter(f"failed_{e.stage}").inc()
      path = item.annotation_path if e.stage == "annotation" else item.image_path
      yield beam.pvalue.TaggedOutput(ERRORS, error_record(
          path, e.stage, str(e), image_id=item.image_id))
      return
    stats = dict(stats)
    for key, value in stats.items():  # box policy counts, also as Beam metrics
      _counter(key).inc(value)
    height, width = image.shape[:2]
    image, gt_boxes, _ = backbone.prepare_image(
        image, gt_boxes, self._min_input_side, self._config.min_side, self._config.max_side)
    if image.shape[:2] != (height, width) and min(height, width) < self._min_input_side:
      stats["images_padded"] = stats.get("images_padded", 0) + 1
      _counter("images_padded").inc()
    yield LoadedImage(item.image_id, item.image_path, image, gt_boxes, stats)


class _SharedExtractor:
  """Holder so that one backbone serves every DoFn instance of a worker process."""

  def __init__(self, extractor):
    self.extractor = extractor
    self.lock = threading.Lock()


class ComputeFeaturesFn(beam.DoFn):
  """LoadedImage -> ImageFeatures, with one frozen backbone per worker process."""

  def __init__(self, backbone_config: config_lib.BackboneConfig, weights_seed: int,
               shared_handle: Optional[shared.Shared] = None, extractor_factory=None,
               log_every_s: float = 10.0):
    self._config = backbone_config
    self._seed = weights_seed
    self._shared = shared_handle or shared.Shared()
    self._factory = extractor_factory  # tests pass a tiny fake backbone
    self._log_every_s = log_every_s

  def setup(self):
    def load():
      if self._factory is not None:
        return _SharedExtractor(self._factory())
      from pipeline import backbone
      return _SharedExtractor(backbone.FeatureExtractor(
          self._config.backbone, self._config.weights, self._seed, self._config.threads))
    self._holder = self._shared.acquire(load, tag=(self._config, self._seed))
    self._done = 0
    self._start = time.monotonic()
    self._last_log = self._start
    self._images = _counter("images_featurized")
    self._millis = Metrics.distribution(NAMESPACE, "backbone_ms")

  def process(self, item: LoadedImage):
    start = time.monotonic()
    with self._holder.lock:  # one forward pass at a time; TF uses the cores itself
      feature_map = self._holder.extractor(item.image)
    now = time.monotonic()
    self._millis.update(int(1000 * (now - start)))
    self._images.inc()
    self._done += 1
    if self._done == 1 or now - self._last_log >= self._log_every_s:
      self._last_log = now
      _LOGGER.warning("ComputeFeatures: %d images in %.0f s on this worker (%.2f images/s)",
                      self._done, now - self._start, self._done / (now - self._start))
    height, width = item.image.shape[:2]
    yield ImageFeatures(item.image_id, item.image_path, width, height, item.gt_boxes,
                        feature_map, item.stats)


class SampleTargetsFn(beam.DoFn):
  """ImageFeatures -> serialized Examples (main), an images.jsonl line, counts."""

  def __init__(self, anchor_config: config_lib.AnchorConfig,
               target_config: config_lib.TargetConfig, tile_dtype: str):
    self._anchors = anchor_config
    self._targets = target_config
    self._tile_dtype = tile_dtype

  def setup(self):
    self._records = _counter("records")
    self._fg = _counter("fg_anchors")
    self._bg = _counter("bg_anchors")
    self._ok = _counter("images_ok")
    self._skipped = _counter("images_skipped")

  def process(self, item: ImageFeatures):
    import numpy as np
    from pipeline import schema, targets
    feature_height, feature_width = item.feature_map.shape[:2]
    result = targets.compute_targets(
        item.width, item.height, feature_height, feature_width, item.gt_boxes, item.image_id,
        scales=self._anchors.scales, ratios=self._anchors.ratios,
        fg_iou_thresh=self._targets.fg_iou_thresh, bg_iou_thresh=self._targets.bg_iou_thresh,
        batch_size=self._targets.batch_size, fg_fraction=self._targets.fg_fraction,
        seed=self._targets.seed)
    num_records = len(result.points)
    counts = collections.Counter(item.stats)
    if num_records == 0:
      # images.jsonl lists images that produced records (DESIGN.md): one that
      # cannot (no anchor lies inside it, e.g. a padded tiny or a very
      # elongated image) is skipped, with the reason, and still counted.
      self._skipped.inc()
      yield beam.pvalue.TaggedOutput(ERRORS, error_record(
          item.image_path, "targets",
          f"no anchor to sample: {result.num_inside} of {len(result.anchors)} anchors lie "
          f"inside the {item.width}x{item.height} frame (feature map "
          f"{feature_height}x{feature_width}, stride {result.stride_x:.1f} x "
          f"{result.stride_y:.1f} px, smallest anchor scale "
          f"{min(self._anchors.scales):g} strides)",
          outcome=SKIPPED, image_id=item.image_id))
      counts["images_no_anchors"] += 1
      yield beam.pvalue.TaggedOutput(STATS, dict(counts))
      return
    feature_map = item.feature_map.astype(np.dtype(self._tile_dtype), copy=False)
    tiles = targets.extract_tiles(feature_map, result.points, feature_width)
    for i in range(num_records):
      yield schema.make_example(tiles[i], result.point_labels[i], result.point_deltas[i],
                                item.image_id, result.locations[i])
    self._records.inc(num_records)
    self._fg.inc(result.num_fg)
    self._bg.inc(result.num_bg)
    self._ok.inc()
    yield beam.pvalue.TaggedOutput(IMAGES, {
        "image_id": item.image_id,
        "width": int(item.width),
        "height": int(item.height),
        "feature_height": int(feature_height),
        "feature_width": int(feature_width),
        "stride_x": float(result.stride_x),
        "stride_y": float(result.stride_y),
        "gt_boxes": [[float(v) for v in box] for box in np.asarray(item.gt_boxes)],
        "num_fg": int(result.num_fg),
        "num_bg": int(result.num_bg),
        "num_locations": int(num_records),
    })
    counts.update({"images_ok": 1, "fg_anchors": int(result.num_fg),
                   "bg_anchors": int(result.num_bg), "records_expected": num_records,
                   "inside_anchors": int(result.num_inside)})
    yield beam.pvalue.TaggedOutput(STATS, dict(counts))


def dead_letter_to_error(stage: str):
  """Maps Beam's dead letter (element, (type, value, traceback)) to an errors line."""
  def convert(dead):
    element, (exc_type, exc_value, _) = dead
    path = getattr(element, "image_path", None) or str(element)[:200]
    image_id = getattr(element, "image_id", None)
    name = getattr(exc_type, "__name__", str(exc_type))
    _counter("images_failed").inc()
    _counter(f"failed_{stage}").inc()
    return error_record(path, stage, f"{name}: {exc_value}", image_id=image_id)
  return convert


def error_counts(error: Dict[str, Any]) -> Dict[str, int]:
  """What an errors line adds to the manifest counts."""
  outcome = error["outcome"]
  if outcome == FAILED:
    return {"images_failed": 1, f"failed_{error['stage']}": 1}
  if outcome == SKIPPED:
    return {"images_skipped": 1}
  return {"unpaired_inputs": 1}


class SumCounts(beam.CombineFn):
  """Sums dicts of counts key by key."""

  def create_accumulator(self):
    return collections.Counter()

  def add_input(self, accumulator, counts):
    accumulator.update(counts)
    return accumulator

  def merge_accumulators(self, accumulators):
    total = collections.Counter()
    for accumulator in accumulators:
      total.update(accumulator)
    return total

  def extract_output(self, accumulator):
    return dict(sorted(accumulator.items()))


def to_json_line(record: Dict[str, Any]) -> str:
  return json.dumps(record, sort_keys=True)


def error_line(error: Dict[str, Any]) -> str:
  """errors.jsonl keeps path, stage, reason (and outcome, image_id)."""
  return to_json_line({k: v for k, v in error.items() if v is not None})


def sum_box_stats(counts: Dict[str, int]) -> Dict[str, int]:
  """Adds the derived `boxes_dropped` total to the counts."""
  out = dict(counts)
  out["boxes_dropped"] = sum(int(counts.get(k, 0)) for k in ilsvrc.DROPPED_BOX_KEYS)
  return out
