"""The front ends of rpn-train and rpn-propose: flags and checks, before TensorFlow.

Each command parses its flags and checks what it is pointed at (the shard
directories, the job directory, the images, the output) without importing
TensorFlow, so that a mistake ends it within a second, with exit code 2 and
one line on stderr (pipeline.commands.cli). The checks return the typed
arguments (trainer/arguments.py) that train() and propose() take, built once
from the checked flags. Only then is the training or proposing module
imported, with TensorFlow's start-up notices held back.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
from typing import Iterator, Optional, Sequence, Tuple

from pipeline.commands import backbone_check, budget, cli, console, failures, lock, preflight
from pipeline.core import config
from pipeline.io import manifest as manifest_lib
from pipeline.io import storage
from trainer import arguments, job, sampling


@contextlib.contextmanager
def working_on(prog: str, directory: str, flag: str, verbose: bool) -> Iterator[None]:
  """A command's work on `directory` (named by `flag`): one run there at a time
  (lock), TensorFlow's and Beam's logs held back unless `verbose`, the
  directory marked as the run's, an earlier failure's log cleared."""
  with lock.hold(directory, flag, prog), console.held_back(prog, enabled=not verbose):
    cli.running(directory, flag)
    failures.clear_log(directory)
    yield


# ---------------------------------------------------------------------------
# rpn-train


_TRAIN_HELP = {
    "epochs": "epochs in all: a rerun of the job with more goes on from where it stopped",
    "batch_size": "tiles per step",
    "learning_rate": "Adam learning rate",
    "box_loss_weight": "weight of the box (smooth L1) loss against the objectness loss",
    "hidden": "filters of the 3x3 conv",
    "projection": "channels of each feature level's 1x1 projection in front of the shared "
                  "head, for levels of different channel counts only (--feature_layers)",
    "weight_decay": "decoupled weight decay of the conv kernels (AdamW; 0: plain Adam)",
    "dropout": "dropout rate on the 3x3 conv's output while training (0: none)",
    "early_stopping_patience": "with --val_data, stop once val_loss has not improved for "
                               "this many epochs (0: off); JOB/best/ holds the best epoch "
                               "either way",
    "steps_per_epoch": "steps per epoch (the data repeats); default: one pass over the shards",
    "shuffle_buffer_mb": "megabytes of records in the shuffle buffer",
    "mixed_precision": "compute in mixed_float16 (GPUs with tensor cores); outputs stay float32",
    "skip_corrupt_shards": "leave out shards that cannot be read to the end (logged) "
                           "instead of failing",
    "verify_shards": "before training, read every shard whole and check each record's "
                     "framing and checksum (default: compare each shard's size with the "
                     "manifest, a stat per file)",
    "seed": "seed of the shuffling, the sampling of the feature statistics and the weights",
}
# The least value of each numeric flag (learning_rate: more than 0).
_TRAIN_LEAST = {"epochs": 1, "batch_size": 1, "box_loss_weight": 0, "hidden": 1,
                "projection": 1,
                "steps_per_epoch": 1, "shuffle_buffer_mb": 0, "weight_decay": 0, "dropout": 0,
                "early_stopping_patience": 0}


# The anchor and target flags of a maps dataset (name, type, help), the fields
# of sampling.SamplingFlags but --anchors_json; unset, each takes the method's
# default (the maps manifest's "anchor" and "targets").
_SAMPLING_FLAGS = (
    ("scales", cli.floats, "comma-separated anchor scales, in units of the stride"),
    ("ratios", cli.floats, "comma-separated anchor ratios (height / width)"),
    ("fg_iou_thresh", float, "IoU from which an anchor is positive"),
    ("bg_iou_thresh", float, "IoU below which an anchor is negative"),
    ("batch_size_per_image", int, "anchors sampled per image and epoch"),
    ("fg_fraction", float, "at most this fraction of them positive"),
)


TRAIN_EXAMPLES = (
    "rpn-train --data out/shards/train --val_data out/shards/val --job_dir out/job",
    "rpn-train --data out/train --val_data out/val --job_dir out/job --epochs 30 \\",
    "    --early_stopping_patience 5 --weight_decay 1e-4",
    "rpn-train --data out/maps/train --val_data out/maps/val --job_dir out/job_maps \\",
    "    --anchors_json out/anchors/anchors.json",
)


def train_parser() -> cli.Parser:
  parser = cli.Parser(prog="rpn-train", description=(
      "Stream the shards of rpn-preprocess into the Keras RPN head."), examples=TRAIN_EXAMPLES)
  parser.add_argument("--data", required=True, help="shard directory of rpn-preprocess")
  parser.add_argument("--val_data", help="held-out shard directory (same backbone and anchors)")
  parser.add_argument("--job_dir", required=True, help="where the model, logs and checkpoints go")
  for field in dataclasses.fields(arguments.TrainConfig):
    flag, help_text = "--" + field.name, _TRAIN_HELP.get(field.name)
    if field.type in (bool, "bool"):
      parser.add_argument(flag, action="store_true", help=help_text)
    else:
      kind = {"int": int, "float": float, "Optional[int]": int}[str(field.type)]
      parser.add_argument(flag, type=kind, default=field.default, help=help_text)
  group = parser.add_argument_group(
      "anchors and targets (maps layout only)", "drawn afresh every epoch, seeded by (--seed, "
      "epoch, image id); unset, the method's (3,6,12 and 0.5,1,2; 0.7, 0.3, 256, 0.5)")
  for name, kind, help_text in _SAMPLING_FLAGS:
    group.add_argument("--" + name, type=kind, default=None, help=help_text)
  group.add_argument("--anchors_json", default=None,
                     help="anchors.json of rpn-anchors: train with its suggested scales "
                     "and ratios (--scales/--ratios override)")
  return parser


def sampling_flags(args: argparse.Namespace) -> sampling.SamplingFlags:
  """The anchor and target flags of rpn-train's parsed flags."""
  return sampling.SamplingFlags(**{field.name: getattr(args, field.name, None)
                                   for field in dataclasses.fields(sampling.SamplingFlags)})


def train_config_from_args(args: argparse.Namespace) -> arguments.TrainConfig:
  return arguments.TrainConfig(**{field.name: getattr(args, field.name)
                                  for field in dataclasses.fields(arguments.TrainConfig)})


def train_args(args: argparse.Namespace, manifest: Optional[manifest_lib.Manifest] = None
               ) -> arguments.TrainArgs:
  """train()'s arguments from rpn-train's parsed flags: the maps sampling
  resolved against the --data manifest (`manifest`; read when None) and
  checked (sampling.check_sampling: a cli.UsageError naming the flag)."""
  if manifest is None:
    manifest = manifest_lib.Manifest.load(args.data)
  drawn = sampling.check_sampling(sampling_flags(args), manifest, args.seed, args.data)
  return arguments.TrainArgs(data=args.data, job_dir=args.job_dir, val_data=args.val_data,
                             config=train_config_from_args(args), sampling=drawn)


def load_data_manifest(data_dir: str, flag: str) -> manifest_lib.Manifest:
  """The manifest of a finished rpn-preprocess run in `data_dir`, or a UsageError."""
  if not preflight.is_dir(data_dir):
    raise cli.UsageError(flag, data_dir, "no such directory")
  if not storage.exists(manifest_lib.path_in(data_dir)):
    raise cli.UsageError(flag, data_dir, f"has no {config.MANIFEST_NAME}: not the output of a "
                         f"finished rpn-preprocess run (the manifest is written last)")
  try:
    return manifest_lib.Manifest.load(data_dir)
  except manifest_lib.ManifestError as e:
    raise cli.UsageError(flag, data_dir, str(e)) from None


def check_train(args: argparse.Namespace) -> arguments.TrainArgs:
  """rpn-train's checks: values in range, finished shard directories of one
  backbone and anchors, a job dir that holds nothing else and can be written.
  Returns train()'s arguments (train_args)."""
  for name, least in _TRAIN_LEAST.items():
    value = getattr(args, name)
    if value is not None and value < least:
      raise cli.UsageError(f"--{name}", value, f"must be >= {least}")
  if not args.learning_rate > 0:
    raise cli.UsageError("--learning_rate", args.learning_rate, "must be > 0")
  if not args.dropout < 1:
    raise cli.UsageError("--dropout", args.dropout, "must be < 1")
  if args.early_stopping_patience and not args.val_data:
    raise cli.UsageError("--early_stopping_patience", args.early_stopping_patience,
                         "stops on val_loss: give --val_data too")
  manifest = load_data_manifest(args.data, "--data")
  run = train_args(args, manifest)
  manifest = sampling.training_manifest(manifest, run.sampling)
  if args.val_data:
    val_manifest = load_data_manifest(args.val_data, "--val_data")
    if val_manifest.is_maps:
      val_manifest = sampling.training_manifest(
          val_manifest, run.sampling or sampling.manifest_sampling(manifest, args.seed))
    try:
      manifest.check_compatible(val_manifest, "the --data manifest")
    except manifest_lib.ManifestError as e:
      raise cli.UsageError("--val_data", args.val_data, f"does not go with --data {args.data} "
                           f"({e})") from None
  job_manifest = job.path(args.job_dir, config.MANIFEST_NAME)
  if storage.exists(job_manifest):
    recorded = manifest_lib.Manifest.read(job_manifest)
    theirs = {k: recorded.anchor.get(k) for k in ("scales", "ratios")}
    if run.sampling is not None and theirs != {"scales": list(run.sampling[0].scales),
                                               "ratios": list(run.sampling[0].ratios)}:
      raise cli.UsageError("--job_dir", args.job_dir, f"holds a model trained with other "
                           f"anchors (scales {theirs['scales']}, ratios {theirs['ratios']}); "
                           f"pass those, or use a fresh --job_dir")
    try:
      recorded.check_compatible(manifest, "--data")
    except manifest_lib.ManifestError as e:
      raise cli.UsageError("--job_dir", args.job_dir, f"holds a model of other data ({e}); use "
                           f"a fresh --job_dir") from None
  preflight.check_output(args.job_dir, "--job_dir")
  return run


def train_main(argv: Optional[Sequence[str]] = None) -> int:
  cli.setup_logging()
  args = train_parser().parse(argv)

  def command() -> int:
    run = check_train(args)
    cli.import_tensorflow_quietly()
    from trainer import train  # lazy: TensorFlow, after the checks
    with working_on("rpn-train", run.job_dir, "--job_dir", args.verbose):  # a rerun resumes
      last = train.train(run)
    print("final epoch: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(last.items())))
    print(f"model: {job.path(run.job_dir, job.WEIGHTS_NAME)}")
    return 0
  return cli.run_command("rpn-train", command, errors=(manifest_lib.ManifestError,))


# ---------------------------------------------------------------------------
# rpn-propose


BEAM_OPTIONS_NOTE = (
    "Beam's pipeline options (--runner, --project, --region, --temp_location, --setup_file,\n"
    "--direct_num_workers, ...) are accepted too; without any, the pipeline runs here on\n"
    "every core, one worker process each; see docs/running-at-scale.md.")

PROPOSE_EXAMPLES = (
    "rpn-propose --job_dir out/job --input data/sample --split DET/val --output out/proposals",
    "rpn-propose --job_dir out/job --model best --maps out/maps/train \\",
    "    --output out/proposals_train --post_nms_top_n 2000",
    "rpn-propose --job_dir gs://B/job --input gs://B/ilsvrc --split DET/train \\",
    "    --output gs://B/proposals --runner DataflowRunner --project P --region R \\",
    "    --temp_location gs://B/tmp --setup_file ./setup.py",
)


def propose_parser() -> cli.Parser:
  defaults = arguments.ProposeArgs(job_dir="", output="")
  parser = cli.Parser(prog="rpn-propose",
                      description="Region proposals of a trained RPN for whole images, as a "
                      "Beam pipeline (the runner defaults of rpn-preprocess).",
                      examples=PROPOSE_EXAMPLES, epilog=BEAM_OPTIONS_NOTE)
  parser.add_argument("--job_dir", required=True,
                      help="output of rpn-train (rpn.weights.h5, manifest.json, train_config.json)")
  parser.add_argument("--model", choices=MODELS, default=MODELS[0],
                      help="the job's model of its last epoch, or the best epoch by val_loss "
                      "that rpn-train with --val_data keeps in JOB/best/")
  parser.add_argument("--input", help="dataset root of the ILSVRC 2015+ layout; annotations "
                      "(Annotations/<split>/<id>.xml) give the gt boxes")
  parser.add_argument("--split", default=defaults.split,
                      help="split under Data/ and Annotations/")
  parser.add_argument("--images", help="glob of image files (no gt boxes), e.g. 'dir/*.JPEG'")
  parser.add_argument("--maps", help="a maps dataset (rpn-preprocess --layout maps) of the "
                      "job's backbone, weights and layer: the stored feature maps go through "
                      "the RPN head, no backbone runs")
  parser.add_argument("--output", required=True, help="output directory")
  parser.add_argument("--formats", default="jsonl",
                      help="comma-separated output formats: jsonl (the proposal shards, always "
                      "written), detectron2 (proposals_detectron2.pkl for detectron2's "
                      "PROPOSAL_FILES), coco (proposals_coco.json, a COCO results list, and "
                      "proposals_coco_images.json); boxes in the original image's pixels")
  budget.add_argument(parser)
  add_proposal_arguments(parser)
  parser.add_argument("--draw", type=int, default=defaults.draw,
                      help="pictures of the first N images (top 20 proposals, gt boxes)")
  parser.add_argument("--weights", default=defaults.weights,
                      help="backbone weights instead of the manifest's (imagenet|none|PATH; "
                      "default: the manifest's); best: the same as --model best, with the "
                      "manifest's backbone weights")
  return parser


MODELS = ("last", "best")  # rpn-propose --model


def add_proposal_arguments(parser) -> None:
  """The proposal filter's flags (config.ProposalConfig), as rpn-propose and
  rpn-export take them, onto a parser or an argument group."""
  proposal = config.ProposalConfig()
  parser.add_argument("--pre_nms_top_n", type=int, default=proposal.pre_nms_top_n,
                      help="boxes kept before NMS, best score first (per level with several "
                      "levels; 0: all)")
  parser.add_argument("--post_nms_top_n", type=int, default=proposal.post_nms_top_n,
                      help="proposals kept after NMS (0: all)")
  parser.add_argument("--nms_thresh", type=float, default=proposal.nms_thresh,
                      help="NMS drops a box whose IoU with a kept, better box is above this")
  parser.add_argument("--min_size", type=float, default=proposal.min_size,
                      help="drop boxes narrower or lower than this, in pixels of the original "
                      "image (scaled into the frame when it was resized)")
  parser.add_argument("--anchors", choices=("inside", "all"), default=proposal.anchors,
                      help="propose from the anchors inside the image (those training "
                      "labels) or from all anchors, clipped")


def check_proposal_flags(args: argparse.Namespace) -> None:
  """add_proposal_arguments' flags in range, or a UsageError naming the flag."""
  for flag in ("pre_nms_top_n", "post_nms_top_n"):
    if getattr(args, flag) < 0:
      raise cli.UsageError(f"--{flag}", getattr(args, flag), "must be >= 0")
  if not 0 < args.nms_thresh <= 1:
    raise cli.UsageError("--nms_thresh", args.nms_thresh, "must be in (0, 1]")
  if args.min_size < 0:
    raise cli.UsageError("--min_size", args.min_size, "must be >= 0")


def proposal_config(args: argparse.Namespace) -> config.ProposalConfig:
  """The ProposalConfig of add_proposal_arguments' parsed flags."""
  return config.ProposalConfig(args.pre_nms_top_n, args.post_nms_top_n, args.nms_thresh,
                               args.min_size, args.anchors)


def model_job_dir(args: argparse.Namespace) -> Tuple[str, Optional[str]]:
  """(the job dir rpn-propose loads, the backbone weights it is given): --job_dir,
  or its best/ for --model best or --weights best (the latter then means the
  manifest's backbone weights). UsageError for a best/ that the job lacks."""
  weights = None if args.weights == "best" else args.weights
  best_wanted = args.model == "best" or args.weights == "best"
  if not best_wanted or not preflight.is_dir(args.job_dir):  # (the latter: read_manifest says)
    return args.job_dir, weights
  best = job.path(args.job_dir, job.BEST_DIR)
  if not preflight.is_dir(best):
    raise cli.UsageError("--model", "best", f"{args.job_dir} has no {job.BEST_DIR}/: rpn-train "
                         f"keeps the best epoch only when given --val_data")
  return best, weights


def propose_args(args: argparse.Namespace, job_dir: str,
                 weights: Optional[str]) -> arguments.ProposeArgs:
  """propose()'s arguments from rpn-propose's parsed flags and the job dir and
  backbone weights that model_job_dir worked out of them."""
  return arguments.ProposeArgs(
      job_dir=job_dir, output=args.output, input=args.input, split=args.split,
      images=args.images, maps=args.maps, draw=args.draw, weights=weights,
      formats=output_formats(args.formats), proposal=proposal_config(args))


def output_formats(text: str) -> Tuple[str, ...]:
  """--formats, checked (UsageError listing the known formats)."""
  from trainer import formats  # numpy only
  try:
    return formats.parse_formats(text)
  except ValueError as e:
    raise cli.UsageError("--formats", text, str(e)) from None


def check_propose(args: argparse.Namespace) -> arguments.ProposeArgs:
  """rpn-propose's checks: values in range, a finished job, images to propose
  for, backbone weights that exist, an output that can be written. Returns
  propose()'s arguments (propose_args)."""
  check_proposal_flags(args)
  if args.draw < 0:
    raise cli.UsageError("--draw", args.draw, "must be >= 0")
  budget.check_flag(args.max_failed_fraction)
  output_formats(args.formats)
  job_dir, weights = model_job_dir(args)
  try:
    manifest = job.read_manifest(job_dir)
  except job.JobError as e:
    raise cli.UsageError("--job_dir", job_dir, e.problem) from None
  if sum(bool(source) for source in (args.input, args.images, args.maps)) != 1:
    raise cli.UsageError(None, None, "give exactly one of --input ROOT (ILSVRC layout, with "
                         "annotations), --images GLOB or --maps DIR")
  if args.maps:
    if weights:
      raise cli.UsageError("--weights", weights, "no backbone runs with --maps: its maps "
                           "were computed with the weights they were computed with")
    preflight.check_output(args.output)
    check_maps(args.maps, manifest, job_dir)
    return propose_args(args, job_dir, weights)
  if weights:  # other weights than the job's: loaded once aside, beside the checks below
    child_check = backbone_check.start_backbone_check(
        manifest.backbone, weights, manifest.feature_layer, manifest.weights_seed,
        feature_layers=manifest.feature_layers or ())
  else:  # the job's own, which loaded when its shards were made: they must be here
    child_check = None
    try:
      preflight.check_weights_path(manifest.weights)
    except cli.UsageError:
      raise cli.UsageError("--job_dir", job_dir, f"its backbone weights file "
                           f"{manifest.weights} is not here; pass --weights PATH to that "
                           f"file") from None
  with backbone_check.Checks(child_check) as checks:
    if args.input:
      preflight.check_root(args.input)
      images_dir = preflight.check_split(args.input, args.split)
      preflight.check_images(images_dir, "--split", args.split)
    elif not storage.glob_some(args.images):
      raise cli.UsageError("--images", args.images, "no file matches")
    preflight.check_output(args.output)
    checks.finish()
  return propose_args(args, job_dir, weights)


# What a maps dataset must share with the job to be proposed from: the features.
MAPS_KEYS = ("backbone", "weights", "weights_seed", "feature_layer", "feature_layers",
             "feature_channels", "level_channels", "dtype")


def check_maps(maps_dir: str, job_manifest: manifest_lib.Manifest, job_dir: str) -> None:
  """--maps: a finished maps dataset whose features are the job's (MAPS_KEYS)
  and whose shards are all there, at the sizes its manifest records (a stat
  each); UsageError naming the first thing that is not."""
  maps = load_data_manifest(maps_dir, "--maps")
  if not maps.is_maps:
    raise cli.UsageError("--maps", maps_dir, f"is a {maps.layout} dataset; rpn-propose reads "
                         f"feature maps (rpn-preprocess --layout maps)")
  ours, theirs = maps.to_json(), job_manifest.to_json()
  for key in MAPS_KEYS:
    if ours.get(key) != theirs.get(key):
      raise cli.UsageError("--maps", maps_dir, f"its {key} is {ours.get(key)!r} but the job "
                           f"{job_dir} was trained on {theirs.get(key)!r}: its features are "
                           f"not the job's")
  from apache_beam.io.filesystems import FileSystems  # lazy: a second's import
  paths = maps.shard_paths(maps_dir)
  found = {m.path: m.size_in_bytes for result in FileSystems.match(paths)
           for m in result.metadata_list}
  for path, info in zip(paths, maps.shards or (), strict=False):
    size = found.get(path)
    if size is None:
      raise cli.UsageError("--maps", maps_dir, f"shard {path} is missing")
    if size != info.bytes:
      raise cli.UsageError("--maps", maps_dir, f"shard {path} has {size} bytes, its manifest "
                           f"says {info.bytes}: truncated or overwritten; rerun rpn-preprocess")


def propose_main(argv: Optional[Sequence[str]] = None) -> int:
  cli.setup_logging()
  args, beam_args = propose_parser().parse_with_beam(argv)

  def command() -> int:
    run = check_propose(args)
    cli.import_tensorflow_quietly()
    from trainer import propose_pipeline  # lazy: TensorFlow, after the checks
    with working_on("rpn-propose", run.output, "--output", args.verbose):
      settings = propose_pipeline.propose(run, beam_args)
      propose_pipeline.report(settings)
    return budget.exit_code("rpn-propose", settings["counts"], args.max_failed_fraction,
                            storage.join(run.output, config.ERRORS_NAME))
  return cli.run_command("rpn-propose", command)


# ---------------------------------------------------------------------------
# rpn-export


EXPORT_EXAMPLES = (
    "rpn-export --job_dir out/job --output out/export",
    "rpn-export --job_dir out/job --model best --output out/export_best --post_nms_top_n 1000",
)


def export_parser() -> cli.Parser:
  parser = cli.Parser(prog="rpn-export", description=(
      "A trained job as a TensorFlow SavedModel whose serving signature takes an encoded "
      "image and returns its proposals (boxes in the image's pixels, scores)."),
      examples=EXPORT_EXAMPLES)
  parser.add_argument("--job_dir", required=True,
                      help="output of rpn-train (rpn.weights.h5, manifest.json, train_config.json)")
  parser.add_argument("--model", choices=MODELS, default=MODELS[0],
                      help="the job's model of its last epoch, or the best epoch by val_loss "
                      "that rpn-train with --val_data keeps in JOB/best/")
  parser.add_argument("--output", required=True, help="directory of the SavedModel")
  parser.add_argument("--weights", default=None,
                      help="backbone weights instead of the manifest's (imagenet|none|PATH; "
                      "default: the manifest's)")
  add_proposal_arguments(parser.add_argument_group(
      "proposal settings, fixed in the graph (as rpn-propose's)"))
  return parser


def check_export(args: argparse.Namespace) -> arguments.ExportArgs:
  """rpn-export's checks: values in range, a finished job (its best/ for
  --model best), backbone weights that exist, an output that is new or empty."""
  check_proposal_flags(args)
  job_dir, weights = model_job_dir(args)
  try:
    manifest = job.read_manifest(job_dir)
  except job.JobError as e:
    raise cli.UsageError("--job_dir", job_dir, e.problem) from None
  if weights:
    with backbone_check.Checks(backbone_check.start_backbone_check(
        manifest.backbone, weights, manifest.feature_layer, manifest.weights_seed,
        feature_layers=manifest.feature_layers or ())) as checks:
      checks.finish()
  else:
    try:
      preflight.check_weights_path(manifest.weights)
    except cli.UsageError:
      raise cli.UsageError("--job_dir", job_dir, f"its backbone weights file "
                           f"{manifest.weights} is not here; pass --weights PATH to that "
                           f"file") from None
  if preflight.is_dir(args.output) and storage.glob_some(storage.join(args.output, "*")):
    raise cli.UsageError("--output", args.output, "is not empty: a SavedModel goes into a new "
                         "or empty directory")
  preflight.check_output(args.output)
  return arguments.ExportArgs(job_dir=job_dir, output=args.output, weights=weights,
                              proposal=proposal_config(args))


def export_main(argv: Optional[Sequence[str]] = None) -> int:
  cli.setup_logging()
  args = export_parser().parse(argv)

  def command() -> int:
    run = check_export(args)
    cli.import_tensorflow_quietly()
    from trainer import export  # lazy: TensorFlow, after the checks
    with working_on("rpn-export", run.output, "--output", args.verbose):
      settings = export.export(run)
    print(f"wrote the SavedModel into {settings['output']} (signature {export.SIGNATURE}: "
          f"image_bytes -> boxes, scores, num_proposals) and {export.EXPORT_SETTINGS_NAME}")
    return 0
  return cli.run_command("rpn-export", command)
