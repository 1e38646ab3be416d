"""`python -m bench.propose_scale`: rpn-propose's throughput and worker memory, from
images and from maps, and the projection for ILSVRC DET train.

    python -m bench.propose_scale [--out out/bench_propose] [--images 24] [--factor 10]
                                  [--backbone InceptionResNetV2] [--seed 0]

On the benchmark's synthetic ILSVRC-sized images (bench/run.py's datasets:
--images of them, and --factor times as many), with the backbone's random
weights (speed does not depend on them) and a random RPN head saved as a
job of the maps dataset's manifest (proposal speed does not depend on its
training either):

  1. rpn-preprocess --layout maps of both datasets (the maps to propose from);
  2. rpn-propose from the images and from the maps of each dataset, each in a
     fresh process (bench.common.run_child: wall and CPU time, the peak
     resident memory of every Beam worker), with rpn-propose's own local
     defaults (DirectRunner, one worker process per core).

The rate per core is the marginal one, (images of the long run - of the
short run) / (its seconds - theirs) / cores, which leaves out the fixed
start-up (TensorFlow and the backbone in every worker); the worker memory
of the long run against the short run says whether it stays flat. Writes
OUT/propose_scale.json and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from bench import common

DET_TRAIN_IMAGES = 456_567  # ILSVRC2014 DET train
DATAFLOW_CORES = 256  # e.g. 64 workers of 4 vCPUs, for the projection


# ---------------------------------------------------------------------------
# Children (run in fresh processes by the driver)


def child_job(maps_dir: str, job_dir: str, hidden: int) -> Dict[str, object]:
  """A job of the maps dataset's manifest with a random head (its weights do
  not change how fast it proposes)."""
  from pipeline.io import manifest as manifest_lib
  from trainer import model as model_lib
  manifest = manifest_lib.Manifest.load(maps_dir)
  tile_model = model_lib.build_tile_model(manifest.feature_channels, manifest.num_anchors,
                                          hidden)
  model_lib.save_rpn(job_dir, tile_model, manifest, {"hidden": hidden, "epochs": 0})
  return {"job_dir": job_dir}


def child_propose(job_dir: str, source: Sequence[str], output: str) -> Dict[str, object]:
  """rpn-propose with its defaults into output; its summary and counters."""
  from trainer import cli as trainer_cli
  from trainer import propose_pipeline
  args, beam_args = trainer_cli.propose_parser().parse_with_beam(
      ["--job_dir", job_dir, *source, "--output", output, "--draw", "0"])
  settings = propose_pipeline.propose(trainer_cli.check_propose(args), beam_args)
  return {"counts": settings["counts"], "seconds": settings["seconds"],
          "shards": len(settings["shards"]), "metrics": settings["metrics"]}


# ---------------------------------------------------------------------------
# The driver


def preprocess_maps(root: str, output: str, backbone: str) -> float:
  """rpn-preprocess --layout maps of root's DET/train (its defaults otherwise); seconds."""
  if os.path.exists(os.path.join(output, "manifest.json")):
    with open(os.path.join(output, "manifest.json")) as f:
      if json.load(f).get("backbone") == backbone:
        return 0.0  # made by an earlier run of this benchmark
  start = time.monotonic()
  command = [sys.executable, "-m", "pipeline.commands.preprocess", "--input", root, "--split",
             common.SPLIT, "--output", output, "--backbone", backbone, "--weights", "none",
             "--layout", "maps"]
  done = subprocess.run(command, cwd=common.REPO, env=dict(os.environ, **common.CHILD_ENV),
                        capture_output=True, text=True, timeout=3600)
  if done.returncode != 0:
    raise RuntimeError(f"rpn-preprocess failed: {done.stderr[-2000:]}")
  return time.monotonic() - start


def marginal(short: Dict, long: Dict, cores: int) -> Optional[Dict[str, float]]:
  """The long run's extra images over its extra seconds, per core."""
  images = long["counts"]["images_ok"] - short["counts"]["images_ok"]
  seconds = long["wall_s"] - short["wall_s"]
  if images <= 0 or seconds <= 0:
    return None
  return {"images_per_s": images / seconds, "images_per_s_per_core": images / seconds / cores}


def projection(images_per_s_per_core: float, images: int = DET_TRAIN_IMAGES,
               cores: int = DATAFLOW_CORES) -> Dict[str, float]:
  """Core-hours for `images` at that rate, and hours on `cores` cores."""
  core_hours = images / images_per_s_per_core / 3600
  return {"images": images, "core_hours": core_hours, "cores": cores,
          "hours": core_hours / cores}


def run(args: argparse.Namespace) -> Dict[str, object]:
  from bench import run as bench_run
  sizes = [args.images, args.images * args.factor]
  roots = bench_run.ensure_datasets(sizes, args.seed)
  cores = os.cpu_count() or 1
  gate = common.QuietGate()
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  result: Dict[str, object] = {"machine": common.machine_info(), "backbone": args.backbone,
                               "sizes": sizes, "cores": cores, "runs": {}}
  for n in sizes:
    maps = os.path.join(out, f"maps_{args.backbone}_{n}")
    seconds = preprocess_maps(roots[n], maps, args.backbone)
    print(f"maps of {n} images: {maps} ({seconds:.0f} s)", flush=True)
  job = os.path.join(out, f"job_{args.backbone}")
  made = common.run_child("propose_job", "bench.propose_scale", [
      "--child", "job", "--maps", os.path.join(out, f"maps_{args.backbone}_{sizes[0]}"),
      "--job", job], gate)
  if made["rc"] != 0:
    raise RuntimeError(f"making the job failed: {common.log_tail(made['log'])}")
  for n in sizes:
    for source in ("images", "maps"):
      name = f"propose_{source}_{n}"
      flags = (["--input", roots[n], "--split", common.SPLIT] if source == "images"
               else ["--maps", os.path.join(out, f"maps_{args.backbone}_{n}")])
      r = common.run_child(name, "bench.propose_scale", [
          "--child", "propose", "--job", job, "--output", os.path.join(out, name),
          "--", *flags], gate, timeout_s=3600)
      if r["rc"] != 0 or not r["result"]:
        raise RuntimeError(f"{name} failed: {common.log_tail(r['log'])}")
      r.update(r.pop("result"))
      r.pop("rss_series_mib", None)
      result["runs"][name] = r
      print(f"{name}: {r['counts']['images_ok']} images in {r['wall_s']:.1f} s, workers' "
            f"peak RSS {r['vmhwm_mib'].get('beam_worker', [])} MiB", flush=True)
  runs = result["runs"]
  for source in ("images", "maps"):
    short, long = runs[f"propose_{source}_{sizes[0]}"], runs[f"propose_{source}_{sizes[1]}"]
    rate = marginal(short, long, cores)
    result[source] = {
        "rate": rate,
        "worker_peak_rss_mib": {"short": max(short["vmhwm_mib"].get("beam_worker", [0])),
                                "long": max(long["vmhwm_mib"].get("beam_worker", [0]))},
        "projection": projection(rate["images_per_s_per_core"]) if rate else None,
    }
  with open(os.path.join(out, "propose_scale.json"), "w") as f:
    json.dump(result, f, indent=2, default=common.json_default)
  return result


def table(result: Dict[str, object]) -> str:
  sizes = result["sizes"]
  lines = [f"rpn-propose, {result['backbone']} (random weights), {result['cores']} cores, "
           f"DirectRunner defaults; {sizes[0]} and {sizes[1]} images",
           "source  | wall s short / long | images/s/core (marginal) | worker peak RSS MiB "
           f"short / long | DET train ({DET_TRAIN_IMAGES:,} images): core-hours, hours on "
           f"{DATAFLOW_CORES} cores"]
  for source in ("images", "maps"):
    s = result[source]
    runs = [result["runs"][f"propose_{source}_{n}"]["wall_s"] for n in sizes]
    rate = s["rate"]["images_per_s_per_core"] if s["rate"] else float("nan")
    p = s["projection"] or {"core_hours": float("nan"), "hours": float("nan")}
    lines.append(f"{source:<7} | {runs[0]:.1f} / {runs[1]:.1f} | {rate:.2f} | "
                 f"{s['worker_peak_rss_mib']['short']:.0f} / "
                 f"{s['worker_peak_rss_mib']['long']:.0f} | "
                 f"{p['core_hours']:.0f}, {p['hours']:.1f}")
  return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m bench.propose_scale",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="out/bench_propose")
  parser.add_argument("--images", type=int, default=24)
  parser.add_argument("--factor", type=int, default=10)
  parser.add_argument("--backbone", default="InceptionResNetV2")
  parser.add_argument("--seed", type=int, default=0)
  # child modes (the driver starts them through bench.common.run_child)
  parser.add_argument("--child", choices=("job", "propose"), help=argparse.SUPPRESS)
  parser.add_argument("--result", help=argparse.SUPPRESS)
  parser.add_argument("--maps", help=argparse.SUPPRESS)
  parser.add_argument("--job", help=argparse.SUPPRESS)
  parser.add_argument("--output", help=argparse.SUPPRESS)
  parser.add_argument("source", nargs="*", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child == "job":
    common.write_result(args.result, child_job(args.maps, args.job, hidden=512))
    return 0
  if args.child == "propose":
    common.write_result(args.result, child_propose(args.job, args.source, args.output))
    return 0
  print(table(run(args)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
