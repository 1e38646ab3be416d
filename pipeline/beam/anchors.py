"""The anchor-coverage Beam program (rpn-anchors): no forward pass.

    ReadInputs -> LoadFrames (boxes, frame and feature-map size) -> Search (a
    fixed sample) -> Score (given and suggested anchors) -> SumCoverage ->
    WriteReport (anchors.json, coverage.png, boxes.png) and errors.jsonl

The front end (flags, checks, the lock) is pipeline.commands.anchors.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import apache_beam as beam
import numpy as np
from apache_beam.io import textio

from pipeline.beam import elements, transforms
from pipeline.beam import outputs as outputs_lib
from pipeline.core import config as config_lib
from pipeline.core import coverage, recommend
from pipeline.core import frame as frame_lib
from pipeline.io import ilsvrc, plots, storage
from pipeline.io import images as images_lib
from pipeline.model import layers, registry

ANCHORS_NAME = "anchors.json"


COVERAGE_PNG = "coverage.png"


BOXES_PNG = "boxes.png"


class LoadFrameFn(beam.DoFn):
  """ImageInput -> FrameBoxes (main) and a counts dict (STATS), or an errors line.

  XML and image header only; the box policy, resize and padding of
  rpn-preprocess; the feature-map size from the network's shape arithmetic.
  """

  def __init__(self, backbone_config: config_lib.BackboneConfig):
    self._config = backbone_config
    # Derived here, on the launching machine, and pickled with its steps: the
    # workers compute sizes without importing TensorFlow or building the net.
    self._grids = [layers.FeatureGrid(backbone_config.backbone, layer)
                   for layer in config_lib.levels(backbone_config)]
    for grid in self._grids:
      grid.axes  # noqa: B018 (derives the steps now)

  def setup(self):
    self._min_input_side = registry.backbone_spec(self._config.backbone).min_input_side

  def process(self, item: elements.ImageInput):
    cfg = self._config
    try:
      (width, height), gt_boxes, stats = ilsvrc.load_boxes(
          item.image_path, item.annotation_path, cfg.max_pixels)
    except images_lib.InputError as e:
      elements.counter("images_failed").inc()
      elements.counter(f"failed_{e.stage}").inc()
      path = item.annotation_path if e.stage == "annotation" else item.image_path
      yield beam.pvalue.TaggedOutput(elements.ERRORS, elements.error_record(
          path, e.stage, str(e), image_id=item.image_id))
      return
    stats = dict(stats)
    for key, value in stats.items():  # box policy counts, also as Beam metrics
      elements.counter(key).inc(value)
    frame = frame_lib.frame_size(width, height, self._min_input_side, cfg.min_side,
                                    cfg.max_side)
    gt_boxes = frame.boxes_in_frame(np.asarray(gt_boxes, np.float64).reshape(-1, 4), width,
                                    height)
    # counted as LoadImageFn counts it
    if (frame.width, frame.height) != (width, height) and min(width, height) < self._min_input_side:
      stats["images_padded"] = 1
      elements.counter("images_padded").inc()
    shapes = tuple(tuple(grid(frame.height, frame.width)) for grid in self._grids)
    feature_height, feature_width = shapes[0]
    yield coverage.FrameBoxes(item.image_id, frame.width, frame.height, feature_height,
                              feature_width, gt_boxes, item.image_path,
                              level_shapes=shapes if len(shapes) > 1 else ())
    yield beam.pvalue.TaggedOutput(elements.STATS, stats)


class ScoreFrameFn(beam.DoFn):
  """FrameBoxes -> (best IoUs of the current set, of the suggested set, size buckets)
  (main); a counts dict (STATS); the errors line of a frame without an inside
  anchor, as rpn-preprocess skips it (its boxes still count, uncovered)."""

  def __init__(self, anchor_config: config_lib.AnchorConfig):
    self._anchors = anchor_config

  def process(self, frame: coverage.FrameBoxes, suggestion: Dict[str, Any]):
    scales, ratios = self._anchors.scales, self._anchors.ratios
    current = coverage.best_ious(frame, scales, ratios)
    suggested = coverage.best_ious(frame, suggestion["scales"], suggestion["ratios"])
    yield current, suggested, coverage.size_bucket(frame.gt_boxes)
    if current["num_inside"] == 0:
      yield beam.pvalue.TaggedOutput(elements.ERRORS, elements.no_anchor_error(
          frame.path, frame.image_id, 0, current["num_anchors"], frame.width, frame.height,
          frame.feature_height, frame.feature_width, scales))
      yield beam.pvalue.TaggedOutput(elements.STATS, {"images_no_anchors": 1})
      for name in ("images_skipped", "skipped_targets", "images_no_anchors"):
        elements.counter(name).inc()
      return
    yield beam.pvalue.TaggedOutput(elements.STATS, {"images_ok": 1})
    elements.counter("images_ok").inc()


class SumCoverage(beam.CombineFn):
  """(current ious, suggested ious, buckets) -> {"current", "suggested"}: CoverageStats."""

  def create_accumulator(self):
    return {"current": coverage.CoverageStats(), "suggested": coverage.CoverageStats()}

  def add_input(self, accumulator, element):
    current, suggested, buckets = element
    accumulator["current"].add(current, buckets)
    accumulator["suggested"].add(suggested, buckets)
    return accumulator

  def merge_accumulators(self, accumulators):
    accumulators = list(accumulators)
    total = accumulators[0]
    for other in accumulators[1:]:
      for key in total:
        total[key].merge(other[key])
    return total

  def extract_output(self, accumulator):
    return accumulator


def _sha256_key(frame: coverage.FrameBoxes) -> bytes:
  import hashlib
  return hashlib.sha256(frame.image_id.encode("utf-8")).digest()


def search(frames: List[coverage.FrameBoxes], scales, ratios, num_scales=None,
           num_ratios=None) -> Dict[str, Any]:
  """The suggested set (coordinate.search_anchors: `num_scales` scales and
  `num_ratios` ratios, default as many as given) on the sampled frames."""
  result = coverage.search_anchors(coverage.levels_of(frames), scales, ratios,
                                   num_scales=num_scales, num_ratios=num_ratios)
  return {"scales": list(result.scales), "ratios": list(result.ratios),
          "search": dict(result.to_dict(), sample_images=len(frames),
                         num_scales=len(result.scales), num_ratios=len(result.ratios))}


def build_pipeline(p, cfg: config_lib.PreprocessConfig, max_images: Optional[int],
                   search_images: int, layers_given: bool = True,
                   num_scales: Optional[int] = None, num_ratios: Optional[int] = None):
  """ReadInputs (as rpn-preprocess) -> frames -> search on a fixed sample -> score
  every frame with both sets -> anchors.json, pictures, errors.jsonl.
  `layers_given`: whether cfg's layers came from the flags (else they are the
  backbone's recommended ones), for the report's reasons; `num_scales`,
  `num_ratios`: the counts the search looks for (None: as many as given)."""
  inputs = p | "ReadInputs" >> transforms.ReadInputs(cfg, max_images=max_images)
  frames = (inputs["images"] | "LoadFrames" >> beam.ParDo(LoadFrameFn(cfg.backbone))
            .with_outputs(elements.ERRORS, elements.STATS, main="frames")
            .with_exception_handling())
  sample = (frames.frames | "SearchSample" >> beam.combiners.Top.Smallest(
      search_images, key=_sha256_key))
  suggestion = sample | "Search" >> beam.Map(search, cfg.anchors.scales, cfg.anchors.ratios,
                                             num_scales, num_ratios)
  scored = (frames.frames | "Score" >> beam.ParDo(
      ScoreFrameFn(cfg.anchors), suggestion=beam.pvalue.AsSingleton(suggestion))
      .with_outputs(elements.ERRORS, elements.STATS, main="ious"))
  totals = scored.ious | "SumCoverage" >> beam.CombineGlobally(SumCoverage())
  errors = ((inputs["errors"], frames[elements.ERRORS], scored[elements.ERRORS],
             frames.bad | "DeadLetters" >> beam.Map(elements.dead_letter_to_error("load")))
            | "AllErrors" >> beam.Flatten())
  counts = ((frames[elements.STATS], scored[elements.STATS],
             errors | "ErrorCounts" >> beam.Map(elements.error_counts))
            | "AllCounts" >> beam.Flatten()
            | "SumCounts" >> beam.CombineGlobally(outputs_lib.SumCounts()))
  written = (errors | "ErrorLines" >> beam.Map(elements.error_line)
             | "WriteErrors" >> textio.WriteToText(
                 storage.join(cfg.output, config_lib.ERRORS_NAME), shard_name_template="",
                 num_shards=1))
  return (outputs_lib.pbegin_of(totals) | "Start" >> beam.Create([None])
          | "WriteReport" >> beam.Map(
              write_report, cfg=cfg, totals=beam.pvalue.AsSingleton(totals),
              suggestion=beam.pvalue.AsSingleton(suggestion),
              sample=beam.pvalue.AsSingleton(sample),
              counts=beam.pvalue.AsSingleton(counts),
              found=beam.pvalue.AsSingleton(inputs["found"]),
              errors_written=beam.pvalue.AsList(written), layers_given=layers_given))


def _set_block(scales, ratios, stats: coverage.CoverageStats) -> Dict[str, Any]:
  summary = stats.summary()
  block = {"scales": [float(s) for s in scales], "ratios": [float(r) for r in ratios],
           "coverage": summary["coverage"], "mean_best_iou": summary["mean_best_iou"],
           "by_size": summary["by_size"], "histogram": summary["histogram"]}
  if "by_level" in summary:  # several feature levels
    block["by_level"] = summary["by_level"]
  return block


def build_report(cfg: config_lib.PreprocessConfig, totals, suggestion, sample, counts,
                 found, layers_given: bool = True) -> Dict[str, Any]:
  """anchors.json's content (see docs/DESIGN.md, "Anchor coverage")."""
  counts = outputs_lib.sum_box_stats(counts)
  counts["images_found"] = found
  counts["images_skipped"] = counts.get("images_skipped", 0)
  for key in ("images_ok", "images_failed"):
    counts.setdefault(key, 0)
  current = _set_block(cfg.anchors.scales, cfg.anchors.ratios, totals["current"])
  suggested = _set_block(suggestion["scales"], suggestion["ratios"], totals["suggested"])
  fallback = coverage.choose_suggestion(current, suggested)
  if fallback:
    suggested = dict(current, note=fallback)
  sizes = coverage.BoxSample.of(sample)
  strides = {"x_median": float(np.median(sizes.stride_x)) if len(sizes) else None,
             "y_median": float(np.median(sizes.stride_y)) if len(sizes) else None}
  report = {
      "backbone": cfg.backbone.backbone,
      "feature_layer": cfg.backbone.feature_layer,
      "num_images": counts["images_ok"] + counts.get("images_no_anchors", 0),
      "num_boxes": totals["current"].num_boxes,
      "current": current,
      "suggested": suggested,
      "search": suggestion["search"],
      "stride": strides,
      "frame": {"min_side": cfg.backbone.min_side, "max_side": cfg.backbone.max_side,
                "min_input_side": registry.backbone_spec(cfg.backbone.backbone)
                .min_input_side},
      "input": {"root": cfg.input_root, "split": cfg.split, "images": cfg.images_dir,
                "annotations": cfg.annotations_dir, "image_set": cfg.image_set,
                "missing_annotations": cfg.missing_annotations},
      "counts": dict(sorted(counts.items())),
  }
  if len(cfg.backbone.feature_layers) > 1:
    report["feature_layers"] = list(cfg.backbone.feature_layers)
  report["recommended_flags"] = recommend.recommended_flags(
      cfg.backbone, suggested["scales"], suggested["ratios"])
  report["recommended_why"] = recommend.reasons(cfg.backbone, layers_given, suggested, current)
  return report


def write_report(_, cfg, totals, suggestion, sample, counts, found, errors_written,
                 layers_given=True):
  """Writes anchors.json, coverage.png and boxes.png; returns the report."""
  del errors_written  # a side input only to order this step last
  report = build_report(cfg, totals, suggestion, sample, counts, found, layers_given)
  layer = (",".join(cfg.backbone.feature_layers) or cfg.backbone.feature_layer
           or "final output")
  title = f"{cfg.backbone.backbone} ({layer}): {report['num_boxes']} gt boxes"
  sets = {name: report[name] for name in ("current", "suggested")}
  storage.write_bytes(storage.join(cfg.output, COVERAGE_PNG), plots.coverage_png(sets, title))
  box_sample = coverage.BoxSample.of(sample)
  sizes = np.stack([(box_sample.boxes[:, 2] - box_sample.boxes[:, 0]) / box_sample.stride_x,
                    (box_sample.boxes[:, 3] - box_sample.boxes[:, 1]) / box_sample.stride_y],
                   axis=1) if len(box_sample) else np.zeros((0, 2))
  storage.write_bytes(storage.join(cfg.output, BOXES_PNG),
                      plots.boxes_png(sizes, sets, f"{title} (search sample)"))
  storage.write_json(storage.join(cfg.output, ANCHORS_NAME), report)
  return report
