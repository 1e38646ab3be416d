"""rpn-preprocess end to end on DirectRunner: outputs follow DESIGN.md to the letter."""
import collections
import os
import shutil

import numpy as np
import pytest

from pipeline.commands import draw
from pipeline.core import config
from pipeline.io import images as images_lib
from pipeline.model import extractor as extractor_lib
from tests import dataset_fixtures as fixtures
from tests import pipeline_helpers as helpers


@pytest.fixture(scope="module")
def generated_run(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("data"))
  written = fixtures.write_dataset(root, num_images=6, seed=1)
  output = str(tmp_path_factory.mktemp("out") / "shards")
  manifest = helpers.preprocess(root, output)
  return root, written, output, manifest


def test_manifest_contract(generated_run):
  _, _, output, manifest = generated_run
  for key in ("backbone", "weights", "feature_channels", "tile_size", "dtype", "compression",
              "anchor", "targets", "stride_mode", "shard_pattern", "counts"):
    assert key in manifest.to_json(), key  # the keys of manifest.json
  assert manifest.tile_size == 3 and manifest.stride_mode == "ratio"
  assert manifest.anchor["scales"] == [3.0, 6.0, 12.0]
  assert manifest.anchor["ratios"] == [0.5, 1.0, 2.0]
  assert manifest.targets == {"fg_iou_thresh": 0.7, "bg_iou_thresh": 0.3, "batch_size": 256,
                                 "fg_fraction": 0.5, "seed": 0}
  assert list(manifest.shard_files) == ["tiles-00000-of-00002.tfrecord",
                                     "tiles-00001-of-00002.tfrecord"]
  for key in ("images_found", "images_ok", "images_failed", "images_skipped", "boxes_dropped",
              "records", "fg_anchors", "bg_anchors"):
    assert isinstance(manifest.counts[key], int), key


def test_every_input_accounted_for(generated_run):
  root, written, output, manifest = generated_run
  helpers.check_accounting(output, manifest, os.path.join(root, "Data", "DET", "train"))
  assert manifest.counts["images_found"] == len(written) == manifest.counts["images_ok"]


def test_records_follow_the_conventions(generated_run):
  _, _, output, manifest = generated_run
  per_image = helpers.check_records_follow_conventions(output)
  assert sum(per_image.values()) == manifest.counts["records"]
  assert manifest.counts["fg_anchors"] > 0


def test_images_jsonl_boxes_and_frame(generated_run):
  _, written, output, _ = generated_run
  lines = {line["image_id"]: line for line in helpers.images_of(output)}
  assert set(lines) == set(written)
  for image_id, truth in written.items():
    line = lines[image_id]
    assert (line["width"], line["height"]) == (truth["width"], truth["height"])
    # XML holds 0-based inclusive indices: x2 = xmax + 1.
    expected = [[b[0], b[1], b[2] + 1, b[3] + 1] for b in truth["boxes"]]
    assert line["gt_boxes"] == expected
    assert line["stride_x"] == pytest.approx(line["width"] / line["feature_width"])
    assert line["stride_y"] == pytest.approx(line["height"] / line["feature_height"])


def test_tiles_are_windows_of_the_padded_feature_map(generated_run):
  root, _, output, manifest = generated_run
  extractor = extractor_lib.FeatureExtractor(helpers.TINY, "none", seed=0)
  records = [helpers.decode_record(r, manifest.feature_channels)
             for r in helpers.read_records(output)]
  by_image = collections.defaultdict(list)
  for record in records:
    by_image[record["image_id"]].append(record)
  image_id = sorted(by_image)[0]
  with open(os.path.join(root, "Data/DET/train", image_id + ".JPEG"), "rb") as f:
    image = images_lib.decode_image(f.read())
  padded = np.pad(extractor(image), ((1, 1), (1, 1), (0, 0)))
  for record in by_image[image_id]:
    y, x = record["location"]
    np.testing.assert_array_equal(record["tile"], padded[y:y + 3, x:x + 3])


def test_rerun_into_a_used_directory_replaces_old_shards(generated_run, tmp_path):
  # Into a directory holding an earlier run, with another shard count: the old
  # shards are gone, the records are the same.
  root, _, output, _ = generated_run
  rerun = shutil.copytree(output, str(tmp_path / "rerun"))  # 2 shards
  manifest = helpers.preprocess(root, rerun, num_shards=1)
  assert sorted(os.listdir(rerun)) == ["errors.jsonl", "images.jsonl", "manifest.json",
                                       "tiles-00000-of-00001.tfrecord"]
  assert (collections.Counter(helpers.read_records(rerun))
          == collections.Counter(helpers.read_records(output)))
  helpers.check_accounting(rerun, manifest)


def test_run_dying_before_its_manifest_leaves_none_and_rerun_recovers(
    generated_run, tmp_path, monkeypatch):
  # A run that dies after writing its shards but before manifest.json (always
  # written last) leaves no manifest, so the trainer refuses the directory;
  # a rerun into it gives the complete output, with no shard of either run.
  from pipeline.io import manifest as manifest_lib
  from pipeline.io import storage
  root, _, output, _ = generated_run
  out = str(tmp_path / "dies")
  helpers.preprocess(root, out, num_shards=3)  # a complete earlier run in the directory
  write_text = storage.write_text

  def failing_write_text(path, text):
    if path.endswith("manifest.json"):
      raise OSError("disk went away")
    write_text(path, text)
  monkeypatch.setattr(storage, "write_text", failing_write_text)
  with pytest.raises(Exception, match="disk went away"):
    helpers.preprocess(root, out, num_shards=2)
  names = os.listdir(out)
  assert "manifest.json" not in names and "tiles-00000-of-00003.tfrecord" not in names
  with pytest.raises(manifest_lib.ManifestError, match="manifest.json"):
    manifest_lib.Manifest.load(out)
  monkeypatch.undo()
  manifest = helpers.preprocess(root, out, num_shards=2)
  assert sorted(n for n in os.listdir(out) if n.startswith("tiles-")) == [
      "tiles-00000-of-00002.tfrecord", "tiles-00001-of-00002.tfrecord"]
  helpers.check_accounting(out, manifest)
  assert (collections.Counter(helpers.read_records(out))
          == collections.Counter(helpers.read_records(output)))


def test_float16_gzip_shards(generated_run, tmp_path):
  root, _, output, manifest32 = generated_run
  out = str(tmp_path / "f16")
  manifest = helpers.preprocess(root, out, extra=["--tile_dtype", "float16",
                                                  "--compression", "GZIP"])
  assert manifest.dtype == "float16" and manifest.compression == "GZIP"
  assert all(name.endswith(".tfrecord.gz") for name in manifest.shard_files)
  assert manifest.counts["records"] == manifest32.counts["records"]
  helpers.check_records_follow_conventions(out)


def test_real_ilsvrc_vid_frames(ilsvrc_samples, tmp_path):
  output = str(tmp_path / "vid")
  manifest = helpers.preprocess(ilsvrc_samples, output, split="VID/train")
  helpers.check_accounting(output, manifest)
  helpers.check_records_follow_conventions(output)
  assert manifest.counts["images_ok"] == 8
  lines = {line["image_id"]: line for line in helpers.images_of(output)}
  frame = lines["ILSVRC2015_VID_train_0000/ILSVRC2015_train_00078000/000000"]
  assert (frame["width"], frame["height"]) == (320, 240)
  # Hand-read from 000000.xml (VID order xmax, xmin, ymax, ymin): first object
  # xmin 90 xmax 144 ymin 31 ymax 132 -> [90, 31, 145, 133].
  assert [90, 31, 145, 133] in frame["gt_boxes"] and len(frame["gt_boxes"]) == 3


def test_image_set_and_missing_annotations(tmp_path):
  root = str(tmp_path / "data")
  written = fixtures.write_dataset(root, num_images=4, seed=2)
  ids = sorted(written)
  os.remove(os.path.join(root, "Annotations/DET/train", ids[1] + ".xml"))
  image_set = tmp_path / "train.txt"
  image_set.write_text("".join(f"{i} {n + 1}\n" for n, i in enumerate(ids[:3])) + "missing/id 9\n")
  skip = helpers.preprocess(root, str(tmp_path / "skip"), extra=["--image_set", str(image_set)])
  assert skip.counts["images_found"] == 3  # ids[3] is not in the set
  assert skip.counts["images_skipped"] == 1 and skip.counts["images_ok"] == 2
  helpers.check_accounting(str(tmp_path / "skip"), skip)
  errors = helpers.read_jsonl(str(tmp_path / "skip" / "errors.jsonl"))
  assert {e["reason"] for e in errors} >= {
      "no annotation file (--missing_annotations skip)",
      "listed in the image set but no image file found"}
  negative = helpers.preprocess(root, str(tmp_path / "neg"),
                                extra=["--missing_annotations", "negative"])
  assert negative.counts["images_ok"] == 4 and negative.counts["images_skipped"] == 0
  lines = {line["image_id"]: line for line in helpers.images_of(str(tmp_path / "neg"))}
  assert lines[ids[1]]["gt_boxes"] == [] and lines[ids[1]]["num_fg"] == 0
  assert lines[ids[1]]["num_bg"] > 0


def test_tarball_2014_layout(tmp_path):
  root = str(tmp_path / "data")
  fixtures.write_dataset(root, num_images=2, seed=3)
  output = str(tmp_path / "out")
  from pipeline.commands import preprocess as run
  manifest = run.run(["--images", os.path.join(root, "Data/DET/train"),
                      "--annotations", os.path.join(root, "Annotations/DET/train"),
                      "--output", output, "--backbone", helpers.TINY, "--weights", "none",
                      *helpers.IN_PROCESS]).manifest
  assert manifest.counts["images_ok"] == 2
  helpers.check_accounting(output, manifest)


# ---------------------------------------------------------------------------
# The same data run another way: the same output as the reference run (the
# generated_run fixture: 2 fixed shards, no record shuffle), checked by
# helpers.check_same_output, plus what each way promises in its manifest.

CAP_MB = 0.05  # --max_shard_mb; the tiny backbone's records are about 1 KB


def _fixed_shards(out, manifest):
  assert manifest.num_shards == 3 and manifest.records_shuffled is False
  assert manifest.max_shard_mb is None


def _runner_shards(out, manifest):
  # --num_shards 0: no shuffle in the record path (flat memory on
  # DirectRunner); however many shards it makes.
  assert manifest.records_shuffled is False and manifest.num_shards >= 1


def _capped_shards(out, manifest):
  # --num_shards 0 with --max_shard_mb: a shard is closed once it holds that
  # many bytes of records, so a big local run does not write one huge file
  # per worker.
  import tensorflow as tf
  assert manifest.max_shard_mb == CAP_MB and manifest.num_shards >= 4
  largest = max(sum(len(r.numpy()) for r in tf.data.TFRecordDataset(os.path.join(out, name)))
                for name in manifest.shard_files)
  record = max(len(r) for r in helpers.read_records(out))
  assert largest < CAP_MB * (1 << 20) + record + 16  # closed at the first record over the cap


def _shuffled_records(out, manifest):
  # --shuffle_records adds a Reshuffle of every record before the sink: the
  # record multiset is unchanged and the manifest says so.
  assert manifest.records_shuffled is True and manifest.num_shards == 3


@pytest.mark.parametrize("num_shards, extra, check", [
    (3, (), _fixed_shards),
    (0, (), _runner_shards),
    (0, ("--max_shard_mb", str(CAP_MB)), _capped_shards),
    (3, ("--shuffle_records",), _shuffled_records),
], ids=["fixed_3_shards", "runner_shards", "runner_shards_capped", "shuffle_records"])
def test_same_output_another_way(generated_run, tmp_path, num_shards, extra, check):
  root, _, output, reference_manifest = generated_run
  assert reference_manifest.records_shuffled is False
  out = str(tmp_path / "out")
  manifest = helpers.preprocess(root, out, num_shards=num_shards, extra=extra)
  assert manifest.counts == reference_manifest.counts
  helpers.check_same_output(output, out, manifest, os.path.join(root, "Data", "DET", "train"))
  check(out, manifest)


def test_fixed_shards_spread_each_image(generated_run):
  # Without the record shuffle, the sink's round-robin still puts the records
  # of one image into different shards, so no shard is one image's run.
  import tensorflow as tf
  _, _, output, manifest = generated_run
  shards_of, count = collections.defaultdict(set), collections.Counter()
  for name in manifest.shard_files:
    for raw in tf.data.TFRecordDataset(os.path.join(output, name)):
      example = tf.train.Example.FromString(raw.numpy())
      image_id = example.features.feature["image_id"].bytes_list.value[0]
      shards_of[image_id].add(name)
      count[image_id] += 1
  several = [i for i in count if count[i] > 1]
  assert manifest.num_shards == 2 and len(several) >= 4
  assert all(len(shards_of[i]) == 2 for i in several), shards_of


def test_flip_writes_every_image_and_its_mirror(generated_run, tmp_path, monkeypatch):
  root, written, plain_output, plain = generated_run
  output = str(tmp_path / "flipped")
  manifest = helpers.preprocess(root, output, extra=["--flip"])
  helpers.check_accounting(output, manifest, os.path.join(root, "Data", "DET", "train"))
  assert manifest.flipped_copies and not plain.flipped_copies
  assert manifest.counts["images_ok"] == manifest.counts["flipped_ok"] == len(written)
  lines = {line["image_id"]: line for line in helpers.images_of(output)}
  for image_id in written:
    line, mirror = lines[image_id], lines[image_id + config.FLIP_SUFFIX]
    width = line["width"]
    assert (mirror["width"], mirror["height"]) == (width, line["height"])
    np.testing.assert_allclose(
        mirror["gt_boxes"], [[width - x2, y1, width - x1, y2]
                             for x1, y1, x2, y2 in line["gt_boxes"]])
  raw = helpers.read_records(output)
  records = [helpers.decode_record(r, manifest.feature_channels) for r in raw]
  # The images' own records are exactly those of a run without --flip ...
  assert collections.Counter(r for r, d in zip(raw, records, strict=True)
                             if not d["image_id"].endswith(config.FLIP_SUFFIX)
                             ) == collections.Counter(helpers.read_records(plain_output))
  # ... and the copies' tiles are windows of the backbone's features of the mirrored image.
  image_id = sorted(written)[0]
  with open(os.path.join(root, "Data/DET/train", image_id + ".JPEG"), "rb") as f:
    image = images_lib.decode_image(f.read())
  extractor = extractor_lib.FeatureExtractor(helpers.TINY, "none", seed=0)
  padded = np.pad(extractor(np.ascontiguousarray(image[:, ::-1])), ((1, 1), (1, 1), (0, 0)))
  mirrored = [r for r in records if r["image_id"] == image_id + config.FLIP_SUFFIX]
  assert mirrored and any(r["labels"].max() == 1 for r in mirrored)
  for record in mirrored:
    y, x = record["location"]
    np.testing.assert_allclose(record["tile"], padded[y:y + 3, x:x + 3], rtol=1e-5, atol=1e-5)
  # rpn-draw draws a mirrored copy from its input's files, mirrored as the pipeline
  # mirrors it (its recomputed labels must match images.jsonl's counts, or it raises)
  drawn, real = {}, draw.draw_targets

  def capture(picture, gt_boxes, *rest):
    drawn["image"], drawn["boxes"] = picture, gt_boxes
    return real(picture, gt_boxes, *rest)
  monkeypatch.setattr(draw, "draw_targets", capture)
  flipped_id = image_id + config.FLIP_SUFFIX
  assert draw.main(["--shards", output, "--input", root, "--image_id", flipped_id,
                    "--output", str(tmp_path / "pictures")]) == 0
  np.testing.assert_array_equal(drawn["image"], image[:, ::-1])
  np.testing.assert_allclose(drawn["boxes"], np.reshape(lines[flipped_id]["gt_boxes"], (-1, 4)))
  assert os.path.exists(tmp_path / "pictures" / (flipped_id.replace("/", "__") + ".png"))
