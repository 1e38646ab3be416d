"""pipeline.io.determinism: the manifest's thread counts, and compare() finding each
kind of difference the contract forbids (and allowing the one it allows)."""
import dataclasses
import os
import shutil

import numpy as np
import pytest

from pipeline.io import determinism, schema
from pipeline.io import manifest as manifest_lib
from pipeline.model import extractor as extractor_lib
from tests import dataset_fixtures as fixtures
from tests import pipeline_helpers as helpers
from tests import trainer_fixtures


def test_thread_counts_leave_the_counts_and_become_the_manifest_entry():
  counts = {"images_ok": 3, "backbone_threads=2": 1, "backbone_threads=12": 2, "records": 9}
  assert determinism.pop_threads(counts) == {"2": 1, "12": 2}  # by thread count, not text
  assert counts == {"images_ok": 3, "records": 9}
  assert determinism.threads_count(4) == {"backbone_threads=4": 1}


@pytest.mark.parametrize("reference, other, same", [
    ({"1": 5}, {"1": 5}, True),
    ({"1": 5}, {"1": 3}, True),  # the images may differ; the thread count is what counts
    ({"1": 5}, {"2": 5}, False),
    ({"1": 2, "2": 3}, {"1": 2, "2": 3}, False),  # mixed: no one thread count
    ({}, {}, False),  # unknown (a 0.6 manifest)
])
def test_same_threads(reference, other, same):
  def manifest(threads):
    return manifest_lib.Manifest.from_json(trainer_fixtures.make_manifest(backbone_threads=threads))
  assert determinism.same_threads(manifest(reference), manifest(other)) is same


def test_intra_op_threads_is_what_tensorflow_runs_with():
  import tensorflow as tf
  configured = tf.config.threading.get_intra_op_parallelism_threads()
  threads = extractor_lib.intra_op_threads()
  assert threads >= 1
  if configured:
    assert threads == configured
  else:
    assert threads in (len(os.sched_getaffinity(0)), int(os.environ.get(
        "TF_NUM_INTRAOP_THREADS", "0") or 0))


@pytest.fixture(scope="module")
def output(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("data"))
  fixtures.write_dataset(root, num_images=3, seed=2)
  out = str(tmp_path_factory.mktemp("out") / "shards")
  manifest = helpers.preprocess(root, out, num_shards=1, extra=("--batch_size", "16"))
  assert manifest.backbone_threads == {str(extractor_lib.intra_op_threads()): 3}
  return out


def _copy(output, tmp_path, name="copy"):
  return shutil.copytree(output, str(tmp_path / name))


def _rewrite(directory, change):
  """Rewrites the only shard of `directory` with change(index, Example) applied."""
  import tensorflow as tf
  from tensorflow.core.example import example_pb2
  path = os.path.join(directory, "tiles-00000-of-00001.tfrecord")
  records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
  with tf.io.TFRecordWriter(path) as writer:
    for i, serialized in enumerate(records):
      example = example_pb2.Example.FromString(serialized)
      change(i, example.features.feature)
      writer.write(example.SerializeToString(deterministic=True))


def _set_threads(directory, threads):
  manifest = manifest_lib.Manifest.load(directory)
  manifest_lib.write(directory, dataclasses.replace(manifest, backbone_threads=threads))


def _scale_tile(factor, index=0):
  def change(i, feature):
    if i == index:
      tile = np.frombuffer(feature[schema.TILE_KEY].bytes_list.value[0], "<f4").copy()
      tile[np.argmax(np.abs(tile))] *= factor
      feature[schema.TILE_KEY].bytes_list.value[0] = tile.tobytes()
  return change


def test_a_copy_holds_the_contract_byte_for_byte(output, tmp_path):
  result = determinism.compare(output, _copy(output, tmp_path))
  assert result.ok, result.problems
  assert result.features_identical and result.features_byte_identical_required
  assert result.records > 0 and result.max_feature_difference == 0


def test_an_ulp_is_allowed_between_thread_counts_not_within_one(output, tmp_path):
  other = _copy(output, tmp_path)
  _rewrite(other, _scale_tile(1 + 2 ** -23))  # one float32 ulp on the largest value
  _set_threads(other, {"7": 3})
  result = determinism.compare(output, other)
  assert result.ok, result.problems
  assert not result.features_identical and 0 < result.max_feature_difference < 1e-6
  _set_threads(other, manifest_lib.Manifest.load(output).backbone_threads)
  result = determinism.compare(output, other)
  assert result.problems == [
      f"features not byte-identical although one thread count "
      f"({extractor_lib.intra_op_threads()}) computed both"]


def test_a_feature_beyond_the_tolerance_is_named(output, tmp_path):
  other = _copy(output, tmp_path)
  _rewrite(other, _scale_tile(1.001))
  _set_threads(other, {"7": 3})
  problems = determinism.compare(output, other).problems
  assert len(problems) == 1, problems
  assert "features differ by" in problems[0] and problems[0].endswith("(allowed 0.0001)")


@pytest.mark.parametrize("field, value", [
    (schema.LABELS_KEY, 1), (schema.DELTAS_KEY, 0.5)])
def test_any_other_field_must_be_identical(output, tmp_path, field, value):
  other = _copy(output, tmp_path)

  def change(i, feature):
    if i == 2:
      values = feature[field].int64_list.value if field == schema.LABELS_KEY else (
          feature[field].float_list.value)
      values[0] = value if values[0] != value else -1
  _rewrite(other, change)
  _set_threads(other, {"7": 3})  # not excused by another thread count
  problems = determinism.compare(output, other).problems
  assert len(problems) == 1 and problems[0].endswith(f": {field} differ"), problems


def test_lost_records_and_changed_lines_are_named(output, tmp_path):
  import tensorflow as tf
  other = _copy(output, tmp_path)
  path = os.path.join(other, "tiles-00000-of-00001.tfrecord")
  records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
  with tf.io.TFRecordWriter(path) as writer:
    for serialized in records[1:]:
      writer.write(serialized)
  with open(os.path.join(other, "images.jsonl"), "a") as f:
    f.write('{"image_id": "extra"}\n')
  problems = determinism.compare(output, other).problems
  assert problems[0] == "images.jsonl differs"
  assert problems[1].startswith("1 records missing, e.g. (")


def test_command_line(output, tmp_path, capsys):
  assert determinism.main([output, _copy(output, tmp_path)]) == 0
  assert capsys.readouterr().out.splitlines()[-1] == "contract holds"
  other = _copy(output, tmp_path, "other")
  _rewrite(other, _scale_tile(2.0))
  assert determinism.main([output, other]) == 1
  assert capsys.readouterr().out.splitlines()[-1] == "contract broken"
  assert determinism.main([output, str(tmp_path / "nothing")]) == 2
