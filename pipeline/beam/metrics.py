"""The Beam metrics of rpn-preprocess, rpn-anchors and rpn-propose (namespace "rpn"): what
each counts, the backbone's latency buckets, and the table the commands print
at the end of a run.

The counters are Beam's own (Metrics.counter), so Dataflow's and Flink's UIs
show them while a job runs; at the end the launcher queries the finished
PipelineResult (committed values) and prints them as a short table:

    Beam counters (namespace rpn):
      images_found        6   read: image files listed (the inputs)
      images_ok           3
      images_failed       2   decode 1, pairing 1
      images_skipped      1   no XML 1
      records           768   3.0 MiB serialized
      backbone_ms         3   p50 ~95, p95 ~180, max 230
      other                   boxes_clipped 2, images_padded 1

Beam's distribution metric keeps only sum, count, min and max, and its
histogram metric is not reported by every runner (DirectRunner drops it), so
the backbone time's percentiles come from counters of log-spaced buckets
(`backbone_ms_le_<bound>`: forward passes that took at most `bound` ms and
more than the bound below), read back to within a bucket (26 %).
"""
from __future__ import annotations

import bisect
import math
from typing import Dict, List, Mapping, Optional, Tuple

NAMESPACE = "rpn"

# name: what it counts. `failed_<stage>` and `skipped_<stage>` are one counter
# per stage of errors.jsonl; docs/DESIGN.md ("Beam counters") lists them all.
COUNTERS: Dict[str, str] = {
    "images_found": "image files found (listed with --image_set): the inputs",
    "images_ok": "inputs that produced output (rpn-preprocess: records; rpn-anchors: "
                 "boxes scored; rpn-propose: proposals)",
    "images_failed": "inputs that failed; each has an errors.jsonl line",
    "failed_<stage>": "inputs that failed at that stage (pairing, annotation, decode, load, "
                      "features, targets; rpn-propose: maps, propose)",
    "images_skipped": "inputs skipped by policy; each has an errors.jsonl line",
    "skipped_<stage>": "inputs skipped at that stage: pairing (no XML with "
                       "--missing_annotations skip), targets (no anchor inside the frame)",
    "images_no_anchors": "inputs skipped because no anchor lies inside the frame",
    "images_without_annotation": "inputs without XML used as negatives "
                                 "(--missing_annotations negative)",
    "annotations_without_image": "XML files without an image (not inputs)",
    "image_set_ids_without_image": "--image_set ids without an image file (not inputs)",
    "images_padded": "inputs smaller than the backbone accepts, zero-padded",
    "images_flipped": "mirrored copies made (--flip)",
    "flipped_ok": "mirrored copies that produced records (--flip)",
    "images_featurized": "forward passes of the backbone (inputs and mirrored copies)",
    "backbone_ms": "distribution: milliseconds per forward pass (sum, count, min, max)",
    "backbone_ms_le_<bound>": "forward passes that took at most that many ms (and more than "
                              "the bound below): the percentiles' buckets",
    "records": "records written (tiles, or maps)",
    "record_bytes": "bytes of the serialized records, before compression",
    "fg_anchors": "positive anchors sampled (tiles layout)",
    "bg_anchors": "negative anchors sampled (tiles layout)",
    "boxes_<reason>": "box policy: gt boxes invalid, min_gt_max, outside, zero_area (dropped), "
                      "clipped, float_coords",
    "size_<reason>": "the XML's size element: missing, invalid, mismatch (with the image)",
    "names_<reason>": "XML object names: missing, not_wnid",
    "proposals": "proposals written (rpn-propose)",
    "min_size_relaxed": "images where --min_size would have dropped every box, so the boxes "
                        "of non-zero size were kept (rpn-propose)",
    "head_loads": "RPN heads loaded, one per worker process (rpn-propose)",
    "head_traces": "traces of the RPN head's tf.function, one per level and worker "
                   "process (rpn-propose)",
    "head_ms": "distribution: milliseconds per image in the RPN head and the proposal "
               "filter (rpn-propose)",
}

# What "skipped_<stage>" means, in the table.
SKIP_REASONS = {"pairing": "no XML", "targets": "no anchor inside"}

BUCKET_PREFIX = "backbone_ms_le_"
# Upper bounds in ms, 10 per decade (x 1.26) from 1 ms to 100 s; beyond: the last.
BUCKET_BOUNDS: Tuple[int, ...] = tuple(sorted({max(1, round(10 ** (k / 10)))
                                               for k in range(0, 51)}))


def bucket_name(millis: float) -> str:
  """The bucket counter of a forward pass of `millis` ms."""
  index = min(bisect.bisect_left(BUCKET_BOUNDS, millis), len(BUCKET_BOUNDS) - 1)
  return f"{BUCKET_PREFIX}{BUCKET_BOUNDS[index]}"


def counter_doc(name: str) -> Optional[str]:
  """What counter `name` counts (COUNTERS, patterns included), None if unknown."""
  if name in COUNTERS:
    return COUNTERS[name]
  for pattern, doc in COUNTERS.items():
    prefix = pattern.split("<", 1)[0]
    if "<" in pattern and name.startswith(prefix) and len(name) > len(prefix):
      return doc
  return None


def query(result) -> Dict:
  """Counters (int) and distributions ({"sum", "count", "min", "max"}) of a
  finished PipelineResult, committed values summed over steps."""
  metrics: Dict = {}
  found = result.metrics().query()
  for counter in found["counters"]:
    name = counter.key.metric.name
    metrics[name] = metrics.get(name, 0) + counter.committed
  for dist in found["distributions"]:
    d = dist.committed
    if d is not None and d.count:
      metrics[dist.key.metric.name] = {"sum": d.sum, "count": d.count, "min": d.min,
                                       "max": d.max}
  return metrics


def percentile_ms(metrics: Mapping, q: float) -> Optional[float]:
  """The q-th percentile (0-100) of backbone_ms from the bucket counters,
  interpolated geometrically inside its bucket and kept within the
  distribution's min and max; None without forward passes."""
  buckets = sorted((int(name[len(BUCKET_PREFIX):]), int(count))
                   for name, count in metrics.items()
                   if name.startswith(BUCKET_PREFIX) and count)
  total = sum(count for _, count in buckets)
  if not total:
    return None
  rank = q / 100.0 * total
  seen = 0
  value = float(buckets[-1][0])
  for bound, count in buckets:
    if seen + count >= rank:
      index = BUCKET_BOUNDS.index(bound)
      lower = BUCKET_BOUNDS[index - 1] if index else 0.5
      share = (rank - seen) / count
      value = math.exp(math.log(lower) + share * (math.log(bound) - math.log(lower)))
      break
    seen += count
  dist = metrics.get("backbone_ms")
  if isinstance(dist, Mapping):
    value = min(max(value, float(dist["min"])), float(dist["max"]))
  return value


def _by_prefix(metrics: Mapping, prefix: str) -> List[Tuple[str, int]]:
  return sorted((name[len(prefix):], int(value)) for name, value in metrics.items()
                if name.startswith(prefix) and isinstance(value, int) and value)


def _mib(num_bytes: int) -> str:
  if num_bytes < 2 ** 20:
    return f"{num_bytes / 2 ** 10:.1f} KiB serialized"
  return f"{num_bytes / 2 ** 20:.1f} MiB serialized"


def format_table(metrics: Mapping) -> str:
  """The end-of-run table of a run's metrics (query()); every counter shows,
  those not in a row of their own under "other"."""
  rows: List[Tuple[str, str, str]] = []
  shown = set()

  def row(name: str, detail: str = "") -> None:
    if name in metrics:
      value = metrics[name]
      rows.append((name, str(value if not isinstance(value, Mapping) else value["count"]),
                   detail))
      shown.add(name)

  row("images_found", "read: image files listed (the inputs)")
  row("images_ok")
  failed = _by_prefix(metrics, "failed_")
  row("images_failed", ", ".join(f"{stage} {n}" for stage, n in failed))
  shown.update("failed_" + stage for stage, _ in failed)
  skipped = _by_prefix(metrics, "skipped_")
  row("images_skipped", ", ".join(f"{SKIP_REASONS.get(stage, stage)} {n}"
                                  for stage, n in skipped))
  shown.update("skipped_" + stage for stage, _ in skipped)
  row("records", _mib(int(metrics["record_bytes"])) if "record_bytes" in metrics else "")
  shown.add("record_bytes")
  dist = metrics.get("backbone_ms")
  if isinstance(dist, Mapping):
    p50, p95 = percentile_ms(metrics, 50), percentile_ms(metrics, 95)
    parts = ([f"p50 ~{p50:.0f}", f"p95 ~{p95:.0f}"] if p50 is not None else
             [f"mean {dist['sum'] / dist['count']:.0f}"])
    row("backbone_ms", ", ".join(parts + [f"max {dist['max']}"]))
  shown.update(name for name in metrics if name.startswith(BUCKET_PREFIX))
  row("proposals", f"{metrics['proposals'] / metrics['images_ok']:.1f} per image"
      if metrics.get("images_ok") and "proposals" in metrics else "")
  dist = metrics.get("head_ms")
  if isinstance(dist, Mapping) and dist.get("count"):
    row("head_ms", f"mean {dist['sum'] / dist['count']:.0f}, max {dist['max']}")
  other = ", ".join(f"{name} {metrics[name]}" for name in sorted(metrics)
                    if name not in shown and not isinstance(metrics[name], Mapping)
                    and metrics[name])
  if other:
    rows.append(("other", "", other))
  if not rows:
    return f"Beam counters (namespace {NAMESPACE}): none reported"
  width = max(len(name) for name, _, _ in rows)
  digits = max(len(value) for _, value, _ in rows)
  lines = [f"Beam counters (namespace {NAMESPACE}):"]
  lines += [f"  {name:<{width}}  {value:>{digits}}  {detail}".rstrip()
            for name, value, detail in rows]
  return "\n".join(lines)
