"""SCDNN's options beyond the paper: relation module, adaptive context, global patch."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from scdnn_tf import SCDNN
from scdnn_tf.modeling.patch_generator import context_patches

NUM_CLASSES = 3
SIZE = 64
TINY = dict(num_classes=NUM_CLASSES, backbone="small", image_size=SIZE, fpn_channels=16,
            anchor_sizes=(8, 16, 32, 64), num_patches=6, num_train_patches=8, fc_units=32)
SCALES = (1.5, 2.5, 4.0)
OPTIONS = {"relation": dict(relation="attention"), "context_scales": dict(context_scales=SCALES),
           "global_patch": dict(global_patch=True),
           "all": dict(relation="attention", relation_layers=2, context_scales=SCALES,
                       global_patch=True)}


def _images(seed=1, batch=2):
    return tf.random.stateless_uniform([batch, SIZE, SIZE, 3], seed=[seed, 0], maxval=255.0)


def _batch():
    return {"image": _images(), "boxes": tf.constant([[[0.1, 0.1, 0.5, 0.6], [0.0] * 4]] * 2),
            "box_classes": tf.constant([[1, -1], [2, -1]]),
            "labels": tf.constant([[0, 1, 0], [0, 0, 1]], tf.float32)}


@pytest.mark.parametrize("backend", ["tf_image", "gather"])
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_outputs_and_config_round_trip(option, backend):
    model = SCDNN(**TINY, **OPTIONS[option], crop_backend=backend)
    x = _images()
    out = model(x)
    assert out["logits"].shape == (2, NUM_CLASSES)
    assert out["patch_boxes"].shape == (2, 6, 4)  # the global patch is not reported
    multi = "context_scales" in OPTIONS[option]
    assert ("context_weights" in out) == multi and ("patch_context_scale" in out) == multi
    if multi:
        w = out["context_weights"].numpy()
        assert w.shape == (2, 6, 3)
        np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
        scale = out["patch_context_scale"].numpy()
        assert (scale >= 1.5 - 1e-5).all() and (scale <= 4.0 + 1e-5).all()
        np.testing.assert_allclose(out["context_boxes"].numpy(),
                                   context_patches(out["patch_boxes"], scale).numpy(), atol=1e-6)
    train_out = model(_batch(), training=True)
    losses = model.compute_losses(_batch(), train_out)
    assert np.isfinite(losses["loss"].numpy()).all()
    clone = SCDNN.from_config(model.get_config())
    clone(x)
    assert clone.get_config() == model.get_config()
    clone.set_weights(model.get_weights())
    # (the training call above moved the BatchNorm statistics: compare with the model now)
    np.testing.assert_allclose(clone(x)["logits"].numpy(), model(x)["logits"].numpy(),
                               atol=1e-5)


def test_defaults_are_the_paper_model():
    plain = SCDNN(**TINY)
    plain(_images())
    config = plain.get_config()
    assert (config["relation"], config["context_scales"], config["global_patch"]) == (
        "none", [2.0], False)
    names = {part for w in plain.weights for part in w.path.split("/")}
    assert not names & {"object_relation", "context_relation", "context_gate"}


def test_option_weights_are_named_and_trained():
    model = SCDNN(**TINY, **OPTIONS["all"])
    batch = _batch()
    model(batch, training=True)
    names = {part for w in model.weights for part in w.path.split("/")}
    assert {"object_relation", "context_relation", "context_gate"} <= names
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model.compute_losses(batch, model(batch, training=True))["loss"])
    grads = tape.gradient(loss, model.trainable_variables)
    dead = [v.path for v, g in zip(model.trainable_variables, grads)
            if ("relation" in v.path or "gate" in v.path) and (g is None or not np.any(g))]
    assert not dead, dead


def test_global_patch_adds_evidence_to_max_pooling():
    # Same weights (the global patch adds none): max over a superset of patches. Seeded:
    # with some random weights the whole image never wins a max (the last check).
    keras.utils.set_random_seed(0)
    plain = SCDNN(**TINY, fusion="max")
    with_global = SCDNN(**TINY, fusion="max", global_patch=True)
    x = _images(batch=4)
    plain(x)
    with_global(x)
    with_global.set_weights(plain.get_weights())
    a, b = plain(x), with_global(x)
    for key in ("object_logits", "context_logits"):
        # (tolerance: a different number of cropped rows may round matmuls differently)
        assert (b[key].numpy() >= a[key].numpy() - 1e-4).all(), key
    assert np.abs(b["logits"].numpy() - a["logits"].numpy()).max() > 1e-4
    np.testing.assert_array_equal(a["patch_boxes"].numpy(), b["patch_boxes"].numpy())


def test_global_patch_alone_when_no_patch_is_valid():
    # With every generated patch invalid (min_size above the image), the image's logits
    # come from the whole-image patch alone instead of the empty-pool fallback.
    model = SCDNN(**TINY, global_patch=True, aggregation="lse")
    model(_images())
    model.object_patch_generator.min_size = 10.0
    out = model(_images())
    assert not out["patch_valid"].numpy().any()
    plain = SCDNN(**TINY, aggregation="lse")
    plain(_images())
    plain.set_weights(model.get_weights())
    plain.object_patch_generator.min_size = 10.0
    np.testing.assert_array_equal(plain(_images())["logits"].numpy(), 0.0)  # nothing pooled
    assert np.abs(out["logits"].numpy()).min() > 0


def test_invalid_options_echo_value():
    with pytest.raises(ValueError, match="'transformer'"):
        SCDNN(**TINY, relation="transformer")
    with pytest.raises(ValueError, match="0.5"):
        SCDNN(**TINY, context_scales=(0.5, 2.0))
    with pytest.raises(ValueError, match="distinct"):
        SCDNN(**TINY, context_scales=(2.0, 2.0))


@pytest.mark.slow
def test_mixed_precision_train_step_with_all_options():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = SCDNN(**TINY, **OPTIONS["all"])
        model(_images())
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        history = model.fit(tf.data.Dataset.from_tensors(_batch()).repeat(2), epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
        assert model.object_relation.compute_dtype == "float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")
