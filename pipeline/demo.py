"""`make demo`: the whole product on the bundled sample data, in a few minutes.

sample data -> rpn-preprocess (train and val splits, DirectRunner, all cores)
-> rpn-draw (what the pipeline decided, as pictures) -> rpn-train -> rpn-propose
on the held-out val split with the untrained and the trained RPN -> rpn-evaluate
of both, printed side by side.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Optional, Sequence

SAMPLE = "data/sample"


def _step(title: str) -> float:
  print(f"\n=== {title}", flush=True)
  return time.monotonic()


def _done(start: float) -> None:
  print(f"    ({time.monotonic() - start:.0f} s)", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m pipeline.demo")
  parser.add_argument("--out", default="out")
  parser.add_argument("--sample", default=SAMPLE)
  parser.add_argument("--backbone", default="TinyTestNet")
  parser.add_argument("--weights", default="none")
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")

  from pipeline import draw, run, sample_data
  from trainer import evaluate, model as model_lib, propose, train

  out = args.out
  shards = {split: os.path.join(out, "shards", split) for split in ("train", "val")}
  if not os.path.isdir(os.path.join(args.sample, "Data")):
    start = _step(f"sample data -> {args.sample}")
    sample_data.main(["--output", args.sample])
    _done(start)

  beam_args = ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
               f"--direct_num_workers={args.workers}",
               f"--backbone_threads={max(1, (os.cpu_count() or 2) // args.workers)}"]
  for split, num_shards in (("train", 4), ("val", 1)):
    start = _step(f"rpn-preprocess DET/{split} -> {shards[split]}")
    manifest = run.run(["--input", args.sample, "--split", f"DET/{split}",
                        "--output", shards[split], "--backbone", args.backbone,
                        "--weights", args.weights, "--num_shards", str(num_shards)] + beam_args)
    print(run._summary(manifest))
    _done(start)

  start = _step("rpn-draw: anchors and sampled labels of 3 training images")
  draw.main(["--shards", shards["train"], "--input", args.sample, "--split", "DET/train",
             "--count", "3", "--output", os.path.join(out, "pictures", "anchors")])
  _done(start)

  job = os.path.join(out, "job")
  start = _step(f"rpn-train -> {job}")
  train.main(["--data", shards["train"], "--val_data", shards["val"], "--job_dir", job,
              "--epochs", str(args.epochs)])
  _done(start)

  # The same RPN before training: same architecture, initial weights.
  untrained = os.path.join(out, "job_untrained")
  with open(os.path.join(shards["train"], "manifest.json")) as f:
    manifest = json.load(f)
  _, _, _, train_config = model_lib.load_rpn(job)
  tile_model = model_lib.build_tile_model(
      manifest["feature_channels"], manifest["anchor"]["num_anchors"],
      train_config.get("hidden", 512), train_config["feature_mean"],
      train_config["feature_variance"])
  model_lib.save_rpn(untrained, tile_model, manifest, dict(train_config, epochs=0))

  results = {}
  for name, job_dir in (("untrained RPN", untrained), ("trained RPN", job)):
    proposals = os.path.join(out, "proposals", name.split()[0])
    start = _step(f"rpn-propose ({name}) on DET/val -> {proposals}")
    propose.main(["--job_dir", job_dir, "--input", args.sample, "--split", "DET/val",
                  "--output", proposals, "--draw", "6"])
    _done(start)
    start = _step(f"rpn-evaluate ({name})")
    evaluate.main(["--proposals", proposals, "--input", args.sample, "--split", "DET/val"])
    with open(os.path.join(proposals, "recall.json")) as f:
      results[name] = json.load(f)
    _done(start)

  print("\n=== proposal recall on the held-out DET/val split")
  print(evaluate.format_comparison(results))
  print(f"\npictures: {os.path.join(out, 'pictures', 'anchors')} (anchors, labels), "
        f"{os.path.join(out, 'proposals', 'trained', 'pictures')} (proposals), "
        f"{os.path.join(out, 'proposals', 'trained')} (recall plot)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
