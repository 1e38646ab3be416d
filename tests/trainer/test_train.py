"""trainer.train: rpn-train on generated shards: the loss falls, the job dir is
complete, an interrupted run resumes, bad data fails with the file named."""
import csv
import json
import os
import shutil

import keras
import numpy as np
import pytest

from pipeline.io import manifest as manifest_lib
from tests import trainer_fixtures as fixtures
from trainer import arguments
from trainer import cli as trainer_cli
from trainer import data as data_lib
from trainer import model as model_lib
from trainer import train as train_lib

CHANNELS = 8


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
  """Shards whose labels and deltas are functions of the tile: train and val."""
  train_dir = str(tmp_path_factory.mktemp("train"))
  fixtures.write_shards(train_dir, num_records=1024, channels=CHANNELS, num_shards=4,
                        learnable=True, seed=1)
  val_dir = str(tmp_path_factory.mktemp("val"))
  fixtures.write_shards(val_dir, num_records=256, channels=CHANNELS, num_shards=2,
                        dtype="float16", compression="GZIP", learnable=True, seed=2)
  return train_dir, val_dir


def _args(data, job, *extra):
  return trainer_cli.train_args(trainer_cli.train_parser().parse_args(
      ["--data", data, "--job_dir", job, "--batch_size", "64", "--hidden", "16", *extra]))


def _history(job):
  with open(os.path.join(job, "history.csv")) as f:
    return list(csv.DictReader(f))


def test_parser_defaults_come_from_the_config():
  args = trainer_cli.train_parser().parse_args(["--data", "d", "--job_dir", "j"])
  assert trainer_cli.train_config_from_args(args) == arguments.TrainConfig()
  args = trainer_cli.train_parser().parse_args(
      ["--data", "d", "--job_dir", "j", "--mixed_precision", "--steps_per_epoch", "5",
       "--learning_rate", "0.01"])
  assert args.mixed_precision and args.steps_per_epoch == 5 and args.learning_rate == 0.01


def test_short_run_loss_falls_and_job_dir_is_complete(learnable, tmp_path):
  train_dir, val_dir = learnable
  job = str(tmp_path / "job")
  last = train_lib.train(_args(train_dir, job, "--val_data", val_dir, "--epochs", "6",
                               "--learning_rate", "1e-2"))
  rows = _history(job)
  assert [r["epoch"] for r in rows] == ["0", "1", "2", "3", "4", "5"]
  for key in ("loss", "scores_loss", "deltas_loss", "scores_objectness_accuracy",
              "scores_positive_precision", "scores_positive_recall", "val_loss"):
    assert key in rows[0], key
  assert float(rows[-1]["loss"]) < 0.6 * float(rows[0]["loss"])
  assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])
  assert last["scores_objectness_accuracy"] > 0.8
  assert float(rows[0]["scores_tiles"]) == 1024 and float(rows[0]["val_scores_tiles"]) == 256
  for name in ("rpn.weights.h5", "manifest.json", "train_config.json", "metrics.json"):
    assert os.path.isfile(os.path.join(job, name)), name
  assert os.listdir(os.path.join(job, "logs"))  # TensorBoard events
  assert len(os.listdir(os.path.join(job, "checkpoints"))) == 6
  tile_model, full, manifest, config = model_lib.load_rpn(job)
  assert manifest == manifest_lib.Manifest.load(train_dir)
  assert config["hidden"] == 16 and config["channels"] == CHANNELS
  assert config["epochs"] == 6 and len(config["feature_mean"]) == CHANNELS
  assert config["box_loss_weight"] == 1.0
  # The saved model scores the data as well as the trained one did.
  tiles, targets = next(iter(data_lib.make_dataset(
      val_dir, manifest_lib.Manifest.load(val_dir), 256, shuffle=False)))
  labels, scores = targets["scores"].numpy(), tile_model(tiles)["scores"].numpy()
  sampled = labels >= 0
  assert np.mean((scores[sampled] >= 0.5) == (labels[sampled] == 1)) > 0.8


def test_interrupted_run_resumes_from_backup(learnable, tmp_path):
  train_dir, _ = learnable
  job = str(tmp_path / "job")
  snapshot = {}

  class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
      if epoch == 1:
        snapshot["weights"] = self.model.get_layer("rpn_conv").get_weights()[0].copy()
        raise KeyboardInterrupt("killed after epoch 2")

  with pytest.raises(KeyboardInterrupt):
    train_lib.train(_args(train_dir, job, "--epochs", "3"), callbacks=[Interrupt()])
  assert not os.path.exists(os.path.join(job, "rpn.weights.h5"))
  assert "latest.weights.h5" in os.listdir(os.path.join(job, "backup"))

  class Start(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):  # runs after BackupAndRestore's
      snapshot["restored"] = self.model.get_layer("rpn_conv").get_weights()[0].copy()

  last = train_lib.train(_args(train_dir, job, "--epochs", "3"), callbacks=[Start()])
  np.testing.assert_array_equal(snapshot["restored"], snapshot["weights"])
  # Epochs 0 and 1 ran before the interruption; the rerun ran epoch 2 only.
  assert [r["epoch"] for r in _history(job)] == ["0", "1", "2"]
  with open(os.path.join(job, "train_config.json")) as f:
    assert json.load(f)["epochs_run"] == [2]
  assert "loss" in last
  # A finished job rerun with more epochs trains on from where it stopped.
  train_lib.train(_args(train_dir, job, "--epochs", "4"))
  assert [r["epoch"] for r in _history(job)] == ["0", "1", "2", "3"]


def test_mixed_precision_and_fixed_steps_per_epoch(learnable, tmp_path):
  train_dir, _ = learnable
  job = str(tmp_path / "job")
  last = train_lib.train(_args(train_dir, job, "--epochs", "2", "--steps_per_epoch", "20",
                               "--mixed_precision"))
  assert keras.mixed_precision.global_policy().name == "float32"  # restored
  assert last["scores_tiles"] == 20 * 64  # more than the 1024 records: the data repeats
  assert np.isfinite(last["loss"])
  tile_model = model_lib.load_rpn(job)[0]  # loads as float32
  assert tile_model(np.zeros((1, 3, 3, CHANNELS), np.float32))["scores"].dtype == "float32"


def test_job_dir_of_other_data_fails_clearly(learnable, tmp_path):
  train_dir, _ = learnable
  job = str(tmp_path / "job")
  other = str(tmp_path / "other")
  fixtures.write_shards(other, num_records=64, channels=CHANNELS,
                        manifest_changes={"backbone": "ResNet50"})
  train_lib.train(_args(other, job, "--epochs", "1"))
  with pytest.raises(manifest_lib.ManifestError, match=f"--data {train_dir}.*backbone"):
    train_lib.train(_args(train_dir, job, "--epochs", "1"))
  assert trainer_cli.train_main(["--data", train_dir, "--val_data", other, "--job_dir",
                                 str(tmp_path / "job2")]) == 2


def test_bad_shards_are_named_or_skipped(tmp_path, capsys, caplog):
  data = str(tmp_path / "data")
  manifest, _ = fixtures.write_shards(data, num_records=96, channels=CHANNELS, num_shards=3)
  victim = manifest.shard_paths(data)[0]
  # A payload byte flipped inside a sound frame: found during training, named.
  flipped = shutil.copytree(data, str(tmp_path / "flipped"))
  flipped_victim = os.path.join(flipped, os.path.basename(victim))
  with open(flipped_victim, "r+b") as f:
    f.seek(200)
    byte = f.read(1)
    f.seek(200)
    f.write(bytes([byte[0] ^ 0xFF]))
  with pytest.raises(data_lib.CorruptShardError,
                     match=f"corrupt data while training.*{flipped_victim}: corrupt record 0"):
    train_lib.train(_args(flipped, str(tmp_path / "job0"), "--epochs", "1"))
  # ... or, with --skip_corrupt_shards, the rest of that file is dropped, with a warning.
  last = train_lib.train(_args(flipped, str(tmp_path / "job00"), "--epochs", "1",
                               "--skip_corrupt_shards"))
  assert last["scores_tiles"] == 64  # record 0 of the 32 in the bad shard was the flipped one
  assert "saw 64 of the 96 tiles in its shards (32 lost" in caplog.text
  # A truncated shard: rpn-train exits 2 naming it, or trains without it when asked.
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) - 50)
  assert trainer_cli.train_main(["--data", data, "--job_dir", str(tmp_path / "job1")]) == 2
  assert os.path.basename(victim) in capsys.readouterr().err
  job = str(tmp_path / "job2")
  last = train_lib.train(_args(data, job, "--epochs", "1", "--skip_corrupt_shards"))
  assert last["scores_tiles"] == 64  # 32 records in each of the 2 sound shards
  with open(os.path.join(job, "train_config.json")) as f:
    assert list(json.load(f)["shards_skipped"]) == [victim]


def test_rerun_of_a_finished_job_keeps_its_results(learnable, tmp_path, caplog):
  train_dir, val_dir = learnable
  job = str(tmp_path / "job")
  first = train_lib.train(_args(train_dir, job, "--val_data", val_dir, "--epochs", "2"))
  def read(name):
    with open(os.path.join(job, name), "rb") as f:
      return f.read()

  files = {name: read(name)
           for name in ("metrics.json", "history.csv", "rpn.weights.h5", "train_config.json")}
  again = train_lib.train(_args(train_dir, job, "--val_data", val_dir, "--epochs", "2"))
  assert again == pytest.approx(first) and again["val_loss"] > 0
  for name, content in files.items():
    assert read(name) == content, name
  assert f"{job} is complete: it ran 2 epochs" in caplog.text
  # A larger --epochs trains on from there.
  train_lib.train(_args(train_dir, job, "--val_data", val_dir, "--epochs", "3"))
  assert [r["epoch"] for r in _history(job)] == ["0", "1", "2"]
  with open(os.path.join(job, "metrics.json")) as f:
    assert set(json.load(f)) >= {"loss", "val_loss"}
  with open(os.path.join(job, "train_config.json")) as f:
    config = json.load(f)
  assert config["epochs_run"] == [2] and config["epochs_completed"] == 3


def test_feature_statistics_are_sampled_across_all_shards(tmp_path):
  data = str(tmp_path / "data")
  fixtures.write_shards(data, num_records=800, channels=CHANNELS, num_shards=8, seed=4)
  manifest = manifest_lib.Manifest.load(data)
  files, report = data_lib.check_shards(data, manifest)
  centres, info = train_lib.sample_centres(manifest, files, report["records_per_shard"],
                                           max_tiles=80, seed=0)
  assert info["shards"] == 8 and info["of_shards"] == 8 and info["of_records"] == 800
  assert 40 <= info["records"] <= 120 and centres.shape == (info["records"], CHANNELS)
  again, _ = train_lib.sample_centres(manifest, files, report["records_per_shard"],
                                      max_tiles=80, seed=0)
  np.testing.assert_array_equal(again, centres)  # the same sample on every run
  other, _ = train_lib.sample_centres(manifest, files, report["records_per_shard"],
                                      max_tiles=80, seed=1)
  assert other.shape != centres.shape or not np.array_equal(other, centres)
  # Drawn from within each shard's first 4x its share, not its first records only:
  # with 100 records a shard and a share of 10, records up to index 39 are eligible.
  _, records = fixtures.write_shards(str(tmp_path / "again"), num_records=800,
                                     channels=CHANNELS, num_shards=8, seed=4)
  position = {tuple(np.round(tile[1, 1], 5)): index
              for index, (tile, _, _) in enumerate(records.values())}
  shard_positions = [position[tuple(np.round(c, 5))] // 8 for c in centres]
  assert max(shard_positions) >= 10 and max(shard_positions) < 40
  # Fewer records than asked for: all of them.
  everything, info = train_lib.sample_centres(manifest, files, report["records_per_shard"],
                                              max_tiles=10000, seed=0)
  assert info["records"] == 800 and len(everything) == 800


def test_train_config_says_how_the_statistics_were_sampled(learnable, tmp_path):
  train_dir, _ = learnable
  job = str(tmp_path / "job")
  train_lib.train(_args(train_dir, job, "--epochs", "1"))
  with open(os.path.join(job, "train_config.json")) as f:
    sample = json.load(f)["feature_statistics"]
  assert sample["records"] == 1024 and sample["shards"] == 4 and sample["of_shards"] == 4
  assert os.path.isfile(os.path.join(job, "feature_statistics.json"))
  assert os.path.isfile(os.path.join(job, "history.png"))


def test_best_epoch_is_kept_as_a_job_dir_of_its_own(learnable, tmp_path):
  train_dir, val_dir = learnable
  job = str(tmp_path / "job")
  train_lib.train(_args(train_dir, job, "--val_data", val_dir, "--epochs", "4",
                        "--learning_rate", "1e-2"))
  rows = _history(job)
  best = min(range(len(rows)), key=lambda i: float(rows[i]["val_loss"]))
  best_dir = os.path.join(job, "best")
  tile_model, _, manifest, config = model_lib.load_rpn(best_dir)  # loads as a job does
  assert config["best_epoch"] == best and config["best_monitor"] == "val_loss"
  assert manifest == manifest_lib.Manifest.load(train_dir)
  with open(os.path.join(best_dir, "metrics.json")) as f:
    assert json.load(f)["val_loss"] == pytest.approx(float(rows[best]["val_loss"]))
  checkpoint = model_lib.build_tile_model(CHANNELS, manifest.num_anchors, 16,
                                          config["feature_mean"], config["feature_variance"])
  checkpoint.load_weights(os.path.join(job, "checkpoints", f"epoch-{best + 1:03d}.weights.h5"))
  for name in ("rpn_conv", "rpn_cls", "rpn_bbox"):
    for got, want in zip(tile_model.get_layer(name).get_weights(),
                         checkpoint.get_layer(name).get_weights(), strict=True):
      np.testing.assert_array_equal(got, want)
  # Both the job and its best epoch hold a Keras model of their own weights
  # (loading without the project is tested in test_model.py).
  maps = np.random.default_rng(0).normal(size=(1, 3, 4, CHANNELS)).astype(np.float32)
  for directory in (job, best_dir):
    loaded = keras.models.load_model(os.path.join(directory, "rpn.keras"))
    full = model_lib.load_rpn(directory)[1]
    np.testing.assert_allclose(loaded(maps)["scores"], full(maps)["scores"], atol=1e-6)
  assert not np.allclose(keras.models.load_model(os.path.join(job, "rpn.keras"))(maps)["scores"],
                         model_lib.load_rpn(best_dir)[1](maps)["scores"]) or best == 3
  # Without validation data there is no best epoch to keep.
  train_lib.train(_args(train_dir, str(tmp_path / "noval"), "--epochs", "1"))
  assert not os.path.exists(os.path.join(tmp_path, "noval", "best"))


def test_early_stopping_takes_up_its_patience_after_a_resume(tmp_path):
  job = str(tmp_path / "job")
  os.makedirs(job)
  with open(os.path.join(job, "history.csv"), "w") as f:
    f.write("epoch,loss,val_loss\n0,1.0,0.9\n1,0.8,0.5\n2,0.7,0.6\n")
  model = model_lib.build_tile_model(CHANNELS, 9, 4, logits=True)
  stopping = train_lib.ResumableEarlyStopping(job, patience=2)
  stopping.set_model(model)
  stopping.on_train_begin()
  assert stopping.best == 0.5 and stopping.best_epoch == 1 and stopping.wait == 1
  stopping.on_epoch_end(3, {"val_loss": 0.55})  # the second epoch without a better val_loss
  assert model.stop_training and stopping.stopped_epoch == 3
  fresh = train_lib.ResumableEarlyStopping(str(tmp_path / "new"), patience=2)
  fresh.set_model(model)
  model.stop_training = False
  fresh.on_train_begin()  # a new job: nothing to take up
  fresh.on_epoch_end(0, {"val_loss": 0.5})
  fresh.on_epoch_end(1, {"val_loss": 0.6})
  assert not model.stop_training and fresh.best == 0.5


def test_early_stopping_ends_the_run_and_the_job_counts_as_complete(learnable, tmp_path,
                                                                     caplog):
  train_dir, val_dir = learnable

  class Worse(keras.callbacks.Callback):  # val_loss 1.0, 0.5, then rising from epoch 2 on
    def on_epoch_end(self, epoch, logs=None):
      logs["val_loss"] = (1.0, 0.5)[epoch] if epoch < 2 else 0.5 + 0.1 * (epoch - 1)

  job = str(tmp_path / "job")
  run = _args(train_dir, job, "--val_data", val_dir, "--epochs", "8",
              "--early_stopping_patience", "2")
  callbacks = [Worse()]
  train_lib.train(run, callbacks=callbacks)
  # Epoch 1 (0-based) was the last to improve; epochs 2 and 3 did not: stopped after 4.
  assert [r["epoch"] for r in _history(job)] == ["0", "1", "2", "3"]
  with open(os.path.join(job, "train_config.json")) as f:
    config = json.load(f)
  assert config["stopped_early_after"] == 4 and config["early_stopping_patience"] == 2
  assert train_lib.train(run) is not None
  assert f"{job} is complete" in caplog.text


def test_weight_decay_and_dropout_regularise(learnable, tmp_path):
  train_dir, _ = learnable
  norms = {}
  for name, extra in (("plain", ()), ("decay", ("--weight_decay", "2", "--dropout", "0.3"))):
    job = str(tmp_path / name)
    last = train_lib.train(_args(train_dir, job, "--epochs", "3", "--learning_rate", "1e-2",
                                 *extra))
    assert np.isfinite(last["loss"])
    tile_model, _, _, config = model_lib.load_rpn(job)
    norms[name] = float(np.linalg.norm(tile_model.get_layer("rpn_conv").get_weights()[0]))
  assert config["weight_decay"] == 2 and config["dropout"] == 0.3
  # 48 steps that each shrink the kernels by lr * decay = 2 %: about 0.38 of the norm
  assert norms["decay"] < 0.7 * norms["plain"]
  optimizer = train_lib.optimizer(1e-3, 0.01)
  assert isinstance(optimizer, keras.optimizers.AdamW)
  assert type(train_lib.optimizer(1e-3)) is keras.optimizers.Adam


@pytest.mark.parametrize("flags, problem", [
    (("--dropout", "1"), "--dropout 1.0: must be < 1"),
    (("--weight_decay", "-1"), "--weight_decay -1.0: must be >= 0"),
    (("--early_stopping_patience", "2"), "give --val_data too"),
])
def test_regularisation_flags_are_checked(learnable, tmp_path, capsys, flags, problem):
  train_dir, _ = learnable
  assert trainer_cli.train_main(["--data", train_dir, "--job_dir", str(tmp_path / "job"),
                                 *flags]) == 2
  assert problem in capsys.readouterr().err
