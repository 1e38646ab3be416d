"""Image files -> uint8 [H, W, 3]: any format and mode Pillow reads, checked.

`decode_image` turns encoded bytes into RGB (grayscale and palette expanded,
CMYK converted, alpha over white, 16-bit and float scaled; EXIF orientation
not applied), refusing declared sizes over max_pixels before decoding.
`image_size` reads the size from the header alone. Every problem is an
ImageError (stage "decode"), a kind of InputError: one input that cannot be
used, whose message says why. Nothing here is specific to a dataset.
"""
from __future__ import annotations

import io
import os
import struct
from typing import Optional, Tuple

import numpy as np
from PIL import Image

from pipeline.core import config

# What Pillow's decoders raise on corrupt data (fuzzing finds all of these; an
# `except Exception` would also hide bugs in this module).
_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError,
               KeyError, TypeError, ZeroDivisionError)


class InputError(ValueError):
  """One input file that cannot be used; `stage` says where, `reason` why."""

  stage = "input"

  def __init__(self, reason: str, stage: Optional[str] = None):
    super().__init__(reason)
    self.reason = reason
    if stage is not None:
      self.stage = stage

  def __str__(self) -> str:
    return self.reason


class ImageError(InputError):
  """The image file cannot be read or decoded."""

  stage = "decode"


def _scale_to_uint8(array: np.ndarray, full_scale: Optional[float]) -> np.ndarray:
  """Single-channel integer or float pixels -> uint8 [H, W]."""
  array = np.asarray(array, dtype=np.float64)
  array = np.where(np.isfinite(array), array, 0.0)
  if full_scale is None:
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if low >= 0 and high <= 1.0:
      full_scale = 1.0  # float image in [0, 1]
    elif low >= 0 and high <= 255:
      full_scale = 255.0  # already 8-bit values
    elif low >= 0 and high <= 65535:
      full_scale = 65535.0  # 16-bit values
    else:
      array = array - low  # anything else: stretch min..max
      full_scale = max(high - low, 1e-12)
  out = np.clip(np.round(array * (255.0 / full_scale)), 0, 255)
  return out.astype(np.uint8)


def _to_rgb(image: Image.Image) -> np.ndarray:
  """Any Pillow mode -> uint8 [H, W, 3]; alpha is composited over white."""
  mode = image.mode
  if mode.startswith("I;16"):
    gray = _scale_to_uint8(np.asarray(image), 65535.0)
    return np.repeat(gray[:, :, None], 3, axis=2)
  if mode in ("I", "F"):
    gray = _scale_to_uint8(np.asarray(image), None)
    return np.repeat(gray[:, :, None], 3, axis=2)
  has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
      mode == "P" and "transparency" in image.info) or (
      mode in ("L", "RGB") and "transparency" in image.info)
  if has_alpha:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    image = Image.alpha_composite(background, rgba).convert("RGB")
  elif mode != "RGB":
    image = image.convert("RGB")
  rgb = np.asarray(image, dtype=np.uint8)
  return np.ascontiguousarray(rgb.reshape(rgb.shape[0], rgb.shape[1], 3))


def _open_image(stream, size: int, head: bytes, max_pixels: int) -> Image.Image:
  """Pillow's lazy open of `stream` (reads the header only), with the declared
  size checked against max_pixels; ImageError for anything unusable."""
  try:
    image = Image.open(stream)
  except Image.DecompressionBombError as e:
    raise ImageError(f"refused as a decompression bomb: {e}") from None
  except Image.UnidentifiedImageError:
    raise ImageError(f"not an image: Pillow cannot identify the format "
                     f"({size} bytes, starting {head!r})") from None
  except _PIL_ERRORS as e:
    raise ImageError(f"cannot open image: {type(e).__name__}: {e}") from None
  width, height = image.size
  if width <= 0 or height <= 0:
    image.close()
    raise ImageError(f"image has zero size: {width}x{height}")
  if width * height > max_pixels:
    image.close()
    raise ImageError(f"image too large: {width}x{height} = {width * height} pixels "
                     f"> max_pixels {max_pixels} (decompression bomb?)")
  return image


def image_size(path: str, max_pixels: int = config.DEFAULT_MAX_PIXELS) -> Tuple[int, int]:
  """(width, height) of an image file from its header, without decoding pixels.

  Reads only the first bytes Pillow needs (through Beam's FileSystems, so
  remote files are not downloaded whole). The same ImageError as decode_image
  for a file that is empty, not an image or over max_pixels; a file whose
  pixels are corrupt past the header is not detected here.
  """
  from apache_beam.io.filesystems import CompressionTypes, FileSystems  # lazy: module doc

  try:
    with FileSystems.open(path, mime_type="application/octet-stream",
                          compression_type=CompressionTypes.UNCOMPRESSED) as f:
      size = f.seek(0, os.SEEK_END) or f.tell()  # no read: the size for the messages
      if not size:
        raise ImageError("empty file (0 bytes)")
      f.seek(0)
      head = f.read(8)
      f.seek(0)
      with _open_image(f, size, head, max_pixels) as image:
        return image.size
  except OSError as e:
    raise ImageError(f"cannot read image file: {type(e).__name__}: {e}") from None


def decode_image(data: bytes, max_pixels: int = config.DEFAULT_MAX_PIXELS) -> np.ndarray:
  """Encoded image bytes (JPEG, PNG, any format Pillow reads) -> uint8 [H, W, 3].

  The format is detected from the content (ILSVRC has PNGs named .JPEG). Every
  mode becomes RGB: grayscale and palette are expanded, CMYK converted, alpha
  composited over white, 16-bit and float scaled to 8 bit. EXIF orientation is
  NOT applied (the boxes are in the stored frame). The declared size is checked
  against `max_pixels` before any pixel is decoded, so memory stays bounded.
  """
  if not data:
    raise ImageError("empty file (0 bytes)")
  image = _open_image(io.BytesIO(data), len(data), data[:8], max_pixels)
  with image:
    width, height = image.size
    try:
      image.load()
      rgb = _to_rgb(image)
    except Image.DecompressionBombError as e:
      raise ImageError(f"refused as a decompression bomb: {e}") from None
    except _PIL_ERRORS as e:
      raise ImageError(f"cannot decode {image.format or 'image'} "
                       f"{width}x{height} {image.mode}: {type(e).__name__}: {e}") from None
  if rgb.shape != (height, width, 3):
    raise ImageError(f"decoded shape {rgb.shape} does not match the declared size "
                     f"{width}x{height}")
  return rgb
