"""`make gpu-check`: is the trainer right on this machine's GPUs? One short run.

    python -m trainer.gpu_check [--work DIR] [--epochs 2] [--tolerance 0.1]

Makes its own sample shards (rpn-sample-data, then rpn-preprocess with the
small random TinyTestNet), then trains 2 epochs with rpn-train on the same
data and seed:
  cpu        the reference: no GPU visible (CUDA_VISIBLE_DEVICES="")
  gpu        float32 on all GPUs (MirroredStrategy when there are several)
  gpu-mixed  --mixed_precision on all GPUs
  gpu-1      float32 on the first GPU alone (only with several GPUs)
Each run is a fresh process. The check passes when every loss of every epoch
is finite and each run's last train and val losses are within --tolerance
(relative) of the CPU run's. The order of the shuffled records differs a
little between runs (parallel reads), so the runs agree closely, not exactly.

Without a GPU it says so and exits 0; with GPUs that this TensorFlow cannot
see (nvidia-smi lists them; e.g. tensorflow-cpu is installed: install the
`gpu` extra) it exits 1. --on_cpu runs the same comparison with the CPU
standing in for the GPU (how the tests check this script).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow starts: no banner

DEFAULT_TOLERANCE = 0.1  # relative, on the last epoch's train and val losses
LOSS_KEYS = ("loss", "scores_loss", "deltas_loss", "val_loss")
COMPARED_KEYS = ("loss", "val_loss")


def physical_gpus() -> List[str]:
  import tensorflow as tf
  return [gpu.name for gpu in tf.config.list_physical_devices("GPU")]


def nvidia_smi_gpus() -> List[str]:
  """The GPUs nvidia-smi lists ([] without nvidia-smi)."""
  if shutil.which("nvidia-smi") is None:
    return []
  try:
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return []
  return [line for line in out.stdout.splitlines() if line.startswith("GPU ")]


def _command(module: str, *args: str) -> List[str]:
  return [sys.executable, "-m", module, *args]


def _entry_point(target: str, *args: str) -> List[str]:
  """A console script's function, "module:function" as setup.py names it (rpn-train:
  trainer.cli:train_main), run by this interpreter with `args` as its flags."""
  module, function = target.split(":")
  code = f"import sys; from {module} import {function}; sys.exit({function}())"
  return [sys.executable, "-c", code, *args]


def _run(cmd: Sequence[str], env: Optional[Dict[str, str]] = None, log: str = "") -> None:
  """Runs a step; on failure prints its output's tail and raises."""
  proc = subprocess.run(list(cmd), env=env, capture_output=True, text=True)
  if log:
    with open(log, "w") as f:
      f.write(proc.stdout + proc.stderr)
  if proc.returncode != 0:
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
    raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")


def make_shards(work: str) -> Tuple[str, str]:
  """(train, val) shard directories of the bundled sample data, TinyTestNet features."""
  sample = os.path.join(work, "sample")
  _run(_command("pipeline.commands.sample_data", "--output", sample))
  dirs = []
  for split, shards in (("train", "2"), ("val", "1")):
    out = os.path.join(work, "shards", split)
    _run(_command("pipeline.commands.preprocess", "--input", sample, "--split", f"DET/{split}",
                  "--output", out,
                  "--backbone", "TinyTestNet", "--weights", "none", "--feature_layer", "conv1",
                  "--num_shards", shards,
                  # a few small images: one process, no worker pool to start
                  "--runner=DirectRunner", "--direct_running_mode=in_memory"),
         log=os.path.join(work, f"preprocess-{split}.log"))
    dirs.append(out)
  return dirs[0], dirs[1]


def train_run(work: str, name: str, train_dir: str, val_dir: str, epochs: int,
              visible: Optional[str], mixed: bool) -> Dict:
  """One rpn-train run in a fresh process; returns its history rows and seconds."""
  job = os.path.join(work, "jobs", name)
  env = dict(os.environ)
  if visible is not None:
    env["CUDA_VISIBLE_DEVICES"] = visible
  start = time.monotonic()
  _run(_entry_point("trainer.cli:train_main", "--data", train_dir, "--val_data", val_dir,
                    "--job_dir", job, "--epochs", str(epochs), "--seed", "0",
                    "--batch_size", "128", *(["--mixed_precision"] if mixed else [])),
       env=env, log=os.path.join(work, f"train-{name}.log"))
  seconds = time.monotonic() - start
  with open(os.path.join(job, "history.csv")) as f:
    rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
  with open(os.path.join(job, "train_config.json")) as f:
    replicas = json.load(f).get("replicas", 1)
  return {"rows": rows, "seconds": seconds, "replicas": replicas}


def compare(runs: Dict[str, Dict], reference: str, tolerance: float) -> List[str]:
  """Problems found ([] when the check passes)."""
  problems = []
  for name, result in runs.items():
    for row in result["rows"]:
      for key in LOSS_KEYS:
        if key in row and not math.isfinite(row[key]):
          problems.append(f"{name}: {key} of epoch {int(row['epoch']) + 1} is {row[key]}")
  expected = runs[reference]["rows"][-1]
  for name, result in runs.items():
    if name == reference:
      continue
    last = result["rows"][-1]
    for key in COMPARED_KEYS:
      if key not in expected or key not in last:
        continue
      gap = abs(last[key] - expected[key]) / max(abs(expected[key]), 1e-12)
      if not gap <= tolerance:
        problems.append(f"{name}: {key} {last[key]:.4f} against {expected[key]:.4f} on "
                        f"{reference} ({100 * gap:.1f} % apart; tolerance "
                        f"{100 * tolerance:.0f} %)")
  return problems


def format_runs(runs: Dict[str, Dict]) -> str:
  lines = [f"{'run':<10} {'replicas':>8} {'seconds':>8} " +
           " ".join(f"{key:>12}" for key in LOSS_KEYS)]
  for name, result in runs.items():
    last = result["rows"][-1]
    lines.append(f"{name:<10} {result['replicas']:>8} {result['seconds']:>8.1f} " + " ".join(
        f"{last[key]:>12.4f}" if key in last else f"{'-':>12}" for key in LOSS_KEYS))
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m trainer.gpu_check",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--work", default=None, help="work directory (default: a temporary one)")
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
  parser.add_argument("--on_cpu", action="store_true",
                      help="run the comparison with the CPU standing in for the GPU")
  args = parser.parse_args(argv)
  gpus = physical_gpus()
  if not gpus and not args.on_cpu:
    listed = nvidia_smi_gpus()
    if listed:
      print(f"gpu-check: FAILED: nvidia-smi lists {len(listed)} GPU(s) but TensorFlow sees "
            f"none; install the gpu extra (pip install -e '.[gpu]') instead of "
            f"tensorflow-cpu", file=sys.stderr)
      return 1
    print("gpu-check: no GPU on this machine; nothing to check (exit 0)")
    return 0
  start = time.monotonic()
  work = args.work or tempfile.mkdtemp(prefix="rpn-gpu-check-")
  print(f"gpu-check: {len(gpus)} GPU(s) {gpus}" if gpus else
        "gpu-check: --on_cpu: the CPU stands in for the GPU", flush=True)
  train_dir, val_dir = make_shards(work)
  print(f"  sample shards in {work}/shards ({time.monotonic() - start:.0f} s)", flush=True)
  plan = [("cpu", "", False), ("gpu", None, False), ("gpu-mixed", None, True)]
  if len(gpus) > 1:
    plan.append(("gpu-1", "0", False))
  runs = {}
  for name, visible, mixed in plan:
    runs[name] = train_run(work, name, train_dir, val_dir, args.epochs, visible, mixed)
    print(f"  {name}: {runs[name]['seconds']:.0f} s", flush=True)
  print(format_runs(runs))
  problems = compare(runs, "cpu", args.tolerance)
  seconds = time.monotonic() - start
  if problems:
    print(f"gpu-check: FAILED in {seconds:.0f} s (logs in {work}):", file=sys.stderr)
    for problem in problems:
      print(f"  {problem}", file=sys.stderr)
    return 1
  print(f"gpu-check: passed in {seconds:.0f} s: losses finite and within "
        f"{100 * args.tolerance:.0f} % of the CPU run's")
  if args.work is None:
    shutil.rmtree(work, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
