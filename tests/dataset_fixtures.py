"""Small ILSVRC-layout datasets written into a test's tmp_path."""
from __future__ import annotations

import os
import struct
import zlib
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

DET_XML = """<annotation>
\t<folder>{folder}</folder>
\t<filename>{filename}</filename>
\t<source><database>ILSVRC_2014</database></source>
\t<size><width>{width}</width><height>{height}</height></size>
{objects}</annotation>
"""
OBJECT_XML = """\t<object>
\t\t<name>{name}</name>
\t\t<bndbox><xmin>{xmin}</xmin><xmax>{xmax}</xmax><ymin>{ymin}</ymin><ymax>{ymax}</ymax></bndbox>
\t</object>
"""


def det_xml(image_id: str, width: int, height: int, boxes: Sequence[Sequence[float]],
            name: str = "n02084071") -> str:
  """DET-schema XML; boxes given as 0-based inclusive xmin, ymin, xmax, ymax."""
  objects = "".join(OBJECT_XML.format(name=name, xmin=b[0], ymin=b[1], xmax=b[2], ymax=b[3])
                    for b in boxes)
  folder, _, filename = image_id.rpartition("/")
  return DET_XML.format(folder=folder, filename=filename, width=width, height=height,
                        objects=objects)


def random_image(rng: np.random.Generator, width: int, height: int,
                 boxes: Sequence[Sequence[int]] = ()) -> np.ndarray:
  image = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
  for b in boxes:
    colour = rng.integers(120, 256, 3, dtype=np.uint8)
    image[b[1]:b[3] + 1, b[0]:b[2] + 1] = colour
  return image


def write_dataset(root: str, split: str = "DET/train", num_images: int = 6, seed: int = 0,
                  sizes: Optional[List[tuple]] = None) -> Dict[str, dict]:
  """Writes num_images JPEG + XML pairs under root/Data/split, root/Annotations/split.

  Returns {image_id: {"width", "height", "boxes"}} (boxes 0-based inclusive).
  """
  rng = np.random.default_rng(seed)
  written = {}
  for i in range(num_images):
    width, height = (sizes[i] if sizes
                     else (int(rng.integers(160, 400)), int(rng.integers(120, 360))))
    boxes = []
    for _ in range(int(rng.integers(0, 3)) if i else 2):
      bw, bh = int(rng.integers(40, width // 2 + 41)), int(rng.integers(40, height // 2 + 41))
      x, y = int(rng.integers(0, width - bw + 1)), int(rng.integers(0, height - bh + 1))
      boxes.append((x, y, min(width - 1, x + bw - 1), min(height - 1, y + bh - 1)))
    image_id = f"ILSVRC2014_train_0000/ILSVRC2014_train_{i:08d}"
    write_pair(root, split, image_id, random_image(rng, width, height, boxes),
               det_xml(image_id, width, height, boxes))
    written[image_id] = {"width": width, "height": height, "boxes": boxes}
  return written


def write_pair(root: str, split: str, image_id: str, image: Optional[np.ndarray],
               xml: Optional[str], image_bytes: Optional[bytes] = None,
               extension: str = ".JPEG") -> None:
  """Writes one image (array, or raw bytes) and/or its XML at the layout's paths."""
  if image is not None or image_bytes is not None:
    path = os.path.join(root, "Data", split, image_id + extension)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if image_bytes is not None:
      with open(path, "wb") as f:
        f.write(image_bytes)
    else:
      Image.fromarray(image).save(path, format="JPEG", quality=92)
  if xml is not None:
    path = os.path.join(root, "Annotations", split, image_id + ".xml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      f.write(xml)


def png_chunk(kind: bytes, data: bytes) -> bytes:
  return struct.pack(">I", len(data)) + kind + data + struct.pack(
      ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
  """A PNG that declares width x height (8-bit RGB) and holds one tiny IDAT."""
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
          + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + png_chunk(b"IEND", b""))
