"""Tests of trainer/recall.py: recall with one-to-one matching, and its tables.

The command line (rpn-evaluate) is tested in tests/trainer/test_evaluate.py.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

from tests import reference
from trainer import recall

GT = np.array([[0.0, 0.0, 100.0, 100.0]])


def test_thresholds_are_exact():
  # 0.5:0.05:0.95 -> 10 thresholds; rounding makes 0.7 exactly 0.7.
  assert len(recall.IOU_THRESHOLDS) == 10
  assert recall.IOU_THRESHOLDS[0] == 0.5 and recall.IOU_THRESHOLDS[4] == 0.7
  assert recall.IOU_THRESHOLDS[-1] == 0.95


def test_one_gt_two_proposals():
  # gt 100x100; A = 100x62 inside it: IoU 6200 / 10000 = 0.62; B = 100x83: IoU 0.83.
  # A scores higher (listed first).
  proposals = np.array([[0, 0, 100, 62], [0, 0, 100, 83]], np.float64)
  top2 = recall.evaluate_recall([proposals], [GT], top_n=2)
  # The gt's best proposal is B (0.83): covered at 0.5 and at 0.7.
  assert top2["recall@0.5"] == 1.0 and top2["recall@0.7"] == 1.0
  # AR: 0.83 >= 0.5, 0.55, ..., 0.8 (7 of 10 thresholds) -> 0.7.
  assert top2["ar"] == pytest.approx(0.7)
  assert top2["recalls"] == [1.0] * 7 + [0.0] * 3
  top1 = recall.evaluate_recall([proposals], [GT], top_n=1)
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
  r = recall.evaluate_recall([proposals], [gts], top_n=10)
  assert r["recall@0.5"] == 0.5 and r["recall@0.7"] == 0.5
  assert r["recalls"] == [0.5] * 10  # 0.96 >= 0.95: G1 counts at every threshold
  assert r["ar"] == pytest.approx(0.5)
  assert sorted(recall.match_gt_overlaps(proposals, gts)) == pytest.approx([0.0, 0.96])
  # A second proposal equal to G2 gives each gt its own: recall 1.
  proposals2 = np.vstack([proposals, [[0, 0, 100, 90]]])
  assert recall.evaluate_recall([proposals2], [gts], 10)["recall@0.7"] == 1.0


def test_greedy_matching_against_loop():
  rng = np.random.default_rng(3)
  for _ in range(30):
    num_p, num_g = int(rng.integers(0, 12)), int(rng.integers(1, 6))
    xy = rng.uniform(0, 80, (num_p + num_g, 2))
    wh = rng.uniform(5, 60, (num_p + num_g, 2))
    b = np.hstack([xy, xy + wh])
    proposals, gts = b[:num_p], b[num_p:]
    got = sorted(recall.match_gt_overlaps(proposals, gts))
    assert got == pytest.approx(reference.match_gt_overlaps(proposals, gts), abs=1e-12)


def test_images_without_gt_contribute_nothing():
  proposals = np.array([[0, 0, 100, 83]], np.float64)
  many = np.tile([[0, 0, 50, 50]], (40, 1)).astype(np.float64)
  r = recall.evaluate_recall([proposals, many], [GT, np.zeros((0, 4))], top_n=100)
  # Only the first image counts: 1 gt, covered at 0.83.
  assert r["num_images"] == 1 and r["num_gt"] == 1 and r["recall@0.7"] == 1.0
  assert r["mean_proposals"] == 1.0


def test_gt_without_proposals_counts_as_missed():
  # Image 1: gt covered at 0.83; image 2: a gt and no proposal at all -> 1 of 2.
  r = recall.evaluate_recall([np.array([[0, 0, 100, 83.0]]), np.zeros((0, 4))],
                               [GT, GT], top_n=10)
  assert r["num_gt"] == 2 and r["num_images"] == 2 and r["recall@0.5"] == 0.5


def test_no_gt_at_all_gives_none():
  r = recall.evaluate_recall([np.zeros((3, 4))], [np.zeros((0, 4))], top_n=10)
  assert r["num_gt"] == 0 and r["recall@0.5"] is None and r["ar"] is None
  json.dumps(r)  # None is valid JSON, NaN would not be


def test_length_mismatch_is_an_error():
  with pytest.raises(ValueError, match="1 proposal arrays but 2 gt arrays"):
    recall.evaluate_recall([GT], [GT, GT], 10)


def _result(r50, r70, ar, top_ns=(10, 100)):
  return {"num_gt": 5, "num_images_with_gt": 2, "results": {
      str(n): {"top_n": n, "num_gt": 5, "num_images": 2, "mean_proposals": float(n),
               "recall@0.5": r50, "recall@0.7": r70, "ar": ar} for n in top_ns}}


def test_format_comparison():
  table = recall.format_comparison({
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
  table = recall.format_table(_result(None, None, None, top_ns=(10,)))
  assert table.splitlines()[1].split() == ["10", "10.0", "-", "-", "-"]


def test_importing_recall_leaves_beam_and_tf_out():
  # Numeric code apart from glue: recall.py needs numpy only.
  code = ("import sys; import trainer.recall;"
          "print('apache_beam' in sys.modules, 'tensorflow' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.split() == ["False", "False"]


def test_evaluate_over_proposal_lines_keys_by_top_n():
  # Two proposals.jsonl lines (boxes best first): the same as evaluate_recall per top N.
  lines = [{"boxes": [[0, 0, 100, 62], [0, 0, 100, 83]]}, {"boxes": []}]
  gts = [GT, GT]
  results = recall.evaluate(lines, gts, top_ns=(1, 2))
  assert list(results) == ["1", "2"]
  assert results["1"]["recall@0.7"] == 0.0 and results["2"]["recall@0.7"] == 0.5
  for n in (1, 2):
    assert results[str(n)] == recall.evaluate_recall(
        [np.asarray(lines[0]["boxes"], np.float64), np.zeros((0, 4))], gts, n)
  assert list(recall.evaluate(lines, gts)) == [str(n) for n in recall.TOP_NS]  # the default


def test_missed_gt_count_as_misses_at_every_threshold():
  # One image: its gt covered at 0.83 (7 of 10 thresholds). Plus 3 gt boxes of
  # images that have no proposals at all (unreadable), in 2 images.
  proposals = [np.array([[0, 0, 100, 83.0]])]
  r = recall.evaluate_recall(proposals, [GT], top_n=10, missed_gt=3, missed_images=2)
  assert r["num_gt"] == 4 and r["missed_gt"] == 3 and r["num_images"] == 3
  assert r["recall@0.5"] == 0.25 and r["recall@0.7"] == 0.25
  assert r["recalls"] == [0.25] * 7 + [0.0] * 3
  assert r["ar"] == pytest.approx(0.7 / 4)
  assert r["mean_proposals"] == 1.0  # over the images that have proposals only
  # Without it: the same image alone.
  alone = recall.evaluate_recall(proposals, [GT], top_n=10)
  assert alone["num_gt"] == 1 and alone["missed_gt"] == 0 and alone["recall@0.5"] == 1.0
  # Only missed gt boxes: recall 0, not None.
  r = recall.evaluate_recall([], [], top_n=10, missed_gt=2, missed_images=1)
  assert r["num_gt"] == 2 and r["recall@0.5"] == 0.0 and r["ar"] == 0.0
  assert r["mean_proposals"] == 0.0
  with pytest.raises(ValueError, match="missed_gt"):
    recall.evaluate_recall(proposals, [GT], 10, missed_gt=-1)
  # evaluate() passes them on to every top N; the tables keep working.
  results = recall.evaluate([{"boxes": [[0, 0, 100, 83]]}], [GT], top_ns=(1, 10), missed_gt=3,
                            missed_images=2)
  assert all(v["num_gt"] == 4 and v["recall@0.7"] == 0.25 for v in results.values())
  assert recall.format_table({"results": results}).splitlines()[1].split() == [
      "1", "1.0", "0.250", "0.250", "0.175"]
  assert "4 gt boxes in 3 images" in recall.format_comparison({"a": {"results": results}})


def test_area_ranges_are_cocos():
  masks = recall.size_masks(np.array([0.0, 1023.9, 1024.0, 9215.9, 9216.0, 1e9]))
  assert masks["small"].tolist() == [True, True, False, False, False, False]
  assert masks["medium"].tolist() == [False, False, True, True, False, False]
  assert masks["large"].tolist() == [False, False, False, False, True, True]


def test_by_size_matches_among_boxes_of_one_size():
  # The two gts of test_two_gts_compete_for_one_proposal: G1 100x100 (large),
  # G2 100x90 (area 9000: medium); one proposal P, IoU 0.96 with G1 and 0.9375
  # with G2. Overall P goes to G1 and G2 is missed; by size (detectron2's
  # _evaluate_box_proposals filters the gt boxes before matching) each size
  # has P to itself: both found.
  gts = np.array([[0, 0, 100, 100], [0, 0, 100, 90]], np.float64)
  proposals = [np.array([[0, 0, 100, 96]], np.float64)]
  areas = [np.array([10000.0, 9000.0])]
  overall = recall.evaluate_recall(proposals, [gts], top_n=10)
  by_size = recall.evaluate_by_size(proposals, [gts], areas, top_n=10)
  assert overall["recall@0.5"] == 0.5
  assert by_size["large"] == {"num_gt": 1, "recall@0.5": 1.0, "recall@0.7": 1.0, "ar": 1.0}
  assert by_size["medium"]["num_gt"] == 1 and by_size["medium"]["recall@0.7"] == 1.0
  assert by_size["medium"]["ar"] == pytest.approx(0.9)  # 0.9375 < 0.95 only
  assert by_size["small"] == {"num_gt": 0, "recall@0.5": None, "recall@0.7": None, "ar": None}
  # The areas decide the size, not the boxes (areas come from the original image).
  swapped = recall.evaluate_by_size(proposals, [gts], [np.array([100.0, 100.0])], top_n=10)
  assert swapped["small"]["num_gt"] == 2 and swapped["small"]["recall@0.5"] == 0.5


def test_by_size_counts_missed_boxes_in_their_size():
  proposals = [np.array([[0, 0, 100, 100.0]])]
  results = recall.evaluate(
      [{"boxes": proposals[0].tolist()}], [GT], top_ns=(10,), missed_gt=2, missed_images=1,
      areas_per_image=[np.array([10000.0])], missed_areas=[100.0, 20000.0])
  by_size = results["10"]["by_size"]
  assert by_size["small"] == {"num_gt": 1, "recall@0.5": 0.0, "recall@0.7": 0.0, "ar": 0.0}
  assert by_size["large"]["num_gt"] == 2 and by_size["large"]["recall@0.5"] == 0.5
  assert by_size["medium"]["num_gt"] == 0
  # The sizes add up to the whole.
  assert sum(s["num_gt"] for s in by_size.values()) == results["10"]["num_gt"] == 3
  with pytest.raises(ValueError, match="1 missed areas for 2 missed gt"):
    recall.evaluate([{"boxes": []}], [GT], top_ns=(10,), missed_gt=2,
                    areas_per_image=[np.array([1.0])], missed_areas=[1.0])
  with pytest.raises(ValueError, match="0 area arrays but 1 gt arrays"):
    recall.evaluate_by_size(proposals, [GT], [], top_n=10)


def test_format_table_with_sizes():
  result = _result(0.8, 0.6, 0.5, top_ns=(100, 300))
  for r in result["results"].values():
    r["by_size"] = {"small": {"num_gt": 2, "ar": 0.1}, "medium": {"num_gt": 2, "ar": None},
                    "large": {"num_gt": 1, "ar": 0.9}}
  lines = recall.format_table(result).splitlines()
  assert lines[0].split() == ["top", "N", "props/img", "R@0.5", "R@0.7", "AR", "AR_S", "AR_M",
                              "AR_L"]
  assert lines[2].split() == ["300", "300.0", "0.800", "0.600", "0.500", "0.100", "-", "0.900"]
  assert lines[-1].startswith("(gt boxes by size") and "2 small, 2 medium, 1 large" in lines[-1]
  # Older results without sizes keep the short table.
  assert "AR_S" not in recall.format_table(_result(0.8, 0.6, 0.5))
