"""`make demo`: the whole product on the bundled sample data, in a few minutes.

sample data -> rpn-anchors (coverage of the method's anchors at the chosen
layer, and the suggested set it trains with) -> rpn-preprocess (train and val
splits, DirectRunner, all cores) -> rpn-draw (what the pipeline decided, as
pictures) -> rpn-train -> rpn-propose on the held-out val split with the
untrained and the trained RPN -> rpn-evaluate
of both, printed side by side.

With --layout maps (make demo LAYOUT=maps) rpn-preprocess writes the feature
maps, and the anchors go to rpn-train instead (--anchors_json, rpn-anchors'
suggestion), which draws the samples afresh every epoch.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Optional, Sequence

from pipeline.beam import anchors as anchors_beam
from pipeline.commands import anchors as coverage_run
from pipeline.commands import draw, sample_data
from pipeline.commands import preprocess as run
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
TINY_LAYER = "conv1"  # TinyTestNet's stride-8 layer: its only map finer than stride 32


def choose_settings(args: argparse.Namespace) -> None:
  """Fills in backbone, weights, feature_layer, epochs and a reason (in place).

  Real features show what an RPN learns; random ones show little (README,
  "make demo"). So 'auto' takes VGG16 with the real weights file when there
  is one, at its stride-16 layer, else TinyTestNet at its stride-8 layer.
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
  if args.feature_layer is None:
    args.feature_layer = (TINY_LAYER if args.backbone == registry.TINY_BACKBONE
                          else registry.STRIDE16_LAYERS.get(args.backbone, ""))
  if args.epochs is None:
    args.epochs = 40 if args.backbone == registry.TINY_BACKBONE else 10


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
                      "default: the stride-16 layer (TinyTestNet: conv1, stride 8)")
  parser.add_argument("--anchors", choices=("suggested", "method"), default="suggested",
                      help="train with rpn-anchors' suggested scales and ratios, or the "
                      "method's 3,6,12 and 0.5,1,2")
  parser.add_argument("--layout", choices=("tiles", "maps"), default="tiles",
                      help="tiles: the anchors are fixed at rpn-preprocess (the method); "
                      "maps: rpn-preprocess writes the feature maps and rpn-train draws the "
                      "samples every epoch with the anchors it is given")
  args = parser.parse_args(argv)
  choose_settings(args)
  print(f"demo settings: {args.backbone} ({args.feature_layer or 'final output'}), weights "
        f"{args.weights}, {args.epochs} epochs, {args.anchors} anchors, layout {args.layout}; "
        f"{args.reason}")
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")

  out = args.out
  shards = {split: os.path.join(out, "shards", split) for split in ("train", "val")}
  if not os.path.isdir(os.path.join(args.sample, "Data")):
    start = _step(f"sample data -> {args.sample}")
    sample_data.main(["--output", args.sample])
    _done(start)

  layer = ["--feature_layer", args.feature_layer] if args.feature_layer else []
  start = _step(f"rpn-anchors DET/train: coverage of the method's anchors at "
                f"{args.backbone} {args.feature_layer or 'final output'}, and a better set")
  coverage = coverage_run.run(["--input", args.sample, "--split", "DET/train",
                               "--output", os.path.join(out, "anchors"),
                               "--backbone", args.backbone, *layer])
  print(coverage_run.format_report(coverage))
  chosen = coverage[args.anchors if args.anchors == "suggested" else "current"]
  anchors = ["--scales", ",".join(f"{v:g}" for v in chosen["scales"]),
             "--ratios", ",".join(f"{v:g}" for v in chosen["ratios"])]
  print(f"training with the {args.anchors} anchors: {' '.join(anchors)}")
  _done(start)
  # tiles: the anchors are fixed when the shards are made; maps: at training,
  # from rpn-anchors' anchors.json (the method's are rpn-train's defaults)
  preprocess_anchors, draw_anchors, train_anchors = anchors, [], []
  if args.layout == "maps":
    preprocess_anchors, draw_anchors = ["--layout", "maps"], anchors
    if args.anchors == "suggested":
      train_anchors = ["--anchors_json", os.path.join(out, "anchors", anchors_beam.ANCHORS_NAME)]

  # No runner options: rpn-preprocess's local default (all cores, one process each).
  for split, num_shards in (("train", 4), ("val", 1)):
    start = _step(f"rpn-preprocess DET/{split} -> {shards[split]}")
    result = run.run(["--input", args.sample, "--split", f"DET/{split}",
                      "--output", shards[split], "--backbone", args.backbone,
                      "--weights", args.weights, "--num_shards", str(num_shards),
                      *layer, *preprocess_anchors])
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
