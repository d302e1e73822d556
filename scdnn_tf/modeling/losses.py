"""The three SCDNN losses, as per-image values.

- L_r (location regression): smooth-L1 (Huber, delta=1) on the encoded deltas of the
  positive anchors, summed over the 4 coordinates and averaged over the image's
  positives.
- L_p (patch classification): binary cross-entropy on the image's sampled anchors.
- L_l (label prediction): a per-class loss of image-level logits against the
  multi-hot labels (binary cross-entropy by default; focal or asymmetric loss as
  options, see `LabelLoss`), averaged over classes with `label_weights` as a mask.

Every function returns one value per image, [B]. The train step averages them over
the *global* batch with `tf.nn.compute_average_loss`, which is what makes the result
independent of the number of replicas (raw-op losses are not scaled by Keras).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

LABEL_LOSSES = ("bce", "focal", "asl")


def _masked_mean(values, mask, axis):
    mask = tf.cast(mask, values.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(values * mask, axis=axis),
                                 tf.reduce_sum(mask, axis=axis))


def regression_loss(pred_deltas, target_deltas, anchor_labels, delta: float = 1.0):
    """L_r per image.

    Args:
      pred_deltas: [B, A, 4] predicted encoded deltas.
      target_deltas: [B, A, 4] encoded deltas of each anchor's matched box.
      anchor_labels: [B, A] int, 1 = positive anchor.
      delta: Huber transition point.

    Returns:
      [B] float32; 0 for an image without positive anchors.
    """
    pred = tf.cast(pred_deltas, tf.float32)
    target = tf.stop_gradient(tf.cast(target_deltas, tf.float32))
    # keras.losses.huber averages over the last axis; x4 makes it the sum over coordinates.
    per_anchor = 4.0 * keras.losses.huber(target, pred, delta=delta)
    return _masked_mean(per_anchor, tf.equal(anchor_labels, 1), axis=1)


def patch_loss(objectness, anchor_labels, sample_weights):
    """L_p per image: mean BCE over the sampled anchors ([B, A] each) -> [B]."""
    targets = tf.cast(tf.equal(anchor_labels, 1), tf.float32)
    bce = keras.ops.binary_crossentropy(targets, tf.cast(objectness, tf.float32), from_logits=True)
    return _masked_mean(bce, sample_weights, axis=1)


def label_loss(labels, logits, label_weights=None):
    """L_l per image: masked mean BCE over classes ([B, C] each) -> [B]."""
    labels = tf.cast(labels, tf.float32)
    bce = keras.ops.binary_crossentropy(labels, tf.cast(logits, tf.float32), from_logits=True)
    if label_weights is None:
        return tf.reduce_mean(bce, axis=1)
    return _masked_mean(bce, label_weights, axis=1)


def asymmetric_terms(labels, logits, gamma_pos=0.0, gamma_neg=4.0, clip=0.05):
    """Per-entry asymmetric loss (ASL, Ridnik et al. 2021) from logits, float32.

    With p = sigmoid(logit) and the shifted negative probability p_m = max(p - clip, 0):
    loss = -y (1 - p)^gamma_pos log(p) - (1 - y) p_m^gamma_neg log(1 - p_m).
    Focal loss is the case gamma_pos = gamma_neg, clip = 0; BCE is all zeros.
    Logs come from log-sigmoid (finite at any finite logit); the logits are cast to
    float32 first, so float16 / bfloat16 logits give the same stable result.

    Args:
      labels: [..., C] targets in [0, 1].
      logits: [..., C] any float dtype.
      gamma_pos, gamma_neg: focusing exponents (>= 0) of positives and negatives.
      clip: probability margin (in [0, 1)) subtracted from negatives' probabilities.

    Returns:
      float32 [..., C].
    """
    labels = tf.cast(labels, tf.float32)
    logits = tf.cast(logits, tf.float32)
    log_p = tf.math.log_sigmoid(logits)       # log p
    log_q = tf.math.log_sigmoid(-logits)      # log(1 - p)
    positive = -tf.exp(gamma_pos * log_q) * log_p
    if clip > 0:
        p_m = tf.nn.relu(tf.sigmoid(logits) - clip)
        log_one_minus = tf.math.log(tf.minimum(tf.sigmoid(-logits) + clip, 1.0))  # >= log(clip)
        # p_m ** gamma with a zero-safe base: no 0 ** (gamma - 1) in the gradient.
        safe = tf.where(p_m > 0, p_m, tf.ones_like(p_m))
        weight = tf.where(p_m > 0, tf.pow(safe, gamma_neg), tf.pow(0.0, gamma_neg))
    else:
        log_one_minus = log_q
        weight = tf.exp(gamma_neg * log_p)
    negative = -weight * log_one_minus
    return labels * positive + (1.0 - labels) * negative


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class LabelLoss:
    """The label loss L_l of a model: BCE, focal or ASL, masked mean over classes.

    Args:
      label_loss: "bce" (default), "focal" or "asl".
      asl_gamma_neg, asl_gamma_pos, asl_clip: ASL's parameters (used by "asl").
      focal_gamma: focal loss exponent (used by "focal").

    Every kind is normalized like the BCE: per image, the sum over classes of the
    per-class loss times `label_weights`, divided by the sum of the weights (the mean
    over the classes that count).
    """

    def __init__(self, label_loss="bce", asl_gamma_neg=4.0, asl_gamma_pos=0.0, asl_clip=0.05,
                 focal_gamma=2.0):
        if label_loss not in LABEL_LOSSES:
            raise ValueError(f"label_loss must be one of {LABEL_LOSSES}, got {label_loss!r}")
        for name, value in (("asl_gamma_neg", asl_gamma_neg), ("asl_gamma_pos", asl_gamma_pos),
                            ("focal_gamma", focal_gamma)):
            if not (_is_number(value) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (_is_number(asl_clip) and 0.0 <= asl_clip < 1.0):
            raise ValueError(f"asl_clip must be in [0, 1), got {asl_clip!r}")
        self.kind = label_loss
        self.asl_gamma_neg, self.asl_gamma_pos = float(asl_gamma_neg), float(asl_gamma_pos)
        self.asl_clip, self.focal_gamma = float(asl_clip), float(focal_gamma)

    def __call__(self, labels, logits, label_weights=None):
        """[B, C] labels, logits (and optional weights) -> [B] float32."""
        if self.kind == "bce":
            return label_loss(labels, logits, label_weights)
        if self.kind == "focal":
            g = self.focal_gamma
            terms = asymmetric_terms(labels, logits, gamma_pos=g, gamma_neg=g, clip=0.0)
        else:
            terms = asymmetric_terms(labels, logits, self.asl_gamma_pos, self.asl_gamma_neg,
                                     self.asl_clip)
        if label_weights is None:
            return tf.reduce_mean(terms, axis=1)
        return _masked_mean(terms, label_weights, axis=1)

    def get_config(self) -> dict:
        """The model constructor arguments that rebuild this loss."""
        return {"label_loss": self.kind, "asl_gamma_neg": self.asl_gamma_neg,
                "asl_gamma_pos": self.asl_gamma_pos, "asl_clip": self.asl_clip,
                "focal_gamma": self.focal_gamma}


def global_average(per_image):
    """Averages [B] per-replica values over the global batch (tf.distribute-aware)."""
    return tf.nn.compute_average_loss(per_image)
