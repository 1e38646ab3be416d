"""Pictures of anchor coverage, drawn with matplotlib (headless, Agg backend).

Each function returns PNG bytes, so that callers write them through
pipeline.io.storage to any filesystem.
"""
from __future__ import annotations

import io
from typing import Dict

import numpy as np

from pipeline.core import coverage

COLOURS = {"current": "tab:red", "suggested": "tab:green"}


def _figure(width: float = 7.0, height: float = 4.5):
  import matplotlib  # lazy: only the commands that draw need it
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  return plt, plt.figure(figsize=(width, height), dpi=110)


def _png(plt, fig) -> bytes:
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", bbox_inches="tight")
  plt.close(fig)
  return buffer.getvalue()


def coverage_png(sets: Dict[str, Dict], title: str) -> bytes:
  """Coverage curves: the fraction of gt boxes whose best anchor IoU is >= t, against t.

  sets: name ("current", "suggested") -> a CoverageStats.summary() with its
  "histogram" (HISTOGRAM_BINS counts over [0, 1]) per "inside"/"all", and the
  name's "scales" and "ratios" for the legend. Inside anchors solid, all dashed;
  the training thresholds 0.5 and 0.7 marked.
  """
  plt, fig = _figure()
  ax = fig.add_subplot(1, 1, 1)
  edges = np.linspace(0.0, 1.0, coverage.HISTOGRAM_BINS + 1)[:-1]
  for name, summary in sets.items():
    for which, style in (("inside", "-"), ("all", "--")):
      counts = np.asarray(summary["histogram"][which], np.float64)
      total = max(1.0, counts.sum())
      at_least = counts[::-1].cumsum()[::-1] / total  # fraction with best IoU >= edge
      scales = ", ".join(f"{s:g}" for s in summary["scales"])
      ratios = ", ".join(f"{r:g}" for r in summary["ratios"])
      ax.step(edges, at_least, where="post", linestyle=style, color=COLOURS.get(name),
              label=f"{name} ({which} anchors): scales {scales}; ratios {ratios}")
  for threshold in coverage.THRESHOLDS:
    ax.axvline(threshold, color="grey", linewidth=0.8, linestyle=":")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.02)
  ax.set_xlabel("IoU threshold t")
  ax.set_ylabel("fraction of gt boxes with best anchor IoU >= t")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="lower left")
  return _png(plt, fig)


def boxes_png(box_sizes: np.ndarray, sets: Dict[str, Dict], title: str) -> bytes:
  """gt box width and height in units of the stride (log axes), anchor shapes on top.

  box_sizes: [B, 2] (width, height) / stride of sampled gt boxes; sets: name
  -> {"scales", "ratios"}.
  """
  plt, fig = _figure(6.0, 6.0)
  ax = fig.add_subplot(1, 1, 1)
  sizes = np.asarray(box_sizes, np.float64).reshape(-1, 2)
  if len(sizes):
    ax.scatter(sizes[:, 0], sizes[:, 1], s=4, alpha=0.3, color="tab:blue",
               label=f"gt boxes ({len(sizes)})")
  markers = {"current": "x", "suggested": "+"}
  for name, anchor_set in sets.items():
    shapes = coverage.anchor_shapes(anchor_set["scales"], anchor_set["ratios"])
    ax.scatter(shapes[:, 0], shapes[:, 1], s=90, marker=markers.get(name, "o"),
               linewidths=2, color=COLOURS.get(name), label=f"{name} anchors")
  from matplotlib import ticker
  # ticks at powers of 2, labelled 0.5, 1, 2, 4 ...
  ax.set_xscale("log", base=2)
  ax.set_yscale("log", base=2)
  for axis in (ax.xaxis, ax.yaxis):
    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())
  ax.set_xlabel("width / stride_x")
  ax.set_ylabel("height / stride_y")
  ax.set_title(title)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8, loc="upper left")
  return _png(plt, fig)

