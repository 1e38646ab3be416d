"""The DoFns of rpn-preprocess, one per step of an image.

  PairInputsFn      image and XML paths -> ImageInput (or an errors line)
  LoadImageFn       -> LoadedImage: decoded, boxes sanitized, framed
  ComputeFeaturesFn -> ImageFeatures: the backbone's feature map (one
                       backbone per worker process, through Beam's Shared)
  SampleTargetsFn   -> tiles records (tiles layout) and images.jsonl lines
  MapRecordFn       -> one feature-map record (maps layout)

The numeric work lives in pipeline.core, the reading in pipeline.io and the
model in pipeline.model; these steps move elements between them, count what
happens (Beam metrics) and route bad input to the errors output.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Any, Dict, Optional

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from pipeline.beam import elements
from pipeline.beam import metrics as metrics_lib
from pipeline.beam import progress as progress_lib
from pipeline.core import anchors as anchors_lib
from pipeline.core import config as config_lib
from pipeline.core import frame as frame_lib
from pipeline.core import targets
from pipeline.io import determinism, ilsvrc, schema
from pipeline.io import images as images_lib
from pipeline.model import extractor as extractor_lib


# Declared, not inferred: Beam 2.78 infers Union[TaggedOutput, ImageInput] for
# the main output of a DoFn that yields both, which LoadImageFn's ImageInput
# input hint then refuses.
@beam.typehints.with_output_types(elements.ImageInput)
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
        elements.counter("image_set_ids_without_image").inc()
        yield beam.pvalue.TaggedOutput(elements.ERRORS, elements.error_record(
            image_id, "pairing", "listed in the image set but no image file found",
            outcome="unpaired", image_id=image_id))
      for path in annotations:
        elements.counter("annotations_without_image").inc()
        yield beam.pvalue.TaggedOutput(elements.ERRORS, elements.error_record(
            path, "pairing", "annotation without an image file", outcome="unpaired",
            image_id=image_id))
      return
    first, duplicates = images[0], images[1:]
    elements.counter("images_found").inc(len(images))
    for path in duplicates:
      elements.counter("images_failed").inc()
      elements.counter("failed_pairing").inc()
      yield beam.pvalue.TaggedOutput(elements.ERRORS, elements.error_record(
          path, "pairing", f"duplicate image id {image_id!r} (also {first})", image_id=image_id))
    annotation = annotations[0] if annotations else None
    if annotation is None and self._missing == "skip":
      elements.counter("images_skipped").inc()
      elements.counter("skipped_pairing").inc()
      yield beam.pvalue.TaggedOutput(elements.ERRORS, elements.error_record(
          first, "pairing", "no annotation file (--missing_annotations skip)",
          outcome=elements.SKIPPED, image_id=image_id))
      return
    if annotation is None:
      elements.counter("images_without_annotation").inc()
    yield elements.ImageInput(image_id, first, annotation)


class LoadImageFn(beam.DoFn):
  """ImageInput -> LoadedImage: read, decode, parse, clip boxes, resize, pad.

  With flip, a second LoadedImage follows: the image mirrored left to right
  with its boxes (frame.mirror) before the resize and padding, so that it is
  framed as any image is, under the id + FLIP_SUFFIX and with flipped=True.
  It is not an input: the counts of inputs (found, ok, failed, skipped) and
  the box policy's counts are the original's alone.
  """

  def __init__(self, backbone_config: config_lib.BackboneConfig, min_input_side: int,
               flip: bool = False):
    self._config = backbone_config
    self._min_input_side = min_input_side
    self._flip = flip

  def process(self, item: elements.ImageInput):
    try:
      image, gt_boxes, _, stats = ilsvrc.load_example(
          item.image_path, item.annotation_path, self._config.max_pixels)
    except images_lib.InputError as e:
      elements.counter("images_failed").inc()
      elements.counter(f"failed_{e.stage}").inc()
      path = item.annotation_path if e.stage == "annotation" else item.image_path
      progress_lib.PROGRESS.error()
      yield beam.pvalue.TaggedOutput(elements.ERRORS, elements.error_record(
          path, e.stage, str(e), image_id=item.image_id))
      return
    stats = dict(stats)
    for key, value in stats.items():  # box policy counts, also as Beam metrics
      elements.counter(key).inc(value)
    height, width = image.shape[:2]
    framed, framed_boxes = self._frame(image, gt_boxes)
    if framed.shape[:2] != (height, width) and min(height, width) < self._min_input_side:
      stats["images_padded"] = stats.get("images_padded", 0) + 1
      elements.counter("images_padded").inc()
    source = elements.ImageSource(width, height, frame_lib.box_scale(
        width, height, self._min_input_side, self._config.min_side, self._config.max_side),
        annotated=item.annotation_path is not None)
    yield elements.LoadedImage(item.image_id, item.image_path, framed, framed_boxes, stats,
                               source=source)
    if self._flip:
      elements.counter("images_flipped").inc()
      yield elements.LoadedImage(item.image_id + config_lib.FLIP_SUFFIX, item.image_path,
                                 *self._frame(*frame_lib.mirror(image, gt_boxes)), {},
                                 flipped=True, source=source)

  def _frame(self, image, gt_boxes):
    """(frame, boxes in it): the optional resize, then the padding."""
    framed, boxes, _ = frame_lib.prepare_image(
        image, gt_boxes, self._min_input_side, self._config.min_side, self._config.max_side)
    return framed, boxes


class _SharedExtractor:
  """Holder so that one backbone serves every DoFn instance of a worker process."""

  def __init__(self, extractor):
    self.extractor = extractor
    self.lock = threading.Lock()


class ComputeFeaturesFn(beam.DoFn):
  """LoadedImage -> ImageFeatures, with one frozen backbone per worker process."""

  def __init__(self, backbone_config: config_lib.BackboneConfig, weights_seed: int,
               shared_handle: Optional[shared.Shared] = None, extractor_factory=None):
    self._config = backbone_config
    self._seed = weights_seed
    self._shared = shared_handle or shared.Shared()
    self._factory = extractor_factory  # tests pass a tiny fake backbone

  def setup(self):
    def load():
      if self._factory is not None:
        return _SharedExtractor(self._factory())
      return _SharedExtractor(extractor_lib.FeatureExtractor(
          self._config.backbone, self._config.weights, self._seed, self._config.threads,
          feature_layer=self._config.feature_layer,
          feature_layers=self._config.feature_layers))
    self._holder = self._shared.acquire(load, tag=(self._config, self._seed))
    self._images = elements.counter("images_featurized")
    self._millis = Metrics.distribution(elements.NAMESPACE, "backbone_ms")
    self._buckets: Dict[str, Any] = {}  # the latency bucket counters, made once each

  def process(self, item: elements.LoadedImage):
    start = time.monotonic()
    with self._holder.lock:  # one forward pass at a time; TF uses the cores itself
      feature_map = self._holder.extractor(item.image)
    millis = int(1000 * (time.monotonic() - start))
    self._millis.update(millis)
    bucket = metrics_lib.bucket_name(millis)  # for the percentiles
    if bucket not in self._buckets:
      self._buckets[bucket] = elements.counter(bucket)
    self._buckets[bucket].inc()
    self._images.inc()
    progress_lib.PROGRESS.image_done()
    height, width = item.image.shape[:2]
    stats = item.stats
    threads = getattr(self._holder.extractor, "threads", None)
    if threads:  # the manifest's backbone_threads (determinism.py)
      stats = dict(stats, **determinism.threads_count(threads))
    yield elements.ImageFeatures(item.image_id, item.image_path, width, height, item.gt_boxes,
                                 feature_map, stats, item.flipped, item.source)


class SampleTargetsFn(beam.DoFn):
  """ImageFeatures -> serialized Examples (main), an images.jsonl line, counts."""

  def __init__(self, anchor_config: config_lib.AnchorConfig,
               target_config: config_lib.TargetConfig, tile_dtype: str):
    self._anchors = anchor_config
    self._targets = target_config
    self._tile_dtype = tile_dtype

  def setup(self):
    self._records = elements.counter("records")
    self._bytes = elements.counter("record_bytes")
    self._fg = elements.counter("fg_anchors")
    self._bg = elements.counter("bg_anchors")
    self._ok = elements.counter("images_ok")
    self._skipped = elements.counter("images_skipped")
    self._skipped_targets = elements.counter("skipped_targets")
    self._no_anchors = elements.counter("images_no_anchors")
    self._flipped_ok = elements.counter("flipped_ok")

  def process(self, item: elements.ImageFeatures):
    # one map, or one per feature level (--feature_layers), finest first
    maps = item.feature_map if isinstance(item.feature_map, list) else [item.feature_map]
    feature_height, feature_width = maps[0].shape[:2]
    result = targets.compute_level_targets(
        item.width, item.height, [m.shape[:2] for m in maps], item.gt_boxes, item.image_id,
        anchor_config=self._anchors, target_config=self._targets)
    num_records = result.num_points
    counts = collections.Counter(item.stats)
    if num_records == 0 and item.flipped:
      # the original, of the same frame size, is skipped with the reason
      counts["flipped_no_anchors"] += 1
      yield beam.pvalue.TaggedOutput(elements.STATS, dict(counts))
      return
    if num_records == 0:
      # images.jsonl lists images that produced records (DESIGN.md): one that
      # cannot (no anchor lies inside it, e.g. a padded tiny or a very
      # elongated image) is skipped, with the reason, and still counted.
      self._skipped.inc()
      self._skipped_targets.inc()
      self._no_anchors.inc()
      progress_lib.PROGRESS.error()
      yield beam.pvalue.TaggedOutput(elements.ERRORS, elements.no_anchor_error(
          item.image_path, item.image_id, result.num_inside,
          sum(len(level.anchors) for level in result.levels), item.width,
          item.height, feature_height, feature_width, self._anchors.scales))
      counts["images_no_anchors"] += 1
      yield beam.pvalue.TaggedOutput(elements.STATS, dict(counts))
      return
    several = len(maps) > 1
    for index, (feature_map, level) in enumerate(zip(maps, result.levels, strict=True)):
      feature_map = feature_map.astype(np.dtype(self._tile_dtype), copy=False)
      tiles = targets.extract_tiles(feature_map, level.points, feature_map.shape[1])
      for i in range(len(level.points)):
        record = schema.make_example(tiles[i], level.point_labels[i], level.point_deltas[i],
                                     item.image_id, level.locations[i],
                                     level=index if several else None)
        self._bytes.inc(len(record))
        yield record
    self._records.inc(num_records)
    self._fg.inc(result.num_fg)
    self._bg.inc(result.num_bg)
    (self._flipped_ok if item.flipped else self._ok).inc()
    line = image_line(item, feature_height, feature_width, item.gt_boxes)
    if several:
      line["levels"] = [dict(level_line(item, *feature_map.shape[:2]),
                             num_locations=len(level.points))
                        for feature_map, level in zip(maps, result.levels, strict=True)]
    yield beam.pvalue.TaggedOutput(elements.IMAGES, dict(
        line, num_fg=int(result.num_fg), num_bg=int(result.num_bg),
        num_locations=int(num_records)))
    counts.update({ok_key(item): 1, "fg_anchors": int(result.num_fg),
                   "bg_anchors": int(result.num_bg), "records_expected": num_records,
                   "inside_anchors": int(result.num_inside)})
    yield beam.pvalue.TaggedOutput(elements.STATS, dict(counts))


class MapRecordFn(beam.DoFn):
  """ImageFeatures -> one serialized maps record (main), an images.jsonl line, counts.

  The maps layout (--layout maps): the whole feature map, the frame size and
  the gt boxes; the anchors and their targets are drawn by rpn-train.
  """

  def __init__(self, feature_dtype: str):
    self._dtype = feature_dtype

  def setup(self):
    self._records = elements.counter("records")
    self._bytes = elements.counter("record_bytes")
    self._ok = elements.counter("images_ok")
    self._flipped_ok = elements.counter("flipped_ok")

  def process(self, item: elements.ImageFeatures):
    # one map, or one per feature level (--feature_layers), finest first
    maps = item.feature_map if isinstance(item.feature_map, list) else [item.feature_map]
    feature_height, feature_width = maps[0].shape[:2]
    maps = [m.astype(np.dtype(self._dtype), copy=False) for m in maps]
    gt_boxes = np.asarray(item.gt_boxes, np.float64).reshape(-1, 4)
    source_size = None if item.source is None else (item.source.height, item.source.width)
    record = schema.make_map_example(maps if len(maps) > 1 else maps[0],
                                     (item.height, item.width), gt_boxes, item.image_id,
                                     source_size=source_size)
    self._bytes.inc(len(record))
    yield record
    self._records.inc()
    (self._flipped_ok if item.flipped else self._ok).inc()
    # gt boxes in float32, as in the record (the tiles layout labels against float64)
    line = image_line(item, feature_height, feature_width, gt_boxes.astype(np.float32))
    if len(maps) > 1:
      line["levels"] = [level_line(item, *m.shape[:2]) for m in maps]
    yield beam.pvalue.TaggedOutput(elements.IMAGES, line)
    counts = collections.Counter(item.stats)
    counts.update({ok_key(item): 1, "records_expected": 1})
    yield beam.pvalue.TaggedOutput(elements.STATS, dict(counts))


def ok_key(item: elements.ImageFeatures) -> str:
  """The count an image that made records adds to: images_ok for an input,
  flipped_ok for a mirrored copy (not an input)."""
  return "flipped_ok" if item.flipped else "images_ok"


def level_line(item: elements.ImageFeatures, feature_height: int, feature_width: int
               ) -> Dict[str, Any]:
  """A feature map's fields of an images.jsonl line: its size and strides (of
  the line itself, and of each entry of "levels" with several levels)."""
  stride_x, stride_y = anchors_lib.ratio_strides(item.width, item.height, feature_width,
                                                 feature_height)
  return {"feature_height": int(feature_height), "feature_width": int(feature_width),
          "stride_x": float(stride_x), "stride_y": float(stride_y)}


def image_line(item: elements.ImageFeatures, feature_height: int, feature_width: int,
               gt_boxes) -> Dict[str, Any]:
  """The images.jsonl fields both layouts write for an image (the frame, its
  feature map and strides, the gt boxes)."""
  return {
      "image_id": item.image_id,
      "width": int(item.width),
      "height": int(item.height),
      **level_line(item, feature_height, feature_width),
      "gt_boxes": [[float(v) for v in box] for box in np.asarray(gt_boxes).reshape(-1, 4)],
  }
