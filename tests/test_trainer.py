"""trainer: manifest checks, tf.data input, tile/map equivalence, masked losses,
a short training run whose loss falls, resume from an interrupted run."""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tests import dataset_fixtures as fixtures
from tests import pipeline_helpers as helpers
from trainer import data as data_lib
from trainer import losses
from trainer import manifest as manifest_lib
from trainer import model as model_lib
from trainer import train as train_lib


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  """Shards written by the real pipeline (tiny backbone), float32 and float16+GZIP."""
  root = str(tmp_path_factory.mktemp("data"))
  fixtures.write_dataset(root, num_images=8, seed=11)
  out32 = str(tmp_path_factory.mktemp("f32"))
  helpers.preprocess(root, out32, num_shards=2)
  out16 = str(tmp_path_factory.mktemp("f16"))
  helpers.preprocess(root, out16, num_shards=3,
                     extra=["--tile_dtype", "float16", "--compression", "GZIP"])
  return out32, out16


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


@pytest.mark.parametrize("which", [0, 1])
def test_input_round_trip_against_pipeline_shards(shards, which):
  directory = shards[which]
  manifest = manifest_lib.load_manifest(directory)
  files, report = manifest_lib.check_shards(manifest)
  assert report["records"] == manifest["counts"]["records"] and not report["shards_skipped"]
  expected = {}
  for serialized in helpers.read_records(directory):
    record = helpers.decode_record(serialized, manifest["feature_channels"], manifest["dtype"])
    expected[(record["image_id"], record["location"])] = record
  from pipeline import schema
  # Parsed eagerly, outside Dataset.map: every record matches what was written.
  raw = tf.data.TFRecordDataset(files, compression_type=(
      "GZIP" if manifest["compression"] == "GZIP" else "")).batch(7)
  for serialized in raw:
    eager = schema.parse_examples(serialized, 9, manifest["feature_channels"], manifest["dtype"])
    for i in range(len(eager["labels"])):
      key = (eager["image_id"][i].numpy().decode(), tuple(eager["location"][i].numpy().tolist()))
      record = expected[key]
      np.testing.assert_array_equal(eager["tile"][i].numpy(), record["tile"].astype(np.float32))
      np.testing.assert_array_equal(eager["labels"][i].numpy(), record["labels"])
      np.testing.assert_array_equal(eager["deltas"][i].numpy(), record["deltas"])
  # Through make_dataset (parsed inside Dataset.map, shuffled): the same multiset.
  def row(tile, labels, packed):
    return (np.asarray(tile, np.float32).tobytes(), np.asarray(labels, np.float32).tobytes(),
            np.asarray(packed, np.float32).tobytes())
  want = sorted(row(r["tile"], r["labels"], np.concatenate([r["labels"], r["deltas"]]))
                for r in expected.values())
  got = []
  for tiles, targets in data_lib.make_dataset(files, manifest, batch_size=7, shuffle=True, seed=1):
    got += [row(t, l, p) for t, l, p in zip(tiles.numpy(), targets["scores"].numpy(),
                                            targets["deltas"].numpy())]
  assert sorted(got) == want and len(got) == manifest["counts"]["records"]


def test_manifest_errors_name_the_file(shards, tmp_path):
  with pytest.raises(manifest_lib.ManifestError, match="manifest.json: not found"):
    manifest_lib.load_manifest(str(tmp_path))
  missing = _copy(shards[0], tmp_path / "missing")
  os.remove(os.path.join(missing, "tiles-00001-of-00002.tfrecord"))
  with pytest.raises(manifest_lib.ManifestError, match="tiles-00001-of-00002.tfrecord: shard"):
    manifest_lib.load_manifest(missing)
  stale = _copy(shards[0], tmp_path / "stale")
  shutil.copy(os.path.join(stale, "tiles-00000-of-00002.tfrecord"),
              os.path.join(stale, "tiles-00000-of-00005.tfrecord"))
  with pytest.raises(manifest_lib.ManifestError, match="tiles-00000-of-00005"):
    manifest_lib.load_manifest(stale)
  a = manifest_lib.load_manifest(shards[0])
  b = dict(a, backbone="ResNet50", feature_channels=2048)
  with pytest.raises(manifest_lib.ManifestError, match="backbone"):
    manifest_lib.check_compatible(a, b)


def test_truncated_shard_is_named_or_skipped_with_a_count(shards, tmp_path):
  for which in (0, 1):
    broken = _copy(shards[which], tmp_path / f"broken{which}")
    manifest = manifest_lib.load_manifest(broken)
    victim = manifest_lib.shard_paths(manifest)[0]
    size = os.path.getsize(victim)
    with open(victim, "r+b") as f:
      f.truncate(size - 100)
    with pytest.raises(manifest_lib.ManifestError, match=os.path.basename(victim)):
      manifest_lib.check_shards(manifest)
    files, report = manifest_lib.check_shards(manifest, skip_corrupt=True)
    assert victim not in files and report["shards_skipped"] == [victim]
  # rpn-train reports it as a clear error, not a stack trace from TensorFlow.
  assert train_lib.main(["--data", str(tmp_path / "broken0"), "--job_dir",
                         str(tmp_path / "job"), "--epochs", "1"]) == 2


def test_corrupt_payload_is_found(shards, tmp_path):
  broken = _copy(shards[0], tmp_path / "flipped")
  manifest = manifest_lib.load_manifest(broken)
  victim = manifest_lib.shard_paths(manifest)[1]
  with open(victim, "r+b") as f:
    f.seek(40)
    byte = f.read(1)
    f.seek(40)
    f.write(bytes([byte[0] ^ 0xFF]))
  files, _ = manifest_lib.check_shards(manifest)  # framing is intact: the payload CRC is not
  with pytest.raises(manifest_lib.ManifestError,
                     match=f"corrupt data while training.*{os.path.basename(victim)}: corrupt record"):
    train_lib.train(train_lib.build_parser().parse_args(
        ["--data", broken, "--job_dir", str(tmp_path / "job"), "--epochs", "1",
         "--hidden", "8"]))


def test_inference_model_equals_tile_model_on_every_point():
  rng = np.random.default_rng(0)
  channels = 6
  mean, variance = rng.normal(size=channels), rng.uniform(0.5, 2.0, channels)
  tile_model = model_lib.build_tile_model(channels, 9, 16, mean, variance)
  full = model_lib.build_inference_model(tile_model, channels)
  for height, width in ((1, 1), (4, 7), (9, 3)):
    fmap = rng.normal(size=(1, height, width, channels)).astype(np.float32)
    out = full(fmap)
    padded = np.pad(fmap[0], ((1, 1), (1, 1), (0, 0)))
    tiles = np.stack([padded[y:y + 3, x:x + 3] for y in range(height) for x in range(width)])
    expected = tile_model(tiles)
    np.testing.assert_allclose(out["scores"].numpy().reshape(-1, 9), expected["scores"],
                               atol=1e-5)
    np.testing.assert_allclose(out["deltas"].numpy().reshape(-1, 36), expected["deltas"],
                               atol=1e-5)


def test_masked_losses_against_hand_computed_values():
  labels = np.array([[1, 0, -1]], np.float32)
  scores = np.array([[0.8, 0.4, 0.99]], np.float32)
  # BCE over the two sampled anchors: -(ln 0.8 + ln 0.6) / 2 = (0.22314 + 0.51083) / 2
  assert float(losses.objectness_loss(labels, scores)) == pytest.approx(0.366985, abs=1e-5)
  # The ignored anchor's score changes nothing.
  assert float(losses.objectness_loss(labels, np.array([[0.8, 0.4, 0.01]], np.float32))) == \
      pytest.approx(0.366985, abs=1e-5)
  # Box loss, 3 anchors: only anchor 0 is positive; residuals (0.05, -0.5, 0, 1):
  #   0.05 < beta = 1/9: 0.5 * 0.05^2 * 9 = 0.01125; |-0.5|: 0.5 - 1/18 = 0.44444;
  #   0: 0; 1: 1 - 1/18 = 0.94444; sum 1.40014, / 2 sampled anchors = 0.70007.
  targets = np.zeros((1, 12), np.float32)
  targets[0, :4] = [0.1, 0.5, 0.0, -1.0]
  deltas = np.zeros((1, 12), np.float32)
  deltas[0, :4] = [0.15, 0.0, 0.0, 0.0]
  deltas[0, 4:] = 7.0  # anchors 1 (negative) and 2 (ignored): no box loss
  packed = np.concatenate([labels, targets], axis=1)
  assert float(losses.box_loss(packed, deltas)) == pytest.approx(0.700069, abs=1e-5)
  # No sampled anchor at all: zero, not NaN.
  none = np.full((1, 3), -1, np.float32)
  assert float(losses.objectness_loss(none, scores)) == 0.0
  assert float(losses.box_loss(np.concatenate([none, targets], 1), deltas)) == 0.0


def test_masked_metrics_ignore_unsampled_anchors():
  accuracy, precision, recall = losses.objectness_metrics()
  labels = np.array([[1, 1, 0, 0, -1, -1]], np.float32)
  scores = np.array([[0.9, 0.2, 0.7, 0.1, 0.99, 0.0]], np.float32)
  for metric in (accuracy, precision, recall):
    metric.update_state(labels, scores)
  # tp 1 (0.9), fn 1 (0.2), fp 1 (0.7), tn 1 (0.1); the -1 anchors count nowhere.
  assert float(accuracy.result()) == pytest.approx(0.5)
  assert float(precision.result()) == pytest.approx(0.5)
  assert float(recall.result()) == pytest.approx(0.5)


def test_short_training_run_loss_falls_and_job_dir_is_complete(shards, tmp_path):
  job = str(tmp_path / "job")
  args = train_lib.build_parser().parse_args(
      ["--data", shards[0], "--val_data", shards[0], "--job_dir", job, "--epochs", "6",
       "--batch_size", "32", "--hidden", "32", "--learning_rate", "3e-3"])
  train_lib.train(args)
  with open(os.path.join(job, "history.csv")) as f:
    rows = [line.strip().split(",") for line in f]
  header, values = rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]
  assert "val_loss" in header and "scores_positive_recall" in header
  assert len(values) == 6 and float(values[-1]["loss"]) < 0.8 * float(values[0]["loss"])
  for name in ("rpn.weights.h5", "manifest.json", "train_config.json", "metrics.json"):
    assert os.path.isfile(os.path.join(job, name)), name
  assert os.listdir(os.path.join(job, "logs"))  # TensorBoard events
  tile, full, manifest, config = model_lib.load_rpn(job)
  assert manifest["counts"] == manifest_lib.load_manifest(shards[0])["counts"]
  assert len(config["feature_mean"]) == manifest["feature_channels"]




def test_interrupted_run_resumes_from_backup(shards, tmp_path, monkeypatch):
  import keras
  job = str(tmp_path / "job")
  argv = ["--data", shards[0], "--job_dir", job, "--epochs", "3", "--batch_size", "64",
          "--hidden", "8"]

  class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
      if epoch == 1:
        raise KeyboardInterrupt("killed after epoch 2")

  original_fit = keras.Model.fit

  def fit_with_interrupt(self, *args, **kwargs):
    kwargs["callbacks"] = list(kwargs.get("callbacks", [])) + [Interrupt()]
    return original_fit(self, *args, **kwargs)

  monkeypatch.setattr(keras.Model, "fit", fit_with_interrupt)
  with pytest.raises(KeyboardInterrupt):
    train_lib.train(train_lib.build_parser().parse_args(argv))
  monkeypatch.undo()
  assert not os.path.exists(os.path.join(job, "rpn.weights.h5"))
  assert os.listdir(os.path.join(job, "backup"))
  train_lib.train(train_lib.build_parser().parse_args(argv))
  with open(os.path.join(job, "history.csv")) as f:
    epochs = [line.split(",")[0] for line in f if line[0].isdigit()]
  # Epochs 0 and 1 ran before the interruption; the rerun only ran epoch 2.
  assert epochs == ["0", "1", "2"]
