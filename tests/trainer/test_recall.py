"""Tests of trainer/evaluate.py: recall with one-to-one matching, tables, frames.

The end-to-end run of rpn-evaluate on rpn-propose's output is in test_propose.py.
"""
import json

import numpy as np
import pytest

from pipeline import ilsvrc
from trainer import evaluate

GT = np.array([[0.0, 0.0, 100.0, 100.0]])


def _iou_loop(a, b):
  """IoU of two boxes, written out (continuous pixels, no +1)."""
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def _match_loop(proposals, gt_boxes):
  """py-faster-rcnn's evaluate_recall matching as plain Python loops."""
  taken_p, taken_g, matched = set(), set(), []
  for _ in range(min(len(proposals), len(gt_boxes))):
    best = (-1.0, None, None)
    for g in range(len(gt_boxes)):  # the best-covered gt: first max over gts ...
      if g in taken_g:
        continue
      cover = (-1.0, None)
      for p in range(len(proposals)):  # ... of each gt's best proposal (first max)
        if p not in taken_p:
          iou = _iou_loop(proposals[p], gt_boxes[g])
          if iou > cover[0]:
            cover = (iou, p)
      if cover[0] > best[0]:
        best = (cover[0], g, cover[1])
    matched.append(best[0])
    taken_g.add(best[1])
    taken_p.add(best[2])
  return sorted(matched + [0.0] * (len(gt_boxes) - len(matched)))


def test_thresholds_are_exact():
  # 0.5:0.05:0.95 -> 10 thresholds; rounding makes 0.7 exactly 0.7.
  assert len(evaluate.IOU_THRESHOLDS) == 10
  assert evaluate.IOU_THRESHOLDS[0] == 0.5 and evaluate.IOU_THRESHOLDS[4] == 0.7
  assert evaluate.IOU_THRESHOLDS[-1] == 0.95


def test_one_gt_two_proposals():
  # gt 100x100; A = 100x62 inside it: IoU 6200 / 10000 = 0.62; B = 100x83: IoU 0.83.
  # A scores higher (listed first).
  proposals = np.array([[0, 0, 100, 62], [0, 0, 100, 83]], np.float64)
  top2 = evaluate.evaluate_recall([proposals], [GT], top_n=2)
  # The gt's best proposal is B (0.83): covered at 0.5 and at 0.7.
  assert top2["recall@0.5"] == 1.0 and top2["recall@0.7"] == 1.0
  # AR: 0.83 >= 0.5, 0.55, ..., 0.8 (7 of 10 thresholds) -> 0.7.
  assert top2["ar"] == pytest.approx(0.7)
  assert top2["recalls"] == [1.0] * 7 + [0.0] * 3
  top1 = evaluate.evaluate_recall([proposals], [GT], top_n=1)
  # Only A (0.62): covered at 0.5 but not at 0.7; AR = 3/10 (0.5, 0.55, 0.6).
  assert top1["recall@0.5"] == 1.0 and top1["recall@0.7"] == 0.0
  assert top1["ar"] == pytest.approx(0.3)
  assert top1["num_gt"] == 1 and top1["num_images"] == 1 and top1["mean_proposals"] == 1.0


def test_two_gts_compete_for_one_proposal():
  # G1 = 100x100, G2 = 100x90 (inside G1); one proposal P = 100x96:
  # IoU(P, G1) = 9600 / 10000 = 0.96, IoU(P, G2) = 9000 / 9600 = 0.9375.
  # Both are covered at 0.5 by P, but P is matched once: to G1 (the better
  # covered); G2 is left with 0 -> recall 1/2 at every threshold up to 0.95.
  gts = np.array([[0, 0, 100, 100], [0, 0, 100, 90]], np.float64)
  proposals = np.array([[0, 0, 100, 96]], np.float64)
  r = evaluate.evaluate_recall([proposals], [gts], top_n=10)
  assert r["recall@0.5"] == 0.5 and r["recall@0.7"] == 0.5
  assert r["recalls"] == [0.5] * 10  # 0.96 >= 0.95: G1 counts at every threshold
  assert r["ar"] == pytest.approx(0.5)
  assert sorted(evaluate.match_gt_overlaps(proposals, gts)) == pytest.approx([0.0, 0.96])
  # A second proposal equal to G2 gives each gt its own: recall 1.
  proposals2 = np.vstack([proposals, [[0, 0, 100, 90]]])
  assert evaluate.evaluate_recall([proposals2], [gts], 10)["recall@0.7"] == 1.0


def test_greedy_matching_against_loop():
  rng = np.random.default_rng(3)
  for _ in range(30):
    num_p, num_g = int(rng.integers(0, 12)), int(rng.integers(1, 6))
    xy = rng.uniform(0, 80, (num_p + num_g, 2))
    wh = rng.uniform(5, 60, (num_p + num_g, 2))
    b = np.hstack([xy, xy + wh])
    proposals, gts = b[:num_p], b[num_p:]
    got = sorted(evaluate.match_gt_overlaps(proposals, gts))
    assert got == pytest.approx(_match_loop(proposals, gts), abs=1e-12)


def test_images_without_gt_contribute_nothing():
  proposals = np.array([[0, 0, 100, 83]], np.float64)
  many = np.tile([[0, 0, 50, 50]], (40, 1)).astype(np.float64)
  r = evaluate.evaluate_recall([proposals, many], [GT, np.zeros((0, 4))], top_n=100)
  # Only the first image counts: 1 gt, covered at 0.83.
  assert r["num_images"] == 1 and r["num_gt"] == 1 and r["recall@0.7"] == 1.0
  assert r["mean_proposals"] == 1.0


def test_gt_without_proposals_counts_as_missed():
  # Image 1: gt covered at 0.83; image 2: a gt and no proposal at all -> 1 of 2.
  r = evaluate.evaluate_recall([np.array([[0, 0, 100, 83.0]]), np.zeros((0, 4))],
                               [GT, GT], top_n=10)
  assert r["num_gt"] == 2 and r["num_images"] == 2 and r["recall@0.5"] == 0.5


def test_no_gt_at_all_gives_none():
  r = evaluate.evaluate_recall([np.zeros((3, 4))], [np.zeros((0, 4))], top_n=10)
  assert r["num_gt"] == 0 and r["recall@0.5"] is None and r["ar"] is None
  json.dumps(r)  # None is valid JSON, NaN would not be


def test_length_mismatch_is_an_error():
  with pytest.raises(ValueError, match="1 proposal arrays but 2 gt arrays"):
    evaluate.evaluate_recall([GT], [GT, GT], 10)


def _result(r50, r70, ar, top_ns=(10, 100)):
  return {"num_gt": 5, "num_images_with_gt": 2, "results": {
      str(n): {"top_n": n, "num_gt": 5, "num_images": 2, "mean_proposals": float(n),
               "recall@0.5": r50, "recall@0.7": r70, "ar": ar} for n in top_ns}}


def test_format_comparison():
  table = evaluate.format_comparison({
      "untrained RPN": _result(0.2, 0.1, 0.05),
      "trained RPN": _result(0.8, 0.6, 0.5, top_ns=(10, 100, 300)),
  })
  lines = table.splitlines()
  assert "untrained RPN" in lines[0] and "trained RPN" in lines[0]
  assert lines[1].split() == ["top", "N"] + ["R@0.5", "R@0.7", "AR"] * 2
  rows = {line.split()[0]: line.split()[1:] for line in lines[2:5]}
  assert rows["10"] == ["0.200", "0.100", "0.050", "0.800", "0.600", "0.500"]
  assert rows["300"] == ["-", "-", "-", "0.800", "0.600", "0.500"]  # untrained has no 300
  assert "5 gt boxes in 2 images" in lines[-1]
  # Columns line up: every row as long as the header.
  assert len({len(line) for line in lines[1:5]}) == 1


def test_format_table_shows_none_as_dash():
  table = evaluate.format_table(_result(None, None, None, top_ns=(10,)))
  assert table.splitlines()[1].split() == ["10", "10.0", "-", "-", "-"]


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
