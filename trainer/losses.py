"""RPN losses and metrics that ignore anchors labelled -1.

Shape shorthand: B batch, A anchors per point.
  labels  [B, A]      1 positive, 0 negative, -1 ignored (not sampled / outside)
  scores  [B, A]      sigmoid objectness
  packed  [B, A + 4A] labels then (dx, dy, dw, dh) per anchor, anchor-major
  deltas  [B, 4A]     predicted deltas

Normalisation follows py-faster-rcnn's RPN: both losses are divided by the
number of sampled anchors in the batch (N_cls, labels 0 or 1):
  L = sum_sampled BCE / N_cls + box_loss_weight * sum_positive smoothL1 / N_cls
with smooth L1's sigma = 3 (beta = 1/9). The paper's alternative (N_reg =
number of anchor locations, lambda = 10) weighs the two terms about alike.
The method's original code used plain BCE and MSE over all anchors, which
trains on ignored anchors: not done here.
"""
from __future__ import annotations

SMOOTH_L1_BETA = 1.0 / 9.0


def _num_anchors(packed_or_labels, predicted_deltas):
  import tensorflow as tf
  return tf.shape(predicted_deltas)[-1] // 4


def objectness_loss(labels, scores):
  """Binary cross-entropy summed over sampled anchors / number of sampled anchors."""
  import tensorflow as tf
  labels = tf.cast(labels, tf.float32)
  scores = tf.clip_by_value(tf.cast(scores, tf.float32), 1e-7, 1.0 - 1e-7)
  mask = tf.cast(labels >= 0, tf.float32)
  target = tf.maximum(labels, 0.0)
  bce = -(target * tf.math.log(scores) + (1.0 - target) * tf.math.log(1.0 - scores))
  return tf.reduce_sum(bce * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def smooth_l1(x, beta: float = SMOOTH_L1_BETA):
  import tensorflow as tf
  ax = tf.abs(x)
  return tf.where(ax < beta, 0.5 * ax * ax / beta, ax - 0.5 * beta)


def box_loss(packed, deltas, beta: float = SMOOTH_L1_BETA):
  """Smooth L1 over the 4 deltas of positive anchors / number of sampled anchors."""
  import tensorflow as tf
  packed = tf.cast(packed, tf.float32)
  deltas = tf.cast(deltas, tf.float32)
  num_anchors = tf.shape(deltas)[-1] // 4
  labels = packed[:, :num_anchors]
  targets = packed[:, num_anchors:]
  positive = tf.repeat(tf.cast(labels > 0, tf.float32), 4, axis=-1)  # [B, 4A], anchor-major
  sampled = tf.reduce_sum(tf.cast(labels >= 0, tf.float32))
  return tf.reduce_sum(smooth_l1(deltas - targets, beta) * positive) / tf.maximum(sampled, 1.0)


def rpn_losses(box_loss_weight: float = 1.0):
  """(losses, loss_weights) dicts for Model.compile."""
  return ({"scores": objectness_loss, "deltas": box_loss},
          {"scores": 1.0, "deltas": float(box_loss_weight)})


def _masked_counts(labels, scores, threshold: float):
  import tensorflow as tf
  labels = tf.cast(labels, tf.float32)
  predicted = tf.cast(tf.cast(scores, tf.float32) >= threshold, tf.float32)
  sampled = tf.cast(labels >= 0, tf.float32)
  positive = tf.cast(labels > 0, tf.float32)
  tp = tf.reduce_sum(predicted * positive)
  fp = tf.reduce_sum(predicted * (1.0 - positive) * sampled)
  fn = tf.reduce_sum((1.0 - predicted) * positive)
  tn = tf.reduce_sum((1.0 - predicted) * (1.0 - positive) * sampled)
  return tp, fp, fn, tn


def _metric_class(name: str, formula):
  import keras

  class _Masked(keras.metrics.Metric):
    """Objectness metric over sampled anchors only (labels -1 ignored), at 0.5."""

    def __init__(self, threshold: float = 0.5, name: str = name, **kwargs):
      super().__init__(name=name, **kwargs)
      self.threshold = threshold
      self.counts = self.add_variable(shape=(4,), initializer="zeros", name="counts")

    def update_state(self, y_true, y_pred, sample_weight=None):
      import tensorflow as tf
      self.counts.assign_add(tf.stack(_masked_counts(y_true, y_pred, self.threshold)))

    def result(self):
      import tensorflow as tf
      tp, fp, fn, tn = tf.unstack(self.counts)
      return formula(tp, fp, fn, tn)

    def reset_state(self):
      self.counts.assign([0.0, 0.0, 0.0, 0.0])

    def get_config(self):
      return {"threshold": self.threshold, "name": self.name}

  _Masked.__name__ = name
  return _Masked


def _ratio(a, b):
  import tensorflow as tf
  return tf.math.divide_no_nan(a, b)


def objectness_metrics():
  """Accuracy, precision and recall of positives, over sampled anchors only."""
  accuracy = _metric_class("objectness_accuracy",
                           lambda tp, fp, fn, tn: _ratio(tp + tn, tp + fp + fn + tn))
  precision = _metric_class("positive_precision", lambda tp, fp, fn, tn: _ratio(tp, tp + fp))
  recall = _metric_class("positive_recall", lambda tp, fp, fn, tn: _ratio(tp, tp + fn))
  return [accuracy(), precision(), recall()]
