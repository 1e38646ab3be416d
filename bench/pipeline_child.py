"""Child: one rpn-preprocess run (pipeline.commands.preprocess.run), timed from process start.

    python -m bench.pipeline_child --result FILE [--timeline DIR] -- RPN_PREPROCESS_ARGS...

Writes the manifest counts, the shard bytes, the run's Beam metrics and the
times: import (Beam, the pipeline modules), run (pipeline.commands.preprocess.run, which
builds the backbone in its workers) and the whole process. The driver
measures the wall time of the process from outside as well (that includes the
interpreter start). With --timeline DIR the backbone is the product's
FeatureExtractor wrapped by bench/instrument.py, which logs every forward
pass, to split the wall time into start-up, the forward-pass phase and the
tail (shuffle, write).
"""
from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import time

PROCESS_START = time.monotonic()
PROCESS_START_EPOCH = time.time()

from bench import common  # noqa: E402  (stdlib only)

# import_s: the product's imports (Beam, the DoFn modules) from a bare interpreter.
IMPORT_START = time.monotonic()
from pipeline.commands import preprocess as run  # noqa: E402

IMPORT_S = time.monotonic() - IMPORT_START

from bench import instrument  # noqa: E402  (after the timed import: not part of it)
from pipeline.beam import preprocess as preprocess_beam  # noqa: E402


def parse_args(argv):
  """(the child's own arguments, rpn-preprocess's after `--`)."""
  split = argv.index("--") if "--" in argv else len(argv)
  parser = argparse.ArgumentParser()
  parser.add_argument("--result", required=True)
  parser.add_argument("--timeline", help="directory for the forward-pass timeline "
                      "(bench/instrument.py); off when not given")
  return parser.parse_args(argv[:split]), argv[split + 1:]


def timed_factory(directory: str, argv):
  """extractor_factory for run.run: the extractor the product would build for
  `argv` (its threads derived from the runner options as run.run derives them),
  logging its forward passes into `directory`."""
  args, beam_args = run.build_parser().parse_known_args(argv)
  cfg = run.config_from_args(args, preprocess_beam.runner_setup(beam_args))
  return functools.partial(instrument.timed_extractor, directory, cfg.backbone,
                           cfg.targets.seed)


def phases(timeline, end_epoch: float):
  """Start-up, forward-pass phase and tail of the run, in seconds."""
  return {
      "start_to_first_forward": timeline["first_call_epoch_s"] - PROCESS_START_EPOCH,
      "first_to_last_forward": (timeline["last_call_end_epoch_s"]
                                - timeline["first_call_epoch_s"]),
      "last_forward_to_end": end_epoch - timeline["last_call_end_epoch_s"],
  }


def main(argv=None) -> int:
  args, rest = parse_args(list(sys.argv[1:] if argv is None else argv))
  factory = None
  if args.timeline:
    shutil.rmtree(args.timeline, ignore_errors=True)  # a timing taken again starts afresh
    factory = timed_factory(args.timeline, rest)
  run_start = time.monotonic()
  result = run.run(rest, extractor_factory=factory)
  run_s = time.monotonic() - run_start
  end_epoch = time.time()
  timeline = instrument.read_timeline(args.timeline) if args.timeline else {}
  if timeline:
    timeline["phases_s"] = phases(timeline, end_epoch)
  manifest = result.manifest
  output = rest[rest.index("--output") + 1]
  common.write_result(args.result, {
      "timeline": timeline,
      "metrics": result.metrics,
      "argv": rest,
      "import_s": IMPORT_S,
      "run_s": run_s,
      "process_s": time.monotonic() - PROCESS_START,
      "counts": manifest.counts,
      "num_shards": manifest.num_shards,
      "shard_bytes": sum(os.path.getsize(os.path.join(output, f))
                         for f in manifest.shard_files),
      "dtype": manifest.dtype,
      "compression": manifest.compression,
  })
  return 0


if __name__ == "__main__":
  sys.exit(main())
