"""keras.applications backbones by name: the network, its C2..C5 taps and its stages.

Each entry of `SPECS` names a keras.applications constructor (built with
``include_top=False`` and, where it has one, ``include_preprocessing=False``: the
``preprocess`` layer in front of it does that work in float32), the input normalization
its ImageNet weights expect, the last layer of its stem and the four layers tapped for
C2..C5 (strides 4, 8, 16, 32). A tap is a layer name (its output) or ``<name`` (the input
of that layer, where the producing layer has no stable name), or None for the network's
output.

Stages (for ``freeze_stages``): stage 0 is the stem (the layers the stem's last layer
depends on); stage k = 1..4 holds the layers the C(k+1) tap depends on that no earlier
stage holds. A block that downsamples belongs to the stage whose output it computes.

The network is cloned once after it is built, so that every variable has a name that does
not depend on how many layers the process built before (checkpoints and `--init_from`
match variables by name): BatchNormalization becomes `FusedBatchNormalization`, ConvNeXt's
layer scale names its weight ``gamma``, and a dropout layer (EfficientNetV2's stochastic
depth) names its seed generator after itself.
"""

import dataclasses
import os
import re
import warnings

import keras

from scdnn_tf.modeling.fused_batch_norm import FusedBatchNormalization


@dataclasses.dataclass(frozen=True)
class AppSpec:
    """One keras.applications backbone (see the module docstring)."""
    constructor: str
    mode: str
    stem: str
    taps: tuple
    has_preprocessing_arg: bool = True


def _efficientnetv2(constructor, last_block2, mode="torch"):
    return AppSpec(constructor, mode, "stem_activation",
                   (last_block2, "block4a_expand_activation", "block6a_expand_activation",
                    "top_activation"))


def _convnext(size, third_stage_depth):
    prefix = f"convnext_{size}"
    depths = (3, 3, third_stage_depth, 3)
    return AppSpec(f"ConvNeXt{size.capitalize()}", "torch", f"{prefix}_stem",
                   tuple(f"{prefix}_stage_{i}_block_{d - 1}_identity"
                         for i, d in enumerate(depths)))


def _resnet_v2(constructor, conv4_blocks):
    return AppSpec(constructor, "tf", "pool1_pool",
                   ("conv2_block3_preact_relu", "conv3_block4_preact_relu",
                    f"conv4_block{conv4_blocks}_preact_relu", "post_relu"),
                   has_preprocessing_arg=False)


SPECS = {
    "mobilenet_v2": AppSpec(
        "MobileNetV2", "tf", "Conv1_relu",
        ("block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu", "out_relu"),
        has_preprocessing_arg=False),
    "mobilenet_v3_large": AppSpec(
        "MobileNetV3Large", "tf", "conv_bn",
        ("<expanded_conv_3_depthwise_pad", "<expanded_conv_6_depthwise_pad",
         "<expanded_conv_12_depthwise_pad", None)),
    "efficientnetv2_b0": _efficientnetv2("EfficientNetV2B0", "block2b_add"),
    "efficientnetv2_b1": _efficientnetv2("EfficientNetV2B1", "block2c_add"),
    "efficientnetv2_b2": _efficientnetv2("EfficientNetV2B2", "block2c_add"),
    "efficientnetv2_b3": _efficientnetv2("EfficientNetV2B3", "block2c_add"),
    "efficientnetv2_s": _efficientnetv2("EfficientNetV2S", "block2d_add", mode="scale128"),
    "convnext_tiny": _convnext("tiny", 9),
    "convnext_small": _convnext("small", 27),
    "convnext_base": _convnext("base", 27),
    "resnet50v2": _resnet_v2("ResNet50V2", 6),
    "resnet101v2": _resnet_v2("ResNet101V2", 23),
}


@keras.saving.register_keras_serializable(package="scdnn_tf")
class LayerScale(keras.layers.Layer):
    """ConvNeXt's per-channel layer scale (x * gamma) with a named weight ``gamma``."""

    def __init__(self, init_values, projection_dim, **kwargs):
        super().__init__(**kwargs)
        self.init_values = init_values
        self.projection_dim = projection_dim

    def build(self, _):
        self.gamma = self.add_weight(
            shape=(self.projection_dim,), name="gamma",
            initializer=keras.initializers.Constant(self.init_values))

    def call(self, x):
        return x * keras.ops.cast(self.gamma, x.dtype)

    def get_config(self):
        return {**super().get_config(), "init_values": self.init_values,
                "projection_dim": self.projection_dim}


@keras.saving.register_keras_serializable(package="scdnn_tf")
class Dropout(keras.layers.Dropout):
    """`keras.layers.Dropout` whose seed generator is named ``<layer name>_seed``."""

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        keras.layers.Layer.__init__(self, **kwargs)  # Dropout's own would auto-name the seed
        if not 0 <= rate <= 1:
            raise ValueError(f"Dropout rate must be in [0, 1], got {rate!r}")
        self.rate = rate
        self.seed = seed
        self.noise_shape = self._validate_noise_shape(noise_shape)
        if rate > 0:
            self.seed_generator = keras.random.SeedGenerator(seed, name=f"{self.name}_seed")
        self.supports_masking = True
        self._build_at_init()


def _stable_layer(layer):
    config = layer.get_config()
    if type(layer) is keras.layers.BatchNormalization:
        return FusedBatchNormalization.from_config(config)
    if type(layer).__name__ == "LayerScale":
        return LayerScale.from_config(config)
    if type(layer) is keras.layers.Dropout:
        return Dropout.from_config(config)
    return layer.__class__.from_config(config)


def _weights_error(name, weights, error):
    """One line for a keras.applications weights failure (download or file)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = " ".join(lines[:2]) or type(error).__name__
    constructor = SPECS[name].constructor
    if weights == "imagenet":
        url = re.search(r"https?://\S+?(?=[:\s]|$)", detail)
        cached = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")),
                              "models", os.path.basename(url.group(0)) if url else "")
        return OSError(
            f"--backbone_weights=imagenet: Keras could not fetch the ImageNet weights of "
            f"{name} ({detail}); put that file at {cached} or pass --backbone_weights=PATH "
            f"to a local .weights.h5 of keras.applications.{constructor}(include_top=False)")
    return ValueError(f"{weights}: not a weights file of keras.applications.{constructor}"
                      f"(include_top=False) ({detail})")


def _ancestors(tensor):
    """Names of the layers `tensor` depends on (its own producer included)."""
    names, seen, stack = set(), set(), [tensor]
    while stack:
        operation, node_index, _ = stack.pop()._keras_history
        if (id(operation), node_index) in seen:
            continue
        seen.add((id(operation), node_index))
        names.add(operation.name)
        stack.extend(operation._inbound_nodes[node_index].input_tensors)
    return names


def application_graph(name, inputs, preprocessed, weights=None):
    """Builds a keras.applications backbone on `preprocessed` = preprocess(`inputs`).

    Args:
        name: A key of `SPECS`.
        inputs: The keras.Input of the images.
        preprocessed: `inputs` through the backbone's ``preprocess`` layer.
        weights: None (random init), "imagenet" (downloaded and cached by Keras) or the
            path of a Keras weights file of the keras.applications model
            (``include_top=False``), passed to its constructor.

    Returns:
        (inputs, features, stage_fn) as `backbone_graph.backbone_graph` (``inputs`` is the
        clone's input layer).

    Raises:
        OSError: the ImageNet download failed (names the file and the PATH alternative).
        ValueError: `weights` is a file that does not fit the network.
    """
    spec = SPECS[name]
    kwargs = dict(include_top=False, weights=weights, input_tensor=preprocessed)
    if spec.has_preprocessing_arg:
        kwargs["include_preprocessing"] = False
    try:
        with warnings.catch_warnings():  # per-layer noise of a failed load; default size
            warnings.simplefilter("ignore", UserWarning)
            base = getattr(keras.applications, spec.constructor)(**kwargs)
    except Exception as e:  # noqa: BLE001 (Keras raises a bare Exception for a failed fetch)
        if weights is None:
            raise
        raise _weights_error(name, weights, e) from None
    assert base.inputs[0] is inputs, "input_tensor must keep the backbone's input"
    model = keras.models.clone_model(base, clone_function=_stable_layer)
    model.set_weights(base.get_weights())

    def tap(layer_name):
        if layer_name is None:
            return model.output
        if layer_name.startswith("<"):
            return model.get_layer(layer_name[1:]).input
        return model.get_layer(layer_name).output

    features = {f"C{k}": tap(t) for k, t in zip(range(2, 6), spec.taps)}
    stage_of = {}
    for stage, tensor in enumerate([model.get_layer(spec.stem).output, *features.values()]):
        for layer_name in _ancestors(tensor):
            stage_of.setdefault(layer_name, stage)
    return model.inputs[0], features, stage_of.get
