"""Child: one rpn-preprocess run (pipeline.run.run), timed from process start.

    python -m bench.pipeline_child --result FILE -- RPN_PREPROCESS_ARGS...

Writes the manifest counts, the shard bytes and the times: import (Beam, the
pipeline modules), run (pipeline.run.run, which builds the backbone in its
workers) and the whole process. The driver measures the wall time of the
process from outside as well (that includes the interpreter start). With
--timeline DIR the backbone is the product's FeatureExtractor wrapped by
bench/instrument.py, which logs every forward pass, to split the wall time
into start-up, the forward-pass phase and the tail (shuffle, write).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

PROCESS_START = time.monotonic()
PROCESS_START_EPOCH = time.time()


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  split = argv.index("--") if "--" in argv else len(argv)
  parser = argparse.ArgumentParser()
  parser.add_argument("--result", required=True)
  parser.add_argument("--timeline", help="directory for the forward-pass timeline "
                      "(bench/instrument.py); off when not given")
  args = parser.parse_args(argv[:split])
  rest = argv[split + 1:]
  from bench import common
  import_start = time.monotonic()
  from pipeline import run  # noqa: F401  (Beam and the DoFn modules)
  import apache_beam as beam
  import_s = time.monotonic() - import_start
  # Keep the PipelineResult that run.run() does not return, for its metrics.
  results = []
  original_run = beam.Pipeline.run

  def run_and_keep(self, *a, **k):
    result = original_run(self, *a, **k)
    results.append(result)
    return result
  beam.Pipeline.run = run_and_keep
  factory = None
  if args.timeline:
    from bench import instrument
    os.environ[instrument.ENV] = args.timeline
    if "--backbone_threads" in rest:
      os.environ[instrument.THREADS_ENV] = rest[rest.index("--backbone_threads") + 1]
    factory = instrument.timed_extractor
  run_start = time.monotonic()
  manifest = run.run(rest, extractor_factory=factory)
  run_s = time.monotonic() - run_start
  end_epoch = time.time()
  timeline = {}
  if args.timeline:
    timeline = instrument.read_timeline(args.timeline)
    if timeline:
      timeline["phases_s"] = {
          "start_to_first_forward": timeline["first_call_epoch_s"] - PROCESS_START_EPOCH,
          "first_to_last_forward": (timeline["last_call_end_epoch_s"]
                                    - timeline["first_call_epoch_s"]),
          "last_forward_to_end": end_epoch - timeline["last_call_end_epoch_s"],
      }
  output = rest[rest.index("--output") + 1]
  shard_bytes = sum(os.path.getsize(os.path.join(output, f)) for f in manifest["shard_files"])
  metrics = {}
  if results:
    query = results[-1].metrics().query()
    for counter in query["counters"]:
      metrics[counter.key.metric.name] = metrics.get(counter.key.metric.name, 0) + counter.committed
    for dist in query["distributions"]:
      d = dist.committed
      if d is not None and d.count:
        metrics[dist.key.metric.name] = {"sum": d.sum, "count": d.count, "min": d.min,
                                         "max": d.max}
  common.write_result(args.result, {
      "timeline": timeline,
      "metrics": metrics,
      "argv": rest,
      "import_s": import_s,
      "run_s": run_s,
      "process_s": time.monotonic() - PROCESS_START,
      "counts": manifest["counts"],
      "num_shards": manifest["num_shards"],
      "shard_bytes": shard_bytes,
      "dtype": manifest["dtype"],
      "compression": manifest["compression"],
  })
  return 0


if __name__ == "__main__":
  sys.exit(main())
