"""Pictures of the trainer's results, drawn with Pillow only (no matplotlib).

Units: boxes are x1, y1, x2, y2 in continuous pixels of the frame fed to the
backbone (the picture's own pixels); scores are objectness probabilities in [0, 1];
IoU thresholds and recalls are fractions in [0, 1].
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

GT_COLOUR = (40, 220, 60, 255)
BACKGROUND = (255, 255, 255)
AXIS_COLOUR = (0, 0, 0)
GRID_COLOUR = (225, 225, 225)
# One colour per curve, in order (tab10).
CURVE_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
                 (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127))
LEGEND_HEIGHT = 18


def score_colour(score: float, alpha: int = 255) -> Tuple[int, int, int, int]:
  """Blue (score 0) -> yellow (0.5) -> red (score 1)."""
  s = float(np.clip(score if np.isfinite(score) else 0.0, 0.0, 1.0))
  if s < 0.5:
    t = s / 0.5
    rgb = (int(40 + t * 215), int(80 + t * 175), int(255 - t * 215))
  else:
    t = (s - 0.5) / 0.5
    rgb = (255, int(255 - t * 215), 40)
  return rgb + (alpha,)


def _rectangle(draw: ImageDraw.ImageDraw, box: Sequence[float], colour, width: int) -> None:
  x1, y1, x2, y2 = (float(v) for v in box)
  # Continuous [x1, x2) covers pixels x1 .. x2 - 1; Pillow draws inclusive corners.
  draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colour, width=width)


def draw_proposals(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                   gt_boxes: Optional[np.ndarray] = None, top: int = 20,
                   title: str = "") -> Image.Image:
  """RGB picture: the `top` best proposals (thin, coloured by score) and gt (thick green).

  image: uint8 [H, W, 3], the frame; boxes [N, 4] sorted by score (descending),
  scores [N]; gt_boxes [G, 4] or None. A legend strip sits above the image.
  """
  base = Image.fromarray(np.asarray(image, np.uint8)).convert("RGBA")
  overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
  draw = ImageDraw.Draw(overlay)
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)[:top]
  scores = np.asarray(scores, np.float64).reshape(-1)[:top]
  # Worst first, so the best proposals end up on top.
  for box, score in reversed(list(zip(boxes, scores, strict=True))):
    _rectangle(draw, box, score_colour(score, 230), 1)
  gt = np.zeros((0, 4)) if gt_boxes is None else np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  for box in gt:
    _rectangle(draw, box, GT_COLOUR, 3)
  picture = Image.alpha_composite(base, overlay).convert("RGB")
  score_text = (f"scores {scores.min():.3f}..{scores.max():.3f}" if len(scores) else "no proposals")
  legend = (f"{title}  " if title else "") + (
      f"top {len(boxes)} proposals ({score_text}; blue 0 .. red 1)")
  if gt_boxes is not None:
    legend += f"  gt {len(gt)} (green)"
  canvas_width = max(picture.width, 6 * len(legend) + 8)  # the legend fits
  canvas = Image.new("RGB", (canvas_width, picture.height + LEGEND_HEIGHT), (0, 0, 0))
  canvas.paste(picture, (0, LEGEND_HEIGHT))
  ImageDraw.Draw(canvas).text((4, 3), legend, fill=(255, 255, 255))
  return canvas


def draw_recall_plot(curves: Dict[str, Tuple[Sequence[float], Sequence[float]]],
                     title: str = "proposal recall", size: Tuple[int, int] = (660, 440)
                     ) -> Image.Image:
  """Line plot of recall versus IoU threshold, one curve per entry of `curves`.

  curves: label -> (thresholds, recalls), both fractions; recalls of None are
  skipped. The x axis spans the thresholds given, the y axis 0..1.
  """
  width, height = size
  left, right, top, bottom = 64, 170, 34, 50
  plot_w, plot_h = width - left - right, height - top - bottom
  picture = Image.new("RGB", size, BACKGROUND)
  draw = ImageDraw.Draw(picture)
  all_x = [float(x) for xs, _ in curves.values() for x in xs]
  x_min, x_max = (min(all_x), max(all_x)) if all_x else (0.5, 0.95)
  if x_max <= x_min:
    x_min, x_max = x_min - 0.05, x_max + 0.05

  def to_px(x: float, y: float) -> Tuple[float, float]:
    return (left + (x - x_min) / (x_max - x_min) * plot_w, top + (1.0 - y) * plot_h)

  # Grid, ticks and tick labels.
  for i in range(11):
    y = i / 10
    _, py = to_px(x_min, y)
    draw.line([left, py, left + plot_w, py], fill=GRID_COLOUR)
    draw.line([left - 4, py, left, py], fill=AXIS_COLOUR)
    draw.text((left - 30, py - 6), f"{y:.1f}", fill=AXIS_COLOUR)
  ticks = sorted({round(x, 4) for x in all_x}) or [x_min, x_max]
  for x in ticks:
    px, _ = to_px(x, 0.0)
    draw.line([px, top, px, top + plot_h], fill=GRID_COLOUR)
    draw.line([px, top + plot_h, px, top + plot_h + 4], fill=AXIS_COLOUR)
    draw.text((px - 12, top + plot_h + 8), f"{x:.2f}", fill=AXIS_COLOUR)
  draw.rectangle([left, top, left + plot_w, top + plot_h], outline=AXIS_COLOUR)
  draw.text((left + plot_w // 2 - 40, height - 20), "IoU threshold", fill=AXIS_COLOUR)
  draw.text((6, top - 22), "recall", fill=AXIS_COLOUR)
  draw.text((left + plot_w // 2 - 3 * len(title), 8), title, fill=AXIS_COLOUR)

  # Curves and legend.
  for i, (label, (xs, ys)) in enumerate(curves.items()):
    colour = CURVE_COLOURS[i % len(CURVE_COLOURS)]
    points = [to_px(float(x), float(y)) for x, y in zip(xs, ys, strict=True) if y is not None]
    if len(points) > 1:
      draw.line(points, fill=colour, width=2)
    for px, py in points:
      draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
    ly = top + 10 + 18 * i
    lx = left + plot_w + 12
    draw.line([lx, ly + 6, lx + 22, ly + 6], fill=colour, width=3)
    draw.text((lx + 28, ly), str(label), fill=AXIS_COLOUR)
  return picture
