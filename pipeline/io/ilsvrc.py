"""Listing the ILSVRC dataset, parsing its XML boxes, loading its examples.

Units: boxes are continuous pixel coordinates x1, y1, x2, y2 (float64). ILSVRC's
XML holds 0-based inclusive pixel indices, so x1 = xmin, x2 = xmax + 1 (same for
y) and a box is x2 - x1 pixels wide. Widths and heights are in pixels.

Shape shorthand: N = boxes in the XML, M = boxes kept after sanitizing,
H, W = image height and width.

Bad input is data: every problem with one file raises an `InputError` subclass
whose `stage` says where it failed and whose message says why, showing the bad
value. Problems with one box inside a usable file drop (or clip) that box and
count it in a `stats` dict instead of failing the image.

Images are decoded by pipeline.io.images. Pure parsing (`parse_annotation`,
`sanitize_boxes`, ...) imports
only numpy, Pillow and defusedxml; the functions that do IO import Beam's
FileSystems lazily, so `gs://`, `s3://`, `hdfs://` paths work the same as local
ones.
"""
from __future__ import annotations

import dataclasses
import math
import os
import posixpath
import re
from typing import Dict, Iterable, List, Optional, Tuple

import defusedxml
import defusedxml.ElementTree as SafeElementTree
import numpy as np

from pipeline.core import config
from pipeline.io import images as images_lib

IMAGE_EXTENSIONS = (".JPEG", ".jpeg", ".jpg", ".JPG", ".png", ".PNG")
ANNOTATION_EXTENSION = ".xml"

WNID_PATTERN = re.compile(r"n\d{8}")
_INT_PATTERN = re.compile(r"[+-]?\d+")
_COORD_TAGS = ("xmin", "ymin", "xmax", "ymax")

# Stats keys for boxes that are dropped (their sum is the manifest's
# `boxes_dropped`; keep in step with transforms.sum_box_stats).
DROPPED_BOX_KEYS = ("boxes_invalid", "boxes_min_gt_max", "boxes_outside", "boxes_zero_area")


class AnnotationError(images_lib.InputError):
  """The annotation file cannot be read or parsed."""

  stage = "annotation"


# ---------------------------------------------------------------------------
# Layouts and listing


def relative_id(path: str, root: str) -> str:
  """`path` relative to directory `root`, '/'-separated, without extension.

  Plain string handling, so `root` may be a URL (`gs://bucket/ILSVRC/Data/DET/train`).
  A local relative root is also matched against absolute paths.
  """
  root = root.rstrip("/")
  path = path.replace(os.sep, "/") if os.sep != "/" else path
  prefix = root + "/"
  if not path.startswith(prefix) and "://" not in root and "://" not in path:
    absolute_root = os.path.abspath(root or "/").rstrip("/")
    absolute_path = os.path.abspath(path)
    if absolute_path.startswith(absolute_root + "/"):
      root, path, prefix = absolute_root, absolute_path, absolute_root + "/"
  if not path.startswith(prefix) or len(path) == len(prefix):
    raise ValueError(f"path {path!r} is not inside root {root!r}")
  relative = path[len(prefix):]
  return posixpath.splitext(relative)[0]


def layout_roots(input_root: Optional[str] = None, split: str = "DET/train",
                 images: Optional[str] = None,
                 annotations: Optional[str] = None) -> Tuple[str, str]:
  """(images_dir, annotations_dir) of one split.

  ILSVRC 2015+/Kaggle layout: `input_root` -> (ROOT/Data/<split>, ROOT/Annotations/<split>).
  2014 tarball layout: `images` and `annotations` directories, used as given.
  """
  if input_root and (images or annotations):
    raise ValueError(
        f"give either --input ROOT or --images DIR --annotations DIR, not both "
        f"(got input={input_root!r}, images={images!r}, annotations={annotations!r})")
  if input_root:
    split = (split or "").strip("/")
    if not split or ".." in split.split("/"):
      raise ValueError(f"--split must be a path like 'DET/train', got {split!r}")
    root = input_root.rstrip("/")
    return f"{root}/Data/{split}", f"{root}/Annotations/{split}"
  if images and annotations:
    return images.rstrip("/"), annotations.rstrip("/")
  if images or annotations:
    raise ValueError(f"--images and --annotations go together "
                     f"(got images={images!r}, annotations={annotations!r})")
  raise ValueError("no input given: use --input ROOT (ILSVRC 2015+ layout) or "
                   "--images DIR --annotations DIR (2014 tarball layout)")


def list_files(directory: str, extensions: Iterable[str]) -> List[str]:
  """Sorted full paths of the files under `directory` (recursive) ending in `extensions`.

  Beam's FileSystems match `DIR/**` recursively on the local filesystem and on
  GCS/S3/HDFS alike; a directory that does not exist gives an empty list.
  """
  from apache_beam.io.filesystems import FileSystems

  extensions = tuple(extensions)
  pattern = directory.rstrip("/") + "/**"
  result = FileSystems.match([pattern])[0]
  return sorted(m.path for m in result.metadata_list if m.path.endswith(extensions))


def parse_image_set(text: str) -> List[str]:
  """Image ids of an ILSVRC ImageSets list file (or one line of it).

  The id is the first token of each non-empty line: `val.txt` "<id> <index>",
  `train_loc.txt` "n01440764/n01440764_10040 1", DET `train_N.txt` "<id> <label>"
  (label -1 = verified negative, still an image). Extensions are stripped.
  """
  ids = []
  for line in text.lstrip("\ufeff").splitlines():
    tokens = line.split()
    if not tokens:
      continue
    image_id = tokens[0]
    while image_id.startswith("./"):
      image_id = image_id[2:]
    ids.append(posixpath.splitext(image_id)[0])
  return ids


def read_bytes(path: str) -> bytes:
  """Whole content of `path` through Beam's FileSystems (no decompression)."""
  from apache_beam.io.filesystems import CompressionTypes, FileSystems  # lazy: module doc

  with FileSystems.open(path, mime_type="application/octet-stream",
                        compression_type=CompressionTypes.UNCOMPRESSED) as f:
    return f.read()


# ---------------------------------------------------------------------------
# Annotations


@dataclasses.dataclass
class Annotation:
  """One parsed XML file.

  width, height: the XML <size> in pixels (None when absent or unusable).
  boxes: float64 [N, 4] continuous x1, y1, x2, y2 (x2 = xmax + 1), not yet
    checked against the image.
  names: N class names (WNIDs as a rule).
  stats: counts of what the parser did (boxes_invalid, boxes_float_coords, ...).
  """

  width: Optional[int]
  height: Optional[int]
  boxes: np.ndarray
  names: List[str]
  stats: Dict[str, int] = dataclasses.field(default_factory=dict)


def _count(stats: Dict[str, int], key: str, n: int = 1) -> None:
  if n:
    stats[key] = stats.get(key, 0) + int(n)


def _parse_size(root, stats: Dict[str, int]) -> Tuple[Optional[int], Optional[int]]:
  size = root.find("size")
  if size is None:
    _count(stats, "size_missing")
    return None, None
  values = []
  for tag in ("width", "height"):
    text = (size.findtext(tag) or "").strip()
    try:
      value = float(text)
    except ValueError:
      value = float("nan")
    if not math.isfinite(value) or value < 1 or value != int(value):
      _count(stats, "size_invalid")
      return None, None
    values.append(int(value))
  return values[0], values[1]


def _parse_box(bndbox, stats: Dict[str, int]) -> Optional[List[float]]:
  """[x1, y1, x2, y2] of one <bndbox>, or None (counted) when unusable."""
  if bndbox is None:
    return None
  values = {}
  is_float = False
  for tag in _COORD_TAGS:
    text = bndbox.findtext(tag)
    if text is None:
      return None
    text = text.strip()
    try:
      value = float(text)
    except ValueError:
      return None
    if not math.isfinite(value):
      return None
    is_float |= not _INT_PATTERN.fullmatch(text)
    values[tag] = value
  _count(stats, "boxes_float_coords", int(is_float))
  return [values["xmin"], values["ymin"], values["xmax"] + 1.0, values["ymax"] + 1.0]


def parse_annotation(xml_bytes: bytes) -> Annotation:
  """Annotation of one ILSVRC XML file (DET, CLS-LOC or VID schema).

  Fields are found by tag name (the order of xmin/xmax/ymin/ymax differs between
  DET, CLS-LOC and VID). DTDs, entities and external references are refused, so
  no file outside the dataset is ever read. <filename> and <folder> are ignored.
  One object without a usable <bndbox> is dropped and counted (`boxes_invalid`),
  not the whole file. Names that are not WNIDs are kept and counted.
  """
  if not xml_bytes:
    raise AnnotationError("empty file (0 bytes)")
  try:
    root = SafeElementTree.fromstring(xml_bytes, forbid_dtd=True, forbid_entities=True,
                                      forbid_external=True)
  except defusedxml.DTDForbidden as e:
    raise AnnotationError(
        f"refused: the XML declares a DOCTYPE/DTD (name={e.name!r}, sysid={e.sysid!r}); "
        f"DTDs, entities and external references are not allowed") from None
  except defusedxml.EntitiesForbidden as e:
    raise AnnotationError(
        f"refused: the XML declares entity {e.name!r}; entities are not allowed") from None
  except defusedxml.ExternalReferenceForbidden as e:
    raise AnnotationError(
        f"refused: the XML references an external resource (sysid={e.sysid!r})") from None
  except defusedxml.DefusedXmlException as e:
    raise AnnotationError(f"refused: unsafe XML ({type(e).__name__}: {e})") from None
  except SafeElementTree.ParseError as e:
    raise AnnotationError(f"malformed XML: {e}") from None
  if root.tag != "annotation":
    raise AnnotationError(f"root element is <{root.tag}>, expected <annotation>")

  stats: Dict[str, int] = {}
  width, height = _parse_size(root, stats)
  boxes, names = [], []
  for obj in root.findall("object"):
    box = _parse_box(obj.find("bndbox"), stats)
    if box is None:
      _count(stats, "boxes_invalid")
      continue
    name = (obj.findtext("name") or "").strip()
    if not name:
      _count(stats, "names_missing")
    elif not WNID_PATTERN.fullmatch(name):
      _count(stats, "names_not_wnid")
    boxes.append(box)
    names.append(name)
  boxes_array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
  return Annotation(width, height, boxes_array, names, stats)


# ---------------------------------------------------------------------------
# Box policy


def _sanitize(boxes: np.ndarray, width: float,
              height: float) -> Tuple[np.ndarray, np.ndarray, Dict[str, int]]:
  """(keep [N] bool, clipped boxes [N, 4], stats): the policy of `sanitize_boxes`."""
  boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
  x1, y1, x2, y2 = boxes.T
  finite = np.isfinite(boxes).all(axis=1)
  with np.errstate(invalid="ignore"):
    reversed_ = finite & ((x1 >= x2) | (y1 >= y2))
    valid = finite & ~reversed_
    # No contact at all with the image rectangle [0, W] x [0, H].
    outside = valid & ((x2 < 0) | (y2 < 0) | (x1 > width) | (y1 > height))
  clipped = boxes.copy()
  clipped[:, 0::2] = np.clip(clipped[:, 0::2], 0.0, width)
  clipped[:, 1::2] = np.clip(clipped[:, 1::2], 0.0, height)
  candidates = valid & ~outside
  with np.errstate(invalid="ignore"):
    # Touching the image only along its border (e.g. xmax = -1 -> x2 = 0).
    zero_area = candidates & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
  keep = candidates & ~zero_area
  was_clipped = keep & (clipped != boxes).any(axis=1)
  stats: Dict[str, int] = {}
  _count(stats, "boxes_invalid", int((~finite).sum()))
  _count(stats, "boxes_min_gt_max", int(reversed_.sum()))
  _count(stats, "boxes_outside", int(outside.sum()))
  _count(stats, "boxes_zero_area", int(zero_area.sum()))
  _count(stats, "boxes_clipped", int(was_clipped.sum()))
  return keep, clipped, stats


def sanitize_boxes(boxes: np.ndarray, width: float,
                   height: float) -> Tuple[np.ndarray, Dict[str, int]]:
  """Boxes [N, 4] -> (kept boxes float64 [M, 4], stats) for a W x H image.

  Policy: non-finite -> dropped (boxes_invalid); x1 >= x2 or y1 >= y2, i.e.
  xmin > xmax in the XML -> dropped (boxes_min_gt_max); no contact with the image
  -> dropped (boxes_outside); partly outside -> clipped to [0, W] x [0, H]
  (boxes_clipped); zero area after clipping, i.e. touching the image only along
  its border -> dropped (boxes_zero_area).
  """
  keep, clipped, stats = _sanitize(boxes, width, height)
  return clipped[keep], stats


def _reconcile(annotation: Annotation, image_width: int,
               image_height: int) -> Tuple[np.ndarray, np.ndarray, Dict[str, int]]:
  boxes = np.asarray(annotation.boxes, dtype=np.float64).reshape(-1, 4)
  stats = dict(annotation.stats)
  if (annotation.width is not None and annotation.height is not None
      and (annotation.width, annotation.height) != (image_width, image_height)):
    scale = np.array([image_width / annotation.width, image_height / annotation.height] * 2)
    boxes = boxes * scale
    _count(stats, "size_mismatch")
  keep, clipped, box_stats = _sanitize(boxes, image_width, image_height)
  for key, value in box_stats.items():
    _count(stats, key, value)
  return clipped[keep], keep, stats


def reconcile_size(annotation: Annotation, image_width: int,
                   image_height: int) -> Tuple[np.ndarray, Dict[str, int]]:
  """Boxes in the real image's frame (float64 [M, 4]) and the merged stats.

  When the XML <size> differs from the decoded image's size, boxes are rescaled
  by real / XML size (the XML holds the size shown to the annotator, as
  TensorFlow's process_bounding_boxes.py assumes) and `size_mismatch` is
  counted; then `sanitize_boxes` runs against the real size.
  """
  boxes, _, stats = _reconcile(annotation, image_width, image_height)
  return boxes, stats


# ---------------------------------------------------------------------------
# One example


def _read_annotation(annotation_path: Optional[str]) -> Optional[Annotation]:
  """The parsed XML, or None without one; AnnotationError when unreadable or bad."""
  if annotation_path is None:
    return None
  try:
    xml_bytes = read_bytes(annotation_path)
  except OSError as e:
    raise AnnotationError(f"cannot read annotation file: {type(e).__name__}: {e}") from None
  return parse_annotation(xml_bytes)


def load_example(image_path: str, annotation_path: Optional[str],
                 max_pixels: int = config.DEFAULT_MAX_PIXELS
                 ) -> Tuple[np.ndarray, np.ndarray, List[str], Dict[str, int]]:
  """(image uint8 [H, W, 3], boxes float64 [M, 4] in its frame, M names, stats).

  `annotation_path` None gives zero boxes (a negative image). Raises
  AnnotationError (stage "annotation") or ImageError (stage "decode").
  """
  annotation = _read_annotation(annotation_path)
  try:
    data = read_bytes(image_path)
  except OSError as e:
    raise images_lib.ImageError(f"cannot read image file: {type(e).__name__}: {e}") from None
  image = images_lib.decode_image(data, max_pixels)
  if annotation is None:
    return image, np.zeros((0, 4), np.float64), [], {}
  height, width = image.shape[:2]
  boxes, keep, stats = _reconcile(annotation, width, height)
  names = [annotation.names[i] for i in np.flatnonzero(keep)]
  return image, boxes, names, stats


def load_boxes(image_path: str, annotation_path: Optional[str],
               max_pixels: int = config.DEFAULT_MAX_PIXELS
               ) -> Tuple[Tuple[int, int], np.ndarray, Dict[str, int]]:
  """((width, height), boxes float64 [M, 4], stats) as load_example gives them,
  reading the image's header only (image_size), not its pixels.

  The same order, box policy and errors as load_example, except for pixels
  that are corrupt past a valid header, which only decoding finds.
  """
  annotation = _read_annotation(annotation_path)
  width, height = images_lib.image_size(image_path, max_pixels)
  if annotation is None:
    return (width, height), np.zeros((0, 4), np.float64), {}
  boxes, _, stats = _reconcile(annotation, width, height)
  return (width, height), boxes, stats
