"""Tests of trainer/evaluate.py (rpn-evaluate): gt boxes brought into each
proposals.jsonl frame, the files it writes, and its errors.

The recall numbers themselves are tested in tests/trainer/test_recall.py; the
end-to-end test runs rpn-evaluate on the output of rpn-propose's end-to-end
run (the `proposals` fixture of tests/conftest.py).
"""
import json
import os

import numpy as np
from PIL import Image

from pipeline import ilsvrc
from tests import pipeline_helpers as helpers
from trainer import evaluate, recall


def _annotation(width, height, boxes):
  return ilsvrc.Annotation(width, height, np.asarray(boxes, np.float64).reshape(-1, 4), ["n1"])


def test_frame_gt_boxes_padding_keeps_coordinates():
  # A 40x24 image padded to 40x32: the frame is bigger, boxes do not move.
  annotation = _annotation(40, 24, [[2, 3, 30, 20]])
  line = {"width": 40, "height": 32, "image_width": 40, "image_height": 24,
          "box_scale": [1.0, 1.0]}
  np.testing.assert_allclose(evaluate.frame_gt_boxes(annotation, line), [[2, 3, 30, 20]])
  # Without the image_* keys: the XML size fits in the frame -> the same answer
  # (reconciling to the padded frame would have stretched y by 32/24).
  line = {"width": 40, "height": 32}
  np.testing.assert_allclose(evaluate.frame_gt_boxes(annotation, line), [[2, 3, 30, 20]])


def test_frame_gt_boxes_resize_and_size_mismatch():
  # XML says 200x100, the decoded image is 100x50 (boxes halve), then the
  # pipeline resized it by 1.5 (box_scale) -> x 0.75 in all.
  annotation = _annotation(200, 100, [[40, 20, 120, 80]])
  line = {"width": 150, "height": 75, "image_width": 100, "image_height": 50,
          "box_scale": [1.5, 1.5]}
  np.testing.assert_allclose(evaluate.frame_gt_boxes(annotation, line), [[30, 15, 90, 60]])


def test_run_missing_proposals_names_the_file(tmp_path, capsys):
  code = evaluate.main(["--proposals", str(tmp_path / "nothing"), "--input", str(tmp_path)])
  assert code == 2
  assert "proposals.jsonl" in capsys.readouterr().err


def test_evaluate_end_to_end(proposals, val_dataset, tmp_path, capsys):
  out = str(tmp_path / "eval")
  assert evaluate.main(["--proposals", proposals, "--input", val_dataset, "--split", "DET/val",
                        "--output", out]) == 0
  printed = capsys.readouterr().out
  assert "3 gt boxes in 2 of 4 images" in printed and "R@0.7" in printed
  with open(os.path.join(out, "recall.json")) as f:
    result = json.load(f)
  assert result["num_gt"] == 3 and result["num_images_with_gt"] == 2
  assert result["counts"]["images_without_annotation"] == 1  # c_0004
  assert sorted(result["results"], key=int) == ["10", "100", "300", "1000"]
  for key, r in result["results"].items():
    assert r["num_gt"] == 3 and r["num_images"] == 2
    assert len(r["recalls"]) == 10 and 0 <= r["ar"] <= 1
    assert r["mean_proposals"] <= min(int(key), 50)
    assert r["recalls"][0] == r["recall@0.5"] and r["recalls"][4] == r["recall@0.7"]
  # Recall does not drop with more proposals.
  ars = [result["results"][k]["ar"] for k in ("10", "100", "300", "1000")]
  assert ars == sorted(ars)
  with Image.open(os.path.join(out, "recall.png")) as plot:
    assert plot.size[0] > 300 and plot.size[1] > 200
  # The XML boxes evaluated are those rpn-propose recorded in the frame.
  lines = helpers.read_jsonl(os.path.join(proposals, "proposals.jsonl"))
  gt, _, _ = evaluate.load_gt(lines, os.path.join(val_dataset, "Annotations", "DET", "val"))
  for line, boxes in zip(lines, gt, strict=True):
    np.testing.assert_allclose(boxes.reshape(-1, 4),
                               np.asarray(line.get("gt_boxes", [])).reshape(-1, 4))
  # And the comparison table takes two such results.
  table = recall.format_comparison({"untrained": result, "again": result})
  assert len(table.splitlines()) == 2 + 4 + 1
