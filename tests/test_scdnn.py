"""SCDNN end to end on a tiny configuration: outputs, config, gradients, distribution."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from scdnn_tf import SCDNN

from helpers import two_cpu_strategy

NUM_CLASSES = 3
SIZE = 64
TINY = dict(num_classes=NUM_CLASSES, backbone="small", image_size=SIZE, fpn_channels=16,
            anchor_sizes=(8, 16, 32, 64), num_patches=6, num_train_patches=8, fc_units=32)


def _batch(batch_size=2, seed=0):
    rng = np.random.default_rng(seed)
    boxes = np.zeros([batch_size, 4, 4], np.float32)
    classes = -np.ones([batch_size, 4], np.int32)
    labels = np.zeros([batch_size, NUM_CLASSES], np.float32)
    for b in range(batch_size):
        for m in range(2 if b % 2 == 0 else 1):
            y, x = rng.uniform(0.05, 0.5, size=2)
            h, w = rng.uniform(0.2, 0.45, size=2)
            boxes[b, m] = [y, x, y + h, x + w]
            classes[b, m] = rng.integers(NUM_CLASSES)
            labels[b, classes[b, m]] = 1.0
    return {"image": tf.constant(rng.uniform(0, 255, [batch_size, SIZE, SIZE, 3]), tf.float32),
            "boxes": tf.constant(boxes), "box_classes": tf.constant(classes),
            "labels": tf.constant(labels), "label_weights": tf.ones([batch_size, NUM_CLASSES])}


def test_outputs_eager_and_in_training():
    model = SCDNN(**TINY)
    batch = _batch()
    out = model(batch["image"])
    assert out["logits"].shape == (2, NUM_CLASSES)
    assert out["patch_boxes"].shape == (2, 6, 4)
    assert out["context_boxes"].shape == (2, 6, 4)
    assert out["patch_scores"].shape == (2, 6)
    assert out["logits"].dtype == tf.float32
    ctx, tight = out["context_boxes"].numpy(), out["patch_boxes"].numpy()
    # Context boxes contain their tight box.
    assert (ctx[..., :2] <= tight[..., :2] + 1e-6).all() and (ctx[..., 2:] >= tight[..., 2:] - 1e-6).all()
    train_out = model(batch, training=True)
    assert train_out["patch_boxes"].shape == (2, 8 + 4, 4)  # proposals + appended ground truth
    np.testing.assert_allclose(train_out["patch_boxes"][:, 8:].numpy(), batch["boxes"].numpy())


def test_inside_tf_function_and_symbolic_input():
    model = SCDNN(**TINY)
    fn = tf.function(lambda x: model(x)["logits"])
    assert fn(tf.zeros([1, SIZE, SIZE, 3])).shape == (1, NUM_CLASSES)
    inputs = keras.Input((SIZE, SIZE, 3))
    out = model(inputs)
    assert tuple(out["logits"].shape) == (None, NUM_CLASSES)


def test_config_round_trip_and_weights():
    model = SCDNN(**TINY, branches="both", aggregation="lse", fusion="max", context_scale=1.5)
    model(tf.zeros([1, SIZE, SIZE, 3]))
    clone = SCDNN.from_config(model.get_config())
    clone(tf.zeros([1, SIZE, SIZE, 3]))
    assert clone.get_config() == model.get_config()
    assert len(clone.weights) == len(model.weights)
    clone.set_weights(model.get_weights())
    x = tf.random.uniform([1, SIZE, SIZE, 3], 0, 255, seed=1)
    np.testing.assert_allclose(clone(x)["logits"].numpy(), model(x)["logits"].numpy(), atol=1e-5)


@pytest.mark.parametrize("branches,present,absent", [
    ("object", "object_label_predictor", "context_label_predictor"),
    ("context", "context_label_predictor", "object_label_predictor")])
def test_single_branch_ablation(branches, present, absent):
    model = SCDNN(**TINY, branches=branches)
    out = model(tf.zeros([1, SIZE, SIZE, 3]))
    names = {part for w in model.weights for part in w.path.split("/")}
    assert present in names and absent not in names
    # Checkpoints are keyed by these paths: the predictor's layers live under its name.
    assert f"scdnn/{present}/fc1/kernel" in {w.path for w in model.weights}
    assert out["logits"].shape == (1, NUM_CLASSES)


def test_total_loss_reaches_every_trainable_weight():
    model = SCDNN(**TINY)
    batch = _batch()
    model(batch, training=True)
    with tf.GradientTape() as tape:
        per_image = model.compute_losses(batch, model(batch, training=True))
        loss = tf.reduce_mean(per_image["loss"])
    grads = tape.gradient(loss, model.trainable_variables)
    dead = [v.path for v, g in zip(model.trainable_variables, grads)
            if g is None or not np.any(g.numpy())]
    assert not dead, dead
    for key in ("loss_regression", "loss_patch", "loss_label"):
        assert np.all(per_image[key].numpy() > 0), key


def test_image_without_boxes_contributes_only_label_loss():
    model = SCDNN(**TINY)
    batch = _batch()
    batch["box_classes"] = tf.constant([[-1] * 4, [0, -1, -1, -1]])
    per_image = model.compute_losses(batch, model(batch, training=True))
    assert per_image["loss_regression"][0] == 0 and per_image["loss_patch"][0] == 0
    assert per_image["loss_label"][0] > 0 and per_image["loss_patch"][1] > 0


def test_invalid_arguments_echo_value():
    with pytest.raises(ValueError, match="100"):
        SCDNN(**{**TINY, "image_size": 100})
    with pytest.raises(ValueError, match="'neither'"):
        SCDNN(**{**TINY, "branches": "neither"})
    with pytest.raises(ValueError, match="'mean'"):
        SCDNN(**{**TINY, "aggregation": "mean"})


# Every option beyond the paper at once (relation module, adaptive context, global patch).
ALL_OPTIONS = dict(relation="attention", context_scales=(1.5, 2.5, 4.0), global_patch=True)


def _fit_one_step(strategy, init_weights, batch, options):
    with strategy.scope():
        # freeze_bn: per-replica BatchNorm statistics would differ from the global batch's;
        # with frozen BN the math is exactly the same on 1 and 2 replicas. All anchors are
        # sampled (anchor_samples >= A), so no randomness either.
        model = SCDNN(**TINY, **options, freeze_bn=True, anchor_samples=4096,
                      positive_fraction=1.0)
        model(batch["image"])
        model.set_weights(init_weights)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1))
    ds = tf.data.Dataset.from_tensors(batch)
    history = model.fit(ds, epochs=1, verbose=0)
    return history.history, model.get_weights()


@pytest.mark.slow
@pytest.mark.parametrize("options", [{}, ALL_OPTIONS], ids=["paper", "all_options"])
def test_one_device_and_two_replicas_agree(options):
    batch = _batch(batch_size=4, seed=3)
    ref = SCDNN(**TINY, **options, freeze_bn=True)
    ref(batch["image"])
    init = ref.get_weights()
    h1, w1 = _fit_one_step(tf.distribute.OneDeviceStrategy("/cpu:0"), init, batch, options)
    h2, w2 = _fit_one_step(two_cpu_strategy(), init, batch, options)
    for key in ("loss", "loss_regression", "loss_patch", "loss_label"):
        np.testing.assert_allclose(h1[key], h2[key], rtol=1e-4, err_msg=key)
    moved = max(np.abs(a - b).max() for a, b in zip(w1, init))
    assert moved > 0
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, atol=1e-5 + 1e-3 * moved)


@pytest.mark.slow
def test_resnext101_paper_configuration_forward_at_448():
    model = SCDNN(num_classes=80, backbone="resnext101_32x8d", image_size=448)
    out = model(tf.random.uniform([2, 448, 448, 3], 0, 255, seed=0))
    assert out["logits"].shape == (2, 80)
    assert out["patch_boxes"].shape == (2, 32, 4)
    assert np.isfinite(out["logits"].numpy()).all()


@pytest.mark.slow
@pytest.mark.parametrize("options", [{}, ALL_OPTIONS], ids=["paper", "all_options"])
def test_train_step_compiles_under_xla_with_gather_crops(options):
    batch = _batch()
    model = SCDNN(**TINY, **options, crop_backend="gather")
    model(batch["image"])
    model.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=True)
    history = model.fit(tf.data.Dataset.from_tensors(batch).repeat(2), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert model.get_config()["crop_backend"] == "gather"


def test_min_level_3_drops_the_stride_4_map():
    model = SCDNN(**{**TINY, "anchor_sizes": (16, 32, 64)}, min_level=3)
    batch = _batch()
    out = model(batch, training=True)
    # Anchors: 3 ratios on 8x8 + 4x4 + 2x2 cells (P3..P5 of a 64 px image), none at stride 4.
    assert out["objectness"].shape == (2, 3 * (64 + 16 + 4))
    names = {part for w in model.weights for part in w.path.split("/")}
    assert "fpn_smooth3" in names and "fpn_smooth2" not in names and "fpn_lateral2" not in names
    per_image = model.compute_losses(batch, out)
    assert np.all(np.isfinite(per_image["loss"].numpy()))
    clone = SCDNN.from_config(model.get_config())
    assert clone.min_level == 3 and clone.get_config() == model.get_config()
    with pytest.raises(ValueError, match="one size per level"):
        SCDNN(**TINY, min_level=3)  # 4 anchor sizes for 3 levels
    with pytest.raises(ValueError, match="min_level.*4"):
        SCDNN(**{**TINY, "anchor_sizes": (16, 32, 64)}, min_level=4)
