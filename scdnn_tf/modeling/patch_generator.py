"""The paper's two patch generators.

Patch generator 1 (object branch) turns the dense patch classifier / location
regressor outputs into N tight object patches per image: decode the deltas, clip to
the image, keep the top-k anchors per level by objectness, NMS, keep N. In training the
ground-truth boxes are appended, so the label predictors see true objects from step one.

Patch generator 2 (context branch) takes the same patches scaled about their centre by
`context_scale` and clipped to the image: what surrounds each object.
"""

from __future__ import annotations

import tensorflow as tf
import keras
from keras import layers

from scdnn_tf.modeling import box_ops


def _batched_nms(boxes, scores, max_output_size, iou_threshold, score_threshold):
    """Greedy NMS per image with the native kernel, padded to max_output_size.

    `tf.image.non_max_suppression_padded` on a batch runs a tiled pure-TF while loop
    (~100 ms for 16 x 2000 boxes on 2 CPU cores); the per-image C++ kernel in a
    `tf.map_fn` gives the same indices in ~2 ms and also compiles under XLA.

    Args:
      boxes: [B, K, 4] float32; scores: [B, K] float32 (kept when > score_threshold).

    Returns:
      indices [B, max_output_size] int32 (padding 0), counts [B] int32.
    """
    def one_image(args):
        selected, count = tf.raw_ops.NonMaxSuppressionV4(
            boxes=args[0], scores=args[1], max_output_size=max_output_size,
            iou_threshold=iou_threshold, score_threshold=score_threshold,
            pad_to_max_output_size=True)
        return selected, count

    return tf.map_fn(one_image, (boxes, scores), fn_output_signature=(
        tf.TensorSpec([max_output_size], tf.int32), tf.TensorSpec([], tf.int32)))


def propose_patches(objectness, deltas, anchors_per_level, num_patches: int,
                    pre_nms_topk: int = 1000, nms_iou: float = 0.7, min_size: float = 1e-3):
    """Selects object patches from dense predictions.

    Args:
      objectness: [B, A] logits, anchors ordered level by level.
      deltas: [B, A, 4] encoded box deltas.
      anchors_per_level: list of [A_l, 4] normalized anchors (sum A_l = A).
      num_patches: N, patches kept per image.
      pre_nms_topk: anchors kept per level before NMS.
      nms_iou: NMS IoU threshold.
      min_size: boxes narrower or shorter than this (normalized) are discarded.

    Returns:
      boxes [B, N, 4] normalized (zeros where padded), scores [B, N] objectness
      probabilities (0 where padded), valid [B, N] bool. No gradient flows to the boxes
      (they are regression targets' business, not the label loss's).
    """
    objectness = tf.stop_gradient(tf.cast(objectness, tf.float32))
    deltas = tf.stop_gradient(tf.cast(deltas, tf.float32))
    boxes, scores = [], []
    start = 0
    for anchors in anchors_per_level:  # a handful of static levels, not boxes
        anchors = tf.convert_to_tensor(anchors, tf.float32)
        n = int(anchors.shape[0])
        k = min(int(pre_nms_topk), n)
        top_logits, idx = tf.math.top_k(objectness[:, start:start + n], k=k)
        level_deltas = tf.gather(deltas[:, start:start + n], idx, batch_dims=1)
        level_boxes = box_ops.clip_boxes(box_ops.decode_boxes(level_deltas, tf.gather(anchors, idx)))
        boxes.append(level_boxes)
        scores.append(tf.sigmoid(top_logits))
        start += n
    boxes = tf.concat(boxes, axis=1)
    scores = tf.concat(scores, axis=1)
    heights = boxes[..., 2] - boxes[..., 0]
    widths = boxes[..., 3] - boxes[..., 1]
    # Degenerate boxes get a negative score so that NMS's score threshold drops them.
    scores = tf.where((heights >= min_size) & (widths >= min_size), scores, -1.0)
    idx, num_valid = _batched_nms(boxes, scores, num_patches, nms_iou, score_threshold=-0.5)
    valid = tf.range(num_patches)[tf.newaxis, :] < num_valid[:, tf.newaxis]
    out_boxes = tf.where(valid[..., tf.newaxis], tf.gather(boxes, idx, batch_dims=1), 0.0)
    out_scores = tf.where(valid, tf.gather(scores, idx, batch_dims=1), 0.0)
    return out_boxes, out_scores, valid


def context_patches(boxes, context_scale: float):
    """Patch generator 2: boxes [..., 4] scaled about their centre, clipped to the image."""
    return box_ops.clip_boxes(box_ops.scale_boxes(boxes, context_scale))


@keras.saving.register_keras_serializable(package="scdnn_tf")
class ObjectPatchGenerator(layers.Layer):
    """Patch generator 1 (object branch) as a layer.

    Args:
      num_patches: patches per image at inference (default 32).
      num_train_patches: proposals per image in training (default 64), before the
        ground-truth boxes are appended.
      pre_nms_topk, nms_iou, min_size: see `propose_patches`.

    Call:
      objectness [B,A], deltas [B,A,4], anchors_per_level (list of [A_l,4]),
      gt_boxes [B,M,4] and gt_valid [B,M] (training only; appended when given).

    Returns:
      boxes [B,N',4], scores [B,N'], valid [B,N'] with N' = num_patches at inference and
      num_train_patches + M in training with ground truth.
    """

    def __init__(self, num_patches: int = 32, num_train_patches: int = 64,
                 pre_nms_topk: int = 1000, nms_iou: float = 0.7, min_size: float = 1e-3, **kwargs):
        # Box math in float32 also under mixed_float16: Keras would otherwise autocast the
        # anchors passed to `call` to float16 (rounding them to ~3 digits).
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        for name, value in (("num_patches", num_patches), ("num_train_patches", num_train_patches),
                            ("pre_nms_topk", pre_nms_topk)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if not 0.0 < float(nms_iou) <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {nms_iou!r}")
        if float(min_size) < 0:
            raise ValueError(f"min_size must be >= 0, got {min_size!r}")
        self.num_patches = int(num_patches)
        self.num_train_patches = int(num_train_patches)
        self.pre_nms_topk = int(pre_nms_topk)
        self.nms_iou = float(nms_iou)
        self.min_size = float(min_size)

    def call(self, objectness, deltas, anchors_per_level, gt_boxes=None, gt_valid=None,
             training=False):
        n = self.num_train_patches if training else self.num_patches
        boxes, scores, valid = propose_patches(objectness, deltas, anchors_per_level, n,
                                               self.pre_nms_topk, self.nms_iou, self.min_size)
        if training and gt_boxes is not None:
            gt_valid = tf.cast(gt_valid, tf.bool)
            gt_boxes = tf.where(gt_valid[..., tf.newaxis], tf.cast(gt_boxes, tf.float32), 0.0)
            boxes = tf.concat([boxes, gt_boxes], axis=1)
            scores = tf.concat([scores, tf.cast(gt_valid, tf.float32)], axis=1)
            valid = tf.concat([valid, gt_valid], axis=1)
        return boxes, scores, valid

    def get_config(self):
        config = super().get_config()
        config.update(num_patches=self.num_patches, num_train_patches=self.num_train_patches,
                      pre_nms_topk=self.pre_nms_topk, nms_iou=self.nms_iou, min_size=self.min_size)
        return config


@keras.saving.register_keras_serializable(package="scdnn_tf")
class ContextPatchGenerator(layers.Layer):
    """Patch generator 2 (context branch): boxes scaled by `context_scale`, clipped.

    `context_scale=1.0` gives the tight boxes back (context disabled).
    """

    def __init__(self, context_scale: float = 2.0, **kwargs):
        # float32 also under mixed precision: these are crop sampling coordinates, which
        # Keras would otherwise round to the compute dtype on the way in.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not float(context_scale) >= 1.0:
            raise ValueError(f"context_scale must be >= 1.0, got {context_scale!r}")
        self.context_scale = float(context_scale)

    def call(self, boxes):
        return context_patches(boxes, self.context_scale)

    def get_config(self):
        config = super().get_config()
        config.update(context_scale=self.context_scale)
        return config
