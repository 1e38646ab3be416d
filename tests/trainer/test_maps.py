"""The maps layout's training input (trainer/maps.py): targets drawn afresh every
epoch with the pipeline's own code, seeded by (seed, epoch, image id); records
that do not hold together named by file and record; images without an inside
anchor counted, never a stall."""
import collections
import os

import numpy as np
import pytest
import tensorflow as tf

from pipeline.core import config, targets
from pipeline.io import manifest as manifest_lib
from pipeline.io import schema
from tests import trainer_fixtures as fixtures
from trainer import maps

ANCHORS, TARGETS = config.AnchorConfig(), config.TargetConfig()


def _images(count=4, channels=8):
  """Maps of a few sizes, with 0 to 3 gt boxes each."""
  rng = np.random.default_rng(7)
  images = []
  for i in range(count):
    height, width = int(rng.integers(3, 8)), int(rng.integers(3, 8))
    frame_w, frame_h = 32 * width, 32 * height
    gt = []
    for _ in range(i % 4):
      w, h = rng.uniform(30, frame_w - 1), rng.uniform(30, frame_h - 1)
      x, y = rng.uniform(0, frame_w - w), rng.uniform(0, frame_h - h)
      gt.append((np.float32(x), np.float32(y), np.float32(x + w), np.float32(y + h)))
    images.append(fixtures.map_image(f"dir/img{i}", height, width, channels, gt=gt or (),
                                     seed=i))
  return images


def _by_image(ds):
  """{image_id: [(location, labels, deltas, tile)] in order} of tile records."""
  out = collections.defaultdict(list)
  for r in ds.as_numpy_iterator():
    out[r[schema.IMAGE_ID_KEY].decode()].append(
        (tuple(r[schema.LOCATION_KEY]), r[schema.LABELS_KEY], r[schema.DELTAS_KEY],
         r[schema.TILE_KEY]))
  return out


def _expected(image, epoch, anchors=ANCHORS, target_config=TARGETS):
  feature_map, (height, width), gt, image_id = image
  result = targets.compute_targets(
      width, height, feature_map.shape[0], feature_map.shape[1],
      np.asarray(gt, np.float32).astype(np.float64), image_id,
      anchor_config=anchors, target_config=target_config, epoch=epoch)
  tiles = targets.extract_tiles(feature_map, result.points, feature_map.shape[1])
  return result, tiles


@pytest.fixture
def maps_dir(tmp_path):
  images = _images()
  directory = str(tmp_path / "maps")
  manifest = fixtures.write_map_shards(directory, images, num_shards=2)
  return directory, manifest, images


def test_epoch_zero_seed_is_the_tiles_layout_seed():
  assert targets.epoch_image_seed(5, 0, "a/b") == targets.image_seed(5, "a/b")
  seeds = {targets.epoch_image_seed(5, e, "a/b") for e in range(4)}
  assert len(seeds) == 4
  assert targets.epoch_image_seed(5, 1, "a/b") != targets.epoch_image_seed(6, 1, "a/b")


@pytest.mark.parametrize("epoch", [0, 3])
def test_records_are_the_pipeline_targets_of_that_epoch(maps_dir, epoch):
  directory, manifest, images = maps_dir
  got = _by_image(maps.tile_records(manifest.shard_paths(directory), manifest,
                                    ANCHORS, TARGETS, epoch))
  assert sorted(got) == sorted(image[3] for image in images if
                               len(_expected(image, epoch)[0].points))
  for image in images:
    result, tiles = _expected(image, epoch)
    records = got.get(image[3], [])
    assert [r[0] for r in records] == [tuple(v) for v in result.locations]
    for (_, labels, deltas, tile), want_labels, want_deltas, want_tile in zip(
        records, result.point_labels, result.point_deltas, tiles, strict=True):
      np.testing.assert_array_equal(labels, want_labels)
      np.testing.assert_array_equal(deltas, want_deltas)
      np.testing.assert_array_equal(tile, want_tile)


def test_epochs_draw_afresh_and_the_same_epoch_again(tmp_path):
  """Images with more inside anchors than the 256 sampled: each epoch its own draw."""
  images = _images(3) + [fixtures.map_image("dir/big", 20, 24, stride=16,
                                            gt=((40, 60, 200, 220),))]
  directory = str(tmp_path / "maps")
  manifest = fixtures.write_map_shards(directory, images, num_shards=2)
  files = manifest.shard_paths(directory)

  def labels(epoch, shuffle=False, seed=0):
    got = _by_image(maps.tile_records(files, manifest, ANCHORS, TARGETS, epoch,
                                      shuffle=shuffle, seed=seed))
    return {image_id: sorted((loc, lab.tobytes()) for loc, lab, _, _ in records)
            for image_id, records in got.items()}
  first, again = labels(1), labels(1, shuffle=True, seed=9)
  assert first == again  # order of files and interleaving does not matter
  second = labels(2)
  assert second["dir/big"] != first["dir/big"]  # another epoch, other samples
  assert len(second["dir/big"]) > 100


def test_passes_of_an_epoch_log_go_on_from_its_first(maps_dir):
  directory, manifest, images = maps_dir
  files = manifest.shard_paths(directory)
  log = maps.EpochLog(images_per_pass=len(images), first=2)
  ds = maps.tile_records(files, manifest, ANCHORS, TARGETS, log)
  expected = sum(len(_expected(image, 2)[0].points) + len(_expected(image, 3)[0].points)
                 for image in images)
  list(ds.take(expected).as_numpy_iterator())
  assert [p["epoch"] for p in log.done][:1] == [2]
  assert log.counts(2) == {"images": len(images), "images_no_anchor": 0,
                           "tiles": sum(len(_expected(i, 2)[0].points) for i in images)}


def test_image_without_inside_anchor_gives_no_tile_and_is_counted(tmp_path):
  images = _images(3) + [fixtures.map_image("dir/small", 1, 1, gt=((2, 2, 20, 20),))]
  directory = str(tmp_path / "maps")
  manifest = fixtures.write_map_shards(directory, images)
  log = maps.EpochLog()
  got = _by_image(maps.tile_records(manifest.shard_paths(directory), manifest,
                                    ANCHORS, TARGETS, 0, log=log))
  assert "dir/small" not in got and len(got) >= 2
  assert log.counts(0)["images"] == 4 and log.counts(0)["images_no_anchor"] == 1


def test_no_tile_at_all_is_an_error_not_a_stall(tmp_path):
  """Anchors larger than every frame: the statistics pass ends with an error."""
  directory = str(tmp_path / "maps")
  manifest = fixtures.write_map_shards(directory, _images(2))
  huge = config.AnchorConfig(scales=(50.0,), ratios=(1.0,))
  with pytest.raises(maps.MapRecordError, match="no tile could be drawn"):
    maps.sample_centres(manifest.shard_paths(directory), manifest, huge, TARGETS,
                        1000)


def _raw_record(feature_shape, nbytes, image_size, gt, image_id="dir/bad"):
  example = tf.train.Example()
  feature = example.features.feature
  feature[schema.FEATURE_MAP_KEY].bytes_list.value.append(b"\x00" * nbytes)
  feature[schema.FEATURE_SHAPE_KEY].int64_list.value.extend(feature_shape)
  feature[schema.IMAGE_SIZE_KEY].int64_list.value.extend(image_size)
  feature[schema.GT_BOXES_KEY].float_list.value.extend(gt)
  feature[schema.IMAGE_ID_KEY].bytes_list.value.append(image_id.encode())
  return example.SerializeToString()


@pytest.mark.parametrize("record,problem", [
    (_raw_record([4, 5, 8], 4 * 4 * 8 * 4, [128, 160], [10, 10, 50, 50]),
     "feature_shape [4, 5, 8] needs 640 bytes of features, the record holds 512"),
    (_raw_record([4, 5, 8], 4 * 5 * 8 * 4, [128, 160], [10, 10, 170, 50]),
     "gt box 0 [10.0, 10.0, 170.0, 50.0] is not a box inside its 160x128 frame"),
    (_raw_record([4, 5, 8], 4 * 5 * 8 * 4, [128, 160], [10, 10, 50]),
     "gt_boxes holds 3 values, not 4 per box"),
    (_raw_record([4, 5, 6], 4 * 5 * 6 * 4, [128, 160], []),
     "feature_shape [4, 5, 6] has 6 channels, the manifest 8"),
], ids=["shape_vs_bytes", "gt_outside_frame", "gt_not_boxes", "channels"])
def test_a_record_that_does_not_hold_together_is_named(tmp_path, record, problem):
  directory = str(tmp_path / "maps")
  manifest = fixtures.write_map_shards(directory, _images(2), raw_records=[record])
  path = manifest.shard_paths(directory)[0]
  with pytest.raises(tf.errors.OpError) as raised:
    list(maps.tile_records([path], manifest, ANCHORS, TARGETS, 0).as_numpy_iterator())
  error = maps.record_error(raised.value)
  assert error is not None, raised.value.message[:2000]
  assert str(error) == f"{path}: record 2 (image dir/bad): {problem}"


def test_batches_feed_the_tile_model(maps_dir):
  directory, manifest, images = maps_dir
  files = manifest.shard_paths(directory)
  log = maps.EpochLog(images_per_pass=len(images))
  ds = maps.make_dataset(files, manifest, ANCHORS, TARGETS, batch_size=16, epochs=log,
                         tiles_per_pass=50)
  tiles, target = next(iter(ds))
  assert tiles.shape == (16, 3, 3, 8) and tiles.dtype == tf.float32
  assert target["scores"].shape == (16, 9) and target["deltas"].shape == (16, 45)


def test_mixed_layout_directory_is_refused(tmp_path):
  directory = str(tmp_path / "data")
  fixtures.write_map_shards(directory, _images(2))
  fixtures.write_shards(str(tmp_path / "tiles"), num_records=4, num_shards=1)
  name = "tiles-00000-of-00001.tfrecord"
  os.rename(str(tmp_path / "tiles" / name), os.path.join(directory, name))
  with pytest.raises(manifest_lib.ManifestError,
                     match=f"mixed layouts: .* of layout 'maps' but {name} is a shard of layout"):
    manifest_lib.Manifest.load(directory)


def test_maps_manifest_must_list_maps_shards(tmp_path):
  directory = str(tmp_path / "data")
  manifest = fixtures.write_map_shards(directory, _images(1))
  manifest = dict(manifest.to_json(), shard_files=["tiles-00000-of-00001.tfrecord"])
  with pytest.raises(manifest_lib.ManifestError, match="does not start with 'maps-'"):
    manifest_lib.validate(manifest, "m.json")


def _anchors_json(path, **changes):
  import json
  report = {"backbone": "InceptionResNetV2", "feature_layer": None,
            "frame": {"min_side": None, "max_side": None, "min_input_side": 75},
            "suggested": {"scales": [2.0, 5.0], "ratios": [0.5, 1.0]}}
  report.update(changes)
  with open(path, "w") as f:
    json.dump(report, f)
  return str(path)


def test_training_takes_the_suggestion_of_rpn_anchors(maps_dir, tmp_path):
  from pipeline.commands import cli as pipeline_cli
  from trainer import cli, sampling
  directory, manifest, _ = maps_dir
  path = _anchors_json(tmp_path / "anchors.json")
  parse = lambda *extra: cli.train_parser().parse(  # noqa: E731
      ["--data", directory, "--job_dir", "-", "--anchors_json", path, *extra])

  def resolve(args, manifest):
    return sampling.resolve_sampling(cli.sampling_flags(args), manifest, args.seed)
  anchors, target_config = resolve(parse(), manifest)
  assert (anchors.scales, anchors.ratios) == ((2.0, 5.0), (0.5, 1.0))
  assert target_config == TARGETS
  anchors, target_config = resolve(parse("--scales", "3", "--seed", "4", "--fg_fraction",
                                         "0.25"), manifest)
  assert (anchors.scales, anchors.ratios) == ((3.0,), (0.5, 1.0))  # --scales wins
  assert (target_config.seed, target_config.fg_fraction) == (4, 0.25)
  other = _anchors_json(tmp_path / "vgg.json", backbone="VGG16", feature_layer="block5_conv3")
  with pytest.raises(pipeline_cli.UsageError, match="was made for backbone 'VGG16'"):
    resolve(cli.train_parser().parse(
        ["--data", directory, "--job_dir", "-", "--anchors_json", other]), manifest)
  levels = _anchors_json(tmp_path / "levels.json", feature_layers=["a", "b"])
  with pytest.raises(pipeline_cli.UsageError,
                     match=r"was made for feature_layers \['a', 'b'\], the data has None"):
    resolve(cli.train_parser().parse(
        ["--data", directory, "--job_dir", "-", "--anchors_json", levels]), manifest)
  not_it = tmp_path / "not.json"
  not_it.write_text("{}")
  with pytest.raises(pipeline_cli.UsageError, match="not the anchors.json of rpn-anchors"):
    resolve(cli.train_parser().parse(
        ["--data", directory, "--job_dir", "-", "--anchors_json", str(not_it)]), manifest)


@pytest.mark.parametrize("flags, flag, problem", [
    (["--scales", "0,2"], "--scales 0,2", "must be positive numbers"),
    (["--ratios", "-1"], "--ratios -1", "must be positive numbers"),
    (["--fg_fraction", "1.5"], "--fg_fraction 1.5", r"must be in \(0, 1\]"),
    (["--bg_iou_thresh", "-0.1"], "--bg_iou_thresh -0.1", "need 0 <= --bg_iou_thresh"),
    (["--fg_iou_thresh", "0.2"], "--fg_iou_thresh 0.2", "need 0 <= --bg_iou_thresh"),
    (["--batch_size_per_image", "0"], "--batch_size_per_image 0", "must be >= 1"),
])
def test_sampling_out_of_range_names_the_flag(maps_dir, flags, flag, problem):
  """rpn-train's anchor and target flags go through the configs' validate(),
  the ranges rpn-preprocess checks, and the error names rpn-train's flag."""
  from pipeline.commands import cli as pipeline_cli
  from trainer import cli, sampling
  directory, manifest, _ = maps_dir
  args = cli.train_parser().parse(["--data", directory, "--job_dir", "-", *flags])
  with pytest.raises(pipeline_cli.UsageError, match=problem) as info:
    sampling.check_sampling(cli.sampling_flags(args), manifest, args.seed, directory)
  assert str(info.value).startswith(flag)


def test_training_on_from_a_finished_job_draws_on_from_its_epoch(tmp_path):
  """A larger --epochs trains on: the passes go on from the epoch it starts at."""
  import json

  from trainer import cli, train
  images = [fixtures.map_image(f"d/img{i}", 5, 6, gt=((20, 30, 120, 150),), seed=i)
            for i in range(6)]
  directory, job = str(tmp_path / "maps"), str(tmp_path / "job")
  fixtures.write_map_shards(directory, images)

  def run(epochs):
    args = cli.train_parser().parse(["--data", directory, "--job_dir", job, "--epochs",
                                     str(epochs), "--hidden", "8", "--batch_size", "32"])
    train.train(cli.check_train(args))
    with open(os.path.join(job, "train_config.json")) as f:
      return json.load(f)
  first = run(2)
  assert [p["epoch"] for p in first["passes_drawn"]][:2] == [0, 1]
  assert first["steps_per_epoch_used"] >= 1 and first["anchor"]["num_anchors"] == 9
  second = run(3)
  assert second["epochs_run"] == [2]
  assert [p["epoch"] for p in second["passes_drawn"]][:1] == [2]
