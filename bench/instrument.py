"""A timeline of the pipeline's forward passes, to split its wall time into phases.

`timed_extractor` is passed to pipeline.run.run(extractor_factory=...): it
builds the product's own pipeline.backbone.FeatureExtractor (same net, same
weights, same tf.function) and appends (pid, start, end) of every call to
$BENCH_TIMELINE_DIR/<pid>.txt (wall-clock seconds, time.time()). Workers of
multi_processing inherit the variable. The cost is one short line per image.
$BENCH_BACKBONE_THREADS carries the run's --backbone_threads (the factory
takes no arguments, so the product's flag reaches the extractor this way).
"""
from __future__ import annotations

import os
import time
from typing import Dict, List

ENV = "BENCH_TIMELINE_DIR"
THREADS_ENV = "BENCH_BACKBONE_THREADS"


class _Timed:
  def __init__(self, extractor, path: str, built: float, setup_start: float):
    self._extractor = extractor
    self._path = path
    with open(path, "a") as f:
      f.write(f"setup {setup_start:.6f} {built:.6f}\n")

  def __getattr__(self, name):
    return getattr(self._extractor, name)

  def __call__(self, image):
    start = time.time()
    out = self._extractor(image)
    end = time.time()
    with open(self._path, "a") as f:
      f.write(f"call {start:.6f} {end:.6f}\n")
    return out


def timed_extractor():
  """Factory (picklable: module level) for ComputeFeaturesFn's extractor_factory."""
  from pipeline import backbone
  setup_start = time.time()
  threads = int(os.environ.get(THREADS_ENV) or 0) or None
  extractor = backbone.FeatureExtractor("InceptionResNetV2", "none", 0, threads)
  directory = os.environ[ENV]
  os.makedirs(directory, exist_ok=True)
  return _Timed(extractor, os.path.join(directory, f"{os.getpid()}.txt"), time.time(),
                setup_start)


def read_timeline(directory: str) -> Dict[str, object]:
  """Phases from the files of one run (times relative to the earliest setup)."""
  workers: List[Dict[str, object]] = []
  for name in sorted(os.listdir(directory)):
    setups, calls = [], []
    with open(os.path.join(directory, name)) as f:
      for line in f:
        kind, a, b = line.split()
        (setups if kind == "setup" else calls).append((float(a), float(b)))
    if calls:
      workers.append({"setup": setups[0], "calls": calls})
  if not workers:
    return {}
  first_setup = min(w["setup"][0] for w in workers)
  out = {"workers": len(workers), "per_worker": []}
  for w in workers:
    calls = w["calls"]
    busy = sum(b - a for a, b in calls)
    span = calls[-1][1] - calls[0][0]
    out["per_worker"].append({
        "images": len(calls),
        "model_build_s": w["setup"][1] - w["setup"][0],
        "first_call_s": calls[0][1] - calls[0][0],  # includes the trace
        "setup_at_s": w["setup"][0] - first_setup,
        "first_call_at_s": calls[0][0] - first_setup,
        "last_call_end_at_s": calls[-1][1] - first_setup,
        "forward_s": busy,
        "forward_s_after_first": busy - (calls[0][1] - calls[0][0]),
        "gaps_s": span - busy,  # between calls: decode, targets, Beam per element
    })
  out["first_setup_epoch_s"] = first_setup
  out["last_call_end_epoch_s"] = max(w["calls"][-1][1] for w in workers)
  out["first_call_epoch_s"] = min(w["calls"][0][0] for w in workers)
  return out
