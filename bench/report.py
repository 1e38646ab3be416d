"""The derived figures and the printed table of one `make bench` run.

`derive` turns the raw figures the parts returned (a `Measurements`) into
ratios, marginal rates and projections; `table` prints both. Each section of
the table has its own function returning its rows.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

from bench import modes as modes_lib

FULL_DET_TRAIN_IMAGES = 456_567  # ILSVRC2014 DET train

# Projection inputs that are NOT measured here (BENCHMARKS.md says so).
DATAFLOW_CPU_MACHINE = ("n2-standard-8", 8)  # (machine type, vCPUs)
GPU_ASSUMED_IMAGES_PER_S = 50.0  # InceptionResNetV2, batch 1, one T4: an assumption
PROJECTION_WORKERS = (8, 16, 32, 64)

Row = Tuple[str, str, str, str]  # (section, figure, value, target)


@dataclasses.dataclass(frozen=True)
class Measurements:
  """The raw figures of one run, as each part returned them (None: part not run)."""
  sizes: Tuple[int, int]
  nproc: int
  features: Optional[Dict] = None
  pipeline: Optional[Dict] = None  # run name -> one rpn-preprocess run
  trainer: Optional[Dict] = None


def get_in(d, *keys, default=None):
  """d[k1][k2]..., or `default` where a key (or a dict on the way) is missing."""
  for k in keys:
    if not isinstance(d, dict) or k not in d:
      return default
    d = d[k]
  return d


def _fmt(value, spec=".2f", suffix=""):
  if value is None:
    return "n/a"
  try:
    return format(value, spec) + suffix
  except (TypeError, ValueError):
    return str(value)


# ---------------------------------------------------------------------------
# Derived figures


def run_name(mode: str, images: int) -> str:
  return f"pipeline_{mode}_n{images}"


def pipeline_modes(pipeline: Dict) -> List[str]:
  """The modes of the pipeline runs, in the order of PIPELINE_MODES (the order they run)."""
  return sorted({run["mode"] for run in pipeline.values()},
                key=list(modes_lib.PIPELINE_MODES).index)


def run_figures(run: Dict) -> Dict[str, object]:
  """Figures of one successful pipeline run, keyed with its size (_n<images>)."""
  n = run["images"]
  m: Dict[str, object] = {
      f"wall_s_n{n}": run["wall_s"],
      f"e2e_images_per_s_n{n}": n / run["wall_s"],
      f"cores_busy_n{n}": run["cores_busy"],
      f"other_cores_busy_n{n}": run.get("other_cores_busy"),
  }
  workers = run["vmhwm_mib"].get("beam_worker")
  m[f"worker_peak_rss_mib_n{n}"] = max(workers or run["vmhwm_mib"].get("main") or [0])
  m[f"main_peak_rss_mib_n{n}"] = max(run["vmhwm_mib"].get("main") or [0])
  tl = run.get("timeline") or {}
  if tl.get("phases_s"):
    m[f"phases_s_n{n}"] = tl["phases_s"]
    per = tl["per_worker"]
    images_after_first = max(sum(w["images"] - 1 for w in per), 1)
    m[f"forward_ms_per_image_n{n}"] = 1000 * sum(
        w["forward_s_after_first"] for w in per) / images_after_first
    m[f"gap_ms_per_image_n{n}"] = 1000 * sum(w["gaps_s"] for w in per) / images_after_first
    m[f"model_build_s_n{n}"] = max(w["model_build_s"] for w in per)
    m[f"images_per_worker_n{n}"] = [w["images"] for w in per]
  backbone = get_in(run, "metrics", "backbone_ms")
  if backbone:
    # In-pipeline forward pass, without each worker's first call (trace).
    m[f"backbone_ms_per_image_n{n}"] = (
        (backbone["sum"] - backbone["max"]) / max(backbone["count"] - 1, 1))
    m[f"backbone_share_of_wall_n{n}"] = backbone["sum"] / 1000 / run["wall_s"]
  return m


def marginal_figures(a: Dict, b: Dict, nproc: int, floor: Dict) -> Dict[str, object]:
  """Per added image, from the runs `a` and `b` of one mode at the two sizes."""
  n1, n2 = a["images"], b["images"]
  marginal = (n2 - n1) / (b["wall_s"] - a["wall_s"])
  m: Dict[str, object] = {
      "marginal_images_per_s": marginal,
      "marginal_ms_per_image": 1000 / marginal,
      "fixed_cost_s": a["wall_s"] - n1 / marginal,
      "marginal_cpu_s_per_image": (b["cpu_s"] - a["cpu_s"]) / (n2 - n1),
      "marginal_images_per_s_per_core": marginal / nproc,
  }
  if floor.get("images_per_s"):
    m["marginal_vs_floor"] = marginal / floor["images_per_s"]
    m["e2e_vs_floor_n2"] = (n2 / b["wall_s"]) / floor["images_per_s"]
  if floor.get("cpu_s_per_image"):
    m["floor_cpu_s_per_image_vs_marginal"] = (floor["cpu_s_per_image"]
                                              / m["marginal_cpu_s_per_image"])
  return m


def derive_mode(a: Optional[Dict], b: Optional[Dict], nproc: int, floor: Dict) -> Dict:
  """Figures of one mode from its runs at the two sizes (None: not run)."""
  ok = [run for run in (a, b) if run and run.get("ok")]
  m: Dict[str, object] = {}
  for run in ok:
    m.update(run_figures(run))
  if len(ok) == 2 and b["wall_s"] > a["wall_s"]:
    m.update(marginal_figures(a, b, nproc, floor))
  return m


def derive_pipeline(m: Measurements) -> Dict[str, Dict]:
  pipeline = m.pipeline or {}
  n1, n2 = m.sizes
  floor = get_in(m.features, "floor", default={})
  return {mode: derive_mode(pipeline.get(run_name(mode, n1)), pipeline.get(run_name(mode, n2)),
                            m.nproc, floor)
          for mode in pipeline_modes(pipeline)}


def plain_vs_make_preprocess(per_mode: Dict[str, Dict], n2: int) -> Dict[str, float]:
  """Throughput of `plain` over that of `make preprocess`'s mode (1: the same speed)."""
  plain = per_mode.get(modes_lib.PLAIN) or {}
  make = per_mode.get(modes_lib.MAKE_PREPROCESS) or {}
  ratios = {}
  for key in (f"e2e_images_per_s_n{n2}", "marginal_images_per_s"):
    if plain.get(key) and make.get(key):
      ratios[key] = plain[key] / make[key]
  return ratios


def derive_targets(features: Dict) -> Dict[str, object]:
  targets = features.get("targets") or {}
  floor_ms = get_in(features, "floor", "ms_per_image_mean")
  if not (floor_ms and "ms_per_image" in targets):
    return {}
  return {
      "targets_ms_per_image": targets["ms_per_image"],
      "targets_fraction_of_backbone": targets["ms_per_image"] / floor_ms,
      "distinct_point_saving": {
          "sampled_anchors": targets["sampled_anchors"],
          "records_distinct_points": targets["records"],
          "records_per_image": targets["records_per_image"],
          "anchors_per_record": targets["sampled_anchors"] / max(targets["records"], 1),
          "saved_fraction": 1 - targets["records"] / max(targets["sampled_anchors"], 1),
      },
  }


def derive_bytes(features: Dict, reference_run: Optional[Dict]) -> Dict[str, object]:
  """Bytes per record and image under each setting, projected to DET train."""
  targets = features.get("targets") or {}
  records_per_image = targets.get("records_per_image")
  anchors_per_image = (targets["sampled_anchors"] / targets["images"]
                       if "sampled_anchors" in targets else None)
  projections: Dict[str, object] = {}
  for key, v in (features.get("bytes") or {}).items():
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
  if reference_run and reference_run.get("ok"):
    projections["pipeline_shards_bytes_per_image"] = (reference_run["shard_bytes"]
                                                      / reference_run["images"])
  return projections


def derive_trainer(trainer: Dict) -> Dict[str, float]:
  inp = trainer.get("input") or {}
  if not inp.get("dataset_records_per_s"):
    return {}
  # The targets compare the steady-state rate (shuffle buffer full, as on
  # any dataset much larger than the 256 MB buffer).
  steady = inp.get("dataset_steady_records_per_s") or inp["dataset_records_per_s"]
  d = {"input_epoch_vs_raw_read": inp["dataset_records_per_s"] / inp["raw_read_records_per_s"],
       "input_vs_raw_read": steady / inp["raw_read_records_per_s"]}
  if inp.get("train_step_records_per_s"):
    d["input_vs_training"] = steady / inp["train_step_records_per_s"]
  return d


def project(features: Dict, per_mode: Dict[str, Dict]) -> Dict[str, object]:
  """Workers and hours for the full ILSVRC2014 DET train set, from this run's CPU figures.

  CPU: CPU seconds per image measured here (marginal, from the two sizes),
  assumed to scale linearly over the vCPUs of a Dataflow worker. GPU: an
  assumed rate (GPU_ASSUMED_IMAGES_PER_S), not measured here.
  """
  machine, vcpus = DATAFLOW_CPU_MACHINE
  out: Dict[str, object] = {"images": FULL_DET_TRAIN_IMAGES, "cpu_machine": machine,
                            "gpu_assumed_images_per_s": GPU_ASSUMED_IMAGES_PER_S}
  candidates = {"floor": get_in(features, "floor", "cpu_s_per_image")}
  for mode, m in per_mode.items():
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


def derive(m: Measurements) -> Dict[str, object]:
  """Ratios, marginal rates, projections: all from this run's raw figures."""
  features = m.features or {}
  per_mode = derive_pipeline(m)
  pipeline = m.pipeline or {}
  modes = pipeline_modes(pipeline)
  reference = pipeline.get(run_name(modes[0], m.sizes[1])) if modes else None
  return {
      "floor_images_per_s": get_in(features, "floor", "images_per_s"),
      "floor_ms_per_image": get_in(features, "floor", "ms_per_image_mean"),
      "pipeline": per_mode,
      "plain_vs_make_preprocess": plain_vs_make_preprocess(per_mode, m.sizes[1]),
      **derive_targets(features),
      "bytes": derive_bytes(features, reference),
      "projection": project(features, per_mode),
      **derive_trainer(m.trainer or {}),
  }


# ---------------------------------------------------------------------------
# The table


def floor_rows(feats: Dict, d: Dict) -> List[Row]:
  section = "1 floor"
  return [
      (section, "backbone images/s (bare tf.function, new shapes)",
       _fmt(d.get("floor_images_per_s")), ""),
      (section, "backbone ms/image (mean | median)",
       f"{_fmt(d.get('floor_ms_per_image'), '.1f')} | "
       f"{_fmt(get_in(feats, 'floor', 'ms_per_image_median'), '.1f')}", ""),
      (section, "backbone CPU s/image | other load meanwhile (cores)",
       f"{_fmt(get_in(feats, 'floor', 'cpu_s_per_image'), '.3f')} | "
       f"{_fmt(get_in(feats, 'floor', 'other_cores_busy'))}", ""),
      (section, "same images again, shapes seen: images/s (other load)",
       f"{_fmt(get_in(feats, 'floor_repeat_shapes', 'images_per_s'))} "
       f"({_fmt(get_in(feats, 'floor_repeat_shapes', 'other_cores_busy'))})", ""),
      (section, "pipeline's FeatureExtractor, shapes seen: images/s (other load)",
       f"{_fmt(get_in(feats, 'extractor', 'images_per_s'))} "
       f"({_fmt(get_in(feats, 'extractor', 'other_cores_busy'))})", ""),
      (section, "decode + prepare ms/image (PIL) | mean megapixels",
       f"{_fmt(feats.get('decode_ms_per_image'), '.1f')} | "
       f"{_fmt(feats.get('megapixels_per_image'), '.3f')}", ""),
  ]


def mode_rows(mode: str, m: Dict, n1: int, n2: int) -> List[Row]:
  section = f"2 {mode}"
  phases = m.get(f"phases_s_n{n2}") or {}
  return [
      (section, f"wall s at {n1} | {n2} images (other load, cores)",
       f"{_fmt(m.get(f'wall_s_n{n1}'), '.1f')} | {_fmt(m.get(f'wall_s_n{n2}'), '.1f')} "
       f"({_fmt(m.get(f'other_cores_busy_n{n1}'))} | "
       f"{_fmt(m.get(f'other_cores_busy_n{n2}'))})", ""),
      (section, f"end-to-end images/s at {n2} (vs floor)",
       f"{_fmt(m.get(f'e2e_images_per_s_n{n2}'))} ({_fmt(m.get('e2e_vs_floor_n2'))})", ""),
      (section, "marginal images/s (vs floor) | per core",
       f"{_fmt(m.get('marginal_images_per_s'))} ({_fmt(m.get('marginal_vs_floor'))}) | "
       f"{_fmt(m.get('marginal_images_per_s_per_core'))}", ">= 0.9 of floor"),
      (section, "marginal CPU s/image (floor's / this)",
       f"{_fmt(m.get('marginal_cpu_s_per_image'), '.3f')} "
       f"({_fmt(m.get('floor_cpu_s_per_image_vs_marginal'))})", ""),
      (section, f"fixed cost s | cores busy at {n2}",
       f"{_fmt(m.get('fixed_cost_s'), '.1f')} | {_fmt(m.get(f'cores_busy_n{n2}'))}", ""),
      (section, f"at {n2}: start-up | forward phase | tail s",
       f"{_fmt(phases.get('start_to_first_forward'), '.1f')} | "
       f"{_fmt(phases.get('first_to_last_forward'), '.1f')} | "
       f"{_fmt(phases.get('last_forward_to_end'), '.1f')}", ""),
      (section, f"at {n2}: forward ms/image/worker | gap ms/image | images per worker",
       f"{_fmt(m.get(f'forward_ms_per_image_n{n2}'), '.0f')} | "
       f"{_fmt(m.get(f'gap_ms_per_image_n{n2}'), '.0f')} | "
       f"{m.get(f'images_per_worker_n{n2}')}", ""),
      (section, f"peak RSS MiB, worker at {n1} | {n2}; main at {n1} | {n2}",
       f"{_fmt(m.get(f'worker_peak_rss_mib_n{n1}'), '.0f')} | "
       f"{_fmt(m.get(f'worker_peak_rss_mib_n{n2}'), '.0f')}; "
       f"{_fmt(m.get(f'main_peak_rss_mib_n{n1}'), '.0f')} | "
       f"{_fmt(m.get(f'main_peak_rss_mib_n{n2}'), '.0f')}", "flat"),
  ]


def pipeline_rows(d: Dict, n1: int, n2: int) -> List[Row]:
  rows = [row for mode, m in d["pipeline"].items() for row in mode_rows(mode, m, n1, n2)]
  ratios = d["plain_vs_make_preprocess"]
  if ratios:
    rows.append((f"2 {modes_lib.PLAIN}",
                 f"images/s / make preprocess's ({modes_lib.MAKE_PREPROCESS}): end to end at {n2} "
                 "| marginal",
                 f"{_fmt(ratios.get(f'e2e_images_per_s_n{n2}'))} | "
                 f"{_fmt(ratios.get('marginal_images_per_s'))}", "~1 (same speed)"))
  return rows


def targets_rows(feats: Dict, d: Dict) -> List[Row]:
  tg = feats.get("targets") or {}
  if "ms_per_image" not in tg:
    return []
  stages = tg["ms_per_image_by_stage"]
  return [
      ("3 targets", "ms/image (targets | tiles | examples)",
       f"{tg['ms_per_image']:.2f} ({stages['compute_targets']:.2f} | "
       f"{stages['extract_tiles']:.2f} | {stages['make_example']:.2f})", ""),
      ("3 targets", "fraction of backbone time",
       _fmt(d.get("targets_fraction_of_backbone"), ".1%"), "< 5%"),
  ]


def bytes_rows(d: Dict) -> List[Row]:
  rows: List[Row] = []
  saving = d.get("distinct_point_saving")
  if saving:
    rows += [("4 bytes", "records/image | sampled anchors per record",
              f"{saving['records_per_image']:.1f} | {saving['anchors_per_record']:.2f}", ""),
             ("4 bytes", "records saved by the distinct-point rule",
              _fmt(saving["saved_fraction"], ".1%"), "")]
  for key, p in d["bytes"].items():
    if isinstance(p, dict):
      rows.append(("4 bytes", f"{key}: bytes/record | MB/image | DET train TB (1 tile/anchor)",
                   f"{p['bytes_per_record']:.0f} | {p['bytes_per_image'] / 1e6:.2f} | "
                   f"{p['full_det_train_tb']:.2f} ({p['one_tile_per_sampled_anchor_tb']:.2f})",
                   ""))
  if d["bytes"].get("pipeline_shards_bytes_per_image"):
    rows.append(("4 bytes", "pipeline shards MB/image (float32, NONE)",
                 f"{d['bytes']['pipeline_shards_bytes_per_image'] / 1e6:.2f}", ""))
  return rows


def trainer_rows(trainer: Dict, d: Dict) -> List[Row]:
  inp = trainer.get("input") or {}
  if not inp:
    return []
  section = "5 trainer"
  return [
      (section, "raw read records/s (MB/s), warm cache",
       f"{_fmt(inp.get('raw_read_records_per_s'), '.0f')} "
       f"({_fmt(inp.get('raw_read_bytes_per_s', 0) / 1e6, '.0f')})", ""),
      (section, "TFRecordDataset alone records/s (no parse)",
       _fmt(inp.get("tfrecord_read_records_per_s"), ".0f"), ""),
      (section, "make_dataset records/s, unshuffled | whole epochs (vs raw read)",
       f"{_fmt(inp.get('dataset_unshuffled_records_per_s'), '.0f')} | "
       f"{_fmt(inp.get('dataset_records_per_s'), '.0f')} "
       f"({_fmt(d.get('input_epoch_vs_raw_read'))})", ""),
      (section, "make_dataset records/s, steady state (vs raw read)",
       f"{_fmt(inp.get('dataset_steady_records_per_s'), '.0f')} "
       f"({_fmt(d.get('input_vs_raw_read'))})", ">= 0.8"),
      (section, "train step records/s (batch 256) | input / training",
       f"{_fmt(inp.get('train_step_records_per_s'), '.0f')} | "
       f"{_fmt(d.get('input_vs_training'), '.1f')}x", ">= 5x"),
      (section, f"rpn-train's shard check records/s (s): default "
                f"({inp.get('check_shards_mode', 'framing')}) | --verify_shards",
       f"{_fmt(inp.get('check_shards_records_per_s'), '.0f')} "
       f"({_fmt(inp.get('check_shards_s'), '.3f')}) | "
       f"{_fmt(inp.get('check_shards_verify_records_per_s'), '.0f')} "
       f"({_fmt(inp.get('check_shards_verify_s'), '.3f')})", ""),
  ]


def memory_rows(trainer: Dict, n1: int, n2: int) -> List[Row]:
  rows: List[Row] = []
  peaks = [get_in(trainer, tag, "peak_rss_mib") if get_in(trainer, tag, "ok") else None
           for tag in (f"train_n{n1}", f"train_n{n2}", f"train_n{n2}_x3")]
  if any(p is not None for p in peaks):
    rows.append(("6 memory", f"rpn-train peak RSS MiB at {n1} | {n2} images | {n2} x 3 epochs",
                 " | ".join(_fmt(p, ".0f") for p in peaks), "flat"))
  thirds = get_in(trainer, f"train_n{n2}_x3", "rss_max_by_third_mib")
  if thirds:
    rows.append(("6 memory", f"rpn-train {n2} x 3 epochs: RSS max MiB in each third of the run",
                 " | ".join(f"{v:.0f}" for v in thirds), "flat"))
  return rows


def scale_rows(d: Dict) -> List[Row]:
  proj = d["projection"]
  rows: List[Row] = []
  for name in ["floor", *d["pipeline"]]:
    p = proj.get(name)
    if p:
      hours = " | ".join(f"{w}: {h:.2f}" for w, h in p["hours_by_workers"].items())
      rows.append(("7 scale", f"DET train on {proj['cpu_machine']}, {name}: vCPU-h; "
                   "h by workers", f"{p['vcpu_hours']:.0f}; {hours}", ""))
  hours = " | ".join(f"{w}: {h:.2f}" for w, h in proj["gpu"]["hours_by_workers"].items())
  rows.append(("7 scale", f"DET train, GPU at an ASSUMED {proj['gpu_assumed_images_per_s']:.0f} "
               "images/s: h by GPUs", hours, ""))
  return rows


def format_rows(rows: List[Row]) -> str:
  header = ("part", "figure", "value", "target")
  widths = [max(len(str(r[i])) for r in [*rows, header]) for i in range(4)]
  lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
           "  ".join("-" * w for w in widths)]
  for r in rows:
    lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
  return "\n".join(lines)


def table(m: Measurements, d: Dict) -> str:
  """The run's figures (`d`: derive(m)) as a text table, one section after another."""
  n1, n2 = m.sizes
  feats, trainer = m.features or {}, m.trainer or {}
  return format_rows([*floor_rows(feats, d), *pipeline_rows(d, n1, n2),
                      *targets_rows(feats, d), *bytes_rows(d), *trainer_rows(trainer, d),
                      *memory_rows(trainer, n1, n2), *scale_rows(d)])
