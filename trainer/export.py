"""`rpn-export`: a trained job as a TensorFlow SavedModel that serves proposals.

    rpn-export --job_dir JOB --output DIR [--model last|best] [--weights W]
               [--pre_nms_top_n 6000] [--post_nms_top_n 300] [--nms_thresh 0.7]
               [--min_size 16] [--anchors all|inside]

The SavedModel's "serving_default" signature takes one encoded JPEG, PNG, GIF
or BMP image (a string scalar, "image_bytes") and returns "boxes" (float32
[N, 4], x1, y1, x2, y2 in the decoded image's pixels), "scores" (float32 [N],
objectness probabilities, best first) and "num_proposals" (int32 N). The
whole chain of rpn-propose is inside the graph: decode; the job's frame
(resize as the manifest says, zero padding at the bottom and right up to the
backbone's least input side); the backbone and its input preprocessing; the
features cast through the manifest's dtype; the head of every feature level
with its standardisation; the anchors; decoding of the deltas (dw, dh
clamped), clipping, the minimum size (relaxed as rpn-propose relaxes it),
top-N before NMS (per level with several), NMS (tf.image.non_max_suppression),
top-N after; then the boxes back into the image's pixels. Loading needs
TensorFlow only:

    tf.saved_model.load(DIR).signatures["serving_default"](image_bytes=tf.constant(data))

JPEGs are decoded with the accurate integer DCT, which gives Pillow's pixels
(TensorFlow's default, the fast one, differs by a few levels). What differs
from rpn-propose: a job that resizes resizes with TensorFlow's
antialiased bilinear filter where rpn-propose uses Pillow's (pixel values
differ slightly, so its proposals may too); NMS compares IoUs in float32.
Without a resize, the proposals are rpn-propose's (tested: boxes within 1e-3
px, the same order up to ties). DIR/export.json records the job, the
proposal settings and the units.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging

import tensorflow as tf

from pipeline.core import boxes as boxes_lib
from pipeline.io import storage
from pipeline.model import registry
from trainer import formats
from trainer import propose as propose_lib
from trainer.arguments import ExportArgs

_LOGGER = logging.getLogger(__name__)
EXPORT_SETTINGS_NAME = "export.json"
SIGNATURE = "serving_default"


def _preprocess_fn(backbone: str):
  """The backbone's input preprocessing (as pipeline.model.extractor's)."""
  spec = registry.backbone_spec(backbone)
  if spec.preprocess_module:
    return importlib.import_module(
        f"keras.applications.{spec.preprocess_module}").preprocess_input
  return lambda x: x / 127.5 - 1.0


class ProposalModule(tf.Module):
  """The job's backbone and head with the proposal chain, as one tf.Module."""

  def __init__(self, proposer: propose_lib.Proposer):
    super().__init__(name="rpn_proposals")
    manifest = proposer.manifest
    self.backbone = proposer.extractor.model
    self.heads = list(proposer.level_models)
    self._preprocess = _preprocess_fn(manifest.backbone)
    self._dtype = tf.dtypes.as_dtype(manifest.dtype)
    self._min_input_side = int(manifest.min_input_side or registry.backbone_spec(
        manifest.backbone).min_input_side)
    self._min_side, self._max_side = manifest.resize.min_side, manifest.resize.max_side
    self._scales = [float(s) for s in proposer.anchors.scales]
    self._ratios = [float(r) for r in proposer.anchors.ratios]
    self._config = proposer.config
    self.serve = tf.function(self._serve, input_signature=[
        tf.TensorSpec([], tf.string, name="image_bytes")])

  # -- the frame

  def _frame(self, image):
    """(frame uint8 [Hf, Wf, 3], (sx, sy) float64): core.frame.prepare_image in the graph."""
    height = tf.cast(tf.shape(image)[0], tf.float64)
    width = tf.cast(tf.shape(image)[1], tf.float64)
    scale = tf.constant(1.0, tf.float64)
    if self._min_side:
      scale = self._min_side / tf.minimum(height, width)
    if self._max_side:
      longer = tf.maximum(height, width)
      scale = tf.where(longer * scale > self._max_side, self._max_side / longer, scale)
    one = tf.constant(1.0, tf.float64)
    new_w = tf.maximum(one, tf.round(width * scale))  # round half to even, as Python's round
    new_h = tf.maximum(one, tf.round(height * scale))
    if self._min_side or self._max_side:
      def resize():
        resized = tf.image.resize(image, tf.cast(tf.stack([new_h, new_w]), tf.int32),
                                  method="bilinear", antialias=True)
        return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)
      image = tf.cond(tf.not_equal(scale, 1.0), resize, lambda: image)
      new_w = tf.where(tf.not_equal(scale, 1.0), new_w, width)
      new_h = tf.where(tf.not_equal(scale, 1.0), new_h, height)
    pad_h = tf.maximum(0, self._min_input_side - tf.shape(image)[0])
    pad_w = tf.maximum(0, self._min_input_side - tf.shape(image)[1])
    frame = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
    return frame, (new_w / width, new_h / height)

  # -- the head and the anchors of one level

  def _anchors(self, frame_width, frame_height, feature_height, feature_width):
    """float64 [Hf * Wf * A, 4]: core.anchors.grid_anchors with ratio strides."""
    stride_x = frame_width / tf.cast(feature_width, tf.float64)
    stride_y = frame_height / tf.cast(feature_height, tf.float64)
    s = tf.constant(self._scales, tf.float64)[None, :]
    root_r = tf.sqrt(tf.constant(self._ratios, tf.float64))[:, None]
    w = tf.reshape(s * stride_x / root_r, [-1])
    h = tf.reshape(s * stride_y * root_r, [-1])
    base = tf.stack([-0.5 * w, -0.5 * h, 0.5 * w, 0.5 * h], axis=1)  # [A, 4]
    cx = (tf.range(feature_width, dtype=tf.float64) + 0.5) * stride_x
    cy = (tf.range(feature_height, dtype=tf.float64) + 0.5) * stride_y
    cy, cx = tf.meshgrid(cy, cx, indexing="ij")
    centres = tf.reshape(tf.stack([cx, cy, cx, cy], axis=-1), [-1, 1, 4])
    return tf.reshape(centres + base[None], [-1, 4])

  def _outputs(self, frame):
    """(scores float64 [K], deltas [K, 4], anchors [K, 4], levels int32 [K])."""
    frame_height = tf.cast(tf.shape(frame)[0], tf.float64)
    frame_width = tf.cast(tf.shape(frame)[1], tf.float64)
    features = self.backbone(self._preprocess(tf.cast(frame[None], tf.float32)),
                             training=False)
    features = features if isinstance(features, (list, tuple)) else [features]
    parts = []
    for level, (feature_map, head) in enumerate(zip(features, self.heads, strict=True)):
      feature_map = tf.cast(tf.cast(feature_map, self._dtype), tf.float32)
      out = head(feature_map, training=False)
      shape = tf.shape(out["scores"])
      scores = tf.cast(tf.reshape(out["scores"], [-1]), tf.float64)
      deltas = tf.cast(tf.reshape(out["deltas"], [-1, 4]), tf.float64)
      anchors = self._anchors(frame_width, frame_height, shape[1], shape[2])
      parts.append((scores, deltas, anchors, tf.fill(tf.shape(scores), level)))
    return tuple(tf.concat(values, axis=0) for values in zip(*parts, strict=True))

  # -- the proposal filter (core.proposals.propose)

  def _serve(self, image_bytes):
    cfg = self._config
    image = tf.cond(  # JPEG with the accurate DCT: Pillow's pixels, as rpn-propose decodes
        tf.io.is_jpeg(image_bytes),
        lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False))
    image.set_shape([None, None, 3])
    frame, (sx, sy) = self._frame(image)
    width = tf.cast(tf.shape(frame)[1], tf.float64)
    height = tf.cast(tf.shape(frame)[0], tf.float64)
    scores, deltas, anchors, levels = self._outputs(frame)
    if cfg.anchors == "inside":
      tol_x, tol_y = 1e-9 * width, 1e-9 * height
      inside = ((anchors[:, 0] >= -tol_x) & (anchors[:, 1] >= -tol_y)
                & (anchors[:, 2] <= width + tol_x) & (anchors[:, 3] <= height + tol_y))
      pick = tf.cond(tf.reduce_any(inside), lambda: tf.where(inside)[:, 0],
                     lambda: tf.range(tf.shape(scores, out_type=tf.int64)[0]))
      scores, deltas, anchors, levels = (tf.gather(v, pick)
                                         for v in (scores, deltas, anchors, levels))
    # decode, with dw and dh clamped (core.boxes.decode_deltas), and clip
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cx = anchors[:, 0] + 0.5 * aw + deltas[:, 0] * aw
    cy = anchors[:, 1] + 0.5 * ah + deltas[:, 1] * ah
    w = aw * tf.exp(tf.minimum(deltas[:, 2], boxes_lib.DEFAULT_MAX_LOG_SCALE))
    h = ah * tf.exp(tf.minimum(deltas[:, 3], boxes_lib.DEFAULT_MAX_LOG_SCALE))
    x1 = tf.clip_by_value(cx - 0.5 * w, 0.0, width)
    x2 = tf.clip_by_value(cx + 0.5 * w, 0.0, width)
    y1 = tf.clip_by_value(cy - 0.5 * h, 0.0, height)
    y2 = tf.clip_by_value(cy + 0.5 * h, 0.0, height)
    boxes = tf.stack([x1, y1, x2, y2], axis=1)
    finite = tf.math.is_finite(scores) & tf.reduce_all(tf.math.is_finite(boxes), axis=1)
    boxes, scores, levels = (tf.boolean_mask(v, finite) for v in (boxes, scores, levels))
    # the least size, in the original image's pixels (relaxed as core.proposals does)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = (bw >= cfg.min_size * sx) & (bh >= cfg.min_size * sy)
    if cfg.min_size > 0:
      keep = tf.cond(tf.reduce_any(keep) | tf.equal(tf.size(bw), 0), lambda: keep,
                     lambda: (bw > 0) & (bh > 0))
    boxes, scores, levels = (tf.boolean_mask(v, keep) for v in (boxes, scores, levels))
    order = self._pre_nms_order(scores, levels)
    boxes, scores = tf.gather(boxes, order), tf.gather(scores, order)
    limit = cfg.post_nms_top_n or tf.size(scores)
    kept = tf.image.non_max_suppression(
        tf.cast(tf.gather(boxes, [1, 0, 3, 2], axis=1), tf.float32),
        tf.cast(scores, tf.float32), max_output_size=limit, iou_threshold=cfg.nms_thresh)
    boxes, scores = tf.gather(boxes, kept), tf.gather(scores, kept)
    # back into the decoded image's pixels (formats.image_boxes)
    image_width = tf.cast(tf.shape(image)[1], tf.float64)
    image_height = tf.cast(tf.shape(image)[0], tf.float64)
    boxes = boxes / tf.stack([sx, sy, sx, sy])[None]
    boxes = tf.minimum(tf.maximum(boxes, 0.0),
                       tf.stack([image_width, image_height, image_width, image_height])[None])
    return {"boxes": tf.cast(boxes, tf.float32), "scores": tf.cast(scores, tf.float32),
            "num_proposals": tf.size(scores, out_type=tf.int32)}

  def _pre_nms_order(self, scores, levels):
    """Indices of the boxes kept before NMS, best first (equal scores: lower
    index first): the top pre_nms_top_n of each level, as core.proposals."""
    pre = self._config.pre_nms_top_n
    count = tf.size(scores)
    if len(self.heads) == 1:
      k = tf.minimum(pre, count) if pre else count
      return tf.math.top_k(scores, k=k, sorted=True).indices  # ties: lower index first
    picked = []
    for level in range(len(self.heads)):
      index = tf.cast(tf.where(tf.equal(levels, level))[:, 0], tf.int32)
      level_scores = tf.gather(scores, index)
      k = tf.minimum(pre, tf.size(index)) if pre else tf.size(index)
      picked.append(tf.gather(index, tf.math.top_k(level_scores, k=k, sorted=True).indices))
    picked = tf.concat(picked, axis=0)
    return tf.gather(picked, tf.argsort(-tf.gather(scores, picked), stable=True))


def export(run: ExportArgs) -> dict:
  """Writes the SavedModel and export.json into run.output; returns export.json."""
  proposer = propose_lib.Proposer(run.job_dir, run.weights, run.proposal)
  module = ProposalModule(proposer)
  output = run.output.rstrip("/")
  storage.makedirs(output)
  tf.saved_model.save(module, output,
                      signatures={SIGNATURE: module.serve.get_concrete_function()})
  settings = {
      "job_dir": run.job_dir, "backbone": proposer.manifest.backbone,
      "weights": proposer.weights, "feature_levels": len(module.heads),
      "resize": dataclasses.asdict(proposer.manifest.resize),
      "proposal": dataclasses.asdict(run.proposal),
      "signature": {"name": SIGNATURE, "inputs": {"image_bytes": "string scalar: an encoded "
                                                 "JPEG, PNG, GIF or BMP image"},
                    "outputs": {"boxes": formats.UNITS["image_boxes"] + " (float32 [N, 4])",
                                "scores": formats.UNITS["scores"] + " (float32 [N])",
                                "num_proposals": "N (int32)"}},
  }
  storage.write_json(storage.join(output, EXPORT_SETTINGS_NAME), settings)
  return dict(settings, output=output)
