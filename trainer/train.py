"""`rpn-train`: stream the shards of rpn-preprocess into the Keras RPN head.

    rpn-train --data DIR [--val_data DIR] --job_dir JOB [--epochs 10] [--batch_size 256]

The console script is trainer.cli.train_main: it checks the flags before
TensorFlow loads and calls train() with the typed arguments it built from
them (trainer/arguments.py: TrainArgs).

Shape shorthand: B tiles per step, C feature channels, A anchors per point.
Batches are tiles [B, 3, 3, C] with targets {"scores": [B, A], "deltas":
[B, 5A]} (data.py); the losses and metrics skip anchors labelled -1
(losses.py). The model trains on objectness logits; the saved weights give
sigmoid scores (model.py).

Before training, each shard's size is checked against the manifest (a stat
per file: cheap on gs://); --verify_shards also walks every record's framing
and checksum (reads every byte). A corrupt record found during training is
named either way. On several GPUs it trains with MirroredStrategy; the losses
are those of the whole batch (losses.py).

Writes into JOB: manifest.json (the data's, verbatim; first, so that a rerun
on other data fails fast), feature_statistics.json (the input
standardisation, sampled across all shards), logs/ (TensorBoard),
checkpoints/ (weights per epoch), backup/ (training state after each epoch),
history.csv and history.png (redrawn after each epoch), and at the end
rpn.weights.h5, train_config.json and metrics.json. Rerunning the same
command after an interruption resumes from backup/ at the next epoch.
Rerunning a finished job keeps its results and says it is complete; a larger
--epochs trains on from where it stopped (use a fresh JOB to start over).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import sys
import tempfile
import warnings
from typing import Dict, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from pipeline.core import config as config_lib
from pipeline.io import manifest as manifest_lib
from pipeline.io import schema, storage
from trainer import data as data_lib
from trainer import job, plots
from trainer import losses as losses_lib
from trainer import maps as maps_lib
from trainer import model as model_lib
from trainer import sampling as sampling_lib
from trainer.arguments import TrainArgs

_LOGGER = logging.getLogger(__name__)
STATISTICS_TILES = 20000  # tiles sampled for the per-channel feature statistics
# Each shard gives its share of STATISTICS_TILES, drawn at random (seeded) from
# its first STATISTICS_WINDOW times that many records: reads are bounded by
# STATISTICS_WINDOW * STATISTICS_TILES records, wherever the shards are.
STATISTICS_WINDOW = 4
CHECKPOINT_NAME = "epoch-{epoch:03d}.weights.h5"  # JOB/checkpoints/, epochs from 1
BEST_MONITOR = "val_loss"  # what JOB/best/ and early stopping go by


def default_strategy():
  """MirroredStrategy over the GPUs when there are several, else the default strategy."""
  gpus = tf.config.list_physical_devices("GPU")
  if len(gpus) > 1:
    _LOGGER.warning("training on %d GPUs with MirroredStrategy", len(gpus))
    return tf.distribute.MirroredStrategy()
  _LOGGER.warning("training on %s", f"the GPU {gpus[0].name}" if gpus else
                  "the CPU (no GPU found)")
  return tf.distribute.get_strategy()


def _load_data(data_dir: str, skip_corrupt: bool, verify: bool):
  """(manifest, usable shard paths, report) of a checked shard directory."""
  manifest = manifest_lib.Manifest.load(data_dir)
  files, report = data_lib.check_shards(data_dir, manifest, skip_corrupt, verify=verify)
  if not files:
    raise data_lib.CorruptShardError(f"{data_dir}: no readable shard")
  return manifest, files, report


def sample_centres(manifest: manifest_lib.Manifest, files: Sequence[str],
                   records_per_shard: Dict[str, int],
                   max_tiles: int = STATISTICS_TILES, seed: int = 0,
                   skip_corrupt: bool = False) -> Tuple[np.ndarray, Dict]:
  """(centre features [N, C], what was sampled) from all shards, about max_tiles in all.

  Each shard gives a share proportional to its records: each of its first
  STATISTICS_WINDOW * share records is kept with probability 1 /
  STATISTICS_WINDOW, drawn from (seed, shard index), so the sample is the same
  on every run and spreads over many images even when a shard holds whole
  images in a row. With fewer records than max_tiles, all are used.
  """
  counts = [int(records_per_shard.get(path, 0)) for path in files]
  total = sum(counts)
  if total == 0:
    raise data_lib.CorruptShardError(f"{files[0]}: the shards hold no record")
  fraction = min(1.0, max_tiles / total)
  windows = [min(n, int(np.ceil(n * fraction * STATISTICS_WINDOW))) for n in counts]
  keep = [n * fraction / w if w else 0.0 for n, w in zip(counts, windows, strict=True)]
  compression = manifest.tfrecord_compression
  num_anchors = manifest.num_anchors
  channels, dtype = manifest.feature_channels, manifest.dtype

  def shard_sample(index, path, window, probability):
    records = tf.data.TFRecordDataset(path, compression_type=compression, buffer_size=1 << 20)
    if skip_corrupt:
      records = records.ignore_errors(log_warning=True)
    draws = tf.random.stateless_uniform([window], seed=tf.stack([tf.cast(seed, tf.int64),
                                                                 index]))
    chosen = tf.data.Dataset.from_tensor_slices(draws < probability)
    return (tf.data.Dataset.zip((records.take(window), chosen))
            .filter(lambda record, kept: kept)
            .map(lambda record, kept: (record, index)))

  shards = tf.data.Dataset.from_tensor_slices((
      tf.range(len(files), dtype=tf.int64), list(files), tf.constant(windows, tf.int64),
      tf.constant(keep, tf.float32)))
  sample = (shards.interleave(shard_sample, cycle_length=min(len(files), 64),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(1024)
            .map(lambda records, index: _centres_and_levels(schema.parse_examples(
                records, num_anchors, channels, dtype, manifest.level_channels)) + (index,),
                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
  centres, levels, used = [], [], set()
  for features, level, index in sample:
    centres.append(features.numpy())
    levels.append(level.numpy())
    used.update(index.numpy().tolist())
  centres = np.concatenate(centres) if centres else np.zeros((0, channels), np.float32)
  if not len(centres):
    raise data_lib.CorruptShardError(f"{files[0]}: no record could be read for the "
                                     f"feature statistics")
  info = {"records": int(len(centres)), "shards": len(used), "of_records": total,
          "of_shards": len(files), "seed": seed, "max_records": max_tiles,
          "window": STATISTICS_WINDOW}
  if manifest.num_levels > 1:  # the level of each centre, for each level's statistics
    info["levels"] = np.concatenate(levels)
  return centres, info


def _centres_and_levels(parsed):
  """(centre features [B, C], level [B]) of parsed records."""
  return parsed[schema.TILE_KEY][:, 1, 1, :], parsed[schema.LEVEL_KEY]


def level_statistics(centres: np.ndarray, levels: Optional[np.ndarray], num_levels: int,
                     level_channels=None):
  """(mean, variance) of the centre features: [C] each for one level; [L, C]
  each for several, every level's own (model.feature_statistics of its
  centres; a level with no centre in the sample takes those of all levels).
  With `level_channels` (levels of different channel counts, C their most)
  a level's channels beyond its own count, zero padding in every tile, get
  mean 0 and variance 1: they stay zero."""
  if num_levels == 1 or levels is None:
    return model_lib.feature_statistics(centres)
  pooled = model_lib.feature_statistics(centres)
  per_level = [model_lib.feature_statistics(centres[levels == level])
               if np.any(levels == level) else pooled for level in range(num_levels)]
  mean, variance = np.stack([m for m, _ in per_level]), np.stack([v for _, v in per_level])
  for level, channels in enumerate(level_channels or ()):
    mean[level, int(channels):], variance[level, int(channels):] = 0.0, 1.0
  return mean, variance


def feature_statistics(data_dir: str, manifest: manifest_lib.Manifest, files,
                       skip_corrupt: bool = False,
                       max_tiles: int = STATISTICS_TILES, records_per_shard=None,
                       seed: int = 0):
  """Per-channel (mean, variance) of the centre features of about max_tiles
  tiles sampled across all shards (sample_centres). records_per_shard
  defaults to check_shards' report of data_dir."""
  if records_per_shard is None:
    records_per_shard = data_lib.check_shards(data_dir, manifest, skip_corrupt)[1][
        "records_per_shard"]
  centres, info = sample_centres(manifest, files, records_per_shard, max_tiles, seed,
                                 skip_corrupt)
  return level_statistics(centres, info.get("levels"), manifest.num_levels,
                          manifest.level_channels)


def _job_statistics(run: TrainArgs, manifest: manifest_lib.Manifest, files, report,
                    sampling=None) -> Dict:
  """JOB/feature_statistics.json: read when it was made from the same data and
  seed (a resumed or continued job), else sampled and written. From a maps
  dataset (`sampling`: its anchors and targets) the tiles are epoch 0's."""
  config = run.config
  path = job.path(run.job_dir, job.STATISTICS_NAME)
  wanted = {"data": run.data, "seed": config.seed, "max_records": STATISTICS_TILES}
  if sampling is not None:
    wanted["anchor"] = manifest.anchor
    wanted["targets"] = manifest.targets
  if storage.exists(path):
    saved = storage.read_json(path)
    if all(saved.get("sample", {}).get(k) == v for k, v in wanted.items()):
      return saved
  if sampling is not None:
    centres, info = maps_lib.sample_centres(files, manifest, *sampling, STATISTICS_TILES,
                                            config.skip_corrupt_shards)
    info.update(seed=config.seed, anchor=manifest.anchor, targets=manifest.targets)
  else:
    centres, info = sample_centres(manifest, files, report["records_per_shard"],
                                   STATISTICS_TILES, config.seed, config.skip_corrupt_shards)
  levels = info.pop("levels", None)
  mean, variance = level_statistics(centres, levels, manifest.num_levels,
                                    manifest.level_channels)
  if levels is not None:
    info["records_per_level"] = np.bincount(levels, minlength=manifest.num_levels).tolist()
  statistics = {"sample": dict(info, data=run.data), "feature_mean": np.asarray(mean).tolist(),
                "feature_variance": np.asarray(variance).tolist()}
  storage.write_json(path, statistics)
  return statistics


def _raise_input_error(error: tf.errors.OpError, dirs_and_manifests) -> None:
  """Raises what a TensorFlow error of the input means: a maps record that
  does not hold together (maps.MapRecordError, naming it), a corrupt shard
  (DataLossError: found and named), else the error itself."""
  record_error = maps_lib.record_error(error)
  if record_error is not None:
    raise record_error from error
  if isinstance(error, tf.errors.DataLossError):
    raise _corrupt_data_error(error, *dirs_and_manifests) from error
  raise error


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


def optimizer(learning_rate: float, weight_decay: float = 0.0) -> keras.optimizers.Optimizer:
  """Adam; with weight_decay > 0 AdamW, whose decoupled decay leaves the biases alone."""
  if not weight_decay:
    return keras.optimizers.Adam(learning_rate)
  adamw = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
  adamw.exclude_from_weight_decay(var_names=["bias"])
  return adamw


def compile_model(model, learning_rate: float, box_loss_weight: float,
                  weight_decay: float = 0.0) -> None:
  """Compiles a tile model built with logits=True: the losses take logits."""
  if model.get_layer("objectness").get_config()["activation"] != "linear":
    raise ValueError("compile_model needs the training variant of the tile model, whose "
                     "scores are logits: model.build_tile_model(..., logits=True)")
  loss, loss_weights = losses_lib.rpn_losses(box_loss_weight)
  model.compile(optimizer=optimizer(learning_rate, weight_decay), loss=loss,
                loss_weights=loss_weights,
                metrics={"scores": losses_lib.objectness_metrics(from_logits=True)})


def _history_rows(job_dir: str):
  """The rows of JOB/history.csv (CSVLogger's), [] when there is none."""
  path = storage.join(job_dir, plots.HISTORY_NAME)
  if not storage.exists(path):
    return []
  return list(csv.DictReader(io.StringIO(storage.read_text(path))))


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
  """Keras' EarlyStopping on val_loss that, when a job resumes, takes up the
  best val_loss so far and the epochs since it from JOB/history.csv, so that
  an interruption does not reset the patience."""

  def __init__(self, job_dir: str, patience: int):
    super().__init__(monitor=BEST_MONITOR, mode="min", patience=patience)
    self.job_dir = job_dir

  def on_train_begin(self, logs=None):
    super().on_train_begin(logs)
    values = _monitored(_history_rows(self.job_dir))
    if values:
      self.best_epoch = int(np.argmin(values))
      self.best = values[self.best_epoch]
      self.wait = len(values) - 1 - self.best_epoch


def _row_metrics(row: Dict[str, str]) -> Dict[str, float]:
  """The logs of one history.csv row (name -> value), without the epoch and the blanks."""
  return {k: float(v) for k, v in row.items() if k != "epoch" and v not in ("", "NA", None)}


def _monitored(rows) -> list:
  """BEST_MONITOR of each history.csv row, inf where a row lacks it."""
  out = []
  for row in rows:
    value = row.get(BEST_MONITOR)
    out.append(float(value) if value not in (None, "", "NA") else float("inf"))
  return out


def save_best(job_dir: str, model, manifest: manifest_lib.Manifest,
              train_config: dict) -> Optional[int]:
  """JOB/best/: the epoch of least val_loss (history.csv, all runs of the job)
  as a job dir of its own (its checkpoint's weights, the manifest,
  train_config.json with best_epoch, metrics.json with that epoch's logs).
  Returns that epoch (0-based), None without validation figures. Loads the
  checkpoint into `model`."""
  rows = _history_rows(job_dir)
  values = _monitored(rows)
  if not values or min(values) == float("inf"):
    return None
  best = int(np.argmin(values))
  checkpoint = os.path.join(job_dir, "checkpoints", CHECKPOINT_NAME.format(epoch=best + 1))
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, os.path.basename(checkpoint))
    with open(local, "wb") as f:
      f.write(storage.read_bytes(checkpoint))
    model.load_weights(local)
  best_dir = storage.join(job_dir, job.BEST_DIR)
  model_lib.save_rpn(best_dir, model, manifest, dict(
      train_config, best_epoch=best, best_monitor=BEST_MONITOR, checkpoint=checkpoint))
  storage.write_json(storage.join(best_dir, job.METRICS_NAME), _row_metrics(rows[best]))
  return best


def train(run: TrainArgs, callbacks: Sequence = (),
          strategy: Optional[tf.distribute.Strategy] = None) -> Dict[str, float]:
  """Trains, saves into the job dir; returns the last epoch's logs (name -> value).

  `run` comes from rpn-train's checked flags (trainer.cli.check_train).
  `callbacks` are added to fit()'s (tests use this to interrupt a run);
  `strategy` defaults to default_strategy(). A job that already ran
  --epochs epochs is left as it is: its metrics.json is returned.
  """
  config = run.config
  keras.utils.set_random_seed(config.seed)
  manifest = manifest_lib.Manifest.load(run.data)
  # maps: the anchors and targets drawn at training; None for tiles
  sampling = sampling_lib.data_sampling(manifest, run.sampling, config.seed)
  manifest = sampling_lib.training_manifest(manifest, sampling)
  job_manifest = os.path.join(run.job_dir, config_lib.MANIFEST_NAME)
  if storage.exists(job_manifest):
    manifest_lib.Manifest.read(job_manifest).check_compatible(manifest, (
          f"--data {run.data} (the job dir {run.job_dir} holds a model of other data; "
          f"use a fresh --job_dir)"))
    finished = job.finished_epochs(run.job_dir)
    if finished is not None and finished >= config.epochs:
      _LOGGER.warning("%s is complete: it ran %d epochs (--epochs %d); its results are kept. "
                      "Pass a larger --epochs to train on, or a fresh --job_dir to start over.",
                      run.job_dir, finished, config.epochs)
      return storage.read_json(job.path(run.job_dir, job.METRICS_NAME))
  data_manifest, files, report = _load_data(run.data, config.skip_corrupt_shards,
                                            config.verify_shards)
  manifest = sampling_lib.training_manifest(data_manifest, sampling)
  sources = [(run.data, data_manifest)]
  val = val_report = None
  if run.val_data:
    val_manifest, val_files, val_report = _load_data(run.val_data, config.skip_corrupt_shards,
                                                     config.verify_shards)
    val_maps = val_manifest.is_maps
    # maps validation data is drawn with the training anchors and targets
    drawn = None
    if val_maps:
      drawn = sampling or sampling_lib.manifest_sampling(manifest, config.seed)
    manifest.check_compatible(sampling_lib.training_manifest(val_manifest, drawn),
                              f"--val_data {run.val_data}")
    sources.append((run.val_data, val_manifest))
    if val_maps:  # always epoch 0's samples, so that the epochs compare
      val = maps_lib.make_dataset(val_files, val_manifest, *drawn, config.batch_size, epochs=0,
                                  shuffle=False, skip_corrupt=config.skip_corrupt_shards)
      val_report = None  # its tiles are not counted in advance
    else:
      val = data_lib.make_dataset(run.val_data, val_manifest, config.batch_size,
                                  shuffle=False, skip_corrupt=config.skip_corrupt_shards,
                                  files=val_files, num_records=val_report["records"])
  storage.makedirs(os.path.join(run.job_dir, "checkpoints"))
  storage.write_json(job_manifest, manifest.to_json())
  try:
    statistics = _job_statistics(run, manifest, files, report, sampling)
  except tf.errors.OpError as e:
    _raise_input_error(e, sources)
  steps_per_epoch = config.steps_per_epoch
  epoch_log = None
  if sampling is not None:  # pass after pass, each drawn afresh; an epoch is about one
    epoch_log = maps_lib.EpochLog(images_per_pass=report["records"])
    tiles = report["records"] * statistics["sample"]["tiles_per_image"]
    train_ds = maps_lib.make_dataset(
        files, data_manifest, *sampling, config.batch_size, epochs=epoch_log, shuffle=True,
        shuffle_buffer_mb=config.shuffle_buffer_mb, seed=config.seed,
        skip_corrupt=config.skip_corrupt_shards, tiles_per_pass=int(tiles))
    if steps_per_epoch is None:
      steps_per_epoch = max(1, int(np.ceil(tiles / config.batch_size)))
      _LOGGER.warning("maps: an epoch is %d steps of %d tiles (about one pass: %d images at "
                      "%.1f tiles each in epoch 0's sample)", steps_per_epoch,
                      config.batch_size, report["records"],
                      statistics["sample"]["tiles_per_image"])
  else:
    train_ds = data_lib.make_dataset(
        run.data, manifest, config.batch_size, shuffle=True,
        repeat=steps_per_epoch is not None, shuffle_buffer_mb=config.shuffle_buffer_mb,
        seed=config.seed, skip_corrupt=config.skip_corrupt_shards, files=files,
        num_records=report["records"])
  feature_mean, feature_variance = statistics["feature_mean"], statistics["feature_variance"]
  policy = keras.mixed_precision.global_policy()
  if config.mixed_precision:
    keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    with (strategy or default_strategy()).scope():
      model = model_lib.build_tile_model(manifest.feature_channels,
                                         manifest.num_anchors, config.hidden,
                                         feature_mean, feature_variance, logits=True,
                                         dropout=config.dropout,
                                         level_channels=manifest.level_channels,
                                         projection=config.projection)
      compile_model(model, config.learning_rate, config.box_loss_weight, config.weight_decay)
  finally:
    keras.mixed_precision.set_global_policy(policy)
  fit_callbacks = [
      keras.callbacks.ModelCheckpoint(
          os.path.join(run.job_dir, "checkpoints", CHECKPOINT_NAME), save_weights_only=True),
      keras.callbacks.TensorBoard(os.path.join(run.job_dir, "logs")),
      keras.callbacks.CSVLogger(os.path.join(run.job_dir, plots.HISTORY_NAME), append=True),
      keras.callbacks.TerminateOnNaN(),
      EpochSizeCheck(report["records"] if config.steps_per_epoch is None and sampling is None
                     else None, val_report["records"] if val_report else None),
      plots.HistoryPlot(run.job_dir),
      # Last: the point a rerun resumes from moves on only once the epoch's
      # checkpoint and history row are written, so that a failure while
      # writing them (a full disk) has the rerun do that epoch again. Two
      # copies: a backup cut short falls back to the one before.
      keras.callbacks.BackupAndRestore(os.path.join(run.job_dir, "backup"),
                                       double_checkpoint=True, delete_checkpoint=False),
  ] + list(callbacks)
  early_stopping = None
  if config.early_stopping_patience and val is not None:
    # Last of all: it only sets stop_training, which Keras reads once every
    # callback has ended the epoch.
    early_stopping = ResumableEarlyStopping(run.job_dir, config.early_stopping_patience)
    fit_callbacks.append(early_stopping)
  if epoch_log is not None:
    fit_callbacks.insert(0, maps_lib.EpochClock(epoch_log))
  try:
    with warnings.catch_warnings():
      if val_report is None and val is not None:  # maps: Keras counts its batches once
        warnings.filterwarnings("ignore", message="Your input ran out of data")
      history = model.fit(train_ds, validation_data=val, epochs=config.epochs,
                          steps_per_epoch=steps_per_epoch, callbacks=fit_callbacks,
                          shuffle=False,  # the dataset shuffles
                          verbose=1 if sys.stdout.isatty() else 2)
  except tf.errors.OpError as e:
    _raise_input_error(e, sources)
  if history.history:
    last = {k: float(v[-1]) for k, v in history.history.items() if v}
  else:  # no epoch left to run (the backup holds the last epoch): history.csv's last row
    rows = _history_rows(run.job_dir)
    last = _row_metrics(rows[-1]) if rows else {}
  train_config = dict(dataclasses.asdict(config), data=run.data, val_data=run.val_data,
                      num_anchors=manifest.num_anchors,
                      channels=manifest.feature_channels,
                      smooth_l1_beta=losses_lib.SMOOTH_L1_BETA,
                      loss_normalisation="N_cls (sampled anchors in the global batch)",
                      objectness_loss="sigmoid cross-entropy on logits",
                      shards_skipped=report["skipped"],
                      layout=manifest.layout,
                      anchor=manifest.anchor, targets=manifest.targets,
                      steps_per_epoch_used=steps_per_epoch,
                      passes_drawn=epoch_log.done if epoch_log else None,
                      epochs_run=[int(e) for e in history.epoch],
                      epochs_completed=config.epochs,
                      stopped_early_after=(int(early_stopping.stopped_epoch) + 1
                                           if early_stopping and early_stopping.stopped_epoch
                                           else None),
                      replicas=int(model.distribute_strategy.num_replicas_in_sync),
                      feature_statistics=statistics["sample"],
                      feature_mean=feature_mean, feature_variance=feature_variance)
  model_lib.save_rpn(run.job_dir, model, manifest, train_config)
  best = save_best(run.job_dir, model, manifest, train_config) if val is not None else None
  if best is not None:
    _LOGGER.warning("the best epoch by %s is %d: its model is in %s", BEST_MONITOR, best + 1,
                    storage.join(run.job_dir, job.BEST_DIR))
  # Last: a job with metrics.json is finished (job.finished_epochs).
  storage.write_json(os.path.join(run.job_dir, job.METRICS_NAME), last)
  return last
