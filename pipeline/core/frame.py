"""The frame: the image as fed to the backbone (optional resize, then padding).

Shape shorthand: H, W the image's height and width in px; N boxes [N, 4] as
(x1, y1, x2, y2) in px of the image they belong to.

rpn-preprocess, rpn-anchors, rpn-draw and rpn-propose all make their frames
here, so boxes, anchors and proposals are in one coordinate system. numpy and
Pillow only.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import numpy as np
from PIL import Image


def mirror(image: np.ndarray, boxes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """The image flipped left to right and its boxes [N, 4] with it (x -> W - x),
  as py-faster-rcnn's flipped training images."""
  width = image.shape[1]
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  flipped = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]],
                     axis=1)
  return np.ascontiguousarray(image[:, ::-1]), flipped


def prepare_image(image: np.ndarray, boxes: np.ndarray, min_input_side: int,
                  min_side: Optional[int] = None, max_side: Optional[int] = None
                  ) -> Tuple[np.ndarray, np.ndarray, float]:
  """The frame fed to the backbone: optional resize, then zero padding.

  Resize (off unless min_side or max_side is set): scale so that the shorter
  side is min_side, but the longer side at most max_side. Then an image with a
  side under `min_input_side` is padded with black pixels on the bottom and
  right, so that box coordinates do not move; the padded image is the frame
  (its width and height are the ones recorded). Returns (image, boxes, scale).
  """
  height, width = image.shape[:2]
  frame = frame_size(width, height, min_input_side, min_side, max_side)
  if frame.scale != 1.0:
    new_w, new_h = frame.resized_width, frame.resized_height
    image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    boxes = frame.boxes_in_frame(boxes, width, height)
  if frame.padded:
    image = np.pad(image, ((0, frame.height - frame.resized_height),
                           (0, frame.width - frame.resized_width), (0, 0)))
  return image, boxes, frame.scale


class FrameSize(NamedTuple):
  """The frame prepare_image makes of a width x height image, in px."""
  width: int  # of the frame fed to the backbone (after padding)
  height: int
  resized_width: int  # of the image in it (after the optional resize)
  resized_height: int
  scale: float  # resize factor, 1.0 without resize

  @property
  def padded(self) -> bool:
    return (self.width, self.height) != (self.resized_width, self.resized_height)

  def boxes_in_frame(self, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes [N, 4] of the width x height image, in this frame (padding moves none)."""
    return np.asarray(boxes) * np.array(
        [self.resized_width / width, self.resized_height / height] * 2)


def frame_size(width: int, height: int, min_input_side: int, min_side: Optional[int] = None,
               max_side: Optional[int] = None) -> FrameSize:
  """prepare_image's arithmetic alone: the frame of a width x height image.

  Resize (off unless min_side or max_side is set): the shorter side to
  min_side, the longer at most max_side; then zero padding at the bottom and
  right up to min_input_side.
  """
  scale = 1.0
  new_w, new_h = width, height
  if min_side or max_side:
    scale = (min_side / min(height, width)) if min_side else 1.0
    if max_side and max(height, width) * scale > max_side:
      scale = max_side / max(height, width)
    if scale != 1.0:
      new_w = max(1, int(round(width * scale)))
      new_h = max(1, int(round(height * scale)))
  return FrameSize(max(new_w, min_input_side), max(new_h, min_input_side), new_w, new_h, scale)


def box_scale(width: int, height: int, min_input_side: int, min_side: Optional[int] = None,
              max_side: Optional[int] = None) -> Tuple[float, float]:
  """(sx, sy): frame pixels per pixel of a width x height image (frame_size's
  resize; padding moves no coordinate). prepare_frame's box_scale, from the
  sizes alone (rpn-propose from a maps dataset, where no image is decoded)."""
  frame = frame_size(width, height, min_input_side, min_side, max_side)
  return frame.resized_width / width, frame.resized_height / height


def prepare_frame(image: np.ndarray, gt_boxes: np.ndarray, min_input_side: int,
                  min_side: Optional[int] = None, max_side: Optional[int] = None
                  ) -> Tuple[np.ndarray, np.ndarray, Tuple[float, float]]:
  """(frame uint8 [H, W, 3], gt boxes [N, 4] in it, box_scale (sx, sy)) of an image.

  prepare_image, plus box_scale: frame pixels per pixel of the decoded image
  ((1, 1) without resize; padding moves no coordinate), which takes proposals
  back to the image's own pixels.
  """
  height, width = image.shape[:2]
  # The whole image as one more box gives the resized size.
  whole = np.array([[0.0, 0.0, width, height]])
  frame, frame_boxes, _ = prepare_image(
      image, np.vstack([np.asarray(gt_boxes, np.float64).reshape(-1, 4), whole]),
      min_input_side, min_side, max_side)
  box_scale = (float(frame_boxes[-1, 2]) / width, float(frame_boxes[-1, 3]) / height)
  return frame, frame_boxes[:-1], box_scale
