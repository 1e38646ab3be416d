"""`rpn-train`: stream the shards of rpn-preprocess into the Keras RPN head.

    rpn-train --data DIR [--val_data DIR] --job_dir JOB [--epochs 10] [--batch_size 256]

Shape shorthand: B tiles per step, C feature channels, A anchors per point.
Batches are tiles [B, 3, 3, C] with targets {"scores": [B, A], "deltas":
[B, 5A]} (data.py); the losses and metrics skip anchors labelled -1 (losses.py).

Writes into JOB: manifest.json (the data's, verbatim; first, so that a rerun
on other data fails fast), logs/ (TensorBoard), checkpoints/ (weights per
epoch), backup/ (training state after each epoch), history.csv, and at the
end rpn.weights.h5, train_config.json and metrics.json. Rerunning the same
command after an interruption resumes from backup/ at the next epoch; the
backup is kept after the last epoch, so a rerun with a larger --epochs
trains on from there (use a fresh JOB to start over).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Dict, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from pipeline import manifest as manifest_lib
from pipeline import storage
from trainer import data as data_lib
from trainer import losses as losses_lib
from trainer import model as model_lib

_LOGGER = logging.getLogger(__name__)
STATISTICS_TILES = 20000  # tiles sampled for the per-channel feature statistics


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  epochs: int = 10
  batch_size: int = 256  # tiles per step
  learning_rate: float = 1e-3  # Adam
  box_loss_weight: float = losses_lib.DEFAULT_BOX_LOSS_WEIGHT
  hidden: int = model_lib.DEFAULT_HIDDEN
  steps_per_epoch: Optional[int] = None  # None: one pass over the shards
  shuffle_buffer_mb: int = data_lib.DEFAULT_SHUFFLE_BUFFER_MB
  mixed_precision: bool = False
  skip_corrupt_shards: bool = False
  seed: int = 0


_HELP = {
    "batch_size": "tiles per step",
    "learning_rate": "Adam learning rate",
    "box_loss_weight": "weight of the box (smooth L1) loss against the objectness loss",
    "hidden": "filters of the 3x3 conv",
    "steps_per_epoch": "steps per epoch (the data repeats); default: one pass over the shards",
    "shuffle_buffer_mb": "megabytes of records in the shuffle buffer",
    "mixed_precision": "compute in mixed_float16 (GPUs with tensor cores); outputs stay float32",
    "skip_corrupt_shards": "leave out shards that cannot be read to the end (logged) "
                           "instead of failing",
}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="rpn-train", description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--data", required=True, help="shard directory of rpn-preprocess")
  parser.add_argument("--val_data", help="held-out shard directory (same backbone and anchors)")
  parser.add_argument("--job_dir", required=True, help="where the model, logs and checkpoints go")
  for field in dataclasses.fields(TrainConfig):
    flag, help_text = "--" + field.name, _HELP.get(field.name)
    if field.type in (bool, "bool"):
      parser.add_argument(flag, action="store_true", help=help_text)
    else:
      kind = {"int": int, "float": float, "Optional[int]": int}[str(field.type)]
      parser.add_argument(flag, type=kind, default=field.default, help=help_text)
  return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
  return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def _strategy():
  gpus = tf.config.list_physical_devices("GPU")
  if len(gpus) > 1:
    _LOGGER.warning("training on %d GPUs with MirroredStrategy", len(gpus))
    return tf.distribute.MirroredStrategy()
  _LOGGER.warning("training on %s", f"the GPU {gpus[0].name}" if gpus else
                  "the CPU (no GPU found)")
  return tf.distribute.get_strategy()


def _load_data(data_dir: str, skip_corrupt: bool):
  """(manifest, usable shard paths, report) of a checked shard directory."""
  manifest = manifest_lib.load(data_dir)
  files, report = data_lib.check_shards(data_dir, manifest, skip_corrupt)
  if not files:
    raise data_lib.CorruptShardError(f"{data_dir}: no readable shard")
  return manifest, files, report


def feature_statistics(data_dir: str, manifest: Dict, files, skip_corrupt: bool = False,
                       max_tiles: int = STATISTICS_TILES):
  """Per-channel (mean, variance) of the centre features of the first max_tiles
  tiles, read in a fixed order (interleaved across shards) so that a resumed
  run computes the same."""
  sample = data_lib.make_dataset(data_dir, manifest, 1024, shuffle=False, files=files,
                                 skip_corrupt=skip_corrupt)
  centres, total = [], 0
  for tiles, _ in sample:
    centres.append(tiles.numpy()[:, 1, 1, :])
    total += len(centres[-1])
    if total >= max_tiles:
      break
  return model_lib.feature_statistics(np.concatenate(centres)[:max_tiles])


def _corrupt_data_error(error, *dirs_and_manifests) -> data_lib.CorruptShardError:
  """A DataLossError from tf.data, which does not say which file: find it."""
  problems = {}
  for data_dir, manifest in dirs_and_manifests:
    problems.update(data_lib.find_corrupt_shards(data_dir, manifest))
  found = "; ".join(f"{path}: {problem}" for path, problem in problems.items())
  return data_lib.CorruptShardError(
      f"corrupt data while training ({error.message.splitlines()[0]}): "
      f"{found or 'no shard fails the full check now'}; rerun rpn-preprocess, or pass "
      f"--skip_corrupt_shards to train without it")


class EpochSizeCheck(keras.callbacks.Callback):
  """Warns when an epoch saw fewer tiles than the shards hold (records lost to
  corrupt shards under --skip_corrupt_shards): never a silent partial epoch."""

  def __init__(self, expected_train: Optional[int], expected_val: Optional[int]):
    super().__init__()
    self.expected = {"scores_tiles": expected_train, "val_scores_tiles": expected_val}

  def on_epoch_end(self, epoch, logs=None):
    for key, expected in self.expected.items():
      seen = (logs or {}).get(key)
      if expected and seen is not None and int(seen) < expected:
        _LOGGER.warning("epoch %d: %s saw %d of the %d tiles in its shards (%d lost to "
                        "corrupt records)", epoch + 1, "validation" if key[:4] == "val_" else
                        "training", int(seen), expected, expected - int(seen))


def compile_model(model, learning_rate: float, box_loss_weight: float) -> None:
  loss, loss_weights = losses_lib.rpn_losses(box_loss_weight)
  model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss,
                loss_weights=loss_weights, metrics={"scores": losses_lib.objectness_metrics()})


def train(args: argparse.Namespace, callbacks: Sequence = ()) -> Dict[str, float]:
  """Trains, saves into the job dir; returns the last epoch's logs.

  `callbacks` are added to fit()'s (tests use this to interrupt a run).
  """
  config = config_from_args(args)
  keras.utils.set_random_seed(config.seed)
  manifest, files, report = _load_data(args.data, config.skip_corrupt_shards)
  sources = [(args.data, manifest)]
  val = val_report = None
  if args.val_data:
    val_manifest, val_files, val_report = _load_data(args.val_data, config.skip_corrupt_shards)
    manifest_lib.check_compatible(manifest, val_manifest, f"--val_data {args.val_data}")
    sources.append((args.val_data, val_manifest))
    val = data_lib.make_dataset(args.val_data, val_manifest, config.batch_size, shuffle=False,
                                skip_corrupt=config.skip_corrupt_shards, files=val_files,
                                num_records=val_report["records"])
  job_manifest = os.path.join(args.job_dir, model_lib.MANIFEST_NAME)
  if storage.exists(job_manifest):
    manifest_lib.check_compatible(storage.read_json(job_manifest), manifest, (
          f"--data {args.data} (the job dir {args.job_dir} holds a model of other data; "
          f"use a fresh --job_dir)"))
  storage.makedirs(os.path.join(args.job_dir, "checkpoints"))
  storage.write_json(job_manifest, manifest)
  train_ds = data_lib.make_dataset(
      args.data, manifest, config.batch_size, shuffle=True,
      repeat=config.steps_per_epoch is not None, shuffle_buffer_mb=config.shuffle_buffer_mb,
      seed=config.seed, skip_corrupt=config.skip_corrupt_shards, files=files,
      num_records=report["records"])
  try:
    feature_mean, feature_variance = feature_statistics(args.data, manifest, files,
                                                        config.skip_corrupt_shards)
  except tf.errors.DataLossError as e:
    raise _corrupt_data_error(e, *sources) from e
  policy = keras.mixed_precision.global_policy()
  if config.mixed_precision:
    keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    with _strategy().scope():
      model = model_lib.build_tile_model(int(manifest["feature_channels"]),
                                         manifest_lib.num_anchors(manifest), config.hidden,
                                         feature_mean, feature_variance)
      compile_model(model, config.learning_rate, config.box_loss_weight)
  finally:
    keras.mixed_precision.set_global_policy(policy)
  fit_callbacks = [
      keras.callbacks.BackupAndRestore(os.path.join(args.job_dir, "backup"),
                                       double_checkpoint=True, delete_checkpoint=False),
      keras.callbacks.ModelCheckpoint(
          os.path.join(args.job_dir, "checkpoints", "epoch-{epoch:03d}.weights.h5"),
          save_weights_only=True),
      keras.callbacks.TensorBoard(os.path.join(args.job_dir, "logs")),
      keras.callbacks.CSVLogger(os.path.join(args.job_dir, "history.csv"), append=True),
      keras.callbacks.TerminateOnNaN(),
      EpochSizeCheck(report["records"] if config.steps_per_epoch is None else None,
                     val_report["records"] if val_report else None),
  ] + list(callbacks)
  try:
    history = model.fit(train_ds, validation_data=val, epochs=config.epochs,
                        steps_per_epoch=config.steps_per_epoch, callbacks=fit_callbacks,
                        shuffle=False,  # the dataset shuffles
                        verbose=1 if sys.stdout.isatty() else 2)
  except tf.errors.DataLossError as e:
    raise _corrupt_data_error(e, *sources) from e
  train_config = dict(dataclasses.asdict(config), data=args.data, val_data=args.val_data,
                      num_anchors=manifest_lib.num_anchors(manifest),
                      channels=int(manifest["feature_channels"]),
                      smooth_l1_beta=losses_lib.SMOOTH_L1_BETA,
                      loss_normalisation="N_cls (sampled anchors in the batch)",
                      shards_skipped=report["skipped"],
                      epochs_run=[int(e) for e in history.epoch],
                      feature_mean=[float(v) for v in feature_mean],
                      feature_variance=[float(v) for v in feature_variance])
  model_lib.save_rpn(args.job_dir, model, manifest, train_config)
  last = {k: float(v[-1]) for k, v in history.history.items() if v}
  storage.write_json(os.path.join(args.job_dir, "metrics.json"), last)
  return last


def main(argv: Optional[Sequence[str]] = None) -> int:
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
  args = build_parser().parse_args(argv)
  try:
    last = train(args)
  except manifest_lib.ManifestError as e:  # CorruptShardError included
    print(f"rpn-train: error: {e}", file=sys.stderr)
    return 2
  print("final epoch: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(last.items())))
  print(f"model: {os.path.join(args.job_dir, model_lib.WEIGHTS_NAME)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
