"""A run's network and optimizer, built from its TrainConfig (the precision policy in force
when `build_model` runs is the model's: see `core.precision.precision_policy`)."""

from __future__ import annotations

import keras
import tensorflow as tf

from scdnn_tf.core.config import TrainConfig
from scdnn_tf.modeling.hub_weights import is_hub_spec
from scdnn_tf.modeling.weights_by_name import check_readable
from scdnn_tf.utils import files


def build_model(config: TrainConfig, num_classes: int, load_backbone_weights: bool = True):
    """The network named by `--model`, built (variables created) in the current scope."""
    weights = (config.backbone_weights or None) if load_backbone_weights else None
    if weights and weights != "imagenet" and not is_hub_spec(weights):
        with files.flag_errors("backbone_weights", weights):  # a damaged file, named early
            check_readable(weights, by_name=False)
    common = dict(backbone=config.backbone, backbone_weights=weights,
                  image_size=config.image_size, freeze_bn=config.freeze_bn,
                  freeze_stages=config.freeze_stages, label_loss=config.label_loss,
                  asl_gamma_neg=config.asl_gamma_neg, asl_gamma_pos=config.asl_gamma_pos,
                  asl_clip=config.asl_clip, focal_gamma=config.focal_gamma)
    if config.model == "baseline":
        from scdnn_tf.modeling.baseline import BaselineClassifier  # noqa: PLC0415
        model = BaselineClassifier(num_classes, label_loss_weight=config.label_weight, **common)
    else:
        from scdnn_tf.modeling.scdnn import SCDNN  # noqa: PLC0415
        model = SCDNN(num_classes, fpn_channels=config.fpn_channels, min_level=config.min_level,
                      anchor_sizes=config.anchor_sizes, aspect_ratios=config.aspect_ratios,
                      num_patches=config.num_patches, num_train_patches=config.num_train_patches,
                      anchor_samples=config.anchor_samples,
                      # tf.image.crop_and_resize has no XLA kernel: same sampling via gathers.
                      crop_backend="gather" if config.jit_compile else "tf_image",
                      context_scale=config.context_scale,
                      context_scales=config.context_scales or None, relation=config.relation,
                      relation_layers=config.relation_layers, global_patch=config.global_patch,
                      branches=config.branches,
                      aggregation=config.aggregation, fusion=config.fusion,
                      fc_units=config.fc_units, dropout=config.dropout,
                      regression_weight=config.regression_weight,
                      patch_weight=config.patch_weight, label_weight=config.label_weight,
                      **common)
    model(tf.zeros([1, config.image_size, config.image_size, 3]), training=False)
    return model


def build_schedule(config: TrainConfig) -> keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate per step (`--lr_schedule`).

    cosine: linear warm-up from 0 over `warmup_steps`, then cosine decay to 0 at
    `train_steps`. onecycle: linear warm-up from `learning_rate / div` to `learning_rate`
    at step `round(lr_peak_fraction * train_steps)`, then cosine decay to
    `learning_rate / (div * final_div)` at `train_steps` (PyTorch's OneCycleLR with a
    linear instead of a cosine rise, no momentum cycling).
    """
    cosine = keras.optimizers.schedules.CosineDecay
    if config.lr_schedule == "onecycle":
        peak_step = min(max(1, round(config.lr_peak_fraction * config.train_steps)),
                        config.train_steps - 1)
        start = config.learning_rate / config.onecycle_div_factor
        return cosine(start, config.train_steps - peak_step,
                      alpha=1.0 / (config.onecycle_div_factor * config.onecycle_final_div_factor),
                      warmup_target=config.learning_rate, warmup_steps=peak_step)
    decay_steps = config.train_steps - config.warmup_steps
    if config.warmup_steps:
        return cosine(0.0, decay_steps, warmup_target=config.learning_rate,
                      warmup_steps=config.warmup_steps)
    return cosine(config.learning_rate, decay_steps)


def build_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW, `build_schedule`'s rate, optional EMA."""
    common = dict(learning_rate=build_schedule(config), weight_decay=config.weight_decay or None,
                  global_clipnorm=config.global_clipnorm or None,
                  use_ema=config.ema_decay > 0, ema_momentum=config.ema_decay or 0.99)
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(momentum=config.momentum, nesterov=config.nesterov,
                                         **common)
    else:
        optimizer = keras.optimizers.AdamW(**common)
    # Decay shrinks weights toward 0; biases and normalization scales/offsets are exempt.
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer

