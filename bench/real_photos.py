"""Proposal quality on real photographs, over seeds, beside Selective Search (`make quality`).

    python -m bench.real_photos [--data ../shared/data/coco_real] [--out out/quality/real]
                                [--recipes readme] [--seeds 0,1,2] [--weights PATH]

The data: real photographs with human-drawn boxes in the ILSVRC layout
(default ../shared/data/coco_real beside the checkout, or RPN_REAL_PHOTOS;
without it the part is skipped with a message). DET/train trains, DET/val is
held out and only reported on. The backbone is VGG16 with the real
ImageNet-derived conv weights (RPN_VGG16_WEIGHTS, default
../shared/weights/vgg16_hed_notop.weights.h5).

Each recipe runs the product's commands as a user would: rpn-anchors on
DET/train (its suggested anchors), then for every seed rpn-preprocess of both
splits (--seed), rpn-train (--seed), rpn-propose on the held-out images and on
the training images, and rpn-evaluate of both. The figures are the mean and
the spread (sample standard deviation, min, max) over the seeds: recall at
IoU 0.5 and 0.7 and AR for the top 100, 300 and 1000 proposals, AR by gt size
(COCO's small < 32², medium < 96², large), and beside them the training
figures (the same recall on the training images, the last epoch's losses)
so that over-fitting shows.

Selective Search (OpenCV, fast mode, its own order, up to 2,000 boxes; the
`bench` extra) runs once on the same held-out images and is printed as a row
beside the recipes. It has no seed and no training.

A recipe may reuse another's trained jobs (a change of rpn-propose's flags
only) or its shards (a change of rpn-train's flags only), and "stop" holds
out a fifth of DET/train to stop training on, so that DET/val stays unseen.

rpn-propose keeps 1,000 proposals per image here (--post_nms_top_n 1000, the
number detectron2 keeps at test time) so that AR@1000 can be measured; every
other setting is the recipe's.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import math
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from bench import common, selective_search
from pipeline.commands import anchors as anchors_run
from pipeline.commands import preprocess
from pipeline.io import ilsvrc, storage
from trainer import cli as trainer_cli
from trainer import evaluate, propose_pipeline

REPO = common.REPO
TOP_NS = (100, 300, 1000)
SIZES = ("small", "medium", "large")
SS_TOP_NS = (100, 300, 1000, 2000)
POST_NMS_TOP_N = 1000
# The targets on held-out real photos (the README's recipe).
TARGETS = {"ar@1000": 0.40, "ar@300": 0.30, "ar_small@300": 0.10, "r@300@0.5": 0.70}


@dataclasses.dataclass(frozen=True)
class Recipe:
  """One way to run the commands: the flags each command gets beyond the data's.

  anchors: "suggested" takes rpn-anchors' suggested scales and ratios for
  DET/train (found with frame_flags and anchors_flags); "given" uses the
  scales and ratios in preprocess_flags as they are; with layout "maps" the
  anchor flags go to rpn-train instead of rpn-preprocess. reuses: the name of a
  recipe (run before it) whose trained jobs this one proposes with, for a
  recipe that only changes rpn-propose's flags. trains_on: the name of a
  recipe (run before it) whose shards this one trains on with its own
  train_flags, for a recipe that only changes rpn-train's flags.
  stop_fraction: hold out that share of the DET/train images (by sha256 of
  the image id) as rpn-train's --val_data, train on the rest, and propose with
  JOB/best/ (the epoch of least val_loss on them): early stopping that never
  sees DET/val.
  """
  name: str
  description: str
  feature_layer: str = "block5_conv3"
  anchors: str = "suggested"
  frame_flags: Tuple[str, ...] = ()  # the resize: rpn-anchors and rpn-preprocess
  anchors_flags: Tuple[str, ...] = ()
  preprocess_flags: Tuple[str, ...] = ()
  train_split_flags: Tuple[str, ...] = ()  # rpn-preprocess of the training images only
  train_flags: Tuple[str, ...] = ()
  propose_flags: Tuple[str, ...] = ()
  reuses: Optional[str] = None
  trains_on: Optional[str] = None
  stop_fraction: float = 0.0
  layout: str = "tiles"  # maps: the anchors go to rpn-train, drawn afresh every epoch
  # several feature levels (--feature_layers) instead of feature_layer
  feature_layers: Tuple[str, ...] = ()
  # the README's recipe since issue 21 part 4: rpn-anchors with no setting
  # flag, then rpn-preprocess of both splits with its recommended_flags (the
  # backbone, layers, anchors and frame flags above are not used)
  recommended: bool = False

  @property
  def layer_flags(self) -> List[str]:
    """--feature_layer, or --feature_layers of a recipe of several levels."""
    if self.feature_layers:
      return ["--feature_layers", ",".join(self.feature_layers)]
    return ["--feature_layer", self.feature_layer]


# The README's recipe first; each other recipe changes one lever of the
# README's recipe before issue 21 part 4 ("readme").
RECIPES: Dict[str, Recipe] = {r.name: r for r in (
    Recipe("recommended", "README: rpn-anchors with no setting flag, rpn-preprocess of both "
           "splits with its recommended flags, every other default", recommended=True),
    Recipe("readme", "README of 0.6: block5_conv3, rpn-anchors' suggested 3 scales, defaults"),
    Recipe("scale600", "readme + --min_side 600 --max_side 1000",
           frame_flags=("--min_side", "600", "--max_side", "1000")),
    Recipe("block4", "readme at the stride-8 layer block4_conv3", feature_layer="block4_conv3"),
    Recipe("scales6", "readme with rpn-anchors searching 6 scales (from 1,2,4,8,16,32)",
           anchors_flags=("--scales", "1,2,4,8,16,32")),
    Recipe("maps", "readme in the maps layout: anchors sampled afresh every epoch",
           layout="maps"),
    Recipe("minsize0", "readme + rpn-propose --min_size 0", propose_flags=("--min_size", "0"),
           reuses="readme"),
    Recipe("nms0.6", "readme + rpn-propose --nms_thresh 0.6", reuses="readme",
           propose_flags=("--nms_thresh", "0.6")),
    Recipe("nms0.5", "readme + rpn-propose --nms_thresh 0.5", reuses="readme",
           propose_flags=("--nms_thresh", "0.5")),
    Recipe("prenms12k", "readme + rpn-propose --pre_nms_top_n 12000", reuses="readme",
           propose_flags=("--pre_nms_top_n", "12000")),
    Recipe("flip", "readme + rpn-preprocess --flip of the training images",
           train_split_flags=("--flip",)),
    Recipe("fg0.5", "maps + rpn-train --fg_iou_thresh 0.5: positives from IoU 0.5",
           layout="maps", train_flags=("--fg_iou_thresh", "0.5"), trains_on="maps"),
    Recipe("hidden128", "readme with a smaller head: rpn-train --hidden 128",
           train_flags=("--hidden", "128"), trains_on="readme"),
    Recipe("dropout", "readme + rpn-train --dropout 0.5", train_flags=("--dropout", "0.5"),
           trains_on="readme"),
    Recipe("decay", "readme + rpn-train --weight_decay 0.1 (AdamW)",
           train_flags=("--weight_decay", "0.1"), trains_on="readme"),
    Recipe("epochs20", "readme + rpn-train --epochs 20", train_flags=("--epochs", "20"),
           trains_on="readme"),
    Recipe("levels", "readme on two feature levels, --feature_layers block4_conv3,block5_conv3 "
           "(strides 8 and 16), rpn-anchors' suggested scales for both",
           feature_layers=("block4_conv3", "block5_conv3")),
    Recipe("levels_fg0.5", "levels + rpn-preprocess --fg_iou_thresh 0.5",
           feature_layers=("block4_conv3", "block5_conv3"),
           preprocess_flags=("--fg_iou_thresh", "0.5")),
    Recipe("levels_flip", "levels + rpn-preprocess --flip of the training images",
           feature_layers=("block4_conv3", "block5_conv3"), train_split_flags=("--flip",)),
    Recipe("levels_flip_s5", "levels_flip with rpn-anchors searching 5 scales "
           "(--num_scales 5)", feature_layers=("block4_conv3", "block5_conv3"),
           train_split_flags=("--flip",), anchors_flags=("--num_scales", "5")),
    Recipe("levels3_flip", "levels_flip with VGG16's stride-4 level too, --feature_layers "
           "block3_conv3,block4_conv3,block5_conv3 (256, 512, 512 channels: a 1x1 projection "
           "per level, rpn-train's default 256 wide)",
           feature_layers=("block3_conv3", "block4_conv3", "block5_conv3"),
           train_split_flags=("--flip",)),
    Recipe("recommended_minsize0", "recommended + rpn-propose --min_size 0",
           propose_flags=("--min_size", "0"), reuses="recommended", recommended=True),
    Recipe("stop", "readme trained on 80% of DET/train for up to 20 epochs, early stopping "
           "(patience 4) on the other 20%, proposing with JOB/best",
           train_flags=("--epochs", "20", "--early_stopping_patience", "4"),
           stop_fraction=0.2),
)}


def _log(message: str) -> None:
  print(f"[real-photos {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------
# Figures


def figures(recall: dict) -> Dict[str, Optional[float]]:
  """The flat figures of one recall.json: r@N@0.5, r@N@0.7, ar@N, ar_<size>@N."""
  out: Dict[str, Optional[float]] = {}
  for top_n, r in recall["results"].items():
    out[f"r@{top_n}@0.5"] = r["recall@0.5"]
    out[f"r@{top_n}@0.7"] = r["recall@0.7"]
    out[f"ar@{top_n}"] = r["ar"]
    for size, s in r.get("by_size", {}).items():
      out[f"ar_{size}@{top_n}"] = s["ar"]
  return out


def training_figures(job_dir: str) -> Dict[str, float]:
  """The last epoch's losses and positive precision, train and held-out (history.csv)."""
  with open(os.path.join(job_dir, "history.csv")) as f:
    rows = list(csv.DictReader(f))
  last = rows[-1]
  keys = ("loss", "val_loss", "scores_loss", "val_scores_loss", "scores_positive_precision",
          "val_scores_positive_precision")
  out = {key: float(last[key]) for key in keys if last.get(key) not in (None, "")}
  if rows and rows[0].get("val_loss"):
    out["best_val_epoch"] = min(range(len(rows)), key=lambda i: float(rows[i]["val_loss"]))
  return out


def summarise(runs: Sequence[Dict[str, Optional[float]]]) -> Dict[str, Dict[str, float]]:
  """{figure: {mean, sd, min, max, n}} over the runs (seeds); sd is the sample one (n - 1)."""
  out = {}
  for key in runs[0]:
    values = [r[key] for r in runs if r.get(key) is not None]
    if not values:
      continue
    mean = sum(values) / len(values)
    sd = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
          if len(values) > 1 else 0.0)
    out[key] = {"mean": mean, "sd": sd, "min": min(values), "max": max(values),
                "n": len(values)}
  return out


# ---------------------------------------------------------------------------
# Runs


def suggested_anchors(args, recipe: Recipe, out: str) -> Tuple[List[str], dict]:
  """(the anchor flags for rpn-preprocess, anchors.json) for the recipe; a
  recommended recipe's are all of rpn-anchors' recommended flags."""
  if recipe.recommended:
    report = anchors_run.run(["--input", args.data, "--split", "DET/train", "--output", out,
                              "--backbone", "VGG16"])
    return list(report["recommended_flags"]), report
  report = anchors_run.run(["--input", args.data, "--split", "DET/train", "--output", out,
                            "--backbone", "VGG16", *recipe.layer_flags,
                            *recipe.frame_flags, *recipe.anchors_flags])
  if recipe.anchors != "suggested":
    return [], report
  suggested = report["suggested"]
  return (["--scales", ",".join(f"{s:g}" for s in suggested["scales"]),
           "--ratios", ",".join(f"{r:g}" for r in suggested["ratios"])], report)


def evaluate_split(args, job: str, split: str, out: str, propose_flags: Sequence[str]) -> dict:
  """rpn-propose then rpn-evaluate on one split; returns recall.json."""
  propose_pipeline.propose(trainer_cli.check_propose(trainer_cli.propose_parser().parse(
      ["--job_dir", job, "--input", args.data, "--split", split, "--output", out,
       "--post_nms_top_n", str(POST_NMS_TOP_N), "--draw", "0", *propose_flags])))
  return evaluate.run(["--proposals", out, "--input", args.data, "--split", split,
                       "--top_n", ",".join(map(str, TOP_NS))])


def run_seed(args, recipe: Recipe, anchor_flags: Sequence[str], seed: int) -> Dict:
  out = os.path.join(args.out, recipe.name, f"seed{seed}")
  if recipe.reuses:
    job = os.path.join(args.out, recipe.reuses, f"seed{seed}", "job")
    if not os.path.exists(os.path.join(job, "rpn.weights.h5")):
      raise SystemExit(f"recipe {recipe.name} proposes with {recipe.reuses}'s jobs: run "
                       f"--recipes {recipe.reuses},{recipe.name}")
    return propose_and_evaluate(args, recipe, job, out, seed, {})
  maps = recipe.layout == "maps"
  seconds = {}
  if recipe.trains_on:
    shards = os.path.join(args.out, recipe.trains_on, f"seed{seed}", "shards")
    if not os.path.exists(os.path.join(shards, "train", "manifest.json")):
      raise SystemExit(f"recipe {recipe.name} trains on {recipe.trains_on}'s shards: run "
                       f"--recipes {recipe.trains_on},{recipe.name}")
  else:
    shards = os.path.join(out, "shards")
    common = ["--backbone", "VGG16", "--weights", args.weights, *recipe.layer_flags,
              "--seed", str(seed), "--layout", recipe.layout,
              *recipe.frame_flags, *([] if maps else anchor_flags), *recipe.preprocess_flags]
    if recipe.recommended:  # the backbone, layers, frame and anchors among them
      common = ["--weights", args.weights, "--seed", str(seed), "--layout", recipe.layout,
                *anchor_flags, *recipe.preprocess_flags]
    start = time.monotonic()
    for split, where, image_set in preprocess_parts(args, recipe, out):
      _log(f"{recipe.name} seed {seed}: rpn-preprocess {where} into shards/{split}")
      preprocess.run(["--input", args.data, "--split", where,
                      "--output", os.path.join(shards, split), *common,
                      *(["--image_set", image_set] if image_set else []),
                      *(recipe.train_split_flags if split == "train" else [])])
    seconds["preprocess"] = time.monotonic() - start
  job = os.path.join(out, "job")
  _log(f"{recipe.name} seed {seed}: rpn-train")
  start = time.monotonic()
  trainer_cli.train_main(["--data", os.path.join(shards, "train"),
                          "--val_data", os.path.join(shards, "stop" if recipe.stop_fraction
                                                     else "val"),
                          "--job_dir", job, "--seed", str(seed),
                          *(anchor_flags if maps and not recipe.recommended else []),
                          *recipe.train_flags])
  seconds["train"] = time.monotonic() - start
  return propose_and_evaluate(args, recipe, job, out, seed, seconds)


def stop_split(image_ids: Sequence[str], fraction: float) -> Tuple[List[str], List[str]]:
  """(train ids, stop ids): the ids whose sha256, read as a number in [0, 1),
  is under `fraction` are held out for stopping; the same split on every run."""
  def position(image_id: str) -> float:
    return int(hashlib.sha256(image_id.encode("utf-8")).hexdigest(), 16) / 16 ** 64
  stop = sorted(i for i in image_ids if position(i) < fraction)
  return sorted(set(image_ids) - set(stop)), stop


def preprocess_parts(args, recipe: Recipe, out: str) -> List[Tuple[str, str, Optional[str]]]:
  """(shard dir name, split, image set file or None) of each rpn-preprocess run:
  DET/train and DET/val, or with stop_fraction DET/train's two parts."""
  if not recipe.stop_fraction:
    return [("train", "DET/train", None), ("val", "DET/val", None)]
  images = os.path.join(args.data, "Data", "DET", "train")
  ids = [ilsvrc.relative_id(path, images)
         for path in ilsvrc.list_files(images, ilsvrc.IMAGE_EXTENSIONS)]
  parts = []
  for name, part in zip(("train", "stop"), stop_split(ids, recipe.stop_fraction), strict=True):
    path = os.path.join(out, f"{name}.txt")
    os.makedirs(out, exist_ok=True)
    with open(path, "w") as f:
      f.write("".join(f"{image_id}\n" for image_id in part))
    parts.append((name, "DET/train", path))
  return parts


def propose_and_evaluate(args, recipe: Recipe, job: str, out: str, seed: int,
                         seconds: Dict[str, float]) -> Dict:
  _log(f"{recipe.name} seed {seed}: rpn-propose and rpn-evaluate")
  start = time.monotonic()
  model = os.path.join(job, "best") if recipe.stop_fraction else job
  held_out = evaluate_split(args, model, "DET/val", os.path.join(out, "proposals_val"),
                            recipe.propose_flags)
  seconds["propose_val"] = time.monotonic() - start
  train = evaluate_split(args, model, "DET/train", os.path.join(out, "proposals_train"),
                         recipe.propose_flags)
  return {"seed": seed, "held_out": figures(held_out), "train": figures(train),
          "training": training_figures(job), "num_gt_held_out": held_out["num_gt"],
          "seconds": {k: round(v, 1) for k, v in seconds.items()}}


def run_recipe(args, recipe: Recipe) -> Dict:
  _log(f"{recipe.name}: rpn-anchors on DET/train ({recipe.description})")
  anchor_flags, report = suggested_anchors(args, recipe, os.path.join(args.out, recipe.name,
                                                                     "anchors"))
  runs = [run_seed(args, recipe, anchor_flags, seed) for seed in args.seeds]
  return {"recipe": dataclasses.asdict(recipe), "anchor_flags": anchor_flags,
          "coverage_train": report["suggested" if anchor_flags else "current"]["coverage"],
          "runs": runs,
          "held_out": summarise([r["held_out"] for r in runs]),
          "train": summarise([r["train"] for r in runs]),
          "training": summarise([r["training"] for r in runs])}


def run_selective_search(args) -> Optional[Dict]:
  missing = selective_search.available()
  if missing:
    _log(f"Selective Search row skipped: {missing}")
    return None
  out = os.path.join(args.out, "selective_search")
  _log("Selective Search on DET/val")
  result = selective_search.run(args.data, "DET/val", out)
  recall = evaluate.run(["--proposals", out, "--input", args.data, "--split", "DET/val",
                         "--top_n", ",".join(map(str, SS_TOP_NS))])
  return {"held_out": figures(recall), "seconds_per_image": result["seconds_per_image"],
          "num_gt_held_out": recall["num_gt"]}


# ---------------------------------------------------------------------------
# Tables


HELD_OUT_COLUMNS = ("ar@100", "ar@300", "ar@1000", "ar_small@300", "ar_medium@300",
                    "ar_large@300", "ar_small@1000", "r@300@0.5", "r@300@0.7")
RECALL_COLUMNS = tuple(f"r@{n}@{iou}" for n in TOP_NS for iou in ("0.5", "0.7"))


WIDTH = 14  # a column: "ar_medium@300" or "0.123±0.004", with room between


def _cell(summary: Dict, key: str, spread: bool) -> str:
  s = summary.get(key)
  if s is None:
    return f"{'-':>{WIDTH}}"
  if not spread:
    return f"{s['mean']:>{WIDTH}.3f}" if isinstance(s, dict) else f"{s:>{WIDTH}.3f}"
  return f"{'':>{WIDTH - 11}}{s['mean']:>5.3f}±{s['sd']:<5.3f}"


def format_tables(result: Dict) -> str:
  """The held-out table (mean±sd over seeds), its recall table, and the training figures."""
  recipes, ss = result["recipes"], result.get("selective_search")
  seeds = ",".join(map(str, result["seeds"]))
  blocks = []
  for title, columns in (("held-out DET/val", HELD_OUT_COLUMNS),
                         ("held-out DET/val, recall", RECALL_COLUMNS)):
    lines = [f"{title}: mean±sd over seeds {seeds}",
             f"{'':<18}" + "".join(f"{c:>{WIDTH}}" for c in columns)]
    for r in recipes:
      lines.append(f"{r['recipe']['name']:<18}"
                   + "".join(_cell(r["held_out"], c, True) for c in columns))
    if ss:
      lines.append(f"{'selective search':<18}"
                   + "".join(_cell(ss["held_out"], c, False) for c in columns))
    blocks.append("\n".join(lines))
  columns = ("ar@300", "ar@1000", "r@300@0.5", "r@300@0.7")
  lines = ["training figures beside held-out (mean over seeds): AR and recall on the training "
           "images | the last epoch's loss",
           f"{'':<18}" + "".join(f"{'train ' + c:>16}" for c in columns)
           + f"{'loss':>8}{'val_loss':>9}{'best ep':>8}"]
  for r in recipes:
    training = r["training"]
    lines.append(f"{r['recipe']['name']:<18}"
                 + "".join(f"{r['train'][c]['mean']:>16.3f}" if c in r["train"] else f"{'-':>16}"
                           for c in columns)
                 + f"{training.get('loss', {}).get('mean', math.nan):>8.3f}"
                 + f"{training.get('val_loss', {}).get('mean', math.nan):>9.3f}"
                 + f"{training.get('best_val_epoch', {}).get('mean', math.nan):>8.1f}")
  blocks.append("\n".join(lines))
  if ss:
    blocks.append("selective search at 2000 boxes: " + ", ".join(
        f"{k} {ss['held_out'][k]:.3f}" for k in ("ar@2000", "r@2000@0.5", "r@2000@0.7"))
        + f"; {ss['seconds_per_image']:.2f} s an image on one core")
  return "\n\n".join(blocks)


def targets_report(recipe_result: Dict) -> List[str]:
  lines = []
  for key, target in TARGETS.items():
    value = recipe_result["held_out"][key]["mean"]
    lines.append(f"{recipe_result['recipe']['name']} {key}: {value:.3f} (target {target}): "
                 f"{'met' if value >= target else 'MISSED'}")
  return lines


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m bench.real_photos",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", default=common.real_photos(),
                      help="dataset root with DET/train and DET/val")
  parser.add_argument("--out", default=os.path.join(REPO, "out", "quality", "real"))
  parser.add_argument("--weights", default=common.vgg16_weights())
  parser.add_argument("--recipes", default="recommended",
                      help=f"comma-separated, of {', '.join(RECIPES)}")
  parser.add_argument("--seeds", default="0,1,2",
                      type=lambda s: tuple(int(v) for v in s.split(",")))
  parser.add_argument("--no_selective_search", action="store_true")
  args = parser.parse_args(argv)
  unknown = [name for name in args.recipes.split(",") if name not in RECIPES]
  if unknown:
    parser.error(f"unknown recipe(s) {unknown}; known: {', '.join(RECIPES)}")
  return args


def skipped(args) -> Optional[str]:
  """Why the part cannot run here (one line), or None."""
  for split in ("train", "val"):
    if not os.path.isdir(os.path.join(args.data, "Annotations", "DET", split)):
      return (f"no real photos at {args.data} (DET/{split} missing; set RPN_REAL_PHOTOS to a "
              f"dataset root with DET/train and DET/val)")
  if not os.path.exists(args.weights):
    return (f"no VGG16 weights file at {args.weights} (set RPN_VGG16_WEIGHTS; random weights "
            f"cannot show proposal quality)")
  return None


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  why = skipped(args)
  if why:
    print(f"make quality (real photos): skipped: {why}")
    return 0
  start = time.monotonic()
  result = {"data": args.data, "weights": args.weights, "seeds": list(args.seeds),
            "post_nms_top_n": POST_NMS_TOP_N, "targets": TARGETS, "recipes": []}
  if not args.no_selective_search:
    result["selective_search"] = run_selective_search(args)
  for name in args.recipes.split(","):
    result["recipes"].append(run_recipe(args, RECIPES[name]))
    storage.write_json(os.path.join(args.out, "real_photos.json"), result)
    print(format_tables(result), flush=True)
  result["seconds"] = round(time.monotonic() - start, 1)
  storage.write_json(os.path.join(args.out, "real_photos.json"), result)
  num_gt = result["recipes"][0]["runs"][0]["num_gt_held_out"]
  print(f"\n=== proposal quality on held-out real photos ({num_gt} gt boxes in DET/val of "
        f"{args.data}), VGG16, {len(args.seeds)} seeds, {POST_NMS_TOP_N} proposals per image")
  print(format_tables(result))
  # the targets are the README's recipe's: "recommended" since issue 21 part 4
  readme = next((r for name in ("recommended", "readme") for r in result["recipes"]
                 if r["recipe"]["name"] == name), None)
  if readme:
    print("\n".join(targets_report(readme)))
  print(f"wrote {os.path.join(args.out, 'real_photos.json')} ({result['seconds']:.0f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
