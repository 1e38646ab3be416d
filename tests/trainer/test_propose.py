"""Tests of trainer/propose.py (and rpn-evaluate end to end on its output).

Box post-processing is checked against plain loops; the end-to-end test runs
rpn-propose with an untrained RPN over a MobileNetV2 backbone (random weights)
on a few generated ILSVRC-layout images, then rpn-evaluate on its output.
"""
import json
import math
import os

import numpy as np
import pytest

from tests import dataset_fixtures as fx
from trainer import propose

MAX_LOG_SCALE = math.log(1000.0 / 16)


# ---------------------------------------------------------------------------
# Reference post-processing, written out with loops


def _decode_loop(anchor, delta):
  ax1, ay1, ax2, ay2 = anchor
  aw, ah = ax2 - ax1, ay2 - ay1
  cx, cy = ax1 + 0.5 * aw + delta[0] * aw, ay1 + 0.5 * ah + delta[1] * ah
  w = aw * math.exp(min(delta[2], MAX_LOG_SCALE))
  h = ah * math.exp(min(delta[3], MAX_LOG_SCALE))
  return [cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h]


def _iou(a, b):
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def _propose_loop(scores, deltas, anchors, width, height, pre, post, thresh, min_size):
  candidates = []
  for score, delta, anchor in zip(scores, deltas, anchors):
    x1, y1, x2, y2 = _decode_loop(anchor, delta)
    box = [min(max(x1, 0.0), width), min(max(y1, 0.0), height),
           min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
    if box[2] - box[0] >= min_size and box[3] - box[1] >= min_size:
      candidates.append((score, box))
  candidates.sort(key=lambda c: -c[0])  # stable: ties keep anchor order
  candidates = candidates[:pre]
  kept = []
  for score, box in candidates:
    if all(_iou(box, other) <= thresh for _, other in kept):
      kept.append((score, box))
  kept = kept[:post]
  return (np.array([b for _, b in kept]).reshape(-1, 4), np.array([s for s, _ in kept]))


def _random_case(rng, k=400, width=320.0, height=240.0):
  xy = rng.uniform(-40, 300, (k, 2))
  wh = rng.uniform(8, 160, (k, 2))
  anchors = np.hstack([xy, xy + wh])
  deltas = rng.normal(0, 0.3, (k, 4))
  scores = rng.uniform(0, 1, k)
  return scores, deltas, anchors, width, height


# ---------------------------------------------------------------------------
# propose_boxes


@pytest.mark.parametrize("seed,pre,post,thresh,min_size", [
    (0, 6000, 300, 0.7, 16.0),
    (1, 100, 20, 0.5, 8.0),
    (2, 50, 300, 0.3, 0.0),
    (3, 0, 0, 0.9, 24.0),  # 0: no top-N limit
])
def test_propose_boxes_matches_plain_loop(seed, pre, post, thresh, min_size):
  scores, deltas, anchors, width, height = _random_case(np.random.default_rng(seed))
  boxes, kept_scores = propose.propose_boxes(scores, deltas, anchors, width, height,
                                             pre, post, thresh, min_size)
  want_boxes, want_scores = _propose_loop(scores, deltas, anchors, width, height,
                                          pre or len(scores), post or len(scores),
                                          thresh, min_size)
  assert len(boxes) == len(want_boxes) > 0
  np.testing.assert_allclose(boxes, want_boxes, rtol=0, atol=1e-9)
  np.testing.assert_array_equal(kept_scores, want_scores)


def test_kept_boxes_do_not_overlap_above_threshold():
  scores, deltas, anchors, width, height = _random_case(np.random.default_rng(5), k=600)
  boxes, kept = propose.propose_boxes(scores, deltas, anchors, width, height, 6000, 300, 0.6, 4)
  for i in range(len(boxes)):
    for j in range(i):
      assert _iou(boxes[i], boxes[j]) <= 0.6 + 1e-12


def test_clip_and_min_size():
  # Frame 100 x 80. Zero deltas: the boxes are the anchors themselves.
  anchors = np.array([
      [-20, -10, 50, 40],  # partly outside: clipped to (0, 0, 50, 40), 50 x 40, kept
      [60, 50, 130, 120],  # clipped to (60, 50, 100, 80): 40 x 30, kept
      [10, 10, 25, 60],    # 15 wide < 16: dropped
      [90, 0, 140, 70],    # clipped to (90, 0, 100, 70): 10 wide only after clipping: dropped
      [0, 0, 16, 16],      # exactly 16 x 16: kept (drop only boxes *under* min_size)
  ], np.float64)
  scores = np.array([0.9, 0.8, 0.99, 0.95, 0.1])
  boxes, kept = propose.propose_boxes(scores, np.zeros((5, 4)), anchors, 100, 80,
                                      6000, 300, 1.0, 16)
  np.testing.assert_allclose(boxes, [[0, 0, 50, 40], [60, 50, 100, 80], [0, 0, 16, 16]])
  np.testing.assert_allclose(kept, [0.9, 0.8, 0.1])
  assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= 100).all()
  assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= 80).all()


def test_top_n_ordering_and_limits():
  # Ten disjoint 20x20 boxes on a row (no NMS interaction), scores shuffled.
  anchors = np.array([[20.0 * i, 0, 20.0 * i + 20, 20] for i in range(10)])
  scores = np.array([0.3, 0.9, 0.1, 0.7, 0.5, 0.8, 0.2, 0.6, 0.4, 0.0])
  boxes, kept = propose.propose_boxes(scores, np.zeros((10, 4)), anchors, 200, 20, 6000, 300,
                                      0.7, 1)
  np.testing.assert_array_equal(kept, np.sort(scores)[::-1])  # best first
  assert boxes[0, 0] == 20.0  # 0.9 is anchor 1
  # post_nms_top_n: the best 3.
  _, kept = propose.propose_boxes(scores, np.zeros((10, 4)), anchors, 200, 20, 6000, 3, 0.7, 1)
  np.testing.assert_array_equal(kept, [0.9, 0.8, 0.7])
  # pre_nms_top_n happens before NMS: with the best 4 only, a box that NMS
  # removes is not replaced by the 5th best. Anchor 1 duplicated at 0.85
  # (IoU 1 with the 0.9 box) takes a pre-NMS slot and is then suppressed.
  anchors2 = np.vstack([anchors, anchors[1:2]])
  scores2 = np.append(scores, 0.85)
  _, kept = propose.propose_boxes(scores2, np.zeros((11, 4)), anchors2, 200, 20, 4, 300, 0.7, 1)
  np.testing.assert_array_equal(kept, [0.9, 0.8, 0.7])  # 0.9, [0.85 suppressed], 0.8, 0.7


def test_nms_threshold():
  # Two 100x100 boxes shifted by 15 px: IoU = 8500 / 11500 = 0.739.
  anchors = np.array([[0, 0, 100, 100], [15, 0, 115, 100]], np.float64)
  scores = np.array([0.6, 0.9])
  args = (scores, np.zeros((2, 4)), anchors, 200, 200, 6000, 300)
  boxes, kept = propose.propose_boxes(*args, 0.7, 16)  # 0.739 > 0.7: suppressed
  np.testing.assert_array_equal(kept, [0.9])
  np.testing.assert_allclose(boxes, [[15, 0, 115, 100]])
  _, kept = propose.propose_boxes(*args, 0.8, 16)  # 0.739 <= 0.8: both kept
  np.testing.assert_array_equal(kept, [0.9, 0.6])


def test_decode_clamps_scale():
  # Anchor 16 x 16 centred at (500, 500); dw = dh = 50 would be e^50 times
  # wider: clamped to log(1000 / 16) -> 16 * 1000 / 16 = 1000 px wide and high.
  anchors = np.array([[492.0, 492.0, 508.0, 508.0]])
  deltas = np.array([[0.0, 0.0, 50.0, 50.0]])
  boxes, _ = propose.propose_boxes([0.5], deltas, anchors, 2000, 2000, 10, 10, 0.7, 0)
  np.testing.assert_allclose(boxes, [[0, 0, 1000, 1000]])
  # A moderate delta is decoded exactly: dx = 0.5 moves the centre half a width.
  deltas = np.array([[0.5, -0.25, math.log(2.0), 0.0]])
  boxes, _ = propose.propose_boxes([0.5], deltas, anchors, 2000, 2000, 10, 10, 0.7, 0)
  # centre (500 + 8, 500 - 4), size 32 x 16.
  np.testing.assert_allclose(boxes, [[492, 488, 524, 504]])


def test_non_finite_and_empty():
  anchors = np.array([[0, 0, 50, 50], [10, 10, 60, 60]], np.float64)
  boxes, kept = propose.propose_boxes([np.nan, 0.5], np.zeros((2, 4)), anchors, 100, 100)
  np.testing.assert_array_equal(kept, [0.5])
  boxes, kept = propose.propose_boxes(np.zeros(0), np.zeros((0, 4)), np.zeros((0, 4)), 10, 10)
  assert boxes.shape == (0, 4) and kept.shape == (0,)
  with pytest.raises(ValueError, match="same number of anchors"):
    propose.propose_boxes(np.zeros(3), np.zeros((2, 4)), np.zeros((2, 4)), 10, 10)


# ---------------------------------------------------------------------------
# Small helpers


def test_picture_name_and_glob_root():
  assert propose.picture_name("ILSVRC2013_val/x_0001") == "ILSVRC2013_val__x_0001.png"
  assert propose._glob_root("/data/imgs/*.JPEG") == "/data/imgs"
  assert propose._glob_root("/data/imgs/**/a?.jpg") == "/data/imgs"
  assert propose._glob_root("gs://b/x/one.jpg") == "gs://b/x"


def test_prepare_frame_resize_and_padding():
  from trainer import evaluate
  image = np.zeros((24, 40, 3), np.uint8)
  gt = np.array([[2.0, 3.0, 30.0, 20.0]])
  # No resize: padded to 40 x 32 at the bottom; boxes unchanged, box_scale 1.
  manifest = {"min_input_side": 32, "resize": {"min_side": None, "max_side": None}}
  frame, frame_gt, box_scale = propose.prepare_frame(image, gt, manifest)
  assert frame.shape == (32, 40, 3) and box_scale == (1.0, 1.0)
  np.testing.assert_allclose(frame_gt, gt)
  # Resize so the short side is 48: 40 x 24 -> 80 x 48 (x 2).
  manifest = {"min_input_side": 32, "resize": {"min_side": 48, "max_side": None}}
  frame, frame_gt, box_scale = propose.prepare_frame(image, gt, manifest)
  assert frame.shape == (48, 80, 3) and box_scale == (2.0, 2.0)
  np.testing.assert_allclose(frame_gt, gt * 2)
  # rpn-evaluate brings the XML boxes into the same frame from the recorded line.
  from pipeline import ilsvrc
  annotation = ilsvrc.Annotation(40, 24, np.array([[2.0, 3.0, 30.0, 20.0]]), ["n1"])
  line = {"width": 80, "height": 48, "image_width": 40, "image_height": 24,
          "box_scale": list(box_scale)}
  np.testing.assert_allclose(evaluate.frame_gt_boxes(annotation, line), frame_gt)


# ---------------------------------------------------------------------------
# Job directories and the end-to-end run

BACKBONE, CHANNELS, MIN_INPUT_SIDE = "MobileNetV2", 1280, 32
HIDDEN = 32  # a small head keeps the test fast; the product's default is 512


def _manifest(**changes):
  manifest = {
      "version": 1, "created_by": "rpn-preprocess", "backbone": BACKBONE, "weights": "none",
      "weights_seed": 0, "feature_channels": CHANNELS, "tile_size": 3, "dtype": "float32",
      "anchor": {"scales": [3.0, 6.0, 12.0], "ratios": [0.5, 1.0, 2.0],
                 "order": "ratio_major", "num_anchors": 9},
      "stride_mode": "ratio", "resize": {"min_side": None, "max_side": None},
      "min_input_side": MIN_INPUT_SIDE, "max_pixels": 40_000_000,
  }
  manifest.update(changes)
  return manifest


def _random_tile_model(channels, hidden, seed):
  """An untrained head with random biases too, so that scores differ between anchors."""
  from trainer import model as model_lib
  tile_model = model_lib.build_tile_model(channels, 9, hidden)
  rng = np.random.default_rng(seed)
  for layer in tile_model.layers:
    weights = layer.get_weights()
    if weights:
      layer.set_weights([rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in weights])
  return tile_model


def _save_job(job, manifest, channels, hidden, seed=0):
  from trainer import model as model_lib
  tile_model = _random_tile_model(channels, hidden, seed)
  model_lib.save_rpn(job, tile_model, manifest, {"hidden": hidden, "epochs": 0})
  return tile_model


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory):
  job = str(tmp_path_factory.mktemp("job"))
  _save_job(job, _manifest(), CHANNELS, HIDDEN)
  return job


def test_head_layout_matches_tiles_and_anchors(tmp_path):
  # The whole-map head, reshaped to K = Hf * Wf * A rows, must give at row
  # p * A + a (p = y * Wf + x) what the tile model gives for the tile around
  # (y, x), and grid anchor a of point (y, x). TinyTestNet: real features fast.
  job = str(tmp_path / "job")
  manifest = _manifest(backbone="TinyTestNet", feature_channels=16)
  tile_model = _save_job(job, manifest, 16, 8, seed=1)
  proposer = propose.Proposer(job)
  frame = fx.random_image(np.random.default_rng(2), 100, 70)
  scores, deltas, anchors = proposer.head(frame)
  feature_map = proposer.extractor(frame)  # [Hf, Wf, C]
  feature_height, feature_width = feature_map.shape[:2]  # 70 x 100 at stride 32 -> 2 x 3
  assert (feature_height, feature_width) == (2, 3)
  assert len(scores) == len(deltas) == len(anchors) == 2 * 3 * 9
  padded = np.pad(feature_map, ((1, 1), (1, 1), (0, 0)))
  stride_x, stride_y = 100 / 3, 70 / 2
  for y in range(feature_height):
    for x in range(feature_width):
      out = tile_model(padded[np.newaxis, y:y + 3, x:x + 3])
      rows = slice((y * feature_width + x) * 9, (y * feature_width + x + 1) * 9)
      np.testing.assert_allclose(scores[rows], np.asarray(out["scores"])[0], atol=1e-5)
      np.testing.assert_allclose(deltas[rows], np.asarray(out["deltas"])[0].reshape(9, 4),
                                 atol=1e-5)
      # Anchor a = ratio_index * 3 + scale_index: a = 4 is ratio 1, scale 6,
      # a square of 6 strides centred on the point.
      cx, cy = (x + 0.5) * stride_x, (y + 0.5) * stride_y
      np.testing.assert_allclose(anchors[rows][4], [cx - 3 * stride_x, cy - 3 * stride_y,
                                                    cx + 3 * stride_x, cy + 3 * stride_y])
  assert np.ptp(scores) > 0.05  # the random head really varies


# (image id, width, height, boxes as 0-based inclusive xmin, ymin, xmax, ymax)
IMAGES = [
    ("ILSVRC2013_val/a_0001", 96, 64, [(10, 8, 60, 50), (50, 20, 90, 60)]),
    ("ILSVRC2013_val/a_0002", 40, 24, [(2, 3, 29, 19)]),  # under 32 px high: padded to 32
    ("b_0003", 72, 72, []),  # an XML without objects (a negative)
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("ilsvrc"))
  rng = np.random.default_rng(0)
  split = "DET/val"
  for image_id, width, height, boxes in IMAGES:
    fx.write_pair(root, split, image_id, fx.random_image(rng, width, height, boxes),
                  fx.det_xml(image_id, width, height, boxes))
  # An image without XML and a file that is not an image at all.
  fx.write_pair(root, split, "c_0004", fx.random_image(rng, 50, 40), None)
  fx.write_pair(root, split, "d_0005", None, None, image_bytes=b"not a jpeg")
  return root


@pytest.fixture(scope="module")
def proposals(job_dir, dataset, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("proposals"))
  code = propose.main(["--job_dir", job_dir, "--input", dataset, "--split", "DET/val",
                       "--output", out, "--post_nms_top_n", "50", "--min_size", "4",
                       "--draw", "2"])
  assert code == 0
  return out


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def test_propose_end_to_end(proposals):
  lines = {line["image_id"]: line for line in _read_jsonl(
      os.path.join(proposals, "proposals.jsonl"))}
  assert sorted(lines) == sorted([i for i, *_ in IMAGES] + ["c_0004"])
  for image_id, line in lines.items():
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
  errors = _read_jsonl(os.path.join(proposals, "errors.jsonl"))
  assert [(os.path.basename(e["path"]), e["stage"]) for e in errors] == [
      ("d_0005.JPEG", "decode")]
  pictures = sorted(os.listdir(os.path.join(proposals, "pictures")))
  assert pictures == ["ILSVRC2013_val__a_0001.png", "ILSVRC2013_val__a_0002.png"]
  with open(os.path.join(proposals, "propose.json")) as f:
    settings = json.load(f)
  assert settings["counts"] == {"images_found": 5, "images_ok": 4, "images_failed": 1,
                                "proposals": sum(len(l["boxes"]) for l in lines.values())}
  # Four image sizes, one trace of the RPN head.
  assert settings["head_traces"] == 1


def test_evaluate_end_to_end(proposals, dataset, tmp_path, capsys):
  from trainer import evaluate
  out = str(tmp_path / "eval")
  assert evaluate.main(["--proposals", proposals, "--input", dataset, "--split", "DET/val",
                        "--output", out]) == 0
  printed = capsys.readouterr().out
  assert "3 gt boxes in 2 of 4 images" in printed and "R@0.7" in printed
  with open(os.path.join(out, "recall.json")) as f:
    recall = json.load(f)
  assert recall["num_gt"] == 3 and recall["num_images_with_gt"] == 2
  assert recall["counts"]["images_without_annotation"] == 1  # c_0004
  assert sorted(recall["results"], key=int) == ["10", "100", "300", "1000"]
  for key, r in recall["results"].items():
    assert r["num_gt"] == 3 and r["num_images"] == 2
    assert len(r["recalls"]) == 10 and 0 <= r["ar"] <= 1
    assert r["mean_proposals"] <= min(int(key), 50)
    assert r["recalls"][0] == r["recall@0.5"] and r["recalls"][4] == r["recall@0.7"]
  # Recall does not drop with more proposals.
  ars = [recall["results"][k]["ar"] for k in ("10", "100", "300", "1000")]
  assert ars == sorted(ars)
  from PIL import Image
  with Image.open(os.path.join(out, "recall.png")) as plot:
    assert plot.size[0] > 300 and plot.size[1] > 200
  # The XML boxes evaluated are those rpn-propose recorded in the frame.
  lines = _read_jsonl(os.path.join(proposals, "proposals.jsonl"))
  gt, _, _ = evaluate.load_gt(lines, os.path.join(dataset, "Annotations", "DET", "val"))
  for line, boxes in zip(lines, gt):
    np.testing.assert_allclose(boxes.reshape(-1, 4),
                               np.asarray(line.get("gt_boxes", [])).reshape(-1, 4))
  # And the comparison table takes two such results.
  table = evaluate.format_comparison({"untrained": recall, "again": recall})
  assert len(table.splitlines()) == 2 + 4 + 1


def test_propose_images_glob(job_dir, dataset, tmp_path):
  # --images: ids relative to the glob's directory, no gt boxes.
  out = str(tmp_path / "out")
  pattern = os.path.join(dataset, "Data", "DET", "val", "ILSVRC2013_val", "*.JPEG")
  assert propose.main(["--job_dir", job_dir, "--images", pattern, "--output", out,
                       "--draw", "0"]) == 0
  lines = _read_jsonl(os.path.join(out, "proposals.jsonl"))
  assert [line["image_id"] for line in lines] == ["a_0001", "a_0002"]
  assert all("gt_boxes" not in line and line["boxes"] for line in lines)
  assert not os.path.exists(os.path.join(out, "pictures"))


def test_missing_weights_file_is_named(job_dir, dataset, tmp_path, capsys):
  import shutil
  broken = str(tmp_path / "job")
  shutil.copytree(job_dir, broken)
  os.remove(os.path.join(broken, "rpn.weights.h5"))
  code = propose.main(["--job_dir", broken, "--input", dataset, "--output",
                       str(tmp_path / "out")])
  assert code == 2
  err = capsys.readouterr().err
  assert "rpn.weights.h5" in err and "Traceback" not in err
  with pytest.raises(propose.JobError, match="rpn.weights.h5"):
    propose.read_job_manifest(broken)


@pytest.mark.filterwarnings("ignore:Skipping nested container")  # Keras, on the mismatch
def test_manifest_of_another_backbone_is_refused(job_dir, tmp_path):
  import shutil
  broken = str(tmp_path / "job")
  shutil.copytree(job_dir, broken)
  # A manifest saying MobileNetV2 but with InceptionResNetV2's 1536 channels.
  with open(os.path.join(broken, "manifest.json"), "w") as f:
    json.dump(_manifest(feature_channels=1536), f)
  with pytest.raises(propose.JobError, match="feature_channels 1536 does not match"):
    propose.read_job_manifest(broken)
  # The RPN's input channels must be the backbone's.
  with open(os.path.join(broken, "manifest.json"), "w") as f:
    json.dump(_manifest(backbone="TinyTestNet", feature_channels=16), f)
  with pytest.raises(propose.JobError, match="rpn.weights.h5"):
    propose.Proposer(broken)


def test_no_images_is_a_clear_error(job_dir, tmp_path, capsys):
  code = propose.main(["--job_dir", job_dir, "--input", str(tmp_path), "--output",
                       str(tmp_path / "out")])
  assert code == 2
  assert "no images" in capsys.readouterr().err
