"""Proposals drawn on images, with Pillow (plots with axes are in trainer/plots.py).

Units: boxes are x1, y1, x2, y2 in continuous pixels of the frame fed to the
backbone (the picture's own pixels); scores are objectness probabilities in [0, 1].
"""
from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GT_COLOUR = (40, 220, 60, 255)
LEGEND_BACKGROUND = (0, 0, 0)
LEGEND_COLOUR = (255, 255, 255)
LEGEND_FONT_SIZE = 11
LEGEND_MARGIN = 4  # pixels around the legend text
LEGEND_LINE_SPACING = 3  # pixels between legend lines
WORD_SEPARATORS = "/_-."  # where wrap_text breaks a word too long for a line


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
  scores [N]; gt_boxes [G, 4] or None. A legend strip sits above the image: the
  picture is exactly the image's width, the legend wrapping onto as many lines
  as that width needs (legend_lines).
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
  lines = legend_lines(len(boxes), scores, None if gt_boxes is None else len(gt), title,
                       picture.width - 2 * LEGEND_MARGIN)
  strip = legend_height(len(lines))
  canvas = Image.new("RGB", (picture.width, picture.height + strip), LEGEND_BACKGROUND)
  canvas.paste(picture, (0, strip))
  canvas_draw = ImageDraw.Draw(canvas)
  for i, line in enumerate(lines):
    canvas_draw.text((LEGEND_MARGIN, LEGEND_MARGIN + i * line_height()), line,
                     fill=LEGEND_COLOUR, font=legend_font())
  return canvas


def legend_text(num_boxes: int, scores: np.ndarray, num_gt: Optional[int] = None,
                title: str = "") -> str:
  """The legend of draw_proposals: title, proposals drawn, their scores, gt boxes."""
  scores = np.asarray(scores, np.float64).reshape(-1)
  score_text = (f"scores {scores.min():.3f}..{scores.max():.3f}" if len(scores)
                else "no proposals")
  legend = (f"{title}  " if title else "") + (
      f"top {num_boxes} proposals ({score_text}; blue 0 .. red 1)")
  if num_gt is not None:
    legend += f"  gt {num_gt} (green)"
  return legend


def legend_lines(num_boxes: int, scores: np.ndarray, num_gt: Optional[int], title: str,
                 width: float) -> List[str]:
  """legend_text in lines no wider than `width` pixels: one line when it fits, else the
  title's lines (an image id may need several) then the rest's."""
  legend = legend_text(num_boxes, scores, num_gt, title)
  if text_width(legend) <= width or not title:
    return wrap_text(legend, width)
  return wrap_text(title, width) + wrap_text(legend_text(num_boxes, scores, num_gt), width)


@functools.lru_cache(maxsize=1)
def legend_font() -> ImageFont.ImageFont:
  try:
    return ImageFont.load_default(size=LEGEND_FONT_SIZE)
  except TypeError:  # Pillow < 10.1: the fixed-size bitmap font
    return ImageFont.load_default()


def text_width(text: str) -> float:
  """Width in pixels of `text` in the legend font."""
  return legend_font().getlength(text)


def line_height() -> int:
  """Pixels from one legend line to the next."""
  _, top, _, bottom = legend_font().getbbox("Ag|")
  return int(bottom - min(0, top)) + LEGEND_LINE_SPACING


def legend_height(num_lines: int) -> int:
  """Height of the legend strip holding `num_lines` lines."""
  return 2 * LEGEND_MARGIN + num_lines * line_height() - LEGEND_LINE_SPACING


def wrap_text(text: str, width: float) -> List[str]:
  """`text` broken into lines no wider than `width` pixels (the legend font).

  Breaks between words; a word wider than `width` alone is broken between
  characters, after its last separator (/ _ - .) that fits when it has one (at
  least one character a line, so any width terminates).
  """
  lines: List[str] = []
  current = ""
  for word in text.split():
    candidate = f"{current} {word}" if current else word
    if text_width(candidate) <= width:
      current = candidate
      continue
    if current:
      lines.append(current)
    current = ""
    while text_width(word) > width and len(word) > 1:
      cut = 1
      while cut < len(word) and text_width(word[:cut + 1]) <= width:
        cut += 1
      # Rather after a separator of an image id (ILSVRC2013_val/ILSVRC2013_val_00000001).
      separator = max(word.rfind(c, 0, cut) for c in WORD_SEPARATORS)
      cut = separator + 1 if separator > 0 else cut
      lines.append(word[:cut])
      word = word[cut:]
    current = word
  if current or not lines:
    lines.append(current)
  return lines
