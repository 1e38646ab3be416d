"""Plots of the trainer's results, drawn with matplotlib (headless, Agg canvas).

Each *_png function returns PNG bytes, so that callers write them through
pipeline.io.storage to any filesystem (gs:// included). matplotlib is imported
lazily, by the functions that draw, and only its object-oriented API is used
(no pyplot state), so drawing from a Keras callback leaks no figure.

HistoryPlot, the Keras callback, is built on first use (`plots.HistoryPlot`
imports Keras then): rpn-evaluate draws with this module without paying for
TensorFlow.

Units: epochs are 1-based on the axes (Keras counts from 0, history.csv too);
IoU thresholds and recalls are fractions in [0, 1].
"""
from __future__ import annotations

import csv
import io
import logging
import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from pipeline.io import storage

HISTORY_NAME = "history.csv"  # what keras.callbacks.CSVLogger writes into the job directory
HISTORY_PLOT_NAME = "history.png"
# (key in history.csv, label, colour); the "val_" twin of each key is drawn dashed.
LOSS_SERIES = (("loss", "total loss", "tab:blue"),
               ("scores_loss", "objectness loss (scores)", "tab:orange"),
               ("deltas_loss", "box regression loss (deltas)", "tab:green"))
OBJECTNESS_SERIES = (("scores_objectness_accuracy", "objectness accuracy", "tab:purple"),
                     ("scores_positive_precision", "positive precision", "tab:brown"),
                     ("scores_positive_recall", "positive recall", "tab:pink"))
# The training thresholds of the RPN, marked on the recall plot.
RECALL_MARKS = (0.5, 0.7)

_LOGGER = logging.getLogger(__name__)


def _figure(width: float, height: float):
  from matplotlib.figure import Figure  # lazy: only the code that draws needs it
  return Figure(figsize=(width, height), dpi=110)


def _png(fig) -> bytes:
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", bbox_inches="tight")
  return buffer.getvalue()


# ---------------------------------------------------------------------------
# Training curves


def _number(value) -> Optional[float]:
  """A finite float of a history value (str, float, numpy or tensor scalar), else None."""
  try:
    number = float(value)
  except (TypeError, ValueError):  # "NA" (CSVLogger's missing value), "", None
    return None
  return number if math.isfinite(number) else None


def _series(rows: Sequence[Mapping], key: str) -> Tuple[List[int], List[float]]:
  """(1-based epochs, finite values) of `key` over history rows."""
  epochs, values = [], []
  for index, row in enumerate(rows):
    value = _number(row.get(key))
    if value is None:
      continue
    epoch = _number(row.get("epoch"))
    epochs.append(int(epoch) + 1 if epoch is not None else index + 1)
    values.append(value)
  return epochs, values


def _draw_series(ax, rows: Sequence[Mapping], series) -> int:
  """Train (solid) and val (dashed, same colour) lines of `series`; returns lines drawn."""
  drawn = 0
  for key, label, colour in series:
    for prefix, style, suffix in (("", "-", "train"), ("val_", "--", "val")):
      epochs, values = _series(rows, prefix + key)
      if not epochs:
        continue  # missing key, or no finite value
      ax.plot(epochs, values, linestyle=style, marker="o", markersize=3, color=colour,
              label=f"{label} ({suffix})")
      drawn += 1
  return drawn


def _epoch_axis(ax, rows: Sequence[Mapping]) -> None:
  from matplotlib import ticker
  epochs = _series(rows, "epoch")[1]  # 0-based, as in history.csv
  last = int(max(epochs)) + 1 if epochs else max(1, len(rows))
  ax.set_xlim(0.5, last + 0.5)  # a single epoch still gets a readable axis
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True, min_n_ticks=1))
  ax.set_xlabel("epoch")
  ax.grid(alpha=0.3)


def history_png(rows: Sequence[Mapping], title: str = "training history") -> bytes:
  """Training curves of history.csv rows: losses; objectness accuracy (and precision, recall).

  rows: dicts as keras.callbacks.CSVLogger writes them ("epoch" 0-based,
  "loss", "scores_loss", "deltas_loss", "scores_objectness_accuracy", ... and
  their "val_" twins), values str or float. Train solid, val dashed in the same
  colour; epochs 1-based on the x axis. Missing keys are left out and
  non-finite values ("NA", nan, inf) skipped; a subplot with nothing to draw
  says so.
  """
  rows = list(rows)
  fig = _figure(11.0, 4.5)
  panels = ((LOSS_SERIES, "losses", "loss"),
            (OBJECTNESS_SERIES, "objectness (score >= 0.5, sampled anchors)", "fraction"))
  for index, (series, panel_title, ylabel) in enumerate(panels):
    ax = fig.add_subplot(1, 2, index + 1)
    if _draw_series(ax, rows, series):
      ax.legend(fontsize=7, loc="best", title="solid: train, dashed: val", title_fontsize=7)
    else:
      ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    if series is OBJECTNESS_SERIES:
      ax.set_ylim(0, 1.02)
    else:
      ax.set_ylim(bottom=0)
    _epoch_axis(ax, rows)
    ax.set_ylabel(ylabel)
    ax.set_title(panel_title, fontsize=10)
  fig.suptitle(title)
  return _png(fig)


def history_title(job_dir: str) -> str:
  """history.png's title: the job by its directory's name, no machine path."""
  return f"training history: {job_dir.rstrip('/').rsplit('/', 1)[-1] or job_dir}"


def read_history(path: str) -> List[Dict[str, str]]:
  """The rows of a CSVLogger file (dicts of str), [] when it has none."""
  return list(csv.DictReader(io.StringIO(storage.read_text(path))))


def merge_history(rows: Iterable[Mapping]) -> List[dict]:
  """Rows sorted by epoch, one per epoch: a repeated epoch keeps its latest row.

  Rows without a usable "epoch" are dropped.
  """
  by_epoch: Dict[int, dict] = {}
  for row in rows:
    epoch = _number(row.get("epoch"))
    if epoch is not None:
      by_epoch[int(epoch)] = dict(row, epoch=int(epoch))
  return [by_epoch[e] for e in sorted(by_epoch)]


def _history_plot_class():
  import keras  # lazy: see the module doc

  class HistoryPlot(keras.callbacks.Callback):
    """Writes JOB/history.png (history_png) after every epoch, over the job's whole history.

    On train begin the rows of earlier runs of the job are read from
    JOB/history.csv (when it exists), so a resumed job plots all its epochs;
    then each epoch's logs are added under Keras's epoch number, a repeated
    epoch keeping its latest values. `rows` holds the merged rows last drawn
    (sorted by epoch). Failures to read or draw are logged, never raised:
    pictures must not stop training.
    """

    def __init__(self, job_dir: str):
      super().__init__()
      self.job_dir = job_dir
      self.path = storage.join(job_dir, HISTORY_PLOT_NAME)
      self.rows: List[dict] = []

    def on_train_begin(self, logs=None):
      history = storage.join(self.job_dir, HISTORY_NAME)
      try:
        self.rows = merge_history(read_history(history)) if storage.exists(history) else []
      except Exception as e:  # an unreadable history must not stop training
        _LOGGER.warning("HistoryPlot: cannot read %s (%s: %s); plotting this run's epochs only",
                        history, type(e).__name__, e)
        self.rows = []

    def on_epoch_end(self, epoch, logs=None):
      row = {"epoch": int(epoch)}
      for key, value in (logs or {}).items():
        number = _number(value)
        row[key] = number if number is not None else float("nan")
      self.rows = merge_history(self.rows + [row])
      try:
        storage.write_bytes(self.path, history_png(self.rows, history_title(self.job_dir)))
      except Exception as e:  # drawing must not stop training
        _LOGGER.warning("HistoryPlot: cannot write %s (%s: %s)", self.path, type(e).__name__, e)

  HistoryPlot.__qualname__ = "HistoryPlot"
  return HistoryPlot


def __getattr__(name: str):
  """HistoryPlot, built (importing Keras) on first access (PEP 562)."""
  if name == "HistoryPlot":
    cls = _history_plot_class()
    globals()["HistoryPlot"] = cls
    return cls
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------
# Recall


def recall_png(curves: Mapping[str, Tuple[Sequence[float], Optional[Sequence[Optional[float]]]]],
               title: str = "proposal recall") -> bytes:
  """Recall against IoU threshold, one curve per entry of `curves`.

  curves: label -> (thresholds, recalls), both fractions; a curve whose recalls
  are None (no gt box at all), and single recalls of None, are skipped. The
  x axis spans the thresholds given (ticks at them), the y axis 0..1; the
  training thresholds 0.5 and 0.7 are marked.
  """
  fig = _figure(7.0, 4.5)
  ax = fig.add_subplot(1, 1, 1)
  all_x = sorted({round(float(x), 4) for xs, _ in curves.values() for x in xs})
  drawn = 0
  for label, (xs, ys) in curves.items():
    if ys is None:
      continue
    points = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True) if y is not None]
    if not points:
      continue
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=4,
            linewidth=1.8, label=str(label))
    drawn += 1
  x_min, x_max = (all_x[0], all_x[-1]) if all_x else (0.5, 0.95)
  margin = max(0.02, 0.03 * (x_max - x_min))
  ax.set_xlim(x_min - margin, x_max + margin)
  if 1 < len(all_x) <= 20:
    ax.set_xticks(all_x)
    ax.set_xticklabels([f"{x:.2f}" for x in all_x], fontsize=8)
  for threshold in RECALL_MARKS:
    if x_min - margin <= threshold <= x_max + margin:
      ax.axvline(threshold, color="grey", linewidth=0.8, linestyle=":")
  ax.set_ylim(0, 1.02)
  ax.set_yticks([i / 10 for i in range(11)])
  ax.set_xlabel("IoU threshold")
  ax.set_ylabel("recall (fraction of gt boxes matched)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  if drawn:
    ax.legend(fontsize=8, loc="lower left")
  else:
    ax.text(0.5, 0.5, "no gt boxes: no recall", ha="center", va="center",
            transform=ax.transAxes)
  return _png(fig)
