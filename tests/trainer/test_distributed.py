"""MirroredStrategy on 2 logical CPU devices: the same losses, metrics and
weight updates as one device on the same batches (losses.py normalises by the
sampled anchors of the global batch). Runs in a subprocess: logical devices
must be set before TensorFlow starts, and other tests have started it."""
import json
import os
import subprocess
import sys

import pytest

SCRIPT = r'''
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
from tests import trainer_fixtures as fixtures
from trainer import model as model_lib
from trainer import cli as trainer_cli
from trainer import train as train_lib

CHANNELS, BATCH = 8, 64
tiles, labels, deltas = fixtures.make_records(512, CHANNELS, seed=3, learnable=True)
packed = np.concatenate([labels.astype(np.float32), deltas], axis=1)
targets = {"scores": labels.astype(np.float32), "deltas": packed}
data = tf.data.Dataset.from_tensor_slices((tiles, targets)).batch(BATCH)
mean, variance = model_lib.feature_statistics(tiles[:, 1, 1, :])

def build(strategy):
  keras.utils.set_random_seed(0)
  with strategy.scope():
    model = model_lib.build_tile_model(CHANNELS, 9, 16, mean, variance, logits=True)
    train_lib.compile_model(model, 1e-2, 1.0)
  return model

mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
models = {"single": build(tf.distribute.get_strategy()), "mirrored": build(mirrored)}
models["mirrored"].set_weights(models["single"].get_weights())
out = {"replicas": mirrored.num_replicas_in_sync}
for name, model in models.items():
  before = model.evaluate(data, return_dict=True, verbose=0)
  history = model.fit(data, epochs=3, shuffle=False, verbose=0).history
  after = model.evaluate(data, return_dict=True, verbose=0)
  out[name] = {"before": before, "history": history, "after": after,
               "kernel": model.get_layer("rpn_conv").get_weights()[0].ravel()[:50].tolist()}

# The product's own path: rpn-train's train() under the strategy.
data_dir, job = sys.argv[1], sys.argv[2]
fixtures.write_shards(data_dir, num_records=512, channels=CHANNELS, num_shards=2,
                      learnable=True, seed=1)
args = trainer_cli.train_args(trainer_cli.train_parser().parse_args(["--data", data_dir,
    "--job_dir", job, "--batch_size", str(BATCH), "--hidden", "16", "--epochs", "2"]))
out["train"] = train_lib.train(args, strategy=mirrored)
with open(job + "/train_config.json") as f:
  out["train_replicas"] = json.load(f)["replicas"]
# The maps layout's input (from_generator, tf.numpy_function) under the strategy.
maps_dir, maps_job = data_dir + "_maps", job + "_maps"
images = [fixtures.map_image(f"d/img{i}", 6, 7, CHANNELS, gt=((20, 30, 120, 150),), seed=i)
          for i in range(12)]
fixtures.write_map_shards(maps_dir, images, channels=CHANNELS, num_shards=2)
args = trainer_cli.train_args(trainer_cli.train_parser().parse_args(["--data", maps_dir,
    "--job_dir", maps_job, "--batch_size", str(BATCH), "--hidden", "16", "--epochs", "2"]))
out["train_maps"] = train_lib.train(args, strategy=mirrored)
with open(maps_job + "/train_config.json") as f:
  maps_config = json.load(f)
out["maps_replicas"], out["maps_passes"] = maps_config["replicas"], maps_config["passes_drawn"]
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def result(repo_root, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("distributed")
  env = dict(os.environ, PYTHONPATH=repo_root, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp / "data"), str(tmp / "job")],
                        cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-3000:]
  return json.loads(lines[-1][len("RESULT "):])


def test_two_replicas_report_the_single_device_losses(result):
  assert result["replicas"] == 2
  single, mirrored = result["single"]["before"], result["mirrored"]["before"]
  for key in ("loss", "scores_loss", "deltas_loss", "scores_objectness_accuracy",
              "scores_positive_recall", "scores_tiles"):
    assert mirrored[key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key


def test_two_replicas_train_like_one_device(result):
  """Gradients are those of the global-batch loss: the same updates, epoch by epoch."""
  single, mirrored = result["single"], result["mirrored"]
  for key in ("loss", "scores_loss", "deltas_loss"):
    assert mirrored["history"][key] == pytest.approx(single["history"][key], rel=1e-3), key
    assert mirrored["after"][key] == pytest.approx(single["after"][key], rel=1e-3), key
  assert mirrored["after"]["loss"] < 0.8 * mirrored["before"]["loss"]  # it did train
  assert mirrored["kernel"] == pytest.approx(single["kernel"], rel=1e-3, abs=1e-4)


def test_rpn_train_runs_under_mirrored_strategy(result):
  assert result["train_replicas"] == 2
  assert all(value == value and abs(value) < 1e6 for value in result["train"].values())
  assert result["train"]["scores_tiles"] == 512


def test_rpn_train_on_maps_runs_under_mirrored_strategy(result):
  assert result["maps_replicas"] == 2
  assert all(value == value and abs(value) < 1e6 for value in result["train_maps"].values())
  assert result["train_maps"]["scores_tiles"] > 0
  passes = result["maps_passes"]
  assert [p["epoch"] for p in passes][:2] == [0, 1]
  assert all(p["images"] == 12 and p["tiles"] > 0 for p in passes)
