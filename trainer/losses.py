"""RPN losses and metrics that ignore anchors labelled -1.

Shape shorthand: B batch, A anchors per point.
  labels  [B, A]       1 positive, 0 negative, -1 ignored (not sampled / outside)
  logits  [B, A]       objectness logits (the tile model's "scores" output in training)
  scores  [B, A]       sigmoid objectness (the saved model's output)
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
about alike.

The objectness loss takes logits (tf.nn.sigmoid_cross_entropy_with_logits):
BCE on clipped probabilities has no gradient past the clip, so a confidently
wrong anchor (a negative at logit 17: loss 15.9) could never recover.

Under a distribution strategy (MirroredStrategy) each replica sees part of the
batch; N_cls is summed over all replicas (an all-reduce), so each replica's loss
is its share of the global-batch loss. Keras sums gradients over replicas and
does not rescale a loss that is already a scalar, so the sum is exactly the
single-device loss of the whole batch, and the reported losses equal a
single-device run's.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from trainer.settings import DEFAULT_BOX_LOSS_WEIGHT

SMOOTH_L1_BETA = 1.0 / 9.0  # sigma = 3
SCORE_THRESHOLD = 0.5  # objectness above which a metric counts an anchor as positive


def split_packed(packed, num_anchors: int):
  """packed [B, 5A] -> (labels [B, A], target deltas [B, 4A])."""
  return packed[:, :num_anchors], packed[:, num_anchors:]


def global_count(count):
  """`count` summed over the replicas of the current distribution strategy
  (itself without one, or outside a replica context)."""
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync <= 1:
    return count
  return context.all_reduce(tf.distribute.ReduceOp.SUM, count)


def _num_sampled(labels):
  """N_cls: anchors labelled 0 or 1 in the (global) batch, at least 1."""
  return tf.maximum(global_count(tf.reduce_sum(tf.cast(labels >= 0, tf.float32))), 1.0)


def objectness_loss(labels, logits):
  """Binary cross-entropy on logits, summed over sampled anchors / N_cls."""
  labels = tf.cast(labels, tf.float32)
  logits = tf.cast(logits, tf.float32)
  sampled = tf.cast(labels >= 0, tf.float32)
  bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.maximum(labels, 0.0), logits=logits)
  return tf.reduce_sum(bce * sampled) / _num_sampled(labels)


def smooth_l1(x, beta: float = SMOOTH_L1_BETA):
  """0.5 x^2 / beta where |x| < beta, else |x| - 0.5 beta (elementwise)."""
  ax = tf.abs(x)
  return tf.where(ax < beta, 0.5 * ax * ax / beta, ax - 0.5 * beta)


def box_loss(packed, deltas, beta: float = SMOOTH_L1_BETA):
  """Smooth L1 summed over the 4 deltas of positive anchors / number of sampled anchors."""
  deltas = tf.cast(deltas, tf.float32)
  labels, targets = split_packed(tf.cast(packed, tf.float32), deltas.shape[-1] // 4)
  positive = tf.repeat(tf.cast(labels > 0, tf.float32), 4, axis=-1)  # [B, 4A], anchor-major
  return tf.reduce_sum(smooth_l1(deltas - targets, beta) * positive) / _num_sampled(labels)


def rpn_losses(box_loss_weight: float = DEFAULT_BOX_LOSS_WEIGHT):
  """(loss, loss_weights) dicts for Model.compile."""
  return ({"scores": objectness_loss, "deltas": box_loss},
          {"scores": 1.0, "deltas": float(box_loss_weight)})


class _MaskedObjectness(keras.metrics.Metric):
  """Counts tp, fp, fn, tn over sampled anchors only (labels -1 count nowhere).

  y_pred are probabilities, or logits with from_logits (the training model's).
  """

  def __init__(self, threshold: float = SCORE_THRESHOLD, name: str = None,
               from_logits: bool = False, **kwargs):
    super().__init__(name=name, **kwargs)
    self.threshold = threshold
    self.from_logits = from_logits
    self.counts = self.add_variable(shape=(4,), initializer="zeros", name="counts")

  def update_state(self, y_true, y_pred, sample_weight=None):
    labels = tf.cast(y_true, tf.float32)
    scores = tf.cast(y_pred, tf.float32)
    if self.from_logits:
      scores = tf.sigmoid(scores)
    predicted = tf.cast(scores >= self.threshold, tf.float32)
    positive = tf.cast(labels > 0, tf.float32)
    negative = tf.cast(tf.equal(labels, 0.0), tf.float32)
    self.counts.assign_add(tf.stack([
        tf.reduce_sum(predicted * positive), tf.reduce_sum(predicted * negative),
        tf.reduce_sum((1.0 - predicted) * positive), tf.reduce_sum((1.0 - predicted) * negative)]))

  def reset_state(self):
    self.counts.assign([0.0, 0.0, 0.0, 0.0])

  def get_config(self):
    return {"threshold": self.threshold, "name": self.name, "from_logits": self.from_logits}

  def _counts(self):
    return tf.unstack(self.counts)


class ObjectnessAccuracy(_MaskedObjectness):
  """(tp + tn) / sampled anchors."""

  def __init__(self, threshold: float = SCORE_THRESHOLD, name: str = "objectness_accuracy",
               from_logits: bool = False, **kwargs):
    super().__init__(threshold, name, from_logits, **kwargs)

  def result(self):
    tp, fp, fn, tn = self._counts()
    return tf.math.divide_no_nan(tp + tn, tp + fp + fn + tn)


class PositivePrecision(_MaskedObjectness):
  """tp / (tp + fp): of the sampled anchors scored positive, those labelled 1."""

  def __init__(self, threshold: float = SCORE_THRESHOLD, name: str = "positive_precision",
               from_logits: bool = False, **kwargs):
    super().__init__(threshold, name, from_logits, **kwargs)

  def result(self):
    tp, fp, _, _ = self._counts()
    return tf.math.divide_no_nan(tp, tp + fp)


class PositiveRecall(_MaskedObjectness):
  """tp / (tp + fn): of the anchors labelled 1, those scored positive."""

  def __init__(self, threshold: float = SCORE_THRESHOLD, name: str = "positive_recall",
               from_logits: bool = False, **kwargs):
    super().__init__(threshold, name, from_logits, **kwargs)

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


def objectness_metrics(from_logits: bool = False):
  """Metrics for the "scores" output (probabilities, or logits with from_logits):
  accuracy, precision and recall of positives over sampled anchors, and the
  number of tiles seen."""
  return [ObjectnessAccuracy(from_logits=from_logits), PositivePrecision(from_logits=from_logits),
          PositiveRecall(from_logits=from_logits), TilesSeen()]
