"""`rpn-preprocess --layout maps` end to end: one record per image, and epoch 0
of rpn-train's input with the preprocessing defaults is exactly what
`--layout tiles` writes for the same images; anchors chosen at training reach
the job directory and rpn-propose."""
import collections
import json
import os

import numpy as np
import pytest

from pipeline.core import config
from pipeline.io import manifest as manifest_lib
from pipeline.io import schema
from tests import dataset_fixtures as fixtures
from tests import pipeline_helpers as helpers
from tests import trainer_fixtures
from trainer import cli as trainer_cli
from trainer import maps, sampling

# Ten images: eight of random sizes, a tiny one (no anchor of the default scales
# fits its frame: the tiles layout skips it) and an elongated one.
SIZES = [(int(w), int(h)) for w, h in np.random.default_rng(3).integers(120, 420, (8, 2))] + [
    (40, 40), (400, 64)]
SETTINGS = {
    "final_f32": [],
    "conv1_f16_gzip": ["--feature_layer", "conv1", "--tile_dtype", "float16",
                       "--compression", "GZIP"],
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("maps_data"))
  fixtures.write_dataset(root, "DET/train", num_images=len(SIZES), sizes=SIZES)
  fixtures.write_dataset(root, "DET/val", num_images=4, seed=1)
  return root


@pytest.fixture(scope="module")
def outputs(dataset, tmp_path_factory):
  """{setting: {layout: shard dir}} of both layouts on the same images."""
  out = str(tmp_path_factory.mktemp("maps_out"))
  dirs = collections.defaultdict(dict)
  for name, extra in SETTINGS.items():
    for layout in config.LAYOUTS:
      dirs[name][layout] = os.path.join(out, f"{name}_{layout}")
      helpers.preprocess(dataset, dirs[name][layout], extra=[*extra, "--layout", layout])
  return dirs


def _read_maps(directory, manifest):
  import tensorflow as tf
  compression = manifest.tfrecord_compression
  records = tf.data.TFRecordDataset(manifest.shard_paths(directory),
                                    compression_type=compression)
  out = {}
  for serialized in records.as_numpy_iterator():
    f = tf.train.Example.FromString(serialized).features.feature
    image_id = f[schema.IMAGE_ID_KEY].bytes_list.value[0].decode()
    out[image_id] = {
        "feature_map": f[schema.FEATURE_MAP_KEY].bytes_list.value[0],
        "feature_shape": list(f[schema.FEATURE_SHAPE_KEY].int64_list.value),
        "image_size": list(f[schema.IMAGE_SIZE_KEY].int64_list.value),
        "gt_boxes": list(f[schema.GT_BOXES_KEY].float_list.value)}
  return out


def test_maps_layout_writes_one_record_per_image(outputs):
  directory = outputs["conv1_f16_gzip"]["maps"]
  manifest = manifest_lib.Manifest.load(directory)
  assert manifest.layout == "maps" and manifest.dtype == "float16"
  assert all(name.startswith("maps-") and name.endswith(".tfrecord.gz")
             for name in manifest.shard_files)
  counts = manifest.counts
  # every image has a record: the tiny one too (its anchors are chosen later)
  assert counts["images_found"] == counts["images_ok"] == counts["records"] == len(SIZES)
  records = _read_maps(directory, manifest)
  lines = {line["image_id"]: line for line in helpers.read_jsonl(
      os.path.join(directory, config.IMAGES_NAME))}
  assert sorted(records) == sorted(lines)
  for image_id, record in records.items():
    line = lines[image_id]
    height, width, channels = record["feature_shape"]
    assert (height, width) == (line["feature_height"], line["feature_width"])
    assert channels == manifest.feature_channels
    assert len(record["feature_map"]) == height * width * channels * 2  # float16
    assert record["image_size"] == [line["height"], line["width"]]
    np.testing.assert_array_equal(np.reshape(record["gt_boxes"], (-1, 4)),
                                  np.reshape(line["gt_boxes"], (-1, 4)))
  tiles = manifest_lib.Manifest.load(outputs["conv1_f16_gzip"]["tiles"])
  # the tiles layout (stride 8 here) and the maps layout account for the same images
  assert tiles.counts["images_found"] == counts["images_found"]


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_epoch_zero_is_exactly_the_tiles_layout(outputs, setting):
  """The equivalence the maps layout promises: the same (image_id, location,
  tile, labels, deltas) records, as multisets."""
  tiles_dir, maps_dir = outputs[setting]["tiles"], outputs[setting]["maps"]
  tiles_manifest = manifest_lib.Manifest.load(tiles_dir)
  maps_manifest = manifest_lib.Manifest.load(maps_dir)
  channels, dtype = tiles_manifest.feature_channels, tiles_manifest.dtype

  def key(image_id, location, tile, labels, deltas):
    return (image_id, tuple(int(v) for v in location),
            np.asarray(tile, np.float32).tobytes(), tuple(int(v) for v in labels),
            np.asarray(deltas, np.float32).tobytes())
  want = collections.Counter(
      key(**{k: r[k] for k in ("image_id", "location", "tile", "labels", "deltas")})
      for r in (helpers.decode_record(s, channels, dtype) for s in helpers.read_records(tiles_dir)))
  args = trainer_cli.train_parser().parse(["--data", maps_dir, "--job_dir", "-"])
  anchors, target_config = sampling.resolve_sampling(trainer_cli.sampling_flags(args),
                                                     maps_manifest, args.seed)
  assert (anchors, target_config) == (config.AnchorConfig(), config.TargetConfig())
  got = collections.Counter(
      key(r["image_id"].decode(), r["location"], r["tile"], r["labels"], r["deltas"])
      for r in maps.tile_records(maps_manifest.shard_paths(maps_dir),
                                 maps_manifest, anchors, target_config, 0).as_numpy_iterator())
  assert sum(want.values()) == tiles_manifest.counts["records"] > 0
  assert got == want


def test_anchors_chosen_at_training_reach_the_job_and_propose(dataset, outputs, tmp_path):
  from trainer import propose, propose_pipeline, train
  maps_dir = outputs["final_f32"]["maps"]
  val_dir = str(tmp_path / "val")
  helpers.preprocess(dataset, val_dir, split="DET/val", extra=["--layout", "maps"],
                     num_shards=1)
  job = str(tmp_path / "job")
  args = trainer_cli.train_parser().parse([
      "--data", maps_dir, "--val_data", val_dir, "--job_dir", job, "--epochs", "2",
      "--hidden", "16", "--batch_size", "32", "--scales", "2,4", "--ratios", "1",
      "--batch_size_per_image", "64"])
  last = train.train(trainer_cli.check_train(args))
  assert np.isfinite(last["loss"]) and last["val_scores_tiles"] > 0
  job_manifest = manifest_lib.Manifest.read(os.path.join(job, "manifest.json"))
  assert job_manifest.layout == "maps"
  assert job_manifest.anchor["scales"] == [2.0, 4.0]
  assert job_manifest.anchor["num_anchors"] == 2
  assert job_manifest.targets["batch_size"] == 64
  with open(os.path.join(job, "train_config.json")) as f:
    train_config = json.load(f)
  assert train_config["layout"] == "maps" and train_config["anchor"]["ratios"] == [1.0]
  # every pass drawn so far is logged with its epoch, all images of the data
  assert [p["epoch"] for p in train_config["passes_drawn"]][:2] == [0, 1]
  assert all(p["images"] == len(SIZES) for p in train_config["passes_drawn"])
  settings = propose_pipeline.propose(trainer_cli.check_propose(trainer_cli.propose_parser().parse(
      ["--job_dir", job, "--input", dataset, "--split", "DET/val",
       "--output", str(tmp_path / "proposals"), "--draw", "0"])), helpers.IN_PROCESS)
  assert settings["counts"]["images_ok"] == 4
  proposer = propose.Proposer(job)
  frame = np.zeros((96, 128, 3), np.uint8)
  scores, deltas, anchors = proposer.head(frame)
  assert len(anchors) == len(scores) == 3 * 4 * 2  # a 3x4 map, 2 anchors a point


def test_a_bad_maps_record_ends_rpn_train_in_one_line(tmp_path, capsys):
  directory = str(tmp_path / "maps")
  good = [trainer_fixtures.map_image(f"d/img{i}", 4, 5, seed=i) for i in range(3)]
  bad = trainer_fixtures.map_image("d/bad", 4, 5, gt=((10, 10, 300, 50),))
  from pipeline.io import schema as schema_lib
  record = schema_lib.make_map_example(bad[0], bad[1], bad[2], bad[3])
  manifest = trainer_fixtures.write_map_shards(directory, good, raw_records=[record])
  job = str(tmp_path / "job")
  code = trainer_cli.train_main(["--data", directory, "--job_dir", job,
                                 "--epochs", "1", "--hidden", "8"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2
  path = manifest.shard_paths(directory)[0]
  assert err[-1] == (f"rpn-train: error: {path}: record 3 (image d/bad): gt box 0 "
                     f"[10.0, 10.0, 300.0, 50.0] is not a box inside its 160x128 frame "
                     f"(traceback: {job}/failure.log)")  # found while training: a log too


def test_rpn_draw_draws_epoch_zero_of_a_maps_directory(dataset, outputs, tmp_path, capsys):
  from pipeline.commands import draw
  pictures = tmp_path / "pictures"
  code = draw.main(["--shards", outputs["final_f32"]["maps"], "--input", dataset,
                    "--count", "2", "--output", str(pictures), "--scales", "2,4", "--ratios", "1"])
  assert code == 0 and len(os.listdir(pictures)) == 2
  code = draw.main(["--shards", outputs["final_f32"]["tiles"], "--input", dataset,
                    "--output", str(tmp_path / "other"), "--scales", "2,4"])
  assert code == 2
  assert capsys.readouterr().err.strip().splitlines()[-1] == (
      "rpn-draw: error: --scales 2,4: only for a maps-layout --shards (the tiles' anchors "
      "are fixed)")


def test_maps_records_are_the_same_on_another_runner_mode(dataset, outputs, tmp_path):
  """Multi-process DirectRunner (rpn-preprocess's local default) writes the same
  maps records as the in-process runner, over other shards, by the determinism
  contract: everything but the feature maps byte for byte, the maps too when
  one thread count computed both, else within its tolerance."""
  from pipeline.io import determinism
  other = str(tmp_path / "multi")
  helpers.preprocess(dataset, other, extra=["--layout", "maps"], runner_args=(), num_shards=3)
  result = determinism.compare(outputs["final_f32"]["maps"], other)
  assert result.ok, result.problems
  assert result.records == len(SIZES)


def test_flip_in_the_maps_layout_adds_a_map_of_the_mirrored_image(dataset, tmp_path):
  output = str(tmp_path / "maps_flipped")
  manifest = helpers.preprocess(dataset, output, extra=["--layout", "maps", "--flip"])
  helpers.check_accounting(output, manifest, os.path.join(dataset, "Data", "DET", "train"))
  counts = manifest.counts
  assert counts["images_ok"] == counts["flipped_ok"] == len(SIZES)
  assert counts["records"] == 2 * len(SIZES)
  records = _read_maps(output, manifest)
  for image_id in sorted(r for r in records if not r.endswith(config.FLIP_SUFFIX)):
    record, mirror = records[image_id], records[image_id + config.FLIP_SUFFIX]
    height, width = record["image_size"]
    assert mirror["image_size"] == record["image_size"]
    assert mirror["feature_shape"] == record["feature_shape"]
    gt = np.reshape(record["gt_boxes"], (-1, 4))
    np.testing.assert_allclose(np.reshape(mirror["gt_boxes"], (-1, 4)),
                               np.stack([width - gt[:, 2], gt[:, 1], width - gt[:, 0], gt[:, 3]],
                                        axis=1), atol=1e-4)
