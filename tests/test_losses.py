import math

import numpy as np
import tensorflow as tf

from scdnn_tf.modeling import losses

from helpers import two_cpu_strategy


def test_regression_loss_zero_when_prediction_equals_target():
    t = tf.random.normal([2, 5, 4])
    labels = tf.constant([[1, 0, 1, -1, 0], [0, 0, 0, 0, 1]])
    np.testing.assert_allclose(losses.regression_loss(t, t, labels).numpy(), [0.0, 0.0])


def test_regression_loss_hand_values():
    target = tf.zeros([1, 3, 4])
    # Anchor 0 (positive): off by 0.5 on one coordinate -> 0.5 * 0.5^2 = 0.125.
    # Anchor 1 (positive): off by 2 on one coordinate -> 1 * (2 - 0.5) = 1.5.
    # Anchor 2 (negative): huge error, must not count.
    pred = tf.constant([[[0.5, 0, 0, 0], [0, 0, 2.0, 0], [9, 9, 9, 9]]])
    labels = tf.constant([[1, 1, 0]])
    np.testing.assert_allclose(losses.regression_loss(pred, target, labels).numpy(),
                               [(0.125 + 1.5) / 2], rtol=1e-6)


def test_regression_loss_without_positives_is_zero():
    pred = tf.ones([1, 4, 4])
    np.testing.assert_allclose(
        losses.regression_loss(pred, tf.zeros_like(pred), tf.constant([[0, -1, 0, 0]])).numpy(), [0.0])


def test_patch_loss_counts_only_sampled_anchors():
    objectness = tf.constant([[0.0, 0.0, 50.0, -50.0]])
    labels = tf.constant([[1, 0, 0, 1]])  # anchors 2 and 3 are badly wrong but not sampled
    sampled = tf.constant([[1.0, 1.0, 0.0, 0.0]])
    np.testing.assert_allclose(losses.patch_loss(objectness, labels, sampled).numpy(),
                               [math.log(2.0)], rtol=1e-6)


def test_patch_loss_known_value():
    # logit 2 for a positive: log(1 + e^-2); logit 2 for a negative: log(1 + e^2).
    objectness = tf.constant([[2.0, 2.0]])
    labels = tf.constant([[1, 0]])
    expected = (math.log1p(math.exp(-2)) + math.log1p(math.exp(2))) / 2
    np.testing.assert_allclose(losses.patch_loss(objectness, labels, tf.ones([1, 2])).numpy(),
                               [expected], rtol=1e-6)


def test_label_loss_masks_weighted_classes():
    labels = tf.constant([[1.0, 0.0, 1.0]])
    logits = tf.constant([[0.0, 0.0, -100.0]])
    weights = tf.constant([[1.0, 1.0, 0.0]])  # class 2 is "difficult": ignored
    np.testing.assert_allclose(losses.label_loss(labels, logits, weights).numpy(),
                               [math.log(2.0)], rtol=1e-6)
    unmasked = losses.label_loss(labels, logits).numpy()
    assert unmasked[0] > 30.0


def test_global_average_divides_by_global_batch():
    np.testing.assert_allclose(losses.global_average(tf.constant([1.0, 2.0, 3.0, 6.0])).numpy(), 3.0)
    strategy = two_cpu_strategy()
    values = tf.constant([[1.0, 2.0], [3.0, 6.0]])

    def replica_fn():
        ctx = tf.distribute.get_replica_context()
        return losses.global_average(tf.gather(values, ctx.replica_id_in_sync_group))

    total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_fn), axis=None)
    np.testing.assert_allclose(total.numpy(), 3.0, rtol=1e-6)
