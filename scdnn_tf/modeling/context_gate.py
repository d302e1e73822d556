"""Adaptive context: a learned per-patch choice among several context scales.

The paper expands every object patch by one global `context_scale`, and notes that more
context also brings more intra-class variation. With several scales, each patch is
cropped at every scale and a gate, computed from the patch's tight crop, weights them:

    g = softmax(Dense(relu(Dense(mean_yx(tight crop)))))   [B, N, K], sum_k g = 1
    h = sum_k g_k * h_k                                      h_k: context embedding at scale k

so the model decides per object how much surrounding to use. The gate weights are a
model output; the context box it reports is drawn at the gate-weighted mean scale.

Under mixed precision the gate (its two layers and the softmax) and the weighted sum
compute in float32: a 16-bit softmax would round weights near 0 and 1, and the gate is
small next to the label predictors it feeds.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers


def mix_scales(embeddings, weights):
    """Gate-weighted sum over scales.

    Args:
      embeddings: [B, N, K, U] per-scale embeddings.
      weights: [B, N, K] gate weights (summing to 1 over K).

    Returns:
      [B, N, U] in the embeddings' dtype (summed in float32).
    """
    mixed = tf.cast(embeddings, tf.float32) * tf.cast(weights, tf.float32)[..., tf.newaxis]
    return tf.cast(tf.reduce_sum(mixed, axis=2), embeddings.dtype)


def effective_scale(weights, scales):
    """[B, N, K] gate weights, K scales -> [B, N] float32 gate-weighted mean scale."""
    return tf.reduce_sum(tf.cast(weights, tf.float32) * tf.constant(scales, tf.float32), -1)


@keras.saving.register_keras_serializable(package="scdnn_tf")
class ContextGate(layers.Layer):
    """Per-patch softmax weights over K context scales, from the tight crop.

    Args:
      num_scales: K >= 2.
      units: hidden width.

    Call:
      crops: [P, S, S, D] tight crops (any leading patch axis P).

    Returns:
      [P, K] float32 weights, each row summing to 1 (computed in float32 under any
      global dtype policy unless a `dtype` is given).
    """

    def __init__(self, num_scales: int, units: int = 64, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if int(num_scales) < 2:
            raise ValueError(f"num_scales must be >= 2, got {num_scales!r}")
        if int(units) < 1:
            raise ValueError(f"units must be >= 1, got {units!r}")
        self.num_scales = int(num_scales)
        self.units = int(units)
        self.hidden = layers.Dense(self.units, activation="relu", dtype=self.dtype_policy,
                                   name="hidden")
        self.scores = layers.Dense(self.num_scales, dtype=self.dtype_policy, name="scores")

    def build(self, crops_shape):
        self.hidden.build((None, int(crops_shape[-1])))
        self.scores.build((None, self.units))

    def call(self, crops):
        pooled = tf.reduce_mean(crops, axis=[-3, -2])  # [P, D]
        return tf.nn.softmax(tf.cast(self.scores(self.hidden(pooled)), tf.float32), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(num_scales=self.num_scales, units=self.units)
        return config
