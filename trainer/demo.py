"""`make demo`: the whole product on the bundled sample data, in a few minutes.

sample data -> rpn-preprocess (train and val splits, DirectRunner, all cores)
-> rpn-draw (what the pipeline decided, as pictures) -> rpn-train -> rpn-propose
on the held-out val split with the untrained and the trained RPN -> rpn-evaluate
of both, printed side by side.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Optional, Sequence

from pipeline import draw, run, sample_data, storage
from pipeline import manifest as manifest_lib
from trainer import evaluate, propose, recall, train
from trainer import model as model_lib

SAMPLE = "data/sample"


def _step(title: str) -> float:
  print(f"\n=== {title}", flush=True)
  return time.monotonic()


def _done(start: float) -> None:
  print(f"    ({time.monotonic() - start:.0f} s)", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m trainer.demo")
  parser.add_argument("--out", default="out")
  parser.add_argument("--sample", default=SAMPLE)
  parser.add_argument("--backbone", default="TinyTestNet")
  parser.add_argument("--weights", default="none")
  parser.add_argument("--epochs", type=int, default=20)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")

  out = args.out
  shards = {split: os.path.join(out, "shards", split) for split in ("train", "val")}
  if not os.path.isdir(os.path.join(args.sample, "Data")):
    start = _step(f"sample data -> {args.sample}")
    sample_data.main(["--output", args.sample])
    _done(start)

  # No runner options: rpn-preprocess's local default (all cores, one process each).
  for split, num_shards in (("train", 4), ("val", 1)):
    start = _step(f"rpn-preprocess DET/{split} -> {shards[split]}")
    result = run.run(["--input", args.sample, "--split", f"DET/{split}",
                      "--output", shards[split], "--backbone", args.backbone,
                      "--weights", args.weights, "--num_shards", str(num_shards)])
    print(run.summary(result.manifest))
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
  _, _, _, train_config = model_lib.load_rpn(job)
  model_lib.save_untrained_rpn(untrained, manifest_lib.load(shards["train"]), train_config)

  results = {}
  for name, job_dir in (("untrained RPN", untrained), ("trained RPN", job)):
    proposals = os.path.join(out, "proposals", name.split()[0])
    start = _step(f"rpn-propose ({name}) on DET/val -> {proposals}")
    propose.main(["--job_dir", job_dir, "--input", args.sample, "--split", "DET/val",
                  "--output", proposals, "--draw", "6"])
    _done(start)
    start = _step(f"rpn-evaluate ({name})")
    evaluate.main(["--proposals", proposals, "--input", args.sample, "--split", "DET/val"])
    results[name] = storage.read_json(os.path.join(proposals, evaluate.RECALL_NAME))
    _done(start)

  print("\n=== proposal recall on the held-out DET/val split")
  print(recall.format_comparison(results))
  print(f"\npictures: {os.path.join(out, 'pictures', 'anchors')} (anchors, labels), "
        f"{os.path.join(out, 'proposals', 'trained', 'pictures')} (proposals), "
        f"{os.path.join(out, 'proposals', 'trained')} (recall plot)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
