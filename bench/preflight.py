"""What rpn-preprocess's launcher checks cost a run that works.

    python -m bench.preflight [--input data/sample] [--split DET/val] [--repeats 2]

Runs the installed rpn-preprocess on the same images with its checks
(pipeline.commands.preprocess.check_before_run: input folders, output probe, the backbone's
weights and feature layer loaded once in a child process) and without them
(the same console entry with check_before_run replaced by a no-op), in
alternating order, --repeats times each, in two settings:

  tiny         TinyTestNet, --weights none: no child process (nothing to load)
  vgg16_conv3  VGG16 block5_conv3 with the real weights file of ../shared/weights
               (RPN_VGG16_WEIGHTS), as `make demo` runs it: the child loads them
               and hands the layer's shape arithmetic to the launcher, which
               without the checks builds the net itself for it
  vgg16_final  the same at VGG16's final output: there the launcher builds no
               net, so the child is all extra

A passed backbone check is remembered (pipeline/commands/backbone_check.py, keyed by the
weights file's size and time): the first run with a weights file pays for the
child process ("cold", one run on an empty cache, RPN_CACHE_DIR in a temp
dir), later runs do not ("on", the runs after it). It also times the checks
alone in a fresh process, from start to the end of check_before_run
(interpreter start and imports included), cold and warm. Prints best and mean
wall seconds and the ratio of the bests.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

from bench import common
from pipeline.commands import sample_data

_RUN = ("import sys\n"
        "from pipeline.commands import preprocess as run\n"
        "if sys.argv[1] == 'off':\n"
        "  run.check_before_run = lambda *args, **kwargs: None\n"
        "sys.exit(run.main(sys.argv[2:]))\n")
_CHECK_ONLY = ("import sys, time\n"
               "start = time.monotonic()\n"
               "from pipeline.beam import preprocess as program\n"
               "from pipeline.commands import preprocess as run\n"
               "args, beam_args = run.build_parser().parse_with_beam(sys.argv[1:])\n"
               "cfg = run.config_from_args(args, program.runner_setup(beam_args))\n"
               "run.check_before_run(args, cfg)\n"
               "print(time.monotonic() - start)\n")


def _settings() -> Dict[str, List[str]]:
  settings = {"tiny": ["--backbone", "TinyTestNet", "--weights", "none"]}
  weights = common.vgg16_weights()
  if os.path.exists(weights):
    settings["vgg16_conv3"] = ["--backbone", "VGG16", "--feature_layer", "block5_conv3",
                               "--weights", weights]
    settings["vgg16_final"] = ["--backbone", "VGG16", "--weights", weights]
  else:
    print(f"no VGG16 weights at {weights}: the vgg16 setting is left out")
  return settings


def _timed(argv: List[str], env: Dict[str, str]) -> float:
  start = time.monotonic()
  result = subprocess.run(argv, capture_output=True, text=True, env=env)
  seconds = time.monotonic() - start
  if result.returncode != 0:
    raise RuntimeError(f"{argv[:4]}... failed ({result.returncode}): {result.stderr[-2000:]}")
  return seconds


def _check_only(common: List[str], out: str, env: Dict[str, str]) -> float:
  return float(subprocess.run([sys.executable, "-c", _CHECK_ONLY, *common, "--output", out],
                              capture_output=True, text=True, check=True, env=env
                              ).stdout.split()[-1])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="bench.preflight", description=__doc__.split("\n\n")[0])
  parser.add_argument("--input", default=os.path.join("data", "sample"))
  parser.add_argument("--split", default="DET/val")
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args(argv)
  if not os.path.isdir(os.path.join(args.input, "Data")):
    sample_data.main(["--output", args.input])
  work = tempfile.mkdtemp(prefix="bench-preflight-")
  rows = []
  try:
    for name, flags in _settings().items():
      common = ["--input", args.input, "--split", args.split, *flags]
      env = dict(os.environ, RPN_CACHE_DIR=os.path.join(work, f"cache-{name}"))

      check_cold = _check_only(common, os.path.join(work, "c"), env)
      shutil.rmtree(env["RPN_CACHE_DIR"], ignore_errors=True)
      out = os.path.join(work, f"{name}-cold")
      cold = _timed([sys.executable, "-c", _RUN, "on", *common, "--output", out], env)
      shutil.rmtree(out, ignore_errors=True)
      times = {"on": [], "off": []}
      for repeat in range(args.repeats):
        order = ("on", "off") if repeat % 2 == 0 else ("off", "on")
        for mode in order:
          out = os.path.join(work, f"{name}-{mode}-{repeat}")
          times[mode].append(_timed([sys.executable, "-c", _RUN, mode, *common,
                                     "--output", out], env))
          shutil.rmtree(out, ignore_errors=True)
      rows.append((name, cold, times["on"], times["off"], check_cold,
                   _check_only(common, os.path.join(work, "c"), env)))
  finally:
    shutil.rmtree(work, ignore_errors=True)
  print(f"rpn-preprocess on {args.input} {args.split}; cold: 1 run, empty check cache; "
        f"on/off: {args.repeats} runs each, alternating; wall seconds")
  print(f"{'setting':<12} {'cold':>7} {'on (best/mean)':>16} {'off (best/mean)':>16} "
        f"{'cold/off':>9} {'on/off':>7} {'checks alone cold/warm':>23}")
  for name, cold, on, off, check_cold, check_warm in rows:
    print(f"{name:<12} {cold:>7.2f} {min(on):>7.2f} / {statistics.mean(on):<6.2f} "
          f"{min(off):>7.2f} / {statistics.mean(off):<6.2f} {cold / min(off):>9.3f} "
          f"{min(on) / min(off):>7.3f} {check_cold:>14.2f} / {check_warm:<6.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
