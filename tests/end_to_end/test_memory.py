"""Memory stays flat as the dataset grows: peak RSS of an rpn-preprocess
process at two dataset sizes (the real backbone, so records are 55 KB each).

The run is the local streaming mode that `make preprocess` uses
(`--num_shards 0`): no grouping of records is left, so the runner holds one
image's records at a time. `make bench` measures the same at 64 and 128
images, and shows the growth with fixed shards (BENCHMARKS.md, section 6).
Run with `--num_shards 2` instead, this test fails: 1,135 MiB at 4 images,
1,611 MiB at 32 (measured), while the 28 added images wrote 117 MiB of tiles.
"""
import subprocess
import sys

import pytest

from tests import dataset_fixtures as fixtures

pytestmark = pytest.mark.slow

CHILD = ("import resource, sys\n"
         "from pipeline.commands import preprocess as run\n"
         "manifest = run.run(sys.argv[1:]).manifest\n"
         "print('RECORDS', manifest.counts['records'])\n"
         "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")


def _peak_rss_mib(root: str, output: str, repo: str, extra=()) -> tuple:
  command = [sys.executable, "-c", CHILD, "--input", root, "--split", "DET/train",
             "--output", output, "--backbone", "InceptionResNetV2", "--weights", "none",
             "--runner=DirectRunner", "--direct_num_workers=1", *extra]
  done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=repo)
  assert done.returncode == 0, done.stderr[-3000:]
  values = dict(line.split() for line in done.stdout.splitlines()
                if line.startswith(("RECORDS", "MAXRSS_KB")))
  return int(values["MAXRSS_KB"]) / 1024, int(values["RECORDS"])


SIZES = [(500, 375), (480, 360), (375, 500), (450, 300)]  # ILSVRC-like


def test_peak_memory_flat_with_dataset_size(tmp_path, repo_root):
  # The same four image sizes in both sets, so the backbone's own working
  # memory is the same; only the number of images (and records) grows.
  small, large = str(tmp_path / "small"), str(tmp_path / "large")
  fixtures.write_dataset(small, num_images=4, seed=11, sizes=SIZES)
  fixtures.write_dataset(large, num_images=32, seed=11, sizes=SIZES * 8)
  rss_small, records_small = _peak_rss_mib(small, str(tmp_path / "out_small"), repo_root,
                                           ("--num_shards", "0"))
  rss_large, records_large = _peak_rss_mib(large, str(tmp_path / "out_large"), repo_root,
                                           ("--num_shards", "0"))
  record_mib = 3 * 3 * 1536 * 4 / 2**20
  added_mib = (records_large - records_small) * record_mib
  print(f"peak RSS {rss_small:.0f} MiB at 4 images, {rss_large:.0f} MiB at 32 images; "
        f"the 28 added images wrote {added_mib:.0f} MiB of tiles")
  assert added_mib > 100  # enough that holding the records would show
  assert rss_large - rss_small < 0.5 * added_mib, (rss_small, rss_large, added_mib)
