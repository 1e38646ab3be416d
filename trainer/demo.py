"""`make demo`: the whole product on the bundled sample data (about 11 minutes on 2 cores).

The README's recipe: sample data -> rpn-anchors with no setting flag (the
coverage of the anchors, and the recommended rpn-preprocess flags for this
data and backbone) -> rpn-preprocess of the train and val splits with those
flags (DirectRunner, all cores) -> rpn-draw (what the pipeline decided, as
pictures) -> rpn-train -> rpn-propose on the held-out val split with the
untrained and the trained RPN -> rpn-evaluate of both, printed side by side.

With --layout maps (make demo LAYOUT=maps) rpn-preprocess writes the feature
maps with the same flags but the anchors, which go to rpn-train instead
(--anchors_json, rpn-anchors' suggestion; the method's with --anchors
method): it draws the samples afresh every epoch.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import List, Optional, Sequence

from pipeline.beam import anchors as anchors_beam
from pipeline.commands import anchors as coverage_run
from pipeline.commands import draw, sample_data
from pipeline.commands import preprocess as run
from pipeline.core import recommend
from pipeline.io import storage
from pipeline.model import registry
from trainer import cli as trainer_cli
from trainer import evaluate, recall
from trainer import model as model_lib

SAMPLE = "data/sample"
AUTO = "auto"
VGG16_WEIGHTS_ENV = "RPN_VGG16_WEIGHTS"
# The real ImageNet-derived VGG16 conv weights, where the checkout sits beside
# the shared data (CI, this project's machines); RPN_VGG16_WEIGHTS overrides.
DEFAULT_VGG16_WEIGHTS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "shared", "weights", "vgg16_hed_notop.weights.h5")


def choose_settings(args: argparse.Namespace) -> None:
  """Fills in backbone, weights, epochs and a reason (in place).

  Real features show what an RPN learns; random ones show little (README,
  "make demo"). So 'auto' takes VGG16 with the real weights file when there
  is one, else TinyTestNet. The feature layer(s) stay as given: unset,
  rpn-anchors recommends them (two levels for VGG16, conv1 for TinyTestNet).
  """
  path = os.environ.get(VGG16_WEIGHTS_ENV) or DEFAULT_VGG16_WEIGHTS
  args.reason = "as given"
  if args.backbone == AUTO:
    if args.weights in (None, AUTO) and os.path.exists(path):
      args.backbone, args.weights = "VGG16", path
      args.reason = f"real VGG16 features ({path})"
    else:
      args.backbone = registry.TINY_BACKBONE
      args.reason = (f"no real weights file found ({VGG16_WEIGHTS_ENV} or {path}): the small "
                     f"random net, whose features show much less (README, 'make demo')")
  if args.weights in (None, AUTO):
    found = args.backbone == "VGG16" and os.path.exists(path)
    args.weights = path if found else "none"
  if args.epochs is None:
    args.epochs = 40 if args.backbone == registry.TINY_BACKBONE else 10


def anchor_flags(flags: Sequence[str]) -> List[str]:
  """The --scales and --ratios flags of a flag list, with their values."""
  out = []
  for i, flag in enumerate(flags[:-1]):
    if flag in ("--scales", "--ratios"):
      out += [flag, flags[i + 1]]
  return out


def with_anchors(flags: Sequence[str], block: dict) -> List[str]:
  """`flags` with the values of --scales and --ratios replaced by `block`'s
  (anchors.json's "current" or "suggested")."""
  values = {"--scales": block["scales"], "--ratios": block["ratios"]}
  out = list(flags)
  for i, flag in enumerate(out[:-1]):
    if flag in values:
      out[i + 1] = recommend.flag_value(values[flag])
  return out


def _step(title: str) -> float:
  print(f"\n=== {title}", flush=True)
  return time.monotonic()


def _done(start: float) -> None:
  print(f"    ({time.monotonic() - start:.0f} s)", flush=True)


def _ok(code: int, command: str) -> None:
  """Stops the demo where a step failed (the step printed why)."""
  if code:
    print(f"demo: {command} failed (exit code {code}); stopping", file=sys.stderr)
    sys.exit(code)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m trainer.demo")
  parser.add_argument("--out", default="out")
  parser.add_argument("--sample", default=SAMPLE)
  parser.add_argument("--backbone", default=AUTO,
                      help="'auto': VGG16 with the real weights file when one is found "
                      "(RPN_VGG16_WEIGHTS, else shared/weights beside the checkout), else "
                      "TinyTestNet with random weights")
  parser.add_argument("--weights", default=None,
                      help="default: the file 'auto' found, else none (random)")
  parser.add_argument("--epochs", type=int, default=None,
                      help="default: 10 on real features, 40 on TinyTestNet")
  parser.add_argument("--feature_layer", default=None,
                      help="backbone layer of the feature map ('' for the final output); "
                      "default: what rpn-anchors recommends for the backbone (VGG16: "
                      "block4_conv3,block5_conv3; TinyTestNet: conv1)")
  parser.add_argument("--anchors", choices=("suggested", "method"), default="suggested",
                      help="train with the recommended flags as they are, or with the "
                      "method's scales and ratios (3,6,12 and 0.5,1,2) in their place")
  parser.add_argument("--layout", choices=("tiles", "maps"), default="tiles",
                      help="tiles: the anchors are fixed at rpn-preprocess (the method); "
                      "maps: rpn-preprocess writes the feature maps and rpn-train draws the "
                      "samples every epoch with the anchors it is given")
  args = parser.parse_args(argv)
  choose_settings(args)
  layer_shown = ("recommended layers" if args.feature_layer is None
                 else args.feature_layer or "final output")
  print(f"demo settings: {args.backbone} ({layer_shown}), weights "
        f"{args.weights}, {args.epochs} epochs, {args.anchors} anchors, layout {args.layout}; "
        f"{args.reason}")
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")

  out = args.out
  shards = {split: os.path.join(out, "shards", split) for split in ("train", "val")}
  if not os.path.isdir(os.path.join(args.sample, "Data")):
    start = _step(f"sample data -> {args.sample}")
    sample_data.main(["--output", args.sample])
    _done(start)

  layer = [] if args.feature_layer is None else ["--feature_layer", args.feature_layer]
  start = _step(f"rpn-anchors DET/train: the recommended rpn-preprocess flags for "
                f"{args.backbone} on this data, and the anchors' coverage")
  coverage = coverage_run.run(["--input", args.sample, "--split", "DET/train",
                               "--output", os.path.join(out, "anchors"),
                               "--backbone", args.backbone, *layer])
  print(coverage_run.format_report(coverage))
  flags = list(coverage["recommended_flags"])
  if args.anchors == "method":
    flags = with_anchors(flags, coverage["current"])
  print(f"rpn-preprocess flags: {' '.join(flags)}")
  _done(start)
  # maps: the same flags but the anchors, which rpn-train takes (rpn-anchors'
  # anchors.json) and draws afresh every epoch, and rpn-draw draws with
  preprocess_flags, draw_anchors, train_anchors = flags, [], []
  if args.layout == "maps":
    anchors = anchor_flags(flags)
    preprocess_flags = [f for f in flags if f not in anchors] + ["--layout", "maps"]
    draw_anchors = anchors
    train_anchors = ["--anchors_json", os.path.join(out, "anchors", anchors_beam.ANCHORS_NAME)]
    if args.anchors == "method":
      train_anchors = anchors

  # No runner options: rpn-preprocess's local default (all cores, one process each).
  for split, num_shards in (("train", 4), ("val", 1)):
    start = _step(f"rpn-preprocess DET/{split} -> {shards[split]}")
    result = run.run(["--input", args.sample, "--split", f"DET/{split}",
                      "--output", shards[split], "--weights", args.weights,
                      "--num_shards", str(num_shards),
                      *preprocess_flags])
    print(run.summary(result.manifest))
    _done(start)

  start = _step("rpn-draw: anchors and sampled labels of 3 training images")
  _ok(draw.main(["--shards", shards["train"], "--input", args.sample, "--split", "DET/train",
                 "--count", "3", "--output", os.path.join(out, "pictures", "anchors"),
                 *draw_anchors]), "rpn-draw")
  _done(start)

  job = os.path.join(out, "job")
  start = _step(f"rpn-train -> {job}")
  _ok(trainer_cli.train_main(["--data", shards["train"], "--val_data", shards["val"],
                              "--job_dir", job, "--epochs", str(args.epochs), *train_anchors]),
      "rpn-train")
  _done(start)

  # The same RPN before training: same architecture, initial weights.
  untrained = os.path.join(out, "job_untrained")
  _, _, job_manifest, train_config = model_lib.load_rpn(job)  # the anchors it trained with
  model_lib.save_untrained_rpn(untrained, job_manifest, train_config)

  results = {}
  for name, job_dir in (("untrained RPN", untrained), ("trained RPN", job)):
    proposals = os.path.join(out, "proposals", name.split()[0])
    start = _step(f"rpn-propose ({name}) on DET/val -> {proposals}")
    _ok(trainer_cli.propose_main(["--job_dir", job_dir, "--input", args.sample,
                                  "--split", "DET/val", "--output", proposals, "--draw", "6"]),
        "rpn-propose")
    _done(start)
    start = _step(f"rpn-evaluate ({name})")
    _ok(evaluate.main(["--proposals", proposals, "--input", args.sample, "--split", "DET/val"]),
        "rpn-evaluate")
    results[name] = storage.read_json(os.path.join(proposals, evaluate.RECALL_NAME))
    _done(start)

  print("\n=== proposal recall on the held-out DET/val split")
  print(recall.format_comparison(results))
  before, after = (results[name]["results"]["300"]["recall@0.7"]
                   for name in ("untrained RPN", "trained RPN"))
  print(f"recall@300 at IoU 0.7: trained {after:.3f} against untrained {before:.3f} "
        f"({after / max(before, 1e-9):.2f}x)")
  print(f"\npictures: {os.path.join(out, 'pictures', 'anchors')} (anchors, labels), "
        f"{os.path.join(out, 'proposals', 'trained', 'pictures')} (proposals), "
        f"{os.path.join(out, 'proposals', 'trained')} (recall plot)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
