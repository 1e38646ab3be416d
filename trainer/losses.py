"""RPN losses and metrics that ignore anchors labelled -1.

Shape shorthand: B batch, A anchors per point.
  labels  [B, A]       1 positive, 0 negative, -1 ignored (not sampled / outside)
  scores  [B, A]       sigmoid objectness
  packed  [B, A + 4A]  labels, then target (dx, dy, dw, dh) per anchor, anchor-major
  deltas  [B, 4A]      predicted deltas

How they plug into Keras: the data (data.py) gives y_true {"scores": labels,
"deltas": packed}; compile() takes {"scores": objectness_loss, "deltas":
box_loss} with loss_weights {"scores": 1, "deltas": box_loss_weight}, so fit()
reports scores_loss and deltas_loss apart, and evaluate() and any
distribution strategy work unchanged.

Normalisation, as py-faster-rcnn's RPN (SoftmaxWithLoss ignoring label -1,
SmoothL1Loss with inside weights 1 on positives and outside weights 1/N_cls):
both losses are divided by N_cls, the number of sampled anchors (labels 0 or
1) in the batch:
  L = sum_sampled BCE / N_cls + box_loss_weight * sum_positive smoothL1 / N_cls
smooth L1 with sigma = 3, i.e. beta = 1 / sigma^2 = 1/9 (quadratic below
|x| < 1/9). Ignored anchors add nothing to either sum nor to N_cls; a batch
with no sampled anchor gives 0. The paper's alternative, box term / N_reg (the
number of anchor locations, ~2400) with lambda = 10, weighs the two terms
about alike. Under MirroredStrategy N_cls is counted per replica.
"""
from __future__ import annotations

import keras
import tensorflow as tf

SMOOTH_L1_BETA = 1.0 / 9.0  # sigma = 3
DEFAULT_BOX_LOSS_WEIGHT = 1.0
SCORE_THRESHOLD = 0.5  # objectness above which a metric counts an anchor as positive


def split_packed(packed, num_anchors: int):
  """packed [B, 5A] -> (labels [B, A], target deltas [B, 4A])."""
  return packed[:, :num_anchors], packed[:, num_anchors:]


def objectness_loss(labels, scores):
  """Binary cross-entropy summed over sampled anchors / number of sampled anchors."""
  labels = tf.cast(labels, tf.float32)
  scores = tf.clip_by_value(tf.cast(scores, tf.float32), 1e-7, 1.0 - 1e-7)
  sampled = tf.cast(labels >= 0, tf.float32)
  target = tf.maximum(labels, 0.0)
  bce = -(target * tf.math.log(scores) + (1.0 - target) * tf.math.log(1.0 - scores))
  return tf.reduce_sum(bce * sampled) / tf.maximum(tf.reduce_sum(sampled), 1.0)


def smooth_l1(x, beta: float = SMOOTH_L1_BETA):
  """0.5 x^2 / beta where |x| < beta, else |x| - 0.5 beta (elementwise)."""
  ax = tf.abs(x)
  return tf.where(ax < beta, 0.5 * ax * ax / beta, ax - 0.5 * beta)


def box_loss(packed, deltas, beta: float = SMOOTH_L1_BETA):
  """Smooth L1 summed over the 4 deltas of positive anchors / number of sampled anchors."""
  deltas = tf.cast(deltas, tf.float32)
  labels, targets = split_packed(tf.cast(packed, tf.float32), deltas.shape[-1] // 4)
  positive = tf.repeat(tf.cast(labels > 0, tf.float32), 4, axis=-1)  # [B, 4A], anchor-major
  sampled = tf.reduce_sum(tf.cast(labels >= 0, tf.float32))
  return tf.reduce_sum(smooth_l1(deltas - targets, beta) * positive) / tf.maximum(sampled, 1.0)


def rpn_losses(box_loss_weight: float = DEFAULT_BOX_LOSS_WEIGHT):
  """(loss, loss_weights) dicts for Model.compile."""
  return ({"scores": objectness_loss, "deltas": box_loss},
          {"scores": 1.0, "deltas": float(box_loss_weight)})


class _MaskedObjectness(keras.metrics.Metric):
  """Counts tp, fp, fn, tn over sampled anchors only (labels -1 count nowhere)."""

  def __init__(self, threshold: float = SCORE_THRESHOLD, name: str = None, **kwargs):
    super().__init__(name=name, **kwargs)
    self.threshold = threshold
    self.counts = self.add_variable(shape=(4,), initializer="zeros", name="counts")

  def update_state(self, y_true, y_pred, sample_weight=None):
    labels = tf.cast(y_true, tf.float32)
    predicted = tf.cast(tf.cast(y_pred, tf.float32) >= self.threshold, tf.float32)
    positive = tf.cast(labels > 0, tf.float32)
    negative = tf.cast(tf.equal(labels, 0.0), tf.float32)
    self.counts.assign_add(tf.stack([
        tf.reduce_sum(predicted * positive), tf.reduce_sum(predicted * negative),
        tf.reduce_sum((1.0 - predicted) * positive), tf.reduce_sum((1.0 - predicted) * negative)]))

  def reset_state(self):
    self.counts.assign([0.0, 0.0, 0.0, 0.0])

  def get_config(self):
    return {"threshold": self.threshold, "name": self.name}

  def _counts(self):
    return tf.unstack(self.counts)


class ObjectnessAccuracy(_MaskedObjectness):
  """(tp + tn) / sampled anchors."""

  def __init__(self, threshold: float = SCORE_THRESHOLD, name: str = "objectness_accuracy",
               **kwargs):
    super().__init__(threshold, name, **kwargs)

  def result(self):
    tp, fp, fn, tn = self._counts()
    return tf.math.divide_no_nan(tp + tn, tp + fp + fn + tn)


class PositivePrecision(_MaskedObjectness):
  """tp / (tp + fp): of the sampled anchors scored positive, those labelled 1."""

  def __init__(self, threshold: float = SCORE_THRESHOLD, name: str = "positive_precision",
               **kwargs):
    super().__init__(threshold, name, **kwargs)

  def result(self):
    tp, fp, _, _ = self._counts()
    return tf.math.divide_no_nan(tp, tp + fp)


class PositiveRecall(_MaskedObjectness):
  """tp / (tp + fn): of the anchors labelled 1, those scored positive."""

  def __init__(self, threshold: float = SCORE_THRESHOLD, name: str = "positive_recall",
               **kwargs):
    super().__init__(threshold, name, **kwargs)

  def result(self):
    tp, _, fn, _ = self._counts()
    return tf.math.divide_no_nan(tp, tp + fn)


class TilesSeen(keras.metrics.Metric):
  """Number of tiles (records) seen since the last reset: an epoch's size."""

  def __init__(self, name: str = "tiles", **kwargs):
    super().__init__(name=name, **kwargs)
    self.total = self.add_variable(shape=(), initializer="zeros", name="total")

  def update_state(self, y_true, y_pred, sample_weight=None):
    self.total.assign_add(tf.cast(tf.shape(y_true)[0], self.total.dtype))

  def result(self):
    return tf.identity(self.total)  # a value: the variable itself changes under validation

  def reset_state(self):
    self.total.assign(0.0)


def objectness_metrics():
  """Metrics for the "scores" output: accuracy, precision and recall of
  positives over sampled anchors, and the number of tiles seen."""
  return [ObjectnessAccuracy(), PositivePrecision(), PositiveRecall(), TilesSeen()]
