"""FusedBatchNormalization computes what keras.layers.BatchNormalization computes."""

import numpy as np
import pytest

import scdnn_tf.utils.tf_start  # noqa: F401
import keras
import tensorflow as tf

from scdnn_tf.modeling import backbones
from scdnn_tf.modeling.fused_batch_norm import FusedBatchNormalization, fuse_batch_norms


def _pair(epsilon=1e-3, momentum=0.9, **kwargs):
    """A Keras BN and a fused BN with the same (non-trivial) weights, built on C=5."""
    rng = np.random.default_rng(0)
    layers = [keras.layers.BatchNormalization(epsilon=epsilon, momentum=momentum, **kwargs),
              FusedBatchNormalization(epsilon=epsilon, momentum=momentum, **kwargs)]
    weights = None
    for layer in layers:
        layer.build((None, 6, 7, 5))
        if weights is None:
            weights = [rng.uniform(0.5, 2.0, w.shape).astype("float32")
                       for w in layer.get_weights()]
        layer.set_weights(weights)
    return layers


def _inputs(shape=(3, 6, 7, 5)):
    # Per-channel offsets and scales far from (0, 1), so statistics matter.
    rng = np.random.default_rng(1)
    return (rng.normal(size=shape) * [1, 3, 0.1, 10, 2] + [5, -2, 0, 40, 1]).astype("float32")


@pytest.mark.parametrize("epsilon", [1e-3, 1.001e-5, 1e-5])
def test_training_outputs_gradients_and_moving_statistics_match_keras(epsilon):
    x = tf.constant(_inputs())
    results = []
    for layer in _pair(epsilon=epsilon):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * tf.range(5, dtype=tf.float32) * y)
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([y, *grads, layer.moving_mean, layer.moving_variance])
    for keras_value, fused_value in zip(*results):
        np.testing.assert_allclose(fused_value.numpy(), keras_value.numpy(),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("epsilon", [1e-3, 1e-5])
def test_inference_and_frozen_outputs_match_keras(epsilon):
    x = tf.constant(_inputs())
    keras_bn, fused_bn = _pair(epsilon=epsilon)
    np.testing.assert_allclose(fused_bn(x, training=False).numpy(),
                               keras_bn(x, training=False).numpy(), rtol=1e-5, atol=1e-5)
    keras_bn.trainable = fused_bn.trainable = False  # frozen: moving statistics in training
    np.testing.assert_allclose(fused_bn(x, training=True).numpy(),
                               keras_bn(x, training=True).numpy(), rtol=1e-5, atol=1e-5)


def test_uses_the_fused_kernel_and_falls_back_where_it_does_not_apply():
    def op_types(layer, x):
        graph = tf.function(lambda t: layer(t, training=True)).get_concrete_function(
            tf.TensorSpec(x.shape, tf.float32)).graph
        return {op.type for op in graph.get_operations()}

    x4 = tf.constant(_inputs())
    assert "FusedBatchNormV3" in op_types(_pair()[1], x4)
    # 2-D input and center=False are computed by Keras' own code (same results).
    x2 = tf.constant(_inputs()[:, 0, 0, :])
    assert "FusedBatchNormV3" not in op_types(FusedBatchNormalization(), x2)
    keras_bn, fused_bn = _pair(center=False)
    assert "FusedBatchNormV3" not in op_types(fused_bn, x4)
    np.testing.assert_allclose(fused_bn(x4, training=True).numpy(),
                               keras_bn(x4, training=True).numpy(), rtol=1e-5, atol=1e-5)


def test_mixed_float16_keeps_float32_statistics():
    layer = FusedBatchNormalization(dtype="mixed_float16")
    y = layer(tf.constant(_inputs(), tf.float16), training=True)
    assert y.dtype == tf.float16
    assert layer.moving_mean.dtype == "float32"
    np.testing.assert_allclose(layer.moving_mean.numpy(),
                               0.01 * _inputs().mean(axis=(0, 1, 2)), rtol=2e-3, atol=2e-3)


def test_config_round_trip():
    layer = FusedBatchNormalization(epsilon=1e-5, momentum=0.8, name="bn")
    clone = FusedBatchNormalization.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)).__class__ is FusedBatchNormalization


def test_fuse_batch_norms_keeps_names_weights_and_outputs():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="conv_bn")(x)
    model = keras.Model(inputs, {"out": keras.layers.ReLU(name="relu")(x)}, name="net")
    model.get_layer("conv_bn").set_weights(
        [np.full(4, v, "float32") for v in (2.0, 0.5, 0.1, 3.0)])
    fused = fuse_batch_norms(model)
    assert fused.name == "net"
    assert isinstance(fused.get_layer("conv_bn"), FusedBatchNormalization)
    assert [v.path for v in fused.weights] == [v.path for v in model.weights]
    x = tf.constant(_inputs((2, 8, 8, 5))[..., :3])
    np.testing.assert_allclose(fused(x)["out"].numpy(), model(x)["out"].numpy(), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("name", ["resnet50", "small"])
def test_backbones_use_only_fused_batch_norm(name):
    model = backbones.build_backbone(name, image_size=64)
    bns = [layer for layer in model.layers
           if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(isinstance(layer, FusedBatchNormalization) for layer in bns)
