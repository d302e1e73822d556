"""The base of the package's models: one train / test step, loss trackers, regularization.

A subclass defines `call(batch or images) -> {"logits": [B, C], ...}` and
`compute_losses(batch, outputs) -> {name: [B]}` (per-image values; `loss` is the
weighted total) and lists the names in `LOSS_NAMES`. The base class averages `loss` over
the *global* batch (`tf.nn.compute_average_loss`: the same result on any number of
replicas), adds the layers' regularization losses once
(`tf.nn.scale_regularization_loss`), applies mixed-precision loss scaling through the
optimizer, and reports every named loss as a mean over images.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from scdnn_tf.modeling import losses


class MultiLabelModel(keras.Model):
    """keras.Model with the shared train/test step; see the module docstring."""

    LOSS_NAMES: tuple[str, ...] = ("loss",)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not callable(getattr(self, "compute_losses", None)):
            raise TypeError(f"{type(self).__name__} must define compute_losses(batch, outputs)")
        # Means over images (not over replicas or steps): each replica adds its images'
        # sum and count, so the reported means are global-batch means.
        self._trackers = [keras.metrics.Mean(name=n) for n in self.LOSS_NAMES]

    @property
    def metrics(self):
        return list(self._trackers)

    def _batch(self, data) -> dict:
        # A dataset yields the dict itself; train_on_batch(dict) passes (dict, None, None).
        batch, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        if not isinstance(batch, dict) or "image" not in batch or "labels" not in batch:
            keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
            raise ValueError(f"{self.name}: expected a batch dict with 'image' and 'labels', "
                             f"got {keys}")
        return batch

    def regularization_loss(self) -> tf.Tensor:
        """This replica's share of the layers' regularization losses (summed over replicas
        by the gradient all-reduce: counted once)."""
        if not self.losses:
            return tf.constant(0.0)
        return tf.nn.scale_regularization_loss(tf.cast(tf.add_n(self.losses), tf.float32))

    def _update_trackers(self, per_image: dict) -> dict:
        for tracker in self._trackers:
            tracker.update_state(per_image[tracker.name])
        return {t.name: t.result() for t in self._trackers}

    def train_step(self, data):
        batch = self._batch(data)
        with tf.GradientTape() as tape:
            outputs = self(batch, training=True)
            per_image = self.compute_losses(batch, outputs)
            loss = losses.global_average(per_image["loss"]) + self.regularization_loss()
            scaled = self.optimizer.scale_loss(loss)  # mixed precision: loss scaling
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._update_trackers(per_image)

    def test_step(self, data):
        batch = self._batch(data)
        return self._update_trackers(self.compute_losses(batch, self(batch, training=False)))

    def predict_step(self, data):
        batch, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self(batch, training=False)
