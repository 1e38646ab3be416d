"""`rpn-preprocess`: ILSVRC images + XML boxes -> sharded RPN training TFRecords.

    rpn-preprocess --input ROOT --output DIR [--split DET/train] [--weights none] \
        [--num_shards N] [Beam pipeline options, e.g. --runner DataflowRunner ...]

With no runner options it runs on this machine in its fastest safe mode: every
core, one worker process each, shards decided by the runner (flat memory).

Writes into DIR: tiles-SSSSS-of-NNNNN.tfrecord[.gz] (with --layout maps:
maps-SSSSS-of-NNNNN.tfrecord[.gz], one record per image), images.jsonl, errors.jsonl
and, last of all, manifest.json (its presence marks a complete run). Files of
an earlier run in DIR (shards, manifest, jsonl files, Beam temp dirs) are
deleted before the new run starts, so shards of two runs never mix.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import logging
import os
import shutil
import sys
from typing import List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
  PipelineOptions,
  SetupOptions,
)

from pipeline.beam import metrics as metrics_lib
from pipeline.beam import preprocess as preprocess_beam
from pipeline.beam import progress as progress_lib
from pipeline.beam import watchdog
from pipeline.commands import backbone_check, budget, cli, console, failures, lock, preflight, space
from pipeline.commands import options as options_lib
from pipeline.core import config as config_lib
from pipeline.io import ilsvrc, storage
from pipeline.io import manifest as manifest_lib
from pipeline.model import layers, registry

_LOGGER = logging.getLogger(__name__)


_floats = cli.floats


def _names(text: str) -> Tuple[str, ...]:
  """A comma-separated list of layer names."""
  return tuple(name.strip() for name in text.split(","))


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
  """--input/--split or --images/--annotations, --image_set, --missing_annotations."""
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


def add_frame_arguments(parser: argparse.ArgumentParser,
                        feature_layer_help: Optional[str] = None):
  """--backbone, --feature_layer, --min_side, --max_side, --max_pixels, --scales,
  --ratios: what decides the frame, its feature map and its anchors. Returns
  the backbone argument group. `feature_layer_help` replaces --feature_layer's
  help (rpn-anchors, whose default differs)."""
  backbone, anchors = config_lib.BackboneConfig(), config_lib.AnchorConfig()
  model = parser.add_argument_group("backbone")
  model.add_argument("--backbone", default=backbone.backbone, metavar="NAME",
                     help="the frozen Keras application, one of: "
                     + ", ".join(sorted(registry.BACKBONES)))
  model.add_argument("--feature_layer", default=backbone.feature_layer,
                     help=feature_layer_help or (
                         "take the feature map from this layer of the backbone (default: its "
                         "final output); e.g. block5_conv3 (VGG16), conv4_block6_out "
                         "(ResNet50): stride 16, see docs/choosing-settings.md"))
  model.add_argument("--feature_layers", type=_names, default=(),
                     help="several feature levels instead of --feature_layer: comma-separated "
                     "layers, finest first, with growing strides, e.g. "
                     "block4_conv3,block5_conv3 (VGG16, strides 8 and 16); every level has "
                     "the anchors of --scales in units of its own stride, and one RPN head "
                     "serves them all, behind a 1x1 projection per level where their "
                     "channel counts differ (docs/choosing-settings.md)")
  model.add_argument("--min_side", type=int, default=backbone.min_side,
                     help="resize so the shorter side is this (off by default)")
  model.add_argument("--max_side", type=int, default=backbone.max_side,
                     help="cap the longer side when resizing (off by default)")
  model.add_argument("--max_pixels", type=int, default=backbone.max_pixels,
                     help="refuse images declaring more pixels (decompression bombs)")
  anchor = parser.add_argument_group("anchors")
  anchor.add_argument("--scales", type=_floats, default=anchors.scales,
                      help="comma-separated anchor scales, in units of the stride")
  anchor.add_argument("--ratios", type=_floats, default=anchors.ratios,
                      help="comma-separated anchor ratios (height / width)")
  return model


EXAMPLES = (
    "rpn-preprocess --input data/sample --split DET/train --output out/shards/train \\",
    "    --backbone TinyTestNet --weights none",
    "rpn-preprocess --input ROOT --split DET/train --output out/train --backbone VGG16 \\",
    "    --weights vgg16_notop.h5 --feature_layers block4_conv3,block5_conv3 --flip",
    "rpn-preprocess --input gs://BUCKET/ILSVRC --split DET/train --output gs://BUCKET/train \\",
    "    --weights gs://BUCKET/weights.h5 --runner DataflowRunner --project PROJECT \\",
    "    --region REGION --temp_location gs://BUCKET/tmp --setup_file ./setup.py",
)
BEAM_OPTIONS_NOTE = (
    "Beam's pipeline options (--runner, --project, --region, --temp_location, --setup_file,\n"
    "--direct_num_workers, ...) are accepted too; see docs/running-at-scale.md.")


def build_parser() -> cli.Parser:
  """The flags of rpn-preprocess; parse_with_beam() leaves Beam's to Beam and
  refuses what neither knows."""
  targets, backbone = config_lib.TargetConfig(), config_lib.BackboneConfig()
  output = config_lib.OutputConfig()
  parser = cli.Parser(prog="rpn-preprocess", description=__doc__.split("\n\n")[0],
                      allow_abbrev=False,  # an abbreviation could take a Beam flag
                      examples=EXAMPLES, epilog=BEAM_OPTIONS_NOTE)
  add_input_arguments(parser)
  parser.add_argument("--output", required=True, help="output directory (local, gs://, ...)")
  budget.add_argument(parser)
  model = add_frame_arguments(parser)
  model.add_argument("--weights", default=backbone.weights,
                     help="imagenet (Keras download) | none (seeded random init) | PATH")
  model.add_argument("--backbone_threads", type=int, default=None,
                     help="TensorFlow threads per worker process (default: the cores shared "
                     "among local worker processes; 1 on Dataflow; TensorFlow's own otherwise)")
  anchor = parser.add_argument_group("targets")
  anchor.add_argument("--fg_iou_thresh", type=float, default=targets.fg_iou_thresh,
                      help="IoU with a gt box at or above which an anchor is positive (the "
                      "best anchor of each gt box is positive too)")
  anchor.add_argument("--bg_iou_thresh", type=float, default=targets.bg_iou_thresh,
                      help="IoU below which (with every gt box) an anchor is negative")
  anchor.add_argument("--batch_size", type=int, default=targets.batch_size,
                      help="anchors sampled per image")
  anchor.add_argument("--fg_fraction", type=float, default=targets.fg_fraction,
                      help="at most this fraction of the sampled anchors positive")
  anchor.add_argument("--seed", type=int, default=targets.seed,
                      help="seeds the per-image sampling (with the image id) and random weights")
  out = parser.add_argument_group("output")
  out.add_argument("--num_shards", type=int, default=None,
                   help="number of shards; 0: the runner decides (default on DirectRunner: "
                   f"flat memory), {output.num_shards} on other runners")
  out.add_argument("--max_shard_mb", type=float, default=output.max_shard_mb,
                   help="with --num_shards 0, start a new shard after this many MB of "
                   "records (uncompressed); 0: no limit")
  out.add_argument("--compression", choices=("NONE", "GZIP"), default=output.compression,
                   help="compression of the TFRecord shards")
  out.add_argument("--layout", choices=config_lib.LAYOUTS, default=output.layout,
                   help="tiles: the sampled 3x3 tiles and their targets (the method); maps: "
                   "one record per image, its whole feature map and gt boxes, so that "
                   "rpn-train draws the anchors' targets afresh every epoch, with anchors "
                   "chosen at training time (docs/choosing-settings.md)")
  out.add_argument("--tile_dtype", choices=("float32", "float16"), default=output.tile_dtype,
                   help="dtype of the stored features (the tiles, or the maps)")
  out.add_argument("--no_space_check", action="store_true",
                   help="start even when the estimated output clearly exceeds the free "
                   "space of a local --output's disk (the estimate is printed at the start)")
  out.add_argument("--flip", action="store_true",
                   help="also write every image mirrored left to right, as one more image "
                   "(id + '%s', boxes mirrored): py-faster-rcnn's flipped training images, "
                   "twice the records and the backbone time; for training data only" %
                   config_lib.FLIP_SUFFIX)
  out.add_argument("--shuffle_records", action="store_true",
                   help="shuffle every record across images before the sink (one more "
                   "GroupByKey over all records: twice the shuffle bytes on Dataflow, and "
                   "the DirectRunner holds them all in memory). Off by default: the sink's "
                   "round-robin already spreads each image's records over the shards, and "
                   "the trainer shuffles what it reads (see BENCHMARKS.md)")
  return parser


def config_from_args(args: argparse.Namespace,
                     setup: Optional[preprocess_beam.RunnerSetup] = None
                     ) -> config_lib.PreprocessConfig:
  """The run's config; flags left unset take the defaults of the runner `setup`."""
  setup = setup or preprocess_beam.RunnerSetup([], local=True, backbone_threads=None)
  images_dir, annotations_dir = ilsvrc.layout_roots(
      input_root=args.input, split=args.split, images=args.images, annotations=args.annotations)
  check_ranges(args)
  check_layout(args)
  num_shards = args.num_shards
  if num_shards is None:
    num_shards = setup.num_shards
  threads = setup.backbone_threads if args.backbone_threads is None else args.backbone_threads
  return config_lib.PreprocessConfig(
      images_dir=images_dir, annotations_dir=annotations_dir, output=args.output.rstrip("/"),
      image_set=args.image_set, missing_annotations=args.missing_annotations,
      backbone=config_lib.BackboneConfig(
          backbone=args.backbone, weights=args.weights, min_side=args.min_side,
          max_side=args.max_side, max_pixels=args.max_pixels, threads=threads,
          **level_settings(args)),
      anchors=config_lib.AnchorConfig(scales=tuple(args.scales), ratios=tuple(args.ratios)),
      targets=config_lib.TargetConfig(
          fg_iou_thresh=args.fg_iou_thresh, bg_iou_thresh=args.bg_iou_thresh,
          batch_size=args.batch_size, fg_fraction=args.fg_fraction, seed=args.seed),
      output_format=config_lib.OutputConfig(
          num_shards=num_shards, compression=args.compression, tile_dtype=args.tile_dtype,
          max_shard_mb=args.max_shard_mb, layout=getattr(args, "layout", output_layout())),
      split=args.split if args.input else None, input_root=args.input,
      shuffle_records=args.shuffle_records, flip=args.flip)


def level_settings(args: argparse.Namespace) -> dict:
  """feature_layer and feature_layers of BackboneConfig from --feature_layer or
  --feature_layers (a cli.UsageError for both at once or an empty name); the
  layers themselves are checked with the backbone (check_levels)."""
  names = tuple(getattr(args, "feature_layers", ()) or ())
  if not names:
    return {"feature_layer": args.feature_layer or None}
  shown = ",".join(names)
  if args.feature_layer:
    raise cli.UsageError("--feature_layers", shown, f"give either --feature_layer "
                         f"({args.feature_layer}) or --feature_layers, not both")
  if not all(names):
    raise cli.UsageError("--feature_layers", shown, "an empty layer name")
  if len(names) == 1:
    return {"feature_layer": names[0]}
  return {"feature_layer": names[0], "feature_layers": names}


def check_levels(backbone: config_lib.BackboneConfig) -> None:
  """The layers of --feature_layers (layers.check_feature_levels, on the
  architecture): a cli.UsageError naming the flag."""
  if len(backbone.feature_layers) < 2:
    return
  try:
    layers.check_feature_levels(backbone.backbone, backbone.feature_layers)
  except ValueError as e:
    message = str(e)
    prefix = "--feature_layers " + ",".join(backbone.feature_layers) + ": "
    raise cli.UsageError("--feature_layers", ",".join(backbone.feature_layers),
                         message[len(prefix):] if message.startswith(prefix) else message
                         ) from None


def output_layout() -> str:
  return config_lib.OutputConfig().layout


# The flags of the targets, which the maps layout leaves to rpn-train.
TARGET_FLAGS = ("scales", "ratios", "fg_iou_thresh", "bg_iou_thresh", "batch_size",
                "fg_fraction")


def check_layout(args: argparse.Namespace) -> None:
  """With --layout maps no target is drawn here: an anchor or target flag other
  than its default is a cli.UsageError pointing to rpn-train's."""
  if getattr(args, "layout", output_layout()) != config_lib.MAPS_LAYOUT:
    return
  defaults = dict(config_lib.to_dict(config_lib.AnchorConfig()),
                  **config_lib.to_dict(config_lib.TargetConfig()))
  for flag in TARGET_FLAGS:
    value = getattr(args, flag)
    default = defaults[flag]
    if (tuple(value) if isinstance(value, tuple) else value) != (
        tuple(default) if isinstance(default, list) else default):
      train_flag = "--batch_size_per_image" if flag == "batch_size" else f"--{flag}"
      shown = ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else value
      raise cli.UsageError(f"--{flag}", shown, f"with --layout maps the anchors and their "
                           f"targets are drawn at training time: give it to rpn-train "
                           f"({train_flag})")


def check_ranges(args: argparse.Namespace) -> None:
  """Flag values out of range: a cli.UsageError naming the flag (rpn-anchors
  shares the frame and anchor flags, not the target flags). The anchors and the
  targets are checked by their configs' validate()."""
  try:
    if hasattr(args, "fg_fraction"):
      config_lib.TargetConfig(
          fg_iou_thresh=args.fg_iou_thresh, bg_iou_thresh=args.bg_iou_thresh,
          batch_size=args.batch_size, fg_fraction=args.fg_fraction).validate()
    for flag, least in (("num_shards", 0), ("max_shard_mb", 0), ("backbone_threads", 1),
                        ("min_side", 1), ("max_side", 1), ("max_pixels", 1)):
      value = getattr(args, flag, None)
      if value is not None and value < least:
        raise config_lib.ConfigError(flag, value, f"must be >= {least}")
    if hasattr(args, "scales"):
      config_lib.AnchorConfig(scales=tuple(args.scales), ratios=tuple(args.ratios)).validate()
  except config_lib.ConfigError as e:
    raise cli.UsageError(f"--{e.field}", e.value, e.problem) from None
  budget.check_flag(args.max_failed_fraction)


def check_before_run(args: argparse.Namespace, cfg: config_lib.PreprocessConfig,
                     extractor_factory=None) -> None:
  """Everything the launching machine can check, before any Beam step: the
  backbone, its feature layer and weights (in a child process, beside the
  rest), the input folders and image set, the output. A cli.UsageError names
  the flag; nothing is written."""
  backbone = cfg.backbone
  # The output's size is estimated for local inputs and outputs; it needs the
  # layer's shape arithmetic, which the child check hands over (remembered).
  estimate_size = (extractor_factory is None and storage.is_local(cfg.output)
                   and storage.is_local(cfg.images_dir))
  if extractor_factory is None:
    child_check = backbone_check.start_backbone_check(
        backbone.backbone, backbone.weights, backbone.feature_layer, cfg.targets.seed,
        always=estimate_size or len(backbone.feature_layers) > 1,
        feature_layers=backbone.feature_layers)
  else:  # an injected extractor (tests, benchmarks) stands for the weights
    child_check = None
    registry.backbone_spec(backbone.backbone)
    if backbone.feature_layer:
      layers.check_feature_layer(backbone.backbone, backbone.feature_layer)
    check_levels(backbone)  # the child checks them otherwise
  with backbone_check.Checks(child_check) as checks:
    preflight.check_ilsvrc_input(args.input, args.split, args.images, args.annotations,
                                 args.image_set, args.missing_annotations)
    preflight.check_output(cfg.output)
    checks.finish()
  if estimate_size:
    check_space(args, cfg)


def check_space(args: argparse.Namespace, cfg: config_lib.PreprocessConfig) -> None:
  """Prints the estimated output size; a cli.UsageError when the local output's
  disk clearly lacks the room (unless --no_space_check)."""
  spec = registry.backbone_spec(cfg.backbone.backbone)
  found = space.estimate(cfg, layers.run_channels(cfg.backbone), spec.min_input_side)
  if found is None:
    return
  free = space.free_bytes(cfg.output)
  print(space.describe(found, free, cfg.output, cfg.output_format.compression), flush=True)
  problem = space.check(cfg, found, free)
  if problem and not getattr(args, "no_space_check", False):
    raise cli.UsageError("--output", cfg.output, problem)


# ---------------------------------------------------------------------------
# Output directory handling

OUTPUT_GLOBS = (f"{config_lib.SHARD_PREFIX}-*", f"{config_lib.MAPS_PREFIX}-*",
                config_lib.MANIFEST_NAME,
                config_lib.IMAGES_NAME, config_lib.ERRORS_NAME, "beam-temp-*",
                failures.LOG_NAME)


@contextlib.contextmanager
def removed_on_failure(output: str, clear=None):
  """A failure inside the block removes what the run wrote into `output` (its
  partial shards, jsonl files and beam-temp-* directories: none of it is
  complete without the manifest, and on a full disk it keeps the disk full),
  then goes on. `clear` (default clear_outputs) returns what it deleted."""
  try:
    yield
  except BaseException:
    try:
      removed = (clear or clear_outputs)(output)
    except Exception as e:  # noqa: BLE001 - the run's own error matters more
      _LOGGER.warning("could not remove the partial output of %s: %s", output, e)
      cli.note_cleanup(f"its partial output in {output} could not be removed ({e})")
    else:
      _LOGGER.info("removed the partial output of the failed run: %s", removed)
      cli.note_cleanup("the run's partial output was removed")
    raise


def clear_outputs(output: str, globs: Sequence[str] = OUTPUT_GLOBS) -> List[str]:
  """Deletes the files an earlier run left in `output` (those matching
  `globs`, and Beam's temp dirs); returns what it deleted."""
  deleted = []
  for pattern in globs:
    for match in FileSystems.match([FileSystems.join(output, pattern)])[0].metadata_list:
      deleted.append(match.path)
  # beam-temp-* are directories on local filesystems: match returns their files.
  if deleted:
    FileSystems.delete(sorted(set(deleted)))
  return deleted + remove_temp_dirs(output)


def remove_temp_dirs(output: str) -> List[str]:
  """Removes Beam's beam-temp-* directories from a local `output`; returns them."""
  if not storage.is_local(output) or not os.path.isdir(output):
    return []
  temp_dirs = glob.glob(os.path.join(output, "beam-temp-*"))
  for temp_dir in temp_dirs:
    shutil.rmtree(temp_dir, ignore_errors=True)
  return temp_dirs


# ---------------------------------------------------------------------------
# The pipeline


def summary(manifest: manifest_lib.Manifest) -> str:
  c = manifest.counts
  if manifest.is_maps:
    records = (f"records: {c['records']} feature maps in {manifest.num_shards} shards "
               f"(layout maps: rpn-train draws the targets)")
  else:
    records = (f"records: {c['records']} in {manifest.num_shards} shards"
               f" ({c['fg_anchors']} positive, {c['bg_anchors']} negative anchors sampled)")
  lines = [
      f"images: {c['images_found']} found = {c['images_ok']} ok + {c['images_failed']} failed"
      f" + {c['images_skipped']} skipped",
      records,
      *([f"flipped copies: {c.get('flipped_ok', 0)} of the {c['images_ok']} images ok "
         f"(in the records above)"] if manifest.flipped_copies else []),
      f"boxes dropped: {c['boxes_dropped']}, clipped: {c.get('boxes_clipped', 0)}",
  ]
  return "\n".join(lines)


@functools.lru_cache(maxsize=1)
def _parser() -> cli.Parser:
  """build_parser(), built once: the template of PreprocessOptions."""
  return build_parser()


class PreprocessOptions(PipelineOptions):
  """rpn-preprocess's flags as Beam pipeline options: they travel with the job
  (pipeline/commands/options.py); the strict parser (build_parser) checks them."""

  @classmethod
  def _add_argparse_args(cls, parser):
    options_lib.add_to_beam_parser(parser, _parser())


def show_progress(setup: preprocess_beam.RunnerSetup) -> None:
  """The per-worker progress line (logger pipeline.progress, INFO) on local
  runners only; elsewhere the runner's UI shows the counters (and a LOOPBACK
  worker in this process stays quiet too)."""
  progress_lib.PROGRESS_LOGGER.setLevel(logging.INFO if setup.local else logging.WARNING)


def run(argv: Optional[Sequence[str]] = None,
        extractor_factory=None) -> preprocess_beam.PreprocessResult:
  """Parses flags, clears old outputs, runs the pipeline; returns what it wrote."""
  args, beam_args = build_parser().parse_with_beam(argv)
  setup = preprocess_beam.runner_setup(beam_args)
  show_progress(setup)
  cfg = config_from_args(args, setup)
  check_before_run(args, cfg, extractor_factory)
  options = options_lib.job_options(setup.beam_args, args, _parser())
  options.view_as(SetupOptions).save_main_session = False
  with lock.hold(cfg.output, "--output", "rpn-preprocess"):  # one run per directory
    cli.running(cfg.output)
    deleted = clear_outputs(cfg.output)
    if deleted:
      _LOGGER.warning("cleared %d files of an earlier run from %s", len(deleted), cfg.output)
    p = beam.Pipeline(options=options)
    preprocess_beam.build_pipeline(p, cfg, extractor_factory=extractor_factory)
    with removed_on_failure(cfg.output), watchdog.watched():
      result = p.run()
      result.wait_until_finish()
      return preprocess_beam.PreprocessResult(manifest_lib.Manifest.load(cfg.output),
                                              metrics_lib.query(result))


def main(argv: Optional[Sequence[str]] = None) -> int:
  cli.setup_logging()  # Beam stays quiet; run() lets the progress line through locally

  argv = list(sys.argv[1:] if argv is None else argv)

  def command() -> int:
    args, _ = build_parser().parse_with_beam(argv)  # flag mistakes on the terminal, not the log
    with console.held_back("rpn-preprocess", enabled=not cli.RUN.verbose):
      result = run(argv)
    manifest = result.manifest
    print(summary(manifest))
    print(metrics_lib.format_table(result.metrics))
    return budget.exit_code("rpn-preprocess", manifest.counts, args.max_failed_fraction,
                            storage.join(args.output.rstrip("/"), config_lib.ERRORS_NAME))
  return cli.run_command("rpn-preprocess", command)


if __name__ == "__main__":
  sys.exit(main())
