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
import hashlib
import json
import logging
import os
import threading
import time
from typing import Any, Dict, NamedTuple, Optional

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio, textio
from apache_beam.io.tfrecordio import WriteToTFRecord
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from pipeline.core import anchors as anchors_lib
from pipeline.core import config as config_lib
from pipeline.core import frame as frame_lib
from pipeline.core import targets
from pipeline.io import determinism, ilsvrc, schema, shards, storage
from pipeline.io import images as images_lib
from pipeline.io import manifest as manifest_lib
from pipeline.model import extractor as extractor_lib
from pipeline.model import layers, registry

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


class WorkerProgress:
  """A plain progress line per worker process: images done, rate, errors so far.

  One per process (PROGRESS below): every DoFn instance of the process adds
  to it. Logged at INFO on the `pipeline.progress` logger at most every
  `every_s` seconds; rpn-preprocess turns that logger on, also on workers.
  """

  def __init__(self, every_s: float = 10.0):
    self._every_s = every_s
    self._lock = threading.Lock()
    self._start = self._last = None
    self._done = self._errors = 0

  def image_done(self) -> None:
    self._add(done=1)

  def error(self) -> None:
    self._add(errors=1)

  def _add(self, done: int = 0, errors: int = 0) -> None:
    with self._lock:
      now = time.monotonic()
      if self._start is None:
        self._start = self._last = now
      self._done += done
      self._errors += errors
      if self._done + self._errors > 1 and now - self._last < self._every_s:
        return
      self._last = now
      elapsed = now - self._start
      rate = f", {self._done / elapsed:.2f} images/s" if elapsed >= 1 else ""
      line = (f"progress (worker {os.getpid()}): {self._done} images done in {elapsed:.0f} s"
              f"{rate}, {self._errors} errors so far")
    PROGRESS_LOGGER.info(line)


PROGRESS_LOGGER = logging.getLogger("pipeline.progress")
PROGRESS = WorkerProgress()


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


# Declared, not inferred: Beam 2.78 infers Union[TaggedOutput, ImageInput] for
# the main output of a DoFn that yields both, which LoadImageFn's ImageInput
# input hint then refuses.
@beam.typehints.with_output_types(ImageInput)
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
    try:
      image, gt_boxes, _, stats = ilsvrc.load_example(
          item.image_path, item.annotation_path, self._config.max_pixels)
    except images_lib.InputError as e:
      _counter("images_failed").inc()
      _counter(f"failed_{e.stage}").inc()
      path = item.annotation_path if e.stage == "annotation" else item.image_path
      PROGRESS.error()
      yield beam.pvalue.TaggedOutput(ERRORS, error_record(
          path, e.stage, str(e), image_id=item.image_id))
      return
    stats = dict(stats)
    for key, value in stats.items():  # box policy counts, also as Beam metrics
      _counter(key).inc(value)
    height, width = image.shape[:2]
    image, gt_boxes, _ = frame_lib.prepare_image(
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
          feature_layer=self._config.feature_layer))
    self._holder = self._shared.acquire(load, tag=(self._config, self._seed))
    self._images = _counter("images_featurized")
    self._millis = Metrics.distribution(NAMESPACE, "backbone_ms")

  def process(self, item: LoadedImage):
    start = time.monotonic()
    with self._holder.lock:  # one forward pass at a time; TF uses the cores itself
      feature_map = self._holder.extractor(item.image)
    now = time.monotonic()
    self._millis.update(int(1000 * (now - start)))
    self._images.inc()
    PROGRESS.image_done()
    height, width = item.image.shape[:2]
    stats = item.stats
    threads = getattr(self._holder.extractor, "threads", None)
    if threads:  # the manifest's backbone_threads (determinism.py)
      stats = dict(stats, **determinism.threads_count(threads))
    yield ImageFeatures(item.image_id, item.image_path, width, height, item.gt_boxes,
                        feature_map, stats)


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
      PROGRESS.error()
      yield beam.pvalue.TaggedOutput(ERRORS, no_anchor_error(
          item.image_path, item.image_id, result.num_inside, len(result.anchors), item.width,
          item.height, feature_height, feature_width, self._anchors.scales))
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
    yield beam.pvalue.TaggedOutput(IMAGES, dict(
        image_line(item, feature_height, feature_width, item.gt_boxes),
        num_fg=int(result.num_fg), num_bg=int(result.num_bg), num_locations=int(num_records)))
    counts.update({"images_ok": 1, "fg_anchors": int(result.num_fg),
                   "bg_anchors": int(result.num_bg), "records_expected": num_records,
                   "inside_anchors": int(result.num_inside)})
    yield beam.pvalue.TaggedOutput(STATS, dict(counts))


class MapRecordFn(beam.DoFn):
  """ImageFeatures -> one serialized maps record (main), an images.jsonl line, counts.

  The maps layout (--layout maps): the whole feature map, the frame size and
  the gt boxes; the anchors and their targets are drawn by rpn-train.
  """

  def __init__(self, feature_dtype: str):
    self._dtype = feature_dtype

  def setup(self):
    self._records = _counter("records")
    self._ok = _counter("images_ok")

  def process(self, item: ImageFeatures):
    feature_height, feature_width = item.feature_map.shape[:2]
    feature_map = item.feature_map.astype(np.dtype(self._dtype), copy=False)
    gt_boxes = np.asarray(item.gt_boxes, np.float64).reshape(-1, 4)
    yield schema.make_map_example(feature_map, (item.height, item.width), gt_boxes,
                                  item.image_id)
    self._records.inc()
    self._ok.inc()
    # gt boxes in float32, as in the record (the tiles layout labels against float64)
    yield beam.pvalue.TaggedOutput(IMAGES, image_line(item, feature_height, feature_width,
                                                      gt_boxes.astype(np.float32)))
    counts = collections.Counter(item.stats)
    counts.update({"images_ok": 1, "records_expected": 1})
    yield beam.pvalue.TaggedOutput(STATS, dict(counts))


def image_line(item: ImageFeatures, feature_height: int, feature_width: int,
               gt_boxes) -> Dict[str, Any]:
  """The images.jsonl fields both layouts write for an image (the frame, its
  feature map and strides, the gt boxes)."""
  stride_x, stride_y = anchors_lib.ratio_strides(item.width, item.height, feature_width,
                                                 feature_height)
  return {
      "image_id": item.image_id,
      "width": int(item.width),
      "height": int(item.height),
      "feature_height": int(feature_height),
      "feature_width": int(feature_width),
      "stride_x": float(stride_x),
      "stride_y": float(stride_y),
      "gt_boxes": [[float(v) for v in box] for box in np.asarray(gt_boxes).reshape(-1, 4)],
  }


def no_anchor_error(path: str, image_id: str, num_inside: int, num_anchors: int, width: int,
                    height: int, feature_height: int, feature_width: int, scales
                    ) -> Dict[str, Any]:
  """The errors line of an image skipped because no anchor lies inside its frame."""
  stride_x, stride_y = anchors_lib.ratio_strides(width, height, feature_width, feature_height)
  return error_record(
      path, "targets",
      f"no anchor to sample: {num_inside} of {num_anchors} anchors lie "
      f"inside the {width}x{height} frame (feature map "
      f"{feature_height}x{feature_width}, stride {stride_x:.1f} x "
      f"{stride_y:.1f} px, smallest anchor scale {min(scales):g} strides)",
      outcome=SKIPPED, image_id=image_id)


def dead_letter_to_error(stage: str):
  """Maps Beam's dead letter (element, (type, value, traceback)) to an errors line."""
  def convert(dead):
    element, (exc_type, exc_value, _) = dead
    path = getattr(element, "image_path", None) or str(element)[:200]
    image_id = getattr(element, "image_id", None)
    name = getattr(exc_type, "__name__", str(exc_type))
    PROGRESS.error()
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


# ---------------------------------------------------------------------------
# Composite transforms: what build_pipeline strings together


class ReadInputs(beam.PTransform):
  """PBegin -> {"images": ImageInput, "errors": error records, "found": [count]}.

  Lists images and annotations (and the image set, when given), pairs them by
  id; "found" counts the images that are inputs of this run (with an image
  set, only the listed ones).
  """

  def __init__(self, cfg: config_lib.PreprocessConfig, max_images: Optional[int] = None):
    super().__init__()
    self._cfg = cfg
    self._max_images = max_images

  def expand(self, pbegin):
    cfg = self._cfg
    grouped = {
        "images": pbegin | "ListImages" >> ListFiles(cfg.images_dir, ilsvrc.IMAGE_EXTENSIONS),
        "annotations": pbegin | "ListAnnotations" >> ListFiles(
            cfg.annotations_dir, (ilsvrc.ANNOTATION_EXTENSION,)),
    }
    if cfg.image_set:
      grouped["listed"] = (pbegin | "ReadImageSet" >> beam.io.ReadFromText(cfg.image_set)
                           | "ParseImageSet" >> beam.FlatMap(_listed_ids))
    by_id = grouped | "GroupById" >> beam.CoGroupByKey()
    if self._max_images:
      by_id = by_id | "LimitImages" >> LimitImages(self._max_images, bool(cfg.image_set))
    paired = (by_id
              | "PairInputs" >> beam.ParDo(PairInputsFn(
                  cfg.missing_annotations, bool(cfg.image_set))).with_outputs(ERRORS, main="ok"))
    if cfg.image_set:
      inputs = (paired.ok, paired[ERRORS] | "ListedImageErrors" >> beam.Filter(
          lambda e: e["outcome"] in (FAILED, SKIPPED))) | "ListedImages" >> beam.Flatten()
    else:
      inputs = by_id | "ImageFiles" >> beam.FlatMap(lambda kv: kv[1]["images"])
    return {"images": paired.ok, "errors": paired[ERRORS],
            "found": inputs | "CountFound" >> beam.combiners.Count.Globally()}


class LimitImages(beam.PTransform):
  """(id, grouped files) -> the `count` ids with an image (and listed, with an
  image set) whose sha256 is smallest: a fixed pseudo-random subset, the same
  on every runner. Other ids are dropped whole, with their annotations."""

  def __init__(self, count: int, use_image_set: bool):
    super().__init__()
    self._count = count
    self._use_image_set = use_image_set

  def expand(self, by_id):
    use_image_set = self._use_image_set

    def candidate(kv):
      files = kv[1]
      return bool(list(files["images"])) and (
          not use_image_set or bool(list(files.get("listed", []))))
    return (by_id | "Candidates" >> beam.Filter(candidate)
            | "Smallest" >> beam.combiners.Top.Smallest(
                self._count, key=lambda kv: hashlib.sha256(kv[0].encode("utf-8")).digest())
            | "Unpack" >> beam.FlatMap(lambda kept: kept))


def _listed_ids(line: str):
  return [(image_id, True) for image_id in ilsvrc.parse_image_set(line)]


class ImagesToRecords(beam.PTransform):
  """ImageInput -> {"records": serialized Examples, "images": images.jsonl dicts,
  "stats": count dicts, "errors": error records}.

  Load (decode, parse, box policy, pad), features (the frozen backbone), then
  targets (anchors, labels, sampling, tiles; with the maps layout, one record
  of the whole feature map instead); any step's failure is an errors record
  (Beam's dead letters for exceptions nobody expected).
  """

  def __init__(self, cfg: config_lib.PreprocessConfig, extractor_factory=None):
    super().__init__()
    self._cfg = cfg
    self._factory = extractor_factory

  def expand(self, images):
    cfg = self._cfg
    spec = registry.backbone_spec(cfg.backbone.backbone)
    loaded = (images | "LoadImages" >> beam.ParDo(
        LoadImageFn(cfg.backbone, spec.min_input_side))
        .with_outputs(ERRORS, main="ok").with_exception_handling())
    features = (loaded.ok | "ComputeFeatures" >> beam.ParDo(
        ComputeFeaturesFn(cfg.backbone, cfg.targets.seed, extractor_factory=self._factory))
        .with_exception_handling())
    fmt = cfg.output_format
    if fmt.layout == config_lib.MAPS_LAYOUT:
      label, to_records = "MapRecords", MapRecordFn(fmt.tile_dtype)
    else:
      label, to_records = "SampleTargets", SampleTargetsFn(cfg.anchors, cfg.targets,
                                                           fmt.tile_dtype)
    sampled = (features.good | label >> beam.ParDo(to_records)
               .with_outputs(IMAGES, STATS, ERRORS, main="records").with_exception_handling())
    errors = ((loaded[ERRORS], sampled[ERRORS],
               loaded.bad | "LoadDeadLetters" >> beam.Map(dead_letter_to_error("load")),
               features.bad | "FeatureDeadLetters" >> beam.Map(dead_letter_to_error("features")),
               sampled.bad | "TargetDeadLetters" >> beam.Map(dead_letter_to_error("targets")))
              | "ImageErrors" >> beam.Flatten())
    return {"records": sampled.records, "images": sampled[IMAGES], "stats": sampled[STATS],
            "errors": errors}


def write_to_tfrecord(prefix: str, output_format: config_lib.OutputConfig) -> WriteToTFRecord:
  """WriteToTFRecord of the product's shards, closed at --max_shard_mb when the
  runner decides the shards (--num_shards 0).

  FileBasedSink has `max_bytes_per_shard`, but WriteToTFRecord takes no such
  argument; without it a runner-sharded local run writes one file per worker
  bundle. So it is set on the sink WriteToTFRecord keeps in `_sink`: checked
  against apache-beam 2.77 (tests/pipeline/test_transforms.py fails if that changes).
  """
  fmt = output_format
  write = WriteToTFRecord(
      prefix, file_name_suffix=manifest_lib.shard_suffix(fmt.compression),
      num_shards=fmt.num_shards, shard_name_template="-SSSSS-of-NNNNN",
      compression_type=("gzip" if fmt.compression == "GZIP" else "uncompressed"))
  if fmt.num_shards == 0 and fmt.max_shard_mb:
    sink = write._sink
    if not hasattr(sink, "max_bytes_per_shard"):
      raise RuntimeError("this apache-beam's TFRecord sink has no max_bytes_per_shard; "
                         "see pipeline.beam.transforms.write_to_tfrecord")
    sink.max_bytes_per_shard = int(fmt.max_shard_mb * (1 << 20))
  return write


class WriteOutputs(beam.PTransform):
  """{"records", "images", "stats", "errors", "found"} -> [manifest dict].

  Writes the shards, images.jsonl and errors.jsonl, then, last, manifest.json
  with the counts (side inputs on every other output order it after them).
  Once the shards are in place, each is described on the workers (bytes, and
  records counted by walking its framing: pipeline.io.shards.describe_shard),
  for the manifest's "shards" key.
  """

  def __init__(self, cfg: config_lib.PreprocessConfig):
    super().__init__()
    self._cfg = cfg

  def expand(self, outputs):
    cfg = self._cfg
    records = outputs["records"]
    counts = ((outputs["stats"], outputs["errors"] | "ErrorCounts" >> beam.Map(error_counts))
              | "AllCounts" >> beam.Flatten()
              | "SumCounts" >> beam.CombineGlobally(SumCounts()))
    if cfg.shuffle_records:
      records = records | "ShuffleRecords" >> beam.Reshuffle()
    written_shards = records | "WriteShards" >> write_to_tfrecord(
        storage.join(cfg.output, config_lib.shard_prefix(cfg.output_format.layout)),
        cfg.output_format)
    # The sink yields the final file names from one finalize step: reshuffled,
    # so that a runner spreads the counting over its workers.
    shard_info = (written_shards | "SpreadShards" >> beam.Reshuffle()
                  | "DescribeShards" >> beam.Map(shards.describe_shard,
                                                 cfg.output_format.compression))
    written = [
        outputs[key] | f"{name}Lines" >> beam.Map(to_line)
        | f"Write{name}" >> textio.WriteToText(storage.join(cfg.output, file_name),
                                               shard_name_template="", num_shards=1)
        for key, name, file_name, to_line in (
            ("images", "Images", config_lib.IMAGES_NAME, to_json_line),
            ("errors", "Errors", config_lib.ERRORS_NAME, error_line))]
    spec = registry.backbone_spec(cfg.backbone.backbone)
    return (pbegin_of(records) | "Start" >> beam.Create([None])
            | "WriteManifest" >> beam.Map(
                write_manifest, cfg=cfg,
                feature_channels=layers.feature_channels(cfg.backbone.backbone,
                                                           cfg.backbone.feature_layer),
                min_input_side=spec.min_input_side,
                counts=beam.pvalue.AsSingleton(counts),
                found=beam.pvalue.AsSingleton(outputs["found"]),
                records=beam.pvalue.AsSingleton(
                    outputs["records"] | "CountRecords" >> beam.combiners.Count.Globally()),
                shard_info=beam.pvalue.AsList(shard_info),
                images_written=beam.pvalue.AsList(written[0]),
                errors_written=beam.pvalue.AsList(written[1])))


def pbegin_of(pcoll) -> beam.pvalue.PBegin:
  return beam.pvalue.PBegin(pcoll.pipeline)


def write_manifest(_, cfg, feature_channels, min_input_side, counts, found, records,
                   shard_info, images_written, errors_written) -> Dict[str, Any]:
  """Completes the counts and writes manifest.json; returns the manifest.

  `shard_info` holds pipeline.io.shards.describe_shard of every written shard;
  their records must add up to the records made, else no manifest is written.
  """
  del images_written, errors_written  # side inputs only to order this step last
  in_shards = sum(shard["records"] for shard in shard_info)
  if in_shards != records:
    raise shards.ShardError(f"{cfg.output}: the shards hold {in_shards} records but the run "
                            f"made {records}; no manifest written")
  counts = dict(counts)
  threads = determinism.pop_threads(counts)
  counts = sum_box_stats(counts)
  counts.update({"images_found": found, "records": records})
  for key in ("images_ok", "images_failed", "images_skipped", "fg_anchors", "bg_anchors"):
    counts.setdefault(key, 0)
  manifest = manifest_lib.build(cfg, counts, [shard["file"] for shard in shard_info],
                                feature_channels, min_input_side, shards=shard_info,
                                backbone_threads=threads)
  manifest_lib.write(cfg.output, manifest)
  return manifest
