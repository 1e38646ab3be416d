"""DoFns called directly (setup / process) with a tiny fake backbone."""
import numpy as np
import pytest
from apache_beam.pvalue import TaggedOutput

from pipeline.beam import dofns, elements
from pipeline.beam import outputs as outputs_lib
from pipeline.beam import progress as progress_lib
from pipeline.core import config as config_lib
from pipeline.model import registry
from tests import dataset_fixtures as fixtures


class FakeExtractor:
  """Feature map = mean colour of each 32x32 cell, 4 channels (RGB, 1)."""
  channels = 4
  min_input_side = 32

  def __call__(self, image):
    h, w = image.shape[0] // 32, image.shape[1] // 32
    cells = image[:h * 32, :w * 32].reshape(h, 32, w, 32, 3).mean(axis=(1, 3)) / 255.0
    return np.concatenate([cells, np.ones((h, w, 1))], axis=-1).astype(np.float32)


def _split(outputs):
  main, tagged = [], {}
  for out in outputs:
    if isinstance(out, TaggedOutput):
      tagged.setdefault(out.tag, []).append(out.value)
    else:
      main.append(out)
  return main, tagged


def test_pair_inputs_outcomes():
  fn = dofns.PairInputsFn("skip", use_image_set=False)
  main, tagged = _split(fn.process(("a", {"images": ["/d/a.JPEG"], "annotations": ["/x/a.xml"]})))
  assert main == [elements.ImageInput("a", "/d/a.JPEG", "/x/a.xml")] and not tagged
  main, tagged = _split(fn.process(("b", {"images": ["/d/b.JPEG"], "annotations": []})))
  assert not main and tagged["errors"][0]["outcome"] == "skipped"
  main, tagged = _split(fn.process(("c", {"images": [], "annotations": ["/x/c.xml"]})))
  assert not main and tagged["errors"][0]["outcome"] == "unpaired"
  main, tagged = _split(fn.process(("d", {"images": ["/d/d.png", "/d/d.JPEG"],
                                          "annotations": ["/x/d.xml"]})))
  assert main == [elements.ImageInput("d", "/d/d.JPEG", "/x/d.xml")]
  assert tagged["errors"][0]["path"] == "/d/d.png"
  assert "duplicate image id" in tagged["errors"][0]["reason"]
  negative = dofns.PairInputsFn("negative", use_image_set=False)
  main, _ = _split(negative.process(("b", {"images": ["/d/b.JPEG"], "annotations": []})))
  assert main == [elements.ImageInput("b", "/d/b.JPEG", None)]
  with_set = dofns.PairInputsFn("skip", use_image_set=True)
  assert not list(with_set.process(("e", {"images": ["/d/e.JPEG"], "annotations": ["/x/e.xml"],
                                          "listed": []})))


def test_load_image_reports_bad_input_with_stage(tmp_path):
  root = str(tmp_path)
  fixtures.write_pair(root, "DET/train", "bad", None, "<annotation>", image_bytes=b"not a jpeg")
  fn = dofns.LoadImageFn(config_lib.BackboneConfig(weights="none"), 75)
  item = elements.ImageInput("bad", f"{root}/Data/DET/train/bad.JPEG",
                      f"{root}/Annotations/DET/train/bad.xml")
  main, tagged = _split(fn.process(item))
  assert not main
  (error,) = tagged["errors"]
  assert error["outcome"] == "failed" and error["stage"] in ("decode", "annotation")
  assert error["reason"]


def _load(root, image_id, width, height, boxes):
  image = fixtures.random_image(np.random.default_rng(0), width, height, boxes)
  fixtures.write_pair(root, "DET/train", image_id, image,
                      fixtures.det_xml(image_id, width, height, boxes))
  item = elements.ImageInput(image_id, f"{root}/Data/DET/train/{image_id}.JPEG",
                      f"{root}/Annotations/DET/train/{image_id}.xml")
  (loaded,) = dofns.LoadImageFn(config_lib.BackboneConfig(weights="none"), 75).process(item)
  return loaded


def test_flip_adds_a_mirrored_copy_framed_like_any_image(tmp_path):
  root = str(tmp_path)
  image = fixtures.random_image(np.random.default_rng(0), 200, 60, [(40, 10, 139, 49)])
  fixtures.write_pair(root, "DET/train", "small", image,
                      fixtures.det_xml("small", 200, 60, [(40, 10, 139, 49)]))
  item = elements.ImageInput("small", f"{root}/Data/DET/train/small.JPEG",
                             f"{root}/Annotations/DET/train/small.xml")
  plain, mirrored = dofns.LoadImageFn(config_lib.BackboneConfig(weights="none"), 75,
                                      flip=True).process(item)
  assert not plain.flipped and plain.image_id == "small"
  assert mirrored.flipped and mirrored.image_id == "small" + config_lib.FLIP_SUFFIX
  assert mirrored.image_path == plain.image_path and mirrored.stats == {}
  # Mirrored before the padding: both padded at the bottom (60 -> 75 px), none on the left.
  assert mirrored.image.shape == plain.image.shape == (75, 200, 3)
  np.testing.assert_array_equal(mirrored.image[:60], plain.image[:60, ::-1])
  assert not mirrored.image[60:].any()
  np.testing.assert_array_equal(mirrored.gt_boxes, [[200 - 140, 10, 200 - 40, 50]])
  # Resized frames: the mirror is resized as the image is.
  resized = dofns.LoadImageFn(config_lib.BackboneConfig(weights="none", min_side=120), 75,
                              flip=True)
  plain, mirrored = resized.process(item)
  assert plain.image.shape == mirrored.image.shape == (120, 400, 3)
  np.testing.assert_allclose(mirrored.gt_boxes, [[120, 20, 320, 100]])
  np.testing.assert_allclose(plain.gt_boxes, [[80, 20, 280, 100]])


def test_a_flipped_copy_counts_apart_from_the_inputs(tmp_path):
  loaded = _load(str(tmp_path), "big", 300, 200, [(40, 30, 200, 160)])
  flipped = loaded._replace(image_id="big" + config_lib.FLIP_SUFFIX, stats={}, flipped=True)
  main, tagged = _targets(_features(flipped))
  assert main and tagged["images"][0]["image_id"] == "big" + config_lib.FLIP_SUFFIX
  (counts,) = tagged["stats"]
  assert counts["flipped_ok"] == 1 and "images_ok" not in counts
  # A copy without anchors inside its frame is counted, with no errors line of its own.
  # (a 200 x 75 frame: its smallest anchor is taller than it)
  tiny = _load(str(tmp_path), "small", 200, 60, [(40, 10, 140, 50)])._replace(
      image_id="small" + config_lib.FLIP_SUFFIX, stats={}, flipped=True)
  main, tagged = _targets(_features(tiny))
  assert not main and not tagged.get("errors") and not tagged.get("images")
  assert tagged["stats"] == [{"flipped_no_anchors": 1}]
  maps_fn = dofns.MapRecordFn("float32")
  maps_fn.setup()
  _, tagged = _split(maps_fn.process(_features(flipped)))
  assert tagged["stats"][0]["flipped_ok"] == 1 and "images_ok" not in tagged["stats"][0]


def _features(loaded):
  features_fn = dofns.ComputeFeaturesFn(config_lib.BackboneConfig(weights="none"), 0,
                                    extractor_factory=FakeExtractor)
  features_fn.setup()
  (features,) = features_fn.process(loaded)
  return features


def _targets(features):
  targets_fn = dofns.SampleTargetsFn(config_lib.AnchorConfig(), config_lib.TargetConfig(),
                                     "float32")
  targets_fn.setup()
  return _split(targets_fn.process(features))


def test_small_image_is_padded_not_dropped(tmp_path):
  loaded = _load(str(tmp_path), "small", 200, 60, [(40, 10, 140, 50)])
  # 60 px tall < 75 px: padded at the bottom to 75, boxes unchanged.
  assert loaded.image.shape == (75, 200, 3) and loaded.stats.get("images_padded") == 1
  np.testing.assert_array_equal(loaded.gt_boxes, [[40, 10, 141, 51]])
  features = _features(loaded)
  assert features.feature_map.shape == (2, 6, 4) and (features.width, features.height) == (200, 75)
  records, tagged = _targets(features)
  # Strides 33.3 x 37.5: the smallest anchor (scale 3, ratio 1) is 100 x 112.5 px,
  # taller than the 75 px frame, so no anchor is inside: no records, and the
  # image is skipped with the reason (images.jsonl lists images with records).
  (error,) = tagged["errors"]
  (stats,) = tagged["stats"]
  assert records == [] and "images" not in tagged
  assert error["outcome"] == "skipped" and error["stage"] == "targets"
  assert error["reason"].startswith("no anchor to sample: 0 of 108 anchors lie inside the "
                                    "200x75 frame")
  assert elements.error_counts(error) == {"images_skipped": 1}
  assert stats == {"images_padded": 1, "images_no_anchors": 1}  # no images_ok


def test_padded_image_gives_records_with_small_anchors(tmp_path):
  # With anchors small enough to fit (scales 0.5, 1, 2 strides), the padded
  # frame is labelled like any other: records, and the frame's size recorded.
  features = _features(_load(str(tmp_path), "small", 200, 60, [(40, 10, 140, 50)]))
  targets_fn = dofns.SampleTargetsFn(config_lib.AnchorConfig(scales=(0.5, 1.0, 2.0)),
                                 config_lib.TargetConfig(), "float32")
  targets_fn.setup()
  records, tagged = _split(targets_fn.process(features))
  (line,) = tagged["images"]
  assert (line["width"], line["height"]) == (200, 75)
  assert line["num_locations"] == len(records) > 0 and line["num_fg"] > 0


def test_load_features_targets_chain(tmp_path):
  features = _features(_load(str(tmp_path), "img", 320, 256, [(40, 30, 200, 180)]))
  assert features.feature_map.shape == (8, 10, 4)
  records, tagged = _targets(features)
  (line,) = tagged["images"]
  (stats,) = tagged["stats"]
  assert line["feature_height"] == 8 and line["feature_width"] == 10
  assert line["num_locations"] == len(records) == stats["records_expected"] > 0
  assert line["gt_boxes"] == [[40.0, 30.0, 201.0, 181.0]]
  assert stats["images_ok"] == 1 and stats["fg_anchors"] == line["num_fg"] > 0
  # Same input, same records: nothing depends on order or attempts.
  again, _ = _targets(features)
  assert again == records


def test_dead_letter_becomes_an_error_line():
  item = elements.ImageInput("x", "/d/x.JPEG", None)
  error = elements.dead_letter_to_error("features")((item, (MemoryError, MemoryError("boom"), [])))
  assert error == {"path": "/d/x.JPEG", "stage": "features", "reason": "MemoryError: boom",
                   "outcome": "failed", "image_id": "x"}
  assert elements.error_counts(error) == {"images_failed": 1, "failed_features": 1}


def test_sum_counts():
  combine = outputs_lib.SumCounts()
  acc = combine.create_accumulator()
  acc = combine.add_input(acc, {"a": 1, "b": 2})
  other = combine.add_input(combine.create_accumulator(), {"a": 3})
  assert combine.extract_output(combine.merge_accumulators([acc, other])) == {"a": 4, "b": 2}


def test_targets_do_not_depend_on_order_or_attempts(tmp_path):
  # Beam may retry a bundle or hand images over in any order: one DoFn
  # instance processing an image again, or after other images, gives the
  # same records, line and counts. batch_size 16 makes the sampler choose.
  a = _features(_load(str(tmp_path), "a", 320, 256, [(40, 30, 200, 180)]))
  b = _features(_load(str(tmp_path), "b", 300, 220, [(10, 20, 150, 200), (160, 30, 290, 90)]))
  targets_fn = dofns.SampleTargetsFn(config_lib.AnchorConfig(),
                                     config_lib.TargetConfig(batch_size=16),
                                 "float32")
  targets_fn.setup()
  first_a = _split(targets_fn.process(a))
  first_b = _split(targets_fn.process(b))
  assert first_a[1]["images"][0]["num_fg"] + first_a[1]["images"][0]["num_bg"] == 16
  assert _split(targets_fn.process(a)) == first_a  # a retried attempt
  fresh = dofns.SampleTargetsFn(config_lib.AnchorConfig(), config_lib.TargetConfig(batch_size=16),
                            "float32")
  fresh.setup()
  assert _split(fresh.process(b)) == first_b  # another worker, another order
  assert _split(fresh.process(a)) == first_a


# ---------------------------------------------------------------------------
# write_to_tfrecord: shards closed at --max_shard_mb


def test_write_to_tfrecord_sets_the_private_sink_limit(tmp_path):
  """WriteToTFRecord takes no max_bytes_per_shard: write_to_tfrecord sets it on
  the private `_sink` attribute (checked against apache-beam 2.77). This test
  exists to FAIL when a Beam upgrade renames `_sink` or its
  `max_bytes_per_shard`: runner-sharded runs would then silently write one
  file per bundle (or write_to_tfrecord raises), so look again at
  pipeline.beam.outputs.write_to_tfrecord when it fails."""
  from apache_beam.io.tfrecordio import WriteToTFRecord
  prefix = str(tmp_path / config_lib.SHARD_PREFIX)
  default = WriteToTFRecord(prefix)._sink.max_bytes_per_shard
  write = outputs_lib.write_to_tfrecord(prefix,
                                        config_lib.OutputConfig(num_shards=0, max_shard_mb=2.5))
  assert isinstance(write, WriteToTFRecord)
  assert write._sink.max_bytes_per_shard == int(2.5 * 1024 * 1024) != default


@pytest.mark.parametrize("num_shards, max_shard_mb", [(16, 2.5), (0, 0)],
                         ids=["fixed_shards", "no_limit"])
def test_write_to_tfrecord_leaves_the_sink_default(tmp_path, num_shards, max_shard_mb):
  """A fixed shard count, or --max_shard_mb 0, leaves the sink's limit at Beam's default."""
  from apache_beam.io.tfrecordio import WriteToTFRecord
  prefix = str(tmp_path / config_lib.SHARD_PREFIX)
  default = WriteToTFRecord(prefix)._sink.max_bytes_per_shard
  write = outputs_lib.write_to_tfrecord(
      prefix, config_lib.OutputConfig(num_shards=num_shards, max_shard_mb=max_shard_mb))
  assert write._sink.max_bytes_per_shard == default
  assert write._sink.num_shards == num_shards


def test_max_shard_mb_splits_a_direct_runner_write(tmp_path):
  """50 records of 10 KB with 0.1 MB shards: several files, every record once."""
  import glob
  import os

  import apache_beam as beam
  import tensorflow as tf
  from apache_beam.options.pipeline_options import PipelineOptions
  records = [bytes([i]) * 10 + os.urandom(10 * 1024 - 10) for i in range(50)]
  prefix = str(tmp_path / config_lib.SHARD_PREFIX)
  fmt = config_lib.OutputConfig(num_shards=0, max_shard_mb=0.1)
  options = PipelineOptions(["--runner=DirectRunner", "--direct_running_mode=in_memory"])
  with beam.Pipeline(options=options) as p:
    _ = p | beam.Create(records) | outputs_lib.write_to_tfrecord(prefix, fmt)
  files = sorted(glob.glob(prefix + "-*"))
  assert len(files) > 1, files
  assert all(f.endswith(".tfrecord") for f in files)
  # No shard much larger than the limit (it closes once past it).
  assert max(os.path.getsize(f) for f in files) < 0.1 * (1 << 20) + 2 * 10 * 1024
  read = [r.numpy() for r in tf.data.TFRecordDataset(files)]
  assert sorted(read) == sorted(records)


# ---------------------------------------------------------------------------
# WorkerProgress


class _Clock:
  def __init__(self, now: float = 1000.0):
    self.now = now

  def monotonic(self) -> float:
    return self.now


def _progress_lines(caplog):
  return [r.getMessage() for r in caplog.records if r.name == "pipeline.progress"]


def test_worker_progress_logs_at_most_every_s(caplog, monkeypatch):
  import logging
  import os
  clock = _Clock()
  monkeypatch.setattr(progress_lib, "time", clock)  # progress.py's time.monotonic only
  caplog.set_level(logging.INFO, logger="pipeline.progress")
  progress = progress_lib.WorkerProgress(every_s=10.0)
  progress.image_done()  # the first event is always logged
  lines = _progress_lines(caplog)
  assert len(lines) == 1
  assert "1 images done" in lines[0] and "0 errors so far" in lines[0]
  assert f"worker {os.getpid()}" in lines[0]
  clock.now += 4
  progress.image_done()
  clock.now += 5.9
  progress.error()  # still within 10 s of the last line
  assert len(_progress_lines(caplog)) == 1
  clock.now += 0.2  # 10.1 s after the last line
  progress.image_done()
  lines = _progress_lines(caplog)
  assert len(lines) == 2
  assert "3 images done in 10 s" in lines[1] and "1 errors so far" in lines[1]
  assert "0.30 images/s" in lines[1]
  clock.now += 1
  progress.image_done()
  assert len(_progress_lines(caplog)) == 2


def test_worker_progress_first_event_an_error(caplog, monkeypatch):
  import logging
  monkeypatch.setattr(progress_lib, "time", _Clock())
  caplog.set_level(logging.INFO, logger="pipeline.progress")
  progress = progress_lib.WorkerProgress(every_s=10.0)
  progress.error()
  progress.image_done()
  lines = _progress_lines(caplog)
  assert len(lines) == 1
  assert "0 images done" in lines[0] and "1 errors so far" in lines[0]


# ---------------------------------------------------------------------------
# WriteOutputs: the manifest lists each shard's bytes and records


@pytest.mark.parametrize("compression, num_shards, max_shard_mb", [
    ("NONE", 3, 0), ("GZIP", 2, 0), ("NONE", 0, 0.05)],
    ids=["fixed_shards", "gzip", "runner_shards_capped"])
def test_write_outputs_lists_each_shards_bytes_and_records(tmp_path, compression, num_shards,
                                                          max_shard_mb):
  """WriteOutputs on DirectRunner (no backbone: records of uneven sizes made
  here): the manifest's "shards" follows shard_files, with each file's size and
  the records in it (read back with TensorFlow), adding up to counts.records."""
  import os

  import apache_beam as beam
  import tensorflow as tf
  from apache_beam.options.pipeline_options import PipelineOptions

  from pipeline.io import manifest as manifest_lib
  rng = np.random.default_rng(0)
  records = [bytes([i]) + rng.bytes(int(n)) for i, n in enumerate(rng.integers(100, 3000, 57))]
  out = str(tmp_path / "out")
  cfg = config_lib.PreprocessConfig(
      images_dir=str(tmp_path), annotations_dir=str(tmp_path), output=out,
      backbone=config_lib.BackboneConfig(backbone=registry.TINY_BACKBONE, weights="none"),
      output_format=config_lib.OutputConfig(num_shards=num_shards, compression=compression,
                                            max_shard_mb=max_shard_mb))
  options = PipelineOptions(["--runner=DirectRunner", "--direct_running_mode=in_memory"])
  with beam.Pipeline(options=options) as p:
    outputs = {"records": p | "Records" >> beam.Create(records),
               "images": p | "Images" >> beam.Create([{"image_id": "a"}]),
               "stats": p | "Stats" >> beam.Create([{"images_ok": 1}]),
               "errors": p | "Errors" >> beam.Create([]),
               "found": p | "Found" >> beam.Create([1])}
    _ = outputs | outputs_lib.WriteOutputs(cfg)
  manifest = manifest_lib.Manifest.load(out)
  paths = manifest.shard_paths(out)
  assert len(paths) == (num_shards or len(paths)) > 1
  assert [s.file for s in manifest.shards] == list(manifest.shard_files)
  tf_compression = "GZIP" if compression == "GZIP" else ""
  read = []
  for shard, path in zip(manifest.shards, paths, strict=True):
    in_file = [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type=tf_compression)]
    assert shard == manifest_lib.ShardInfo(os.path.basename(path), os.path.getsize(path),
                                           len(in_file))
    read += in_file
  assert sorted(read) == sorted(records)
  assert sum(s.records for s in manifest.shards) == manifest.counts["records"] == 57
