"""`rpn-propose`: region proposals of a trained RPN for whole images.

    rpn-propose --job_dir JOB (--input ROOT [--split DET/val] | --images GLOB) --output DIR
                [--pre_nms_top_n 6000] [--post_nms_top_n 300] [--nms_thresh 0.7]
                [--min_size 16] [--draw 8] [--weights OVERRIDE]

Everything about the backbone and the anchors comes from the job's manifest.json
(the data manifest of rpn-preprocess), so an image goes through exactly what
the training images went through: decode, optional resize, padding of small
images (bottom/right), the frozen backbone, then the RPN head applied
convolutionally to the whole feature map. Per image: decode the deltas of every
anchor (dw, dh clamped), clip to the frame, drop boxes under min_size, keep the
top pre_nms_top_n by score, NMS, keep the top post_nms_top_n.

Writes into --output: proposals.jsonl (one line per image: image_id, width,
height, boxes, scores, gt_boxes when an annotation exists, and image_width,
image_height, box_scale so that rpn-evaluate can bring XML boxes into the
frame), errors.jsonl (path, stage, reason of every image that failed; the
others go on), propose.json (settings and counts) and pictures/<id>.png for the
first --draw images.

Units: boxes are x1, y1, x2, y2 in continuous pixels of the frame fed to the
backbone (DESIGN.md); width and height are that frame's; min_size is in the
frame's pixels; scores are objectness probabilities in [0, 1].

Shape shorthand:
  Hf, Wf  feature-map height and width; C feature channels
  A       anchors per point (9 with the default anchors)
  K       anchors of an image, Hf * Wf * A, index p * A + a with p = y * Wf + x
  N       proposals kept for an image
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import sys
import time
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from pipeline import anchors as anchors_lib
from pipeline import boxes as boxes_lib
from trainer import evaluate as evaluate_lib
from trainer import model as model_lib  # imports TensorFlow only when a model is built

WEIGHTS_NAME = model_lib.WEIGHTS_NAME
MANIFEST_NAME = model_lib.MANIFEST_NAME
TRAIN_CONFIG_NAME = model_lib.TRAIN_CONFIG_NAME
JOB_FILES = (WEIGHTS_NAME, MANIFEST_NAME, TRAIN_CONFIG_NAME)
PROPOSALS_NAME = evaluate_lib.PROPOSALS_NAME
ERRORS_NAME = "errors.jsonl"
SETTINGS_NAME = "propose.json"
PICTURES_DIR = "pictures"
PICTURE_TOP = 20  # proposals drawn per picture

_LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ProposalConfig:
  """Post-processing of the RPN's outputs (py-faster-rcnn's test-time defaults)."""
  pre_nms_top_n: int = 6000  # 0: no limit
  post_nms_top_n: int = 300  # 0: no limit
  nms_thresh: float = 0.7
  min_size: float = 16.0  # pixels of the frame
  # "inside": only anchors inside the frame, the ones training labels (an RPN
  # learns nothing about the others: with few large anchors inside ILSVRC-sized
  # images, their untrained scores would crowd out the rest); "all": every
  # anchor, clipped, as py-faster-rcnn does at test time. An image with no
  # inside anchor at all (smaller than the smallest anchor) uses all of them.
  anchors: str = "inside"


class JobError(ValueError):
  """The job directory cannot be used (missing file, mismatched manifest or model)."""


# ---------------------------------------------------------------------------
# Numeric part (numpy only)


def propose_boxes(scores: np.ndarray, deltas: np.ndarray, anchors: np.ndarray, width: float,
                  height: float, pre_nms_top_n: int = ProposalConfig.pre_nms_top_n,
                  post_nms_top_n: int = ProposalConfig.post_nms_top_n,
                  nms_thresh: float = ProposalConfig.nms_thresh,
                  min_size: float = ProposalConfig.min_size) -> Tuple[np.ndarray, np.ndarray]:
  """(boxes float64 [N, 4], scores float64 [N]) of one image, best score first.

  scores [K], deltas [K, 4] (dx, dy, dw, dh), anchors [K, 4] in the W x H frame.
  Decode (dw, dh clamped), clip to [0, W] x [0, H], drop non-finite boxes and
  boxes narrower or lower than min_size pixels, keep the top pre_nms_top_n by
  score, NMS at nms_thresh, keep the top post_nms_top_n (a top-N of 0 or None
  keeps all). Equal scores keep anchor order.
  """
  scores = np.asarray(scores, np.float64).reshape(-1)
  deltas = np.asarray(deltas, np.float64).reshape(-1, 4)
  anchors = np.asarray(anchors, np.float64).reshape(-1, 4)
  if not len(scores) == len(deltas) == len(anchors):
    raise ValueError(f"scores {scores.shape}, deltas {deltas.shape} and anchors "
                     f"{anchors.shape} do not have the same number of anchors")
  boxes = boxes_lib.decode_deltas(anchors, deltas)
  boxes = boxes_lib.clip_boxes(boxes, width, height)
  finite = np.flatnonzero(np.isfinite(scores) & np.isfinite(boxes).all(axis=1))
  boxes, scores = boxes[finite], scores[finite]
  keep = np.asarray(boxes_lib.remove_small_boxes(boxes, min_size), np.int64)
  boxes, scores = boxes[keep], scores[keep]
  order = np.argsort(-scores, kind="stable")
  if pre_nms_top_n:
    order = order[:pre_nms_top_n]
  boxes, scores = boxes[order], scores[order]
  keep = np.asarray(boxes_lib.nms(boxes, scores, nms_thresh), np.int64)
  if post_nms_top_n:
    keep = keep[:post_nms_top_n]
  return boxes[keep], scores[keep]


# ---------------------------------------------------------------------------
# The job


def _join(directory: str, name: str) -> str:
  from apache_beam.io.filesystems import FileSystems
  return FileSystems.join(directory, name)


def _exists(path: str) -> bool:
  from apache_beam.io.filesystems import FileSystems
  return FileSystems.exists(path)


def read_job_manifest(job_dir: str) -> dict:
  """manifest.json of a job directory, after checking the job's files are all there.

  Raises JobError naming the missing file, or the manifest field that does not
  fit its backbone (another backbone's channels, unknown stride mode, ...).
  """
  from pipeline import backbone as backbone_lib
  if not _exists(job_dir):
    raise JobError(f"job directory not found: {job_dir}")
  for name in JOB_FILES:
    if not _exists(_join(job_dir, name)):
      raise JobError(f"job directory {job_dir} has no {name} ({_join(job_dir, name)} not "
                     f"found): is it the --job_dir of a finished rpn-train run?")
  path = _join(job_dir, MANIFEST_NAME)
  try:
    manifest = json.loads(evaluate_lib.read_text(path))
  except json.JSONDecodeError as e:
    raise JobError(f"{path} is not JSON: {e}") from None
  missing = [k for k in ("backbone", "weights", "feature_channels", "anchor", "min_input_side")
             if k not in manifest]
  if missing:
    raise JobError(f"{path} lacks {missing}: not a manifest written by rpn-preprocess")
  try:
    spec = backbone_lib.backbone_spec(manifest["backbone"])
  except ValueError as e:
    raise JobError(f"{path}: {e}") from None
  if int(manifest["feature_channels"]) != spec.channels:
    raise JobError(f"{path}: feature_channels {manifest['feature_channels']} does not match "
                   f"backbone {manifest['backbone']} ({spec.channels} channels)")
  if int(manifest["min_input_side"]) < spec.min_input_side:
    raise JobError(f"{path}: min_input_side {manifest['min_input_side']} is below the "
                   f"{spec.min_input_side} px backbone {manifest['backbone']} accepts")
  if manifest.get("stride_mode", "ratio") != "ratio":
    raise JobError(f"{path}: stride_mode {manifest['stride_mode']!r} is not supported "
                   f"(only 'ratio')")
  anchor = manifest["anchor"]
  num_anchors = len(anchor["scales"]) * len(anchor["ratios"])
  if int(anchor.get("num_anchors", num_anchors)) != num_anchors:
    raise JobError(f"{path}: anchor num_anchors {anchor['num_anchors']} != "
                   f"{len(anchor['scales'])} scales x {len(anchor['ratios'])} ratios")
  return manifest


def prepare_frame(image: np.ndarray, gt_boxes: np.ndarray, manifest: dict
                  ) -> Tuple[np.ndarray, np.ndarray, Tuple[float, float]]:
  """(frame uint8 [H, W, 3], gt boxes in it, box_scale (sx, sy)), as the pipeline does.

  The manifest's optional resize, then zero padding at the bottom/right up to
  min_input_side (backbone.prepare_image). box_scale is frame pixels per pixel
  of the decoded image (1, 1 without resize; padding moves no coordinate).
  """
  from pipeline import backbone as backbone_lib
  height, width = image.shape[:2]
  resize = manifest.get("resize") or {}
  # The whole image as one more box gives the resized size.
  whole = np.array([[0.0, 0.0, width, height]])
  frame, frame_boxes, _ = backbone_lib.prepare_image(
      image, np.vstack([np.asarray(gt_boxes, np.float64).reshape(-1, 4), whole]),
      int(manifest["min_input_side"]), resize.get("min_side"), resize.get("max_side"))
  box_scale = (float(frame_boxes[-1, 2]) / width, float(frame_boxes[-1, 3]) / height)
  return frame, frame_boxes[:-1], box_scale


class Proposer:
  """A job's backbone and RPN, built once; image -> proposals.

  The backbone's tf.function and the RPN head's tf.function both take a
  size-agnostic input signature, so one trace serves every image size
  (`traces` counts the head's traces).
  """

  def __init__(self, job_dir: str, weights: Optional[str] = None,
               config: ProposalConfig = ProposalConfig()):
    from pipeline import backbone as backbone_lib
    manifest = read_job_manifest(job_dir)
    import tensorflow as tf
    try:
      _, inference_model, _, train_config = model_lib.load_rpn(job_dir)
    except (ValueError, OSError, KeyError, TypeError) as e:
      raise JobError(f"cannot load the RPN from {_join(job_dir, WEIGHTS_NAME)} "
                     f"({type(e).__name__}: {e})") from None
    self.manifest, self.train_config, self.config = manifest, train_config, config
    self.channels = int(manifest["feature_channels"])
    self.num_anchors = len(manifest["anchor"]["scales"]) * len(manifest["anchor"]["ratios"])
    model_channels = inference_model.inputs[0].shape[-1]
    if model_channels is not None and int(model_channels) != self.channels:
      raise JobError(f"the RPN in {_join(job_dir, WEIGHTS_NAME)} takes {model_channels} "
                     f"channels but the manifest's backbone {manifest['backbone']} gives "
                     f"{self.channels}")
    self.weights = weights or manifest["weights"]
    if weights and weights != manifest["weights"]:
      _LOGGER.warning("backbone weights %s instead of the manifest's %s: the RPN was trained "
                      "on features of the latter", weights, manifest["weights"])
    try:
      self.extractor = backbone_lib.FeatureExtractor(
          manifest["backbone"], self.weights, int(manifest.get("weights_seed", 0)))
    except backbone_lib.WeightsUnavailableError as e:
      raise JobError(f"backbone weights of the job ({self.weights}): {e}") from None
    # Features go through the dtype the tiles were stored in, as in training.
    self.feature_dtype = np.dtype(manifest.get("dtype", "float32"))
    self.traces = 0

    def forward(feature_map):
      self.traces += 1  # Python side effect: runs once per trace only
      outputs = inference_model(feature_map, training=False)
      return outputs["scores"], outputs["deltas"]

    self._forward = tf.function(
        forward, input_signature=[tf.TensorSpec([1, None, None, self.channels], tf.float32)])

  def prepare(self, image: np.ndarray, gt_boxes: np.ndarray
              ) -> Tuple[np.ndarray, np.ndarray, Tuple[float, float]]:
    """prepare_frame with this job's manifest."""
    return prepare_frame(image, gt_boxes, self.manifest)

  def head(self, frame: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores [K], deltas [K, 4], anchors [K, 4]) of a frame uint8 [H, W, 3]."""
    feature_map = self.extractor(frame)  # [Hf, Wf, C]
    if feature_map.shape[-1] != self.channels:
      raise JobError(f"backbone {self.manifest['backbone']} gave {feature_map.shape[-1]} "
                     f"channels, the manifest says {self.channels}")
    feature_map = feature_map.astype(self.feature_dtype).astype(np.float32)
    scores, deltas = self._forward(feature_map[np.newaxis])
    scores, deltas = scores.numpy()[0], deltas.numpy()[0]  # [Hf, Wf, A], [Hf, Wf, 4A]
    feature_height, feature_width = feature_map.shape[:2]
    if scores.shape != (feature_height, feature_width, self.num_anchors) or (
        deltas.shape != (feature_height, feature_width, 4 * self.num_anchors)):
      raise JobError(f"the RPN gives scores {scores.shape} and deltas {deltas.shape} for a "
                     f"{feature_height}x{feature_width} map; the manifest's anchors need "
                     f"{self.num_anchors} per point")
    height, width = frame.shape[:2]
    stride_x, stride_y = anchors_lib.ratio_strides(width, height, feature_width, feature_height)
    anchors = anchors_lib.grid_anchors(
        feature_height, feature_width, stride_x, stride_y,
        self.manifest["anchor"]["scales"], self.manifest["anchor"]["ratios"])
    return scores.reshape(-1), deltas.reshape(-1, 4), anchors

  def __call__(self, frame: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(boxes [N, 4], scores [N]) of a frame, best first."""
    scores, deltas, anchors = self.head(frame)
    height, width = frame.shape[:2]
    c = self.config
    if c.anchors == "inside":
      inside = anchors_lib.inside_mask(anchors, width, height)
      if inside.any():  # an image too small for any anchor falls back to all of them
        scores, deltas, anchors = scores[inside], deltas[inside], anchors[inside]
    return propose_boxes(scores, deltas, anchors, width, height, c.pre_nms_top_n,
                         c.post_nms_top_n, c.nms_thresh, c.min_size)


# ---------------------------------------------------------------------------
# Inputs and outputs


def _glob_root(pattern: str) -> str:
  """The directory part of a glob before its first wildcard (image ids are relative to it)."""
  cut = min([i for i in (pattern.find(c) for c in "*?[") if i >= 0] or [len(pattern)])
  return pattern[:cut].rsplit("/", 1)[0] if "/" in pattern[:cut] else "."


def list_inputs(input_root: Optional[str], split: str, images_glob: Optional[str]
                ) -> List[Tuple[str, str, Optional[str]]]:
  """(image_id, image_path, annotation_path or None) of every image to propose for."""
  from apache_beam.io.filesystems import FileSystems
  from pipeline import ilsvrc
  if bool(input_root) == bool(images_glob):
    raise ValueError("give exactly one of --input ROOT (ILSVRC layout, with annotations) "
                     "or --images GLOB")
  if input_root:
    images_dir, annotations_dir = ilsvrc.layout_roots(input_root=input_root, split=split)
    paths = ilsvrc.list_files(images_dir, ilsvrc.IMAGE_EXTENSIONS)
    if not paths:
      raise ValueError(f"no images ({', '.join(ilsvrc.IMAGE_EXTENSIONS)}) under {images_dir}")
    annotations = {ilsvrc.relative_id(p, annotations_dir): p for p in ilsvrc.list_files(
        annotations_dir, (ilsvrc.ANNOTATION_EXTENSION,))}
    out = []
    for path in paths:
      image_id = ilsvrc.relative_id(path, images_dir)
      out.append((image_id, path, annotations.get(image_id)))
    return out
  root = _glob_root(images_glob)
  paths = sorted(m.path for m in FileSystems.match([images_glob])[0].metadata_list)
  if not paths:
    raise ValueError(f"--images {images_glob}: no file matches")
  return [(ilsvrc.relative_id(p, root), p, None) for p in paths]


def picture_name(image_id: str) -> str:
  return image_id.replace("/", "__") + ".png"


def _rounded(array: np.ndarray, decimals: int) -> list:
  return np.round(np.asarray(array, np.float64), decimals).tolist()


def proposal_line(image_id: str, frame: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                  gt_boxes: Optional[np.ndarray], image_size: Tuple[int, int],
                  box_scale: Tuple[float, float]) -> dict:
  """One proposals.jsonl line (see the module doc)."""
  line = {
      "image_id": image_id,
      "width": int(frame.shape[1]),
      "height": int(frame.shape[0]),
      "boxes": _rounded(boxes, 3),
      "scores": _rounded(scores, 6),
      "image_width": int(image_size[0]),
      "image_height": int(image_size[1]),
      "box_scale": [float(box_scale[0]), float(box_scale[1])],
  }
  if gt_boxes is not None:
    line["gt_boxes"] = _rounded(gt_boxes, 3)
  return line


def iter_proposals(proposer: Proposer, inputs, max_pixels: int
                   ) -> Iterator[Tuple[str, object, object]]:
  """("ok", line, (frame, boxes, scores, gt)) or ("error", record, None) per input."""
  import tensorflow as tf
  from pipeline import ilsvrc
  for image_id, image_path, annotation_path in inputs:
    try:
      image, gt_boxes, _, _ = ilsvrc.load_example(image_path, annotation_path, max_pixels)
    except ilsvrc.InputError as e:
      path = annotation_path if e.stage == "annotation" else image_path
      yield "error", {"path": path, "stage": e.stage, "reason": str(e),
                      "image_id": image_id}, None
      continue
    height, width = image.shape[:2]
    frame, frame_gt, box_scale = proposer.prepare(image, gt_boxes)
    try:
      boxes, scores = proposer(frame)
    except JobError:
      raise  # the job does not fit: every image would fail the same way
    except (ValueError, tf.errors.OpError, MemoryError) as e:
      yield "error", {"path": image_path, "stage": "propose",
                      "reason": f"{type(e).__name__}: {e}", "image_id": image_id}, None
      continue
    gt = frame_gt if annotation_path is not None else None
    line = proposal_line(image_id, frame, boxes, scores, gt, (width, height), box_scale)
    yield "ok", line, (frame, boxes, scores, gt)


def build_parser() -> argparse.ArgumentParser:
  defaults = ProposalConfig()
  parser = argparse.ArgumentParser(
      prog="rpn-propose", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--job_dir", required=True,
                      help="output of rpn-train (rpn.weights.h5, manifest.json, train_config.json)")
  parser.add_argument("--input", help="dataset root of the ILSVRC 2015+ layout; annotations "
                      "(Annotations/<split>/<id>.xml) give the gt boxes")
  parser.add_argument("--split", default="DET/val", help="split under Data/ and Annotations/")
  parser.add_argument("--images", help="glob of image files (no gt boxes), e.g. 'dir/*.JPEG'")
  parser.add_argument("--output", required=True, help="output directory")
  parser.add_argument("--pre_nms_top_n", type=int, default=defaults.pre_nms_top_n,
                      help="boxes kept before NMS, best score first (0: all)")
  parser.add_argument("--post_nms_top_n", type=int, default=defaults.post_nms_top_n,
                      help="proposals kept after NMS (0: all)")
  parser.add_argument("--nms_thresh", type=float, default=defaults.nms_thresh)
  parser.add_argument("--min_size", type=float, default=defaults.min_size,
                      help="drop boxes narrower or lower than this, in pixels of the frame")
  parser.add_argument("--anchors", choices=("inside", "all"), default=defaults.anchors,
                      help="propose from the anchors inside the image (those training "
                      "labels) or from all anchors, clipped")
  parser.add_argument("--draw", type=int, default=8,
                      help="pictures of the first N images (top 20 proposals, gt boxes)")
  parser.add_argument("--weights", default=None,
                      help="backbone weights instead of the manifest's (imagenet|none|PATH)")
  return parser


def _write_json_line(f, record: dict) -> None:
  f.write((json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))


def run(argv: Optional[Sequence[str]] = None) -> dict:
  """Parses flags, proposes for every image, writes the outputs; returns propose.json."""
  from apache_beam.io.filesystems import FileSystems
  from pipeline import ilsvrc
  from trainer import draw
  args = build_parser().parse_args(argv)
  config = ProposalConfig(args.pre_nms_top_n, args.post_nms_top_n, args.nms_thresh,
                          args.min_size, args.anchors)
  if config.pre_nms_top_n < 0 or config.post_nms_top_n < 0 or not 0 < config.nms_thresh <= 1:
    raise ValueError(f"need pre_nms_top_n, post_nms_top_n >= 0 and 0 < nms_thresh <= 1, "
                     f"got {config}")
  inputs = list_inputs(args.input, args.split, args.images)
  proposer = Proposer(args.job_dir, args.weights, config)
  output = args.output.rstrip("/")
  if "://" not in output:
    os.makedirs(output, exist_ok=True)
  counts = {"images_found": len(inputs), "images_ok": 0, "images_failed": 0, "proposals": 0}
  drawn, start = 0, time.monotonic()
  max_pixels = int(proposer.manifest.get("max_pixels", ilsvrc.DEFAULT_MAX_PIXELS))
  with FileSystems.create(_join(output, PROPOSALS_NAME)) as proposals_file, \
      FileSystems.create(_join(output, ERRORS_NAME)) as errors_file:
    for outcome, record, extra in iter_proposals(proposer, inputs, max_pixels):
      if outcome == "error":
        counts["images_failed"] += 1
        _write_json_line(errors_file, record)
        _LOGGER.warning("%s: %s failed: %s", record["path"], record["stage"], record["reason"])
        continue
      counts["images_ok"] += 1
      counts["proposals"] += len(record["boxes"])
      _write_json_line(proposals_file, record)
      if drawn < args.draw:
        frame, boxes, scores, gt = extra
        picture = draw.draw_proposals(frame, boxes, scores, gt, top=PICTURE_TOP,
                                      title=record["image_id"])
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        evaluate_lib.write_bytes(
            _join(output, f"{PICTURES_DIR}/{picture_name(record['image_id'])}"),
            buffer.getvalue())
        drawn += 1
      done = counts["images_ok"] + counts["images_failed"]
      if done % 100 == 0:
        _LOGGER.warning("rpn-propose: %d of %d images in %.0f s", done, len(inputs),
                        time.monotonic() - start)
  settings = {
      "job_dir": args.job_dir,
      "input": args.input, "split": args.split if args.input else None, "images": args.images,
      "backbone": proposer.manifest["backbone"], "weights": proposer.weights,
      "proposal": dataclasses.asdict(config),
      "counts": counts,
      "pictures": drawn,
      "head_traces": proposer.traces,
      "seconds": round(time.monotonic() - start, 3),
  }
  evaluate_lib.write_bytes(_join(output, SETTINGS_NAME),
                           (json.dumps(settings, indent=2) + "\n").encode("utf-8"))
  settings["output"] = output
  return settings


def main(argv: Optional[Sequence[str]] = None) -> int:
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
  try:
    settings = run(argv)
  except ValueError as e:  # JobError, bad flags, no images
    print(f"rpn-propose: error: {e}", file=sys.stderr)
    return 2
  c = settings["counts"]
  print(f"images: {c['images_found']} found = {c['images_ok']} ok + {c['images_failed']} "
        f"failed; {c['proposals']} proposals "
        f"({c['proposals'] / max(1, c['images_ok']):.1f} per image) in {settings['seconds']:.1f} s")
  print(f"wrote {settings['output']}/{PROPOSALS_NAME}, {ERRORS_NAME}, {SETTINGS_NAME} and "
        f"{settings['pictures']} pictures")
  return 0


if __name__ == "__main__":
  sys.exit(main())
