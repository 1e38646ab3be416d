"""What flows between the preprocessing steps: image elements, error records, counts.

The output tags (ERRORS, IMAGES, STATS), the NamedTuples each step passes on
(ImageInput -> LoadedImage -> ImageFeatures), the errors.jsonl record of one
input (`error_record`, its outcome FAILED or SKIPPED) and how an error or a
Beam dead letter adds to the counts. Every Beam counter is in namespace "rpn".
"""
from __future__ import annotations

import json
from typing import Any, Dict, NamedTuple, Optional, Tuple

from apache_beam.metrics import Metrics

from pipeline.beam import metrics as metrics_lib
from pipeline.beam import progress as progress_lib
from pipeline.core import anchors as anchors_lib

NAMESPACE = metrics_lib.NAMESPACE  # every counter's (metrics.COUNTERS says what each counts)


ERRORS = "errors"


IMAGES = "images"


STATS = "stats"


# Outcomes of one listed image; exactly one per image file.
FAILED, SKIPPED = "failed", "skipped"


class ImageInput(NamedTuple):
  image_id: str
  image_path: str
  annotation_path: Optional[str]


class ImageSource(NamedTuple):
  """The decoded image a frame was made of (rpn-propose's boxes in its pixels)."""
  width: int
  height: int
  box_scale: Tuple[float, float]  # frame px per image px (frame.box_scale)
  annotated: bool = True  # an XML gave its boxes (else: no gt boxes known)


class LoadedImage(NamedTuple):
  image_id: str
  image_path: str
  image: Any  # uint8 [H, W, 3], the frame fed to the backbone
  gt_boxes: Any  # float64 [G, 4]
  stats: Dict[str, int]
  flipped: bool = False  # the mirrored copy of an input (--flip), not an input itself
  source: Optional[ImageSource] = None


class ImageFeatures(NamedTuple):
  image_id: str
  image_path: str
  width: int
  height: int
  gt_boxes: Any
  feature_map: Any  # float32 [Hf, Wf, C]; a list of them, finest first, with several levels
  stats: Dict[str, int]
  flipped: bool = False
  source: Optional[ImageSource] = None


def counter(name: str):
  """The Beam counter `name` of the pipeline's namespace (rpn)."""
  return Metrics.counter(NAMESPACE, name)


def error_record(path: str, stage: str, reason: str, outcome: str = FAILED,
                 image_id: Optional[str] = None) -> Dict[str, Any]:
  """One errors.jsonl line (path, stage, reason) plus what it means for counts."""
  return {"path": path, "stage": stage, "reason": reason, "outcome": outcome,
          "image_id": image_id}


def no_anchor_error(path: str, image_id: str, num_inside: int, num_anchors: int, width: int,
                    height: int, feature_height: int, feature_width: int, scales
                    ) -> Dict[str, Any]:
  """The errors line of an image skipped because no anchor lies inside its frame."""
  stride_x, stride_y = anchors_lib.ratio_strides(width, height, feature_width, feature_height)
  return error_record(
      path, "targets",
      f"no anchor to sample: {num_inside} of {num_anchors} anchors lie "
      f"inside the {width}x{height} frame (feature map "
      f"{feature_height}x{feature_width}, stride {stride_x:.1f} x "
      f"{stride_y:.1f} px, smallest anchor scale {min(scales):g} strides)",
      outcome=SKIPPED, image_id=image_id)


def dead_letter_to_error(stage: str):
  """Maps Beam's dead letter (element, (type, value, traceback)) to an errors line."""
  def convert(dead):
    element, (exc_type, exc_value, _) = dead
    path = getattr(element, "image_path", None) or str(element)[:200]
    image_id = getattr(element, "image_id", None)
    name = getattr(exc_type, "__name__", str(exc_type))
    progress_lib.PROGRESS.error()
    counter("images_failed").inc()
    counter(f"failed_{stage}").inc()
    return error_record(path, stage, f"{name}: {exc_value}", image_id=image_id)
  return convert


def error_counts(error: Dict[str, Any]) -> Dict[str, int]:
  """What an errors line adds to the manifest counts."""
  outcome = error["outcome"]
  if outcome == FAILED:
    return {"images_failed": 1, f"failed_{error['stage']}": 1}
  if outcome == SKIPPED:
    return {"images_skipped": 1}
  return {"unpaired_inputs": 1}


def to_json_line(record: Dict[str, Any]) -> str:
  return json.dumps(record, sort_keys=True)


def error_line(error: Dict[str, Any]) -> str:
  """errors.jsonl keeps path, stage, reason (and outcome, image_id)."""
  return to_json_line({k: v for k, v in error.items() if v is not None})
