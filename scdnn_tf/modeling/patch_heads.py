"""The paper's "patch classifier" and "location regressor": dense heads over the pyramid.

A 3x3 conv shared across pyramid levels, then per anchor one objectness logit (patch
classifier) and four encoded box deltas (location regressor), as in an RPN head. The
weights are shared by all levels, so one head serves P2..P5.
"""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="scdnn_tf")
class DensePatchHeads(layers.Layer):
    """Objectness and box-delta predictions for every anchor of every pyramid level.

    Args:
      num_anchors: anchors per location (aspect ratios per level).
      channels: width of the shared 3x3 conv.
      levels: pyramid levels read from the input dict, as `P{level}` keys.

    Call:
      features: dict `{"P2": [B,H2,W2,C], ...}`.

    Returns:
      `(objectness [B,A] logits float32, deltas [B,A,4] float32)`, where anchors are
      ordered level by level, then row-major (y, x, ratio) as `anchors.generate_anchors`.
    """

    def __init__(self, num_anchors: int = 3, channels: int = 256,
                 levels: tuple[int, ...] = (2, 3, 4, 5), **kwargs):
        super().__init__(**kwargs)
        if int(num_anchors) < 1:
            raise ValueError(f"num_anchors must be >= 1, got {num_anchors!r}")
        if int(channels) < 1:
            raise ValueError(f"channels must be >= 1, got {channels!r}")
        if not levels:
            raise ValueError(f"levels must be non-empty, got {levels!r}")
        self.num_anchors = int(num_anchors)
        self.channels = int(channels)
        self.levels = tuple(int(l) for l in levels)
        init = keras.initializers.RandomNormal(stddev=0.01)
        self.shared_conv = layers.Conv2D(self.channels, 3, padding="same", activation="relu",
                                         kernel_initializer=init, name="shared_conv")
        # The two 1x1 outputs compute in float32 under mixed precision: the anchors' top-k,
        # NMS and the losses read them, and they cost little next to the shared conv.
        self.patch_classifier = layers.Conv2D(self.num_anchors, 1, kernel_initializer=init,
                                              dtype="float32", name="patch_classifier")
        self.location_regressor = layers.Conv2D(self.num_anchors * 4, 1, kernel_initializer=init,
                                                dtype="float32", name="location_regressor")

    def build(self, input_shape):
        shape = input_shape[f"P{self.levels[0]}"]
        self.shared_conv.build(shape)
        out_shape = tuple(shape[:-1]) + (self.channels,)
        self.patch_classifier.build(out_shape)
        self.location_regressor.build(out_shape)

    def call(self, features):
        objectness, deltas = [], []
        for level in self.levels:
            x = self.shared_conv(features[f"P{level}"])
            h, w = x.shape[1], x.shape[2]
            # Static anchor count when the map size is known (keeps symbolic shapes exact).
            if h is not None and w is not None:
                b, n = -1, h * w * self.num_anchors
            else:
                b, n = ops.shape(x)[0], -1
            objectness.append(ops.reshape(self.patch_classifier(x), (b, n)))
            deltas.append(ops.reshape(self.location_regressor(x), (b, n, 4)))
        return ops.concatenate(objectness, axis=1), ops.concatenate(deltas, axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(num_anchors=self.num_anchors, channels=self.channels, levels=list(self.levels))
        return config
