"""bench/propose_scale.py's arithmetic: the marginal rate and the projection."""
import math

from bench import propose_scale


def _run(images, wall_s, workers_mib):
  return {"counts": {"images_ok": images}, "wall_s": wall_s,
          "vmhwm_mib": {"beam_worker": workers_mib}}


def test_marginal_rate_leaves_out_the_start_up():
  short, long = _run(24, 40.0, [900.0]), _run(240, 112.0, [910.0])
  rate = propose_scale.marginal(short, long, cores=2)
  assert rate["images_per_s"] == 3.0 and rate["images_per_s_per_core"] == 1.5
  assert propose_scale.marginal(long, short, cores=2) is None  # no extra images


def test_projection_for_det_train():
  p = propose_scale.projection(1.5, images=456_567, cores=256)
  assert math.isclose(p["core_hours"], 456_567 / 1.5 / 3600)
  assert math.isclose(p["hours"], p["core_hours"] / 256)


def test_table_names_every_figure():
  runs = {f"propose_{s}_{n}": _run(n, w, [900.0]) for s, n, w in (
      ("images", 24, 40.0), ("images", 240, 112.0), ("maps", 24, 20.0), ("maps", 240, 24.0))}
  result = {"backbone": "InceptionResNetV2", "cores": 2, "sizes": [24, 240], "runs": runs}
  for source in ("images", "maps"):
    rate = propose_scale.marginal(runs[f"propose_{source}_24"], runs[f"propose_{source}_240"], 2)
    result[source] = {"rate": rate, "projection": propose_scale.projection(
        rate["images_per_s_per_core"]), "worker_peak_rss_mib": {"short": 900, "long": 900}}
  text = propose_scale.table(result)
  assert "images  | 40.0 / 112.0 | 1.50 | 900 / 900" in text
  assert "maps    | 20.0 / 24.0 | 27.00" in text
