"""The front ends of rpn-train and rpn-propose: flags and checks, before TensorFlow.

Each command parses its flags and checks what it is pointed at (the shard
directories, the job directory, the images, the output) without importing
TensorFlow, so that a mistake ends it within a second, with exit code 2 and
one line on stderr (pipeline.commands.cli). Only then is the training or proposing
module imported, with TensorFlow's start-up notices held back.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Dict, Optional, Sequence, Tuple

from pipeline.commands import cli, console, failures, lock, preflight
from pipeline.core import config
from pipeline.io import manifest as manifest_lib
from pipeline.io import storage
from trainer import settings

# ---------------------------------------------------------------------------
# rpn-train


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  epochs: int = 10
  batch_size: int = 256  # tiles per step
  learning_rate: float = 1e-3  # Adam
  box_loss_weight: float = settings.DEFAULT_BOX_LOSS_WEIGHT
  hidden: int = settings.DEFAULT_HIDDEN
  steps_per_epoch: Optional[int] = None  # None: one pass over the shards
  shuffle_buffer_mb: int = settings.DEFAULT_SHUFFLE_BUFFER_MB
  mixed_precision: bool = False
  skip_corrupt_shards: bool = False
  verify_shards: bool = False
  seed: int = 0


_TRAIN_HELP = {
    "batch_size": "tiles per step",
    "learning_rate": "Adam learning rate",
    "box_loss_weight": "weight of the box (smooth L1) loss against the objectness loss",
    "hidden": "filters of the 3x3 conv",
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
                "steps_per_epoch": 1, "shuffle_buffer_mb": 0}


# The anchor and target flags of a maps dataset (name, type, help); unset, each
# takes the method's default (the maps manifest's "anchor" and "targets").
_SAMPLING_FLAGS = (
    ("scales", cli.floats, "comma-separated anchor scales, in units of the stride"),
    ("ratios", cli.floats, "comma-separated anchor ratios (height / width)"),
    ("fg_iou_thresh", float, "IoU from which an anchor is positive"),
    ("bg_iou_thresh", float, "IoU below which an anchor is negative"),
    ("batch_size_per_image", int, "anchors sampled per image and epoch"),
    ("fg_fraction", float, "at most this fraction of them positive"),
)


def train_parser() -> cli.Parser:
  parser = cli.Parser(prog="rpn-train", description=(
      "Stream the shards of rpn-preprocess into the Keras RPN head."))
  parser.add_argument("--data", required=True, help="shard directory of rpn-preprocess")
  parser.add_argument("--val_data", help="held-out shard directory (same backbone and anchors)")
  parser.add_argument("--job_dir", required=True, help="where the model, logs and checkpoints go")
  for field in dataclasses.fields(TrainConfig):
    flag, help_text = "--" + field.name, _TRAIN_HELP.get(field.name)
    if field.type in (bool, "bool"):
      parser.add_argument(flag, action="store_true", help=help_text)
    else:
      kind = {"int": int, "float": float, "Optional[int]": int}[str(field.type)]
      parser.add_argument(flag, type=kind, default=field.default, help=help_text)
  sampling = parser.add_argument_group(
      "anchors and targets (maps layout only)", "drawn afresh every epoch, seeded by (--seed, "
      "epoch, image id); unset, the method's (3,6,12 and 0.5,1,2; 0.7, 0.3, 256, 0.5)")
  for name, kind, help_text in _SAMPLING_FLAGS:
    sampling.add_argument("--" + name, type=kind, default=None, help=help_text)
  sampling.add_argument("--anchors_json", default=None,
                        help="anchors.json of rpn-anchors: train with its suggested scales "
                        "and ratios (--scales/--ratios override)")
  return parser


def sampling_given(args: argparse.Namespace) -> Optional[str]:
  """The first anchor or target flag given, e.g. "--scales"; None when none is."""
  for name in [n for n, _, _ in _SAMPLING_FLAGS] + ["anchors_json"]:
    if getattr(args, name, None) is not None:
      return "--" + name
  return None


def read_anchors_json(path: str, manifest: Dict) -> Dict:
  """rpn-anchors' anchors.json at `path`, made for the data's backbone, layer
  and frame; returns its "suggested" block. A cli.UsageError otherwise."""
  if not storage.exists(path):
    raise cli.UsageError("--anchors_json", path, "no such file")
  try:
    report = storage.read_json(path)
    suggested = report["suggested"]
    [float(v) for v in suggested["scales"]], [float(v) for v in suggested["ratios"]]
  except (ValueError, UnicodeDecodeError, KeyError, TypeError):
    raise cli.UsageError("--anchors_json", path, "not the anchors.json of rpn-anchors (no "
                         "suggested scales and ratios)") from None
  resize = manifest_lib.resize(manifest)
  frame = report.get("frame") or {}
  for key, theirs, ours in (
      ("backbone", report.get("backbone"), manifest["backbone"]),
      ("feature_layer", report.get("feature_layer"), manifest.get("feature_layer")),
      ("min_side", frame.get("min_side"), resize.get("min_side")),
      ("max_side", frame.get("max_side"), resize.get("max_side"))):
    if theirs != ours:
      raise cli.UsageError("--anchors_json", path, f"was made for {key} {theirs!r}, the data "
                           f"has {ours!r}: run rpn-anchors with the data's settings")
  return suggested


# rpn-train's target flags and the TargetConfig fields they set
_TARGET_FIELDS = (("fg_iou_thresh", "fg_iou_thresh"), ("bg_iou_thresh", "bg_iou_thresh"),
                  ("batch_size_per_image", "batch_size"), ("fg_fraction", "fg_fraction"))


def sampling_from_args(args: argparse.Namespace, manifest: Dict
                       ) -> Tuple[config.AnchorConfig, config.TargetConfig]:
  """The anchors and targets rpn-train draws a maps dataset with: the flags
  given, --anchors_json's suggestion, else the manifest's (the method's)."""
  anchors, target_config = manifest_sampling(manifest, int(args.seed))
  if getattr(args, "anchors_json", None):
    suggested = read_anchors_json(args.anchors_json, manifest)
    anchors = config.AnchorConfig(tuple(float(v) for v in suggested["scales"]),
                                  tuple(float(v) for v in suggested["ratios"]))
  given = {name: getattr(args, name, None) for name in ("scales", "ratios")}
  anchors = dataclasses.replace(anchors, **{name: tuple(float(v) for v in value)
                                            for name, value in given.items() if value is not None})
  given = {field: getattr(args, flag, None) for flag, field in _TARGET_FIELDS}
  target_config = dataclasses.replace(target_config, **{
      field: value for field, value in given.items() if value is not None})
  return anchors, target_config


def check_sampling(args: argparse.Namespace, manifest: Dict) -> Optional[Tuple]:
  """The anchor and target flags against the --data layout: refused on tiles
  data (fixed at preprocessing), checked on maps; returns the maps sampling."""
  if manifest_lib.layout(manifest) != config.MAPS_LAYOUT:
    given = sampling_given(args)
    if given:
      value = getattr(args, given[2:])
      shown = ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else value
      raise cli.UsageError(given, shown, f"--data {args.data} is of layout "
                           f"tiles, whose anchors and targets were fixed by rpn-preprocess; "
                           f"preprocess with --layout maps to choose them at training")
    return None
  anchors, target_config = sampling_from_args(args, manifest)
  for flag, values in (("--scales", anchors.scales), ("--ratios", anchors.ratios)):
    if not values or min(values) <= 0:
      raise cli.UsageError(flag, ",".join(f"{v:g}" for v in values), "must be positive numbers")
  t = target_config
  if not 0 <= t.bg_iou_thresh <= t.fg_iou_thresh <= 1:
    raise cli.UsageError("--bg_iou_thresh", t.bg_iou_thresh, f"need 0 <= --bg_iou_thresh "
                         f"({t.bg_iou_thresh}) <= --fg_iou_thresh ({t.fg_iou_thresh}) <= 1")
  if t.batch_size < 1:
    raise cli.UsageError("--batch_size_per_image", t.batch_size, "must be >= 1")
  if not 0 < t.fg_fraction <= 1:
    raise cli.UsageError("--fg_fraction", t.fg_fraction, "must be in (0, 1]")
  return anchors, target_config


def manifest_sampling(manifest: Dict, seed: int
                      ) -> Tuple[config.AnchorConfig, config.TargetConfig]:
  """The anchors and targets a manifest records (a maps manifest's defaults, or
  a tiles dataset's, to draw maps validation data with), with rpn-train's
  sampling seed."""
  anchor, targets = manifest["anchor"], manifest["targets"]
  return (config.AnchorConfig(tuple(float(v) for v in anchor["scales"]),
                              tuple(float(v) for v in anchor["ratios"])),
          config.TargetConfig(float(targets["fg_iou_thresh"]), float(targets["bg_iou_thresh"]),
                              int(targets["batch_size"]), float(targets["fg_fraction"]), seed))


def training_manifest(manifest: Dict, sampling: Optional[Tuple]) -> Dict:
  """The manifest a model of this data is trained for: a maps manifest with
  the anchors and targets drawn at training (what the job dir records)."""
  if sampling is None:
    return manifest
  anchors, target_config = sampling
  return dict(manifest,
              anchor=dict(config.to_dict(anchors), num_anchors=anchors.num_anchors),
              targets=config.to_dict(target_config),
              sampling="per epoch, seeded by (seed, epoch, image_id)")


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
  return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def load_data_manifest(data_dir: str, flag: str) -> Dict:
  """The manifest of a finished rpn-preprocess run in `data_dir`, or a UsageError."""
  if not preflight.is_dir(data_dir):
    raise cli.UsageError(flag, data_dir, "no such directory")
  if not storage.exists(manifest_lib.path_in(data_dir)):
    raise cli.UsageError(flag, data_dir, f"has no {config.MANIFEST_NAME}: not the output of a "
                         f"finished rpn-preprocess run (the manifest is written last)")
  try:
    return manifest_lib.load(data_dir)
  except manifest_lib.ManifestError as e:
    raise cli.UsageError(flag, data_dir, str(e)) from None


def check_train(args: argparse.Namespace) -> None:
  """rpn-train's checks: values in range, finished shard directories of one
  backbone and anchors, a job dir that holds nothing else and can be written."""
  for name, least in _TRAIN_LEAST.items():
    value = getattr(args, name)
    if value is not None and value < least:
      raise cli.UsageError(f"--{name}", value, f"must be >= {least}")
  if not args.learning_rate > 0:
    raise cli.UsageError("--learning_rate", args.learning_rate, "must be > 0")
  manifest = load_data_manifest(args.data, "--data")
  sampling = check_sampling(args, manifest)
  manifest = training_manifest(manifest, sampling)
  if args.val_data:
    val_manifest = load_data_manifest(args.val_data, "--val_data")
    if manifest_lib.layout(val_manifest) == config.MAPS_LAYOUT:
      val_manifest = training_manifest(val_manifest,
                                       sampling or manifest_sampling(manifest, args.seed))
    try:
      manifest_lib.check_compatible(manifest, val_manifest, "the --data manifest")
    except manifest_lib.ManifestError as e:
      raise cli.UsageError("--val_data", args.val_data, f"does not go with --data {args.data} "
                           f"({e})") from None
  job_manifest = storage.join(args.job_dir, settings.JOB_MANIFEST_NAME)
  if storage.exists(job_manifest):
    job = manifest_lib.read(job_manifest)
    theirs = {k: job["anchor"].get(k) for k in ("scales", "ratios")}
    if sampling is not None and theirs != {"scales": list(sampling[0].scales),
                                           "ratios": list(sampling[0].ratios)}:
      raise cli.UsageError("--job_dir", args.job_dir, f"holds a model trained with other "
                           f"anchors (scales {theirs['scales']}, ratios {theirs['ratios']}); "
                           f"pass those, or use a fresh --job_dir")
    try:
      manifest_lib.check_compatible(job, manifest, "--data")
    except manifest_lib.ManifestError as e:
      raise cli.UsageError("--job_dir", args.job_dir, f"holds a model of other data ({e}); use "
                           f"a fresh --job_dir") from None
  preflight.check_output(args.job_dir, "--job_dir")


def train_main(argv: Optional[Sequence[str]] = None) -> int:
  cli.setup_logging()
  args = train_parser().parse(argv)

  def command() -> int:
    check_train(args)
    cli.import_tensorflow_quietly()
    from trainer import train  # lazy: TensorFlow, after the checks
    with lock.hold(args.job_dir, "--job_dir", "rpn-train"), console.held_back(
        "rpn-train", enabled=not args.verbose):  # one run per job; TF's logs to the log
      cli.running(args.job_dir, "--job_dir")
      failures.clear_log(args.job_dir)  # an earlier failure's: this run resumes it
      last = train.train(args)
    print("final epoch: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(last.items())))
    print(f"model: {storage.join(args.job_dir, settings.WEIGHTS_NAME)}")
    return 0
  return cli.run_command("rpn-train", command, errors=(manifest_lib.ManifestError,))


# ---------------------------------------------------------------------------
# rpn-propose


def propose_parser() -> cli.Parser:
  defaults = config.ProposalConfig()
  parser = cli.Parser(prog="rpn-propose",
                      description="Region proposals of a trained RPN for whole images.")
  parser.add_argument("--job_dir", required=True,
                      help="output of rpn-train (rpn.weights.h5, manifest.json, train_config.json)")
  parser.add_argument("--input", help="dataset root of the ILSVRC 2015+ layout; annotations "
                      "(Annotations/<split>/<id>.xml) give the gt boxes")
  parser.add_argument("--split", default="DET/val", help="split under Data/ and Annotations/")
  parser.add_argument("--images", help="glob of image files (no gt boxes), e.g. 'dir/*.JPEG'")
  parser.add_argument("--output", required=True, help="output directory")
  parser.add_argument("--pre_nms_top_n", type=int, default=defaults.pre_nms_top_n,
                      help="boxes kept before NMS, best score first (0: all)")
  parser.add_argument("--post_nms_top_n", type=int, default=defaults.post_nms_top_n,
                      help="proposals kept after NMS (0: all)")
  parser.add_argument("--nms_thresh", type=float, default=defaults.nms_thresh)
  parser.add_argument("--min_size", type=float, default=defaults.min_size,
                      help="drop boxes narrower or lower than this, in pixels of the frame")
  parser.add_argument("--anchors", choices=("inside", "all"), default=defaults.anchors,
                      help="propose from the anchors inside the image (those training "
                      "labels) or from all anchors, clipped")
  parser.add_argument("--draw", type=int, default=8,
                      help="pictures of the first N images (top 20 proposals, gt boxes)")
  parser.add_argument("--weights", default=None,
                      help="backbone weights instead of the manifest's (imagenet|none|PATH)")
  return parser


def check_job_dir(job_dir: str, flag: str = "--job_dir") -> Dict:
  """A finished rpn-train job dir: its files are there; returns its manifest."""
  if not preflight.is_dir(job_dir):
    raise cli.UsageError(flag, job_dir, "no such directory")
  missing = [name for name in settings.JOB_FILES
             if not storage.exists(storage.join(job_dir, name))]
  if missing:
    raise cli.UsageError(flag, job_dir, f"has no {', '.join(missing)}: not the --job_dir of a "
                         f"finished rpn-train run")
  try:
    return manifest_lib.read(storage.join(job_dir, settings.JOB_MANIFEST_NAME))
  except manifest_lib.ManifestError as e:
    raise cli.UsageError(flag, job_dir, str(e)) from None


def check_propose(args: argparse.Namespace) -> None:
  """rpn-propose's checks: values in range, a finished job, images to propose
  for, backbone weights that exist, an output that can be written."""
  if args.pre_nms_top_n < 0 or args.post_nms_top_n < 0 or args.draw < 0:
    flag = next(f for f in ("pre_nms_top_n", "post_nms_top_n", "draw") if getattr(args, f) < 0)
    raise cli.UsageError(f"--{flag}", getattr(args, flag), "must be >= 0")
  if not 0 < args.nms_thresh <= 1:
    raise cli.UsageError("--nms_thresh", args.nms_thresh, "must be in (0, 1]")
  if args.min_size < 0:
    raise cli.UsageError("--min_size", args.min_size, "must be >= 0")
  manifest = check_job_dir(args.job_dir)
  if bool(args.input) == bool(args.images):
    raise cli.UsageError(None, None, "give exactly one of --input ROOT (ILSVRC layout, with "
                         "annotations) or --images GLOB")
  if args.weights:  # other weights than the job's: loaded once aside, beside the checks below
    backbone_check = preflight.start_backbone_check(
        manifest["backbone"], args.weights, manifest.get("feature_layer"),
        int(manifest.get("weights_seed", 0)))
  else:  # the job's own, which loaded when its shards were made: they must be here
    backbone_check = None
    try:
      preflight.check_weights_path(manifest["weights"])
    except cli.UsageError:
      raise cli.UsageError("--job_dir", args.job_dir, f"its backbone weights file "
                           f"{manifest['weights']} is not here; pass --weights PATH to that "
                           f"file") from None
  with preflight.Checks(backbone_check) as checks:
    if args.input:
      preflight.check_root(args.input)
      images_dir = preflight.check_split(args.input, args.split)
      preflight.check_images(images_dir, "--split", args.split)
    elif not storage.glob_some(args.images):
      raise cli.UsageError("--images", args.images, "no file matches")
    preflight.check_output(args.output)
    checks.finish()


def propose_main(argv: Optional[Sequence[str]] = None) -> int:
  cli.setup_logging()
  args = propose_parser().parse(argv)

  def command() -> int:
    check_propose(args)
    cli.import_tensorflow_quietly()
    from trainer import propose  # lazy: TensorFlow, after the checks
    with lock.hold(args.output, "--output", "rpn-propose"), console.held_back(
        "rpn-propose", enabled=not args.verbose):  # one run per directory
      cli.running(args.output)
      failures.clear_log(args.output)
      propose.report(propose.propose(args))
    return 0
  return cli.run_command("rpn-propose", command)
