"""`python -m bench.maps`: the maps layout against the tiles layout, on the same images.

    python -m bench.maps [--out out/bench_maps] [--parts bytes,rate,recall,memory]
                         [--seeds 0,1,2] [--rate_batches 400]

On the sample data (make sample-data: DET/train, 240 images; DET/val, 48
held out), everything through the product's own code:

  bytes   rpn-preprocess DET/train in both layouts at float32, float16 and
          float16 + GZIP, for InceptionResNetV2 (final output, the default;
          random weights) and VGG16 block5_conv3 with the real weights file
          (its GZIP ratio is that of real features). Bytes per image, and
          the projection for ILSVRC2014 DET train (456,567 images).
  rate    rpn-train's input as training uses it (shuffled, batches of 256),
          steady state after the shuffle buffer is full (the median of 3
          windows of --rate_batches batches), tiles/s and images/s, both
          layouts, float32, float16 and float16 + GZIP; the numpy target
          code alone (ms per image); against one compiled training step of
          the same width (tiles/s it consumes).
  recall  rpn-train then rpn-propose and rpn-evaluate on DET/val, both layouts,
          the same anchors (rpn-anchors' suggestion: given to rpn-preprocess
          for tiles, to rpn-train for maps), the same epochs and seeds, with
          TinyTestNet (conv1, stride 8, random weights, 40 epochs) and VGG16
          (block5_conv3, real weights, 10 epochs); the resident memory of
          the training process at every epoch end.
  memory  rpn-train in a fresh process per layout, 60 epochs of the
          TinyTestNet data of the recall part: the resident memory at every
          epoch end.

Writes OUT/maps.json with every figure and prints the tables.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from bench import common
from pipeline.beam import anchors as anchors_beam
from pipeline.commands import anchors as coverage_run
from pipeline.commands import preprocess, sample_data
from pipeline.core import config
from pipeline.io import manifest as manifest_lib

REPO = common.REPO
SAMPLE = os.path.join(REPO, "data", "sample")
DET_TRAIN_IMAGES = 456_567
FORMATS = {"float32": ("float32", "NONE"), "float16": ("float16", "NONE"),
           "float16+GZIP": ("float16", "GZIP")}


def _log(message: str) -> None:
  print(f"[bench.maps {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _settings(weights: str) -> Dict[str, Dict]:
  return {
      "InceptionResNetV2": {"backbone": "InceptionResNetV2", "weights": "none", "layer": None},
      "VGG16_block5_conv3": {"backbone": "VGG16", "weights": weights, "layer": "block5_conv3"},
      "TinyTestNet_conv1": {"backbone": "TinyTestNet", "weights": "none", "layer": "conv1"},
  }


def _preprocess(out: str, split: str, setting: Dict, layout: str, fmt: str,
                extra: Sequence[str] = ()) -> Dict:
  """Runs rpn-preprocess once (unless its manifest is there); returns figures."""
  if not os.path.exists(os.path.join(out, config.MANIFEST_NAME)):
    dtype, compression = FORMATS[fmt]
    argv = ["--input", SAMPLE, "--split", split, "--output", out,
            "--backbone", setting["backbone"], "--weights", setting["weights"],
            "--layout", layout, "--tile_dtype", dtype, "--compression", compression,
            "--num_shards", "4", *extra]
    if setting["layer"]:
      argv += ["--feature_layer", setting["layer"]]
    _log(f"rpn-preprocess {split} {setting['backbone']} {layout} {fmt} -> {out}")
    preprocess.run(argv)
  manifest = manifest_lib.Manifest.load(out)
  prefix = config.shard_prefix(manifest.layout)
  size = common.dir_bytes(out, prefix)
  counts = manifest.counts
  return {"bytes": size, "images_found": counts["images_found"],
          "images_ok": counts["images_ok"], "records": counts["records"],
          "bytes_per_image": size / counts["images_found"],
          "channels": manifest.feature_channels}


def part_bytes(out: str, settings: Dict) -> Dict:
  results = {}
  for name in ("InceptionResNetV2", "VGG16_block5_conv3"):
    setting = settings[name]
    if setting["weights"] not in ("none",) and not os.path.exists(setting["weights"]):
      _log(f"{name}: no weights file at {setting['weights']}; skipped")
      continue
    for layout in config.LAYOUTS:
      for fmt in FORMATS:
        key = f"{name}/{layout}/{fmt}"
        results[key] = _preprocess(os.path.join(out, "shards", name, f"{layout}_{fmt}"),
                                   "DET/train", setting, layout, fmt)
        _log(f"{key}: {results[key]['bytes_per_image'] / 1e3:.1f} KB per image")
  return results


def _time_batches(dataset, warmup: int, batches: int, windows: int = 3) -> List[float]:
  """Seconds for `batches` batches, in `windows` windows one after the other,
  after `warmup` batches (steady state)."""
  iterator = iter(dataset)
  for _ in range(warmup):
    next(iterator)
  seconds = []
  for _ in range(windows):
    start = time.perf_counter()
    for _ in range(batches):
      next(iterator)
    seconds.append(time.perf_counter() - start)
  return seconds


def input_rate(directory: str, batch_size: int, batches: int) -> Dict:
  """Steady-state rate of rpn-train's input over one shard directory."""
  from trainer import data as data_lib
  from trainer import maps
  manifest = manifest_lib.Manifest.load(directory)
  files = manifest.shard_paths(directory)
  images = manifest.counts["records"] if manifest.is_maps else manifest.counts["images_ok"]
  if manifest.is_maps:
    anchors, target_config = config.AnchorConfig(), config.TargetConfig()
    _, info = maps.sample_centres(files, manifest, anchors, target_config, 20000)
    tiles_per_image = info["tiles_per_image"]
    tiles_per_pass = int(images * tiles_per_image)
    buffer = min((256 << 20) // maps.tile_bytes(manifest, anchors), tiles_per_pass)
    dataset = maps.make_dataset(files, manifest, anchors, target_config, batch_size,
                                epochs=maps.EpochLog(images_per_pass=images),
                                tiles_per_pass=tiles_per_pass)
  else:
    tiles_per_image = manifest.counts["records"] / images
    buffer = (256 << 20) // data_lib.record_bytes(manifest)
    dataset = data_lib.make_dataset(directory, manifest, batch_size, shuffle=True, repeat=True)
  warmup = max(10, buffer // batch_size + 10)
  seconds = _time_batches(dataset, warmup, batches)
  tiles_per_s = batches * batch_size / float(np.median(seconds))  # the median window
  out = {"tiles_per_s": tiles_per_s, "images_per_s": tiles_per_s / tiles_per_image,
         "tiles_per_image": tiles_per_image, "warmup_batches": warmup, "batches": batches,
         "window_tiles_per_s": [batches * batch_size / s for s in seconds]}
  if manifest.is_maps:
    out["targets_ms_per_image"] = targets_ms(directory)
  return out


def targets_ms(directory: str) -> float:
  """Milliseconds per image of the numpy target code alone (what the
  tf.numpy_function runs), over the images of images.jsonl, the method's anchors."""
  from pipeline.core import targets
  with open(os.path.join(directory, config.IMAGES_NAME)) as f:
    lines = [json.loads(line) for line in f]
  anchors, t = config.AnchorConfig(), config.TargetConfig()
  start = time.perf_counter()
  for line in lines:
    targets.compute_targets(
        line["width"], line["height"], line["feature_height"], line["feature_width"],
        np.asarray(line["gt_boxes"], np.float64).reshape(-1, 4), line["image_id"],
        anchor_config=anchors, target_config=t, epoch=1)
  return 1000 * (time.perf_counter() - start) / max(1, len(lines))


def step_rate(channels: int, batch_size: int, steps: int = 20) -> Dict:
  """Tiles/s one compiled training step of the tile model consumes (Adam, the losses)."""
  import keras

  from trainer import model as model_lib
  from trainer import train
  model = model_lib.build_tile_model(channels, 9, logits=True)
  train.compile_model(model, 1e-3, 1.0)
  rng = np.random.default_rng(0)
  tiles = rng.normal(size=(batch_size, 3, 3, channels)).astype(np.float32)
  labels = rng.choice([-1.0, 0.0, 1.0], size=(batch_size, 9)).astype(np.float32)
  deltas = np.concatenate([labels, rng.normal(size=(batch_size, 36)).astype(np.float32)], -1)
  targets = {"scores": labels, "deltas": deltas}
  for _ in range(3):
    model.train_on_batch(tiles, targets)
  start = time.perf_counter()
  for _ in range(steps):
    model.train_on_batch(tiles, targets)
  seconds = (time.perf_counter() - start) / steps
  keras.backend.clear_session()
  return {"ms_per_step": 1000 * seconds, "tiles_per_s": batch_size / seconds}


def part_rate(out: str, batches: int) -> Dict:
  results = {}
  for name in ("VGG16_block5_conv3", "InceptionResNetV2"):
    for fmt in FORMATS:
      for layout in config.LAYOUTS:
        directory = os.path.join(out, "shards", name, f"{layout}_{fmt}")
        if not os.path.exists(os.path.join(directory, config.MANIFEST_NAME)):
          continue
        key = f"{name}/{layout}/{fmt}"
        _log(f"input rate {key}")
        results[key] = input_rate(directory, 256, batches)
        _log(f"{key}: {results[key]['tiles_per_s']:.0f} tiles/s, "
             f"{results[key]['images_per_s']:.1f} images/s")
    directory = os.path.join(out, "shards", name, "maps_float32")
    if os.path.exists(os.path.join(directory, config.MANIFEST_NAME)):
      channels = manifest_lib.Manifest.load(directory).feature_channels
      results[f"{name}/step"] = step_rate(channels, 256)
      _log(f"{name}: a training step consumes {results[f'{name}/step']['tiles_per_s']:.0f} "
           f"tiles/s")
  return results


class RssLog:
  """Keras callback: the process's resident memory (VmRSS, MiB) at each epoch end."""

  def __new__(cls):
    import keras

    class _Rss(keras.callbacks.Callback):
      def __init__(self):
        super().__init__()
        self.mib: List[float] = []

      def on_epoch_end(self, epoch, logs=None):
        with open("/proc/self/status") as f:
          for line in f:
            if line.startswith("VmRSS:"):
              self.mib.append(int(line.split()[1]) / 1024)
    return _Rss()


def _recall(job: str, out: str) -> Dict:
  from trainer import cli as trainer_cli
  from trainer import evaluate, propose_pipeline
  propose_pipeline.propose(trainer_cli.check_propose(trainer_cli.propose_parser().parse(
      ["--job_dir", job, "--input", SAMPLE, "--split", "DET/val", "--output", out,
       "--draw", "0"])))
  recall = evaluate.run(["--proposals", out, "--input", SAMPLE, "--split", "DET/val"])
  return {k: recall["results"]["300"][k] for k in ("recall@0.5", "recall@0.7", "ar")}


def part_recall(out: str, settings: Dict, seeds: Sequence[int]) -> Dict:
  from trainer import cli as trainer_cli
  from trainer import train
  results = {}
  for name, epochs in (("TinyTestNet_conv1", 40), ("VGG16_block5_conv3", 10)):
    setting = settings[name]
    if setting["weights"] != "none" and not os.path.exists(setting["weights"]):
      _log(f"{name}: no weights file at {setting['weights']}; skipped")
      continue
    base = os.path.join(out, "recall", name)
    anchors_dir = os.path.join(base, "anchors")
    if not os.path.exists(os.path.join(anchors_dir, anchors_beam.ANCHORS_NAME)):
      coverage_run.run(["--input", SAMPLE, "--split", "DET/train", "--output", anchors_dir,
                        "--backbone", setting["backbone"], "--feature_layer", setting["layer"]])
    with open(os.path.join(anchors_dir, anchors_beam.ANCHORS_NAME)) as f:
      suggested = json.load(f)["suggested"]
    flags = ["--scales", ",".join(f"{v:g}" for v in suggested["scales"]),
             "--ratios", ",".join(f"{v:g}" for v in suggested["ratios"])]
    data = {"tiles": os.path.join(base, "tiles"), "maps": os.path.join(base, "maps")}
    _preprocess(data["tiles"], "DET/train", setting, "tiles", "float32", flags)
    _preprocess(data["maps"], "DET/train", setting, "maps", "float32")
    for seed in seeds:
      for layout in config.LAYOUTS:
        key = f"{name}/{layout}/seed{seed}"
        job = os.path.join(base, f"job_{layout}_{seed}")
        argv = ["--data", data[layout], "--job_dir", job, "--epochs", str(epochs),
                "--seed", str(seed)]
        if layout == "maps":
          argv += ["--anchors_json", os.path.join(anchors_dir, anchors_beam.ANCHORS_NAME)]
        run = trainer_cli.check_train(trainer_cli.train_parser().parse(argv))
        rss = RssLog()
        _log(f"rpn-train {key}")
        start = time.monotonic()
        train.train(run, callbacks=[rss])
        seconds = time.monotonic() - start
        results[key] = dict(_recall(job, os.path.join(base, f"proposals_{layout}_{seed}")),
                            train_seconds=seconds, rss_mib=rss.mib,
                            anchors=suggested)
        _log(f"{key}: {results[key]}")
  return results


def memory_child(layout: str, data: str, job: str, epochs: int, extra: Sequence[str]) -> None:
  """In a fresh process: rpn-train, printing the RSS at every epoch end."""
  from trainer import cli as trainer_cli
  from trainer import train
  run = trainer_cli.check_train(trainer_cli.train_parser().parse(
      ["--data", data, "--job_dir", job, "--epochs", str(epochs), *extra]))
  rss = RssLog()
  train.train(run, callbacks=[rss])
  print("RSS " + json.dumps({"layout": layout, "rss_mib": rss.mib}), flush=True)


def part_memory(out: str, epochs: int) -> Dict:
  """The RSS of a fresh rpn-train process at each epoch end, both layouts
  (TinyTestNet conv1 data and anchors of the recall part)."""
  import shutil
  import subprocess
  base = os.path.join(out, "recall", "TinyTestNet_conv1")
  anchors = os.path.join(base, "anchors", anchors_beam.ANCHORS_NAME)
  if not os.path.exists(anchors):
    _log("memory: run --parts recall first (it makes the data)")
    return {}
  results = {}
  for layout in config.LAYOUTS:
    job = os.path.join(out, "memory", layout)
    shutil.rmtree(job, ignore_errors=True)
    extra = ["--anchors_json", anchors] if layout == "maps" else []
    _log(f"memory: rpn-train {layout}, {epochs} epochs, a fresh process")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.maps", "--memory_child", json.dumps(
            [layout, os.path.join(base, layout), job, epochs, extra])],
        capture_output=True, text=True, cwd=REPO, env=dict(os.environ, **common.CHILD_ENV))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RSS ")]
    if proc.returncode or not lines:
      raise RuntimeError(f"memory child failed: {proc.stderr[-2000:]}")
    results[layout] = json.loads(lines[-1][4:])["rss_mib"]
  return results


def format_tables(result: Dict) -> str:
  lines = []
  if result.get("bytes"):
    lines.append("bytes per image (sample DET/train), and ILSVRC2014 DET train projected")
    lines.append(f"{'setting':<48} {'KB/image':>9} {'DET train':>10}")
    for key, r in result["bytes"].items():
      lines.append(f"{key:<48} {r['bytes_per_image'] / 1e3:>9.1f} "
                   f"{r['bytes_per_image'] * DET_TRAIN_IMAGES / 1e12:>8.3f}TB")
  if result.get("rate"):
    lines.append("\ntrainer input, steady state (batches of 256, shuffled)")
    for key, r in result["rate"].items():
      if key.endswith("/step"):
        lines.append(f"{key:<48} {r['tiles_per_s']:>9.0f} tiles/s consumed "
                     f"({r['ms_per_step']:.0f} ms/step)")
      else:
        targets_ms = (f"  (numpy targets {r['targets_ms_per_image']:.2f} ms/image)"
                      if "targets_ms_per_image" in r else "")
        lines.append(f"{key:<48} {r['tiles_per_s']:>9.0f} tiles/s {r['images_per_s']:>7.1f} "
                     f"images/s{targets_ms}")
  if result.get("recall"):
    lines.append("\nrecall@300 on DET/val (48 images), same anchors, epochs and seeds")
    for key, r in result["recall"].items():
      rss = r["rss_mib"]
      lines.append(f"{key:<40} R@0.5 {r['recall@0.5']:.3f} R@0.7 {r['recall@0.7']:.3f} "
                   f"AR {r['ar']:.3f}  {r['train_seconds']:.0f} s  RSS MiB first/last/max "
                   f"{rss[0]:.0f}/{rss[-1]:.0f}/{max(rss):.0f}")
  if result.get("memory"):
    lines.append("\nresident memory of a fresh rpn-train process at epoch ends (MiB)")
    for layout, rss in result["memory"].items():
      marks = [1, 5, 10, 20, 30, 40, 50, 60]
      shown = "  ".join(f"{e}: {rss[e - 1]:.0f}" for e in marks if e <= len(rss))
      lines.append(f"{layout:<6} {shown}  max {max(rss):.0f}")
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m bench.maps")
  parser.add_argument("--out", default=os.path.join(REPO, "out", "bench_maps"))
  parser.add_argument("--parts", default="bytes,rate,recall,memory")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--rate_batches", type=int, default=400,
                      help="batches of 256 in each of the 3 timed windows")
  parser.add_argument("--weights", default=common.vgg16_weights())
  parser.add_argument("--memory_epochs", type=int, default=60)
  parser.add_argument("--memory_child", help=argparse.SUPPRESS)  # JSON: the child's arguments
  args = parser.parse_args(argv)
  if args.memory_child:
    memory_child(*json.loads(args.memory_child))
    return 0
  if not os.path.isdir(os.path.join(SAMPLE, "Data")):
    sample_data.main(["--output", SAMPLE])
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "maps.json")
  result = {}
  if os.path.exists(path):
    with open(path) as f:
      result = json.load(f)
  result["machine"] = common.machine_info()
  settings = _settings(args.weights)
  parts = args.parts.split(",")
  if "bytes" in parts:
    result["bytes"] = part_bytes(args.out, settings)
  if "rate" in parts:
    result["rate"] = part_rate(args.out, args.rate_batches)
  if "recall" in parts:
    result["recall"] = part_recall(args.out, settings,
                                   [int(s) for s in args.seeds.split(",")])
  if "memory" in parts:
    result["memory"] = part_memory(args.out, args.memory_epochs)
  with open(path, "w") as f:
    json.dump(result, f, indent=1, default=common.json_default)
  print(format_tables(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
