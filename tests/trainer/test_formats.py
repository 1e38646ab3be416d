"""rpn-propose --formats: boxes in the original image's pixels, detectron2's
proposals pickle, a COCO results file, and rpn-evaluate reading them back."""
import json
import os
import pickle

import numpy as np
import pytest

from tests import pipeline_helpers as helpers
from tests import trainer_fixtures as fixtures
from trainer import cli as trainer_cli
from trainer import evaluate, formats, propose_pipeline


def test_parse_formats():
  assert formats.parse_formats("jsonl") == ("jsonl",)
  assert formats.parse_formats("coco, detectron2") == ("jsonl", "detectron2", "coco")
  with pytest.raises(ValueError, match="unknown format 'yolo'; the known ones: jsonl, "
                                       "detectron2, coco"):
    formats.parse_formats("jsonl,yolo")


def test_image_boxes_undo_the_resize_and_clip_to_the_image():
  # A 200 x 100 image resized by 0.5 x 0.48 into its frame, then padded.
  boxes = np.array([[10.0, 4.8, 50.0, 24.0], [90.0, 40.0, 120.0, 60.0]])
  got = formats.image_boxes(boxes, (0.5, 0.48), 200, 100)
  np.testing.assert_allclose(got, [[20, 10, 100, 50], [180, 83.333333, 200, 100]])


def test_logits_invert_the_sigmoid_and_stay_finite():
  x = np.array([-30.0, -5.0, 0.0, 2.5, 12.0, 40.0])
  p = (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
  got = formats.logits(p)
  np.testing.assert_allclose(got[1:5], x[1:5], atol=1e-2)  # float32 near 1
  assert np.isfinite(got).all() and got[-1] == pytest.approx(16.6355, abs=1e-3)
  assert np.all(np.diff(got) > 0)


def load_proposals_into_dataset(dataset_dicts, proposal_file):
  """detectron2.data.detection_utils.load_proposals_into_dataset, its steps
  without detectron2 (v0.6): plain pickle, the documented keys, ids matched as
  str, boxes kept in their mode and reordered by logit, best first."""
  with open(proposal_file, "rb") as f:
    proposals = pickle.load(f, encoding="latin1")
  rename_keys = {"indexes": "ids", "scores": "objectness_logits"}
  for key in rename_keys:
    if key in proposals:
      proposals[rename_keys[key]] = proposals.pop(key)
  img_ids = {str(record["image_id"]) for record in dataset_dicts}
  id_to_index = {str(i): k for k, i in enumerate(proposals["ids"]) if str(i) in img_ids}
  bbox_mode = proposals.get("bbox_mode", 0)
  for record in dataset_dicts:
    i = id_to_index[str(record["image_id"])]
    boxes = proposals["boxes"][i]
    objectness_logits = proposals["objectness_logits"][i]
    inds = objectness_logits.argsort()[::-1]
    record["proposal_boxes"] = boxes[inds]
    record["proposal_objectness_logits"] = objectness_logits[inds]
    record["proposal_bbox_mode"] = bbox_mode
  return dataset_dicts


@pytest.fixture(scope="module")
def resized_job(tmp_path_factory):
  """A job whose frame is the image resized to a 48 px shorter side (at most 72)."""
  job = str(tmp_path_factory.mktemp("resized_job"))
  fixtures.save_job(job, fixtures.job_manifest(resize={"min_side": 48, "max_side": 72}),
                    fixtures.JOB_CHANNELS, fixtures.JOB_HIDDEN)
  return job


@pytest.fixture(scope="module")
def all_formats(resized_job, val_dataset, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("formats"))
  args, beam_args = trainer_cli.propose_parser().parse_with_beam(
      ["--job_dir", resized_job, "--input", val_dataset, "--split", "DET/val", "--output", out,
       "--formats", "coco,detectron2", "--min_size", "0", "--draw", "0", *helpers.IN_PROCESS])
  return out, propose_pipeline.propose(trainer_cli.check_propose(args), beam_args)


def test_lines_hold_boxes_in_the_original_pixels_and_logits(all_formats):
  out, settings = all_formats
  lines = helpers.read_proposals(out)
  assert len(lines) == 4
  for line in lines:
    boxes, image = np.asarray(line["boxes"]), np.asarray(line["image_boxes"])
    sx, sy = line["box_scale"]
    assert (sx, sy) != (1.0, 1.0)  # resized: the two differ
    want = np.clip(boxes / [sx, sy, sx, sy], 0,
                   [line["image_width"], line["image_height"]] * 2)
    np.testing.assert_allclose(image, want, atol=2e-3)
    p = np.asarray(line["scores"])
    np.testing.assert_allclose(1 / (1 + np.exp(-np.asarray(line["logits"]))), p, atol=3e-5)
  assert set(settings["units"]) == {"boxes", "image_boxes", "scores", "logits"}
  with open(os.path.join(out, "propose.json")) as f:
    written = json.load(f)
  assert written["units"] == formats.UNITS and written["formats_requested"] == [
      "jsonl", "detectron2", "coco"]
  # propose.json comes last, after every other file; the pipeline's summary is gone.
  stamps = {name: os.path.getmtime(os.path.join(out, name)) for name in os.listdir(out)}
  assert max(stamps, key=stamps.get) == "propose.json"
  assert not os.path.exists(os.path.join(out, ".pipeline-summary.json"))


def test_detectron2_pickle_loads_as_detectron2_loads_it(all_formats):
  out, settings = all_formats
  lines = {line["image_id"]: line for line in helpers.read_proposals(out)}
  path = os.path.join(out, "proposals_detectron2.pkl")
  assert settings["formats"]["detectron2"] == {"files": ["proposals_detectron2.pkl"],
                                               "images": 4}
  with open(path, "rb") as f:
    raw = pickle.load(f)
  assert raw["ids"] == sorted(lines) and raw["bbox_mode"] == 0
  assert all(b.dtype == np.float32 and b.shape[1] == 4 for b in raw["boxes"])
  assert all(s.dtype == np.float32 for s in raw["objectness_logits"])
  dataset = [{"image_id": i} for i in sorted(lines, reverse=True)]  # any order
  records = load_proposals_into_dataset(dataset, path)
  for record in records:
    line = lines[record["image_id"]]
    # Best first already; ties among the logits may swap places.
    np.testing.assert_allclose(np.sort(record["proposal_objectness_logits"])[::-1],
                               np.asarray(line["logits"], np.float32), atol=1e-6)
    got = {tuple(np.round(b, 2)) for b in record["proposal_boxes"]}
    assert got == {tuple(np.round(np.float32(b), 2)) for b in line["image_boxes"]}
    assert record["proposal_bbox_mode"] == 0


def test_coco_results_and_images(all_formats):
  out, settings = all_formats
  lines = {line["image_id"]: line for line in helpers.read_proposals(out)}
  with open(os.path.join(out, "proposals_coco.json")) as f:
    results = json.load(f)
  with open(os.path.join(out, "proposals_coco_images.json")) as f:
    images = json.load(f)
  assert [image["rpn_image_id"] for image in images["images"]] == sorted(lines)
  assert [image["id"] for image in images["images"]] == [1, 2, 3, 4]
  assert images["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
  by_number = {image["id"]: image for image in images["images"]}
  assert len(results) == sum(len(line["boxes"]) for line in lines.values())
  assert settings["formats"]["coco"]["results"] == len(results)
  for number, image in by_number.items():
    line = lines[image["rpn_image_id"]]
    assert (image["width"], image["height"]) == (line["image_width"], line["image_height"])
    mine = [r for r in results if r["image_id"] == number]
    assert all(r["category_id"] == 1 for r in mine)
    xywh = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in line["image_boxes"]]
    np.testing.assert_allclose([r["bbox"] for r in mine], xywh, atol=2e-3)
    assert [r["score"] for r in mine] == line["scores"]


def test_evaluate_reads_the_detectors_files(all_formats, val_dataset):
  out, _ = all_formats
  recalls = {}
  for name in ("proposals_detectron2.pkl", "proposals_coco.json"):
    result = evaluate.run(["--proposals", os.path.join(out, name), "--input", val_dataset,
                           "--output", os.path.join(out, "eval_" + name)])
    recalls[name] = result["results"]
    assert result["counts"]["images"] == 4
  assert recalls["proposals_detectron2.pkl"] == recalls["proposals_coco.json"]
  lines = evaluate.read_proposals(os.path.join(out, "proposals_detectron2.pkl"))
  for line, mine in zip(lines, helpers.read_proposals(out), strict=True):
    assert line["image_id"] == mine["image_id"]
    assert (line["width"], line["height"]) == (mine["image_width"], mine["image_height"])


def test_unknown_format_is_one_line(untrained_job, val_dataset, tmp_path, capsys):
  code = trainer_cli.propose_main(["--job_dir", untrained_job, "--input", val_dataset,
                                   "--output", str(tmp_path / "out"), "--formats", "jsonl,voc"])
  assert code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert "--formats jsonl,voc: unknown format 'voc'; the known ones: jsonl, detectron2, coco" in err
  assert not (tmp_path / "out").exists()
