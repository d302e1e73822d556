"""keras.applications backbones: taps and strides, stages, weights (ImageNet, files), and
parity with keras.applications on the real pretrained MobileNetV2 when it is available."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from scdnn_tf import SCDNN
from scdnn_tf.modeling import keras_backbones
from scdnn_tf.modeling.backbone_graph import ImagePreprocessing
from scdnn_tf.modeling.backbones import build_backbone
from scdnn_tf.modeling.weights_by_name import save_weights_by_name

from helpers import REPO_ROOT

STRIDES = {"C2": 4, "C3": 8, "C4": 16, "C5": 32}
SHARED_MOBILENET = os.path.join(os.path.dirname(REPO_ROOT), "shared", "weights",
                                "mobilenet_v2_imagenet")
SHARED_PHOTOS = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "coco_real",
                             "coco_mini", "train2017")
MOBILENET_FILE = os.path.join(SHARED_MOBILENET, "mobilenet_v2_1.0_no_top.weights.h5")
# The heaviest to build (10-40 s each on 2 busy CPU cores), and the family members of a
# fast one: only in the slow run.
SLOW = {"efficientnetv2_b1", "efficientnetv2_b2", "efficientnetv2_b3", "efficientnetv2_s",
        "convnext_small", "convnext_base", "resnet101v2"}


def _images(batch, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, size, size, 3)).astype("float32")


@pytest.fixture
def mobilenet_file():
    if not os.path.isfile(MOBILENET_FILE):
        pytest.skip(f"pretrained MobileNetV2 not found at {MOBILENET_FILE}")
    return MOBILENET_FILE


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
    for n in keras_backbones.SPECS])
def test_taps_have_the_stated_strides_at_two_sizes(name):
    model = build_backbone(name)
    for size in (64, 96):
        out = model(_images(1, size))
        assert sorted(out) == sorted(STRIDES)
        for level, stride in STRIDES.items():
            assert tuple(out[level].shape[1:3]) == (size // stride, size // stride), (level, size)
            assert np.all(np.isfinite(out[level]))
    # Taps are distinct layers, channels grow with depth.
    channels = [out[level].shape[-1] for level in sorted(STRIDES)]
    assert channels == sorted(channels) and len(set(channels)) == 4


@pytest.mark.parametrize("name", ["efficientnetv2_b0", "convnext_tiny"])
def test_variable_paths_are_stable_and_the_config_round_trips(name):
    model = build_backbone(name)
    first = [v.path for v in model.variables]
    keras.applications.ConvNeXtTiny(include_top=False, weights=None)  # bumps Keras' counters
    keras.applications.EfficientNetV2B0(include_top=False, weights=None)
    assert [v.path for v in build_backbone(name).variables] == first
    assert len(set(first)) == len(first)
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    x = _images(1, 64)
    np.testing.assert_allclose(clone(x)["C5"], model(x)["C5"], atol=1e-5)


@pytest.mark.parametrize("name,mode", [("efficientnetv2_b0", None), ("convnext_tiny", None),
                                       ("mobilenet_v3_large", None),
                                       ("mobilenet_v2", "tf"), ("resnet50v2", "tf")])
def test_preprocess_matches_keras_applications(name, mode):
    """Our float32 `preprocess` equals the application's own preprocessing."""
    x = _images(2, 32)
    ours = ImagePreprocessing(keras_backbones.SPECS[name].mode)(x).numpy()
    if mode:
        expected = keras.applications.imagenet_utils.preprocess_input(x.copy(), mode=mode)
    else:  # the application's include_preprocessing layers, run alone
        constructor = getattr(keras.applications, keras_backbones.SPECS[name].constructor)
        app = constructor(include_top=False, weights=None, input_shape=(32, 32, 3))
        layers = [l for l in app.layers[1:4]
                  if isinstance(l, (keras.layers.Rescaling, keras.layers.Normalization))]
        if not layers:  # ConvNeXt: one Normalization inside its prestem
            layers = [l for l in app.layers if "prestem" in l.name]
        expected = x
        for layer in layers:
            expected = layer(expected)
        expected = keras.ops.convert_to_numpy(expected)
        assert layers
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    np.testing.assert_allclose(ImagePreprocessing("scale128")(x).numpy(), x / 128.0 - 1.0,
                               atol=1e-6)


def test_mobilenet_v2_stages_and_freezing():
    model = build_backbone("mobilenet_v2", freeze_stages=2, freeze_bn=True)
    for frozen in ["Conv1", "bn_Conv1", "expanded_conv_depthwise", "block_2_project",
                   "block_3_expand"]:
        assert not model.get_layer(frozen).trainable, frozen
    for trainable in ["block_3_depthwise", "block_5_project", "block_16_project", "Conv_1"]:
        assert model.get_layer(trainable).trainable, trainable
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and not any(l.trainable for l in bns)
    x = _images(2, 64)
    np.testing.assert_allclose(model(x, training=True)["C5"], model(x, training=False)["C5"],
                               atol=1e-4)
    everything = build_backbone("mobilenet_v2", freeze_stages=5)
    assert not everything.trainable_weights


def test_convnext_stages_follow_its_downsampling():
    model = build_backbone("convnext_tiny", freeze_stages=1)
    assert not model.get_layer("convnext_tiny_stem").trainable
    assert model.get_layer("convnext_tiny_stage_0_block_0_depthwise_conv").trainable
    model = build_backbone("convnext_tiny", freeze_stages=2, freeze_bn=True)  # no BN: no-op
    assert not model.get_layer("convnext_tiny_stage_0_block_2_pointwise_conv_2").trainable
    assert model.get_layer("convnext_tiny_downsampling_block_0").trainable
    assert model.get_layer("convnext_tiny_stage_1_block_0_layernorm").trainable


def test_scdnn_config_round_trip_with_a_keras_backbone():
    model = SCDNN(num_classes=3, backbone="mobilenet_v2", image_size=64, fpn_channels=16,
                  anchor_sizes=(8, 16, 32, 64), num_patches=4, num_train_patches=4, fc_units=16)
    x = _images(1, 64)
    expected = model(x)["logits"]
    clone = SCDNN.from_config(model.get_config())
    clone(x)
    clone.set_weights(model.get_weights())
    assert clone.backbone.name == "mobilenet_v2"
    np.testing.assert_allclose(clone(x)["logits"], expected, atol=1e-5)


def test_imagenet_download_failure_names_the_file_and_the_alternative(monkeypatch):
    url = ("https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
           "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")

    def offline(fname=None, origin=None, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or "
                        "service not known")

    monkeypatch.setattr(keras.src.utils.file_utils, "get_file", offline)
    with pytest.raises(OSError) as info:
        build_backbone("mobilenet_v2", weights="imagenet")
    message = str(info.value)
    assert "\n" not in message and url in message and "--backbone_weights=PATH" in message
    assert os.path.join("models", os.path.basename(url)) in message


def test_weights_file_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        build_backbone("mobilenet_v2", weights=str(tmp_path / "nope.weights.h5"))
    text = tmp_path / "notes.weights.h5"
    text.write_text("not weights")
    with pytest.raises(ValueError, match=r"notes.weights.h5: not a weights file of "
                                         r"keras.applications.MobileNetV2"):
        build_backbone("mobilenet_v2", weights=str(text))
    other = str(tmp_path / "resnet50v2.weights.h5")
    keras.applications.ResNet50V2(include_top=False, weights=None,
                                  input_shape=(64, 64, 3)).save_weights(other)
    with pytest.raises(ValueError, match="MobileNetV2.*could not be loaded") as info:
        build_backbone("mobilenet_v2", weights=other)
    assert "\n" not in str(info.value)


def test_keras_file_and_by_name_file_load_the_same_weights(tmp_path):
    reference = keras.applications.MobileNetV2(include_top=False, weights=None,
                                               input_shape=(64, 64, 3))
    native = str(tmp_path / "native.weights.h5")
    reference.save_weights(native)
    from_native = build_backbone("mobilenet_v2", weights=native)
    by_name = str(tmp_path / "by_name.weights.h5")
    save_weights_by_name(from_native, by_name)
    from_by_name = build_backbone("mobilenet_v2", weights=by_name)
    x = _images(1, 64)
    expected = reference(keras.applications.mobilenet_v2.preprocess_input(x.copy()))
    np.testing.assert_allclose(from_native(x)["C5"], expected, atol=1e-4)
    np.testing.assert_allclose(from_by_name(x)["C5"], expected, atol=1e-4)


def _photo(image_id, size=224):
    image = Image.open(os.path.join(SHARED_PHOTOS, f"{image_id}.jpg")).convert("RGB")
    return np.asarray(image.resize((size, size), Image.BILINEAR), "float32")


SANITY = {"000000281789": "zebra", "000000054718": "Indian elephant",
          "000000358083": "Siamese cat", "000000121647": "pizza",
          "000000211891": "passenger car"}


def test_pretrained_mobilenet_v2_matches_keras_and_names_the_photos(mobilenet_file):
    if not os.path.isdir(SHARED_PHOTOS):
        pytest.skip(f"photos not found at {SHARED_PHOTOS}")
    images = np.stack([_photo(i) for i in SANITY])
    ours = build_backbone("mobilenet_v2", weights=mobilenet_file)
    pooled = tf.reduce_mean(ours(images)["C5"], axis=[1, 2]).numpy()
    keras_model = keras.applications.MobileNetV2(include_top=False, weights=mobilenet_file,
                                                 input_shape=(224, 224, 3))
    expected = keras.ops.convert_to_numpy(keras_model(
        keras.applications.mobilenet_v2.preprocess_input(images.copy()))).mean(axis=(1, 2))
    np.testing.assert_allclose(pooled, expected, atol=1e-5)
    head = np.load(os.path.join(SHARED_MOBILENET, "imagenet_head_1001.npz"))
    with open(os.path.join(SHARED_MOBILENET, "imagenet_labels_1001.txt")) as f:
        labels = f.read().splitlines()
    top1 = (pooled @ head["kernel"] + head["bias"]).argmax(axis=1)
    for (image_id, name), k in zip(SANITY.items(), top1):
        assert labels[k].startswith(name), (image_id, labels[k])


@pytest.mark.parametrize("name", ["mobilenet_v2", "convnext_tiny"])
def test_mixed_precision_keeps_preprocessing_and_weights_in_float32(name):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_backbone(name)
        out = model(_images(1, 64))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("preprocess").compute_dtype == "float32"
    for level in STRIDES:
        assert out[level].dtype == tf.float16 and np.all(np.isfinite(out[level]))
    assert all(w.dtype == "float32" for w in model.weights)
