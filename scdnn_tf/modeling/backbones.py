"""Backbones: images [B,S,S,3] float32 RGB in [0,255] -> {"C2","C3","C4","C5"} (strides 4..32).

Each backbone normalizes its input inside the model (layer ``preprocess``) so exported
models take raw pixels:

* ``resnext50_32x4d``, ``resnext101_32x8d``, ``resnet50_tv`` (own implementation,
  `resnext.py`, torchvision layout for converted torchvision/timm weights) and ``small``:
  RGB / 255, then ImageNet mean / std ("torch").
* ``resnet50`` (keras.applications, its own ImageNet weights): RGB -> BGR minus the
  ImageNet mean ("caffe"), i.e. ``keras.applications.resnet50.preprocess_input``.

``weights`` is None (random init), a path to a by-name ``.weights.h5`` file (written by
`weights_by_name.save_weights_by_name`, e.g. by data_tools/convert_weights.py),
``"hf-hub:timm/<model>.<tag>[@revision]"`` (a timm checkpoint downloaded, converted and
cached by `hub_weights.py`), or ``"imagenet"`` for ``resnet50`` only (downloaded by Keras
on a machine with internet).
"""

import keras

from scdnn_tf.modeling import hub_weights, resnext
from scdnn_tf.modeling.weights_by_name import load_weights_by_name

LEVELS = ("C2", "C3", "C4", "C5")

# keras.applications.ResNet50 layers giving C2..C5.
_KERAS_RESNET50_OUTPUTS = {
    "C2": "conv2_block3_out",
    "C3": "conv3_block4_out",
    "C4": "conv4_block6_out",
    "C5": "conv5_block3_out",
}

# The `small` CPU backbone: 1 bottleneck per stage (cheap to trace and run on 2 cores),
# output channels 32/64/128/256.
SMALL_ARCH = dict(layers=(1, 1, 1, 1), groups=1, width_per_group=64,
                  planes=(16, 32, 64, 128), stem_width=16, expansion=2)

BACKBONE_NAMES = ("resnext101_32x8d", "resnext50_32x4d", "resnet50", "resnet50_tv", "small")


@keras.saving.register_keras_serializable(package="scdnn_tf")
class ImagePreprocessing(keras.layers.Layer):
    """Maps RGB pixels in [0, 255] to a backbone's expected input (keras imagenet_utils).

    Args:
        mode: "torch" (x/255, then ImageNet mean/std) or "caffe" (RGB->BGR, minus the
            ImageNet mean in 0..255 units).

    Runs in float32 whatever the global policy: the next conv casts to its compute dtype.
    """

    MODES = ("torch", "caffe")

    def __init__(self, mode="torch", name="preprocess", **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(name=name, **kwargs)
        if mode not in self.MODES:
            raise ValueError(f"ImagePreprocessing mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode

    def call(self, images):
        images = keras.ops.cast(images, "float32")
        return keras.applications.imagenet_utils.preprocess_input(
            images, data_format="channels_last", mode=self.mode)

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)  # always float32, forced in __init__
        config["mode"] = self.mode
        return config


def _keras_resnet50_stage(layer_name):
    """Stage of a keras.applications ResNet50 layer: conv1_*/pool1_* = 0, convK_* = K-1."""
    if layer_name.startswith(("conv1_", "pool1_")):
        return 0
    if layer_name.startswith("conv") and layer_name[4:5].isdigit() and layer_name[5:6] == "_":
        return int(layer_name[4]) - 1
    return None


def _check_name(name):
    if name not in BACKBONE_NAMES:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONE_NAMES)}")


def backbone_graph(name, image_size=None, keras_weights=None):
    """Builds a backbone's functional graph.

    Args:
        name: One of `BACKBONE_NAMES`.
        image_size: Static input side S, or None for any size.
        keras_weights: Only for ``resnet50``: passed to keras.applications (None or
            "imagenet").

    Returns:
        (inputs, features, stage_fn): the keras.Input [B,S,S,3], the dict of C2..C5
        tensors, and a function layer_name -> stage index (stem = 0) or None.
    """
    _check_name(name)
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    if name == "resnet50":
        x = ImagePreprocessing("caffe")(inputs)
        # input_tensor keeps one flat model whose input is `inputs` (through preprocess).
        base = keras.applications.ResNet50(
            include_top=False, weights=keras_weights, input_tensor=x)
        features = {k: base.get_layer(v).output for k, v in _KERAS_RESNET50_OUTPUTS.items()}
        return inputs, features, _keras_resnet50_stage
    x = ImagePreprocessing("torch")(inputs)
    arch = SMALL_ARCH if name == "small" else resnext.RESNEXT_ARCHS[name]
    return inputs, resnext.resnet_features(x, **arch), resnext.stage_of_layer


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
        name: "resnext101_32x8d", "resnext50_32x4d", "resnet50" or "small".
        weights: None (random), a by-name ``.weights.h5`` path, an ``hf-hub:`` timm
            checkpoint name, or "imagenet" (resnet50).
        freeze_bn: BatchNorm layers in inference mode and non-trainable.
        freeze_stages: Freeze stem (0) .. stage k-1.
        image_size: Static input side S (None = any size).

    Returns:
        keras.Model named ``name``: images [B,S,S,3] float32 in [0,255] ->
        {"C2": [B,S/4,S/4,c2], ..., "C5": [B,S/32,S/32,c5]} (ceil for odd sizes).
    """
    _check_name(name)
    if weights == "imagenet" and name != "resnet50":
        raise ValueError(
            f"weights='imagenet' is only downloadable for resnet50; for {name!r} convert a "
            f"timm/torchvision checkpoint with data_tools.convert_weights (README: ImageNet "
            f"weights) and pass the .weights.h5 path, or pass hf-hub:timm/<name> (e.g. "
            f"hf-hub:timm/resnext101_32x8d.tv_in1k)")
    if hub_weights.is_hub_spec(weights):
        # Resolved (downloaded/converted) before the graph is built, so a failure is fast.
        weights = hub_weights.resolve_hub_weights(weights, name)
    keras_weights = "imagenet" if weights == "imagenet" else None
    inputs, features, stage_fn = backbone_graph(name, image_size, keras_weights)
    model = keras.Model(inputs, features, name=name)
    if weights is not None and weights != "imagenet":
        load_weights_by_name(model, weights)
    apply_freezing(model, stage_fn, freeze_bn, freeze_stages)
    return model


def backbone_channels(name):
    """Channels of C2..C5 for a backbone name, as a dict (no model is built)."""
    _check_name(name)
    if name == "small":
        planes, expansion = SMALL_ARCH["planes"], SMALL_ARCH["expansion"]
    else:
        planes, expansion = (64, 128, 256, 512), 4
    return {level: p * expansion for level, p in zip(LEVELS, planes)}


def build_resnext_classifier(arch, num_classes=1000, weights=None, image_size=None):
    """Backbone + global average pooling + dense ``fc``: the ImageNet classifier layout.

    Used for parameter-count checks and for weight-conversion parity (pooled logits).

    Args:
        arch: A backbone name (normally "resnext50_32x4d" / "resnext101_32x8d").
        num_classes: Classifier outputs.
        weights: Optional by-name weights file (may hold ``fc`` too).
        image_size: Static input side or None.

    Returns:
        keras.Model: images [B,S,S,3] in [0,255] -> logits [B, num_classes] (float32).
    """
    if arch == "resnet50":
        raise ValueError("build_resnext_classifier: use keras.applications.ResNet50 for resnet50")
    inputs, features, _ = backbone_graph(arch, image_size)
    pooled = keras.layers.GlobalAveragePooling2D(name="avgpool")(features["C5"])
    logits = keras.layers.Dense(num_classes, dtype="float32", name="fc")(pooled)
    model = keras.Model(inputs, logits, name=f"{arch}_classifier")
    if weights is not None:
        load_weights_by_name(model, weights)
    return model
