"""BatchNormalization running as one fused kernel (FusedBatchNormV3) on TensorFlow.

Keras 3's `keras.layers.BatchNormalization` computes batch statistics with
`tf.nn.moments` and normalizes with `tf.nn.batch_normalization`: about ten element-wise
passes over the activation forward and more backward. On a ResNet these passes cost
about as much as the convolutions between them, because each is memory-bound. TF's fused
kernel does the same math in one pass forward and one backward (it is what tf.keras
used by default).

`FusedBatchNormalization` is a drop-in subclass: same arguments, weights, variable names,
moving-statistics update rule (momentum on the biased batch variance, as Keras 3) and
config. It falls back to the Keras computation where the fused kernel does not compute the
same thing: inputs that are not 4-D NHWC, masks, batch renormalization, synchronized
statistics, or `center=False` / `scale=False`. One approximation: with batch statistics
(training, not frozen) an epsilon below 1.001e-5 (torch's 1e-5, used by the ResNeXt
backbones) is raised to 1.001e-5, as TF's own fused wrapper does for cuDNN; with moving
statistics (inference, frozen BatchNorm) the result uses the exact epsilon.

`fuse_batch_norms(model)` swaps every BatchNormalization of a functional model (e.g. a
keras.applications network) for this layer, keeping weights and names.
"""

import keras
import tensorflow as tf

# cuDNN refuses epsilon < 1e-5; TF's own wrapper (tf.compat.v1.nn.fused_batch_norm)
# rounds up to this value for the same reason.
_MIN_FUSED_EPSILON = 1.001e-5


@keras.saving.register_keras_serializable(package="scdnn_tf")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed by FusedBatchNormV3.

    Inputs [B,H,W,C] (axis -1), any float dtype (float16 under mixed precision; the
    statistics and the weights stay float32 as in Keras).
    """

    def _fusable(self, inputs, mask):
        axis = self.axis if isinstance(self.axis, int) else (
            self.axis[0] if len(self.axis) == 1 else None)
        return (mask is None and not self.renorm and not self.synchronized
                and self.center and self.scale and len(inputs.shape) == 4
                and axis in (-1, 3))

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        epsilon = max(self.epsilon, _MIN_FUSED_EPSILON)
        x = tf.convert_to_tensor(inputs)
        if x.dtype not in (tf.float16, tf.bfloat16, tf.float32):
            x = tf.cast(x, tf.float32)
        gamma = tf.cast(self.gamma, tf.float32)
        beta = tf.cast(self.beta, tf.float32)
        if training and self.trainable:
            empty = tf.constant([], tf.float32)
            outputs, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta, mean=empty, variance=empty,
                epsilon=epsilon, data_format="NHWC", is_training=True)
            # The kernel normalizes with the biased variance but returns the unbiased
            # one; Keras 3 averages the biased one into moving_variance.
            count = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
            variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
            self.moving_mean.assign(
                self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            # rsqrt(variance + epsilon) must be rsqrt(moving_variance + self.epsilon):
            # shift the variance by the difference (never below -epsilon, so the sum is
            # the same positive number).
            variance = tf.cast(self.moving_variance, tf.float32) + (self.epsilon - epsilon)
            outputs, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta,
                mean=tf.cast(self.moving_mean, tf.float32), variance=variance,
                epsilon=epsilon, data_format="NHWC", is_training=False)
        return tf.cast(outputs, self.compute_dtype)


def fuse_batch_norms(model):
    """A copy of a functional model with every BatchNormalization fused, same weights.

    Args:
        model: A functional keras.Model.

    Returns:
        keras.Model with the same name, layer names, variable paths and weights, in which
        each `keras.layers.BatchNormalization` is a `FusedBatchNormalization`.
    """
    def swap(layer):
        config = layer.get_config()
        if type(layer) is keras.layers.BatchNormalization:
            return FusedBatchNormalization.from_config(config)
        return layer.__class__.from_config(config)

    fused = keras.models.clone_model(model, clone_function=swap)
    fused.set_weights(model.get_weights())
    return fused
