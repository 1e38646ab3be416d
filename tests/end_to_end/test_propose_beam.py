"""rpn-propose as a Beam pipeline: the same proposals from images and from a
maps dataset of the same images, on DirectRunner in one process and in
several, and on the portable runner; its sharded output, pictures, counts and
errors; what it refuses before running."""
import json
import os
import shutil

import numpy as np
import pytest

from pipeline.commands import portable
from pipeline.io import manifest as manifest_lib
from tests import pipeline_helpers as helpers
from tests import trainer_fixtures as fixtures
from trainer import cli as trainer_cli
from trainer import propose, propose_pipeline

VAL_IDS = sorted([i for i, *_ in fixtures.VAL_IMAGES] + ["c_0004"])


def _propose(job, source, output, *extra, runner=helpers.IN_PROCESS):
  args, beam_args = trainer_cli.propose_parser().parse_with_beam(
      ["--job_dir", job, *source, "--output", output, "--post_nms_top_n", "40",
       "--min_size", "4", *extra, *runner])
  return propose_pipeline.propose(trainer_cli.check_propose(args), beam_args)


def _by_id(directory):
  return {line["image_id"]: line for line in helpers.read_proposals(directory)}


def _assert_same_proposals(got, want):
  assert sorted(got) == sorted(want)
  for image_id, line in want.items():
    other = got[image_id]
    for key in ("width", "height", "image_width", "image_height", "box_scale"):
      assert other[key] == line[key], (image_id, key)
    np.testing.assert_allclose(other["boxes"], line["boxes"], atol=1e-3, err_msg=image_id)
    np.testing.assert_allclose(other["scores"], line["scores"], atol=1e-5, err_msg=image_id)


@pytest.fixture(scope="module")
def from_images(untrained_job, val_dataset, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("from_images"))
  settings = _propose(untrained_job, ["--input", val_dataset, "--split", "DET/val"], out,
                      "--draw", "2")
  return out, settings


@pytest.fixture(scope="module")
def maps_dataset(val_dataset, tmp_path_factory):
  """val_dataset as rpn-preprocess --layout maps writes it with the job's backbone."""
  out = str(tmp_path_factory.mktemp("val_maps"))
  helpers.preprocess(val_dataset, out, split="DET/val", num_shards=2, extra=(
      "--backbone", fixtures.JOB_BACKBONE, "--weights", "none", "--layout", "maps",
      "--missing_annotations", "negative"))
  return out


def test_sharded_output_counts_pictures_and_traces(from_images):
  out, settings = from_images
  shards = sorted(f for f in os.listdir(out) if f.startswith("proposals-"))
  assert shards and settings["shards"] == shards
  assert all(f.endswith(".jsonl") and "-of-" in f for f in shards)
  lines = _by_id(out)
  assert sorted(lines) == VAL_IDS
  # Every input accounted for: four ok, the file that is no image failed.
  assert settings["counts"] == {"images_found": 5, "images_ok": 4, "images_failed": 1,
                                "proposals": sum(len(line["boxes"]) for line in lines.values())}
  with open(os.path.join(out, "propose.json")) as f:
    assert json.load(f)["counts"] == settings["counts"]
  assert settings["metrics"]["images_ok"] == 4 and settings["metrics"]["failed_decode"] == 1
  assert settings["metrics"]["head_traces"] == 1  # four image sizes, one trace
  # From images, a line names its file; pictures of the two least ids.
  assert lines["b_0003"]["path"].endswith("b_0003.JPEG")
  assert sorted(os.listdir(os.path.join(out, "pictures"))) == [
      propose.picture_name(i) for i in VAL_IDS[:2]]


def test_the_pipeline_proposes_as_the_one_process_proposer(untrained_job, from_images):
  # The Beam steps (rpn-preprocess's reading and framing, the shared head)
  # give what propose.Proposer gives for each image in this process.
  from pipeline.io import ilsvrc
  proposer = propose.Proposer(untrained_job, proposal_config=propose.config.ProposalConfig(
      post_nms_top_n=40, min_size=4))
  for image_id, line in _by_id(from_images[0]).items():
    image, gt, _, _ = ilsvrc.load_example(line["path"], None)
    frame, _, box_scale = proposer.prepare(image, gt)
    boxes, scores = proposer(frame, box_scale)
    assert list(box_scale) == line["box_scale"]
    np.testing.assert_allclose(line["boxes"], boxes, atol=1e-3, err_msg=image_id)
    np.testing.assert_allclose(line["scores"], scores, atol=1e-5, err_msg=image_id)


def test_from_maps_equals_from_images(untrained_job, from_images, maps_dataset, tmp_path):
  out = str(tmp_path / "from_maps")
  settings = _propose(untrained_job, ["--maps", maps_dataset], out, "--draw", "1")
  want = _by_id(from_images[0])
  got = _by_id(out)
  _assert_same_proposals(got, want)
  for image_id, line in got.items():
    assert "path" not in line
    assert line["gt_boxes"] == want[image_id].get("gt_boxes", [])  # the record's (c_0004: none)
  # The padded image's own size comes back from the record's source_size.
  assert (got["ILSVRC2013_val/a_0002"]["image_width"],
          got["ILSVRC2013_val/a_0002"]["image_height"]) == (40, 24)
  assert settings["counts"]["images_ok"] == 4 and settings["counts"]["images_failed"] == 0
  assert "backbone_ms" not in settings["metrics"]  # no backbone ran
  assert os.listdir(os.path.join(out, "pictures")) == [propose.picture_name(VAL_IDS[0])]


def test_several_processes_give_the_same_proposals(untrained_job, val_dataset, from_images,
                                                   tmp_path):
  out = str(tmp_path / "multi")
  settings = _propose(untrained_job, ["--input", val_dataset, "--split", "DET/val"], out,
                      "--draw", "0", runner=("--runner=DirectRunner",
                                             "--direct_running_mode=multi_processing",
                                             "--direct_num_workers=2"))
  _assert_same_proposals(_by_id(out), _by_id(from_images[0]))
  assert settings["counts"] == from_images[1]["counts"]
  assert not os.path.exists(os.path.join(out, "pictures"))


@pytest.mark.slow
def test_portable_runner_gives_the_same_proposals(untrained_job, maps_dataset, from_images,
                                                  tmp_path):
  out = str(tmp_path / "portable")
  with portable.local_portable_services(str(tmp_path / "logs"), 2) as (endpoint, pool):
    settings = _propose(untrained_job, ["--maps", maps_dataset], out, "--draw", "0",
                        runner=portable.portable_args(endpoint, pool, 2))
  _assert_same_proposals(_by_id(out), _by_id(from_images[0]))
  assert len(settings["shards"]) == 16  # a fixed count off DirectRunner, as rpn-preprocess


def test_a_rerun_replaces_the_earlier_output(untrained_job, val_dataset, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "proposals-00000-of-00009.jsonl").write_text('{"image_id": "stale"}\n')
  (out / "proposals.jsonl").write_text('{"image_id": "stale"}\n')
  pattern = os.path.join(val_dataset, "Data", "DET", "val", "*.JPEG")
  _propose(untrained_job, ["--images", pattern], str(out), "--draw", "0")
  lines = _by_id(str(out))
  assert sorted(lines) == ["b_0003", "c_0004"]
  assert all("gt_boxes" not in line for line in lines.values())  # --images: no XML


def test_bad_maps_records_are_errors_lines(untrained_job, maps_dataset, tmp_path):
  # A record that is no Example, one whose map is cut short: errors.jsonl
  # lines (stage maps), the others go on.
  import tensorflow as tf

  from pipeline.io import schema
  maps = str(tmp_path / "maps")
  shutil.copytree(maps_dataset, maps)
  manifest = manifest_lib.Manifest.load(maps)
  good = schema.make_map_example(np.zeros((2, 3, fixtures.JOB_CHANNELS), np.float32),
                                 (64, 96), np.zeros((0, 4)), "extra/good", source_size=(60, 90))
  short = schema.make_map_example(np.zeros((2, 3, fixtures.JOB_CHANNELS), np.float32),
                                  (64, 96), np.zeros((0, 4)), "extra/short")
  example = tf.train.Example.FromString(short)
  blob = example.features.feature["feature_map"].bytes_list.value[0]
  example.features.feature["feature_map"].bytes_list.value[0] = blob[:-4]
  path = manifest.shard_paths(maps)[0]
  with tf.io.TFRecordWriter(path) as writer:
    for record in (good, b"\x01 not an example", example.SerializeToString()):
      writer.write(record)
  data = manifest.to_json()
  data["shards"][0]["bytes"] = os.path.getsize(path)
  with open(os.path.join(maps, "manifest.json"), "w") as f:
    json.dump(data, f)
  out = str(tmp_path / "out")
  settings = _propose(untrained_job, ["--maps", maps], out, "--draw", "0")
  errors = helpers.read_jsonl(os.path.join(out, "errors.jsonl"))
  assert sorted(e["stage"] for e in errors) == ["maps", "maps"]
  assert any("extra/short" in e["reason"] and "bytes" in e["reason"] for e in errors)
  lines = _by_id(out)
  assert "extra/good" in lines
  assert (lines["extra/good"]["image_width"], lines["extra/good"]["image_height"]) == (90, 60)
  counts = settings["counts"]
  assert counts["images_failed"] == 2
  assert counts["images_found"] == counts["images_ok"] + 2 == len(lines) + 2


@pytest.mark.parametrize("change, flag, problem", [
    ({"backbone": "TinyTestNet"}, "--maps", "its backbone is 'TinyTestNet' but the job"),
    ({"feature_layer": "block_13_expand"}, "--maps", "its feature_layer is 'block_13_expand'"),
    ({"dtype": "float16"}, "--maps", "its dtype is 'float16'"),
    ({"layout": "tiles"}, "--maps", "layout 'tiles'"),
    (None, "--maps", "truncated or overwritten"),
])
def test_maps_that_do_not_fit_the_job_are_refused(untrained_job, maps_dataset, tmp_path, capsys,
                                                  change, flag, problem):
  maps = str(tmp_path / "maps")
  shutil.copytree(maps_dataset, maps)
  if change is None:  # a shard cut short
    path = manifest_lib.Manifest.load(maps).shard_paths(maps)[0]
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) - 10)
  else:
    with open(os.path.join(maps, "manifest.json")) as f:
      data = json.load(f)
    data.update(change)
    with open(os.path.join(maps, "manifest.json"), "w") as f:
      json.dump(data, f)
  out = tmp_path / "out"
  code = trainer_cli.propose_main(["--job_dir", untrained_job, "--maps", maps,
                                   "--output", str(out)])
  err = capsys.readouterr().err
  assert code == 2, err
  assert err.count("\n") == 1 and f"{flag} {maps}" in err and problem in err, err
  assert not out.exists()


def test_sources_and_weights_with_maps_are_checked(untrained_job, val_dataset, maps_dataset,
                                                   tmp_path, capsys):
  out = str(tmp_path / "out")
  code = trainer_cli.propose_main(["--job_dir", untrained_job, "--maps", maps_dataset,
                                   "--input", val_dataset, "--output", out])
  assert code == 2
  assert "give exactly one of --input ROOT" in capsys.readouterr().err
  code = trainer_cli.propose_main(["--job_dir", untrained_job, "--maps", maps_dataset,
                                   "--weights", "none", "--output", out])
  assert code == 2
  assert "--weights none: no backbone runs with --maps" in capsys.readouterr().err
  assert not os.path.exists(out)


def test_an_image_without_proposals_is_an_errors_line(val_dataset, tmp_path):
  # A head whose scores are all NaN: every image gets an errors line (stage
  # propose) that says why, and the run accounts for each.
  from trainer import model as model_lib
  job = str(tmp_path / "job")
  tile_model = fixtures.random_tile_model(fixtures.JOB_CHANNELS, fixtures.JOB_HIDDEN, 0)
  for layer in tile_model.layers:
    if layer.get_weights():
      layer.set_weights([np.full(w.shape, np.nan, w.dtype) for w in layer.get_weights()])
  model_lib.save_rpn(job, tile_model, manifest_lib.Manifest.from_json(fixtures.job_manifest()),
                     {"hidden": fixtures.JOB_HIDDEN, "epochs": 0})
  pattern = os.path.join(val_dataset, "Data", "DET", "val", "ILSVRC2013_val", "*.JPEG")
  out = str(tmp_path / "out")
  settings = _propose(job, ["--images", pattern], out, "--draw", "1")
  errors = helpers.read_jsonl(os.path.join(out, "errors.jsonl"))
  assert sorted(e["image_id"] for e in errors) == ["a_0001", "a_0002"]
  assert all(e["stage"] == "propose" and e["reason"].startswith("no proposals: of ")
             and "non-finite" in e["reason"] for e in errors)
  assert settings["counts"] == {"images_found": 2, "images_ok": 0, "images_failed": 2,
                                "proposals": 0}
  assert settings["metrics"]["failed_propose"] == 2
  assert helpers.read_proposals(out) == [] and settings["pictures"] == 0
