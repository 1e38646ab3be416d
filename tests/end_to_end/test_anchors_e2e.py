"""rpn-anchors end to end: its frames equal rpn-preprocess's, its coverage equals a
computation on preprocess's own images.jsonl, and bad input gives the same lines."""
import json
import os
import shlex

import numpy as np
import pytest

from pipeline.beam import anchors as anchors_beam
from pipeline.commands import anchors as coverage_run
from pipeline.core import config as config_lib
from pipeline.core import coverage
from tests import dataset_fixtures as fixtures
from tests import pipeline_helpers as helpers
from tests.end_to_end.test_bad_input_e2e import SPLIT, write_bad_and_odd_inputs


def anchors_run(root, output, extra=()):
  return coverage_run.run(["--input", root, "--split", SPLIT, "--output", output,
                           "--backbone", helpers.TINY, *extra, *helpers.IN_PROCESS])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("anchors") / "data")
  fixtures.write_dataset(root, SPLIT, num_images=12, seed=4)
  return root


@pytest.mark.parametrize("layer,resize", [("", []), ("conv1", []),
                                          ("conv1", ["--min_side", "200", "--max_side", "300"])],
                         ids=["final", "conv1", "conv1_resized"])
def test_coverage_equals_preprocess_frames(dataset, tmp_path, layer, resize):
  extra = ["--feature_layer", layer] + resize  # '' is the final output
  report = anchors_run(dataset, str(tmp_path / "anchors"), extra)
  # The same data through rpn-preprocess: a real forward pass of the backbone.
  helpers.preprocess(dataset, str(tmp_path / "shards"), extra=extra)
  images = helpers.images_of(str(tmp_path / "shards"))
  frames = [coverage.FrameBoxes(line["image_id"], line["width"], line["height"],
                                line["feature_height"], line["feature_width"],
                                np.asarray(line["gt_boxes"]).reshape(-1, 4)) for line in images]
  for name in ("current", "suggested"):
    block = report[name]
    expected = coverage.frames_summary(frames, block["scales"], block["ratios"]).summary()
    assert block["coverage"] == expected["coverage"], name
    assert block["by_size"] == expected["by_size"], name
    assert block["mean_best_iou"] == pytest.approx(expected["mean_best_iou"])
  assert report["num_boxes"] == sum(len(f.gt_boxes) for f in frames) > 0
  assert report["num_images"] == len(frames) == report["counts"]["images_ok"]
  assert report["feature_layer"] == (layer or None) and report["backbone"] == helpers.TINY
  assert (report["suggested"]["coverage"]["inside"]["0.7"]
          >= report["current"]["coverage"]["inside"]["0.7"])
  assert len(report["suggested"]["scales"]) == 3 and len(report["suggested"]["ratios"]) == 3
  for name in (anchors_beam.COVERAGE_PNG, anchors_beam.BOXES_PNG):
    with open(tmp_path / "anchors" / name, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(tmp_path / "anchors" / anchors_beam.ANCHORS_NAME) as f:
    assert json.load(f) == report


def test_no_setting_flag_recommends_the_whole_preprocess_setting(dataset, tmp_path, capsys):
  """With only the input, backbone and output, rpn-anchors works at the
  backbone's recommended layer, and its recommended flags, pasted into
  rpn-preprocess, give the frames, layer, anchors and flipped copies it
  scored; the printed line is the same list."""
  output = str(tmp_path / "anchors")
  assert coverage_run.main(["--input", dataset, "--split", SPLIT, "--output", output,
                            "--backbone", helpers.TINY, *helpers.IN_PROCESS]) == 0
  printed = capsys.readouterr().out.splitlines()
  with open(os.path.join(output, anchors_beam.ANCHORS_NAME)) as f:
    report = json.load(f)
  flags = report["recommended_flags"]
  assert printed[printed.index(next(line for line in printed
                                    if line.startswith("recommended rpn-preprocess flags")))
                 + 1] == shlex.join(flags)
  suggested = report["suggested"]
  assert report["feature_layer"] == "conv1"  # TinyTestNet's recommended layer
  assert flags == ["--backbone", helpers.TINY, "--feature_layer", "conv1",
                   "--scales", ",".join(f"{v:g}" for v in suggested["scales"]),
                   "--ratios", ",".join(f"{v:g}" for v in suggested["ratios"]), "--flip"]
  assert len(report["recommended_why"]) == 5
  manifest = helpers.preprocess(dataset, str(tmp_path / "shards"), extra=flags)
  assert manifest.feature_layer == "conv1" and manifest.flipped_copies
  assert manifest.anchor_config.scales == pytest.approx(suggested["scales"], abs=5e-4)
  # the coverage rpn-anchors reported is that of the unflipped frames preprocess wrote
  images = [line for line in helpers.images_of(str(tmp_path / "shards"))
            if not line["image_id"].endswith(config_lib.FLIP_SUFFIX)]
  frames = [coverage.FrameBoxes(line["image_id"], line["width"], line["height"],
                                line["feature_height"], line["feature_width"],
                                np.asarray(line["gt_boxes"]).reshape(-1, 4)) for line in images]
  expected = coverage.frames_summary(frames, suggested["scales"], suggested["ratios"]).summary()
  assert suggested["coverage"] == expected["coverage"]


def test_given_settings_stay_in_the_recommendation(dataset, tmp_path):
  """A given layer and resize stay; the search gives the counts asked for."""
  report = anchors_run(dataset, str(tmp_path / "anchors"),
                       ["--feature_layer", "", "--min_side", "200", "--max_side", "300",
                        "--num_scales", "2", "--num_ratios", "1"])
  flags = report["recommended_flags"]
  suggested = report["suggested"]
  assert (len(suggested["scales"]), len(suggested["ratios"])) == (2, 1)  # the counts asked for
  assert (report["search"]["num_scales"], report["search"]["num_ratios"]) == (2, 1)
  assert flags[-5:] == ["--scales", ",".join(f"{v:g}" for v in suggested["scales"]),
                        "--ratios", ",".join(f"{v:g}" for v in suggested["ratios"]), "--flip"]
  assert report["feature_layer"] is None and "--feature_layer" not in flags
  assert flags[:6] == ["--backbone", helpers.TINY, "--min_side", "200", "--max_side", "300"]
  assert report["recommended_why"][0] == "feature layer(s) final output: as given"


def test_max_images_takes_a_fixed_subset(dataset, tmp_path):
  a = anchors_run(dataset, str(tmp_path / "a"), ["--max_images", "5"])
  b = anchors_run(dataset, str(tmp_path / "b"), ["--max_images", "5", "--search_images", "2"])
  assert a["counts"]["images_found"] == b["counts"]["images_found"] == 5
  assert a["current"] == b["current"]  # the same 5 images
  assert b["search"]["sample_images"] == 2


def test_bad_input_gives_the_lines_of_rpn_preprocess(tmp_path):
  root = str(tmp_path / "data")
  cases = write_bad_and_odd_inputs(root)
  os.remove(os.path.join(root, "Annotations", SPLIT, "ok_gray.xml"))  # --missing skip
  output = str(tmp_path / "anchors")
  report = anchors_run(root, output, ["--feature_layer", ""])  # preprocess's default layer
  helpers.preprocess(root, str(tmp_path / "shards"))
  preprocess_errors = {e["image_id"]: e for e in helpers.read_jsonl(
      str(tmp_path / "shards" / "errors.jsonl"))}
  anchors_errors = {e["image_id"]: e for e in helpers.read_jsonl(
      os.path.join(output, "errors.jsonl"))}
  assert anchors_errors == preprocess_errors
  assert set(anchors_errors) == {i for i, case in cases.items() if case[2] != "ok"} | {"ok_gray"}
  assert anchors_errors["ok_gray"]["outcome"] == "skipped"
  assert anchors_errors["tiny"]["stage"] == "targets"
  assert anchors_errors["bad_xxe"]["stage"] == "annotation"
  counts = report["counts"]
  assert counts["images_found"] == len(cases)
  assert counts["images_found"] == (counts["images_ok"] + counts["images_failed"]
                                    + counts["images_skipped"])
  assert counts["images_padded"] == 1 and counts["boxes_dropped"] == 2
  with open(os.path.join(output, "errors.jsonl")) as f:
    assert "root:" not in f.read()  # /etc/passwd unread


def test_unknown_feature_layer_is_one_line_naming_nearest(dataset, tmp_path, capsys):
  code = coverage_run.main(["--input", dataset, "--split", SPLIT, "--output",
                            str(tmp_path / "x"), "--backbone", helpers.TINY,
                            "--feature_layer", "conv3", *helpers.IN_PROCESS])
  err = capsys.readouterr().err.strip()
  assert code == 2 and "\n" not in err
  assert err.startswith("rpn-anchors: error:") and "conv1" in err and "conv2" in err
  assert not os.path.exists(tmp_path / "x" / anchors_beam.ANCHORS_NAME)
