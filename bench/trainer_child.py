"""Child: the trainer's input rate against the raw read rate and a training step.

    python -m bench.trainer_child --mode input --data SHARD_DIR --result FILE
    python -m bench.trainer_child --mode train --data SHARD_DIR --job_dir JOB --result FILE

input: the shards are read whole once first, so that the file cache is warm
for every figure that follows (all of them then read from memory). Then:
  raw read   bytes/s reading every shard whole (plain Python open().read()
             and tf.io.gfile), converted to records/s by the bytes per record;
  framing    TFRecordDataset alone (make_dataset's interleave, no parse);
  dataset    records/s that trainer.data.make_dataset delivers (parse, batch
             256, shuffle as in training), no model: over whole epochs of these
             shards (each refills the 256 MB shuffle buffer, ~4.8k records,
             nearly the whole small dataset), and in steady state (the shard
             list 4 times over, timed once the buffer is full, before it drains);
  check      the shard scan rpn-train runs before training (check_shards);
  step       records/s one compiled training step of the RPN tile model
             consumes (train_on_batch, batch 256, Adam, the trainer's losses).
train: rpn-train (trainer.train.main) for one epoch, in this process, so that
the driver reads its peak memory.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

PROCESS_START = time.monotonic()

from bench import common  # noqa: E402

BATCH = 256


def _read_python(paths):
  total = 0
  for path in paths:
    with open(path, "rb") as f:
      total += len(f.read())
  return total


def _read_gfile(paths):
  import tensorflow as tf
  total = 0
  for path in paths:
    with tf.io.gfile.GFile(path, "rb") as f:
      total += len(f.read())
  return total


def _best_rate(fn, paths, passes):
  rates = []
  for _ in range(passes):
    start = time.perf_counter()
    size = fn(paths)
    rates.append(size / (time.perf_counter() - start))
  return max(rates), rates


def measure_input(data_dir: str, passes: int, step_iters: int):
  import numpy as np
  import tensorflow as tf
  from trainer import data as data_lib, manifest as manifest_lib, model as model_lib, train
  manifest = manifest_lib.load_manifest(data_dir)
  paths = manifest_lib.shard_paths(data_dir, manifest)
  records = int(manifest["counts"]["records"])
  total_bytes = sum(os.path.getsize(p) for p in paths)
  bytes_per_record = total_bytes / records
  out = {"records": records, "shard_bytes": total_bytes, "shards": len(paths),
         "bytes_per_record": bytes_per_record, "compression": manifest["compression"],
         "dtype": manifest["dtype"], "cache": "warm: every shard read whole once first"}

  _read_python(paths)  # warm the file cache
  py_rate, py_rates = _best_rate(_read_python, paths, passes)
  gf_rate, gf_rates = _best_rate(_read_gfile, paths, passes)
  raw = max(py_rate, gf_rate)
  out.update({
      "raw_read_python_bytes_per_s": py_rate, "raw_read_gfile_bytes_per_s": gf_rate,
      "raw_read_bytes_per_s": raw, "raw_read_records_per_s": raw / bytes_per_record,
      "raw_read_passes_bytes_per_s": {"python": py_rates, "gfile": gf_rates},
  })

  start = time.perf_counter()
  data_lib.check_shards(data_dir, manifest)
  check_s = time.perf_counter() - start
  out["check_shards_s"] = check_s
  out["check_shards_records_per_s"] = records / check_s

  def epoch_rate(shuffle):
    ds = data_lib.make_dataset(data_dir, manifest, files=paths, batch_size=BATCH,
                               shuffle=shuffle, seed=0)
    rates = []
    for _ in range(passes):
      start = time.perf_counter()
      n = 0
      for tiles, _ in ds:
        n += int(tiles.shape[0])
      rates.append(n / (time.perf_counter() - start))
      assert n == records, (n, records)
    return max(rates), rates

  def framing_rate():
    # The reading half of make_dataset alone: same interleave, no shuffle, no parse.
    ds = tf.data.Dataset.from_tensor_slices(paths).interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=8 << 20),
        cycle_length=min(len(paths), 16), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(BATCH).prefetch(tf.data.AUTOTUNE)
    best = 0.0
    for _ in range(passes):
      start = time.perf_counter()
      n = sum(int(b.shape[0]) for b in ds)
      best = max(best, n / (time.perf_counter() - start))
    return best

  def steady_rate(copies=4, skip_batches=25):
    # make_dataset as training calls it, over the shard list `copies` times, so
    # that its 256 MB shuffle buffer (~4.8k float32 records, about a whole
    # 128-image dataset) fills once and then streams: timed from batch
    # `skip_batches` to `skip_batches` before the end (neither fill nor drain).
    ds = data_lib.make_dataset(data_dir, manifest, files=paths * copies, batch_size=BATCH,
                               shuffle=True, seed=0)
    batches = []
    for tiles, _ in ds:
      batches.append((time.perf_counter(), int(tiles.shape[0])))
    lo, hi = skip_batches, len(batches) - skip_batches
    if hi - lo < 10:
      return None
    n = sum(b for _, b in batches[lo + 1:hi + 1])
    return n / (batches[hi][0] - batches[lo][0])

  out["tfrecord_read_records_per_s"] = framing_rate()
  out["dataset_steady_records_per_s"] = steady_rate()
  out["dataset_records_per_s"], out["dataset_passes_records_per_s"] = epoch_rate(True)
  out["dataset_unshuffled_records_per_s"], _ = epoch_rate(False)
  out["dataset_bytes_per_s"] = out["dataset_records_per_s"] * bytes_per_record

  # One training step of the tile model, the trainer's own compile().
  import keras
  keras.utils.set_random_seed(0)
  ds = data_lib.make_dataset(data_dir, manifest, files=paths, batch_size=BATCH, shuffle=False,
                             drop_remainder=True)
  tiles, targets = next(iter(ds))
  # The input normalisation rpn-train fits first.
  mean, variance = train.feature_statistics(data_dir, manifest, paths)
  model = model_lib.build_tile_model(int(manifest["feature_channels"]),
                                     int(manifest["anchor"]["num_anchors"]),
                                     feature_mean=mean, feature_variance=variance)
  train.compile_model(model, 1e-3, 1.0)
  for _ in range(3):
    model.train_on_batch(tiles, targets)
  cpu_start = time.process_time()
  start = time.perf_counter()
  for _ in range(step_iters):
    model.train_on_batch(tiles, targets)
  step_s = (time.perf_counter() - start) / step_iters
  out.update({
      "train_step_ms": 1000 * step_s,
      "train_step_records_per_s": BATCH / step_s,
      "train_step_cores_busy": (time.process_time() - cpu_start) / (step_s * step_iters),
      "train_step_batch": BATCH,
      "train_step_params": int(model.count_params()),
  })
  del np
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--mode", choices=("input", "train"), required=True)
  parser.add_argument("--data", required=True)
  parser.add_argument("--job_dir")
  parser.add_argument("--passes", type=int, default=2)
  parser.add_argument("--step_iters", type=int, default=20)
  parser.add_argument("--epochs", type=int, default=1)
  parser.add_argument("--shuffle_buffer_mb", type=int)
  parser.add_argument("--result", required=True)
  args = parser.parse_args(argv)
  if args.mode == "input":
    result = measure_input(args.data, args.passes, args.step_iters)
  else:
    import json
    from trainer import train
    with open(os.path.join(args.data, "manifest.json")) as f:
      records = json.load(f)["counts"]["records"]
    start = time.monotonic()
    extra = ([] if args.shuffle_buffer_mb is None
             else ["--shuffle_buffer_mb", str(args.shuffle_buffer_mb)])
    rc = train.main(["--data", args.data, "--job_dir", args.job_dir,
                     "--epochs", str(args.epochs), *extra])
    seconds = time.monotonic() - start
    result = {"rc": rc, "records": records, "shuffle_buffer_mb": args.shuffle_buffer_mb,
              "epochs": args.epochs, "train_s": seconds,
              "records_per_s_incl_startup": records * args.epochs / seconds}
  result["process_s"] = time.monotonic() - PROCESS_START
  common.write_result(args.result, result)
  return 0


if __name__ == "__main__":
  sys.exit(main())
