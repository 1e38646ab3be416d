"""`rpn-propose`: region proposals of a trained RPN for whole images.

    rpn-propose --job_dir JOB (--input ROOT [--split DET/val] | --images GLOB) --output DIR
                [--pre_nms_top_n 6000] [--post_nms_top_n 300] [--nms_thresh 0.7]
                [--min_size 16] [--draw 8] [--weights OVERRIDE]

The console script is trainer.cli.propose_main: it checks the flags and the
job before TensorFlow loads and calls propose() with the typed arguments it
built from them (trainer/arguments.py: ProposeArgs).

Everything about the backbone and the anchors comes from the job's manifest.json
(the data manifest of rpn-preprocess), so an image goes through exactly what
the training images went through: decode, optional resize, padding of small
images (bottom/right), the frozen backbone, then the RPN head applied
convolutionally to the whole feature map. Per image: decode the deltas of every
anchor (dw, dh clamped), clip to the frame, drop boxes under min_size (in pixels
of the original image, as py-faster-rcnn: scaled into the frame), keep the
top pre_nms_top_n by score, NMS, keep the top post_nms_top_n.

Writes into --output: proposals.jsonl (one line per image: image_id, width,
height, boxes, scores, gt_boxes when an annotation exists, and image_width,
image_height, box_scale so that rpn-evaluate can bring XML boxes into the
frame), errors.jsonl (image_id, path, stage, reason of every image that failed;
the others go on; rpn-evaluate counts their gt boxes as missed), propose.json
(settings and counts) and pictures/<id>.png for the first --draw images.

Units: boxes are x1, y1, x2, y2 in continuous pixels of the frame fed to the
backbone (DESIGN.md); width and height are that frame's; min_size is in the
original image's pixels; scores are objectness probabilities in [0, 1].

Shape shorthand:
  Hf, Wf  feature-map height and width; C feature channels
  A       anchors per point (9 with the default anchors)
  K       anchors of an image, Hf * Wf * A, index p * A + a with p = y * Wf + x
  N       proposals kept for an image
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import time
from typing import Iterator, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems

from pipeline.commands import backbone_check
from pipeline.core import anchors as anchors_lib
from pipeline.core import config
from pipeline.core import frame as frame_lib
from pipeline.core import proposals as proposals_lib
from pipeline.io import ilsvrc, storage
from pipeline.io import images as images_lib
from pipeline.io import manifest as manifest_lib
from pipeline.model import backbone as backbone_lib
from pipeline.model import extractor as extractor_lib
from trainer import draw, job
from trainer import model as model_lib
from trainer import settings as settings_lib
from trainer.arguments import ProposeArgs

PICTURES_DIR = "pictures"
PICTURE_TOP = 20  # proposals drawn per picture

_LOGGER = logging.getLogger(__name__)


class NoProposalsError(ValueError):
  """An image got no proposal at all (every decoded box non-finite or of zero area)."""


# ---------------------------------------------------------------------------
# The job


class Proposer:
  """A job's backbone and RPN, built once; image -> proposals.

  The backbone's tf.function and the RPN head's tf.function both take a
  size-agnostic input signature, so one trace serves every image size
  (`traces` counts the head's traces).
  """

  def __init__(self, job_dir: str, weights: Optional[str] = None,
               proposal_config: Optional[config.ProposalConfig] = None):
    proposal_config = proposal_config or config.ProposalConfig()
    manifest = job.read_manifest(job_dir)
    try:  # the backbone runs again: the manifest's features must be what it computes
      backbone_lib.check_manifest(manifest, job.path(job_dir, config.MANIFEST_NAME))
    except manifest_lib.ManifestError as e:
      raise job.JobError(str(e)) from None
    weights_path = job.path(job_dir, job.WEIGHTS_NAME)
    try:
      tile_model, inference_model, _, train_config = model_lib.load_rpn(job_dir)
      level_models = model_lib.inference_models(tile_model, manifest.feature_channels)
    except (ValueError, OSError, KeyError, TypeError) as e:
      raise job.JobError(f"cannot load the RPN from {weights_path} "
                         f"({type(e).__name__}: {e})") from None
    if len(level_models) != manifest.num_levels:
      raise job.JobError(f"the RPN in {weights_path} was trained for {len(level_models)} "
                         f"feature levels, the manifest has {manifest.num_levels}")
    self.manifest, self.train_config = manifest, train_config
    self.config = proposal_config
    self.channels = manifest.feature_channels
    self.num_anchors = manifest.num_anchors
    self.anchors = manifest.anchor_config  # the scales and ratios it was trained with
    model_channels = inference_model.inputs[0].shape[-1]
    if model_channels is not None and int(model_channels) != self.channels:
      raise job.JobError(f"the RPN in {weights_path} takes {model_channels} channels but the "
                         f"manifest's backbone {manifest.backbone} gives {self.channels}")
    self.weights = weights or manifest.weights
    if weights and weights != manifest.weights:
      _LOGGER.warning("backbone weights %s instead of the manifest's %s: the RPN was trained "
                      "on features of the latter", weights, manifest.weights)
    try:
      self.extractor = extractor_lib.FeatureExtractor(
          manifest.backbone, self.weights, manifest.weights_seed,
          feature_layer=manifest.feature_layer, feature_layers=manifest.levels)
    except backbone_lib.WeightsUnavailableError as e:
      problem = backbone_check.weights_problem(e, manifest.backbone)
      if weights:
        raise job.JobError(f"--weights {weights}: {problem}") from None
      raise job.JobError(f"backbone weights of the job ({self.weights}): {problem}") from None
    # Features go through the dtype the tiles were stored in, as in training.
    self.feature_dtype = np.dtype(manifest.dtype)
    self.traces = 0
    self.stats: dict = {}  # proposals.propose_boxes' counts (min_size_relaxed)

    def forward_of(model):
      def forward(feature_map):
        self.traces += 1  # Python side effect: runs once per trace only
        outputs = model(feature_map, training=False)
        return outputs["scores"], outputs["deltas"]
      return tf.function(
          forward, input_signature=[tf.TensorSpec([1, None, None, self.channels], tf.float32)])

    # one head, behind each feature level's standardisation
    self._forwards = [forward_of(model) for model in level_models]

  def prepare(self, image: np.ndarray, gt_boxes: np.ndarray
              ) -> Tuple[np.ndarray, np.ndarray, Tuple[float, float]]:
    """(frame uint8 [H, W, 3], gt boxes in it, box_scale (sx, sy)) of an image, as
    the pipeline frames it with this job's manifest (core.frame.prepare_frame)."""
    m = self.manifest
    return frame_lib.prepare_frame(image, gt_boxes, m.min_input_side, m.resize.min_side,
                                   m.resize.max_side)

  def head(self, frame: np.ndarray):
    """(scores [K], deltas [K, 4], anchors [K, 4]) of a frame uint8 [H, W, 3];
    with several feature levels, (scores, deltas, anchors, levels [K]): the
    anchors of every level, level after level."""
    feature_maps = self.extractor(frame)  # [Hf, Wf, C], or one per level
    several = isinstance(feature_maps, list)
    outputs = [self._level_head(frame, feature_map, forward) for feature_map, forward in
               zip(feature_maps if several else [feature_maps], self._forwards, strict=True)]
    if not several:
      return outputs[0]
    levels = np.concatenate([np.full(len(scores), level, np.int64)
                             for level, (scores, _, _) in enumerate(outputs)])
    return tuple(np.concatenate(parts) for parts in zip(*outputs, strict=True)) + (levels,)

  def _level_head(self, frame: np.ndarray, feature_map: np.ndarray, forward):
    """(scores [K], deltas [K, 4], anchors [K, 4]) of one level's feature map."""
    if feature_map.shape[-1] != self.channels:
      raise job.JobError(f"backbone {self.manifest.backbone} gave {feature_map.shape[-1]} "
                         f"channels, the manifest says {self.channels}")
    feature_map = feature_map.astype(self.feature_dtype).astype(np.float32)
    scores, deltas = forward(feature_map[np.newaxis])
    scores, deltas = scores.numpy()[0], deltas.numpy()[0]  # [Hf, Wf, A], [Hf, Wf, 4A]
    feature_height, feature_width = feature_map.shape[:2]
    if scores.shape != (feature_height, feature_width, self.num_anchors) or (
        deltas.shape != (feature_height, feature_width, 4 * self.num_anchors)):
      raise job.JobError(f"the RPN gives scores {scores.shape} and deltas {deltas.shape} "
                         f"for a {feature_height}x{feature_width} map; the manifest's anchors "
                         f"need {self.num_anchors} per point")
    height, width = frame.shape[:2]
    stride_x, stride_y = anchors_lib.ratio_strides(width, height, feature_width, feature_height)
    anchors = anchors_lib.grid_anchors(
        feature_height, feature_width, stride_x, stride_y,
        self.anchors.scales, self.anchors.ratios)
    return scores.reshape(-1), deltas.reshape(-1, 4), anchors

  def __call__(self, frame: np.ndarray, box_scale: Tuple[float, float] = (1.0, 1.0)
               ) -> Tuple[np.ndarray, np.ndarray]:
    """(boxes [N, 4], scores [N]) of a frame, best first; NoProposalsError when
    there are none (the reason names what the decoded boxes were). box_scale
    (prepare's): the frame's size over the original image's, which brings
    --min_size (original pixels) into the frame."""
    scores, deltas, anchors, *levels = self.head(frame)
    height, width = frame.shape[:2]
    boxes, kept_scores = proposals_lib.propose(scores, deltas, anchors, width, height,
                                               self.config, self.stats, box_scale,
                                               levels[0] if levels else None)
    if len(boxes) == 0:
      raise NoProposalsError(proposals_lib.no_proposals_reason(
          *proposals_lib.select_anchors(scores, deltas, anchors, width, height,
                                        self.config.anchors), width, height))
    return boxes, kept_scores


# ---------------------------------------------------------------------------
# Inputs and outputs


def _glob_root(pattern: str) -> str:
  """The directory part of a glob before its first wildcard (image ids are relative to it)."""
  cut = min([i for i in (pattern.find(c) for c in "*?[") if i >= 0] or [len(pattern)])
  return pattern[:cut].rsplit("/", 1)[0] if "/" in pattern[:cut] else "."


def list_inputs(input_root: Optional[str], split: str, images_glob: Optional[str]
                ) -> List[Tuple[str, str, Optional[str]]]:
  """(image_id, image_path, annotation_path or None) of every image to propose for."""
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
  paths = storage.glob(images_glob)
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
  for image_id, image_path, annotation_path in inputs:
    try:
      image, gt_boxes, _, _ = ilsvrc.load_example(image_path, annotation_path, max_pixels)
    except images_lib.InputError as e:
      path = annotation_path if e.stage == "annotation" else image_path
      yield "error", {"path": path, "stage": e.stage, "reason": str(e),
                      "image_id": image_id}, None
      continue
    height, width = image.shape[:2]
    frame, frame_gt, box_scale = proposer.prepare(image, gt_boxes)
    try:
      boxes, scores = proposer(frame, box_scale)
    except job.JobError:
      raise  # the job does not fit: every image would fail the same way
    except NoProposalsError as e:
      yield "error", {"path": image_path, "stage": "propose", "reason": str(e),
                      "image_id": image_id}, None
      continue
    except (ValueError, tf.errors.OpError, MemoryError) as e:
      yield "error", {"path": image_path, "stage": "propose",
                      "reason": f"{type(e).__name__}: {e}", "image_id": image_id}, None
      continue
    gt = frame_gt if annotation_path is not None else None
    line = proposal_line(image_id, frame, boxes, scores, gt, (width, height), box_scale)
    yield "ok", line, (frame, boxes, scores, gt)


def _write_json_line(f, record: dict) -> None:
  f.write((json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))


def propose(run: ProposeArgs) -> dict:
  """Proposes for every image, writes the outputs; returns propose.json (with
  "output"). `run` comes from rpn-propose's checked flags
  (trainer.cli.check_propose: value ranges included)."""
  proposal_config = run.proposal
  inputs = list_inputs(run.input, run.split, run.images)
  proposer = Proposer(run.job_dir, run.weights, proposal_config)
  output = run.output.rstrip("/")
  storage.makedirs(output)
  counts = {"images_found": len(inputs), "images_ok": 0, "images_failed": 0, "proposals": 0}
  drawn, start = 0, time.monotonic()
  max_pixels = proposer.manifest.max_pixels
  with FileSystems.create(storage.join(output, settings_lib.PROPOSALS_NAME)) as proposals_file, \
      FileSystems.create(storage.join(output, config.ERRORS_NAME)) as errors_file:
    for outcome, record, extra in iter_proposals(proposer, inputs, max_pixels):
      if outcome == "error":
        counts["images_failed"] += 1
        _write_json_line(errors_file, record)
        _LOGGER.warning("%s: %s failed: %s", record["path"], record["stage"], record["reason"])
        continue
      counts["images_ok"] += 1
      counts["proposals"] += len(record["boxes"])
      _write_json_line(proposals_file, record)
      if drawn < run.draw:
        frame, boxes, scores, gt = extra
        picture = draw.draw_proposals(frame, boxes, scores, gt, top=PICTURE_TOP,
                                      title=record["image_id"])
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        storage.write_bytes(
            storage.join(output, PICTURES_DIR, picture_name(record["image_id"])),
            buffer.getvalue())
        drawn += 1
      done = counts["images_ok"] + counts["images_failed"]
      if done % 100 == 0:
        _LOGGER.warning("rpn-propose: %d of %d images in %.0f s", done, len(inputs),
                        time.monotonic() - start)
  settings = {
      "job_dir": run.job_dir,
      "input": run.input, "split": run.split if run.input else None, "images": run.images,
      "backbone": proposer.manifest.backbone, "weights": proposer.weights,
      "proposal": dataclasses.asdict(proposal_config),
      "counts": dict(counts, **proposer.stats),
      "pictures": drawn,
      "head_traces": proposer.traces,
      "seconds": round(time.monotonic() - start, 3),
  }
  storage.write_json(storage.join(output, settings_lib.PROPOSE_SETTINGS_NAME), settings)
  settings["output"] = output
  return settings


def report(settings: dict) -> None:
  """The summary on stdout."""
  c = settings["counts"]
  print(f"images: {c['images_found']} found = {c['images_ok']} ok + {c['images_failed']} "
        f"failed; {c['proposals']} proposals "
        f"({c['proposals'] / max(1, c['images_ok']):.1f} per image) in {settings['seconds']:.1f} s")
  print(f"wrote {settings['output']}/{settings_lib.PROPOSALS_NAME}, {config.ERRORS_NAME}, "
        f"{settings_lib.PROPOSE_SETTINGS_NAME} and {settings['pictures']} pictures")
