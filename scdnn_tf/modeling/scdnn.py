"""SCDNN: the spatial-context-aware deep neural network, as one `keras.Model`.

images -> backbone (C2..C5) -> FPN (P2..P5) -> dense patch classifier + location
regressor -> patch generator 1 (tight object patches) and patch generator 2 (expanded
context patches) -> multi-level crop-and-resize -> two label predictors -> per-branch
patch-to-image aggregation -> branch fusion -> image logits.

`train_step` combines the three losses (location regression, patch classification,
label prediction) into one optimizer step; see `losses.py` for their definitions.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from scdnn_tf.modeling import aggregation as aggregation_ops
from scdnn_tf.modeling import anchors, box_ops, losses, matching
from scdnn_tf.modeling.backbones import build_backbone
from scdnn_tf.modeling.crop_and_resize import crop_valid_boxes, multilevel_crop_and_resize
from scdnn_tf.modeling.fpn import FPN
from scdnn_tf.modeling.label_predictor import LabelPredictor
from scdnn_tf.modeling.multilabel_model import MultiLabelModel
from scdnn_tf.modeling.patch_generator import ContextPatchGenerator, ObjectPatchGenerator
from scdnn_tf.modeling.patch_heads import DensePatchHeads

BRANCHES = ("object", "context", "both")
MAX_LEVEL = 5
MIN_LEVELS = (2, 3)  # P2..P5 (the paper's design) or P3..P5 (lighter: no stride-4 map)
CROP_BACKENDS = ("tf_image", "gather")


def unpack_inputs(inputs):
    """Returns (images, gt_boxes or None, gt_valid or None) from a tensor or a batch dict."""
    if isinstance(inputs, dict):
        boxes = inputs.get("boxes")
        classes = inputs.get("box_classes")
        valid = None if classes is None else tf.greater_equal(classes, 0)
        return inputs["image"], boxes, valid
    return inputs, None, None


@keras.saving.register_keras_serializable(package="scdnn_tf")
class SCDNN(MultiLabelModel):
    """Spatial-context-aware multi-label classifier.

    Args:
      num_classes: C.
      backbone: "resnext101_32x8d" (paper), "resnext50_32x4d", "resnet50" or "small".
      backbone_weights: None, "imagenet" (resnet50) or a local `.weights.h5` path.
      image_size: input side S in pixels (a multiple of 32); anchors are built for it.
      fpn_channels: pyramid width.
      min_level: finest pyramid level, 2 (P2..P5, the paper's design) or 3 (P3..P5: no
        stride-4 map, so no 3x3 smoothing / dense head at stride 4; boxes that would be
        cropped from P2 are cropped from P3).
      anchor_sizes: anchor side in pixels, one per level min_level..5.
      aspect_ratios: anchor h/w ratios.
      num_patches: patches per image at inference (N).
      num_train_patches: proposals per image in training (ground truth is appended).
      pre_nms_topk, nms_iou: patch generator 1 settings.
      context_scale: patch generator 2's expansion about the box centre (1.0 = no context).
      branches: "object", "context" or "both" (the ablation switch).
      aggregation: "max" or "lse" patch-to-image pooling; lse_r its sharpness.
      fusion: "mean" or "max" branch fusion.
      crop_size: crop-and-resize output side.
      crop_backend: "tf_image" (default: only valid patches are cropped and classified,
        a dynamic count) or "gather" (every patch slot, static shapes: needed under XLA,
        `jit_compile=True`, where tf.image.crop_and_resize has no kernel).
      fc_units, dropout: label predictor hidden width and dropout.
      pos_iou, neg_iou, anchor_samples, positive_fraction: anchor matching and sampling.
      regression_weight, patch_weight, label_weight: w_r, w_p, w_l.
      freeze_bn, freeze_stages: backbone fine-tuning options.

    Call:
      An image tensor [B,S,S,3] float32 RGB in [0,255], or a batch dict with `image`
      (and in training `boxes` [B,M,4], `box_classes` [B,M], whose valid boxes are
      appended to the object patches).

    Returns:
      dict: `logits` [B,C] (fused), `object_logits` / `context_logits` [B,C] (present
      branches), `patch_boxes` [B,N,4], `context_boxes` [B,N,4], `patch_scores` [B,N],
      `patch_valid` [B,N], `objectness` [B,A], `deltas` [B,A,4].
    """

    LOSS_NAMES = ("loss", "loss_regression", "loss_patch", "loss_label")

    def __init__(self, num_classes, backbone="small", backbone_weights=None, image_size=448,
                 fpn_channels=256, min_level=2, anchor_sizes=(32, 64, 128, 256), aspect_ratios=(0.5, 1.0, 2.0),
                 num_patches=32, num_train_patches=64, pre_nms_topk=1000, nms_iou=0.7,
                 context_scale=2.0, branches="both", aggregation="max", lse_r=5.0, fusion="mean",
                 crop_size=7, crop_backend="tf_image", fc_units=1024, dropout=0.0, pos_iou=0.7,
                 neg_iou=0.3, anchor_samples=256, positive_fraction=0.5, regression_weight=1.0,
                 patch_weight=1.0, label_weight=1.0, freeze_bn=False, freeze_stages=0, **kwargs):
        kwargs.setdefault("name", "scdnn")
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
        if int(image_size) < 32 or int(image_size) % 32:
            raise ValueError(f"image_size must be a positive multiple of 32, got {image_size!r}")
        if branches not in BRANCHES:
            raise ValueError(f"branches must be one of {BRANCHES}, got {branches!r}")
        if aggregation not in aggregation_ops.AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {aggregation_ops.AGGREGATIONS}, "
                             f"got {aggregation!r}")
        if fusion not in aggregation_ops.FUSIONS:
            raise ValueError(f"fusion must be one of {aggregation_ops.FUSIONS}, got {fusion!r}")
        if crop_backend not in CROP_BACKENDS:
            raise ValueError(f"crop_backend must be one of {CROP_BACKENDS}, got {crop_backend!r}")
        if min_level not in MIN_LEVELS:
            raise ValueError(f"min_level must be one of {MIN_LEVELS}, got {min_level!r}")
        self.min_level = int(min_level)
        self.levels = tuple(range(self.min_level, MAX_LEVEL + 1))
        if len(anchor_sizes) != len(self.levels):
            raise ValueError(f"anchor_sizes needs one size per level {self.levels}, "
                             f"got {anchor_sizes!r}")
        if not 0.0 <= float(neg_iou) <= float(pos_iou) <= 1.0:
            raise ValueError(f"need 0 <= neg_iou <= pos_iou <= 1, got neg_iou={neg_iou!r}, "
                             f"pos_iou={pos_iou!r}")
        for name, w in (("regression_weight", regression_weight), ("patch_weight", patch_weight),
                        ("label_weight", label_weight)):
            if float(w) < 0:
                raise ValueError(f"{name} must be >= 0, got {w!r}")
        self.num_classes = int(num_classes)
        self.backbone_name = backbone
        self.backbone_weights = backbone_weights
        self.image_size = int(image_size)
        self.fpn_channels = int(fpn_channels)
        self.anchor_sizes = tuple(float(s) for s in anchor_sizes)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.context_scale = float(context_scale)
        self.branches = branches
        self.aggregation = aggregation
        self.lse_r = float(lse_r)
        self.fusion = fusion
        self.crop_size = int(crop_size)
        self.crop_backend = crop_backend
        self.fc_units = int(fc_units)
        self.dropout = float(dropout)
        self.pos_iou, self.neg_iou = float(pos_iou), float(neg_iou)
        self.anchor_samples = int(anchor_samples)
        self.positive_fraction = float(positive_fraction)
        self.loss_weights = (float(regression_weight), float(patch_weight), float(label_weight))
        self.freeze_bn = bool(freeze_bn)
        self.freeze_stages = int(freeze_stages)

        self.backbone = build_backbone(backbone, weights=backbone_weights, freeze_bn=freeze_bn,
                                       freeze_stages=freeze_stages, image_size=self.image_size)
        self.fpn = FPN(channels=self.fpn_channels, levels=self.levels, name="fpn")
        self.patch_heads = DensePatchHeads(num_anchors=len(self.aspect_ratios),
                                           channels=self.fpn_channels, levels=self.levels,
                                           name="patch_heads")
        self.object_patch_generator = ObjectPatchGenerator(
            num_patches=num_patches, num_train_patches=num_train_patches,
            pre_nms_topk=pre_nms_topk, nms_iou=nms_iou, name="object_patch_generator")
        self.context_patch_generator = ContextPatchGenerator(
            context_scale=self.context_scale, name="context_patch_generator")
        self.object_predictor = self.context_predictor = None
        if branches in ("object", "both"):
            self.object_predictor = LabelPredictor(self.num_classes, self.fc_units, self.dropout,
                                                   name="object_label_predictor")
        if branches in ("context", "both"):
            self.context_predictor = LabelPredictor(self.num_classes, self.fc_units, self.dropout,
                                                    name="context_label_predictor")
        level_anchors = anchors.generate_anchors(self.image_size, levels=self.levels,
                                                 sizes=self.anchor_sizes,
                                                 aspect_ratios=self.aspect_ratios)
        # Plain numpy constants: not weights, rebuilt from the config.
        self._level_anchors = tuple(np.asarray(a, np.float32) for a in level_anchors)
        self._all_anchors = np.concatenate(self._level_anchors, axis=0)

    def _branch_logits(self, predictor, pyramid, boxes, valid, training):
        if self.crop_backend == "gather":  # static shapes for XLA: every slot, padding too
            crops = multilevel_crop_and_resize(pyramid, boxes, self.image_size,
                                               crop_size=self.crop_size,
                                               min_level=self.min_level, backend="gather")
            patch_logits = predictor(crops, training=training)
        else:  # valid patches only: most training slots are padding of the appended gt boxes
            crops, index = crop_valid_boxes(pyramid, boxes, valid, self.image_size,
                                            crop_size=self.crop_size, min_level=self.min_level)
            logits = predictor(crops[tf.newaxis], training=training)[0]  # [V, C]
            patch_logits = tf.scatter_nd(index, logits, tf.concat(
                [tf.shape(valid), [self.num_classes]], 0))
        return aggregation_ops.aggregate_patches(patch_logits, valid, self.aggregation, self.lse_r)

    def call(self, inputs, training=False):
        images, gt_boxes, gt_valid = unpack_inputs(inputs)
        features = self.backbone(images, training=training)
        pyramid = self.fpn(features)
        objectness, deltas = self.patch_heads(pyramid)
        boxes, scores, valid = self.object_patch_generator(
            objectness, deltas, list(self._level_anchors), gt_boxes, gt_valid, training=training)
        context_boxes = self.context_patch_generator(boxes)
        outputs = {"patch_boxes": boxes, "context_boxes": context_boxes, "patch_scores": scores,
                   "patch_valid": valid, "objectness": objectness, "deltas": deltas}
        branch_logits = []
        if self.object_predictor is not None:
            outputs["object_logits"] = self._branch_logits(self.object_predictor, pyramid, boxes,
                                                           valid, training)
            branch_logits.append(outputs["object_logits"])
        if self.context_predictor is not None:
            outputs["context_logits"] = self._branch_logits(self.context_predictor, pyramid,
                                                            context_boxes, valid, training)
            branch_logits.append(outputs["context_logits"])
        outputs["logits"] = aggregation_ops.fuse_branches(branch_logits, self.fusion)
        return outputs

    def compute_losses(self, batch, outputs):
        """Per-image losses, each [B]: `loss` (weighted total) and its three parts."""
        gt_boxes = tf.cast(batch["boxes"], tf.float32)
        gt_valid = tf.greater_equal(batch["box_classes"], 0)
        all_anchors = tf.constant(self._all_anchors)
        match_boxes, match_valid = gt_boxes, gt_valid
        if self.crop_backend != "gather":  # dynamic shapes are fine outside XLA
            match_boxes, match_valid = matching.compact_valid(gt_boxes, gt_valid)
        anchor_labels, matched = matching.match_anchors(all_anchors, match_boxes, match_valid,
                                                        self.pos_iou, self.neg_iou)
        targets = box_ops.encode_boxes(matched, all_anchors[tf.newaxis])
        sampled = matching.sample_anchors(anchor_labels, self.anchor_samples, self.positive_fraction)
        # An image without boxes (labels-only data) contributes only to L_l.
        has_boxes = tf.cast(tf.reduce_any(gt_valid, axis=1), tf.float32)
        l_r = losses.regression_loss(outputs["deltas"], targets, anchor_labels)
        l_p = losses.patch_loss(outputs["objectness"], anchor_labels, sampled) * has_boxes
        weights = batch.get("label_weights")
        # Every branch and the fused output are supervised by the labels.
        keys = [k for k in ("logits", "object_logits", "context_logits") if k in outputs]
        if self.branches != "both":
            keys = ["logits"]  # with one branch, the fused logits are that branch's
        l_l = tf.add_n([losses.label_loss(batch["labels"], outputs[k], weights) for k in keys])
        w_r, w_p, w_l = self.loss_weights
        total = w_r * l_r + w_p * l_p + w_l * l_l
        return {"loss": total, "loss_regression": l_r, "loss_patch": l_p, "loss_label": l_l}

    def get_config(self):
        w_r, w_p, w_l = self.loss_weights
        gen = self.object_patch_generator
        config = super().get_config()
        config.update({
            "num_classes": self.num_classes, "backbone": self.backbone_name,
            "backbone_weights": self.backbone_weights, "image_size": self.image_size,
            "fpn_channels": self.fpn_channels, "min_level": self.min_level,
            "anchor_sizes": list(self.anchor_sizes),
            "aspect_ratios": list(self.aspect_ratios), "num_patches": gen.num_patches,
            "num_train_patches": gen.num_train_patches, "pre_nms_topk": gen.pre_nms_topk,
            "nms_iou": gen.nms_iou, "context_scale": self.context_scale,
            "branches": self.branches, "aggregation": self.aggregation, "lse_r": self.lse_r,
            "fusion": self.fusion, "crop_size": self.crop_size,
            "crop_backend": self.crop_backend, "fc_units": self.fc_units,
            "dropout": self.dropout, "pos_iou": self.pos_iou, "neg_iou": self.neg_iou,
            "anchor_samples": self.anchor_samples, "positive_fraction": self.positive_fraction,
            "regression_weight": w_r, "patch_weight": w_p, "label_weight": w_l,
            "freeze_bn": self.freeze_bn, "freeze_stages": self.freeze_stages,
        })
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

