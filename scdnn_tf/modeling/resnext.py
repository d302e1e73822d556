"""ResNet / ResNeXt bottleneck networks with torchvision's layer structure and names.

The layer names mirror torchvision's (and timm's) state-dict keys with dots replaced by
underscores -- ``conv1``, ``bn1``, ``layer1_0_conv1`` ... ``layer4_2_downsample_1`` -- so
ImageNet checkpoints convert by name (`data_tools/convert_weights.py`).

Numerical conventions follow torchvision ResNet v1.5 so converted weights give the same
features as in PyTorch:

* the stride of a bottleneck sits on its 3x3 conv (v1.5), not on the first 1x1;
* every padded conv uses explicit symmetric `ZeroPadding2D` + a 'valid' conv, because
  Keras 'same' padding is asymmetric (bottom/right only) for stride 2;
* the stem max-pool pads with zeros: its input is post-ReLU (>= 0), so this equals
  torch's -inf padding;
* BatchNorm epsilon 1e-5 and momentum 0.9 (torch's momentum=0.1 convention), computed
  by the fused kernel (`fused_batch_norm.py`).

All layers take the global dtype policy (mixed precision works unchanged).
"""

import keras

from scdnn_tf.modeling.fused_batch_norm import FusedBatchNormalization

# Stage plans: blocks per stage.
RESNET50_LAYERS = (3, 4, 6, 3)
RESNET101_LAYERS = (3, 4, 23, 3)

# Torchvision's BatchNorm2d defaults.
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def conv_bn(x, filters, kernel_size, strides, conv_name, bn_name, groups=1, relu=True):
    """Conv (no bias, torch-style symmetric padding) -> BatchNorm -> optional ReLU.

    Args:
        x: Symbolic tensor [B, H, W, C_in].
        filters: Output channels.
        kernel_size: Odd int; padding is kernel_size // 2 on every side, as in torch.
        strides: 1 or 2.
        conv_name: Name of the conv layer (a torchvision key with '_' for '.').
        bn_name: Name of the BatchNormalization layer.
        groups: Grouped convolution (ResNeXt cardinality).
        relu: Apply ReLU after the BatchNorm.

    Returns:
        Tensor [B, ceil(H / strides), ceil(W / strides), filters] (for kernel_size 3/7;
        the 1x1 stride-2 downsample gives the same size as torch's floor rule).
    """
    pad = kernel_size // 2
    if pad:
        x = keras.layers.ZeroPadding2D(pad, name=f"{conv_name}_pad")(x)
    x = keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="valid", groups=groups,
        use_bias=False, kernel_initializer="he_normal", name=conv_name)(x)
    x = FusedBatchNormalization(
        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=bn_name)(x)
    if relu:
        x = keras.layers.ReLU(name=f"{bn_name}_relu")(x)
    return x


def bottleneck(x, planes, strides, groups, width_per_group, expansion, prefix):
    """One torchvision `Bottleneck` block.

    Args:
        x: Tensor [B, H, W, C_in].
        planes: Stage "planes" (64, 128, 256, 512 in ResNet-50).
        strides: Stride of the 3x3 conv (and of the projection shortcut).
        groups: Cardinality of the 3x3 conv.
        width_per_group: ResNeXt base width (64 for plain ResNet).
        expansion: Output channels = planes * expansion (4 in torchvision).
        prefix: Block name prefix, e.g. ``layer2_0``.

    Returns:
        Tensor [B, H / strides, W / strides, planes * expansion].
    """
    width = int(planes * (width_per_group / 64.0)) * groups
    out_channels = planes * expansion
    shortcut = x
    if strides != 1 or x.shape[-1] != out_channels:
        shortcut = conv_bn(x, out_channels, 1, strides, f"{prefix}_downsample_0",
                           f"{prefix}_downsample_1", relu=False)
    y = conv_bn(x, width, 1, 1, f"{prefix}_conv1", f"{prefix}_bn1")
    y = conv_bn(y, width, 3, strides, f"{prefix}_conv2", f"{prefix}_bn2", groups=groups)
    y = conv_bn(y, out_channels, 1, 1, f"{prefix}_conv3", f"{prefix}_bn3", relu=False)
    y = keras.layers.Add(name=f"{prefix}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{prefix}_out")(y)


def resnet_features(x, layers, groups=1, width_per_group=64, planes=(64, 128, 256, 512),
                    stem_width=64, expansion=4):
    """ResNet / ResNeXt body (stem + 4 stages) on already-normalized images.

    Args:
        x: Normalized image tensor [B, S, S, 3].
        layers: Blocks per stage, e.g. (3, 4, 6, 3).
        groups: Cardinality (32 for ResNeXt).
        width_per_group: Base width per group (4 for 32x4d, 8 for 32x8d, 64 for ResNet).
        planes: Per-stage planes.
        stem_width: Channels of the 7x7 stride-2 stem conv.
        expansion: Bottleneck expansion factor.

    Returns:
        Dict ``{"C2","C3","C4","C5"}`` of tensors with strides 4, 8, 16, 32 and
        ``planes[i] * expansion`` channels.
    """
    if len(layers) != 4 or len(planes) != 4 or min(layers) < 1:
        raise ValueError(f"need 4 stages of >= 1 block, got layers={layers}, planes={planes}")
    x = conv_bn(x, stem_width, 7, 2, "conv1", "bn1")
    x = keras.layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="maxpool")(x)
    features = {}
    for stage, (num_blocks, stage_planes) in enumerate(zip(layers, planes)):
        for block in range(num_blocks):
            strides = 2 if (block == 0 and stage > 0) else 1
            x = bottleneck(x, stage_planes, strides, groups, width_per_group, expansion,
                           prefix=f"layer{stage + 1}_{block}")
        features[f"C{stage + 2}"] = x
    return features


# name -> keyword arguments of `resnet_features`. "resnet50_tv" is torchvision's ResNet-50
# (v1.5), for converted torch weights; keras.applications' "resnet50" is v1 (stride on the
# first 1x1) and cannot take them exactly.
RESNEXT_ARCHS = {
    "resnet50_tv": dict(layers=RESNET50_LAYERS),
    "resnext50_32x4d": dict(layers=RESNET50_LAYERS, groups=32, width_per_group=4),
    "resnext101_32x8d": dict(layers=RESNET101_LAYERS, groups=32, width_per_group=8),
}


def stage_of_layer(layer_name):
    """Stage index of a layer in this naming scheme: stem = 0, layerK_* = K, else None."""
    if layer_name.startswith(("conv1", "bn1", "maxpool")):
        return 0
    if layer_name.startswith("layer") and layer_name[5:6].isdigit():
        return int(layer_name[5])
    return None
