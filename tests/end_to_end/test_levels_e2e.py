"""Several feature levels (--feature_layers) end to end: rpn-preprocess writes the
tiles of every level, rpn-train trains one head on them, rpn-propose proposes
from every level, rpn-anchors and rpn-draw see the same levels."""
import collections
import json
import os

import numpy as np
import pytest

from pipeline.commands import anchors as anchors_command
from pipeline.commands import draw
from pipeline.commands import preprocess as preprocess_command
from pipeline.core import coverage
from pipeline.io import images as images_lib
from pipeline.model import extractor as extractor_lib
from tests import dataset_fixtures as fixtures
from tests import pipeline_helpers as helpers
from trainer import cli as trainer_cli

LEVELS = ("conv1", "conv2")  # TinyTestNet: strides 8 and 32, 16 channels each
LEVEL_FLAGS = ["--feature_layers", ",".join(LEVELS)]


@pytest.fixture(scope="module")
def levels_run(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("levels") / "data")
  written = fixtures.write_dataset(root, num_images=6, seed=1)
  output = str(tmp_path_factory.mktemp("levels_out") / "shards")
  manifest = helpers.preprocess(root, output, extra=LEVEL_FLAGS)
  return root, written, output, manifest


def test_manifest_records_and_accounting(levels_run):
  root, written, output, manifest = levels_run
  assert manifest.feature_layers == list(LEVELS) and manifest.feature_layer == LEVELS[0]
  assert manifest.num_levels == 2 and manifest.feature_channels == 16
  helpers.check_accounting(output, manifest, os.path.join(root, "Data", "DET", "train"))
  assert manifest.counts["images_ok"] == len(written)
  # every record within its own level's map, anchors, labels and deltas
  per_image = helpers.check_records_follow_conventions(output)
  assert sum(per_image.values()) == manifest.counts["records"]
  records = [helpers.decode_record(r, 16) for r in helpers.read_records(output)]
  by_level = collections.Counter(r["level"] for r in records)
  assert set(by_level) == {0, 1}
  # positives on both levels: the boxes' best anchors lie on either
  assert {r["level"] for r in records if (r["labels"] == 1).any()} == {0, 1}
  lines = helpers.images_of(output)
  for line in lines:  # the anchors of both levels are sampled together: 256 in all
    assert line["num_fg"] + line["num_bg"] <= 256
    assert [level["stride_x"] for level in line["levels"]] == pytest.approx(
        [line["width"] / line["levels"][0]["feature_width"],
         line["width"] / line["levels"][1]["feature_width"]])
    assert line["levels"][0]["feature_width"] == line["feature_width"]


def test_tiles_are_windows_of_their_levels_maps(levels_run):
  root, written, output, _ = levels_run
  records = [helpers.decode_record(r, 16) for r in helpers.read_records(output)]
  maps, mine = helpers.level_windows(root, records, sorted(written)[0], helpers.TINY, LEVELS,
                                     1e-5)
  assert [m.shape[-1] for m in maps] == [16, 16] and maps[0].shape[0] > maps[1].shape[0]
  assert {r["level"] for r in mine} == {0, 1}


def test_one_listed_layer_is_the_one_level_run(levels_run, tmp_path):
  root, _, _, _ = levels_run
  one = helpers.preprocess(root, str(tmp_path / "one"), extra=["--feature_layers", "conv1"])
  plain = helpers.preprocess(root, str(tmp_path / "plain"), extra=["--feature_layer", "conv1"])
  assert one.to_json().get("feature_layers") is None and one.feature_layer == "conv1"
  assert collections.Counter(helpers.read_records(str(tmp_path / "one"))) == collections.Counter(
      helpers.read_records(str(tmp_path / "plain")))
  assert one.counts == plain.counts


@pytest.mark.parametrize("flags,problem", [
    (["--feature_layers", "conv2,conv1"],
     "--feature_layers conv2,conv1: the stride must grow along the list, finest first: conv1 "
     "has stride 8, conv2 before it 32"),
    (["--feature_layers", "conv1,conv3"], "--feature_layers conv1,conv3: conv3: no such layer "
     "in TinyTestNet; nearest: conv2, conv1"),
    (["--feature_layers", "conv1,conv2", "--feature_layer", "conv1"],
     "--feature_layers conv1,conv2: give either --feature_layer (conv1) or --feature_layers, "
     "not both"),
    (["--feature_layers", "conv1,"], "--feature_layers conv1,: an empty layer name"),
])
def test_bad_feature_layers_are_one_line_before_the_run(levels_run, tmp_path, capsys, flags,
                                                        problem):
  root = levels_run[0]
  output = tmp_path / "out"
  code = preprocess_command.main(["--input", root, "--split", "DET/train", "--output",
                                  str(output), "--backbone", helpers.TINY, "--weights", "none",
                                  *flags, *helpers.IN_PROCESS])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1, err
  assert err[0].startswith("rpn-preprocess: error: " + problem), err
  assert not output.exists() or not os.listdir(output)


def test_train_one_head_and_propose_from_every_level(levels_run, tmp_path):
  from trainer import model as model_lib
  from trainer import propose, propose_pipeline, train
  root, written, output, manifest = levels_run
  job = str(tmp_path / "job")
  last = train.train(trainer_cli.check_train(trainer_cli.train_parser().parse(
      ["--data", output, "--job_dir", job, "--epochs", "1", "--hidden", "16",
       "--batch_size", "64"])))
  assert np.isfinite(last["loss"])
  with open(os.path.join(job, "train_config.json")) as f:
    train_config = json.load(f)
  # each level standardised with its own statistics
  assert np.shape(train_config["feature_mean"]) == (2, 16)
  assert sum(train_config["feature_statistics"]["records_per_level"]) == (
      train_config["feature_statistics"]["records"])
  assert not np.allclose(*train_config["feature_mean"])
  tile_model, _, _, _ = model_lib.load_rpn(job)
  heads = model_lib.inference_models(tile_model, 16)
  assert len(heads) == 2
  # the tile model on a record equals its level's head on the map at the record's point
  decoded = [helpers.decode_record(r, 16) for r in helpers.read_records(output)]
  records = ([r for r in decoded if r["level"] == 0][:20]
             + [r for r in decoded if r["level"] == 1][:20])
  tiles = np.stack([r["tile"] for r in records]).astype(np.float32)
  levels = np.array([r["level"] for r in records], np.int32)
  assert levels.tolist().count(1) >= 1 and levels.tolist().count(0) == 20
  out = tile_model({"tile": tiles, "level": levels})
  for i, record in enumerate(records):
    whole = heads[record["level"]](tiles[i][np.newaxis])  # the 3x3 tile as a map
    np.testing.assert_allclose(whole["scores"][0, 1, 1], out["scores"][i], atol=1e-5)
    np.testing.assert_allclose(whole["deltas"][0, 1, 1], out["deltas"][i], atol=1e-4)
  settings = propose_pipeline.propose(trainer_cli.check_propose(trainer_cli.propose_parser().parse(
      ["--job_dir", job, "--input", root, "--split", "DET/train",
       "--output", str(tmp_path / "proposals"), "--draw", "1"])), helpers.IN_PROCESS)
  assert settings["counts"]["images_ok"] == len(written)
  assert settings["metrics"]["head_traces"] == 2  # one trace per level's head
  proposer = propose.Proposer(job)
  # rpn-export's SavedModel proposes across the levels as rpn-propose does.
  import tensorflow as tf

  from pipeline.io import ilsvrc
  from trainer import export
  export_dir = str(tmp_path / "export")
  assert trainer_cli.export_main(["--job_dir", job, "--output", export_dir]) == 0
  serve = tf.saved_model.load(export_dir).signatures["serving_default"]
  for line in helpers.read_proposals(str(tmp_path / "proposals"))[:3]:
    with open(line["path"], "rb") as f:
      served = serve(image_bytes=tf.constant(f.read()))
    image, gt, _, _ = ilsvrc.load_example(line["path"], None)
    boxes, scores = proposer(*proposer.prepare(image, gt)[::2])
    np.testing.assert_allclose(served["scores"].numpy(), scores, atol=1e-5)
    np.testing.assert_allclose(served["boxes"].numpy()[:100], boxes[:100], atol=1e-3)
  assert export.SIGNATURE == "serving_default"
  frame = np.zeros((96, 128, 3), np.uint8)
  scores, deltas, anchors, anchor_levels = proposer.head(frame)
  # a 12x16 map at stride 8 and a 3x4 map at stride 32, 9 anchors a point
  assert np.bincount(anchor_levels).tolist() == [12 * 16 * 9, 3 * 4 * 9]
  assert len(scores) == len(deltas) == len(anchors) == len(anchor_levels)


def test_rpn_anchors_reports_coverage_by_level(levels_run, tmp_path):
  root = levels_run[0]
  report = anchors_command.run(["--input", root, "--split", "DET/train", "--output",
                                str(tmp_path / "anchors"), "--backbone", helpers.TINY,
                                *LEVEL_FLAGS, *helpers.IN_PROCESS])
  assert report["feature_layers"] == list(LEVELS)
  by_level = report["current"]["by_level"]
  assert [level["level"] for level in by_level] == [0, 1]
  assert sum(level["boxes"] for level in by_level) == report["num_boxes"]
  # the same coverage computed from rpn-preprocess's own frames of both levels
  frames = [coverage.FrameBoxes(line["image_id"], line["width"], line["height"],
                                line["feature_height"], line["feature_width"],
                                np.asarray(line["gt_boxes"]).reshape(-1, 4),
                                level_shapes=tuple((level["feature_height"],
                                                    level["feature_width"])
                                                   for level in line["levels"]))
            for line in helpers.images_of(levels_run[2])]
  stats = coverage.frames_summary(frames, (3, 6, 12), (0.5, 1, 2)).summary()
  assert report["current"]["coverage"] == stats["coverage"]
  assert report["current"]["by_level"] == stats["by_level"]
  text = anchors_command.format_report(report)
  assert "current level 1 (conv2): best anchor of" in text


def test_rpn_draw_draws_every_level(levels_run, tmp_path):
  root, _, output, _ = levels_run
  pictures = tmp_path / "pictures"
  assert draw.main(["--shards", output, "--input", root, "--count", "2",
                    "--output", str(pictures)]) == 0
  assert len(os.listdir(pictures)) == 2


@pytest.fixture(scope="module")
def levels_maps(levels_run, tmp_path_factory):
  root = levels_run[0]
  output = str(tmp_path_factory.mktemp("levels_maps") / "maps")
  manifest = helpers.preprocess(root, output, extra=[*LEVEL_FLAGS, "--layout", "maps"])
  return output, manifest


def test_maps_records_hold_one_map_per_level(levels_run, levels_maps):
  root, written, _, _ = levels_run
  output, manifest = levels_maps
  assert manifest.feature_layers == list(LEVELS) and manifest.is_maps
  helpers.check_accounting(output, manifest, os.path.join(root, "Data", "DET", "train"))
  import tensorflow as tf
  extractor = extractor_lib.FeatureExtractor(helpers.TINY, "none", seed=0,
                                             feature_layers=LEVELS)
  lines = {line["image_id"]: line for line in helpers.images_of(output)}
  for serialized in helpers.read_records(output, "maps"):
    feature = tf.train.Example.FromString(serialized).features.feature
    image_id = feature["image_id"].bytes_list.value[0].decode()
    shapes = np.reshape(feature["feature_shape"].int64_list.value, (-1, 3))
    assert [tuple(s[:2]) for s in shapes] == [
        (level["feature_height"], level["feature_width"]) for level in lines[image_id]["levels"]]
    with open(os.path.join(root, "Data/DET/train", image_id + ".JPEG"), "rb") as f:
      maps = extractor(images_lib.decode_image(f.read()))
    for raw, shape, want in zip(feature["feature_map"].bytes_list.value, shapes, maps,
                                strict=True):
      np.testing.assert_allclose(np.frombuffer(raw, "<f4").reshape(shape), want, rtol=1e-5,
                                 atol=1e-5)
  assert len(lines) == len(written)


def test_maps_epoch_zero_is_exactly_the_tiles_layout_of_every_level(levels_run, levels_maps):
  """The maps layout's promise holds with levels: epoch 0 draws the tiles
  layout's records, each tile cut from its own level's map."""
  from trainer import maps
  _, _, tiles_dir, tiles_manifest = levels_run
  maps_dir, maps_manifest = levels_maps

  def key(image_id, level, location, tile, labels, deltas):
    return (image_id, int(level), tuple(int(v) for v in location),
            np.asarray(tile, np.float32).tobytes(), tuple(int(v) for v in labels),
            np.asarray(deltas, np.float32).tobytes())
  fields = ("image_id", "level", "location", "tile", "labels", "deltas")
  want = collections.Counter(
      key(**{k: r[k] for k in fields})
      for r in (helpers.decode_record(s, 16) for s in helpers.read_records(tiles_dir)))
  got = collections.Counter(
      key(r["image_id"].decode(), r["level"], r["location"], r["tile"], r["labels"],
          r["deltas"])
      for r in maps.tile_records(maps_manifest.shard_paths(maps_dir), maps_manifest,
                                 maps_manifest.anchor_config, maps_manifest.target_config,
                                 0).as_numpy_iterator())
  assert sum(want.values()) == tiles_manifest.counts["records"] > 0
  assert got == want


def test_maps_of_levels_train_and_propose(levels_run, levels_maps, tmp_path):
  from trainer import propose_pipeline, train
  root = levels_run[0]
  job = str(tmp_path / "job")
  last = train.train(trainer_cli.check_train(trainer_cli.train_parser().parse(
      ["--data", levels_maps[0], "--job_dir", job, "--epochs", "1", "--hidden", "16",
       "--batch_size", "64"])))
  assert np.isfinite(last["loss"])
  with open(os.path.join(job, "train_config.json")) as f:
    assert np.shape(json.load(f)["feature_mean"]) == (2, 16)
  settings = propose_pipeline.propose(trainer_cli.check_propose(trainer_cli.propose_parser().parse(
      ["--job_dir", job, "--input", root, "--split", "DET/train",
       "--output", str(tmp_path / "proposals"), "--draw", "0"])), helpers.IN_PROCESS)
  assert settings["counts"]["images_ok"] == len(levels_run[1])
