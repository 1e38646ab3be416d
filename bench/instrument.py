"""A timeline of the pipeline's forward passes, to split its wall time into phases.

`timed_extractor(directory, backbone_config, seed)`, bound to its arguments
with functools.partial, is passed to pipeline.commands.preprocess.run(extractor_factory=...):
it builds the product's own pipeline.model.extractor.FeatureExtractor from the run's
own BackboneConfig (same net, same weights, same TensorFlow threads, same
tf.function) and appends (start, end) of every call to DIRECTORY/<pid>.txt
(wall-clock seconds, time.time()). The partial travels to the worker
processes with the DoFn. The cost is one short line per image.
"""
from __future__ import annotations

import os
import time
from typing import Dict, List

from pipeline.core import config as config_lib
from pipeline.model import extractor as extractor_lib


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


def timed_extractor(directory: str, cfg: config_lib.BackboneConfig, seed: int):
  """The extractor ComputeFeaturesFn would build from `cfg` and `seed`, timed.

  Module level, so that a functools.partial of it pickles by reference."""
  setup_start = time.time()
  extractor = extractor_lib.FeatureExtractor(cfg.backbone, cfg.weights, seed, cfg.threads,
                                        feature_layer=cfg.feature_layer)
  os.makedirs(directory, exist_ok=True)
  return _Timed(extractor, os.path.join(directory, f"{os.getpid()}.txt"), time.time(),
                setup_start)


def _worker_figures(setup, calls, first_setup: float) -> Dict[str, object]:
  busy = sum(b - a for a, b in calls)
  span = calls[-1][1] - calls[0][0]
  return {
      "images": len(calls),
      "model_build_s": setup[1] - setup[0],
      "first_call_s": calls[0][1] - calls[0][0],  # includes the trace
      "setup_at_s": setup[0] - first_setup,
      "first_call_at_s": calls[0][0] - first_setup,
      "last_call_end_at_s": calls[-1][1] - first_setup,
      "forward_s": busy,
      "forward_s_after_first": busy - (calls[0][1] - calls[0][0]),
      "gaps_s": span - busy,  # between calls: decode, targets, Beam per element
  }


def _read_worker(path: str):
  """(setups, calls) of one worker's file: lists of (start, end)."""
  setups, calls = [], []
  with open(path) as f:
    for line in f:
      kind, a, b = line.split()
      (setups if kind == "setup" else calls).append((float(a), float(b)))
  return setups, calls


def read_timeline(directory: str) -> Dict[str, object]:
  """Phases from the files of one run (times relative to the earliest setup)."""
  workers: List[Dict[str, object]] = []
  for name in sorted(os.listdir(directory)):
    setups, calls = _read_worker(os.path.join(directory, name))
    if calls:
      workers.append({"setup": setups[0], "calls": calls})
  if not workers:
    return {}
  first_setup = min(w["setup"][0] for w in workers)
  return {
      "workers": len(workers),
      "per_worker": [_worker_figures(w["setup"], w["calls"], first_setup) for w in workers],
      "first_setup_epoch_s": first_setup,
      "last_call_end_epoch_s": max(w["calls"][-1][1] for w in workers),
      "first_call_epoch_s": min(w["calls"][0][0] for w in workers),
  }
