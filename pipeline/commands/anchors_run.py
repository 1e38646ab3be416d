"""`rpn-anchors`: how well a set of anchors covers a dataset's gt boxes, and a better set.

    rpn-anchors --input ROOT --output DIR [--split DET/train] [--backbone NAME]
        [--feature_layer NAME] [--scales 3,6,12] [--ratios 0.5,1,2]
        [--min_side N --max_side N] [--max_images N] [Beam pipeline options]

No backbone forward pass: each image's XML boxes and its size (read from the
image file's header) go through rpn-preprocess's own reading, box policy,
resize and padding; the feature-map size of the frame comes from the
network's shape arithmetic (backbone.FeatureGrid); the anchors are those
rpn-preprocess would build. A fixed sample of the images (the smallest sha256
of their ids) feeds a search for scales and ratios that cover more boxes at IoU
0.7 with inside anchors (coverage.search_anchors); then every image is scored
with the given set and the suggested one.

Writes into DIR: anchors.json (coverage of both sets, overall and by box size,
the search, the counts), coverage.png, boxes.png and errors.jsonl (the same
lines rpn-preprocess writes for the same inputs). Runs on every Beam runner;
with no runner options, on every core of this machine.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Dict, List, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io import textio
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from pipeline.beam import transforms, watchdog
from pipeline.commands import cli, console, failures, lock, plots, preflight
from pipeline.commands import preprocess as run_lib
from pipeline.core import config as config_lib
from pipeline.core import coverage
from pipeline.io import ilsvrc, storage
from pipeline.model import backbone as backbone_lib

ANCHORS_NAME = "anchors.json"
COVERAGE_PNG = "coverage.png"
BOXES_PNG = "boxes.png"
OUTPUT_NAMES = (ANCHORS_NAME, COVERAGE_PNG, BOXES_PNG, config_lib.ERRORS_NAME,
                failures.LOG_NAME)
DEFAULT_SEARCH_IMAGES = 20_000

_LOGGER = logging.getLogger(__name__)


def build_parser() -> cli.Parser:
  parser = cli.Parser(prog="rpn-anchors", description=__doc__.split("\n\n")[0],
                      allow_abbrev=False)  # an abbreviation could take a Beam flag
  run_lib.add_input_arguments(parser)
  parser.add_argument("--output", required=True, help="output directory (local, gs://, ...)")
  run_lib.add_frame_arguments(parser)
  parser.add_argument("--max_images", type=int, default=None,
                      help="use only this many images, a fixed pseudo-random subset "
                      "(smallest sha256 of the image id); default: all")
  parser.add_argument("--search_images", type=int, default=DEFAULT_SEARCH_IMAGES,
                      help="images (the same kind of fixed subset) whose boxes the search for "
                      "better anchors looks at; every image is scored with the result")
  return parser


def config_from_args(args: argparse.Namespace) -> config_lib.PreprocessConfig:
  """The input, frame and anchor settings, as rpn-preprocess holds them."""
  images_dir, annotations_dir = ilsvrc.layout_roots(
      input_root=args.input, split=args.split, images=args.images, annotations=args.annotations)
  for flag in ("max_images", "search_images"):
    value = getattr(args, flag)
    if value is not None and value < 1:
      raise cli.UsageError(f"--{flag}", value, "must be >= 1")
  run_lib.check_ranges(args)
  return config_lib.PreprocessConfig(
      images_dir=images_dir, annotations_dir=annotations_dir, output=args.output.rstrip("/"),
      image_set=args.image_set, missing_annotations=args.missing_annotations,
      backbone=config_lib.BackboneConfig(
          backbone=args.backbone, weights="none", min_side=args.min_side,
          max_side=args.max_side, max_pixels=args.max_pixels,
          feature_layer=args.feature_layer or None),
      anchors=config_lib.AnchorConfig(scales=tuple(args.scales), ratios=tuple(args.ratios)),
      split=args.split if args.input else None, input_root=args.input)


# ---------------------------------------------------------------------------
# Per image


class LoadFrameFn(beam.DoFn):
  """ImageInput -> FrameBoxes (main) and a counts dict (STATS), or an errors line.

  XML and image header only; the box policy, resize and padding of
  rpn-preprocess; the feature-map size from the network's shape arithmetic.
  """

  def __init__(self, backbone_config: config_lib.BackboneConfig):
    self._config = backbone_config
    # Derived here, on the launching machine, and pickled with its steps: the
    # workers compute sizes without importing TensorFlow or building the net.
    self._grid = backbone_lib.FeatureGrid(backbone_config.backbone,
                                          backbone_config.feature_layer)
    self._grid.axes  # noqa: B018 (derives the steps now)

  def setup(self):
    self._min_input_side = backbone_lib.backbone_spec(self._config.backbone).min_input_side

  def process(self, item: transforms.ImageInput):
    cfg = self._config
    try:
      (width, height), gt_boxes, stats = ilsvrc.load_boxes(
          item.image_path, item.annotation_path, cfg.max_pixels)
    except ilsvrc.InputError as e:
      path = item.annotation_path if e.stage == "annotation" else item.image_path
      yield beam.pvalue.TaggedOutput(transforms.ERRORS, transforms.error_record(
          path, e.stage, str(e), image_id=item.image_id))
      return
    stats = dict(stats)
    frame = backbone_lib.frame_size(width, height, self._min_input_side, cfg.min_side,
                                    cfg.max_side)
    gt_boxes = frame.boxes_in_frame(np.asarray(gt_boxes, np.float64).reshape(-1, 4), width,
                                    height)
    # counted as LoadImageFn counts it
    if (frame.width, frame.height) != (width, height) and min(width, height) < self._min_input_side:
      stats["images_padded"] = 1
    feature_height, feature_width = self._grid(frame.height, frame.width)
    yield coverage.FrameBoxes(item.image_id, frame.width, frame.height, feature_height,
                              feature_width, gt_boxes, item.image_path)
    yield beam.pvalue.TaggedOutput(transforms.STATS, stats)


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
      yield beam.pvalue.TaggedOutput(transforms.ERRORS, transforms.no_anchor_error(
          frame.path, frame.image_id, 0, current["num_anchors"], frame.width, frame.height,
          frame.feature_height, frame.feature_width, scales))
      yield beam.pvalue.TaggedOutput(transforms.STATS, {"images_no_anchors": 1})
      return
    yield beam.pvalue.TaggedOutput(transforms.STATS, {"images_ok": 1})


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


def search(frames: List[coverage.FrameBoxes], scales, ratios) -> Dict[str, Any]:
  """The suggested set (coordinate.search_anchors) on the sampled frames."""
  result = coverage.search_anchors(coverage.BoxSample.of(frames), scales, ratios)
  return {"scales": list(result.scales), "ratios": list(result.ratios),
          "search": dict(result.to_dict(), sample_images=len(frames))}


def build_pipeline(p, cfg: config_lib.PreprocessConfig, max_images: Optional[int],
                   search_images: int):
  """ReadInputs (as rpn-preprocess) -> frames -> search on a fixed sample -> score
  every frame with both sets -> anchors.json, pictures, errors.jsonl."""
  inputs = p | "ReadInputs" >> transforms.ReadInputs(cfg, max_images=max_images)
  frames = (inputs["images"] | "LoadFrames" >> beam.ParDo(LoadFrameFn(cfg.backbone))
            .with_outputs(transforms.ERRORS, transforms.STATS, main="frames")
            .with_exception_handling())
  sample = (frames.frames | "SearchSample" >> beam.combiners.Top.Smallest(
      search_images, key=_sha256_key))
  suggestion = sample | "Search" >> beam.Map(search, cfg.anchors.scales, cfg.anchors.ratios)
  scored = (frames.frames | "Score" >> beam.ParDo(
      ScoreFrameFn(cfg.anchors), suggestion=beam.pvalue.AsSingleton(suggestion))
      .with_outputs(transforms.ERRORS, transforms.STATS, main="ious"))
  totals = scored.ious | "SumCoverage" >> beam.CombineGlobally(SumCoverage())
  errors = ((inputs["errors"], frames[transforms.ERRORS], scored[transforms.ERRORS],
             frames.bad | "DeadLetters" >> beam.Map(transforms.dead_letter_to_error("load")))
            | "AllErrors" >> beam.Flatten())
  counts = ((frames[transforms.STATS], scored[transforms.STATS],
             errors | "ErrorCounts" >> beam.Map(transforms.error_counts))
            | "AllCounts" >> beam.Flatten()
            | "SumCounts" >> beam.CombineGlobally(transforms.SumCounts()))
  written = (errors | "ErrorLines" >> beam.Map(transforms.error_line)
             | "WriteErrors" >> textio.WriteToText(
                 storage.join(cfg.output, config_lib.ERRORS_NAME), shard_name_template="",
                 num_shards=1))
  return (transforms.pbegin_of(totals) | "Start" >> beam.Create([None])
          | "WriteReport" >> beam.Map(
              write_report, cfg=cfg, totals=beam.pvalue.AsSingleton(totals),
              suggestion=beam.pvalue.AsSingleton(suggestion),
              sample=beam.pvalue.AsSingleton(sample),
              counts=beam.pvalue.AsSingleton(counts),
              found=beam.pvalue.AsSingleton(inputs["found"]),
              errors_written=beam.pvalue.AsList(written)))


# ---------------------------------------------------------------------------
# The report


def _set_block(scales, ratios, stats: coverage.CoverageStats) -> Dict[str, Any]:
  summary = stats.summary()
  return {"scales": [float(s) for s in scales], "ratios": [float(r) for r in ratios],
          "coverage": summary["coverage"], "mean_best_iou": summary["mean_best_iou"],
          "by_size": summary["by_size"], "histogram": summary["histogram"]}


def build_report(cfg: config_lib.PreprocessConfig, totals, suggestion, sample, counts,
                 found) -> Dict[str, Any]:
  """anchors.json's content (see docs/DESIGN.md, "Anchor coverage")."""
  counts = transforms.sum_box_stats(counts)
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
  return {
      "backbone": cfg.backbone.backbone,
      "feature_layer": cfg.backbone.feature_layer,
      "num_images": counts["images_ok"] + counts.get("images_no_anchors", 0),
      "num_boxes": totals["current"].num_boxes,
      "current": current,
      "suggested": suggested,
      "search": suggestion["search"],
      "stride": strides,
      "frame": {"min_side": cfg.backbone.min_side, "max_side": cfg.backbone.max_side,
                "min_input_side": backbone_lib.backbone_spec(cfg.backbone.backbone)
                .min_input_side},
      "input": {"root": cfg.input_root, "split": cfg.split, "images": cfg.images_dir,
                "annotations": cfg.annotations_dir, "image_set": cfg.image_set,
                "missing_annotations": cfg.missing_annotations},
      "counts": dict(sorted(counts.items())),
  }


def write_report(_, cfg, totals, suggestion, sample, counts, found, errors_written):
  """Writes anchors.json, coverage.png and boxes.png; returns the report."""
  del errors_written  # a side input only to order this step last
  report = build_report(cfg, totals, suggestion, sample, counts, found)
  layer = cfg.backbone.feature_layer or "final output"
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


def format_report(report: Dict[str, Any]) -> str:
  """The coverage table and the flags of the suggested set, for the terminal."""
  lines = [f"{report['backbone']} ({report['feature_layer'] or 'final output'}): "
           f"{report['num_boxes']} gt boxes in {report['num_images']} images; median stride "
           f"{report['stride']['x_median'] or 0:.1f} x {report['stride']['y_median'] or 0:.1f} px",
           f"{'anchors':<10} {'scales':<22} {'ratios':<22} {'inside@0.5':>10} "
           f"{'inside@0.7':>10} {'all@0.7':>8} {'mean IoU':>8}"]
  for name in ("current", "suggested"):
    block = report[name]
    cov = block["coverage"]
    lines.append(
        f"{name:<10} {','.join(f'{s:g}' for s in block['scales']):<22} "
        f"{','.join(f'{r:g}' for r in block['ratios']):<22} {cov['inside']['0.5']:>10.3f} "
        f"{cov['inside']['0.7']:>10.3f} {cov['all']['0.7']:>8.3f} "
        f"{block['mean_best_iou']:>8.3f}")
  if "note" in report["suggested"]:
    lines.append(report["suggested"]["note"])
  s = report["suggested"]
  lines.append(f"to use the suggested set: --scales {','.join(f'{v:g}' for v in s['scales'])} "
               f"--ratios {','.join(f'{v:g}' for v in s['ratios'])}")
  return "\n".join(lines)


def run(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  """Parses flags, runs the pipeline; returns anchors.json's content."""
  args, beam_args = build_parser().parse_with_beam(argv)
  setup = run_lib.runner_setup(beam_args)
  cfg = config_from_args(args)
  # The feature layer's shape arithmetic, from a child process (the launcher
  # imports no TensorFlow), beside the checks of the input and the output.
  with preflight.Checks(preflight.start_backbone_check(
      cfg.backbone.backbone, "none", cfg.backbone.feature_layer, always=True)) as checks:
    preflight.check_ilsvrc_input(args.input, args.split, args.images, args.annotations,
                                 args.image_set, args.missing_annotations)
    preflight.check_output(cfg.output)
    checks.finish()
  options = PipelineOptions(setup.beam_args)
  options.view_as(SetupOptions).save_main_session = False
  with lock.hold(cfg.output, "--output", "rpn-anchors"):  # one run per directory
    cli.running(cfg.output)
    clear_outputs(cfg.output)  # a report of an earlier run must not survive a failed one
    p = beam.Pipeline(options=options)
    build_pipeline(p, cfg, args.max_images, args.search_images)
    with run_lib.removed_on_failure(cfg.output, clear_outputs), watchdog.watched():
      p.run().wait_until_finish()
      return storage.read_json(storage.join(cfg.output, ANCHORS_NAME))


def clear_outputs(output: str) -> List[str]:
  """Deletes the reports, errors and Beam temp directories of a run in `output`."""
  deleted = []
  for name in OUTPUT_NAMES:
    path = storage.join(output, name)
    if storage.exists(path):
      from apache_beam.io.filesystems import FileSystems
      FileSystems.delete([path])
      deleted.append(path)
  return deleted + run_lib.remove_temp_dirs(output)


def main(argv: Optional[Sequence[str]] = None) -> int:
  cli.setup_logging()
  argv = list(sys.argv[1:] if argv is None else argv)

  def command() -> int:
    build_parser().parse_with_beam(argv)  # flag mistakes on the terminal, not the log
    with console.held_back("rpn-anchors", enabled=not cli.RUN.verbose):
      report = run(argv)
    return _report(report)
  return cli.run_command("rpn-anchors", command)


def _report(report: Dict[str, Any]) -> int:
  print(format_report(report))
  c = report["counts"]
  print(f"images: {c['images_found']} found = {c['images_ok']} ok + {c['images_failed']} failed"
        f" + {c['images_skipped']} skipped; boxes dropped by the box policy: "
        f"{c['boxes_dropped']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
