"""`make bench`: throughput, cost, bytes and memory of rpn-preprocess and the trainer input.

    python -m bench.run [--quick] [--sizes 64,128] [--parts data,features,pipeline,trainer]

One run, one machine. Every figure is printed as a table and written to
bench/results.json; BENCHMARKS.md quotes the latest full run. Scratch data
(images, shards, logs) goes to bench/work/ (git-ignored). Each measurement
that needs a clean process runs as a child (bench/common.py:run_child), which
also gives its peak resident memory.

Parts:
  data      ILSVRC 2015-layout JPEG + XML datasets of the two sizes (synthetic,
            pipeline.sample_data: many sizes, long side mostly 300-500 px)
  features  backbone floor, targets cost, bytes per setting (bench/features.py)
  pipeline  rpn-preprocess end to end on DirectRunner at both sizes, as it
            ships, in the modes of PIPELINE_MODES: in-process; 2 worker
            processes with one TF thread each (make preprocess on 2 cores);
            the same with --num_shards 0; in-process with --shuffle_records
            (bench/pipeline_child.py)
  trainer   tf.data input rate vs raw read vs one training step, and rpn-train
            peak memory at both sizes (bench/trainer_child.py)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Dict, List, Optional

from bench import common

FULL_DET_TRAIN_IMAGES = 456_567  # ILSVRC2014 DET train
DEFAULT_SIZES = (64, 128)
QUICK_SIZES = (8, 16)
SEED = 1
NUM_SHARDS = 16  # the product default (pipeline.config.OutputConfig)

IN_PROCESS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
TWO_PROCESSES = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
ONE_TF_THREAD = ["--backbone_threads", "1"]
# name: (Beam args, extra rpn-preprocess args). Every mode is the product as
# it ships, with its own flags; nothing is patched. The first default mode is
# the reference whose shards feed the trainer part; the modes not in
# DEFAULT_MODES run on request (--modes).
PIPELINE_MODES = {
    "inproc_w1": (IN_PROCESS, []),
    "mp_w2_tf1": (TWO_PROCESSES, ONE_TF_THREAD),  # make preprocess on 2 cores
    "mp_w2_tf1_shards0": (TWO_PROCESSES, ONE_TF_THREAD + ["--num_shards", "0"]),
    "inproc_w1_shuffle": (IN_PROCESS, ["--shuffle_records"]),
    "mp_w2": (TWO_PROCESSES, []),  # TensorFlow's default threads in each worker
    "inproc_w1_shards0": (IN_PROCESS, ["--num_shards", "0"]),
    "mp_w2_tf1_shuffle": (TWO_PROCESSES, ONE_TF_THREAD + ["--shuffle_records"]),
}
DEFAULT_MODES = ("inproc_w1", "mp_w2_tf1", "mp_w2_tf1_shards0", "inproc_w1_shuffle")

# Projection inputs that are NOT measured here (BENCHMARKS.md says so).
DATAFLOW_CPU_MACHINE = ("n2-standard-8", 8)  # (machine type, vCPUs)
GPU_ASSUMED_IMAGES_PER_S = 50.0  # InceptionResNetV2, batch 1, one T4: an assumption
PROJECTION_WORKERS = (8, 16, 32, 64)


def _say(text: str) -> None:
  print(text, flush=True)


# ---------------------------------------------------------------------------
# Data


def ensure_datasets(sizes, seed: int) -> Dict[int, str]:
  """The largest dataset written once (reused while its stamp matches); smaller
  ones are hard links to its first images (image i depends only on seed and i)."""
  from pipeline import sample_data
  largest = max(sizes)
  roots = {}
  big = common.dataset_root(largest, seed)
  stamp = os.path.join(big, "bench_stamp.json")
  want = {"images": largest, "seed": seed}
  have = None
  if os.path.exists(stamp):
    with open(stamp) as f:
      have = json.load(f)
  if have != want:
    shutil.rmtree(big, ignore_errors=True)
    start = time.monotonic()
    sample_data.write_sample_dataset(big, num_train=largest, num_val=0, seed=seed)
    with open(stamp, "w") as f:
      json.dump(want, f)
    _say(f"  wrote {largest} images to {os.path.relpath(big, common.REPO)} "
         f"in {time.monotonic() - start:.1f} s")
  roots[largest] = big
  examples = common.list_examples(big)
  for n in sizes:
    if n == largest:
      continue
    root = common.dataset_root(n, seed)
    shutil.rmtree(root, ignore_errors=True)
    for e in examples[:n]:
      for src in (e["image_path"], e["annotation_path"]):
        if src is None:
          continue
        dst = os.path.join(root, os.path.relpath(src, big))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.link(src, dst)
    roots[n] = root
  return roots


def dataset_summary(root: str) -> Dict[str, object]:
  from PIL import Image
  examples = common.list_examples(root)
  sizes, jpeg_bytes = [], 0
  for e in examples:
    with Image.open(e["image_path"]) as im:
      sizes.append(im.size)
    jpeg_bytes += os.path.getsize(e["image_path"])
  longs = [max(s) for s in sizes]
  shorts = [min(s) for s in sizes]
  return {
      "images": len(examples),
      "distinct_sizes": len(set(sizes)),
      "short_side_min_median_max": [min(shorts), common.percentile(shorts, 50), max(shorts)],
      "long_side_min_median_max": [min(longs), common.percentile(longs, 50), max(longs)],
      "long_side_over_500": sum(1 for v in longs if v > 500),
      "jpeg_bytes_per_image": jpeg_bytes / max(len(examples), 1),
  }


# ---------------------------------------------------------------------------
# Parts


# A timing taken while other processes kept more than CONTAMINATED cores busy
# is taken again once (the run with less load is kept), while the retries
# stay within RETRY_BUDGET_S and the whole run within RETRY_DEADLINE_S.
CONTAMINATED = 0.3
RETRY_BUDGET_S = 120.0
RETRY_DEADLINE_S = 420.0
_RETRY = {"spent_s": 0.0, "start": time.monotonic()}


def _child_load(r) -> float:
  return r.get("other_cores_busy") or 0.0


def timed_child(name: str, module: str, args, env=None, timeout_s: float = 600.0,
                load_of=_child_load):
  """run_child, once more if the machine was busy with other work meanwhile
  (load_of(result): the other load during the part that is timed)."""
  r = common.run_child(name, module, args, env=env, timeout_s=timeout_s)
  attempts = [r]
  other = load_of(r) if r["rc"] == 0 and r["result"] else 0.0
  elapsed = time.monotonic() - _RETRY["start"]
  if (r["rc"] == 0 and other > CONTAMINATED and elapsed < RETRY_DEADLINE_S
      and _RETRY["spent_s"] + r["wall_s"] <= RETRY_BUDGET_S):
    _say(f"  {name}: other processes kept {other} cores busy: measuring again")
    again = common.run_child(name, module, args, env=env, timeout_s=timeout_s)
    _RETRY["spent_s"] += again["wall_s"]
    attempts.append(again)
    if again["rc"] == 0 and again["result"] and load_of(again) < other:
      r = again
  r = dict(r)
  r["attempts"] = [{"wall_s": a["wall_s"], "rc": a["rc"],
                    "other_cores_busy": load_of(a) if a["rc"] == 0 and a["result"] else None}
                   for a in attempts]
  return r


def _child_ok(r: Dict[str, object], what: str) -> bool:
  if r["rc"] == 0 and r["result"] is not None:
    return True
  _say(f"  !! {what} failed (rc {r['rc']}{', timed out' if r['timed_out'] else ''}); "
       f"log {r['log']}:\n{common.log_tail(r['log'])}")
  return False


def part_features(roots, sizes) -> Optional[Dict[str, object]]:
  n1, n2 = sizes
  args = ["--input", roots[n2], "--bytes_images", str(n1), "--repeat_pass",
          "--extractor_images", str(n2)]
  r = timed_child("features", "bench.features", args, timeout_s=400,
                  load_of=lambda c: _get(c, "result", "floor", "other_cores_busy", default=0.0))
  if not _child_ok(r, "features"):
    return None
  out = dict(r["result"])
  out["process"] = {k: r[k] for k in ("wall_s", "cpu_s", "cores_busy", "other_cores_busy",
                                      "peak_rss_mib", "attempts")}
  return out


def part_pipeline(roots, sizes, modes, keep) -> Dict[str, Dict[str, object]]:
  runs: Dict[str, Dict[str, object]] = {}
  for mode in modes:
    beam_args, extra = PIPELINE_MODES[mode]
    for n in sizes:
      name = f"pipeline_{mode}_n{n}"
      output = os.path.join(common.WORK, "out", f"{mode}_n{n}")
      shutil.rmtree(output, ignore_errors=True)
      argv = ["--", "--input", roots[n], "--split", common.SPLIT, "--output", output,
              "--backbone", "InceptionResNetV2", "--weights", "none",
              "--num_shards", str(NUM_SHARDS), "--runner", "DirectRunner", *beam_args, *extra]
      timeline = os.path.join(common.WORK, "timeline", name)
      shutil.rmtree(timeline, ignore_errors=True)
      r = timed_child(name, "bench.pipeline_child",
                      ["--timeline", timeline, *argv], timeout_s=600)
      ok = _child_ok(r, name)
      entry = {"mode": mode, "images": n, "beam_args": beam_args, "extra_args": extra, "ok": ok,
               "output": output}
      entry.update({k: r[k] for k in ("wall_s", "cpu_s", "cores_busy", "other_cores_busy",
                                      "peak_rss_mib", "vmhwm_mib", "attempts")})
      if ok:
        entry.update(r["result"])
      runs[name] = entry
      _say(f"  {name}: {r['wall_s']:.1f} s wall, {r['cores_busy']} cores busy "
           f"(others {r['other_cores_busy']})"
           + (f", {entry['counts']['records']} records" if ok else ""))
      if (mode, n) not in keep:
        shutil.rmtree(output, ignore_errors=True)
  return runs


def part_trainer(shards: Dict[int, str], sizes) -> Optional[Dict[str, object]]:
  n1, n2 = sizes
  out: Dict[str, object] = {}
  r = timed_child("trainer_input", "bench.trainer_child",
                  ["--mode", "input", "--data", shards[n2]], timeout_s=300)
  if _child_ok(r, "trainer input"):
    out["input"] = dict(r["result"], other_cores_busy=r["other_cores_busy"],
                        attempts=r["attempts"])
  # Peak memory of rpn-train at both sizes, and at the larger size over three
  # epochs (three times the records streamed through the same process).
  for n, epochs in ((n1, 1), (n2, 1), (n2, 3)):
    tag = f"train_n{n}" + ("" if epochs == 1 else f"_x{epochs}")
    job = os.path.join(common.WORK, "jobs", tag)
    shutil.rmtree(job, ignore_errors=True)
    r = common.run_child(f"trainer_{tag}", "bench.trainer_child",
                         ["--mode", "train", "--data", shards[n], "--job_dir", job,
                          "--epochs", str(epochs)], timeout_s=300)
    entry = {k: r[k] for k in ("wall_s", "cpu_s", "cores_busy", "other_cores_busy",
                               "peak_rss_mib", "vmhwm_mib", "rss_series_mib")}
    series = r["rss_series_mib"]
    if len(series) >= 6:
      end = series[-1][0]
      entry["rss_max_by_third_mib"] = [
          max([v for t, v in series if k * end / 3 < t <= (k + 1) * end / 3] or [0])
          for k in range(3)]
    entry["ok"] = _child_ok(r, f"rpn-train {tag}")
    if entry["ok"]:
      entry.update(r["result"])
    out[tag] = entry
    _say(f"  rpn-train {tag}: {r['wall_s']:.1f} s wall, peak RSS {r['peak_rss_mib']:.0f} MiB")
    shutil.rmtree(job, ignore_errors=True)
  return out


# ---------------------------------------------------------------------------
# Derived figures and the table


def _get(d, *keys, default=None):
  for k in keys:
    if not isinstance(d, dict) or k not in d:
      return default
    d = d[k]
  return d


def derive(results: Dict[str, object]) -> Dict[str, object]:
  """Ratios, marginal rates, projections: all from this run's raw figures."""
  sizes = results["sizes"]
  n1, n2 = sizes
  nproc = results["machine"]["nproc"]
  d: Dict[str, object] = {}
  feats = results.get("features") or {}
  floor_ips = _get(feats, "floor", "images_per_s")
  floor_ms = _get(feats, "floor", "ms_per_image_mean")
  d["floor_images_per_s"] = floor_ips
  d["floor_ms_per_image"] = floor_ms
  pipe = results.get("pipeline") or {}
  modes = sorted({v["mode"] for v in pipe.values()}, key=list(PIPELINE_MODES).index)
  per_mode = {}
  for mode in modes:
    a, b = pipe.get(f"pipeline_{mode}_n{n1}"), pipe.get(f"pipeline_{mode}_n{n2}")
    m: Dict[str, object] = {}
    for run in (a, b):
      if run and run.get("ok"):
        n = run["images"]
        m[f"wall_s_n{n}"] = run["wall_s"]
        m[f"e2e_images_per_s_n{n}"] = n / run["wall_s"]
        m[f"cores_busy_n{n}"] = run["cores_busy"]
        m[f"other_cores_busy_n{n}"] = run.get("other_cores_busy")
        workers = run["vmhwm_mib"].get("beam_worker")
        m[f"worker_peak_rss_mib_n{n}"] = max(workers or run["vmhwm_mib"].get("main") or [0])
        m[f"main_peak_rss_mib_n{n}"] = max(run["vmhwm_mib"].get("main") or [0])
        tl = run.get("timeline") or {}
        if tl.get("phases_s"):
          m[f"phases_s_n{n}"] = tl["phases_s"]
          per = tl["per_worker"]
          images_after_first = sum(w["images"] - 1 for w in per)
          m[f"forward_ms_per_image_n{n}"] = 1000 * sum(
              w["forward_s_after_first"] for w in per) / max(images_after_first, 1)
          m[f"gap_ms_per_image_n{n}"] = 1000 * sum(w["gaps_s"] for w in per) / max(
              images_after_first, 1)
          m[f"model_build_s_n{n}"] = max(w["model_build_s"] for w in per)
          m[f"images_per_worker_n{n}"] = [w["images"] for w in per]
        backbone = _get(run, "metrics", "backbone_ms")
        if backbone:
          # In-pipeline forward pass, without each worker's first call (trace).
          m[f"backbone_ms_per_image_n{n}"] = (
              (backbone["sum"] - backbone["max"]) / max(backbone["count"] - 1, 1))
          m[f"backbone_share_of_wall_n{n}"] = backbone["sum"] / 1000 / run["wall_s"]
    if a and b and a.get("ok") and b.get("ok") and b["wall_s"] > a["wall_s"]:
      marginal = (n2 - n1) / (b["wall_s"] - a["wall_s"])
      m["marginal_images_per_s"] = marginal
      m["marginal_ms_per_image"] = 1000 / marginal
      m["fixed_cost_s"] = a["wall_s"] - n1 / marginal
      m["marginal_cpu_s_per_image"] = (b["cpu_s"] - a["cpu_s"]) / (n2 - n1)
      m["marginal_images_per_s_per_core"] = marginal / nproc
      if floor_ips:
        m["marginal_vs_floor"] = marginal / floor_ips
        m["e2e_vs_floor_n2"] = (n2 / b["wall_s"]) / floor_ips
      floor_cpu = _get(feats, "floor", "cpu_s_per_image")
      if floor_cpu:
        m["floor_cpu_s_per_image_vs_marginal"] = floor_cpu / m["marginal_cpu_s_per_image"]
    per_mode[mode] = m
  d["pipeline"] = per_mode

  targets = feats.get("targets") or {}
  if floor_ms and "ms_per_image" in targets:
    d["targets_ms_per_image"] = targets["ms_per_image"]
    d["targets_fraction_of_backbone"] = targets["ms_per_image"] / floor_ms
    d["distinct_point_saving"] = {
        "sampled_anchors": targets["sampled_anchors"],
        "records_distinct_points": targets["records"],
        "records_per_image": targets["records_per_image"],
        "anchors_per_record": targets["sampled_anchors"] / max(targets["records"], 1),
        "saved_fraction": 1 - targets["records"] / max(targets["sampled_anchors"], 1),
    }
  by = feats.get("bytes") or {}
  projections = {}
  records_per_image = targets.get("records_per_image")
  anchors_per_image = (targets["sampled_anchors"] / targets["images"]
                       if "sampled_anchors" in targets else None)
  for key, v in by.items():
    if isinstance(v, dict) and "bytes_per_record" in v and records_per_image:
      # bytes/record measured on the first images; records/image over all of them.
      per_image = v["bytes_per_record"] * records_per_image
      projections[key] = {
          "bytes_per_record": v["bytes_per_record"],
          "bytes_per_image": per_image,
          "full_det_train_tb": per_image * FULL_DET_TRAIN_IMAGES / 1e12,
          "one_tile_per_sampled_anchor_tb": (v["bytes_per_record"] * anchors_per_image
                                             * FULL_DET_TRAIN_IMAGES / 1e12),
      }
  ref = pipe.get(f"pipeline_{modes[0]}_n{n2}") if modes else None
  if ref and ref.get("ok"):
    projections["pipeline_shards_bytes_per_image"] = ref["shard_bytes"] / n2
  d["bytes"] = projections

  d["projection"] = project(results, d)

  trainer = results.get("trainer") or {}
  inp = trainer.get("input") or {}
  if inp.get("dataset_records_per_s"):
    # The targets compare the steady-state rate (shuffle buffer full, as on
    # any dataset much larger than the 256 MB buffer).
    steady = inp.get("dataset_steady_records_per_s") or inp["dataset_records_per_s"]
    d["input_epoch_vs_raw_read"] = inp["dataset_records_per_s"] / inp["raw_read_records_per_s"]
    d["input_vs_raw_read"] = steady / inp["raw_read_records_per_s"]
    if inp.get("train_step_records_per_s"):
      d["input_vs_training"] = steady / inp["train_step_records_per_s"]
  return d


def project(results, d) -> Dict[str, object]:
  """Workers and hours for the full ILSVRC2014 DET train set, from this run's CPU figures.

  CPU: CPU seconds per image measured here (marginal, from the two sizes),
  assumed to scale linearly over the vCPUs of a Dataflow worker. GPU: an
  assumed rate (GPU_ASSUMED_IMAGES_PER_S), not measured here.
  """
  out: Dict[str, object] = {"images": FULL_DET_TRAIN_IMAGES,
                            "cpu_machine": DATAFLOW_CPU_MACHINE[0],
                            "gpu_assumed_images_per_s": GPU_ASSUMED_IMAGES_PER_S}
  machine, vcpus = DATAFLOW_CPU_MACHINE
  feats = results.get("features") or {}
  candidates = {"floor": _get(feats, "floor", "cpu_s_per_image")}
  for mode, m in (d.get("pipeline") or {}).items():
    candidates[mode] = m.get("marginal_cpu_s_per_image")
  for name, cpu_s in candidates.items():
    if not cpu_s:
      continue
    vcpu_hours = FULL_DET_TRAIN_IMAGES * cpu_s / 3600
    out[name] = {
        "cpu_s_per_image": cpu_s,
        "vcpu_hours": vcpu_hours,
        "images_per_s_per_worker": vcpus / cpu_s,
        "hours_by_workers": {w: vcpu_hours / (vcpus * w) for w in PROJECTION_WORKERS},
    }
  gpu_hours = FULL_DET_TRAIN_IMAGES / GPU_ASSUMED_IMAGES_PER_S / 3600
  out["gpu"] = {"gpu_hours": gpu_hours,
                "hours_by_workers": {w: gpu_hours / w for w in (1, 2, 4, 8)}}
  return out


def _fmt(value, spec=".2f", suffix=""):
  if value is None:
    return "n/a"
  try:
    return format(value, spec) + suffix
  except (TypeError, ValueError):
    return str(value)


def table(results: Dict[str, object]) -> str:
  d = results["derived"]
  n1, n2 = results["sizes"]
  feats = results.get("features") or {}
  rows: List[tuple] = []

  def row(section, name, value, target=""):
    rows.append((section, name, value, target))

  row("1 floor", "backbone images/s (bare tf.function, new shapes)",
      _fmt(d.get("floor_images_per_s")))
  row("1 floor", "backbone ms/image (mean | median)",
      f"{_fmt(d.get('floor_ms_per_image'), '.1f')} | "
      f"{_fmt(_get(feats, 'floor', 'ms_per_image_median'), '.1f')}")
  row("1 floor", "backbone CPU s/image | other load meanwhile (cores)",
      f"{_fmt(_get(feats, 'floor', 'cpu_s_per_image'), '.3f')} | "
      f"{_fmt(_get(feats, 'floor', 'other_cores_busy'))}")
  row("1 floor", "same images again, shapes seen: images/s (other load)",
      f"{_fmt(_get(feats, 'floor_repeat_shapes', 'images_per_s'))} "
      f"({_fmt(_get(feats, 'floor_repeat_shapes', 'other_cores_busy'))})")
  row("1 floor", "pipeline's FeatureExtractor, shapes seen: images/s (other load)",
      f"{_fmt(_get(feats, 'extractor', 'images_per_s'))} "
      f"({_fmt(_get(feats, 'extractor', 'other_cores_busy'))})")
  row("1 floor", "decode + prepare ms/image (PIL) | mean megapixels",
      f"{_fmt(feats.get('decode_ms_per_image'), '.1f')} | "
      f"{_fmt(feats.get('megapixels_per_image'), '.3f')}")
  for mode, m in (d.get("pipeline") or {}).items():
    label = f"2 {mode}"
    row(label, f"wall s at {n1} | {n2} images (other load, cores)",
        f"{_fmt(m.get(f'wall_s_n{n1}'), '.1f')} | {_fmt(m.get(f'wall_s_n{n2}'), '.1f')} "
        f"({_fmt(m.get(f'other_cores_busy_n{n1}'))} | {_fmt(m.get(f'other_cores_busy_n{n2}'))})")
    row(label, f"end-to-end images/s at {n2} (vs floor)",
        f"{_fmt(m.get(f'e2e_images_per_s_n{n2}'))} ({_fmt(m.get('e2e_vs_floor_n2'))})")
    row(label, "marginal images/s (vs floor) | per core",
        f"{_fmt(m.get('marginal_images_per_s'))} ({_fmt(m.get('marginal_vs_floor'))}) | "
        f"{_fmt(m.get('marginal_images_per_s_per_core'))}", ">= 0.9 of floor")
    row(label, "marginal CPU s/image (floor's / this)",
        f"{_fmt(m.get('marginal_cpu_s_per_image'), '.3f')} "
        f"({_fmt(m.get('floor_cpu_s_per_image_vs_marginal'))})")
    row(label, f"fixed cost s | cores busy at {n2}",
        f"{_fmt(m.get('fixed_cost_s'), '.1f')} | {_fmt(m.get(f'cores_busy_n{n2}'))}")
    phases = m.get(f"phases_s_n{n2}") or {}
    row(label, f"at {n2}: start-up | forward phase | tail s",
        f"{_fmt(phases.get('start_to_first_forward'), '.1f')} | "
        f"{_fmt(phases.get('first_to_last_forward'), '.1f')} | "
        f"{_fmt(phases.get('last_forward_to_end'), '.1f')}")
    row(label, f"at {n2}: forward ms/image/worker | gap ms/image | images per worker",
        f"{_fmt(m.get(f'forward_ms_per_image_n{n2}'), '.0f')} | "
        f"{_fmt(m.get(f'gap_ms_per_image_n{n2}'), '.0f')} | "
        f"{m.get(f'images_per_worker_n{n2}')}")
    row(label, f"peak RSS MiB, worker at {n1} | {n2}; main at {n1} | {n2}",
        f"{_fmt(m.get(f'worker_peak_rss_mib_n{n1}'), '.0f')} | "
        f"{_fmt(m.get(f'worker_peak_rss_mib_n{n2}'), '.0f')}; "
        f"{_fmt(m.get(f'main_peak_rss_mib_n{n1}'), '.0f')} | "
        f"{_fmt(m.get(f'main_peak_rss_mib_n{n2}'), '.0f')}", "flat")
  tg = feats.get("targets") or {}
  if "ms_per_image" in tg:
    stages = tg["ms_per_image_by_stage"]
    row("3 targets", "ms/image (targets | tiles | examples)",
        f"{tg['ms_per_image']:.2f} ({stages['compute_targets']:.2f} | "
        f"{stages['extract_tiles']:.2f} | {stages['make_example']:.2f})")
    row("3 targets", "fraction of backbone time", _fmt(d.get("targets_fraction_of_backbone"),
                                                       ".1%"), "< 5%")
  elif tg:
    row("3 targets", "skipped", tg.get("skipped", "?"))
  saving = d.get("distinct_point_saving")
  if saving:
    row("4 bytes", "records/image | sampled anchors per record",
        f"{saving['records_per_image']:.1f} | {saving['anchors_per_record']:.2f}")
    row("4 bytes", "records saved by the distinct-point rule",
        _fmt(saving["saved_fraction"], ".1%"))
  for key, p in (d.get("bytes") or {}).items():
    if isinstance(p, dict):
      row("4 bytes", f"{key}: bytes/record | MB/image | DET train TB (1 tile/anchor)",
          f"{p['bytes_per_record']:.0f} | {p['bytes_per_image'] / 1e6:.2f} | "
          f"{p['full_det_train_tb']:.2f} ({p['one_tile_per_sampled_anchor_tb']:.2f})")
  if _get(d, "bytes", "pipeline_shards_bytes_per_image"):
    row("4 bytes", "pipeline shards MB/image (float32, NONE)",
        f"{d['bytes']['pipeline_shards_bytes_per_image'] / 1e6:.2f}")
  trainer = results.get("trainer") or {}
  inp = trainer.get("input") or {}
  if inp:
    row("5 trainer", "raw read records/s (MB/s), warm cache",
        f"{_fmt(inp.get('raw_read_records_per_s'), '.0f')} "
        f"({_fmt(inp.get('raw_read_bytes_per_s', 0) / 1e6, '.0f')})")
    row("5 trainer", "TFRecordDataset alone records/s (no parse)",
        _fmt(inp.get("tfrecord_read_records_per_s"), ".0f"))
    row("5 trainer", "make_dataset records/s, unshuffled | whole epochs (vs raw read)",
        f"{_fmt(inp.get('dataset_unshuffled_records_per_s'), '.0f')} | "
        f"{_fmt(inp.get('dataset_records_per_s'), '.0f')} "
        f"({_fmt(d.get('input_epoch_vs_raw_read'))})")
    row("5 trainer", "make_dataset records/s, steady state (vs raw read)",
        f"{_fmt(inp.get('dataset_steady_records_per_s'), '.0f')} "
        f"({_fmt(d.get('input_vs_raw_read'))})", ">= 0.8")
    row("5 trainer", "train step records/s (batch 256) | input / training",
        f"{_fmt(inp.get('train_step_records_per_s'), '.0f')} | "
        f"{_fmt(d.get('input_vs_training'), '.1f')}x", ">= 5x")
    row("5 trainer", "rpn-train's check_shards records/s (scan before training)",
        _fmt(inp.get("check_shards_records_per_s"), ".0f"))
  peaks = [_get(trainer, tag, "peak_rss_mib") if _get(trainer, tag, "ok") else None
           for tag in (f"train_n{n1}", f"train_n{n2}", f"train_n{n2}_x3")]
  if any(p is not None for p in peaks):
    row("6 memory", f"rpn-train peak RSS MiB at {n1} | {n2} images | {n2} x 3 epochs",
        " | ".join(_fmt(p, ".0f") for p in peaks), "flat")
  x3 = trainer.get(f"train_n{n2}_x3") or {}
  if x3.get("rss_max_by_third_mib"):
    row("6 memory", f"rpn-train {n2} x 3 epochs: RSS max MiB in each third of the run",
        " | ".join(f"{v:.0f}" for v in x3["rss_max_by_third_mib"]), "flat")
  proj = d.get("projection") or {}
  for name in ["floor", *(d.get("pipeline") or {})]:
    p = proj.get(name)
    if p:
      hours = " | ".join(f"{w}: {h:.2f}" for w, h in p["hours_by_workers"].items())
      row("7 scale", f"DET train on {proj['cpu_machine']}, {name}: vCPU-h; h by workers",
          f"{p['vcpu_hours']:.0f}; {hours}")
  if proj.get("gpu"):
    hours = " | ".join(f"{w}: {h:.2f}" for w, h in proj["gpu"]["hours_by_workers"].items())
    row("7 scale", f"DET train, GPU at an ASSUMED {proj['gpu_assumed_images_per_s']:.0f} "
        "images/s: h by GPUs", hours)
  header = ("part", "figure", "value", "target")
  widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(4)]
  lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)).rstrip(),
           "  ".join("-" * w for w in widths)]
  for r in rows:
    lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help=f"smoke run: {QUICK_SIZES[0]} and {QUICK_SIZES[1]} images, "
                           "one pipeline mode")
  parser.add_argument("--sizes", help="two dataset sizes, e.g. 64,128")
  parser.add_argument("--parts", default="data,features,pipeline,trainer")
  parser.add_argument("--modes", help="pipeline modes, comma-separated: "
                      + ",".join(PIPELINE_MODES))
  parser.add_argument("--seed", type=int, default=SEED)
  parser.add_argument("--results", default=os.path.join(common.REPO, "bench", "results.json"))
  args = parser.parse_args(argv)
  if args.sizes:
    sizes = tuple(int(v) for v in args.sizes.split(","))
  else:
    sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES
  if len(sizes) != 2 or sizes[0] >= sizes[1]:
    parser.error(f"--sizes needs two increasing sizes, got {sizes}")
  wanted_modes = (args.modes.split(",") if args.modes
                  else ["inproc_w1"] if args.quick else list(DEFAULT_MODES))
  unknown = [m for m in wanted_modes if m not in PIPELINE_MODES]
  if unknown:
    parser.error(f"unknown --modes {unknown}; choose from {list(PIPELINE_MODES)}")
  modes = [m for m in PIPELINE_MODES if m in wanted_modes]
  parts = set(args.parts.split(","))
  start = time.monotonic()
  _RETRY["start"] = start
  os.makedirs(common.WORK, exist_ok=True)
  results: Dict[str, object] = {
      "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
      "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
      "machine": common.machine_info(),
      "sizes": list(sizes),
      "backbone": "InceptionResNetV2",
      "weights": "none (seeded random init; same speed as imagenet weights)",
      "quick": args.quick,
      "timings_s": {},
  }
  m = results["machine"]
  _say(f"bench: {m['nproc']} cores ({m['cpu_model']}), {m['mem_total_gib']} GiB, sizes {sizes}")

  _say("[data]")
  t = time.monotonic()
  roots = ensure_datasets(sizes, args.seed)
  results["dataset"] = {n: dataset_summary(roots[n]) for n in sizes}
  results["timings_s"]["data"] = time.monotonic() - t

  if "features" in parts:
    _say("[features] backbone floor, targets cost, bytes")
    t = time.monotonic()
    results["features"] = part_features(roots, sizes)
    results["timings_s"]["features"] = time.monotonic() - t

  shards = {}
  if "pipeline" in parts:
    _say("[pipeline] rpn-preprocess on DirectRunner")
    t = time.monotonic()
    keep_mode = modes[0] if modes else None
    keep = {(keep_mode, n) for n in sizes}
    results["pipeline"] = part_pipeline(roots, sizes, modes, keep)
    for n in sizes:
      run = results["pipeline"].get(f"pipeline_{keep_mode}_n{n}")
      if run and run.get("ok"):
        shards[n] = run["output"]
    results["timings_s"]["pipeline"] = time.monotonic() - t

  if "trainer" in parts:
    _say("[trainer] tf.data input, raw read, training step, rpn-train memory")
    t = time.monotonic()
    if len(shards) == 2:
      results["trainer"] = part_trainer(shards, sizes)
    else:
      _say("  skipped: needs the shards of the pipeline part at both sizes")
    results["timings_s"]["trainer"] = time.monotonic() - t

  results["timings_s"]["total"] = time.monotonic() - start
  results["derived"] = derive(results)
  os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
  with open(args.results, "w") as f:
    json.dump(results, f, indent=2, sort_keys=True, default=common._json_default)
  _say("")
  _say(table(results))
  _say(f"\ntotal {results['timings_s']['total']:.0f} s; figures in "
       f"{os.path.relpath(args.results, common.REPO)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
