"""Backbones: images [B,S,S,3] float32 RGB in [0,255] -> {"C2","C3","C4","C5"} (strides 4..32).

Each backbone normalizes its input inside the model (layer ``preprocess``) so exported
models take raw pixels:

* ``resnext50_32x4d``, ``resnext101_32x8d``, ``resnet50_tv`` (own implementation,
  `resnext.py`, torchvision layout for converted torchvision/timm weights) and ``small``:
  RGB / 255, then ImageNet mean / std ("torch").
* ``resnet50`` (keras.applications, its own ImageNet weights): RGB -> BGR minus the
  ImageNet mean ("caffe"), i.e. ``keras.applications.resnet50.preprocess_input``.
* ``mobilenet_v2``, ``mobilenet_v3_large``, ``efficientnetv2_*``, ``convnext_*``,
  ``resnet50v2``, ``resnet101v2`` (keras.applications, `keras_backbones.py`): the
  normalization their ImageNet weights were trained with ([-1, 1], or ImageNet mean/std).

``weights`` is None (random init), a path to a by-name ``.weights.h5`` file (written by
`weights_by_name.save_weights_by_name`, e.g. by data_tools/convert_weights.py),
``"hf-hub:timm/<model>.<tag>[@revision]"`` (a timm checkpoint downloaded, converted and
cached by `hub_weights.py`), ``"imagenet"`` for the keras.applications backbones
(downloaded and cached by Keras on a machine with internet), or for those the path of a
Keras weights file of the application built with ``include_top=False``.
"""

import keras

from scdnn_tf.modeling import hub_weights, keras_backbones
from scdnn_tf.modeling.fused_batch_norm import fuse_batch_norms
from scdnn_tf.modeling.backbone_graph import (  # noqa: F401 (part of this module's API)
    BACKBONE_NAMES, KERAS_IMAGENET_NAMES, LEVELS, backbone_graph, build_resnext_classifier,
    check_backbone_name)
from scdnn_tf.modeling.weights_by_name import is_by_name_file, load_weights_by_name

def apply_freezing(model, stage_fn, freeze_bn=False, freeze_stages=0):
    """Freezes BatchNorm layers and/or the first stages of a backbone, in place.

    Args:
        model: Backbone keras.Model (flat functional).
        stage_fn: layer_name -> stage index or None (see `backbone_graph`).
        freeze_bn: Make every BatchNormalization non-trainable, which in Keras 3 also
            makes it use its moving statistics (inference mode) in training.
        freeze_stages: Freeze stages 0..freeze_stages-1 (0 = stem, 1..4 = C2..C5 stages).
    """
    if not isinstance(freeze_stages, int) or not 0 <= freeze_stages <= 5:
        raise ValueError(f"freeze_stages must be an int in [0, 5], got {freeze_stages!r}")
    for layer in model.layers:
        stage = stage_fn(layer.name)
        if stage is not None and stage < freeze_stages:
            layer.trainable = False
        if freeze_bn and isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def build_backbone(name, weights=None, freeze_bn=False, freeze_stages=0, image_size=None):
    """Builds a backbone model.

    Args:
        name: One of `BACKBONE_NAMES`.
        weights: None (random), a by-name ``.weights.h5`` path, an ``hf-hub:`` timm
            checkpoint name, "imagenet" (keras.applications backbones, see
            `KERAS_IMAGENET_NAMES`) or, for a keras.applications backbone, the path of a
            Keras weights file of that application with ``include_top=False``.
        freeze_bn: BatchNorm layers in inference mode and non-trainable.
        freeze_stages: Freeze stem (0) .. stage k-1.
        image_size: Static input side S (None = any size).

    Returns:
        keras.Model named ``name``: images [B,S,S,3] float32 in [0,255] ->
        {"C2": [B,S/4,S/4,c2], ..., "C5": [B,S/32,S/32,c5]} (ceil for odd sizes).
    """
    check_backbone_name(name)
    if weights == "imagenet" and name not in KERAS_IMAGENET_NAMES:
        raise ValueError(
            f"weights='imagenet' is only downloadable for {', '.join(KERAS_IMAGENET_NAMES)}; "
            f"for {name!r} convert a "
            f"timm/torchvision checkpoint with scdnn-convert-weights (python -m "
            f"data_tools.convert_weights; docs/weights.md) "
            f"and pass the .weights.h5 path, or pass hf-hub:timm/<name> (e.g. "
            f"hf-hub:timm/resnext101_32x8d.tv_in1k)")
    if hub_weights.is_hub_spec(weights):
        # Resolved (downloaded/converted) before the graph is built, so a failure is fast.
        weights = hub_weights.resolve_hub_weights(weights, name)
    keras_weights = None
    if weights == "imagenet":
        keras_weights = weights
    elif weights is not None and name in keras_backbones.SPECS and not is_by_name_file(weights):
        keras_weights = weights  # a Keras weights file of the application
    inputs, features, stage_fn = backbone_graph(name, image_size, keras_weights)
    model = keras.Model(inputs, features, name=name)
    if name == "resnet50":
        # keras.applications builds Keras' unfused BatchNormalization.
        model = fuse_batch_norms(model)
    if weights is not None and keras_weights is None:
        load_weights_by_name(model, weights)
    apply_freezing(model, stage_fn, freeze_bn, freeze_stages)
    return model
