"""Relation module: every patch attends to the other patches of its image.

The paper uses only object-to-background context; relations between objects (a ball is
a ball because a player stands in the same row) are left open. Here the label
predictors' hidden embeddings of all patches of an image, each plus an embedding of its
box geometry, go through a small pre-norm transformer encoder before the logits:

    h [B,N,U] + Dense(sinusoids(box geometry)) -> L x (h += MHA(LN(h)); h += FFN(LN(h)))

Attention is masked to the image's valid patches: a padding slot is never a key, so
its content cannot change any valid patch's output. The layer's shapes are static
([B,N] slots), so it runs under XLA; outside XLA, `relate_compact` runs it on the valid
slots only (in training most slots are padding of the appended ground truth).

Under mixed precision the boxes stay float32 (the layer does not autocast its inputs;
the embeddings are cast to the compute dtype by hand) and the attention (projections,
scores, masked softmax) computes in float32; the feed-forward layers use the compute
dtype. Layer normalization computes its statistics in float32 in Keras.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import layers

RELATIONS = ("none", "attention")
GEOMETRY_FEATURES = 4  # centre y, centre x, log height, log width
_MIN_SIDE = 1e-3  # log of a degenerate (padding) box stays finite


def box_geometry(boxes):
    """Box geometry [..., 4]: centre (y, x) in [0, 1] and log height / width.

    Args:
      boxes: [..., 4] normalized yxyx.

    Returns:
      float32 [..., 4] `(cy, cx, log h, log w)`.
    """
    boxes = tf.cast(boxes, tf.float32)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    h = tf.maximum(ymax - ymin, _MIN_SIDE)
    w = tf.maximum(xmax - xmin, _MIN_SIDE)
    return tf.stack([(ymin + ymax) / 2, (xmin + xmax) / 2, tf.math.log(h), tf.math.log(w)], -1)


def sinusoidal_embedding(values, num_frequencies: int):
    """sin/cos of each value at octave-spaced frequencies (DETR-style positions).

    Dot products of two such embeddings depend on the values' differences, so the
    attention can learn relative placements (same row, above, near) from absolute boxes.

    Args:
      values: [..., F] float.
      num_frequencies: K frequencies pi * 2^0 .. pi * 2^(K-1).

    Returns:
      float32 [..., F * 2K].
    """
    values = tf.cast(values, tf.float32)
    freqs = math.pi * 2.0 ** tf.range(num_frequencies, dtype=tf.float32)
    angles = values[..., tf.newaxis] * freqs  # [..., F, K]
    emb = tf.concat([tf.sin(angles), tf.cos(angles)], axis=-1)  # [..., F, 2K]
    shape = tf.concat([tf.shape(values)[:-1], [values.shape[-1] * 2 * num_frequencies]], 0)
    return tf.reshape(emb, shape)


def key_padding_mask(valid):
    """[B,N] valid patches -> [B,N,N] attention mask: query i may attend key j iff j is valid."""
    valid = tf.cast(valid, tf.bool)
    n = tf.shape(valid)[1]
    return tf.tile(valid[:, tf.newaxis, :], [1, n, 1])


def valid_first(valid):
    """Per image, slot indices with the valid slots first, cut to the batch's largest count.

    Args:
      valid: [B, N] bool.

    Returns:
      int32 [B, K], K = max valid slots of an image (dynamic): gather with it, attend,
      scatter back (`relate_compact`).
    """
    valid = tf.cast(valid, tf.bool)
    order = tf.argsort(tf.cast(tf.logical_not(valid), tf.int32), axis=1, stable=True)
    return order[:, :tf.reduce_max(tf.reduce_sum(tf.cast(valid, tf.int32), axis=1))]


def relate_compact(relation, embeddings, boxes, valid, training=False):
    """`relation(embeddings, boxes, valid)` on each image's valid slots only.

    Same values on the valid slots as the full call (padding is masked anyway), at a
    fraction of the cost when most slots are padding (in training, the slots of the
    appended ground truth). Padding slots hold arbitrary values (masked downstream, as
    in the full call). Dynamic shapes: not for XLA.
    """
    index = valid_first(valid)
    refined = relation(tf.gather(embeddings, index, batch_dims=1),
                       tf.gather(boxes, index, batch_dims=1),
                       tf.gather(valid, index, batch_dims=1), training=training)
    batch = tf.broadcast_to(tf.range(tf.shape(index)[0])[:, tf.newaxis], tf.shape(index))
    return tf.tensor_scatter_nd_update(embeddings, tf.stack([batch, index], -1),
                                       tf.cast(refined, embeddings.dtype))


@keras.saving.register_keras_serializable(package="scdnn_tf")
class PatchRelation(layers.Layer):
    """Transformer encoder over the patches of each image (masked to valid patches).

    Args:
      num_layers: encoder layers (1-2 are enough for pairwise cues).
      num_heads: attention heads.
      key_dim: per-head query/key/value width.
      ffn_units: feed-forward hidden width.
      num_frequencies: sinusoid frequencies per geometry feature.

    Call:
      embeddings: [B, N, U] per-patch embeddings (padding slots arbitrary).
      boxes: [B, N, 4] normalized yxyx boxes of the patches.
      valid: [B, N] bool.

    Returns:
      [B, N, U] refined embeddings (same dtype as the compute policy).
    """

    def __init__(self, num_layers: int = 1, num_heads: int = 4, key_dim: int = 64,
                 ffn_units: int = 256, num_frequencies: int = 8, **kwargs):
        # Boxes must reach `box_geometry` unrounded: no autocast of the call's inputs.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        for name, value in (("num_layers", num_layers), ("num_heads", num_heads),
                            ("key_dim", key_dim), ("ffn_units", ffn_units),
                            ("num_frequencies", num_frequencies)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.key_dim = int(key_dim)
        self.ffn_units = int(ffn_units)
        self.num_frequencies = int(num_frequencies)
        n = range(self.num_layers)
        self.norms1 = [layers.LayerNormalization(epsilon=1e-5, name=f"layer{i}_norm1") for i in n]
        self.attentions = [layers.MultiHeadAttention(self.num_heads, self.key_dim, dtype="float32",
                                                     name=f"layer{i}_attention") for i in n]
        self.norms2 = [layers.LayerNormalization(epsilon=1e-5, name=f"layer{i}_norm2") for i in n]
        self.ffn1 = [layers.Dense(self.ffn_units, activation="relu", name=f"layer{i}_ffn1")
                     for i in n]
        self.ffn2 = []  # [units] wide: built with the embeddings
        self.geometry = None

    def build(self, embeddings_shape, boxes_shape=None, valid_shape=None):
        units = int(embeddings_shape[-1])
        self.geometry = layers.Dense(units, name="geometry_embedding")
        self.geometry.build((None, None, GEOMETRY_FEATURES * 2 * self.num_frequencies))
        seq = (None, None, units)
        for i in range(self.num_layers):
            self.ffn2.append(layers.Dense(units, name=f"layer{i}_ffn2"))
            self.norms1[i].build(seq)
            self.attentions[i].build(seq, seq, seq)
            self.norms2[i].build(seq)
            self.ffn1[i].build(seq)
            self.ffn2[i].build((None, None, self.ffn_units))

    def call(self, embeddings, boxes, valid, training=False):
        geo = sinusoidal_embedding(box_geometry(boxes), self.num_frequencies)
        h = tf.cast(embeddings, self.compute_dtype)
        h = h + tf.cast(self.geometry(tf.cast(geo, self.compute_dtype)), h.dtype)
        mask = key_padding_mask(valid)
        for i in range(self.num_layers):
            x = self.norms1[i](h)
            attended = self.attentions[i](x, x, x, attention_mask=mask, training=training)
            h = h + tf.cast(attended, h.dtype)
            h = h + self.ffn2[i](self.ffn1[i](self.norms2[i](h)))
        return h

    def get_config(self):
        config = super().get_config()
        config.update(num_layers=self.num_layers, num_heads=self.num_heads,
                      key_dim=self.key_dim, ffn_units=self.ffn_units,
                      num_frequencies=self.num_frequencies)
        return config
