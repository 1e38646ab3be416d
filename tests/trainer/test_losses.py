"""trainer.losses: masked objectness and box losses, masked metrics."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import losses

BETA = 1.0 / 9.0


def logit(p):
  p = np.asarray(p, np.float64)
  return np.log(p / (1.0 - p)).astype(np.float32)


def test_objectness_loss_against_hand_computed_values():
  labels = np.array([[1, 0, -1], [0, -1, -1]], np.float32)
  scores = np.array([[0.8, 0.4, 0.99], [0.1, 0.5, 0.5]], np.float32)
  # Sampled: (1, 0.8), (0, 0.4), (0, 0.1): N_cls = 3.
  # BCE: -ln 0.8 = 0.223144, -ln 0.6 = 0.510826, -ln 0.9 = 0.105361; sum 0.839331 / 3.
  expected = (-math.log(0.8) - math.log(0.6) - math.log(0.9)) / 3
  assert expected == pytest.approx(0.279777, abs=1e-6)
  assert float(losses.objectness_loss(labels, logit(scores))) == pytest.approx(expected, abs=1e-6)


def test_objectness_gradient_at_extreme_logits_is_not_zero():
  """A confidently wrong anchor keeps a gradient (BCE on clipped probabilities
  gave a negative at logit 17 a loss of 15.9 and a gradient of 0)."""
  labels = tf.constant([[0.0, 1.0, -1.0]])
  logits = tf.Variable([[17.0, -40.0, 50.0]])
  with tf.GradientTape() as tape:
    loss = losses.objectness_loss(labels, logits)
  gradient = tape.gradient(loss, logits).numpy()
  # d BCE / d logit = sigmoid(logit) - label, over N_cls = 2 sampled anchors.
  np.testing.assert_allclose(gradient, [[0.5, -0.5, 0.0]], atol=1e-6)
  assert float(loss) == pytest.approx((17.0 + 40.0) / 2, rel=1e-5)


def test_smooth_l1_against_hand_computed_values():
  x = np.array([0.0, 0.05, -0.05, BETA, 0.5, -1.0], np.float32)
  # |x| < 1/9: 0.5 x^2 * 9 -> 0, 0.01125, 0.01125; else |x| - 1/18:
  # 1/9 - 1/18 = 0.055556, 0.5 - 0.055556 = 0.444444, 1 - 0.055556 = 0.944444.
  np.testing.assert_allclose(losses.smooth_l1(x),
                             [0.0, 0.01125, 0.01125, 0.055556, 0.444444, 0.944444], atol=1e-6)


def _box_case():
  """Two points, 3 anchors each (A = 3): packed [2, 15], deltas [2, 12]."""
  labels = np.array([[1, 0, -1], [-1, 1, -1]], np.float32)
  targets = np.zeros((2, 12), np.float32)
  deltas = np.zeros((2, 12), np.float32)
  targets[0, 0:4] = [0.1, 0.5, 0.0, -1.0]  # point 0, anchor 0 (positive)
  deltas[0, 0:4] = [0.15, 0.0, 0.0, 0.0]
  targets[1, 4:8] = [0.2, 0.2, 0.2, 0.2]  # point 1, anchor 1 (positive)
  deltas[1, 4:8] = [0.2, 0.2, 0.2, 0.3]
  deltas[0, 4:] = 7.0  # point 0, anchors 1 (negative) and 2 (ignored): no box loss
  deltas[1, :4] = -3.0  # point 1, anchor 0 (ignored)
  return labels, targets, deltas


def test_box_loss_against_hand_computed_values():
  labels, targets, deltas = _box_case()
  # Residuals of point 0 anchor 0: (0.05, -0.5, 0, 1) -> 0.01125 + 0.444444 + 0 + 0.944444
  #   = 1.400139; point 1 anchor 1: (0, 0, 0, 0.1) -> 0.5 * 0.01 * 9 = 0.045.
  # Sum 1.445139 over N_cls = 3 sampled anchors (two positives, one negative) = 0.481713.
  packed = np.concatenate([labels, targets], axis=1)
  assert float(losses.box_loss(packed, deltas)) == pytest.approx(0.481713, abs=1e-5)


def test_ignored_anchors_change_nothing():
  labels, targets, deltas = _box_case()
  scores = np.array([[0.8, 0.4, 0.99], [0.3, 0.6, 0.2]], np.float32)
  packed = np.concatenate([labels, targets], axis=1)
  cls, box = losses.objectness_loss(labels, logit(scores)), losses.box_loss(packed, deltas)
  rng = np.random.default_rng(0)
  ignored = labels < 0
  ignored4 = np.repeat(ignored, 4, axis=1)
  for _ in range(5):
    scores2 = np.where(ignored, rng.uniform(0, 1, scores.shape), scores).astype(np.float32)
    deltas2 = np.where(ignored4, rng.normal(0, 5, deltas.shape), deltas).astype(np.float32)
    targets2 = np.where(ignored4, rng.normal(0, 5, targets.shape), targets).astype(np.float32)
    packed2 = np.concatenate([labels, targets2], axis=1)
    assert float(losses.objectness_loss(labels, logit(scores2))) == pytest.approx(float(cls),
                                                                                   abs=1e-7)
    assert float(losses.box_loss(packed2, deltas2)) == pytest.approx(float(box), abs=1e-7)
  # Negatives' deltas and targets do not count in the box loss either.
  negative4 = np.repeat(labels == 0, 4, axis=1)
  deltas3 = np.where(negative4, 9.0, deltas).astype(np.float32)
  assert float(losses.box_loss(packed, deltas3)) == pytest.approx(float(box), abs=1e-7)


def test_no_sampled_anchor_gives_zero_not_nan():
  labels = np.full((2, 3), -1, np.float32)
  logits = np.full((2, 3), 30.0, np.float32)
  packed = np.concatenate([labels, np.ones((2, 12), np.float32)], axis=1)
  assert float(losses.objectness_loss(labels, logits)) == 0.0
  assert float(losses.box_loss(packed, np.zeros((2, 12), np.float32))) == 0.0


def test_compiled_loss_is_objectness_plus_weighted_box():
  """Through Keras: evaluate() reports the two terms and their weighted sum."""
  labels, targets, deltas = _box_case()
  tile = keras.Input((3,))
  model = keras.Model(tile, {"scores": keras.layers.Identity(name="scores")(tile),
                             "deltas": keras.layers.Dense(12, name="deltas", use_bias=False)(tile)})
  scores = np.array([[0.8, 0.4, 0.99], [0.3, 0.6, 0.2]], np.float32)
  weight = 2.5
  loss, loss_weights = losses.rpn_losses(weight)
  model.compile(loss=loss, loss_weights=loss_weights)
  model.get_layer("deltas").set_weights([np.zeros((3, 12), np.float32)])
  packed = np.concatenate([labels, targets], axis=1)
  logs = model.evaluate(logit(scores), {"scores": labels, "deltas": packed}, batch_size=2,
                        return_dict=True, verbose=0)
  cls = float(losses.objectness_loss(labels, logit(scores)))
  box = float(losses.box_loss(packed, np.zeros((2, 12), np.float32)))
  assert logs["scores_loss"] == pytest.approx(cls, abs=1e-5)
  assert logs["deltas_loss"] == pytest.approx(box, abs=1e-5)
  assert logs["loss"] == pytest.approx(cls + weight * box, abs=1e-5)


def test_masked_metrics_ignore_unsampled_anchors():
  labels = np.array([[1, 1, 0, 0, -1, -1], [1, 0, -1, -1, -1, -1]], np.float32)
  scores = np.array([[0.9, 0.2, 0.7, 0.1, 0.99, 0.0], [0.6, 0.4, 0.9, 0.9, 0.9, 0.9]],
                    np.float32)
  metrics = {m.name: m for m in losses.objectness_metrics()}
  for metric in metrics.values():
    metric.update_state(labels, scores)
  # At 0.5: tp 0.9, 0.6 -> 2; fn 0.2 -> 1; fp 0.7 -> 1; tn 0.1, 0.4 -> 2; -1s nowhere.
  assert float(metrics["objectness_accuracy"].result()) == pytest.approx(4 / 6)
  assert float(metrics["positive_precision"].result()) == pytest.approx(2 / 3)
  assert float(metrics["positive_recall"].result()) == pytest.approx(2 / 3)
  assert float(metrics["tiles"].result()) == 2
  for metric in metrics.values():
    metric.reset_state()
    assert float(metric.result()) == 0.0
  # The same counts from logits (the training model's output).
  from_logits = {m.name: m for m in losses.objectness_metrics(from_logits=True)}
  for metric in from_logits.values():
    metric.update_state(labels, logit(np.clip(scores, 1e-6, 1 - 1e-6)))
  assert float(from_logits["objectness_accuracy"].result()) == pytest.approx(4 / 6)
  assert float(from_logits["positive_precision"].result()) == pytest.approx(2 / 3)
