"""Tests of trainer/plots.py (matplotlib: training curves, recall against IoU) and of
trainer/draw.py's proposal pictures (Pillow).

The pictures are checked for what can be checked without looking: valid PNGs
of a sensible size, the data they are drawn from, and the legend's layout.
"""
import csv
import io
import logging
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from trainer import draw, plots


def _open_png(data: bytes) -> Image.Image:
  assert isinstance(data, bytes) and data[:8] == b"\x89PNG\r\n\x1a\n"
  picture = Image.open(io.BytesIO(data))
  picture.load()
  assert picture.mode in ("RGB", "RGBA")
  assert picture.size[0] > 200 and picture.size[1] > 100
  return picture


def _row(epoch, loss, val=True):
  """A history.csv row as CSVLogger writes it (strings; "NA" without validation)."""
  row = {"epoch": str(epoch), "loss": str(loss), "scores_loss": str(loss / 3),
         "deltas_loss": str(2 * loss / 3), "scores_objectness_accuracy": str(1 - loss / 4),
         "scores_positive_precision": "0.5", "scores_positive_recall": "0.25"}
  for key in list(row)[1:]:
    row["val_" + key] = str(float(row[key]) * 1.1) if val else "NA"
  return row


def test_drawing_leaves_tensorflow_out():
  # rpn-evaluate draws with plots.py; only HistoryPlot, on first use, needs Keras.
  code = ("import sys; import trainer.plots, trainer.evaluate;"
          "print('tensorflow' in sys.modules, 'keras' in sys.modules);"
          "from trainer.plots import HistoryPlot; import keras;"
          "print(issubclass(HistoryPlot, keras.callbacks.Callback), HistoryPlot.__qualname__)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.split() == ["False", "False", "True", "HistoryPlot"]


# ---------------------------------------------------------------------------
# Training curves


def test_history_png_one_epoch_and_several():
  _open_png(plots.history_png([_row(0, 1.0, val=False)]))
  _open_png(plots.history_png([_row(0, 1.0)]))
  several = [_row(e, 1.0 / (e + 1)) for e in range(5)]
  _open_png(plots.history_png(several))
  # Without any val_ key, with floats, a nan, and a missing metric.
  rows = [{"epoch": e, "loss": 1.0 / (e + 1), "scores_loss": float("nan") if e == 1 else 0.2}
          for e in range(3)]
  _open_png(plots.history_png(rows))
  _open_png(plots.history_png([]))  # nothing to draw still gives a picture


def test_history_series_skip_non_finite_and_are_one_based():
  rows = [{"epoch": "0", "loss": "1.5"}, {"epoch": "1", "loss": "NA"},
          {"epoch": "2", "loss": "inf"}, {"epoch": "3", "loss": "0.5"}]
  assert plots._series(rows, "loss") == ([1, 4], [1.5, 0.5])
  assert plots._series(rows, "val_loss") == ([], [])


def test_merge_history_keeps_the_latest_row_of_an_epoch():
  rows = [{"epoch": "1", "loss": "0.9"}, {"epoch": "0", "loss": "1.0"},
          {"epoch": 1, "loss": 0.7}, {"epoch": "", "loss": "3"}]
  assert plots.merge_history(rows) == [{"epoch": 0, "loss": "1.0"}, {"epoch": 1, "loss": 0.7}]


def _tiny_fit(job_dir, epochs, initial_epoch=0, extra=()):
  """fit() of a Dense model on random data, with HistoryPlot (after a CSVLogger, as in
  rpn-train); returns (HistoryPlot, the history.png bytes seen after each epoch)."""
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(32, 4)).astype("float32"), rng.normal(size=(32, 1)).astype("float32")
  model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
  model.compile(optimizer="sgd", loss="mse")
  plot = plots.HistoryPlot(job_dir)
  seen = []

  class Spy(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
      path = os.path.join(job_dir, plots.HISTORY_PLOT_NAME)
      if not os.path.exists(path):
        seen.append(None)
        return
      with open(path, "rb") as f:
        seen.append(f.read())

  callbacks = [keras.callbacks.CSVLogger(os.path.join(job_dir, plots.HISTORY_NAME), append=True),
               plot, Spy()] + list(extra)
  model.fit(x, y, validation_split=0.25, epochs=epochs, initial_epoch=initial_epoch,
            batch_size=8, verbose=0, callbacks=callbacks)
  return plot, seen


def test_history_plot_writes_after_every_epoch(tmp_path):
  job = str(tmp_path / "job")
  os.makedirs(job)
  plot, seen = _tiny_fit(job, epochs=2)
  assert len(seen) == 2 and all(seen)
  _open_png(seen[0])
  _open_png(seen[1])
  assert seen[0] != seen[1]  # redrawn with the second epoch
  assert [row["epoch"] for row in plot.rows] == [0, 1]
  assert {"loss", "val_loss"} <= set(plot.rows[0])


def test_history_plot_of_a_resumed_job_covers_earlier_epochs(tmp_path):
  job = str(tmp_path / "job")
  os.makedirs(job)
  # history.csv of an earlier run: epochs 0 and 1.
  rows = [_row(0, 1.0), _row(1, 0.8)]
  with open(os.path.join(job, plots.HISTORY_NAME), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  plot, seen = _tiny_fit(job, epochs=3, initial_epoch=2)
  assert len(seen) == 1 and seen[0]
  _open_png(seen[0])
  assert [row["epoch"] for row in plot.rows] == [0, 1, 2]
  assert plot.rows[0]["loss"] == "1.0" and plot.rows[1]["loss"] == "0.8"  # from the csv
  assert isinstance(plot.rows[2]["loss"], float)  # from this run's logs
  # Resumed again at epoch 2 (say the run died after CSVLogger wrote epoch 2):
  # history.csv now holds epoch 2 too; the new logs replace it.
  plot, _ = _tiny_fit(job, epochs=4, initial_epoch=2)
  assert [row["epoch"] for row in plot.rows] == [0, 1, 2, 3]


def test_history_plot_titles_the_job_by_its_directory_name(tmp_path, monkeypatch):
  job = str(tmp_path / "runs" / "job7")
  os.makedirs(job)
  titles, real = [], plots.history_png

  def spy(rows, title="training history"):
    titles.append(title)
    return real(rows, title)
  monkeypatch.setattr(plots, "history_png", spy)
  _tiny_fit(job + "/", epochs=1)
  assert titles == ["training history: job7"]  # no machine path
  assert plots.history_title("gs://bucket/jobs/rpn") == "training history: rpn"


def test_history_plot_failures_do_not_stop_training(tmp_path, monkeypatch, caplog):
  job = str(tmp_path / "job")
  os.makedirs(job)
  with open(os.path.join(job, plots.HISTORY_NAME), "w") as f:
    f.write("epoch,loss\n0,1.0\n")

  def unreadable(path):
    raise OSError(f"{path}: permission denied")

  def broken(*args, **kwargs):
    raise RuntimeError("no fonts today")

  # history.csv unreadable: this run's epochs only; drawing fails: nothing written.
  monkeypatch.setattr(plots, "read_history", unreadable)
  monkeypatch.setattr(plots, "history_png", broken)
  with caplog.at_level(logging.WARNING, logger="trainer.plots"):
    plot, seen = _tiny_fit(job, epochs=2)
  assert "cannot read" in caplog.text and "no fonts today" in caplog.text
  assert [row["epoch"] for row in plot.rows] == [0, 1] and seen == [None, None]


# ---------------------------------------------------------------------------
# Recall against IoU


def test_recall_png():
  thresholds = [0.5 + 0.05 * i for i in range(10)]
  curves = {"top 10 (10/img)": (thresholds, [1.0 - 0.1 * i for i in range(10)]),
            "top 100 (50/img)": (thresholds, [1.0] * 5 + [None] * 5),
            "no gt": (thresholds, None)}
  _open_png(plots.recall_png(curves, "proposal recall: 3 gt boxes in 2 images"))
  _open_png(plots.recall_png({"one": ([0.5], [0.25])}))
  _open_png(plots.recall_png({}))


# ---------------------------------------------------------------------------
# Proposal pictures (trainer/draw.py)


def test_wrap_text_fits_the_width():
  text = "ILSVRC2013_val/a_0001  top 20 proposals (scores 0.101..0.998; blue 0 .. red 1)"
  for width in (400, 112, 60, 3):
    lines = draw.wrap_text(text, width)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")  # nothing lost
    assert all(draw.text_width(line) <= width or len(line) == 1 for line in lines)
  assert draw.wrap_text(text, 2000) == [text.replace("  ", " ")]
  assert len(draw.wrap_text(text, 112)) > 1


def test_narrow_picture_is_the_image_width_and_wraps_its_legend():
  image = np.full((60, 120, 3), 128, np.uint8)  # grey: no black column of its own
  boxes = np.array([[10, 10, 50, 40], [20, 5, 110, 55]], np.float64)
  scores = np.array([0.9, 0.2])
  gt = np.array([[12, 12, 48, 38]], np.float64)
  title = "ILSVRC2013_val/ILSVRC2013_val_00000001"
  picture = draw.draw_proposals(image, boxes, scores, gt, title=title)
  assert picture.mode == "RGB"
  lines = draw.legend_lines(2, scores, 1, title, 120 - 2 * draw.LEGEND_MARGIN)
  assert len(lines) >= 3  # the old one-line legend needed ~ 6 px a character
  # All the legend is there, the title (an image id, broken) on lines of its own.
  legend = draw.legend_text(2, scores, 1, title)
  assert " ".join(lines).replace(" ", "") == legend.replace(" ", "")
  title_lines = draw.wrap_text(title, 120 - 2 * draw.LEGEND_MARGIN)
  assert len(title_lines) >= 2 and lines[:len(title_lines)] == title_lines
  assert lines[len(title_lines)].startswith("top 2 proposals")
  strip = draw.legend_height(len(lines))
  assert picture.size == (120, 60 + strip)
  pixels = np.asarray(picture)
  np.testing.assert_array_equal(pixels[strip:, :, :][0, 60:70], image[0, 60:70])  # image below
  # Every line of the legend has white text in its own band of the strip.
  for i in range(len(lines)):
    top = draw.LEGEND_MARGIN + i * draw.line_height()
    assert pixels[top:top + draw.line_height() - draw.LEGEND_LINE_SPACING].max() > 200
  # No black band: no column of the picture is all black.
  assert (pixels.max(axis=(0, 2)) > 0).all()


def test_wide_picture_keeps_one_legend_line():
  image = np.full((50, 900, 3), 90, np.uint8)
  picture = draw.draw_proposals(image, np.zeros((0, 4)), np.zeros(0), None, title="x")
  assert picture.size == (900, 50 + draw.legend_height(1))


@pytest.mark.parametrize("width", [1, 8])
def test_tiny_images_still_draw(width):
  picture = draw.draw_proposals(np.zeros((20, width, 3), np.uint8), np.zeros((0, 4)),
                                np.zeros(0), title="t")
  assert picture.size[0] == width
