"""`rpn-anchors`: the rpn-preprocess setting for a dataset, and its anchors' coverage of the boxes.

    rpn-anchors --input ROOT --output DIR [--split DET/train] [--backbone NAME]
        [--feature_layer NAME | --feature_layers A,B] [--scales 3,6,12] [--ratios 0.5,1,2]
        [--min_side N --max_side N] [--num_scales N] [--num_ratios N]
        [--max_images N] [Beam pipeline options]

No backbone forward pass: each image's XML boxes and its size (read from the
image file's header) go through rpn-preprocess's own reading, box policy,
resize and padding; the feature-map size of the frame comes from the
network's shape arithmetic (backbone.FeatureGrid); the anchors are those
rpn-preprocess would build. A fixed sample of the images (the smallest sha256
of their ids) feeds a search for scales and ratios that cover more boxes at IoU
0.7 with inside anchors (coverage.search_anchors); then every image is scored
with the given set and the suggested one.

With no flag but the input, the backbone and the output, it recommends the
whole setting of rpn-preprocess for that data and backbone (core.recommend):
the backbone's recommended feature layer(s) (two levels for VGG16), the
suggested scales and ratios at them, the frame and --flip. It prints them as
one line of flags and writes them to anchors.json as "recommended_flags".
Flags that are given (--feature_layer(s), the resize, --scales, --ratios) are
kept in the recommendation.

Writes into DIR: anchors.json (coverage of both sets, overall and by box size,
the search, the recommended flags and why, the counts), coverage.png,
boxes.png and errors.jsonl (the same lines rpn-preprocess writes for the same
inputs). Runs on every Beam runner; with no runner options, on every core of
this machine.
"""
from __future__ import annotations

import argparse
import functools
import logging
import shlex
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from pipeline.beam import anchors as anchors_beam
from pipeline.beam import metrics as metrics_lib
from pipeline.beam import preprocess as preprocess_beam
from pipeline.beam import watchdog
from pipeline.commands import backbone_check, budget, cli, console, failures, lock, preflight
from pipeline.commands import options as options_lib
from pipeline.commands import preprocess as run_lib
from pipeline.core import config as config_lib
from pipeline.io import ilsvrc, storage
from pipeline.model import registry

OUTPUT_NAMES = (anchors_beam.ANCHORS_NAME, anchors_beam.COVERAGE_PNG, anchors_beam.BOXES_PNG,
                config_lib.ERRORS_NAME,
                failures.LOG_NAME)
DEFAULT_SEARCH_IMAGES = 20_000

_LOGGER = logging.getLogger(__name__)


EXAMPLES = (
    "rpn-anchors --input data/sample --split DET/train --backbone VGG16 --output out/anchors",
    "rpn-anchors --input ROOT --split DET/train --backbone ResNet50 --num_scales 5 \\",
    "    --output out/anchors5",
    "rpn-anchors --input gs://BUCKET/ILSVRC --split DET/train --output gs://BUCKET/anchors \\",
    "    --runner DataflowRunner --project PROJECT --region REGION \\",
    "    --temp_location gs://BUCKET/tmp --setup_file ./setup.py",
)


def build_parser() -> cli.Parser:
  parser = cli.Parser(prog="rpn-anchors", description=__doc__.split("\n\n")[0],
                      allow_abbrev=False,  # an abbreviation could take a Beam flag
                      examples=EXAMPLES, epilog=run_lib.BEAM_OPTIONS_NOTE)
  run_lib.add_input_arguments(parser)
  parser.add_argument("--output", required=True, help="output directory (local, gs://, ...)")
  budget.add_argument(parser)
  run_lib.add_frame_arguments(parser, feature_layer_help=(
      "take the feature map from this layer of the backbone ('' for its final output); "
      "default, with no --feature_layers either: the backbone's recommended layer(s), "
      "block4_conv3,block5_conv3 for VGG16, the stride-16 layer for ResNet50 and "
      "InceptionResNetV2 (docs/choosing-settings.md)"))
  parser.add_argument("--max_images", type=int, default=None,
                      help="use only this many images, a fixed pseudo-random subset "
                      "(smallest sha256 of the image id); default: all")
  parser.add_argument("--num_scales", type=int, default=None,
                      help="the number of scales the search looks for (default: as many as "
                      "--scales has)")
  parser.add_argument("--num_ratios", type=int, default=None,
                      help="the number of ratios the search looks for (default: as many as "
                      "--ratios has)")
  parser.add_argument("--search_images", type=int, default=DEFAULT_SEARCH_IMAGES,
                      help="images (the same kind of fixed subset) whose boxes the search for "
                      "better anchors looks at; every image is scored with the result")
  return parser


@functools.lru_cache(maxsize=1)
def _parser() -> cli.Parser:
  """build_parser(), built once: the template of AnchorsOptions."""
  return build_parser()


class AnchorsOptions(PipelineOptions):
  """rpn-anchors' flags as Beam pipeline options: they travel with the job
  (pipeline/commands/options.py); the strict parser (build_parser) checks them.
  The flags it shares with rpn-preprocess are added once, by whichever class
  Beam asks first."""

  @classmethod
  def _add_argparse_args(cls, parser):
    options_lib.add_to_beam_parser(parser, _parser())


def layers_given(args: argparse.Namespace) -> bool:
  """Whether the flags name the feature layer(s); rpn-anchors recommends them if not."""
  return args.feature_layer is not None or bool(args.feature_layers)


def with_recommended_layers(args: argparse.Namespace) -> argparse.Namespace:
  """`args`, or a copy with the backbone's recommended layer(s) where the flags
  name none (registry.recommended_layers; an unknown backbone is left to the
  backbone check, which names the known ones)."""
  if layers_given(args) or args.backbone not in registry.BACKBONES:
    return args
  layers = registry.recommended_layers(args.backbone)
  chosen = argparse.Namespace(**vars(args))
  if len(layers) > 1:
    chosen.feature_layers = tuple(layers)
  else:
    chosen.feature_layer = layers[0]
  return chosen


def config_from_args(args: argparse.Namespace) -> config_lib.PreprocessConfig:
  """The input, frame and anchor settings, as rpn-preprocess holds them; the
  layers of with_recommended_layers."""
  args = with_recommended_layers(args)
  images_dir, annotations_dir = ilsvrc.layout_roots(
      input_root=args.input, split=args.split, images=args.images, annotations=args.annotations)
  for flag in ("max_images", "search_images", "num_scales", "num_ratios"):
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
          **run_lib.level_settings(args)),
      anchors=config_lib.AnchorConfig(scales=tuple(args.scales), ratios=tuple(args.ratios)),
      split=args.split if args.input else None, input_root=args.input)


# ---------------------------------------------------------------------------
# Per image


# ---------------------------------------------------------------------------
# The report


def format_report(report: Dict[str, Any]) -> str:
  """The coverage table and the flags of the suggested set, for the terminal."""
  layers = ",".join(report.get("feature_layers") or []) or report["feature_layer"]
  lines = [f"{report['backbone']} ({layers or 'final output'}): "
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
  for name in ("current", "suggested") if report.get("feature_layers") else ():
    for level in report[name].get("by_level", []):
      lines.append(f"{name} level {level['level']} "
                   f"({report['feature_layers'][level['level']]}): best anchor of "
                   f"{level['boxes']} boxes, covered {level['coverage']['0.5']:.3f} at IoU 0.5, "
                   f"{level['coverage']['0.7']:.3f} at 0.7")
  if "note" in report["suggested"]:
    lines.append(report["suggested"]["note"])
  lines.append("recommended rpn-preprocess flags, for the training and the held-out split "
               "(add --input, --split, --output and --weights):")
  lines.append(recommended_line(report))
  return "\n".join(lines)


def recommended_line(report: Dict[str, Any]) -> str:
  """anchors.json's recommended_flags as one line to paste into a shell."""
  return shlex.join(report["recommended_flags"])


def run(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  """Parses flags, runs the pipeline; returns anchors.json's content."""
  return run_with_metrics(argv)[0]


def run_with_metrics(argv: Optional[Sequence[str]] = None) -> Tuple[Dict[str, Any], Dict]:
  """run()'s anchors.json content and the run's Beam metrics (metrics.query)."""
  args, beam_args = build_parser().parse_with_beam(argv)
  setup = preprocess_beam.runner_setup(beam_args)
  run_lib.show_progress(setup)
  cfg = config_from_args(args)
  # The feature layer's shape arithmetic, from a child process (the launcher
  # imports no TensorFlow), beside the checks of the input and the output.
  with backbone_check.Checks(backbone_check.start_backbone_check(
      cfg.backbone.backbone, "none", cfg.backbone.feature_layer, always=True,
      feature_layers=cfg.backbone.feature_layers)) as checks:
    preflight.check_ilsvrc_input(args.input, args.split, args.images, args.annotations,
                                 args.image_set, args.missing_annotations)
    preflight.check_output(cfg.output)
    checks.finish()
  options = options_lib.job_options(setup.beam_args, with_recommended_layers(args), _parser())
  options.view_as(SetupOptions).save_main_session = False
  with lock.hold(cfg.output, "--output", "rpn-anchors"):  # one run per directory
    cli.running(cfg.output)
    clear_outputs(cfg.output)  # a report of an earlier run must not survive a failed one
    p = beam.Pipeline(options=options)
    anchors_beam.build_pipeline(p, cfg, args.max_images, args.search_images,
                                layers_given=layers_given(args), num_scales=args.num_scales,
                                num_ratios=args.num_ratios)
    with run_lib.removed_on_failure(cfg.output, clear_outputs), watchdog.watched():
      result = p.run()
      result.wait_until_finish()
      return (storage.read_json(storage.join(cfg.output, anchors_beam.ANCHORS_NAME)),
              metrics_lib.query(result))


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
    args, _ = build_parser().parse_with_beam(argv)  # flag mistakes on the terminal, not the log
    with console.held_back("rpn-anchors", enabled=not cli.RUN.verbose):
      report, metrics = run_with_metrics(argv)
    _report(report)
    print(metrics_lib.format_table(metrics))
    return budget.exit_code("rpn-anchors", report["counts"], args.max_failed_fraction,
                            storage.join(args.output.rstrip("/"), config_lib.ERRORS_NAME))
  return cli.run_command("rpn-anchors", command)


def _report(report: Dict[str, Any]) -> None:
  print(format_report(report))
  c = report["counts"]
  print(f"images: {c['images_found']} found = {c['images_ok']} ok + {c['images_failed']} failed"
        f" + {c['images_skipped']} skipped; boxes dropped by the box policy: "
        f"{c['boxes_dropped']}")


if __name__ == "__main__":
  sys.exit(main())
