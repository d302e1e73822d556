"""Backbones: output levels/strides, parameter counts, padding, freezing, weight files."""

import math
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from scdnn_tf.modeling import resnext
from scdnn_tf.modeling.backbone_graph import SMALL_ARCH, ImagePreprocessing
from scdnn_tf.modeling.backbones import (
    BACKBONE_NAMES, build_backbone,
    build_resnext_classifier)
from scdnn_tf.modeling.weights_by_name import save_weights_by_name

STRIDES = {"C2": 4, "C3": 8, "C4": 16, "C5": 32}


def _images(batch, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, size, size, 3)).astype("float32")


def _trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("name", ["small", "resnet50", "resnext50_32x4d"])
def test_output_levels_shapes_and_strides(name):
    model = build_backbone(name)
    out = model(_images(2, 64))
    assert sorted(out) == ["C2", "C3", "C4", "C5"]
    planes, expansion = ((SMALL_ARCH["planes"], SMALL_ARCH["expansion"]) if name == "small"
                         else ((64, 128, 256, 512), 4))
    channels = {level: p * expansion for level, p in zip(sorted(STRIDES), planes)}
    for level, stride in STRIDES.items():
        assert tuple(out[level].shape) == (2, 64 // stride, 64 // stride, channels[level])
        assert np.all(np.isfinite(out[level]))


def test_odd_input_size_uses_ceil_like_torch():
    out = build_backbone("small", image_size=70)(_images(1, 70))
    for level, stride in STRIDES.items():
        assert out[level].shape[1] == math.ceil(70 / stride), level


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="resnext101_32x8d.*small") as info:
        build_backbone("resnet18")
    assert "'resnet18'" in str(info.value)


def test_imagenet_keyword_only_for_keras_resnet50():
    with pytest.raises(ValueError, match="convert_weights"):
        build_backbone("resnext50_32x4d", weights="imagenet")


@pytest.mark.parametrize("arch,expected", [("resnext50_32x4d", 25_028_904),
                                           ("resnext101_32x8d", 88_791_336),
                                           ("resnet50_tv", 25_557_032)])
def test_classifier_parameter_count_matches_torchvision(arch, expected):
    # torch counts parameters only (no BN running statistics) = our trainable weights.
    assert _trainable_count(build_resnext_classifier(arch, num_classes=1000)) == expected


def test_resnext_layer_names_follow_torchvision_keys():
    names = {layer.name for layer in build_backbone("resnext50_32x4d").layers}
    for key in ["conv1", "bn1", "layer1_0_conv2", "layer1_0_downsample_0",
                "layer1_0_downsample_1", "layer3_5_bn3", "layer4_2_conv3"]:
        assert key in names
    assert "layer4_3_conv1" not in names


def test_strided_conv_pads_symmetrically_like_torch():
    # Ones image 4x4, 3x3 all-ones kernel, stride 2, padding 1 on every side: the first
    # output sees a 2x2 corner (sum 4); Keras 'same' would pad only bottom/right (sum 9).
    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, resnext.conv_bn(inputs, 1, 3, 2, "c", "b", relu=False))
    model.get_layer("c").set_weights([np.ones((3, 3, 1, 1), "float32")])
    out = model(np.ones((1, 4, 4, 1), "float32"), training=False).numpy()[0, :, :, 0]
    np.testing.assert_allclose(out * np.sqrt(1 + resnext.BN_EPSILON), [[4, 6], [6, 9]],
                               rtol=1e-5)


def test_grouped_conv_backward_gives_finite_nonzero_gradients():
    model = build_backbone("resnext50_32x4d")
    conv = model.get_layer("layer1_0_conv2")
    assert conv.groups == 32 and tuple(conv.kernel.shape) == (3, 3, 4, 128)
    with tf.GradientTape() as tape:
        # Inference-mode BN: a 1x1 C5 of one image would normalize to a constant.
        loss = tf.reduce_mean(tf.square(model(_images(1, 32), training=False)["C5"]))
    grad = tape.gradient(loss, conv.kernel)
    assert np.all(np.isfinite(grad)) and float(tf.reduce_max(tf.abs(grad))) > 0


def test_preprocessing_modes_match_keras_applications():
    x = _images(1, 8)
    caffe = ImagePreprocessing("caffe")(x)
    np.testing.assert_allclose(caffe, keras.applications.resnet50.preprocess_input(x.copy()),
                               atol=1e-4)
    torch_mode = ImagePreprocessing("torch")(x).numpy()
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(torch_mode, (x / 255.0 - mean) / std, atol=1e-5)
    assert ImagePreprocessing.from_config(ImagePreprocessing("caffe").get_config()).mode == "caffe"
    with pytest.raises(ValueError, match="'bgr'"):
        ImagePreprocessing("bgr")


def test_backbone_config_round_trip_gives_same_outputs():
    model = build_backbone("small")
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    x = _images(1, 64)
    for level, value in model(x).items():
        np.testing.assert_allclose(clone(x)[level], value, atol=1e-5)


def test_freeze_bn_makes_training_use_moving_statistics():
    model = build_backbone("small", freeze_bn=True)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and not any(l.trainable for l in bns)
    assert _trainable_count(model) < _trainable_count(build_backbone("small"))
    x = _images(2, 32)
    np.testing.assert_allclose(model(x, training=True)["C5"], model(x, training=False)["C5"],
                               atol=1e-5)


@pytest.mark.parametrize("name,frozen,trainable", [
    ("small", ["conv1", "bn1", "layer1_0_conv1", "layer1_0_bn3"],
     ["layer2_0_conv1", "layer4_0_conv3"]),
    ("resnet50", ["conv1_conv", "conv2_block3_3_conv"],
     ["conv3_block1_1_conv", "conv5_block3_3_bn"]),
])
def test_freeze_stages(name, frozen, trainable):
    model = build_backbone(name, freeze_stages=2)
    for layer_name in frozen:
        assert not model.get_layer(layer_name).trainable, layer_name
    for layer_name in trainable:
        assert model.get_layer(layer_name).trainable, layer_name
    with pytest.raises(ValueError, match="freeze_stages.*7"):
        build_backbone(name, freeze_stages=7)


def test_weights_path_round_trip_and_extra_layers_ignored(tmp_path):
    classifier = build_resnext_classifier("small", num_classes=5)
    path = str(tmp_path / "small.weights.h5")
    save_weights_by_name(classifier, path)
    loaded = build_backbone("small", weights=path)  # the file's extra `fc` is skipped
    x = _images(1, 64)
    reference = keras.Model(classifier.input, classifier.get_layer("layer4_0_out").output)
    np.testing.assert_allclose(loaded(x)["C5"], reference(x), atol=1e-5)


def test_weights_path_errors_name_the_problem(tmp_path):
    path = str(tmp_path / "c5.weights.h5")
    save_weights_by_name(build_resnext_classifier("small", num_classes=5), path)
    with pytest.raises(ValueError, match=r"layer 'fc'.*\(256, 5\).*\(256, 3\)"):
        build_resnext_classifier("small", num_classes=3, weights=path)
    with pytest.raises(ValueError, match="layer 'conv1_conv' .* missing"):
        build_backbone("resnet50", weights=path)
    keras_file = str(tmp_path / "keras_native.weights.h5")
    build_backbone("small").save_weights(keras_file)
    with pytest.raises(ValueError, match="not a by-name weights file"):
        build_backbone("small", weights=keras_file)
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        build_backbone("small", weights=str(tmp_path / "nope.weights.h5"))


@pytest.fixture
def mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("name", ["small", "resnext50_32x4d"])
def test_mixed_precision_backbone(mixed_precision, name):
    model = build_backbone(name)
    out = model(_images(1, 64))
    assert model.get_layer("preprocess").compute_dtype == "float32"
    for level in STRIDES:
        assert out[level].dtype == tf.float16 and np.all(np.isfinite(out[level]))
    assert all(w.dtype == "float32" for w in model.weights)


@pytest.mark.slow
def test_resnext101_forward_448_batch2_cpu():
    model = build_backbone("resnext101_32x8d", image_size=448)
    start = time.time()
    out = model.predict(_images(2, 448), batch_size=2, verbose=0)
    print(f"resnext101_32x8d 448px batch 2 forward: {time.time() - start:.1f} s")
    assert tuple(out["C5"].shape) == (2, 14, 14, 2048)
    assert np.all(np.isfinite(out["C5"]))


def test_backbone_names_constant_is_complete():
    assert set(BACKBONE_NAMES) == {
        "resnext101_32x8d", "resnext50_32x4d", "resnet50", "resnet50_tv", "small",
        "mobilenet_v2", "mobilenet_v3_large", "efficientnetv2_b0", "efficientnetv2_b1",
        "efficientnetv2_b2", "efficientnetv2_b3", "efficientnetv2_s", "convnext_tiny",
        "convnext_small", "convnext_base", "resnet50v2", "resnet101v2"}
