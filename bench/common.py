"""Helpers shared by the benchmark driver and its child processes (stdlib only,
so that a child's timed imports start from a bare interpreter).

Every measurement that needs a clean process (timings with a cold start,
memory figures) runs as a child: `python -m bench.<module> ... --result FILE`.
The driver starts it with `run_child`, which times it, polls the peak resident
memory (VmHWM) of the child and of every process it starts (Beam's workers),
and reaps it with os.wait4 so that its own rusage (CPU time, ru_maxrss over
the child and the descendants it waited for) belongs to that child alone.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from importlib import metadata
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where the project's own machines keep data no user has: a shared/ folder
# beside the checkout. Every path below can be given by its variable instead.
SHARED = os.path.join(os.path.dirname(REPO), "shared")


def vgg16_weights() -> str:
  """The real VGG16 conv weights file: RPN_VGG16_WEIGHTS, else the shared folder's copy."""
  return os.environ.get("RPN_VGG16_WEIGHTS") or os.path.join(
      SHARED, "weights", "vgg16_hed_notop.weights.h5")


def real_photos() -> str:
  """The real-photo dataset root (DET/train, DET/val): RPN_REAL_PHOTOS, else the shared copy."""
  return os.environ.get("RPN_REAL_PHOTOS") or os.path.join(SHARED, "data", "coco_real")
WORK = os.path.join(REPO, "bench", "work")
SPLIT = "DET/train"

# Quieter TensorFlow in every child (its C++ INFO lines are not figures).
CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


# ---------------------------------------------------------------------------
# The machine


def machine_info() -> Dict[str, object]:
  cpu_model = "unknown"
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu_model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  mem_kib = 0
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemTotal:"):
          mem_kib = int(line.split()[1])
  except OSError:
    pass
  versions = {}
  for dist in ("apache-beam", "tensorflow-cpu", "tensorflow", "keras", "numpy"):
    with contextlib.suppress(metadata.PackageNotFoundError):
      versions[dist] = metadata.version(dist)
  return {
      "nproc": os.cpu_count(),
      "sched_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
      "cpu_model": cpu_model,
      "mem_total_gib": round(mem_kib / 2**20, 1),
      "python": platform.python_version(),
      "platform": platform.platform(),
      "versions": versions,
  }


# ---------------------------------------------------------------------------
# Child processes


def _children_map() -> Dict[int, List[int]]:
  children: Dict[int, List[int]] = {}
  for name in os.listdir("/proc"):
    if not name.isdigit():
      continue
    try:
      with open(f"/proc/{name}/stat") as f:
        stat = f.read()
    except OSError:
      continue
    # pid (comm) state ppid ...; comm may hold spaces and parentheses.
    ppid = int(stat.rsplit(")", 1)[1].split()[1])
    children.setdefault(ppid, []).append(int(name))
  return children


def _descendants(root: int) -> List[int]:
  children = _children_map()
  out, stack = [], [root]
  while stack:
    pid = stack.pop()
    out.append(pid)
    stack.extend(children.get(pid, ()))
  return out


def _status_kib(pid: int, key: str) -> Optional[int]:
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith(key + ":"):
          return int(line.split()[1])
  except OSError:
    return None
  return None


def _cmdline(pid: int) -> str:
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
  except OSError:
    return ""


class _MemoryPoller(threading.Thread):
  """Polls VmHWM (peak RSS) of a process tree until stopped."""

  def __init__(self, root: int, interval_s: float = 0.25):
    super().__init__(daemon=True)
    self.root = root
    self.interval_s = interval_s
    self.peaks: Dict[int, int] = {}  # pid -> VmHWM KiB
    self.root_rss: List[tuple] = []  # (seconds since start, VmRSS KiB) of the root
    self._start = time.monotonic()
    self.cmdlines: Dict[int, str] = {}
    self._halt = threading.Event()

  def run(self):
    while not self._halt.is_set():
      self.sample()
      self._halt.wait(self.interval_s)

  def sample(self):
    try:
      pids = _descendants(self.root)
    except OSError:
      return
    rss = _status_kib(self.root, "VmRSS")
    if rss is not None:
      self.root_rss.append((time.monotonic() - self._start, rss))
    for pid in pids:
      hwm = _status_kib(pid, "VmHWM")
      if hwm is None:
        continue
      if pid not in self.cmdlines:
        self.cmdlines[pid] = _cmdline(pid)
      self.peaks[pid] = max(self.peaks.get(pid, 0), hwm)

  def stop(self):
    self._halt.set()
    self.join()


def system_cpu_seconds() -> float:
  """CPU seconds the whole machine has been busy (all processes, /proc/stat)."""
  try:
    with open("/proc/stat") as f:
      fields = f.readline().split()[1:]
  except OSError:
    return float("nan")
  values = [int(v) for v in fields]
  idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
  busy = sum(values[:8]) - idle  # user nice system idle iowait irq softirq steal
  return busy / os.sysconf("SC_CLK_TCK")


class QuietGate:
  """Waits (bounded) for the machine to be idle before a measurement starts.

  Other people's jobs on a shared machine slow every figure down; each
  measurement waits until the rest of the machine uses under `threshold`
  cores over a 1 s window, at most `per_wait_s` each time and `budget_s` in
  all, and records the load it saw. One gate serves a whole run (the driver
  makes it and passes it to run_child), so that the budget is the run's.
  """

  def __init__(self, threshold: float = 0.25, per_wait_s: float = 15.0, budget_s: float = 60.0):
    self.threshold = threshold
    self.per_wait_s = per_wait_s
    self.budget_s = budget_s
    self.waited_s = 0.0

  def wait(self) -> Dict[str, float]:
    start = time.monotonic()
    load = float("nan")
    while True:
      before = system_cpu_seconds()
      time.sleep(1.0)
      load = system_cpu_seconds() - before
      waited = time.monotonic() - start
      if (load < self.threshold or waited >= self.per_wait_s
          or self.waited_s + waited >= self.budget_s):
        break
    self.waited_s += time.monotonic() - start
    return {"load_before_cores": round(load, 2), "waited_s": round(time.monotonic() - start, 1)}


def _process_kind(pid: int, root: int, cmdline: str) -> str:
  if pid == root:
    return "main"
  if "sdk_worker_main" in cmdline or "worker_pool_main" in cmdline:
    return "beam_worker"
  return "other"


def _child_env() -> Dict[str, str]:
  env = dict(os.environ)
  env.update(CHILD_ENV)
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _reap(process: subprocess.Popen, timeout_s: float):
  """(exit code, rusage, timed out) of `process`, killed with its session after timeout_s."""
  deadline = time.monotonic() + timeout_s
  timed_out = False
  while True:
    pid, status, rusage = os.wait4(process.pid, os.WNOHANG)
    if pid:
      break
    if time.monotonic() > deadline:
      timed_out = True
      os.killpg(process.pid, signal.SIGKILL)  # the child's own session: only what it started
      pid, status, rusage = os.wait4(process.pid, 0)
      break
    time.sleep(0.05)
  return os.waitstatus_to_exitcode(status), rusage, timed_out


def _peaks_by_kind(poller: _MemoryPoller) -> Dict[str, List[float]]:
  """VmHWM peaks in MiB by process kind (main / beam_worker / other), largest first."""
  by_kind: Dict[str, List[float]] = {}
  for pid, peak in poller.peaks.items():
    kind = _process_kind(pid, poller.root, poller.cmdlines.get(pid, ""))
    by_kind.setdefault(kind, []).append(round(peak / 1024, 1))
  return {k: sorted(v, reverse=True) for k, v in by_kind.items()}


def _read_result(path: str) -> Optional[Dict[str, object]]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def run_child(name: str, module: str, args: Sequence[str], gate: QuietGate,
              timeout_s: float = 600.0) -> Dict[str, object]:
  """Runs `python -m module --result FILE args` once `gate` lets it; returns its
  figures and its result.

  Returns wall_s, cpu_s (user + system of the child and the descendants it
  reaped), cores_busy (cpu_s / wall_s), other_cores_busy (the rest of the
  machine meanwhile), peak_rss_mib (ru_maxrss from wait4),
  per-process VmHWM peaks by kind (main / beam_worker / other), rc, the
  child's JSON result (or None) and the log path.
  """
  log_dir = os.path.join(WORK, "logs")
  os.makedirs(log_dir, exist_ok=True)
  result_path = os.path.join(log_dir, f"{name}.json")
  log_path = os.path.join(log_dir, f"{name}.log")
  if os.path.exists(result_path):
    os.remove(result_path)
  quiet = gate.wait()
  command = [sys.executable, "-m", module, "--result", result_path, *args]
  with open(log_path, "w") as log:
    log.write("$ " + " ".join(command) + "\n")
    log.flush()
    start = time.monotonic()
    system_start = system_cpu_seconds()
    process = subprocess.Popen(command, cwd=REPO, env=_child_env(), stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    poller = _MemoryPoller(process.pid)
    poller.start()
    rc, rusage, timed_out = _reap(process, timeout_s)
    wall_s = time.monotonic() - start
    system_s = system_cpu_seconds() - system_start
    poller.stop()
  cpu_s = rusage.ru_utime + rusage.ru_stime
  return {
      "name": name,
      "rc": rc,
      "timed_out": timed_out,
      "wall_s": round(wall_s, 3),
      "cpu_s": round(cpu_s, 2),
      "cores_busy": round(cpu_s / wall_s, 2) if wall_s > 0 else None,
      # Cores kept busy by everything else on the machine meanwhile (other
      # users' jobs): figures taken with this well above 0 are contaminated.
      "other_cores_busy": round(max(system_s - cpu_s, 0.0) / wall_s, 2) if wall_s > 0 else None,
      "peak_rss_mib": round(rusage.ru_maxrss / 1024, 1),  # Linux: KiB
      "vmhwm_mib": _peaks_by_kind(poller),
      # Resident memory of the child over time (one sample a second or so).
      "rss_series_mib": [(round(t, 1), round(kib / 1024)) for t, kib in
                         poller.root_rss[::max(1, int(1 / poller.interval_s))]],
      "result": _read_result(result_path),
      "log": os.path.relpath(log_path, REPO),
      "quiet_gate": quiet,
  }


def log_tail(path: str, lines: int = 25) -> str:
  full = path if os.path.isabs(path) else os.path.join(REPO, path)
  try:
    with open(full, errors="replace") as f:
      return "".join(f.readlines()[-lines:])
  except OSError:
    return ""


def write_result(path: str, result: Dict[str, object]) -> None:
  """Children write their figures with this (atomic rename)."""
  temp = path + ".tmp"
  with open(temp, "w") as f:
    json.dump(result, f, indent=2, sort_keys=True, default=json_default)
  os.replace(temp, path)


def json_default(value):
  """json.dump's `default` for numpy scalars and arrays."""
  import numpy as np  # lazily: this module stays stdlib-only at import (module doc)
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON serializable: {type(value).__name__}")


# ---------------------------------------------------------------------------
# The benchmark dataset


def dataset_root(num_images: int, seed: int) -> str:
  return os.path.join(WORK, "data", f"n{num_images}_seed{seed}")


def list_examples(root: str, split: str = SPLIT) -> List[Dict[str, str]]:
  """[{image_id, image_path, annotation_path}] of the ILSVRC 2015 layout under root, sorted."""
  images_dir = os.path.join(root, "Data", split)
  annotations_dir = os.path.join(root, "Annotations", split)
  out = []
  for dirpath, _, filenames in os.walk(images_dir):
    for filename in filenames:
      if not filename.endswith(".JPEG"):
        continue
      path = os.path.join(dirpath, filename)
      image_id = os.path.splitext(os.path.relpath(path, images_dir))[0]
      xml = os.path.join(annotations_dir, image_id + ".xml")
      out.append({"image_id": image_id, "image_path": path,
                  "annotation_path": xml if os.path.exists(xml) else None})
  return sorted(out, key=lambda e: e["image_id"])


def dir_bytes(path: str, prefix: str = "") -> int:
  total = 0
  for name in os.listdir(path):
    full = os.path.join(path, name)
    if name.startswith(prefix) and os.path.isfile(full):
      total += os.path.getsize(full)
  return total


def percentile(values: Sequence[float], q: float) -> float:
  if not values:
    return float("nan")
  ordered = sorted(values)
  k = (len(ordered) - 1) * q / 100.0
  lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
  return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
