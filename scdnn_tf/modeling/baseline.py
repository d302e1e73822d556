"""Plain multi-label baseline: backbone -> global average pooling -> dense -> C logits.

This is the "blurs objects into the background" reference point SCDNN is compared with.
It trains on the same pipeline batches (dicts with ``image``, ``labels``,
``label_weights``) with SCDNN's label loss L_l (`losses.label_loss`), through the same
train step (`MultiLabelModel`), so the two are compared on one objective.
"""

import keras

from scdnn_tf.modeling import losses
from scdnn_tf.modeling.backbones import build_backbone
from scdnn_tf.modeling.multilabel_model import MultiLabelModel


@keras.saving.register_keras_serializable(package="scdnn_tf")
class BaselineClassifier(MultiLabelModel):
    """Backbone + global average pooling + dense classifier.

    Args:
        num_classes: Number of labels C (positive int).
        backbone: Backbone name (see `build_backbone`).
        backbone_weights: None, a by-name ``.weights.h5`` path or "imagenet" (resnet50).
        image_size: Static input side S, or None for any size.
        label_loss_weight: Weight of the label loss in the total loss (>= 0).
        label_loss, asl_gamma_neg, asl_gamma_pos, asl_clip, focal_gamma: the label loss
            ("bce", "focal" or "asl") and its parameters (`losses.LabelLoss`).
        freeze_bn: BatchNorm layers of the backbone in inference mode, non-trainable.
        freeze_stages: Freeze backbone stages 0..k-1 (0 = stem).
        name: Model name.

    Call:
        inputs: images [B,S,S,3] float32 in [0,255], or a dict with key ``image``.

    Returns:
        {"logits": [B, C] float32} (float32 also under mixed precision).
    """

    LOSS_NAMES = ("loss", "loss_label")

    def __init__(self, num_classes, backbone="small", backbone_weights=None, image_size=None,
                 label_loss_weight=1.0, freeze_bn=False, freeze_stages=0, label_loss="bce",
                 asl_gamma_neg=4.0, asl_gamma_pos=0.0, asl_clip=0.05, focal_gamma=2.0,
                 name="baseline", **kwargs):
        super().__init__(name=name, **kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not float(label_loss_weight) >= 0:
            raise ValueError(f"label_loss_weight must be >= 0, got {label_loss_weight!r}")
        self.label_loss = losses.LabelLoss(label_loss, asl_gamma_neg, asl_gamma_pos, asl_clip,
                                           focal_gamma)
        self.num_classes = num_classes
        self.backbone_name = backbone
        self.backbone_weights = backbone_weights
        self.image_size = image_size
        self.label_loss_weight = float(label_loss_weight)
        self.freeze_bn = freeze_bn
        self.freeze_stages = freeze_stages
        self.backbone = build_backbone(backbone, weights=backbone_weights, freeze_bn=freeze_bn,
                                       freeze_stages=freeze_stages, image_size=image_size)
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        # float32 head: logits and the loss stay float32 under mixed_float16.
        self.classifier = keras.layers.Dense(num_classes, dtype="float32", name="classifier")

    def call(self, inputs, training=None):
        images = inputs["image"] if isinstance(inputs, dict) else inputs
        features = self.backbone(images, training=training)
        return {"logits": self.classifier(self.pool(features["C5"]))}

    def compute_losses(self, batch, outputs):
        """Per-image label loss L_l (the same masked loss as SCDNN's) and the total, [B]."""
        l_l = self.label_loss(batch["labels"], outputs["logits"], batch.get("label_weights"))
        return {"loss": self.label_loss_weight * l_l, "loss_label": l_l}

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_classes": self.num_classes,
            "backbone": self.backbone_name,
            "backbone_weights": self.backbone_weights,
            "image_size": self.image_size,
            "label_loss_weight": self.label_loss_weight,
            "freeze_bn": self.freeze_bn,
            "freeze_stages": self.freeze_stages,
            **self.label_loss.get_config(),
        })
        return config
