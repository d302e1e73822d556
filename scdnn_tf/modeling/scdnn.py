"""SCDNN: the spatial-context-aware deep neural network, as one `keras.Model`.

images -> backbone (C2..C5) -> FPN (P2..P5) -> dense patch classifier + location
regressor -> patch generator 1 (tight object patches) and patch generator 2 (expanded
context patches) -> multi-level crop-and-resize -> two label predictors -> per-branch
patch-to-image aggregation -> branch fusion -> image logits.

Options beyond the paper (all off by default, which is the paper's model):
`global_patch` adds the whole image as one more patch of both branches;
`context_scales` (two or more) crops each context patch at every scale and mixes them
with a learned per-patch gate (`context_gate.py`); `relation="attention"` lets the
patches of an image attend to each other before the logits (`relation.py`).

`train_step` combines the three losses (location regression, patch classification,
label prediction) into one optimizer step; see `losses.py` for their definitions.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from scdnn_tf.modeling import aggregation as aggregation_ops
from scdnn_tf.modeling import anchors, box_ops, losses, matching
from scdnn_tf.modeling import context_gate as context_gate_ops
from scdnn_tf.modeling.backbones import build_backbone
from scdnn_tf.modeling.crop_and_resize import crop_slots
from scdnn_tf.modeling.fpn import FPN
from scdnn_tf.modeling.label_predictor import LabelPredictor
from scdnn_tf.modeling.multilabel_model import MultiLabelModel
from scdnn_tf.modeling.patch_generator import (ContextPatchGenerator, ObjectPatchGenerator,
                                               context_patches)
from scdnn_tf.modeling.patch_heads import DensePatchHeads
from scdnn_tf.modeling.relation import RELATIONS, PatchRelation, relate_compact

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
      context_scales: None (the single `context_scale`) or several scales (e.g.
        (1.5, 2.5, 4.0)): each context patch is cropped at every scale and a per-patch
        gate from the tight crop weights them.
      relation: "none" (paper) or "attention": a transformer encoder over each image's
        patch embeddings (plus box geometry) before the logits, per branch.
      relation_layers: encoder layers when relation="attention".
      global_patch: add the full-image box as one more patch of both branches (its
        context crop is the image itself).
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
      label_loss, asl_gamma_neg, asl_gamma_pos, asl_clip, focal_gamma: the label loss L_l
        ("bce", the paper's; "focal" or "asl") and its parameters (`losses.LabelLoss`).
      freeze_bn, freeze_stages: backbone fine-tuning options.

    Call:
      An image tensor [B,S,S,3] float32 RGB in [0,255], or a batch dict with `image`
      (and in training `boxes` [B,M,4], `box_classes` [B,M], whose valid boxes are
      appended to the object patches).

    Returns:
      dict: `logits` [B,C] (fused), `object_logits` / `context_logits` [B,C] (present
      branches), `patch_boxes` [B,N,4], `context_boxes` [B,N,4], `patch_scores` [B,N],
      `patch_valid` [B,N], `objectness` [B,A], `deltas` [B,A,4]; with several context
      scales also `context_weights` [B,N,K] (the gate) and `patch_context_scale` [B,N]
      (its weighted mean scale, at which `context_boxes` are then drawn). The global patch is not among the N patches.
    """

    LOSS_NAMES = ("loss", "loss_regression", "loss_patch", "loss_label")

    def __init__(self, num_classes, backbone="small", backbone_weights=None, image_size=448,
                 fpn_channels=256, min_level=2, anchor_sizes=(32, 64, 128, 256), aspect_ratios=(0.5, 1.0, 2.0),
                 num_patches=32, num_train_patches=64, pre_nms_topk=1000, nms_iou=0.7,
                 context_scale=2.0, context_scales=None, relation="none", relation_layers=1,
                 global_patch=False, branches="both", aggregation="max", lse_r=5.0, fusion="mean",
                 crop_size=7, crop_backend="tf_image", fc_units=1024, dropout=0.0, pos_iou=0.7,
                 neg_iou=0.3, anchor_samples=256, positive_fraction=0.5, regression_weight=1.0,
                 patch_weight=1.0, label_weight=1.0, freeze_bn=False, freeze_stages=0,
                 label_loss="bce", asl_gamma_neg=4.0, asl_gamma_pos=0.0, asl_clip=0.05,
                 focal_gamma=2.0, **kwargs):
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
        if relation not in RELATIONS:
            raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")
        scales = tuple(float(v) for v in (context_scales or (context_scale,)))
        if min(scales) < 1.0 or len(set(scales)) != len(scales):
            raise ValueError(f"context scales must be distinct and >= 1.0, got {scales!r}")
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
        self.label_loss = losses.LabelLoss(label_loss, asl_gamma_neg, asl_gamma_pos, asl_clip,
                                           focal_gamma)
        self.num_classes = int(num_classes)
        self.backbone_name = backbone
        self.backbone_weights = backbone_weights
        self.image_size = int(image_size)
        self.fpn_channels = int(fpn_channels)
        self.anchor_sizes = tuple(float(s) for s in anchor_sizes)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.context_scales = scales
        self.context_scale = scales[0]
        self.relation = relation
        self.relation_layers = int(relation_layers)
        self.global_patch = bool(global_patch)
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
        self.context_patch_generators = [
            ContextPatchGenerator(context_scale=s, name="context_patch_generator" + (
                f"_{k}" if k else "")) for k, s in enumerate(scales)]
        self.context_gate = None
        if len(scales) > 1:
            self.context_gate = context_gate_ops.ContextGate(len(scales), name="context_gate")
        self.object_predictor = self.context_predictor = None
        self.object_relation = self.context_relation = None
        if branches in ("object", "both"):
            self.object_predictor = LabelPredictor(self.num_classes, self.fc_units, self.dropout,
                                                   name="object_label_predictor")
            if relation == "attention":
                self.object_relation = PatchRelation(self.relation_layers,
                                                     name="object_relation")
        if branches in ("context", "both"):
            self.context_predictor = LabelPredictor(self.num_classes, self.fc_units, self.dropout,
                                                    name="context_label_predictor")
            if relation == "attention":
                self.context_relation = PatchRelation(self.relation_layers,
                                                      name="context_relation")
        level_anchors = anchors.generate_anchors(self.image_size, levels=self.levels,
                                                 sizes=self.anchor_sizes,
                                                 aspect_ratios=self.aspect_ratios)
        # Plain numpy constants: not weights, rebuilt from the config.
        self._level_anchors = tuple(np.asarray(a, np.float32) for a in level_anchors)
        self._all_anchors = np.concatenate(self._level_anchors, axis=0)

    def _crops(self, pyramid, box_sets, valid):
        """([crops [P,s,s,D] per box set], to_slots [P,...] -> [B,N,...]) of the slots."""
        # gather: every slot, static shapes for XLA; tf_image: the valid slots only.
        return crop_slots(pyramid, box_sets, valid, self.image_size,
                          crop_size=self.crop_size, min_level=self.min_level,
                          all_slots=self.crop_backend == "gather")

    def _embed(self, predictor, crops, to_slots, training):
        """[P,s,s,D] crops -> [B,N,U] predictor hidden embeddings."""
        return to_slots(predictor(crops[tf.newaxis], training=training, part="embed")[0])

    def _branch_logits(self, predictor, relation, embeddings, boxes, valid, training):
        if relation is not None and self.crop_backend == "gather":  # static shapes for XLA
            embeddings = relation(embeddings, boxes, valid, training=training)
        elif relation is not None:
            embeddings = relate_compact(relation, embeddings, boxes, valid, training)
        patch_logits = predictor(embeddings, part="classify")
        return aggregation_ops.aggregate_patches(patch_logits, valid, self.aggregation, self.lse_r)

    def _with_global_patch(self, boxes, valid):
        """Appends the full-image box as one always-valid slot: [B,N+1,4], [B,N+1]."""
        batch = tf.shape(boxes)[0]
        full = tf.tile(tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), [batch, 1, 1])
        return (tf.concat([boxes, full], 1),
                tf.concat([tf.cast(valid, tf.bool), tf.ones([batch, 1], tf.bool)], 1))

    def call(self, inputs, training=False):
        images, gt_boxes, gt_valid = unpack_inputs(inputs)
        features = self.backbone(images, training=training)
        pyramid = self.fpn(features)
        objectness, deltas = self.patch_heads(pyramid)
        boxes, scores, valid = self.object_patch_generator(
            objectness, deltas, list(self._level_anchors), gt_boxes, gt_valid, training=training)
        outputs = {"patch_boxes": boxes, "patch_scores": scores, "patch_valid": valid,
                   "objectness": objectness, "deltas": deltas}
        slot_boxes, slot_valid = boxes, valid
        if self.global_patch:  # its context crops are the image itself (clipped expansion)
            slot_boxes, slot_valid = self._with_global_patch(boxes, valid)
        num = tf.shape(boxes)[1]
        # Every crop of the step (tight, then each context scale) in one call: one atlas
        # of the pyramid, one crop gradient.
        need_tight = self.object_predictor is not None or self.context_gate is not None
        box_sets = [slot_boxes] if need_tight else []
        if self.context_predictor is not None:
            box_sets += [generator(slot_boxes) for generator in self.context_patch_generators]
        crops, to_slots = self._crops(pyramid, box_sets, slot_valid)
        tight_crops = crops[0] if need_tight else None
        context_crops = crops[1:] if need_tight else crops
        gate = None
        if self.context_gate is not None:
            k = len(self.context_scales)
            gate = tf.where(slot_valid[..., tf.newaxis], to_slots(self.context_gate(tight_crops)),
                            1.0 / k)  # padding slots: uniform, so every row sums to 1
            outputs["context_weights"] = gate[:, :num]
            outputs["patch_context_scale"] = context_gate_ops.effective_scale(
                gate[:, :num], self.context_scales)
            outputs["context_boxes"] = context_patches(boxes, outputs["patch_context_scale"])
        else:
            outputs["context_boxes"] = self.context_patch_generators[0](boxes)
        branch_logits = []
        if self.object_predictor is not None:
            h = self._embed(self.object_predictor, tight_crops, to_slots, training)
            outputs["object_logits"] = self._branch_logits(
                self.object_predictor, self.object_relation, h, slot_boxes, slot_valid, training)
            branch_logits.append(outputs["object_logits"])
        if self.context_predictor is not None:
            per_scale = [self._embed(self.context_predictor, scale_crops, to_slots, training)
                         for scale_crops in context_crops]
            h = per_scale[0] if gate is None else context_gate_ops.mix_scales(
                tf.stack(per_scale, axis=2), gate)
            outputs["context_logits"] = self._branch_logits(
                self.context_predictor, self.context_relation, h, slot_boxes, slot_valid,
                training)
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
        l_l = tf.add_n([self.label_loss(batch["labels"], outputs[k], weights) for k in keys])
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
            "context_scales": list(self.context_scales), "relation": self.relation,
            "relation_layers": self.relation_layers, "global_patch": self.global_patch,
            "branches": self.branches, "aggregation": self.aggregation, "lse_r": self.lse_r,
            "fusion": self.fusion, "crop_size": self.crop_size,
            "crop_backend": self.crop_backend, "fc_units": self.fc_units,
            "dropout": self.dropout, "pos_iou": self.pos_iou, "neg_iou": self.neg_iou,
            "anchor_samples": self.anchor_samples, "positive_fraction": self.positive_fraction,
            "regression_weight": w_r, "patch_weight": w_p, "label_weight": w_l,
            "freeze_bn": self.freeze_bn, "freeze_stages": self.freeze_stages,
            **self.label_loss.get_config(),
        })
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

