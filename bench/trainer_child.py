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
  check      the shard check rpn-train runs before training (check_shards): the
             default (sizes against the manifest; a framing walk for a
             manifest without them) and --verify_shards (every record's
             payload checksum), on the same warm-cache shards;
  step       records/s one compiled training step of the RPN tile model
             consumes (train_on_batch, batch 256, Adam, the trainer's losses).
train: rpn-train (trainer.cli.train_main) for one epoch, in this process, so that
the driver reads its peak memory.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

PROCESS_START = time.monotonic()

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench import common  # noqa: E402
from pipeline.io import manifest as manifest_lib  # noqa: E402
from trainer import cli as trainer_cli  # noqa: E402
from trainer import data as data_lib  # noqa: E402
from trainer import model as model_lib  # noqa: E402
from trainer import train  # noqa: E402

BATCH = 256


def _read_python(paths):
  total = 0
  for path in paths:
    with open(path, "rb") as f:
      total += len(f.read())
  return total


def _read_gfile(paths):
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


def raw_read(paths, passes: int, bytes_per_record: float):
  """Whole-file reads with Python and tf.io.gfile, after one read to warm the cache."""
  _read_python(paths)  # warm the file cache
  py_rate, py_rates = _best_rate(_read_python, paths, passes)
  gf_rate, gf_rates = _best_rate(_read_gfile, paths, passes)
  raw = max(py_rate, gf_rate)
  return {
      "raw_read_python_bytes_per_s": py_rate, "raw_read_gfile_bytes_per_s": gf_rate,
      "raw_read_bytes_per_s": raw, "raw_read_records_per_s": raw / bytes_per_record,
      "raw_read_passes_bytes_per_s": {"python": py_rates, "gfile": gf_rates},
  }


def check_rate(data_dir: str, manifest, records: int):
  """The shard check rpn-train runs before training: the default one (its kind,
  "sizes" or "framing", in check_shards_mode) and --verify_shards (verify=True)."""
  out = {}
  for key, verify in (("check_shards", False), ("check_shards_verify", True)):
    start = time.perf_counter()
    _, report = data_lib.check_shards(data_dir, manifest, verify=verify)
    seconds = time.perf_counter() - start
    assert report["records"] == records, (report["records"], records)
    out.update({f"{key}_s": seconds, f"{key}_records_per_s": records / seconds})
    if not verify:
      out["check_shards_mode"] = report["check"]
  return out


def epoch_rate(data_dir: str, manifest, paths, records: int, passes: int, shuffle: bool):
  """(best, every pass) records/s of make_dataset over whole epochs."""
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


def framing_rate(paths, passes: int) -> float:
  """The reading half of make_dataset alone: same interleave, no shuffle, no parse."""
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


def steady_rate(data_dir: str, manifest, paths, copies=4, skip_batches=25):
  """make_dataset as training calls it, over the shard list `copies` times, so
  that its 256 MB shuffle buffer (~4.8k float32 records, about a whole
  128-image dataset) fills once and then streams: timed from batch
  `skip_batches` to `skip_batches` before the end (neither fill nor drain)."""
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


def train_step_rate(data_dir: str, manifest, paths, step_iters: int):
  """Records/s one compiled training step of the tile model consumes (the
  trainer's own compile() and input normalisation)."""
  keras.utils.set_random_seed(0)
  ds = data_lib.make_dataset(data_dir, manifest, files=paths, batch_size=BATCH, shuffle=False,
                             drop_remainder=True)
  tiles, targets = next(iter(ds))
  # The input normalisation rpn-train fits first.
  mean, variance = train.feature_statistics(data_dir, manifest, paths)
  model = model_lib.build_tile_model(int(manifest.feature_channels), manifest.num_anchors,
                                     feature_mean=mean, feature_variance=variance, logits=True)
  train.compile_model(model, 1e-3, 1.0)
  for _ in range(3):
    model.train_on_batch(tiles, targets)
  cpu_start = time.process_time()
  start = time.perf_counter()
  for _ in range(step_iters):
    model.train_on_batch(tiles, targets)
  step_s = (time.perf_counter() - start) / step_iters
  return {
      "train_step_ms": 1000 * step_s,
      "train_step_records_per_s": BATCH / step_s,
      "train_step_cores_busy": (time.process_time() - cpu_start) / (step_s * step_iters),
      "train_step_batch": BATCH,
      "train_step_params": int(model.count_params()),
  }


def measure_input(data_dir: str, passes: int, step_iters: int):
  manifest = manifest_lib.Manifest.load(data_dir)
  paths = manifest.shard_paths(data_dir)
  records = int(manifest.counts["records"])
  total_bytes = sum(os.path.getsize(p) for p in paths)
  bytes_per_record = total_bytes / records
  out = {"records": records, "shard_bytes": total_bytes, "shards": len(paths),
         "bytes_per_record": bytes_per_record, "compression": manifest.compression,
         "dtype": manifest.dtype, "cache": "warm: every shard read whole once first"}
  out.update(raw_read(paths, passes, bytes_per_record))
  out.update(check_rate(data_dir, manifest, records))
  out["tfrecord_read_records_per_s"] = framing_rate(paths, passes)
  out["dataset_steady_records_per_s"] = steady_rate(data_dir, manifest, paths)
  out["dataset_records_per_s"], out["dataset_passes_records_per_s"] = epoch_rate(
      data_dir, manifest, paths, records, passes, shuffle=True)
  out["dataset_unshuffled_records_per_s"], _ = epoch_rate(
      data_dir, manifest, paths, records, passes, shuffle=False)
  out["dataset_bytes_per_s"] = out["dataset_records_per_s"] * bytes_per_record
  out.update(train_step_rate(data_dir, manifest, paths, step_iters))
  return out


def train_memory(data_dir: str, job_dir: str, epochs: int, shuffle_buffer_mb):
  """rpn-train (trainer.cli.train_main) in this process, for the driver to read its memory."""
  records = manifest_lib.Manifest.load(data_dir).counts["records"]
  start = time.monotonic()
  extra = [] if shuffle_buffer_mb is None else ["--shuffle_buffer_mb", str(shuffle_buffer_mb)]
  rc = trainer_cli.train_main(["--data", data_dir, "--job_dir", job_dir, "--epochs", str(epochs),
                               *extra])
  seconds = time.monotonic() - start
  return {"rc": rc, "records": records, "shuffle_buffer_mb": shuffle_buffer_mb,
          "epochs": epochs, "train_s": seconds,
          "records_per_s_incl_startup": records * epochs / seconds}


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
    result = train_memory(args.data, args.job_dir, args.epochs, args.shuffle_buffer_mb)
  result["process_s"] = time.monotonic() - PROCESS_START
  common.write_result(args.result, result)
  return 0


if __name__ == "__main__":
  sys.exit(main())
