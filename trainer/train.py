"""`rpn-train`: stream the shards of rpn-preprocess into the Keras RPN head.

    rpn-train --data DIR [--val_data DIR] --job_dir JOB [--epochs 10] [--batch_size 256]

Writes into JOB: rpn.weights.h5 and manifest.json (the data's, verbatim) and
train_config.json at the end; logs/ (TensorBoard), checkpoints/ (weights per
epoch), backup/ (resume state: rerunning the same command after an
interruption continues where it stopped), history.csv.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Dict, Optional, Sequence

from trainer import data as data_lib
from trainer import losses as losses_lib
from trainer import manifest as manifest_lib
from trainer import model as model_lib

_LOGGER = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="rpn-train", description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--data", required=True, help="shard directory of rpn-preprocess")
  parser.add_argument("--val_data", help="held-out shard directory (same backbone and anchors)")
  parser.add_argument("--job_dir", required=True, help="where the model, logs and checkpoints go")
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--batch_size", type=int, default=256, help="tiles per step")
  parser.add_argument("--learning_rate", type=float, default=1e-3)
  parser.add_argument("--box_loss_weight", type=float, default=1.0)
  parser.add_argument("--hidden", type=int, default=512, help="filters of the 3x3 conv")
  parser.add_argument("--steps_per_epoch", type=int, default=None,
                      help="default: one pass over the shards")
  parser.add_argument("--shuffle_buffer_mb", type=int, default=data_lib.DEFAULT_SHUFFLE_BUFFER_MB)
  parser.add_argument("--mixed_precision", action="store_true",
                      help="mixed_float16 compute (GPUs with tensor cores)")
  parser.add_argument("--skip_corrupt_shards", action="store_true",
                      help="leave out shards that fail the check (reported) instead of failing")
  parser.add_argument("--seed", type=int, default=0)
  return parser


def _strategy():
  import tensorflow as tf
  gpus = tf.config.list_physical_devices("GPU")
  if len(gpus) > 1:
    _LOGGER.warning("training on %d GPUs with MirroredStrategy", len(gpus))
    return tf.distribute.MirroredStrategy()
  _LOGGER.warning("training on %s", "the GPU" if gpus else "the CPU (no GPU found)")
  return tf.distribute.get_strategy()


def _load_data(data_dir: str, skip_corrupt: bool):
  manifest = manifest_lib.load_manifest(data_dir)
  files, report = manifest_lib.check_shards(manifest, skip_corrupt)
  if report["shards_skipped"]:
    _LOGGER.warning("%s: left out %d corrupt shards: %s", data_dir,
                    len(report["shards_skipped"]), report["problems"])
  if not files:
    raise manifest_lib.ManifestError(f"{data_dir}: no usable shard")
  return manifest, files, report


def _feature_statistics(files, manifest, seed: int, max_tiles: int = 20000):
  """Per-channel mean and variance of the centre features of up to max_tiles
  training tiles (a shuffled sample across shards)."""
  import numpy as np
  sample = data_lib.make_dataset(files, manifest, 1024, shuffle=True, seed=seed,
                                 shuffle_buffer_mb=64)
  centres, total = [], 0
  for tiles, _ in sample:
    centres.append(tiles.numpy()[:, 1, 1, :])
    total += len(centres[-1])
    if total >= max_tiles:
      break
  return model_lib.feature_statistics(np.concatenate(centres))


def _corrupt_data_error(manifest, error, *others) -> manifest_lib.ManifestError:
  """A shard's payload is corrupt (or went bad after the check): name the file."""
  problems = {}
  for m in (manifest,) + tuple(o for o in others if o):
    problems.update(manifest_lib.check_shards(m, skip_corrupt=True, verify_payload=True)[1]["problems"])
  found = "; ".join(f"{path}: {problem}" for path, problem in problems.items())
  return manifest_lib.ManifestError(
      f"corrupt data while training ({error.message.splitlines()[0]}): "
      f"{found or 'no shard fails the full check now'}")


def compile_model(model, learning_rate: float, box_loss_weight: float) -> None:
  import keras
  losses, weights = losses_lib.rpn_losses(box_loss_weight)
  model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=losses,
                loss_weights=weights,
                metrics={"scores": losses_lib.objectness_metrics()})


def train(args: argparse.Namespace) -> Dict[str, float]:
  """Trains, saves into the job dir; returns the last epoch's logs."""
  import keras
  import tensorflow as tf
  keras.utils.set_random_seed(args.seed)
  manifest, files, report = _load_data(args.data, args.skip_corrupt_shards)
  val = val_manifest = None
  if args.val_data:
    val_manifest, val_files, _ = _load_data(args.val_data, args.skip_corrupt_shards)
    manifest_lib.check_compatible(manifest, val_manifest, "--val_data")
    val = data_lib.make_dataset(val_files, val_manifest, args.batch_size, shuffle=False)
  job_model = os.path.join(args.job_dir, model_lib.MANIFEST_NAME)
  if tf.io.gfile.exists(job_model):
    with tf.io.gfile.GFile(job_model) as f:
      manifest_lib.check_compatible(json.load(f), manifest, "--data")
  if args.mixed_precision:
    keras.mixed_precision.set_global_policy("mixed_float16")
  train_ds = data_lib.make_dataset(files, manifest, args.batch_size, shuffle=True,
                                   repeat=args.steps_per_epoch is not None,
                                   shuffle_buffer_mb=args.shuffle_buffer_mb, seed=args.seed)
  try:
    feature_mean, feature_variance = _feature_statistics(files, manifest, args.seed)
  except tf.errors.DataLossError as e:
    raise _corrupt_data_error(manifest, e) from e
  with _strategy().scope():
    model = model_lib.build_tile_model(int(manifest["feature_channels"]),
                                       int(manifest["anchor"]["num_anchors"]), args.hidden,
                                       feature_mean, feature_variance)
    compile_model(model, args.learning_rate, args.box_loss_weight)
  tf.io.gfile.makedirs(args.job_dir)
  callbacks = [
      keras.callbacks.BackupAndRestore(os.path.join(args.job_dir, "backup")),
      keras.callbacks.ModelCheckpoint(
          os.path.join(args.job_dir, "checkpoints", "epoch-{epoch:03d}.weights.h5"),
          save_weights_only=True),
      keras.callbacks.TensorBoard(os.path.join(args.job_dir, "logs")),
      keras.callbacks.CSVLogger(os.path.join(args.job_dir, "history.csv"), append=True),
      keras.callbacks.TerminateOnNaN(),
  ]
  tf.io.gfile.makedirs(os.path.join(args.job_dir, "checkpoints"))
  try:
    history = model.fit(train_ds, validation_data=val, epochs=args.epochs,
                        steps_per_epoch=args.steps_per_epoch, callbacks=callbacks,
                        verbose=1 if sys.stdout.isatty() else 2)
  except tf.errors.DataLossError as e:
    raise _corrupt_data_error(manifest, e, val_manifest if args.val_data else None) from e
  train_config = {key: getattr(args, key) for key in (
      "epochs", "batch_size", "learning_rate", "box_loss_weight", "hidden", "steps_per_epoch",
      "mixed_precision", "seed")}
  train_config.update(data=args.data, val_data=args.val_data, shards_skipped=report["shards_skipped"],
                      feature_mean=[float(v) for v in feature_mean],
                      feature_variance=[float(v) for v in feature_variance])
  manifest = {k: v for k, v in manifest.items() if not k.startswith("_")}
  model_lib.save_rpn(args.job_dir, model, manifest, train_config)
  last = {k: float(v[-1]) for k, v in history.history.items()} if history.history else {}
  with tf.io.gfile.GFile(os.path.join(args.job_dir, "metrics.json"), "w") as f:
    f.write(json.dumps(last, indent=2, sort_keys=True) + "\n")
  return last


def main(argv: Optional[Sequence[str]] = None) -> int:
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
  args = build_parser().parse_args(argv)
  try:
    last = train(args)
  except manifest_lib.ManifestError as e:
    print(f"rpn-train: error: {e}", file=sys.stderr)
    return 2
  print("final epoch: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(last.items())))
  print(f"model: {os.path.join(args.job_dir, model_lib.WEIGHTS_NAME)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
