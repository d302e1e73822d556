"""Backbone graphs: the networks returning C2..C5, and the ImageNet classifier layout.

`backbone_graph(name)` builds the feature graph of one of `BACKBONE_NAMES` (the image
normalization inside it); `build_resnext_classifier` adds pooling and the `fc` layer of
the ImageNet checkpoints (weight conversion and parameter-count checks). Loading weights
and freezing are `backbones.build_backbone`'s job.
"""

import keras

from scdnn_tf.modeling import keras_backbones, resnext
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

BACKBONE_NAMES = ("resnext101_32x8d", "resnext50_32x4d", "resnet50", "resnet50_tv", "small",
                  *keras_backbones.SPECS)
# Backbones whose ImageNet weights keras.applications downloads (weights="imagenet").
KERAS_IMAGENET_NAMES = ("resnet50", *keras_backbones.SPECS)


@keras.saving.register_keras_serializable(package="scdnn_tf")
class ImagePreprocessing(keras.layers.Layer):
    """Maps RGB pixels in [0, 255] to a backbone's expected input (keras imagenet_utils).

    Args:
        mode: "torch" (x/255, then ImageNet mean/std), "caffe" (RGB->BGR, minus the
            ImageNet mean in 0..255 units), "tf" (x/127.5 - 1) or "scale128" (x/128 - 1,
            EfficientNetV2-S).

    Runs in float32 whatever the global policy: the next conv casts to its compute dtype.
    """

    MODES = ("torch", "caffe", "tf", "scale128")

    def __init__(self, mode="torch", name="preprocess", **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(name=name, **kwargs)
        if mode not in self.MODES:
            raise ValueError(f"ImagePreprocessing mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode

    def call(self, images):
        images = keras.ops.cast(images, "float32")
        if self.mode == "scale128":
            return images / 128.0 - 1.0
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


def check_backbone_name(name):
    if name not in BACKBONE_NAMES:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONE_NAMES)}")


def backbone_graph(name, image_size=None, keras_weights=None):
    """Builds a backbone's functional graph.

    Args:
        name: One of `BACKBONE_NAMES`.
        image_size: Static input side S, or None for any size.
        keras_weights: Only for keras.applications backbones: passed to their
            constructor (None, "imagenet" or a Keras weights file path).

    Returns:
        (inputs, features, stage_fn): the keras.Input [B,S,S,3], the dict of C2..C5
        tensors, and a function layer_name -> stage index (stem = 0) or None.
    """
    check_backbone_name(name)
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    if name == "resnet50":
        x = ImagePreprocessing("caffe")(inputs)
        # input_tensor keeps one flat model whose input is `inputs` (through preprocess).
        base = keras.applications.ResNet50(
            include_top=False, weights=keras_weights, input_tensor=x)
        features = {k: base.get_layer(v).output for k, v in _KERAS_RESNET50_OUTPUTS.items()}
        return inputs, features, _keras_resnet50_stage
    if name in keras_backbones.SPECS:
        x = ImagePreprocessing(keras_backbones.SPECS[name].mode)(inputs)
        return keras_backbones.application_graph(name, inputs, x, keras_weights)
    x = ImagePreprocessing("torch")(inputs)
    arch = SMALL_ARCH if name == "small" else resnext.RESNEXT_ARCHS[name]
    return inputs, resnext.resnet_features(x, **arch), resnext.stage_of_layer


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
    if arch in KERAS_IMAGENET_NAMES:
        raise ValueError(f"build_resnext_classifier: use keras.applications for {arch}")
    inputs, features, _ = backbone_graph(arch, image_size)
    pooled = keras.layers.GlobalAveragePooling2D(name="avgpool")(features["C5"])
    logits = keras.layers.Dense(num_classes, dtype="float32", name="fc")(pooled)
    model = keras.Model(inputs, logits, name=f"{arch}_classifier")
    if weights is not None:
        load_weights_by_name(model, weights)
    return model
