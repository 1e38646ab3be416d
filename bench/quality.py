"""`make quality`: proposal quality of three settings on real features, same held-out images.

    python -m bench.quality [--out out/quality] [--epochs 10] [--weights PATH]
                            [--settings method,stride16,tuned] [--backbone VGG16]

On the sample data (DET/train to train, DET/val held out), with the real
ImageNet-derived VGG16 conv weights (RPN_VGG16_WEIGHTS, default
../shared/weights/vgg16_hed_notop.weights.h5 beside the checkout; without
them it says so and stops, exit 0):

  method    the method's settings: the backbone's final output (stride 32),
            scales 3, 6, 12, ratios 0.5, 1, 2
  stride16  the stride-16 layer (block5_conv3), the same anchors
  tuned     the stride-16 layer with the scales and ratios rpn-anchors suggests
            for DET/train

Each one: rpn-anchors (coverage of the held-out boxes), rpn-preprocess of both
splits, rpn-train, then rpn-propose on DET/val with the inside anchors and with
all anchors, and rpn-evaluate. Prints one table and writes it, with every
figure, to OUT/quality.json. Everything runs through the product's commands.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

from bench import common
from pipeline.commands import anchors as coverage_run
from pipeline.commands import preprocess, sample_data
from pipeline.io import storage
from pipeline.model import registry
from trainer import cli as trainer_cli
from trainer import evaluate, propose_pipeline

REPO = common.REPO
SAMPLE = os.path.join(REPO, "data", "sample")
TARGETS = {"recall@0.5": 0.95, "recall@0.7": 0.6, "ar": 0.5}  # issue: targets of "tuned"


@dataclasses.dataclass
class Setting:
  name: str
  feature_layer: Optional[str]
  scales: Sequence[float] = (3.0, 6.0, 12.0)
  ratios: Sequence[float] = (0.5, 1.0, 2.0)

  def flags(self) -> List[str]:
    out = ["--scales", ",".join(f"{s:g}" for s in self.scales),
           "--ratios", ",".join(f"{r:g}" for r in self.ratios)]
    return out + (["--feature_layer", self.feature_layer] if self.feature_layer else [])


def _log(message: str) -> None:
  print(f"[quality {time.strftime('%H:%M:%S')}] {message}", flush=True)


def coverage_of(args, setting: Setting, split: str, out: str) -> dict:
  return coverage_run.run(["--input", args.sample, "--split", split, "--output", out,
                           "--backbone", args.backbone, *setting.flags()])


def run_setting(args, setting: Setting) -> Dict:
  out = os.path.join(args.out, setting.name)
  common = ["--backbone", args.backbone, "--weights", args.weights, *setting.flags()]
  result: Dict = {"setting": dataclasses.asdict(setting)}
  start = time.monotonic()
  held_out = coverage_of(args, setting, "DET/val", os.path.join(out, "anchors_val"))
  result["coverage_val"] = held_out["current"]["coverage"]
  result["stride_val"] = held_out["stride"]
  for split in ("train", "val"):
    _log(f"{setting.name}: rpn-preprocess DET/{split}")
    preprocess.run(["--input", args.sample, "--split", f"DET/{split}",
                    "--output", os.path.join(out, "shards", split), *common])
  _log(f"{setting.name}: rpn-train, {args.epochs} epochs")
  trainer_cli.train_main(["--data", os.path.join(out, "shards", "train"),
                          "--val_data", os.path.join(out, "shards", "val"),
                          "--job_dir", os.path.join(out, "job"), "--epochs", str(args.epochs)])
  result["recall"] = {}
  for which in ("inside", "all"):
    proposals = os.path.join(out, f"proposals_{which}")
    propose_pipeline.propose(trainer_cli.check_propose(trainer_cli.propose_parser().parse(
        ["--job_dir", os.path.join(out, "job"), "--input", args.sample, "--split", "DET/val",
         "--output", proposals, "--anchors", which, "--draw", "4"])))
    recall = evaluate.run(["--proposals", proposals, "--input", args.sample,
                           "--split", "DET/val"])
    result["recall"][which] = {k: recall["results"]["300"][k]
                               for k in ("recall@0.5", "recall@0.7", "ar", "mean_proposals")}
    result["recall"][which]["num_gt"] = recall["num_gt"]
  result["seconds"] = round(time.monotonic() - start, 1)
  return result


def format_table(results: List[Dict]) -> str:
  lines = [f"{'setting':<9} {'layer':<13} {'stride':>6} {'scales':<16} {'ratios':<16} "
           f"{'cover@0.7':>9} {'anchors':>7} {'R@0.5':>6} {'R@0.7':>6} {'AR':>6} {'props':>6}"]
  for r in results:
    s = r["setting"]
    for which in ("inside", "all"):
      rec = r["recall"][which]
      lines.append(
          f"{s['name']:<9} {s['feature_layer'] or 'final':<13} "
          f"{r['stride_val']['x_median']:>6.1f} "
          f"{','.join(f'{v:g}' for v in s['scales']):<16} "
          f"{','.join(f'{v:g}' for v in s['ratios']):<16} "
          f"{r['coverage_val']['inside']['0.7']:>9.3f} {which:>7} {rec['recall@0.5']:>6.3f} "
          f"{rec['recall@0.7']:>6.3f} {rec['ar']:>6.3f} {rec['mean_proposals']:>6.0f}")
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__)
  parser.add_argument("--out", default=os.path.join(REPO, "out", "quality"))
  parser.add_argument("--sample", default=SAMPLE)
  parser.add_argument("--weights", default=common.vgg16_weights())
  parser.add_argument("--backbone", default="VGG16")
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--settings", default="method,stride16,tuned")
  parser.add_argument("--layer", default=None,
                      help="the finer layer of 'stride16' and 'tuned' (default: the backbone's "
                      "stride-16 layer; e.g. conv1 for --backbone TinyTestNet --weights none)")
  args = parser.parse_args(argv)
  if args.weights != "none" and not os.path.exists(args.weights):
    print(f"make quality: skipped: no VGG16 weights file at {args.weights} (set "
          f"RPN_VGG16_WEIGHTS to the real ImageNet-derived VGG16 conv weights; random weights "
          f"cannot show proposal quality)")
    return 0
  if not os.path.isdir(os.path.join(args.sample, "Data")):
    sample_data.main(["--output", args.sample])
  layer = args.layer or registry.STRIDE16_LAYERS[args.backbone]
  settings = {"method": Setting("method", None), "stride16": Setting("stride16", layer)}
  results = []
  wanted = args.settings.split(",")
  if "tuned" in wanted:
    _log(f"rpn-anchors on DET/train ({args.backbone} {layer})")
    suggestion = coverage_of(args, settings["stride16"], "DET/train",
                             os.path.join(args.out, "anchors_train"))
    print(coverage_run.format_report(suggestion), flush=True)
    settings["tuned"] = Setting("tuned", layer, tuple(suggestion["suggested"]["scales"]),
                                tuple(suggestion["suggested"]["ratios"]))
  for name in wanted:
    results.append(run_setting(args, settings[name]))
    print(format_table(results), flush=True)
  report = {"backbone": args.backbone, "weights": args.weights, "epochs": args.epochs,
            "held_out": "DET/val of the sample data", "results": results,
            "targets_tuned": TARGETS}
  storage.write_json(os.path.join(args.out, "quality.json"), report)
  print("\n=== proposal quality at top 300 on the held-out DET/val images "
        f"({results[0]['recall']['inside']['num_gt']} gt boxes)")
  print(format_table(results))
  tuned = next((r for r in results if r["setting"]["name"] == "tuned"), None)
  if tuned and args.weights != "none":  # the targets are for real features
    best = max(tuned["recall"].values(), key=lambda rec: rec["recall@0.7"])
    for key, target in TARGETS.items():
      status = "met" if best[key] >= target else "MISSED"
      print(f"tuned {key}: {best[key]:.3f} (target {target}): {status}")
  print(f"wrote {os.path.join(args.out, 'quality.json')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
