"""`rpn-preprocess`: ILSVRC images + XML boxes -> sharded RPN training TFRecords.

    rpn-preprocess --input ROOT --output DIR [--split DET/train] [--weights none] \
        [--num_shards 16] [Beam pipeline options, e.g. --runner DataflowRunner ...]

Writes into DIR: tiles-SSSSS-of-NNNNN.tfrecord[.gz], images.jsonl, errors.jsonl
and, last of all, manifest.json (its presence marks a complete run). Files of
an earlier run in DIR (shards, manifest, jsonl files, Beam temp dirs) are
deleted before the new run starts, so shards of two runs never mix.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import List, Optional, Sequence

from pipeline import config as config_lib

_LOGGER = logging.getLogger(__name__)


def _floats(text: str):
  return tuple(float(v) for v in text.split(","))


def build_parser() -> argparse.ArgumentParser:
  anchors, targets = config_lib.AnchorConfig(), config_lib.TargetConfig()
  backbone, output = config_lib.BackboneConfig(), config_lib.OutputConfig()
  parser = argparse.ArgumentParser(
      prog="rpn-preprocess", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  source = parser.add_argument_group("input")
  source.add_argument("--input", help="dataset root of the ILSVRC 2015+/Kaggle layout "
                      "(ROOT/Data/<split>, ROOT/Annotations/<split>)")
  source.add_argument("--split", default="DET/train", help="split under Data/ and Annotations/")
  source.add_argument("--images", help="image directory of the 2014 tarball layout")
  source.add_argument("--annotations", help="annotation directory of the 2014 tarball layout")
  source.add_argument("--image_set", help="optional list file (ImageSets/...): first token "
                      "of each line is an image id relative to the split root")
  source.add_argument("--missing_annotations", choices=("skip", "negative"), default="skip",
                      help="images without XML: skip them, or use them as negatives-only")
  parser.add_argument("--output", required=True, help="output directory (local, gs://, ...)")
  model = parser.add_argument_group("backbone")
  model.add_argument("--backbone", default=backbone.backbone)
  model.add_argument("--weights", default=backbone.weights,
                     help="imagenet (Keras download) | none (seeded random init) | PATH")
  model.add_argument("--min_side", type=int, default=backbone.min_side,
                     help="resize so the shorter side is this (off by default)")
  model.add_argument("--max_side", type=int, default=backbone.max_side,
                     help="cap the longer side when resizing (off by default)")
  model.add_argument("--backbone_threads", type=int, default=backbone.threads,
                     help="TensorFlow threads per worker process (default: all cores); "
                     "1 when running one worker process per core")
  model.add_argument("--max_pixels", type=int, default=backbone.max_pixels,
                     help="refuse images declaring more pixels (decompression bombs)")
  anchor = parser.add_argument_group("anchors and targets")
  anchor.add_argument("--scales", type=_floats, default=anchors.scales,
                      help="comma-separated anchor scales, in units of the stride")
  anchor.add_argument("--ratios", type=_floats, default=anchors.ratios,
                      help="comma-separated anchor ratios (height / width)")
  anchor.add_argument("--fg_iou_thresh", type=float, default=targets.fg_iou_thresh)
  anchor.add_argument("--bg_iou_thresh", type=float, default=targets.bg_iou_thresh)
  anchor.add_argument("--batch_size", type=int, default=targets.batch_size,
                      help="anchors sampled per image")
  anchor.add_argument("--fg_fraction", type=float, default=targets.fg_fraction)
  anchor.add_argument("--seed", type=int, default=targets.seed,
                      help="seeds the per-image sampling (with the image id) and random weights")
  out = parser.add_argument_group("output")
  out.add_argument("--num_shards", type=int, default=output.num_shards,
                   help="number of shards (0: the runner decides)")
  out.add_argument("--max_shard_mb", type=float, default=output.max_shard_mb,
                   help="with --num_shards 0, start a new shard after this many MB of "
                   "records (uncompressed); 0: no limit")
  out.add_argument("--compression", choices=("NONE", "GZIP"), default=output.compression)
  out.add_argument("--tile_dtype", choices=("float32", "float16"), default=output.tile_dtype)
  out.add_argument("--shuffle_records", action="store_true",
                   help="shuffle every record across images before the sink (one more "
                   "GroupByKey over all records: twice the shuffle bytes on Dataflow, and "
                   "the DirectRunner holds them all in memory). Off by default: the sink's "
                   "round-robin already spreads each image's records over the shards, and "
                   "the trainer shuffles what it reads (see BENCHMARKS.md)")
  return parser


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
  """Everything `build_pipeline` needs, parsed and validated."""
  images_dir: str
  annotations_dir: str
  output: str
  image_set: Optional[str]
  missing_annotations: str
  backbone: config_lib.BackboneConfig
  anchors: config_lib.AnchorConfig
  targets: config_lib.TargetConfig
  output_format: config_lib.OutputConfig
  split: Optional[str] = None
  input_root: Optional[str] = None
  shuffle_records: bool = False


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
  from pipeline import ilsvrc
  images_dir, annotations_dir = ilsvrc.layout_roots(
      input_root=args.input, split=args.split, images=args.images, annotations=args.annotations)
  if not (0 < args.fg_fraction <= 1):
    raise ValueError(f"--fg_fraction must be in (0, 1], got {args.fg_fraction}")
  if not (0 <= args.bg_iou_thresh <= args.fg_iou_thresh <= 1):
    raise ValueError(f"need 0 <= bg_iou_thresh ({args.bg_iou_thresh}) <= fg_iou_thresh "
                     f"({args.fg_iou_thresh}) <= 1")
  if args.batch_size <= 0 or args.num_shards < 0 or args.max_shard_mb < 0:
    raise ValueError("--batch_size must be > 0, --num_shards and --max_shard_mb >= 0")
  return PreprocessConfig(
      images_dir=images_dir, annotations_dir=annotations_dir, output=args.output.rstrip("/"),
      image_set=args.image_set, missing_annotations=args.missing_annotations,
      backbone=config_lib.BackboneConfig(
          backbone=args.backbone, weights=args.weights, min_side=args.min_side,
          max_side=args.max_side, max_pixels=args.max_pixels, threads=args.backbone_threads),
      anchors=config_lib.AnchorConfig(scales=tuple(args.scales), ratios=tuple(args.ratios)),
      targets=config_lib.TargetConfig(
          fg_iou_thresh=args.fg_iou_thresh, bg_iou_thresh=args.bg_iou_thresh,
          batch_size=args.batch_size, fg_fraction=args.fg_fraction, seed=args.seed),
      output_format=config_lib.OutputConfig(
          num_shards=args.num_shards, compression=args.compression, tile_dtype=args.tile_dtype,
          max_shard_mb=args.max_shard_mb),
      split=args.split if args.input else None, input_root=args.input,
      shuffle_records=args.shuffle_records)


def shard_suffix(compression: str) -> str:
  return ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"


def manifest_dict(cfg: PreprocessConfig, counts: dict, shard_files: List[str]) -> dict:
  """manifest.json: everything needed to read and to reproduce the shards."""
  from pipeline import backbone as backbone_lib
  spec = backbone_lib.backbone_spec(cfg.backbone.backbone)
  fmt = cfg.output_format
  num_shards = len(shard_files)
  return {
      "version": config_lib.MANIFEST_VERSION,
      "created_by": "rpn-preprocess",
      "backbone": cfg.backbone.backbone,
      "weights": cfg.backbone.weights,
      "weights_seed": cfg.targets.seed,
      "feature_channels": spec.channels,
      "tile_size": 3,
      "dtype": fmt.tile_dtype,
      "compression": fmt.compression,
      "anchor": dict(config_lib.to_dict(cfg.anchors), num_anchors=cfg.anchors.num_anchors),
      "targets": config_lib.to_dict(cfg.targets),
      "stride_mode": cfg.backbone.stride_mode,
      "resize": {"min_side": cfg.backbone.min_side, "max_side": cfg.backbone.max_side},
      "min_input_side": spec.min_input_side,
      "padding": "small images padded with zeros at the bottom and right up to min_input_side",
      "max_pixels": cfg.backbone.max_pixels,
      "input": {"root": cfg.input_root, "split": cfg.split, "images": cfg.images_dir,
                "annotations": cfg.annotations_dir, "image_set": cfg.image_set,
                "missing_annotations": cfg.missing_annotations},
      "shard_pattern": f"{config_lib.SHARD_PREFIX}-?????-of-{num_shards:05d}"
                       f"{shard_suffix(fmt.compression)}",
      "num_shards": num_shards,
      "max_shard_mb": fmt.max_shard_mb if fmt.num_shards == 0 else None,
      "records_shuffled": cfg.shuffle_records,
      "shard_files": shard_files,
      "counts": counts,
  }


# ---------------------------------------------------------------------------
# Output directory handling

OUTPUT_GLOBS = (f"{config_lib.SHARD_PREFIX}-*", config_lib.MANIFEST_NAME,
                config_lib.IMAGES_NAME, config_lib.ERRORS_NAME, "beam-temp-*")


def clear_outputs(output: str) -> List[str]:
  """Deletes the files an earlier run left in `output`; returns what it deleted."""
  from apache_beam.io.filesystems import FileSystems
  deleted = []
  for pattern in OUTPUT_GLOBS:
    for match in FileSystems.match([FileSystems.join(output, pattern)])[0].metadata_list:
      deleted.append(match.path)
  # beam-temp-* are directories on local filesystems: match returns their files.
  if deleted:
    FileSystems.delete(sorted(set(deleted)))
  import os
  if "://" not in output and os.path.isdir(output):
    import glob
    import shutil
    for temp_dir in glob.glob(os.path.join(output, "beam-temp-*")):
      shutil.rmtree(temp_dir, ignore_errors=True)
  return deleted


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` through a temp file and a rename (atomic on local)."""
  from apache_beam.io.filesystems import FileSystems
  temp = path + ".tmp"
  with FileSystems.create(temp) as f:
    f.write(text.encode("utf-8"))
  FileSystems.rename([temp], [path])


# ---------------------------------------------------------------------------
# The pipeline


def build_pipeline(p, cfg: PreprocessConfig, extractor_factory=None):
  """Adds the preprocessing steps to pipeline `p`; returns the main PCollections."""
  import apache_beam as beam
  from apache_beam.io.filesystems import FileSystems
  from apache_beam.io.tfrecordio import WriteToTFRecord
  from apache_beam.io import textio
  from pipeline import backbone as backbone_lib
  from pipeline import ilsvrc
  from pipeline import transforms as T

  spec = backbone_lib.backbone_spec(cfg.backbone.backbone)
  images = p | "ListImages" >> T.ListFiles(cfg.images_dir, ilsvrc.IMAGE_EXTENSIONS)
  annotations = p | "ListAnnotations" >> T.ListFiles(
      cfg.annotations_dir, (ilsvrc.ANNOTATION_EXTENSION,))
  grouped_inputs = {"images": images, "annotations": annotations}
  if cfg.image_set:
    grouped_inputs["listed"] = (
        p | "ReadImageSet" >> beam.io.ReadFromText(cfg.image_set)
        | "ParseImageSet" >> beam.FlatMap(lambda line: [(i, True) for i in ilsvrc.parse_image_set(line)]))
  paired = (grouped_inputs | "GroupById" >> beam.CoGroupByKey()
            | "PairInputs" >> beam.ParDo(T.PairInputsFn(
                cfg.missing_annotations, bool(cfg.image_set))).with_outputs(T.ERRORS, main="ok"))

  loaded = (paired.ok | "LoadImages" >> beam.ParDo(
      T.LoadImageFn(cfg.backbone, spec.min_input_side))
      .with_outputs(T.ERRORS, main="ok").with_exception_handling())
  features = (loaded.ok | "ComputeFeatures" >> beam.ParDo(
      T.ComputeFeaturesFn(cfg.backbone, cfg.targets.seed, extractor_factory=extractor_factory))
      .with_exception_handling())
  sampled = (features.good | "SampleTargets" >> beam.ParDo(
      T.SampleTargetsFn(cfg.anchors, cfg.targets, cfg.output_format.tile_dtype))
      .with_outputs(T.IMAGES, T.STATS, T.ERRORS, main="records").with_exception_handling())

  errors = ((paired[T.ERRORS], loaded[T.ERRORS], sampled[T.ERRORS],
             loaded.bad | "LoadDeadLetters" >> beam.Map(T.dead_letter_to_error("load")),
             features.bad | "FeatureDeadLetters" >> beam.Map(T.dead_letter_to_error("features")),
             sampled.bad | "TargetDeadLetters" >> beam.Map(T.dead_letter_to_error("targets")))
            | "AllErrors" >> beam.Flatten())

  # With a set of ids, only the listed images are inputs.
  if cfg.image_set:
    listed_images = (paired.ok, paired[T.ERRORS] | "ListedImageErrors" >> beam.Filter(
        lambda e: e["outcome"] in (T.FAILED, T.SKIPPED)))
    found_count = (listed_images | "ListedImages" >> beam.Flatten()
                   | "CountFound" >> beam.combiners.Count.Globally())
  else:
    found_count = images | "CountFound" >> beam.combiners.Count.Globally()

  counts = ((sampled[T.STATS], errors | "ErrorCounts" >> beam.Map(T.error_counts))
            | "AllCounts" >> beam.Flatten()
            | "SumCounts" >> beam.CombineGlobally(T.SumCounts()))

  fmt = cfg.output_format
  records = sampled.records
  if cfg.shuffle_records:
    records = records | "ShuffleRecords" >> beam.Reshuffle()
  write_shards = WriteToTFRecord(
      FileSystems.join(cfg.output, config_lib.SHARD_PREFIX),
      file_name_suffix=shard_suffix(fmt.compression), num_shards=fmt.num_shards,
      shard_name_template="-SSSSS-of-NNNNN",
      compression_type=("gzip" if fmt.compression == "GZIP" else "uncompressed"))
  if fmt.num_shards == 0 and fmt.max_shard_mb:
    # FileBasedSink's max_bytes_per_shard, which WriteToTFRecord does not take
    # as an argument: without it a runner-sharded local run writes one file
    # per worker bundle (hundreds of GB for ILSVRC).
    write_shards._sink.max_bytes_per_shard = int(fmt.max_shard_mb * (1 << 20))
  shard_files = records | "WriteShards" >> write_shards
  record_count = sampled.records | "CountRecords" >> beam.combiners.Count.Globally()
  images_file = (sampled[T.IMAGES] | "ImageLines" >> beam.Map(T.to_json_line)
                 | "WriteImages" >> textio.WriteToText(
                     FileSystems.join(cfg.output, config_lib.IMAGES_NAME),
                     shard_name_template="", num_shards=1))
  errors_file = (errors | "ErrorLines" >> beam.Map(T.error_line)
                 | "WriteErrors" >> textio.WriteToText(
                     FileSystems.join(cfg.output, config_lib.ERRORS_NAME),
                     shard_name_template="", num_shards=1))

  def write_manifest(_, counts, found, records, shards, images_written, errors_written):
    import os
    del images_written, errors_written  # side inputs only to order this step last
    counts = T.sum_box_stats(counts)
    counts.update({"images_found": found, "records": records})
    for key in ("images_ok", "images_failed", "images_skipped", "fg_anchors", "bg_anchors"):
      counts.setdefault(key, 0)
    names = sorted(os.path.basename(s) for s in shards)
    manifest = manifest_dict(cfg, dict(sorted(counts.items())), names)
    write_text(FileSystems.join(cfg.output, config_lib.MANIFEST_NAME),
               json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest

  manifest = (p | "Start" >> beam.Create([None])
              | "WriteManifest" >> beam.Map(
                  write_manifest,
                  counts=beam.pvalue.AsSingleton(counts),
                  found=beam.pvalue.AsSingleton(found_count),
                  records=beam.pvalue.AsSingleton(record_count),
                  shards=beam.pvalue.AsList(shard_files),
                  images_written=beam.pvalue.AsList(images_file),
                  errors_written=beam.pvalue.AsList(errors_file)))
  return {"records": sampled.records, "images": sampled[T.IMAGES], "errors": errors,
          "counts": counts, "manifest": manifest}


def _summary(manifest: dict) -> str:
  c = manifest["counts"]
  lines = [
      f"images: {c['images_found']} found = {c['images_ok']} ok + {c['images_failed']} failed"
      f" + {c['images_skipped']} skipped",
      f"records: {c['records']} in {manifest['num_shards']} shards"
      f" ({c['fg_anchors']} positive, {c['bg_anchors']} negative anchors sampled)",
      f"boxes dropped: {c['boxes_dropped']}, clipped: {c.get('boxes_clipped', 0)}",
  ]
  return "\n".join(lines)


def run(argv: Optional[Sequence[str]] = None, extractor_factory=None) -> dict:
  """Parses flags, clears old outputs, runs the pipeline; returns the manifest."""
  import apache_beam as beam
  from apache_beam.io.filesystems import FileSystems
  from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions
  from pipeline import backbone as backbone_lib

  args, beam_args = build_parser().parse_known_args(argv)
  cfg = config_from_args(args)
  backbone_lib.backbone_spec(cfg.backbone.backbone)  # fails fast on a bad name
  weights = cfg.backbone.weights
  if weights not in ("imagenet", "none") and not FileSystems.exists(weights):
    raise FileNotFoundError(f"--weights {weights}: no such file")
  if not any(a.startswith("--default_sdk_harness_log_level") for a in beam_args):
    beam_args = list(beam_args) + ["--default_sdk_harness_log_level=WARNING"]
  options = PipelineOptions(beam_args)
  options.view_as(SetupOptions).save_main_session = False
  deleted = clear_outputs(cfg.output)
  if deleted:
    _LOGGER.warning("cleared %d files of an earlier run from %s", len(deleted), cfg.output)
  with beam.Pipeline(options=options) as p:
    build_pipeline(p, cfg, extractor_factory=extractor_factory)
  manifest_path = FileSystems.join(cfg.output, config_lib.MANIFEST_NAME)
  with FileSystems.open(manifest_path) as f:
    manifest = json.loads(f.read().decode("utf-8"))
  return manifest


def main(argv: Optional[Sequence[str]] = None) -> int:
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
  try:
    manifest = run(argv)
  except (ValueError, FileNotFoundError) as e:
    print(f"rpn-preprocess: error: {e}", file=sys.stderr)
    return 2
  print(_summary(manifest))
  return 0


if __name__ == "__main__":
  sys.exit(main())
