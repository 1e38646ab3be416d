"""Tests of trainer/evaluate.py (rpn-evaluate): gt boxes brought into each
proposals.jsonl frame, the files it writes, and its errors.

The recall numbers themselves are tested in tests/trainer/test_recall.py; the
end-to-end test runs rpn-evaluate on the output of rpn-propose's end-to-end
run (the `proposals` fixture of tests/conftest.py).
"""
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from pipeline.io import ilsvrc
from tests import dataset_fixtures as fx
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
  (tmp_path / "empty").mkdir()
  code = evaluate.main(["--proposals", str(tmp_path / "empty"), "--input", str(tmp_path)])
  assert code == 2
  assert "has no proposals (proposals-*-of-*.jsonl or proposals.jsonl)" in capsys.readouterr().err


def test_evaluate_end_to_end(proposals, val_dataset, tmp_path, capsys):
  out = str(tmp_path / "eval")
  assert evaluate.main(["--proposals", proposals, "--input", val_dataset, "--split", "DET/val",
                        "--output", out]) == 0
  printed = capsys.readouterr().out
  # 4 images proposed for + d_0005, which is not an image (errors.jsonl) and has no XML.
  assert "3 gt boxes in 2 of 5 images" in printed and "R@0.7" in printed
  assert "1 image could not be read or proposed for" in printed
  assert "their 0 gt boxes count as misses" in printed
  with open(os.path.join(out, "recall.json")) as f:
    result = json.load(f)
  assert result["num_gt"] == 3 and result["num_images_with_gt"] == 2
  assert result["num_images"] == 5 and result["num_images_proposed"] == 4
  assert result["num_images_unreadable"] == 1 and result["num_gt_unreadable"] == 0
  assert result["counts"]["images_without_annotation"] == 1  # c_0004
  assert result["counts"]["images_unreadable_without_annotation"] == 1  # d_0005
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
    assert plot.format == "PNG" and plot.mode in ("RGB", "RGBA")
    assert plot.size[0] > 300 and plot.size[1] > 200
  # The XML boxes evaluated are those rpn-propose recorded in the frame.
  lines = helpers.read_proposals(proposals)
  gt, _, _, _ = evaluate.load_gt(lines, os.path.join(val_dataset, "Annotations", "DET", "val"))
  for line, boxes in zip(lines, gt, strict=True):
    np.testing.assert_allclose(boxes.reshape(-1, 4),
                               np.asarray(line.get("gt_boxes", [])).reshape(-1, 4))
  # And the comparison table takes two such results.
  table = recall.format_comparison({"untrained": result, "again": result})
  assert len(table.splitlines()) == 2 + 4 + 1


# ---------------------------------------------------------------------------
# Images rpn-propose could not read: their gt boxes stay in the denominator


def _write_xml(root, image_id, width, height, boxes):
  path = os.path.join(root, "Annotations", "DET", "val", image_id + ".xml")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(fx.det_xml(image_id, width, height, boxes))


def _write_jsonl(path, records):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)


def _one_good_one_unreadable(tmp_path, error_record):
  """A dataset and a proposals dir: "good" (1 gt, one proposal at IoU 0.83) is in
  proposals.jsonl; "bad" (2 gt boxes in its XML) is in errors.jsonl."""
  root, proposals = str(tmp_path / "ilsvrc"), str(tmp_path / "proposals")
  _write_xml(root, "good", 100, 100, [(0, 0, 99, 99)])  # gt 0, 0, 100, 100
  # Two boxes, and a third entirely outside the XML <size>: dropped, as for
  # readable images.
  _write_xml(root, "bad", 100, 100, [(10, 10, 49, 49), (50, 50, 89, 89), (150, 150, 160, 160)])
  _write_jsonl(os.path.join(proposals, "proposals.jsonl"), [{
      "image_id": "good", "width": 100, "height": 100, "boxes": [[0, 0, 100, 83]],
      "scores": [0.9], "image_width": 100, "image_height": 100, "box_scale": [1.0, 1.0]}])
  if error_record is not None:
    error_record = dict(error_record, path=os.path.join(root, error_record["path"]))
    _write_jsonl(os.path.join(proposals, "errors.jsonl"), [error_record])
  return root, proposals


def test_unreadable_images_count_their_gt_as_missed(tmp_path, capsys):
  root, proposals = _one_good_one_unreadable(tmp_path, {
      "image_id": "bad", "path": "Data/DET/val/bad.JPEG", "stage": "decode",
      "reason": "cannot identify image file"})
  out = str(tmp_path / "eval")
  assert evaluate.main(["--proposals", proposals, "--input", root, "--output", out]) == 0
  printed = capsys.readouterr().out
  assert "3 gt boxes in 2 of 2 images" in printed
  assert (f"1 image could not be read or proposed for (see {proposals}/errors.jsonl); "
          f"their 2 gt boxes count as misses") in printed
  with open(os.path.join(out, "recall.json")) as f:
    result = json.load(f)
  assert result["num_images_unreadable"] == 1 and result["num_gt_unreadable"] == 2
  assert result["num_gt"] == 3 and result["num_images"] == 2
  assert result["num_images_proposed"] == 1 and result["num_images_with_gt"] == 2
  assert result["errors_file"] == f"{proposals}/errors.jsonl"
  for r in result["results"].values():
    # 1 gt found at IoU 0.83 of 1 + 2: recall 1/3 up to 0.8, 0 above; AR 7/30.
    assert r["num_gt"] == 3 and r["missed_gt"] == 2 and r["num_images"] == 2
    assert r["recall@0.5"] == pytest.approx(1 / 3) and r["recall@0.7"] == pytest.approx(1 / 3)
    assert r["recalls"] == pytest.approx([1 / 3] * 7 + [0.0] * 3)
    assert r["ar"] == pytest.approx(7 / 30)
    assert r["mean_proposals"] == 1.0  # over the images of proposals.jsonl
    # By size: "good" (100x100, large) found at 0.83; the 2 boxes of "bad" (40x40,
    # medium) missed; no small box.
    assert r["by_size"]["large"] == {"num_gt": 1, "recall@0.5": 1.0, "recall@0.7": 1.0,
                                     "ar": pytest.approx(0.7)}
    assert r["by_size"]["medium"] == {"num_gt": 2, "recall@0.5": 0.0, "recall@0.7": 0.0,
                                      "ar": 0.0}
    assert r["by_size"]["small"] == {"num_gt": 0, "recall@0.5": None, "recall@0.7": None,
                                     "ar": None}
  assert result["area_ranges"] == {"small": [0.0, 1024.0], "medium": [1024.0, 9216.0],
                                   "large": [9216.0, None]}
  table = recall.format_table(result)
  assert table.splitlines()[0].split()[-3:] == ["AR_S", "AR_M", "AR_L"]
  assert table.splitlines()[1].split() == ["10", "1.0", "0.333", "0.333", "0.233", "-",
                                           "0.000", "0.700"]
  assert "0 small, 2 medium, 1 large" in table.splitlines()[-1]
  with Image.open(os.path.join(out, "recall.png")) as plot:
    assert plot.mode in ("RGB", "RGBA") and plot.size[0] > 0


def test_unreadable_image_named_by_path_only(tmp_path):
  # An older errors.jsonl without image_id: the id comes from the path; an
  # image failing at rpn-propose's "propose" stage counts the same.
  root, proposals = _one_good_one_unreadable(tmp_path, {
      "path": "Data/DET/val/bad.JPEG", "stage": "propose", "reason": "no proposals"})
  result = evaluate.run(["--proposals", proposals, "--input", root])
  assert result["num_images_unreadable"] == 1 and result["num_gt_unreadable"] == 2
  assert result["results"]["10"]["recall@0.5"] == pytest.approx(1 / 3)
  assert os.path.exists(os.path.join(proposals, "recall.png"))


def test_without_errors_file_recall_covers_proposals_only(tmp_path, caplog):
  root, proposals = _one_good_one_unreadable(tmp_path, None)
  with caplog.at_level(logging.WARNING, logger="trainer.evaluate"):
    result = evaluate.run(["--proposals", proposals, "--input", root])
  assert "errors.jsonl not found" in caplog.text
  assert result["num_images_unreadable"] == 0 and result["errors_file"] is None
  assert result["num_gt"] == 1 and result["results"]["10"]["recall@0.5"] == 1.0


def test_sizes_are_measured_in_the_original_image(tmp_path):
  # A 50x50 image proposed for at twice its size (frame 100x100, box_scale 2):
  # its 20x20 box is 40x40 in the frame, but small (area 400 < 32²) in the image.
  root, proposals = str(tmp_path / "ilsvrc"), str(tmp_path / "proposals")
  _write_xml(root, "img", 50, 50, [(0, 0, 19, 19)])
  _write_jsonl(os.path.join(proposals, "proposals.jsonl"), [{
      "image_id": "img", "width": 100, "height": 100, "boxes": [[0, 0, 40, 40]],
      "scores": [0.9], "image_width": 50, "image_height": 50, "box_scale": [2.0, 2.0]}])
  _write_jsonl(os.path.join(proposals, "errors.jsonl"), [])
  by_size = evaluate.run(["--proposals", proposals, "--input", root])["results"]["10"]["by_size"]
  assert by_size["small"]["num_gt"] == 1 and by_size["small"]["recall@0.7"] == 1.0
  assert by_size["medium"]["num_gt"] == 0 and by_size["large"]["num_gt"] == 0
  frame_boxes = np.array([[0, 0, 40, 40]], np.float64)
  line = {"image_width": 50, "image_height": 50, "box_scale": [2.0, 2.0]}
  np.testing.assert_allclose(evaluate.original_areas(frame_boxes, line), [400.0])
  # A line without the image's size was not resized: the frame's area.
  np.testing.assert_allclose(evaluate.original_areas(frame_boxes, {}), [1600.0])


def test_xml_gt_boxes_without_size():
  # No <size>: only boxes that cannot be in any image are dropped.
  annotation = ilsvrc.Annotation(None, None, np.array(
      [[0, 0, 10, 10], [5, 5, 2, 8], [-9, -9, -1, -1], [500, 500, 900, 900]], np.float64),
      ["n1"] * 4)
  np.testing.assert_allclose(evaluate.xml_gt_boxes(annotation),
                             [[0, 0, 10, 10], [500, 500, 900, 900]])
