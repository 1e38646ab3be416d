"""`rpn-propose`: region proposals of a trained RPN for whole images.

    rpn-propose --job_dir JOB (--input ROOT [--split DET/val] | --images GLOB | --maps DIR)
                --output DIR [--pre_nms_top_n 6000] [--post_nms_top_n 300]
                [--nms_thresh 0.7] [--min_size 16] [--draw 8] [--weights OVERRIDE]
                [Beam pipeline options]

The console script is trainer.cli.propose_main: it checks the flags and the
job before TensorFlow loads and calls propose() with the typed arguments it
built from them (trainer/arguments.py: ProposeArgs) and runs the Beam
pipeline of trainer/propose_pipeline.py (its propose()); this module holds
what the workers run per image (Head), the one-process form (Proposer), the
output line and the pictures.

Everything about the backbone and the anchors comes from the job's manifest.json
(the data manifest of rpn-preprocess), so an image goes through exactly what
the training images went through: decode, optional resize, padding of small
images (bottom/right), the frozen backbone, then the RPN head applied
convolutionally to the whole feature map. Per image: decode the deltas of every
anchor (dw, dh clamped), clip to the frame, drop boxes under min_size (in pixels
of the original image, as py-faster-rcnn: scaled into the frame), keep the
top pre_nms_top_n by score, NMS, keep the top post_nms_top_n.

Writes into --output: proposals-SSSSS-of-NNNNN.jsonl (one line per image:
image_id, width, height, boxes, scores, gt_boxes when an annotation exists,
image_width, image_height, box_scale so that rpn-evaluate can bring XML boxes
into the frame, and path from images), errors.jsonl (image_id, path, stage,
reason of every image that failed; the others go on; rpn-evaluate counts
their gt boxes as missed), pictures/<id>.png for the --draw images of least
id and, last, propose.json (settings, counts, shard names).

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

import io
import logging
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

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
from trainer import draw, formats, job
from trainer import model as model_lib

PICTURES_DIR = "pictures"
PICTURE_TOP = 20  # proposals drawn per picture

_LOGGER = logging.getLogger(__name__)


class NoProposalsError(ValueError):
  """An image got no proposal at all (every decoded box non-finite or of zero area)."""


# ---------------------------------------------------------------------------
# The job


class Head:
  """A job's RPN head, built once: feature maps -> scores, deltas, anchors;
  and with them proposals. No backbone: rpn-propose's Beam workers run it on
  the backbone's output or on a maps dataset's stored maps.

  The head's tf.function takes a size-agnostic input signature, so one trace
  serves every map size (`traces` counts them). JobError when the job's model
  does not fit its manifest.
  """

  def __init__(self, job_dir: str, proposal_config: Optional[config.ProposalConfig] = None,
               manifest: Optional[manifest_lib.Manifest] = None):
    manifest = manifest or job.read_manifest(job_dir)
    weights_path = job.path(job_dir, job.WEIGHTS_NAME)
    try:
      tile_model, _, _, train_config = model_lib.load_rpn(job_dir)
      level_models = model_lib.inference_models(tile_model, manifest.feature_channels)
    except (ValueError, OSError, KeyError, TypeError) as e:
      raise job.JobError(f"cannot load the RPN from {weights_path} "
                         f"({type(e).__name__}: {e})") from None
    if len(level_models) != manifest.num_levels:
      raise job.JobError(f"the RPN in {weights_path} was trained for {len(level_models)} "
                         f"feature levels, the manifest has {manifest.num_levels}")
    self.manifest, self.train_config = manifest, train_config
    self.level_models = level_models  # Keras: feature map -> scores, deltas, per level
    self.config = proposal_config or config.ProposalConfig()
    self.channels = manifest.feature_channels
    self.level_channels = manifest.channels_per_level  # each level's C, finest first
    self.num_anchors = manifest.num_anchors
    self.anchors = manifest.anchor_config  # the scales and ratios it was trained with
    for model, channels in zip(level_models, self.level_channels, strict=True):
      model_channels = model.inputs[0].shape[-1]
      if model_channels is not None and int(model_channels) != channels:
        raise job.JobError(f"the RPN in {weights_path} takes {model_channels} channels but "
                           f"the manifest's backbone {manifest.backbone} gives {channels}")
    # Features go through the dtype the tiles were stored in, as in training.
    self.feature_dtype = np.dtype(manifest.dtype)
    self.traces = 0

    def forward_of(model, channels):
      def forward(feature_map):
        self.traces += 1  # Python side effect: runs once per trace only
        outputs = model(feature_map, training=False)
        return outputs["scores"], outputs["deltas"]
      return tf.function(
          forward, input_signature=[tf.TensorSpec([1, None, None, channels], tf.float32)])

    # one head, behind each feature level's standardisation (and projection)
    self._forwards = [forward_of(model, channels)
                      for model, channels in zip(level_models, self.level_channels, strict=True)]

  def outputs(self, width: int, height: int, feature_maps):
    """(scores [K], deltas [K, 4], anchors [K, 4], levels [K] or None) of the
    feature map [Hf, Wf, C] of a width x height frame (a list of them, finest
    first, with several levels: the anchors of every level, level after level)."""
    several = isinstance(feature_maps, list)
    maps = feature_maps if several else [feature_maps]
    if len(maps) != len(self._forwards):
      raise job.JobError(f"{len(maps)} feature maps for an RPN of {len(self._forwards)} "
                         f"feature levels")
    parts = [self._level(width, height, feature_map, forward, channels)
             for feature_map, forward, channels in zip(maps, self._forwards,
                                                       self.level_channels, strict=True)]
    if not several:
      return parts[0] + (None,)
    levels = np.concatenate([np.full(len(scores), level, np.int64)
                             for level, (scores, _, _) in enumerate(parts)])
    return tuple(np.concatenate(values) for values in zip(*parts, strict=True)) + (levels,)

  def _level(self, width: int, height: int, feature_map: np.ndarray, forward, channels: int):
    """(scores [K], deltas [K, 4], anchors [K, 4]) of one level's feature map."""
    if feature_map.shape[-1] != channels:
      raise job.JobError(f"a feature map of {feature_map.shape[-1]} channels; the "
                         f"manifest's backbone {self.manifest.backbone} gives {channels}")
    feature_map = np.asarray(feature_map).astype(self.feature_dtype).astype(np.float32)
    scores, deltas = forward(feature_map[np.newaxis])
    scores, deltas = scores.numpy()[0], deltas.numpy()[0]  # [Hf, Wf, A], [Hf, Wf, 4A]
    feature_height, feature_width = feature_map.shape[:2]
    if scores.shape != (feature_height, feature_width, self.num_anchors) or (
        deltas.shape != (feature_height, feature_width, 4 * self.num_anchors)):
      raise job.JobError(f"the RPN gives scores {scores.shape} and deltas {deltas.shape} "
                         f"for a {feature_height}x{feature_width} map; the manifest's anchors "
                         f"need {self.num_anchors} per point")
    stride_x, stride_y = anchors_lib.ratio_strides(width, height, feature_width, feature_height)
    anchors = anchors_lib.grid_anchors(
        feature_height, feature_width, stride_x, stride_y,
        self.anchors.scales, self.anchors.ratios)
    return scores.reshape(-1), deltas.reshape(-1, 4), anchors

  def propose(self, width: int, height: int, feature_maps,
              box_scale: Tuple[float, float] = (1.0, 1.0),
              stats: Optional[dict] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(boxes [N, 4], scores [N]) of a width x height frame's feature map(s),
    best first; NoProposalsError when there are none (the reason names what
    the decoded boxes were). box_scale: the frame's size over the original
    image's, which brings --min_size (original pixels) into the frame; `stats`
    counts proposals.propose_boxes' relaxations (min_size_relaxed)."""
    scores, deltas, anchors, levels = self.outputs(width, height, feature_maps)
    boxes, kept_scores = proposals_lib.propose(scores, deltas, anchors, width, height,
                                               self.config, stats, box_scale, levels)
    if len(boxes) == 0:
      raise NoProposalsError(proposals_lib.no_proposals_reason(
          *proposals_lib.select_anchors(scores, deltas, anchors, width, height,
                                        self.config.anchors), width, height))
    return boxes, kept_scores


class Proposer:
  """A job's backbone and RPN head, built once, in this process: image -> proposals.

  rpn-propose runs the same Head on Beam workers (trainer/propose_pipeline.py);
  this is the one-process form, for tests and benchmarks. The backbone's
  tf.function takes a size-agnostic input signature too.
  """

  def __init__(self, job_dir: str, weights: Optional[str] = None,
               proposal_config: Optional[config.ProposalConfig] = None):
    manifest = job.read_manifest(job_dir)
    try:  # the backbone runs again: the manifest's features must be what it computes
      backbone_lib.check_manifest(manifest, job.path(job_dir, config.MANIFEST_NAME))
    except manifest_lib.ManifestError as e:
      raise job.JobError(str(e)) from None
    self._head = Head(job_dir, proposal_config, manifest)
    self.manifest, self.train_config = manifest, self._head.train_config
    self.config = self._head.config
    self.channels = manifest.feature_channels
    self.num_anchors = manifest.num_anchors
    self.anchors = manifest.anchor_config
    self.weights = weights or manifest.weights
    if weights and weights != manifest.weights:
      _LOGGER.warning("backbone weights %s instead of the manifest's %s: the RPN was trained "
                      "on features of the latter", weights, manifest.weights)
    self.extractor = make_extractor(manifest, weights)
    self.stats: dict = {}  # proposals.propose_boxes' counts (min_size_relaxed)

  @property
  def traces(self) -> int:
    return self._head.traces

  @property
  def level_models(self) -> list:
    return self._head.level_models

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
    height, width = frame.shape[:2]
    *outputs, levels = self._head.outputs(width, height, self.extractor(frame))
    return tuple(outputs) if levels is None else tuple(outputs) + (levels,)

  def __call__(self, frame: np.ndarray, box_scale: Tuple[float, float] = (1.0, 1.0)
               ) -> Tuple[np.ndarray, np.ndarray]:
    """(boxes [N, 4], scores [N]) of a frame, best first (Head.propose)."""
    height, width = frame.shape[:2]
    return self._head.propose(width, height, self.extractor(frame), box_scale, self.stats)


def make_extractor(manifest: manifest_lib.Manifest, weights: Optional[str] = None,
                   threads: Optional[int] = None) -> extractor_lib.FeatureExtractor:
  """The job's backbone (its manifest's; `weights` instead of the manifest's
  weights); JobError naming the weights problem when they cannot be loaded."""
  try:
    return extractor_lib.FeatureExtractor(
        manifest.backbone, weights or manifest.weights, manifest.weights_seed, threads,
        feature_layer=manifest.feature_layer, feature_layers=manifest.levels)
  except backbone_lib.WeightsUnavailableError as e:
    problem = backbone_check.weights_problem(e, manifest.backbone)
    if weights:
      raise job.JobError(f"--weights {weights}: {problem}") from None
    raise job.JobError(f"backbone weights of the job ({manifest.weights}): {problem}") from None


# ---------------------------------------------------------------------------
# Outputs


def glob_root(pattern: str) -> str:
  """The directory part of a glob before its first wildcard (image ids are relative to it)."""
  cut = min([i for i in (pattern.find(c) for c in "*?[") if i >= 0] or [len(pattern)])
  return pattern[:cut].rsplit("/", 1)[0] if "/" in pattern[:cut] else "."


def picture_name(image_id: str) -> str:
  return image_id.replace("/", "__") + ".png"


def _rounded(array: np.ndarray, decimals: int) -> list:
  return np.round(np.asarray(array, np.float64), decimals).tolist()


def proposal_line(image_id: str, width: int, height: int, boxes: np.ndarray,
                  scores: np.ndarray, gt_boxes: Optional[np.ndarray],
                  image_size: Tuple[int, int], box_scale: Tuple[float, float],
                  path: Optional[str] = None) -> dict:
  """One proposals line (see the module doc) of a width x height frame; the
  units of its boxes and scores are formats.UNITS'."""
  line = {
      "image_id": image_id,
      "width": int(width),
      "height": int(height),
      "boxes": _rounded(boxes, 3),
      "scores": _rounded(scores, 6),
      "logits": _rounded(formats.logits(scores), 4),
      "image_width": int(image_size[0]),
      "image_height": int(image_size[1]),
      "box_scale": [float(box_scale[0]), float(box_scale[1])],
      "image_boxes": _rounded(formats.image_boxes(boxes, box_scale, *image_size), 3),
  }
  if gt_boxes is not None:
    line["gt_boxes"] = _rounded(gt_boxes, 3)
  if path is not None:
    line["path"] = path
  return line


def draw_picture(line: dict, output: str, manifest: manifest_lib.Manifest) -> str:
  """Draws a proposals line's top PICTURE_TOP boxes and its gt boxes on its
  frame (the image read again and framed as the job frames it; a grey frame
  for a line without "path", i.e. proposed from a maps dataset, which holds no
  pixels) into output/pictures/; returns the file's path."""
  width, height = line["width"], line["height"]
  if line.get("path"):
    image = images_lib.decode_image(ilsvrc.read_bytes(line["path"]), manifest.max_pixels)
    frame, _, _ = frame_lib.prepare_frame(image, np.zeros((0, 4)), manifest.min_input_side,
                                          manifest.resize.min_side, manifest.resize.max_side)
  else:
    frame = np.full((height, width, 3), 128, np.uint8)
  gt = np.asarray(line["gt_boxes"]).reshape(-1, 4) if "gt_boxes" in line else None
  picture = draw.draw_proposals(frame, np.asarray(line["boxes"]).reshape(-1, 4),
                                np.asarray(line["scores"]), gt, top=PICTURE_TOP,
                                title=line["image_id"])
  buffer = io.BytesIO()
  picture.save(buffer, format="PNG")
  path = storage.join(output, PICTURES_DIR, picture_name(line["image_id"]))
  storage.write_bytes(path, buffer.getvalue())
  return path
