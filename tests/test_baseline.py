"""Baseline classifier: masked BCE, call, training, config, replica-count invariance."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from scdnn_tf.modeling import losses
from scdnn_tf.modeling.baseline import BaselineClassifier

from helpers import two_cpu_strategy

NUM_CLASSES = 3


def _batch(batch=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.uniform(size=(batch, NUM_CLASSES)) < 0.5).astype("float32")
    weights = np.ones_like(labels)
    weights[0, 1] = 0.0  # one "difficult"-only class
    return {"image": rng.uniform(0, 255, (batch, size, size, 3)).astype("float32"),
            "labels": labels, "label_weights": weights}


def test_baseline_optimizes_scdnn_label_loss_hand_values():
    # One label loss for both models: the masked mean over the classes with weight > 0.
    labels = np.array([[1.0, 0.0], [0.0, 0.0]], "float32")
    logits = np.array([[0.0, 0.0], [2.0, -2.0]], "float32")
    weights = np.array([[1.0, 0.0], [1.0, 1.0]], "float32")
    model = BaselineClassifier(2)
    got = model.compute_losses({"labels": labels, "label_weights": weights},
                               {"logits": logits})["loss_label"].numpy()
    softplus = lambda z: np.log1p(np.exp(z))  # BCE(0, z) = softplus(z)
    np.testing.assert_allclose(got, [np.log(2), (softplus(2) + softplus(-2)) / 2], rtol=1e-6)
    np.testing.assert_allclose(got, losses.label_loss(labels, logits, weights).numpy())
    unmasked = model.compute_losses({"labels": labels}, {"logits": logits})["loss_label"].numpy()
    np.testing.assert_allclose(unmasked[0], np.log(2), rtol=1e-6)


def test_call_accepts_tensor_or_dict():
    model = BaselineClassifier(NUM_CLASSES)
    batch = _batch(batch=2)
    out = model(batch["image"])
    assert list(out) == ["logits"] and tuple(out["logits"].shape) == (2, NUM_CLASSES)
    np.testing.assert_allclose(model(batch)["logits"], out["logits"], atol=1e-6)


def test_logits_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = BaselineClassifier(NUM_CLASSES)
        logits = model(_batch(batch=2)["image"])["logits"]
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        logs = model.train_on_batch(_batch(batch=2), return_dict=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert logits.dtype == tf.float32
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert np.isfinite(logs["loss"])


def test_train_step_reduces_loss_on_tiny_batch():
    model = BaselineClassifier(NUM_CLASSES)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    batch = _batch()
    # Training-mode losses (batch statistics): inference-mode BN with untrained moving
    # statistics is not what the steps optimize.
    history = [model.train_on_batch(batch, return_dict=True) for _ in range(15)]
    assert set(history[0]) == {"loss", "loss_label"}
    assert history[-1]["loss"] < 0.5 * history[0]["loss"], history
    np.testing.assert_allclose(history[-1]["loss"], history[-1]["loss_label"], rtol=1e-6)


def test_label_loss_weight_scales_loss():
    model = BaselineClassifier(NUM_CLASSES, label_loss_weight=2.0)
    model.compile(optimizer="sgd")
    logs = model.test_on_batch(_batch(), return_dict=True)
    np.testing.assert_allclose(logs["loss"], 2.0 * logs["loss_label"], rtol=1e-6)


def test_batch_without_labels_is_rejected_clearly():
    model = BaselineClassifier(NUM_CLASSES)
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"'image' and 'labels'.*\['image'\]"):
        model.test_on_batch({"image": _batch()["image"]})


def test_get_config_round_trip():
    model = BaselineClassifier(NUM_CLASSES, backbone="small", image_size=32,
                               label_loss_weight=0.5, freeze_bn=True, freeze_stages=1,
                               name="base")
    config = model.get_config()
    clone = BaselineClassifier.from_config(config)
    assert clone.get_config() == config
    x = _batch(batch=1)["image"]
    model(x)
    clone(x)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(x)["logits"], model(x)["logits"], atol=1e-5)
    assert len(clone.trainable_weights) == len(model.trainable_weights)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_classes=0), "positive int, got 0"),
    (dict(num_classes=3, label_loss_weight=-1), "label_loss_weight.*-1"),
    (dict(num_classes=3, backbone="vgg"), "unknown backbone 'vgg'"),
])
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BaselineClassifier(**kwargs)


def _fit_one_step(strategy, weights, batch):
    with strategy.scope():
        # Frozen BN: per-replica batch statistics would otherwise differ from global ones.
        model = BaselineClassifier(NUM_CLASSES, freeze_bn=True)
        model(batch["image"][:1])
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
    dataset = tf.data.Dataset.from_tensors(batch)
    evaluated = model.evaluate(dataset, verbose=0, return_dict=True)
    trained = model.fit(dataset, epochs=1, verbose=0).history
    return evaluated, trained, [w.numpy() for w in model.trainable_weights]


def test_two_replicas_match_one_device_for_same_global_batch():
    batch = _batch(batch=4, seed=1)
    reference = BaselineClassifier(NUM_CLASSES, freeze_bn=True)
    reference(batch["image"][:1])
    weights = reference.get_weights()
    initial = [w.numpy() for w in reference.trainable_weights]
    one = _fit_one_step(tf.distribute.OneDeviceStrategy("/cpu:0"), weights, batch)
    two = _fit_one_step(two_cpu_strategy(), weights, batch)
    for key in ("loss", "loss_label"):
        np.testing.assert_allclose(two[0][key], one[0][key], rtol=1e-5)
        np.testing.assert_allclose(two[1][key], one[1][key], rtol=1e-5)
    # Same update => gradients were averaged over the global batch exactly once.
    moved = max(float(np.abs(a - b).max()) for a, b in zip(one[2], initial))
    assert moved > 1e-4
    for a, b in zip(two[2], one[2]):
        np.testing.assert_allclose(a, b, atol=1e-5)
