"""The label loss options (BCE, focal, ASL): hand values, masking, stability, configs."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from scdnn_tf.modeling import losses
from scdnn_tf.modeling.baseline import BaselineClassifier
from scdnn_tf.modeling.scdnn import SCDNN


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_asl_hand_values_with_clip_and_mask():
    labels = tf.constant([[1.0, 0.0, 0.0, 1.0]])
    logits = tf.constant([[0.0, 0.0, -3.0, -100.0]])
    weights = tf.constant([[1.0, 1.0, 1.0, 0.0]])  # the last (huge) entry is masked out
    loss = losses.LabelLoss("asl", asl_gamma_neg=4, asl_gamma_pos=0, asl_clip=0.05)
    pos = math.log(2.0)                          # gamma_pos = 0: plain -log p
    neg = -(0.45 ** 4) * math.log(1 - 0.45)      # p = 0.5 shifted by the clip to 0.45
    clipped = 0.0                                # p = sigmoid(-3) = 0.047 < clip: no loss
    assert _sig(-3.0) < 0.05
    np.testing.assert_allclose(loss(labels, logits, weights).numpy(),
                               [(pos + neg + clipped) / 3], rtol=1e-6)
    terms = losses.asymmetric_terms(labels, logits, 0.0, 4.0, 0.05).numpy()[0]
    np.testing.assert_allclose(terms[:3], [pos, neg, clipped], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(terms[3], 100.0, rtol=1e-5)  # present, only masked


def test_asl_positive_focusing_and_unmasked_mean():
    labels = tf.constant([[1.0, 0.0]])
    logits = tf.constant([[1.0, 2.0]])
    loss = losses.LabelLoss("asl", asl_gamma_neg=2, asl_gamma_pos=1, asl_clip=0.0)
    p1, p2 = _sig(1.0), _sig(2.0)
    pos = -(1 - p1) * math.log(p1)
    neg = -(p2 ** 2) * math.log(1 - p2)
    np.testing.assert_allclose(loss(labels, logits).numpy(), [(pos + neg) / 2], rtol=1e-6)


def test_focal_hand_values_and_keras_reference():
    labels = tf.constant([[1.0, 0.0, 1.0]])
    logits = tf.constant([[0.0, 2.0, -1.5]])
    loss = losses.LabelLoss("focal", focal_gamma=2)
    p2, p3 = _sig(2.0), _sig(-1.5)
    expected = [0.25 * math.log(2.0), -(p2 ** 2) * math.log(1 - p2),
                -((1 - p3) ** 2) * math.log(p3)]
    np.testing.assert_allclose(loss(labels, logits).numpy(), [np.mean(expected)], rtol=1e-6)
    # Keras's focal cross-entropy (no class balancing) is the same loss, computed apart.
    reference = keras.losses.binary_focal_crossentropy(
        tf.reshape(labels, [3, 1]), tf.reshape(logits, [3, 1]), gamma=2.0, from_logits=True)
    np.testing.assert_allclose(
        losses.asymmetric_terms(labels, logits, 2.0, 2.0, 0.0).numpy()[0], reference.numpy(),
        rtol=1e-5)


def test_bce_option_is_the_existing_bce_bit_for_bit():
    rng = np.random.default_rng(0)
    labels = tf.constant(rng.integers(0, 2, (4, 7)), tf.float32)
    logits = tf.constant(rng.normal(0, 5, (4, 7)), tf.float32)
    weights = tf.constant(rng.integers(0, 2, (4, 7)), tf.float32)
    bce = losses.LabelLoss("bce")
    np.testing.assert_array_equal(bce(labels, logits, weights).numpy(),
                                  losses.label_loss(labels, logits, weights).numpy())
    np.testing.assert_array_equal(bce(labels, logits).numpy(),
                                  losses.label_loss(labels, logits).numpy())
    # ASL without focusing and clip is BCE (computed another way: equal to rounding).
    plain = losses.LabelLoss("asl", asl_gamma_neg=0, asl_gamma_pos=0, asl_clip=0)
    np.testing.assert_allclose(plain(labels, logits, weights).numpy(),
                               losses.label_loss(labels, logits, weights).numpy(), rtol=1e-5)


@pytest.mark.parametrize("kind", ["bce", "focal", "asl"])
@pytest.mark.parametrize("dtype", [tf.float32, tf.float16, tf.bfloat16])
def test_finite_values_and_gradients_at_extreme_logits(kind, dtype):
    labels = tf.constant([[1.0, 0.0, 1.0, 0.0]])
    logits = tf.Variable(tf.cast([[100.0, 100.0, -100.0, -100.0]], dtype))
    loss = losses.LabelLoss(kind, asl_gamma_neg=0.5)  # a fractional exponent too
    with tf.GradientTape() as tape:
        value = loss(labels, logits)
    grad = tape.gradient(value, logits)
    assert value.dtype == tf.float32 and np.isfinite(value.numpy()).all()
    assert np.isfinite(tf.cast(grad, tf.float32).numpy()).all()
    # The confidently wrong entries dominate: the loss is large, not NaN or 0.
    assert value.numpy()[0] > 10.0


def test_low_precision_logits_give_the_float32_result_of_the_same_values():
    logits16 = tf.constant([[3.0, -7.5, 11.0]], tf.float16)
    labels = tf.constant([[1.0, 0.0, 0.0]])
    for kind in losses.LABEL_LOSSES:
        loss = losses.LabelLoss(kind)
        np.testing.assert_array_equal(loss(labels, logits16).numpy(),
                                      loss(labels, tf.cast(logits16, tf.float32)).numpy())


@pytest.mark.parametrize("kwargs,match", [
    (dict(label_loss="l2"), "label_loss must be one of .*'l2'"),
    (dict(asl_gamma_neg=-1.0), "asl_gamma_neg .* got -1.0"),
    (dict(asl_gamma_pos=float("nan")), "asl_gamma_pos .* got nan"),
    (dict(focal_gamma="2"), "focal_gamma .* got '2'"),
    (dict(asl_clip=1.0), r"asl_clip must be in \[0, 1\), got 1.0"),
])
def test_label_loss_validation_echoes_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        losses.LabelLoss(**kwargs)
    with pytest.raises(ValueError, match=match):
        BaselineClassifier(3, **kwargs)


LOSS_ARGS = dict(label_loss="asl", asl_gamma_neg=2.0, asl_gamma_pos=1.0, asl_clip=0.1,
                 focal_gamma=3.0)


def test_baseline_config_round_trip_and_loss_in_use():
    model = BaselineClassifier(3, image_size=32, **LOSS_ARGS)
    config = model.get_config()
    assert {k: config[k] for k in LOSS_ARGS} == LOSS_ARGS
    clone = BaselineClassifier.from_config(config)
    assert clone.get_config() == config
    batch = {"image": tf.random.uniform([2, 32, 32, 3], 0, 255),
             "labels": tf.constant([[1.0, 0, 0], [0, 1, 1]]),
             "label_weights": tf.constant([[1.0, 1, 0], [1, 1, 1]])}
    outputs = model(batch)
    expected = losses.LabelLoss(**LOSS_ARGS)(batch["labels"], outputs["logits"],
                                             batch["label_weights"])
    np.testing.assert_allclose(model.compute_losses(batch, outputs)["loss_label"], expected)


def test_scdnn_config_round_trip_and_every_branch_uses_the_loss():
    kwargs = dict(backbone="small", image_size=64, fpn_channels=16, fc_units=16,
                  anchor_sizes=(16, 32, 64, 128), pre_nms_topk=50, num_patches=4,
                  num_train_patches=4, anchor_samples=16)
    model = SCDNN(3, **kwargs, **LOSS_ARGS)
    config = model.get_config()
    assert {k: config[k] for k in LOSS_ARGS} == LOSS_ARGS
    assert SCDNN.from_config(config).get_config() == config
    batch = {"image": tf.random.uniform([2, 64, 64, 3], 0, 255),
             "boxes": tf.constant([[[0.1, 0.1, 0.6, 0.6]], [[0.2, 0.3, 0.9, 0.8]]]),
             "box_classes": tf.constant([[0], [2]]),
             "labels": tf.constant([[1.0, 0, 0], [0, 0, 1]]),
             "label_weights": tf.ones([2, 3])}
    outputs = model(batch, training=True)
    loss = losses.LabelLoss(**LOSS_ARGS)
    expected = sum(loss(batch["labels"], outputs[k], batch["label_weights"])
                   for k in ("logits", "object_logits", "context_logits"))
    np.testing.assert_allclose(model.compute_losses(batch, outputs)["loss_label"], expected,
                               rtol=1e-6)
    default = SCDNN(3, **kwargs)
    assert default.get_config()["label_loss"] == "bce"


@pytest.mark.parametrize("kind", ["focal", "asl"])
def test_train_step_finite_under_mixed_precision(kind):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = BaselineClassifier(3, image_size=32, label_loss=kind)
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        batch = {"image": tf.random.uniform([2, 32, 32, 3], 0, 255),
                 "labels": tf.constant([[1.0, 0, 0], [0, 1, 1]]),
                 "label_weights": tf.ones([2, 3])}
        logs = model.train_on_batch(batch, return_dict=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.isfinite(logs["loss"]) and logs["loss"] > 0
