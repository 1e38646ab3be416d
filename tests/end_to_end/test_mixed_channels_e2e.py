"""Feature levels of different channel counts end to end (VGG16 block3_conv3,
256 channels at stride 4, and block4_conv3, 512 at stride 8; random weights):
rpn-preprocess records each level's own channels, the trainer pads the
narrower level's tiles and projects every level with its own 1x1 conv in
front of the one head, and rpn-propose, from images and from maps, and
rpn-export run each level's projection on its own map."""
import collections
import json
import os

import numpy as np
import pytest

from pipeline.commands import preprocess as preprocess_command
from pipeline.io import manifest as manifest_lib
from tests import dataset_fixtures as fixtures
from tests import pipeline_helpers as helpers
from trainer import cli as trainer_cli

LEVELS = ("block3_conv3", "block4_conv3")
CHANNELS = [256, 512]
SIZES = [(160, 120), (200, 150), (96, 128), (176, 136)]


def _preprocess(root, output, extra=()):
  return preprocess_command.run([
      "--input", root, "--split", "DET/train", "--output", output, "--backbone", "VGG16",
      "--weights", "none", "--feature_layers", ",".join(LEVELS), "--num_shards", "2",
      *extra, *helpers.IN_PROCESS]).manifest


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("mixed") / "data")
  written = fixtures.write_dataset(root, num_images=len(SIZES), seed=3, sizes=SIZES)
  tiles = str(tmp_path_factory.mktemp("mixed_tiles") / "tiles")
  maps = str(tmp_path_factory.mktemp("mixed_maps") / "maps")
  return (root, written, tiles, _preprocess(root, tiles), maps,
          _preprocess(root, maps, ["--layout", "maps"]))


@pytest.fixture(scope="module")
def mixed_job(mixed, tmp_path_factory):
  from trainer import train
  job = str(tmp_path_factory.mktemp("mixed_job") / "job")
  last = train.train(trainer_cli.check_train(trainer_cli.train_parser().parse(
      ["--data", mixed[2], "--job_dir", job, "--epochs", "1", "--hidden", "16",
       "--projection", "8", "--batch_size", "64"])))
  return job, last


def test_manifest_and_records_keep_each_levels_channels(mixed):
  root, written, tiles, manifest, maps, maps_manifest = mixed
  for m in (manifest, maps_manifest):
    assert m.feature_channels == 512 and m.level_channels == CHANNELS
    assert m.channels_per_level == (256, 512)
  helpers.check_accounting(tiles, manifest, os.path.join(root, "Data", "DET", "train"))
  assert manifest.counts["images_ok"] == len(written)
  records = [helpers.decode_record(r, CHANNELS) for r in helpers.read_records(tiles)]
  assert collections.Counter(r["level"] for r in records).keys() == {0, 1}
  # each tile is the window of its own level's map, at that level's channels
  level_maps, mine = helpers.level_windows(root, records, sorted(written)[0], "VGG16", LEVELS,
                                           1e-4)
  assert [m.shape[-1] for m in level_maps] == CHANNELS
  assert {r["level"] for r in mine} == {0, 1}


def test_manifest_level_channels_must_fit_the_levels(mixed):
  good = mixed[3].to_json()
  for bad in ([256], [256, 256], [256, 1024], [256, "512"]):
    with pytest.raises(manifest_lib.ManifestError, match="level_channels"):
      manifest_lib.Manifest.from_json(dict(good, level_channels=bad), "m.json")
  from pipeline.model import backbone
  wrong = manifest_lib.Manifest.from_json(dict(good, level_channels=[512, 512]), "m.json")
  with pytest.raises(manifest_lib.ManifestError,
                     match=r"level_channels 512 does not match backbone VGG16 layer "
                           r"block3_conv3 \(256 channels\)"):
    backbone.check_manifest(wrong, "m.json")


def test_maps_epoch_zero_is_the_tiles_layout_padded(mixed):
  """Both layouts give the trainer the same tiles: epoch 0 of the maps
  layout equals the tiles layout's records as read, narrower levels padded
  with zero channels to 512."""
  import tensorflow as tf

  from pipeline.io import schema
  from trainer import maps
  _, _, tiles, manifest, maps_dir, maps_manifest = mixed

  def key(image_id, level, location, tile):
    return image_id, int(level), tuple(int(v) for v in location), np.round(tile, 4).tobytes()
  parsed = schema.parse_examples(tf.constant(helpers.read_records(tiles)), 9, 512, "float32",
                                 manifest.level_channels)
  assert parsed["tile"].shape[1:] == (3, 3, 512)
  level = parsed["level"].numpy()
  assert not parsed["tile"].numpy()[level == 0][..., 256:].any()
  want = collections.Counter(
      key(i.decode(), lv, loc, t) for i, lv, loc, t in zip(
          parsed["image_id"].numpy(), level, parsed["location"].numpy(),
          parsed["tile"].numpy(), strict=True))
  got = collections.Counter(
      key(r["image_id"].decode(), r["level"], r["location"], r["tile"])
      for r in maps.tile_records(maps_manifest.shard_paths(maps_dir), maps_manifest,
                                 maps_manifest.anchor_config, maps_manifest.target_config,
                                 0).as_numpy_iterator())
  assert sum(want.values()) == manifest.counts["records"] > 0
  assert got == want


def test_one_head_behind_a_projection_per_level(mixed, mixed_job):
  from trainer import model as model_lib
  tiles = mixed[2]
  job, last = mixed_job
  assert np.isfinite(last["loss"])
  with open(os.path.join(job, "train_config.json")) as f:
    train_config = json.load(f)
  assert train_config["projection"] == 8
  mean, variance = (np.asarray(train_config[k]) for k in ("feature_mean", "feature_variance"))
  assert mean.shape == variance.shape == (2, 512)
  # the padding of the 256-channel level stays zero once standardised
  assert not mean[0, 256:].any() and (variance[0, 256:] == 1).all()
  tile_model, _, _, _ = model_lib.load_rpn(job)
  project = tile_model.get_layer("project")
  assert project.level_channels == CHANNELS and project.units == 8
  heads = model_lib.inference_models(tile_model, 512)
  assert [h.inputs[0].shape[-1] for h in heads] == CHANNELS
  # The tile model on a padded record equals its level's head on the record's
  # own tile, of its own channels, as a map.
  records = [helpers.decode_record(r, CHANNELS) for r in helpers.read_records(tiles)]
  chosen = ([r for r in records if r["level"] == 0][:15]
            + [r for r in records if r["level"] == 1][:15])
  padded = np.stack([np.pad(r["tile"], ((0, 0), (0, 0), (0, 512 - r["tile"].shape[-1])))
                     for r in chosen]).astype(np.float32)
  levels = np.array([r["level"] for r in chosen], np.int32)
  out = tile_model({"tile": padded, "level": levels})
  for i, record in enumerate(chosen):
    whole = heads[record["level"]](record["tile"][np.newaxis].astype(np.float32))
    np.testing.assert_allclose(whole["scores"][0, 1, 1], out["scores"][i], atol=1e-5)
    np.testing.assert_allclose(whole["deltas"][0, 1, 1], out["deltas"][i], atol=1e-4)


def test_propose_from_images_maps_and_export_agree(mixed, mixed_job, tmp_path):
  import tensorflow as tf

  from pipeline.io import ilsvrc
  from trainer import propose, propose_pipeline
  root, written, _, _, maps_dir, _ = mixed
  job, _ = mixed_job
  outputs = {}
  for source, flags in (("images", ["--input", root, "--split", "DET/train"]),
                        ("maps", ["--maps", maps_dir])):
    output = str(tmp_path / source)
    settings = propose_pipeline.propose(trainer_cli.check_propose(
        trainer_cli.propose_parser().parse(["--job_dir", job, *flags, "--output", output,
                                            "--draw", "0"])), helpers.IN_PROCESS)
    assert settings["counts"]["images_ok"] == len(written)
    assert settings["metrics"]["head_traces"] == 2  # one trace per level's head
    outputs[source] = {line["image_id"]: line for line in helpers.read_proposals(output)}
  assert outputs["images"].keys() == outputs["maps"].keys() == set(written)
  proposer = propose.Proposer(job)
  export_dir = str(tmp_path / "export")
  assert trainer_cli.export_main(["--job_dir", job, "--output", export_dir]) == 0
  serve = tf.saved_model.load(export_dir).signatures["serving_default"]
  for image_id, line in sorted(outputs["images"].items()):
    other = outputs["maps"][image_id]
    np.testing.assert_allclose(line["scores"], other["scores"], atol=1e-5)
    np.testing.assert_allclose(line["boxes"][:100], other["boxes"][:100], atol=1e-3)
    image, gt, _, _ = ilsvrc.load_example(line["path"], None)
    boxes, scores = proposer(*proposer.prepare(image, gt)[::2])
    np.testing.assert_allclose(line["scores"], scores, atol=1e-5)
    with open(line["path"], "rb") as f:
      served = serve(image_bytes=tf.constant(f.read()))
    np.testing.assert_allclose(served["scores"].numpy(), scores, atol=1e-5)
    np.testing.assert_allclose(served["boxes"].numpy()[:100], boxes[:100], atol=1e-3)


def test_maps_of_mixed_levels_train(mixed, tmp_path):
  from trainer import model as model_lib
  from trainer import train
  job = str(tmp_path / "job")
  last = train.train(trainer_cli.check_train(trainer_cli.train_parser().parse(
      ["--data", mixed[4], "--job_dir", job, "--epochs", "1", "--hidden", "16",
       "--batch_size", "64"])))
  assert np.isfinite(last["loss"])
  tile_model, _, _, train_config = model_lib.load_rpn(job)
  assert train_config["projection"] == 256  # the default width
  assert [h.inputs[0].shape[-1] for h in model_lib.inference_models(tile_model, 512)] == CHANNELS


def test_space_estimate_counts_each_levels_channels(mixed):
  """rpn-preprocess's size estimate before the run: the maps of each level
  at that level's channels (the maps are the output's bytes, nearly all)."""
  from pipeline.beam import preprocess as preprocess_beam
  from pipeline.commands import space
  from pipeline.model import layers, registry
  root, maps_dir = mixed[0], mixed[4]
  args, beam_args = preprocess_command.build_parser().parse_with_beam([
      "--input", root, "--output", maps_dir, "--backbone", "VGG16", "--weights", "none",
      "--feature_layers", ",".join(LEVELS), "--layout", "maps"])
  cfg = preprocess_command.config_from_args(args, preprocess_beam.runner_setup(beam_args))
  assert layers.run_channels(cfg.backbone) == CHANNELS
  found = space.estimate(cfg, layers.run_channels(cfg.backbone),
                         registry.backbone_spec("VGG16").min_input_side)
  written = sum(os.path.getsize(os.path.join(maps_dir, name)) for name in os.listdir(maps_dir)
                if name.startswith("maps-"))
  assert found.images == len(SIZES)
  assert 0.97 * found.total <= written <= 1.03 * found.total, (found.total, written)
