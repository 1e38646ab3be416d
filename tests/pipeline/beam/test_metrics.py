"""pipeline/beam/metrics.py: the counters' documentation, the latency buckets
and the end-of-run table."""
import os
import re

import pytest

from pipeline.beam import metrics

DESIGN = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, os.pardir, "docs",
                      "DESIGN.md")


@pytest.mark.parametrize("millis,bound", [(0, 1), (1, 1), (2, 2), (99, 100), (100, 100),
                                          (101, 126), (250, 251), (10 ** 9, 100000)])
def test_bucket_name(millis, bound):
  assert metrics.bucket_name(millis) == f"backbone_ms_le_{bound}"


def test_bucket_bounds_are_log_spaced():
  bounds = metrics.BUCKET_BOUNDS
  assert bounds[0] == 1 and bounds[-1] == 100000 and list(bounds) == sorted(set(bounds))
  ratios = [b / a for a, b in zip(bounds[10:], bounds[11:], strict=False)]  # above 10 ms
  assert max(ratios) < 1.3 and min(ratios) > 1.2


def _latencies(values):
  """The metrics a run with these forward-pass times reports."""
  found = {"backbone_ms": {"sum": sum(values), "count": len(values), "min": min(values),
                           "max": max(values)}}
  for value in values:
    name = metrics.bucket_name(value)
    found[name] = found.get(name, 0) + 1
  return found


def test_percentiles_from_the_buckets_are_within_a_bucket():
  values = list(range(50, 150)) + [400] * 5 + [1000] * 5  # 110 passes
  found = _latencies(values)
  p50, p95 = metrics.percentile_ms(found, 50), metrics.percentile_ms(found, 95)
  exact50, exact95 = sorted(values)[54], sorted(values)[104]  # 104 and 400
  assert exact50 / 1.26 <= p50 <= exact50 * 1.26
  assert exact95 / 1.26 <= p95 <= exact95 * 1.26
  assert metrics.percentile_ms(found, 100) == pytest.approx(1000)
  # Kept within the distribution's min and max: all 110 ms, in the bucket (100, 126].
  same = _latencies([110] * 20)
  assert metrics.percentile_ms(same, 5) == metrics.percentile_ms(same, 95) == 110
  assert metrics.percentile_ms({"images_ok": 3}, 50) is None
  one = _latencies([7])
  assert metrics.percentile_ms(one, 50) == metrics.percentile_ms(one, 95) == 7


def test_table():
  found = dict(_latencies([90, 100, 230]), images_found=6, images_ok=3, images_failed=2,
               failed_decode=1, failed_pairing=1, images_skipped=1, skipped_pairing=1,
               records=768, record_bytes=3 * 2 ** 20, images_featurized=3, boxes_clipped=2,
               images_padded=1, images_no_anchors=0)
  table = metrics.format_table(found)
  lines = table.splitlines()
  assert lines[0] == "Beam counters (namespace rpn):"
  rows = {line.split()[0]: line for line in lines[1:]}
  assert list(rows) == ["images_found", "images_ok", "images_failed", "images_skipped",
                        "records", "backbone_ms", "other"]
  assert re.search(r"images_failed\s+2\s+decode 1, pairing 1$", rows["images_failed"])
  assert re.search(r"images_skipped\s+1\s+no XML 1$", rows["images_skipped"])
  assert re.search(r"records\s+768\s+3.0 MiB serialized$", rows["records"])
  assert re.search(r"backbone_ms\s+3\s+p50 ~\d+, p95 ~\d+, max 230$", rows["backbone_ms"])
  # The rest, bucket counters and zeros left out.
  assert rows["other"].split(None, 1)[1] == ("boxes_clipped 2, images_featurized 3, "
                                              "images_padded 1")
  assert metrics.format_table({}) == "Beam counters (namespace rpn): none reported"
  small = metrics.format_table({"records": 3, "record_bytes": 1536})
  assert small.splitlines()[1].endswith("records  3  1.5 KiB serialized")


def test_every_counter_is_documented_in_design():
  with open(DESIGN, encoding="utf-8") as f:
    text = f.read()
  section = text.split("### Beam counters", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
  documented = set(re.findall(r"^\| `([^`]+)` \|", section, re.M))
  assert documented == set(metrics.COUNTERS), documented ^ set(metrics.COUNTERS)
  assert metrics.counter_doc("failed_decode") == metrics.COUNTERS["failed_<stage>"]
  assert metrics.counter_doc("backbone_ms_le_126") == metrics.COUNTERS["backbone_ms_le_<bound>"]
  assert metrics.counter_doc("boxes_clipped") == metrics.COUNTERS["boxes_<reason>"]
  assert metrics.counter_doc("failed_") is None and metrics.counter_doc("nonsense") is None
