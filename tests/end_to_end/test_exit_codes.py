"""Exit codes of the commands that read many inputs, through the installed
console scripts (what a scheduler sees): 0 within the failure budget, 1 after
writing the outputs when no input produced output or more than
--max_failed_fraction of them failed (pipeline/commands/budget.py)."""
import glob
import os
import re

import numpy as np
import pytest

from tests import dataset_fixtures as fixtures
from tests import pipeline_helpers as helpers
from tests.end_to_end.test_fail_fast import run_script

SPLIT = "DET/train"
IN_PROCESS = list(helpers.IN_PROCESS)


def _corrupt(root: str, image_id: str) -> None:
  """An image file that is not an image, with its XML."""
  fixtures.write_pair(root, SPLIT, image_id, None, fixtures.det_xml(image_id, 64, 48, []),
                      image_bytes=b"not an image at all" * 8)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
  """mixed: 2 good images and 2 corrupt ones; all_bad: 2 corrupt ones and one
  image without XML (skipped by the default --missing_annotations skip)."""
  base = tmp_path_factory.mktemp("exit_codes")
  mixed, all_bad = str(base / "mixed"), str(base / "all_bad")
  fixtures.write_dataset(mixed, SPLIT, num_images=2, sizes=[(160, 128), (200, 150)])
  for root in (mixed, all_bad):
    _corrupt(root, "bad_0001")
    _corrupt(root, "bad_0002")
  fixtures.write_pair(all_bad, SPLIT, "no_xml",
                      fixtures.random_image(np.random.default_rng(0), 96, 80), None)
  return {"mixed": mixed, "all_bad": all_bad}


def _budget_line(result, command: str) -> str:
  """The run's last stderr line, which must be its one budget error; no traceback."""
  assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
  assert "Traceback" not in result.stderr + result.stdout
  line = result.stderr.strip().splitlines()[-1]
  assert line.startswith(f"{command}: error: "), result.stderr[-3000:]
  return line


def _preprocess(root: str, out: str, *extra: str):
  return run_script("rpn-preprocess", ["--input", root, "--output", out, "--backbone",
                                       "TinyTestNet", "--weights", "none", *extra, *IN_PROCESS])


def test_preprocess_within_the_default_budget_exits_0(roots, tmp_path):
  out = str(tmp_path / "out")
  result = _preprocess(roots["mixed"], out)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "images: 4 found = 2 ok + 2 failed + 0 skipped" in result.stdout
  # The run's Beam counters, as a table at the end.
  table = result.stdout.split("Beam counters (namespace rpn):\n", 1)[1]
  assert re.search(r"^  images_found +4  read: ", table, re.M), table
  assert re.search(r"^  images_failed +2  decode 2$", table, re.M), table
  assert re.search(r"^  backbone_ms +2  p50 ~\d+, p95 ~\d+, max \d+$", table, re.M), table


def test_preprocess_with_every_image_failed_exits_1_after_writing(roots, tmp_path):
  out = str(tmp_path / "out")
  result = _preprocess(roots["all_bad"], out)
  line = _budget_line(result, "rpn-preprocess")
  errors = os.path.join(out, "errors.jsonl")
  assert "no images produced output (2 failed, 1 skipped of 3)" in line
  assert f"the outputs were written, each failed or skipped one with its reason in {errors}" \
      in line
  # Written all the same: the summary, the manifest and one errors line per input.
  assert "images: 3 found = 0 ok + 2 failed + 1 skipped" in result.stdout
  assert os.path.isfile(os.path.join(out, "manifest.json"))
  outcomes = sorted(e["outcome"] for e in helpers.read_jsonl(errors))
  assert outcomes == ["failed", "failed", "skipped"]


def test_preprocess_over_a_given_budget_exits_1(roots, tmp_path):
  out = str(tmp_path / "out")
  result = _preprocess(roots["mixed"], out, "--max_failed_fraction", "0.25")
  line = _budget_line(result, "rpn-preprocess")
  assert "2 of 4 images failed (50%), more than --max_failed_fraction 0.25" in line
  assert glob.glob(os.path.join(out, "tiles-*.tfrecord"))  # the good images' records


def test_anchors_over_a_given_budget_exits_1(roots, tmp_path):
  out = str(tmp_path / "anchors")
  result = run_script("rpn-anchors", ["--input", roots["mixed"], "--output", out, "--backbone",
                                      "TinyTestNet", "--max_failed_fraction", "0.4",
                                      *IN_PROCESS])
  line = _budget_line(result, "rpn-anchors")
  assert "2 of 4 images failed (50%), more than --max_failed_fraction 0.4" in line
  table = result.stdout.split("Beam counters (namespace rpn):\n", 1)[1]
  assert re.search(r"^  images_ok +2$", table, re.M), table
  assert re.search(r"^  images_failed +2  decode 2$", table, re.M), table
  assert os.path.isfile(os.path.join(out, "anchors.json"))


def test_propose_with_every_image_failed_exits_1(untrained_job, roots, tmp_path):
  out = str(tmp_path / "proposals")
  pattern = os.path.join(roots["all_bad"], "Data", SPLIT, "bad_*.JPEG")
  result = run_script("rpn-propose", ["--job_dir", untrained_job, "--images", pattern,
                                      "--output", out, "--draw", "0"])
  line = _budget_line(result, "rpn-propose")
  assert "no images produced output (2 failed of 2)" in line
  assert len(helpers.read_jsonl(os.path.join(out, "errors.jsonl"))) == 2
