"""Tests of trainer/propose.py: rpn-propose on job directories and whole images.

The numeric proposal steps are tested in tests/pipeline/core/test_proposals.py.
The end-to-end run (the `proposals` fixture of tests/conftest.py) is
rpn-propose with an untrained RPN over a MobileNetV2 backbone (random
weights) on a few generated ILSVRC-layout images; tests/trainer/test_evaluate.py
runs rpn-evaluate on the same output.
"""
import json
import os
import shutil

import numpy as np
import pytest

from tests import dataset_fixtures as fx
from tests import pipeline_helpers as helpers
from tests import reference
from tests import trainer_fixtures as fixtures
from trainer import cli as trainer_cli
from trainer import job as job_lib
from trainer import propose

# ---------------------------------------------------------------------------
# Small helpers


def test_picture_name_and_glob_root():
  assert propose.picture_name("ILSVRC2013_val/x_0001") == "ILSVRC2013_val__x_0001.png"
  assert propose.glob_root("/data/imgs/*.JPEG") == "/data/imgs"
  assert propose.glob_root("/data/imgs/**/a?.jpg") == "/data/imgs"
  assert propose.glob_root("gs://b/x/one.jpg") == "gs://b/x"


def test_prepare_frame_resize_and_padding():
  """rpn-propose frames an image with its manifest's min_input_side and resize
  (Proposer.prepare: core.frame.prepare_frame), and rpn-evaluate agrees."""
  from pipeline.core import frame as frame_lib
  from trainer import evaluate
  image = np.zeros((24, 40, 3), np.uint8)
  gt = np.array([[2.0, 3.0, 30.0, 20.0]])
  # No resize: padded to 40 x 32 at the bottom; boxes unchanged, box_scale 1.
  frame, frame_gt, box_scale = frame_lib.prepare_frame(image, gt, 32, None, None)
  assert frame.shape == (32, 40, 3) and box_scale == (1.0, 1.0)
  np.testing.assert_allclose(frame_gt, gt)
  # Resize so the short side is 48: 40 x 24 -> 80 x 48 (x 2).
  frame, frame_gt, box_scale = frame_lib.prepare_frame(image, gt, 32, 48, None)
  assert frame.shape == (48, 80, 3) and box_scale == (2.0, 2.0)
  np.testing.assert_allclose(frame_gt, gt * 2)
  # rpn-evaluate brings the XML boxes into the same frame from the recorded line.
  from pipeline.io import ilsvrc
  annotation = ilsvrc.Annotation(40, 24, np.array([[2.0, 3.0, 30.0, 20.0]]), ["n1"])
  line = {"width": 80, "height": 48, "image_width": 40, "image_height": 24,
          "box_scale": list(box_scale)}
  np.testing.assert_allclose(evaluate.frame_gt_boxes(annotation, line), frame_gt)


# ---------------------------------------------------------------------------
# Job directories and the end-to-end run


def test_head_layout_matches_tiles_and_anchors(tmp_path):
  # The whole-map head, reshaped to K = Hf * Wf * A rows, must give at row
  # p * A + a (p = y * Wf + x) what the tile model gives for the tile around
  # (y, x), and grid anchor a of point (y, x). TinyTestNet: real features fast.
  job = str(tmp_path / "job")
  manifest = fixtures.job_manifest(backbone="TinyTestNet", feature_channels=16)
  tile_model = fixtures.save_job(job, manifest, 16, 8, seed=1)
  proposer = propose.Proposer(job)
  frame = fx.random_image(np.random.default_rng(2), 100, 70)
  scores, deltas, anchors = proposer.head(frame)
  feature_map = proposer.extractor(frame)  # [Hf, Wf, C]
  feature_height, feature_width = feature_map.shape[:2]  # 70 x 100 at stride 32 -> 2 x 3
  assert (feature_height, feature_width) == (2, 3)
  assert len(scores) == len(deltas) == len(anchors) == 2 * 3 * 9
  stride_x, stride_y = 100 / 3, 70 / 2
  for y in range(feature_height):
    for x in range(feature_width):
      out = tile_model(reference.tile(feature_map, y, x)[np.newaxis])
      rows = slice((y * feature_width + x) * 9, (y * feature_width + x + 1) * 9)
      np.testing.assert_allclose(scores[rows], np.asarray(out["scores"])[0], atol=1e-5)
      np.testing.assert_allclose(deltas[rows], np.asarray(out["deltas"])[0].reshape(9, 4),
                                 atol=1e-5)
      # Anchor a = ratio_index * 3 + scale_index: a = 4 is ratio 1, scale 6,
      # a square of 6 strides centred on the point.
      cx, cy = (x + 0.5) * stride_x, (y + 0.5) * stride_y
      np.testing.assert_allclose(anchors[rows][4], [cx - 3 * stride_x, cy - 3 * stride_y,
                                                    cx + 3 * stride_x, cy + 3 * stride_y])
      # Every anchor of the point: DESIGN.md's formula.
      np.testing.assert_allclose(
          anchors[rows], [reference.anchor_box(y, x, a, stride_x, stride_y) for a in range(9)],
          rtol=1e-12, atol=1e-9)
  assert np.ptp(scores) > 0.05  # the random head really varies


def test_propose_end_to_end(proposals):
  lines = {line["image_id"]: line for line in helpers.read_proposals(proposals)}
  assert sorted(lines) == sorted([i for i, *_ in fixtures.VAL_IMAGES] + ["c_0004"])
  for line in lines.values():
    boxes = np.asarray(line["boxes"]).reshape(-1, 4)
    scores = np.asarray(line["scores"])
    assert 0 < len(boxes) <= 50 and len(scores) == len(boxes)
    assert (np.diff(scores) <= 0).all()  # best first
    assert ((scores >= 0) & (scores <= 1)).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= line["width"]).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= line["height"]).all()
    assert (boxes[:, 2] - boxes[:, 0] >= 4 - 1e-3).all()
  # The padded image: frame 40 x 32, decoded image 40 x 24, gt boxes unmoved.
  small = lines["ILSVRC2013_val/a_0002"]
  assert (small["width"], small["height"]) == (40, 32)
  assert (small["image_width"], small["image_height"]) == (40, 24)
  assert small["gt_boxes"] == [[2.0, 3.0, 30.0, 20.0]]  # x2 = xmax + 1
  assert lines["ILSVRC2013_val/a_0001"]["gt_boxes"] == [[10, 8, 61, 51], [50, 20, 91, 61]]
  assert lines["b_0003"]["gt_boxes"] == []
  assert "gt_boxes" not in lines["c_0004"]  # no annotation: no gt
  errors = helpers.read_jsonl(os.path.join(proposals, "errors.jsonl"))
  assert [(os.path.basename(e["path"]), e["stage"]) for e in errors] == [
      ("d_0005.JPEG", "decode")]
  pictures = sorted(os.listdir(os.path.join(proposals, "pictures")))
  assert pictures == ["ILSVRC2013_val__a_0001.png", "ILSVRC2013_val__a_0002.png"]
  with open(os.path.join(proposals, "propose.json")) as f:
    settings = json.load(f)
  assert settings["counts"] == {"images_found": 5, "images_ok": 4, "images_failed": 1,
                                "proposals": sum(len(line["boxes"]) for line in lines.values())}


def test_propose_images_glob(untrained_job, val_dataset, tmp_path):
  # --images: ids relative to the glob's directory, no gt boxes.
  out = str(tmp_path / "out")
  pattern = os.path.join(val_dataset, "Data", "DET", "val", "ILSVRC2013_val", "*.JPEG")
  assert trainer_cli.propose_main(["--job_dir", untrained_job, "--images", pattern,
                                   "--output", out, "--draw", "0", *helpers.IN_PROCESS]) == 0
  lines = helpers.read_proposals(out)
  assert [line["image_id"] for line in lines] == ["a_0001", "a_0002"]
  assert all("gt_boxes" not in line and line["boxes"] for line in lines)
  assert not os.path.exists(os.path.join(out, "pictures"))


def test_model_best_proposes_with_the_best_epoch(untrained_job, val_dataset, tmp_path, capsys):
  # A job whose best/ holds another head than its last epoch: --model best
  # proposes exactly as --job_dir JOB/best, and not as the last epoch.
  job = str(tmp_path / "job")
  shutil.copytree(untrained_job, job)
  fixtures.save_job(os.path.join(job, "best"), fixtures.job_manifest(), fixtures.JOB_CHANNELS,
                    fixtures.JOB_HIDDEN, seed=7)
  pattern = os.path.join(val_dataset, "Data", "DET", "val", "ILSVRC2013_val", "*.JPEG")
  runs = {"best": ["--job_dir", job, "--model", "best"],
          "best_dir": ["--job_dir", os.path.join(job, "best")],
          "last": ["--job_dir", job]}
  boxes = {}
  for name, flags in runs.items():
    out = str(tmp_path / name)
    assert trainer_cli.propose_main([*flags, "--images", pattern, "--output", out,
                                     "--draw", "0", *helpers.IN_PROCESS]) == 0
    boxes[name] = [(line["boxes"], line["scores"]) for line in
                   helpers.read_proposals(out)]
  assert boxes["best"] == boxes["best_dir"]
  assert boxes["best"] != boxes["last"]
  # --weights best is short for it, with the manifest's backbone weights.
  args = trainer_cli.propose_parser().parse(["--job_dir", job, "--images", pattern,
                                             "--output", str(tmp_path / "w"), "--weights", "best"])
  run = trainer_cli.check_propose(args)
  assert run.job_dir == os.path.join(job, "best") and run.weights is None
  # A job without best/ (trained without --val_data): one line, exit 2, nothing written.
  for flags in (["--model", "best"], ["--weights", "best"]):
    code = trainer_cli.propose_main(["--job_dir", untrained_job, *flags, "--images", pattern,
                                     "--output", str(tmp_path / "none")])
    assert code == 2
    err = capsys.readouterr().err
    assert "has no best/: rpn-train keeps the best epoch only when given --val_data" in err
    assert "Traceback" not in err and not (tmp_path / "none").exists()


def test_missing_weights_file_is_named(untrained_job, val_dataset, tmp_path, capsys):
  broken = str(tmp_path / "job")
  shutil.copytree(untrained_job, broken)
  os.remove(os.path.join(broken, "rpn.weights.h5"))
  code = trainer_cli.propose_main(["--job_dir", broken, "--input", val_dataset, "--output",
                                   str(tmp_path / "out")])
  assert code == 2
  err = capsys.readouterr().err
  assert "rpn.weights.h5" in err and "Traceback" not in err
  with pytest.raises(job_lib.JobError, match="rpn.weights.h5"):
    job_lib.read_manifest(broken)


@pytest.mark.filterwarnings("ignore:Skipping nested container")  # Keras, on the mismatch
def test_manifest_of_another_backbone_is_refused(untrained_job, tmp_path):
  broken = str(tmp_path / "job")
  shutil.copytree(untrained_job, broken)
  # A manifest saying MobileNetV2 but with InceptionResNetV2's 1536 channels.
  with open(os.path.join(broken, "manifest.json"), "w") as f:
    json.dump(fixtures.job_manifest(feature_channels=1536), f)
  with pytest.raises(job_lib.JobError, match="feature_channels 1536 does not match"):
    propose.Proposer(broken)
  # The RPN's input channels must be the backbone's.
  with open(os.path.join(broken, "manifest.json"), "w") as f:
    json.dump(fixtures.job_manifest(backbone="TinyTestNet", feature_channels=16), f)
  with pytest.raises(job_lib.JobError, match="rpn.weights.h5"):
    propose.Proposer(broken)


def test_no_images_is_a_clear_error(untrained_job, tmp_path, capsys):
  os.makedirs(tmp_path / "Data" / "DET" / "val")
  code = trainer_cli.propose_main(["--job_dir", untrained_job, "--input", str(tmp_path),
                                   "--output", str(tmp_path / "out")])
  assert code == 2
  assert "--split DET/val: no image files" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()
