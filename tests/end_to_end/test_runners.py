"""The same records on every runner: DirectRunner in-process and multi-process,
PortableRunner against Beam's local job service with an external worker pool.

Shards assign records from a random start, so outputs are compared as record
multisets (byte for byte), whatever the number of shards.
"""
import collections
import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import dataset_fixtures as fixtures
from tests import pipeline_helpers as helpers

pytestmark = pytest.mark.slow
SAMPLE_16 = ("--batch_size", "16")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("data"))
  fixtures.write_dataset(root, num_images=10, seed=7)
  # Bad inputs ride along, so errors and accounting are compared too: a
  # corrupt image, a hostile XML, an image without XML, an XML without image.
  folder = "DET/train"
  prefix = "ILSVRC2014_train_0000/"
  image = fixtures.random_image(np.random.default_rng(1), 200, 150, [(20, 20, 120, 100)])
  fixtures.write_pair(root, folder, prefix + "zz_corrupt", None,
                      fixtures.det_xml("zz_corrupt", 100, 100, []),
                      image_bytes=b"\xff\xd8\xff garbage")
  fixtures.write_pair(root, folder, prefix + "zz_xxe", image,
                      '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                      "<annotation><filename>&x;</filename></annotation>")
  fixtures.write_pair(root, folder, prefix + "zz_no_xml", image, None)
  fixtures.write_pair(root, folder, prefix + "zz_orphan", None,
                      fixtures.det_xml("zz_orphan", 200, 150, [(20, 20, 120, 100)]))
  reference = str(tmp_path_factory.mktemp("ref"))
  manifest = helpers.preprocess(root, reference, num_shards=2, extra=SAMPLE_16)
  counts = manifest["counts"]
  assert (counts["images_found"], counts["images_failed"], counts["images_skipped"]) == (13, 2, 1)
  outcomes = collections.Counter(
      e["outcome"] for e in helpers.read_jsonl(os.path.join(reference, "errors.jsonl")))
  assert outcomes == {"failed": 2, "skipped": 1, "unpaired": 1}
  # With 16 anchors an image the sampler chooses among the candidates (in
  # most images), so the comparisons below exercise the seeded sampling.
  lines = helpers.read_jsonl(os.path.join(reference, "images.jsonl"))
  sampled = [line["num_fg"] + line["num_bg"] for line in lines]
  assert sum(1 for n in sampled if n == 16) >= 6, sampled
  return root, reference, manifest


def _direct_runner_multi_process(root, output, tmp_path):
  return helpers.preprocess(root, output, num_shards=5, extra=SAMPLE_16, runner_args=(
      "--runner=DirectRunner", "--direct_running_mode=multi_processing",
      "--direct_num_workers=2"))


def _portable_runner_with_external_worker_pool(root, output, tmp_path):
  from pipeline import portable
  result = portable.run(["--input", root, "--split", "DET/train", "--output", output,
                         "--backbone", helpers.TINY, "--weights", "none",
                         "--num_shards", "3", *SAMPLE_16],
                        workers=2, log_dir=str(tmp_path / "logs"))
  with open(tmp_path / "logs" / "worker_pool.log") as f:
    started = {line.split('worker_id="')[1].split('"')[0] for line in f if "worker_id=" in line}
  assert started == {"worker_0", "worker_1"}  # two SDK workers served the job
  return result.manifest


@pytest.mark.parametrize("run_another_way", [
    _direct_runner_multi_process,
    _portable_runner_with_external_worker_pool,
], ids=["direct_multi_process", "portable_external_worker_pool"])
def test_same_records_on_another_runner(dataset, tmp_path, run_another_way):
  root, reference, ref_manifest = dataset
  output = str(tmp_path / "out")
  manifest = run_another_way(root, output, tmp_path)
  assert manifest["counts"] == ref_manifest["counts"]
  helpers.check_same_output(reference, output, manifest,
                            os.path.join(root, "Data", "DET", "train"))


def test_killed_run_leaves_nothing_that_looks_complete_and_rerun_recovers(dataset, tmp_path):
  root, reference, _ = dataset
  output = str(tmp_path / "killed")
  command = [sys.executable, "-m", "pipeline.run", "--input", root, "--output", output,
             "--backbone", helpers.TINY, "--weights", "none", "--num_shards", "2",
             "--runner=DirectRunner", "--direct_running_mode=multi_processing",
             "--direct_num_workers=2", *SAMPLE_16]
  process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
  # Kill it while it writes: once a shard file is being written in Beam's
  # temp directory (or after 20 s, whatever state it is in then).
  deadline = time.monotonic() + 20
  writing = []
  while time.monotonic() < deadline and process.poll() is None and not writing:
    writing = glob.glob(os.path.join(output, "beam-temp-tiles*", "*"))
    time.sleep(0.02)
  os.killpg(process.pid, signal.SIGKILL)
  process.wait()
  print(f"killed while writing {len(writing)} temp shard file(s)")
  assert not glob.glob(os.path.join(output, "tiles-*"))  # no shard looks complete
  assert not os.path.exists(os.path.join(output, "manifest.json"))
  # The trainer refuses a directory without a manifest.
  from pipeline import manifest as manifest_lib
  with pytest.raises(manifest_lib.ManifestError, match="manifest.json"):
    manifest_lib.load(output)
  manifest = helpers.preprocess(root, output, num_shards=2, extra=SAMPLE_16)
  helpers.check_same_output(reference, output, manifest,
                            os.path.join(root, "Data", "DET", "train"))
  assert not any(n.startswith("beam-temp") for n in os.listdir(output))
