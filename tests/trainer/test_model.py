"""trainer.model: the tile model, its fully convolutional twin, saving and loading."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from pipeline.io.manifest import Manifest
from tests import reference
from tests import trainer_fixtures as fixtures
from trainer import model as model_lib

CHANNELS, HIDDEN = 6, 16


def _randomise(model, seed=0):
  """Random weights and biases, so that every anchor's output differs."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if layer.get_weights():
      layer.set_weights([rng.normal(0, 0.3, w.shape).astype(w.dtype)
                         for w in layer.get_weights()])
  return model


def test_tile_model_interface():
  model = model_lib.build_tile_model(CHANNELS, 9, HIDDEN)
  assert model.input.name == "tile" and tuple(model.input.shape) == (None, 3, 3, CHANNELS)
  names = {layer.name for layer in model.layers}
  assert {"rpn_conv", "rpn_cls", "rpn_bbox"} <= names
  out = model(np.zeros((2, 3, 3, CHANNELS), np.float32))
  assert out["scores"].shape == (2, 9) and out["deltas"].shape == (2, 36)
  assert model.get_layer("rpn_conv").padding == "valid"


@pytest.mark.parametrize("standardised", [False, True])
def test_inference_model_equals_tile_model_on_every_point(standardised):
  rng = np.random.default_rng(1)
  stats = ((rng.normal(size=CHANNELS), rng.uniform(0.5, 2.0, CHANNELS)) if standardised
           else (None, None))
  tile_model = _randomise(model_lib.build_tile_model(CHANNELS, 9, HIDDEN, *stats))
  full = model_lib.build_inference_model(tile_model, CHANNELS)
  for height, width in ((1, 1), (4, 7), (9, 3)):
    feature_map = rng.normal(size=(height, width, CHANNELS)).astype(np.float32)
    out = full(feature_map[None])
    assert out["scores"].shape == (1, height, width, 9)
    assert out["deltas"].shape == (1, height, width, 36)
    expected = tile_model(reference.tiles(feature_map))
    np.testing.assert_allclose(out["scores"].numpy().reshape(-1, 9), expected["scores"],
                               atol=1e-5)
    np.testing.assert_allclose(out["deltas"].numpy().reshape(-1, 36), expected["deltas"],
                               atol=1e-5)


def test_projection_per_level_tile_model_equals_each_levels_map_model():
  """Levels of 3, 6 and 4 channels: the tile model on tiles padded to 6 equals
  level l's inference model (its standardisation, a 1x1 conv over its own
  channels, the shared head) on the unpadded map, at every point."""
  rng = np.random.default_rng(4)
  level_channels = [3, 6, 4]
  mean = rng.normal(size=(3, 6))
  variance = rng.uniform(0.5, 2.0, (3, 6))
  for level, count in enumerate(level_channels):
    mean[level, count:], variance[level, count:] = 0.0, 1.0
  tile_model = _randomise(model_lib.build_tile_model(
      6, 9, HIDDEN, mean, variance, level_channels=level_channels, projection=5))
  project = tile_model.get_layer("project")
  assert tuple(project.kernel.shape) == (3, 6, 5) and tuple(project.bias.shape) == (3, 5)
  heads = model_lib.inference_models(tile_model, 6)
  assert [h.inputs[0].shape[-1] for h in heads] == level_channels
  assert [h.get_layer("project").kernel.shape for h in heads] == [(1, 1, c, 5)
                                                                 for c in level_channels]
  for level, count in enumerate(level_channels):
    feature_map = rng.normal(size=(4, 5, count)).astype(np.float32)
    tiles = reference.tiles(feature_map)
    padded = np.pad(tiles, ((0, 0), (0, 0), (0, 0), (0, 6 - count)))
    expected = tile_model({"tile": padded, "level": np.full(len(tiles), level, np.int32)})
    out = heads[level](feature_map[None])
    np.testing.assert_allclose(out["scores"].numpy().reshape(-1, 9), expected["scores"],
                               atol=1e-5)
    np.testing.assert_allclose(out["deltas"].numpy().reshape(-1, 36), expected["deltas"],
                               atol=1e-5)
  # a mixed batch: each tile through its own level's projection
  tiles = rng.normal(size=(6, 3, 3, 6)).astype(np.float32)
  levels = np.array([0, 1, 2, 2, 1, 0], np.int32)
  for i, level in enumerate(levels):
    tiles[i, ..., level_channels[level]:] = 0.0
  together = tile_model({"tile": tiles, "level": levels})["scores"].numpy()
  alone = [tile_model({"tile": tiles[i:i + 1], "level": levels[i:i + 1]})["scores"].numpy()[0]
           for i in range(6)]
  np.testing.assert_allclose(together, np.stack(alone), atol=1e-6)


def test_levels_of_one_channel_count_have_no_projection():
  model = model_lib.build_tile_model(CHANNELS, 9, HIDDEN, np.zeros((2, CHANNELS)),
                                     np.ones((2, CHANNELS)), level_channels=[CHANNELS] * 2)
  assert "project" not in {layer.name for layer in model.layers}
  with pytest.raises(ValueError, match="level_channels"):
    model_lib.build_tile_model(CHANNELS, 9, HIDDEN, level_channels=[2, CHANNELS])


def test_save_and_load_round_trip(tmp_path):
  job = str(tmp_path / "job")
  rng = np.random.default_rng(2)
  mean, variance = rng.normal(size=CHANNELS), rng.uniform(0.5, 2.0, CHANNELS)
  tile_model = _randomise(model_lib.build_tile_model(CHANNELS, 9, HIDDEN, mean, variance))
  manifest = fixtures.make_manifest(channels=CHANNELS, extra_field={"kept": [1, 2]})
  train_config = {"hidden": HIDDEN, "epochs": 3, "feature_mean": mean.tolist(),
                  "feature_variance": variance.tolist()}
  model_lib.save_rpn(job, tile_model, Manifest.from_json(manifest), train_config)
  assert sorted(os.listdir(job)) == ["manifest.json", "rpn.keras", "rpn.weights.h5",
                                     "train_config.json"]
  with open(os.path.join(job, "manifest.json")) as f:
    assert json.load(f) == manifest  # verbatim
  tile2, full2, manifest2, config2 = model_lib.load_rpn(job)
  assert manifest2.to_json() == manifest and config2 == train_config
  _assert_same_rpn(tile2, full2, tile_model, rng, num_tiles=5, map_hw=(4, 5))


def test_save_untrained_rpn_loads_back_with_the_statistics_and_hidden_size(tmp_path):
  job = str(tmp_path / "untrained")
  rng = np.random.default_rng(3)
  mean, variance = rng.normal(size=CHANNELS), rng.uniform(0.5, 2.0, CHANNELS)
  manifest = fixtures.make_manifest(channels=CHANNELS)
  # A trained job's train_config: what the untrained twin is built from.
  train_config = {"hidden": HIDDEN, "epochs": 7, "epochs_run": [0, 1, 2, 3, 4, 5, 6],
                  "feature_mean": mean.tolist(), "feature_variance": variance.tolist(),
                  "learning_rate": 0.01}
  model_lib.save_untrained_rpn(job, Manifest.from_json(manifest), train_config)
  assert sorted(os.listdir(job)) == ["manifest.json", "rpn.keras", "rpn.weights.h5",
                                     "train_config.json"]
  tile_model, full, manifest2, config2 = model_lib.load_rpn(job)
  assert manifest2.to_json() == manifest
  # The same settings, marked as never trained.
  assert config2 == dict(train_config, epochs=0, epochs_run=[])
  assert tile_model.get_layer("rpn_conv").filters == HIDDEN
  assert tile_model.get_layer("rpn_cls").filters == 9
  assert tuple(tile_model.input.shape) == (None, 3, 3, CHANNELS)
  norm = tile_model.get_layer("standardise")
  np.testing.assert_allclose(np.ravel(norm.mean), mean, rtol=1e-6)
  np.testing.assert_allclose(np.ravel(norm.variance), variance, rtol=1e-6)
  # The loaded model computes what a fresh model with those statistics and
  # the saved weights computes: the standardisation is applied, then the head.
  twin = model_lib.build_tile_model(CHANNELS, 9, HIDDEN, mean, variance)
  twin.set_weights(tile_model.get_weights())
  _assert_same_rpn(tile_model, full, twin, rng, num_tiles=4, map_hw=(3, 4))


def test_save_untrained_rpn_defaults_to_identity_statistics_and_default_hidden(tmp_path):
  job = str(tmp_path / "untrained")
  model_lib.save_untrained_rpn(job, Manifest.from_json(fixtures.make_manifest(channels=CHANNELS)),
                               {"epochs": 3})
  tile_model, _, _, config = model_lib.load_rpn(job)
  assert tile_model.get_layer("rpn_conv").filters == model_lib.DEFAULT_HIDDEN == 512
  norm = tile_model.get_layer("standardise")
  np.testing.assert_array_equal(np.ravel(norm.mean), np.zeros(CHANNELS))
  np.testing.assert_array_equal(np.ravel(norm.variance), np.ones(CHANNELS))
  assert config == {"epochs": 0, "epochs_run": []}


# Loads JOB/rpn.keras with keras.models.load_model in a fresh Python in which
# this project cannot be imported, runs it on the saved maps and saves its outputs.
FRESH_LOAD = fixtures.NO_PROJECT + """
import keras, numpy as np
model_path, maps_path, out_path = sys.argv[1:]
model = keras.models.load_model(model_path)
maps = dict(np.load(maps_path))
inputs = (maps["feature_map"] if len(maps) == 1
          else [maps[f"feature_map_{level}"] for level in range(len(maps))])
out = model(inputs)
np.savez(out_path, **{key: np.asarray(value) for key, value in out.items()})
"""


def test_rpn_keras_loads_without_the_project_and_computes_the_inference_models(tmp_path):
  """rpn.keras (one level, and two levels sharing the head) loads with
  keras.models.load_model in a fresh process with no project code, and gives
  what inference_models give per level."""
  rng = np.random.default_rng(4)
  cases = {"one": (rng.normal(size=CHANNELS), rng.uniform(0.5, 2.0, CHANNELS)),
           "two": (rng.normal(size=(2, CHANNELS)), rng.uniform(0.5, 2.0, (2, CHANNELS)))}
  sizes = [(4, 6), (2, 3)]  # a stride-8 and a stride-16 map of one image
  children = {}
  for name, (mean, variance) in cases.items():
    job = str(tmp_path / name)
    tile_model = _randomise(model_lib.build_tile_model(CHANNELS, 9, HIDDEN, mean, variance))
    model_lib.save_rpn(job, tile_model, Manifest.from_json(
        fixtures.make_manifest(channels=CHANNELS)), {"hidden": HIDDEN})
    levels = model_lib.inference_models(tile_model, CHANNELS)
    maps = [rng.normal(size=(1, *hw, CHANNELS)).astype(np.float32) for hw in sizes[:len(levels)]]
    suffixes = [""] if len(levels) == 1 else ["_0", "_1"]
    np.savez(tmp_path / f"{name}_maps.npz",
             **{"feature_map" + suffix: m for suffix, m in zip(suffixes, maps, strict=True)})
    expected = {key + suffix: np.asarray(level(feature_map)[key])
                for level, feature_map, suffix in zip(levels, maps, suffixes, strict=True)
                for key in ("scores", "deltas")}
    children[name] = expected, subprocess.Popen(
        [sys.executable, "-c", FRESH_LOAD, os.path.join(job, "rpn.keras"),
         str(tmp_path / f"{name}_maps.npz"), str(tmp_path / f"{name}_out.npz")],
        cwd=str(tmp_path), env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for name, (expected, child) in children.items():
    _, err = child.communicate(timeout=300)
    assert child.returncode == 0, err[-2000:]
    out = dict(np.load(tmp_path / f"{name}_out.npz"))
    assert sorted(out) == sorted(expected)
    for key, value in expected.items():
      np.testing.assert_allclose(out[key], value, atol=1e-5, err_msg=f"{name} {key}")
  assert np.asarray(out["scores_1"]).shape == (1, 2, 3, 9)  # each level its own map size


def test_load_rpn_names_what_is_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="rpn.weights.h5: missing"):
    model_lib.load_rpn(str(tmp_path))


def test_mixed_precision_keeps_float32_outputs():
  policy = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    model = model_lib.build_tile_model(CHANNELS, 9, HIDDEN)
  finally:
    keras.mixed_precision.set_global_policy(policy)
  assert model.get_layer("rpn_conv").compute_dtype == "float16"
  out = model(np.ones((2, 3, 3, CHANNELS), np.float32))
  assert out["scores"].dtype == "float32" and out["deltas"].dtype == "float32"


def test_mixed_precision_standardises_low_variance_features_in_float32():
  """Channels of variance 1e-8 (0 in float16) give finite outputs close to float32's."""
  rng = np.random.default_rng(0)
  centres = 0.3 + 1e-4 * rng.normal(size=(4096, CHANNELS))  # variance 1e-8
  mean, variance = model_lib.feature_statistics(centres)
  tiles = (0.3 + 1e-4 * rng.normal(size=(64, 3, 3, CHANNELS))).astype(np.float32)
  outputs = {}
  for policy_name in ("float32", "mixed_float16"):
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy_name)
    try:
      model = model_lib.build_tile_model(CHANNELS, 9, HIDDEN, mean, variance)
    finally:
      keras.mixed_precision.set_global_policy(policy)
    outputs[policy_name] = model
  outputs["mixed_float16"].set_weights(outputs["float32"].get_weights())
  assert outputs["mixed_float16"].get_layer("standardise").compute_dtype == "float32"
  assert outputs["mixed_float16"].get_layer("rpn_conv").compute_dtype == "float16"
  full, mixed = (outputs[name](tiles) for name in ("float32", "mixed_float16"))
  for key in ("scores", "deltas"):
    assert np.all(np.isfinite(mixed[key])), key
    np.testing.assert_allclose(mixed[key], full[key], atol=0.02)


def test_logits_variant_shares_the_weights_and_omits_the_sigmoid():
  probabilities = _randomise(model_lib.build_tile_model(CHANNELS, 9, HIDDEN))
  logits = model_lib.build_tile_model(CHANNELS, 9, HIDDEN, logits=True)
  logits.set_weights(probabilities.get_weights())
  tiles = np.random.default_rng(1).normal(size=(8, 3, 3, CHANNELS)).astype(np.float32)
  np.testing.assert_allclose(1 / (1 + np.exp(-logits(tiles)["scores"].numpy())),
                             probabilities(tiles)["scores"], atol=1e-6)
  np.testing.assert_allclose(logits(tiles)["deltas"], probabilities(tiles)["deltas"], atol=1e-6)


def test_weights_of_version_0_3_load(tmp_path):
  """A job's rpn.weights.h5 from 0.3.0 (sigmoid inside rpn_cls) loads into
  today's model (linear rpn_cls, then a sigmoid) with the same outputs."""
  data = os.path.join(os.path.dirname(__file__), os.pardir, "data")
  saved = np.load(os.path.join(data, "rpn_0.3.0_outputs.npz"))
  model = model_lib.build_tile_model(8, 9, 4, saved["feature_mean"], saved["feature_variance"])
  model.load_weights(os.path.join(data, "rpn_0.3.0.weights.h5"))
  out = model(saved["tiles"])
  np.testing.assert_allclose(out["scores"], saved["scores"], atol=1e-6)
  np.testing.assert_allclose(out["deltas"], saved["deltas"], atol=1e-5)


def _assert_same_rpn(tile_model, full, expected_tile_model, rng, num_tiles, map_hw):
  """tile_model computes what expected_tile_model does on random tiles, and the
  full-map model (`full`) what expected_tile_model does on each map tile."""
  tiles = rng.normal(size=(num_tiles, 3, 3, CHANNELS)).astype(np.float32)
  for key in ("scores", "deltas"):
    np.testing.assert_allclose(tile_model(tiles)[key], expected_tile_model(tiles)[key],
                               atol=1e-6)
  feature_map = rng.normal(size=(1, *map_hw, CHANNELS)).astype(np.float32)
  np.testing.assert_allclose(
      full(feature_map)["scores"].numpy().reshape(-1, 9),
      expected_tile_model(reference.tiles(feature_map[0]))["scores"], atol=1e-5)
