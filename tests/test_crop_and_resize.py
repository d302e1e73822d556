"""Tests for scdnn_tf.modeling.crop_and_resize: level rule and the pinned sampling convention."""

import numpy as np
import pytest
import tensorflow as tf

from scdnn_tf.modeling import crop_and_resize as car

BACKENDS = ("tf_image", "gather")


def _square_boxes(sides_px, image_size, top_left=(0.0, 0.0)):
    y, x = top_left
    return np.array([[[y, x, y + s, x + s] for s in sides_px]], np.float32) / image_size


def test_assign_levels_known_sizes():
    sides = [224, 112, 448, 56, 10, 2000, 223, 0]
    levels = car.assign_levels(_square_boxes(sides, 2048), 2048)
    assert levels.dtype == tf.int32
    np.testing.assert_array_equal(levels[0], [4, 3, 5, 2, 2, 5, 3, 2])


def test_assign_levels_exact_boundaries_survive_rounding():
    # These offsets make the float32 normalized coordinates round so that the pixel side
    # comes out a hair under 56 / 224 px; the level must still be 2 / 4, not one lower.
    boxes = np.array([[[119, 119, 175, 175], [133, 133, 357, 357]]], np.float32) / 800
    np.testing.assert_array_equal(car.assign_levels(boxes, 800, min_level=1)[0], [2, 4])
    boxes = np.array([[[329, 329, 553, 553]]], np.float32) / 640
    np.testing.assert_array_equal(car.assign_levels(boxes, 640, min_level=3)[0], [4])


def test_assign_levels_uses_area_and_handles_bad_boxes():
    # 448 x 112 px has sqrt(area) 224 -> level 4; inverted boxes behave as empty.
    boxes = np.array([[[0, 0, 112, 448], [10, 10, 0, 0]]], np.float32) / 512
    np.testing.assert_array_equal(car.assign_levels(boxes, 512)[0], [4, 2])
    np.testing.assert_array_equal(
        car.assign_levels(boxes, 512, min_level=3, max_level=3)[0], [3, 3])


def _ramp_features(image_size, levels, batch=2):
    """Level l map: channel 0 = row index + 1, channel 1 = 10 * col index, channel 2 = 1000*l + 100*b."""
    feats = {}
    for level in levels:
        n = -(-image_size // 2**level)
        rows = np.arange(n, dtype=np.float32)[:, None] * np.ones([1, n], np.float32)
        per_image = [np.stack([rows + 1, 10 * rows.T, np.full_like(rows, 1000 * level + 100 * b)],
                              -1) for b in range(batch)]
        feats[f"P{level}"] = tf.constant(np.stack(per_image))
    return feats


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_bin_centres(backend):
    image_size = 512
    feats = _ramp_features(image_size, (2, 3, 4, 5))
    # Box 1: 224 px at the origin -> level 4 (stride 16). Bin i centre at pixel (i + 0.5) * 32,
    # feature index p = 32 (i + 0.5) / 16 - 0.5 = 2i + 0.5 -> channel 0 reads 2i + 1.5.
    # Box 2: 112 px starting at pixel 64 -> level 3 (stride 8). Bin centre 64 + 16 (i + 0.5),
    # p = 8 + 2i + 1 - 0.5 = 2i + 8.5.
    boxes = np.concatenate([_square_boxes([224], image_size),
                            _square_boxes([112], image_size, (64, 64))], axis=1)
    boxes = np.repeat(boxes, 2, axis=0)
    out = car.multilevel_crop_and_resize(feats, boxes, image_size, crop_size=7,
                                         backend=backend).numpy()
    assert out.shape == (2, 2, 7, 7, 3)
    i = np.arange(7, dtype=np.float32)
    np.testing.assert_allclose(out[0, 0, :, 3, 0], 2 * i + 1.5, rtol=1e-5)
    np.testing.assert_allclose(out[0, 0, 3, :, 1], 10 * (2 * i + 0.5), rtol=1e-5)
    np.testing.assert_allclose(out[0, 1, :, 0, 0], 2 * i + 9.5, rtol=1e-5)
    np.testing.assert_allclose(out[0, 1, 0, :, 1], 10 * (2 * i + 8.5), rtol=1e-5)
    # Right level and right image of the batch.
    np.testing.assert_allclose(out[:, :, :, :, 2].mean(axis=(2, 3)), [[4000, 3000], [4100, 3100]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_border_clamps_like_roialign(backend):
    # 4 px box at the top-left corner of a 32 px image on level 2 (stride 4), crop 2:
    # bin centres at pixel 1 and 3 -> p = -0.25 (clamped to row 0: value 1) and 0.25 (1.25).
    feats = _ramp_features(32, (2,), batch=1)
    out = car.multilevel_crop_and_resize(feats, _square_boxes([4], 32), 32, crop_size=2,
                                         min_level=2, max_level=2, backend=backend).numpy()
    np.testing.assert_allclose(out[0, 0, :, 0, 0], [1.0, 1.25], rtol=1e-6)
    # A box reaching past the padded border (p < -1) reads zeros there.
    far = np.array([[[-0.5, 0.0, 0.5, 1.0]]], np.float32)
    out = car.multilevel_crop_and_resize(feats, far, 32, crop_size=2, min_level=2, max_level=2,
                                         backend=backend).numpy()
    # bin centres y = -0.25, 0.25 -> p = -2.5 (outside: 0) and 1.5 (2.5)
    np.testing.assert_allclose(out[0, 0, :, 0, 0], [0.0, 2.5], rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_by_one_map(backend):
    feats = {5: tf.constant(np.full([1, 1, 1, 2], 3.0, np.float32))}
    out = car.multilevel_crop_and_resize(feats, np.array([[[0, 0, 1, 1]]], np.float32), 32,
                                         crop_size=3, min_level=5, max_level=5, backend=backend)
    np.testing.assert_allclose(out, np.full([1, 1, 3, 3, 2], 3.0))


def _random_case(rng, image_size=64, batch=2, num=6, channels=3):
    feats = {level: tf.constant(rng.normal(size=(batch, image_size // 2**level,
                                                 image_size // 2**level, channels)).astype(np.float32))
             for level in (2, 3, 4, 5)}
    yx = rng.uniform(-0.2, 0.9, size=(batch, num, 2))
    boxes = np.concatenate([yx, yx + rng.uniform(0.0, 0.6, size=(batch, num, 2))], -1)
    return feats, boxes.astype(np.float32)


def _roialign_reference(feats, boxes, image_size, crop):
    """Detectron2 ROIAlign(aligned=True, sampling_ratio=1) in numpy, level by the FPN rule."""
    levels = car.assign_levels(boxes, image_size).numpy()
    batch, num = boxes.shape[:2]
    channels = feats[2].shape[-1]
    out = np.zeros([batch, num, crop, crop, channels], np.float32)

    def interp(fmap, y, x):
        height, width = fmap.shape[:2]
        if y < -1 or y > height or x < -1 or x > width:
            return 0.0
        y, x = min(max(y, 0.0), height - 1), min(max(x, 0.0), width - 1)
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
        ly, lx = y - y0, x - x0
        return ((1 - ly) * (1 - lx) * fmap[y0, x0] + (1 - ly) * lx * fmap[y0, x1]
                + ly * (1 - lx) * fmap[y1, x0] + ly * lx * fmap[y1, x1])

    for b in range(batch):
        for n in range(num):
            level = levels[b, n]
            fmap = feats[level][b].numpy()
            y1, x1, y2, x2 = boxes[b, n] * image_size / 2**level - 0.5
            for i in range(crop):
                for j in range(crop):
                    out[b, n, i, j] = interp(fmap, y1 + (i + 0.5) * (y2 - y1) / crop,
                                             x1 + (j + 0.5) * (x2 - x1) / crop)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_roialign_reference(backend):
    feats, boxes = _random_case(np.random.default_rng(0), image_size=256)
    got = car.multilevel_crop_and_resize(feats, boxes, 256, crop_size=4, backend=backend)
    np.testing.assert_allclose(got, _roialign_reference(feats, boxes, 256, 4), atol=1e-4)


def test_gather_backend_under_xla_matches_tf_image():
    feats, boxes = _random_case(np.random.default_rng(1), image_size=32, num=3, channels=2)
    compiled = tf.function(
        lambda f, b: car.multilevel_crop_and_resize(f, b, 32, crop_size=3, backend="gather"),
        jit_compile=True)
    expected = car.multilevel_crop_and_resize(feats, boxes, 32, crop_size=3, backend="tf_image")
    np.testing.assert_allclose(compiled(feats, boxes), expected, atol=1e-5)


def test_gather_backend_gradients_under_xla_match_tf_image():
    feats, boxes = _random_case(np.random.default_rng(1), image_size=32, num=3, channels=2)

    @tf.function(jit_compile=True)
    def grads(f):
        with tf.GradientTape() as tape:
            tape.watch(f)
            out = car.multilevel_crop_and_resize(f, boxes, 32, crop_size=3, backend="gather")
            loss = tf.reduce_sum(out * out)
        return tape.gradient(loss, f)

    def eager_grads(backend):
        with tf.GradientTape() as tape:
            tape.watch(feats)
            out = car.multilevel_crop_and_resize(feats, boxes, 32, crop_size=3, backend=backend)
            loss = tf.reduce_sum(out * out)
        return tape.gradient(loss, feats)

    got, want = grads(feats), eager_grads("tf_image")
    for level in feats:
        np.testing.assert_allclose(got[level], want[level], atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_reach_features_not_boxes(backend):
    feats, boxes = _random_case(np.random.default_rng(2))
    boxes = tf.constant(np.clip(boxes, 0.0, 1.0))
    with tf.GradientTape() as tape:
        tape.watch(boxes)
        tape.watch(list(feats.values()))
        out = car.multilevel_crop_and_resize(feats, boxes, 64, crop_size=3, backend=backend)
        loss = tf.reduce_sum(out)
    grads = tape.gradient(loss, {"feats": feats, "boxes": boxes})
    assert grads["boxes"] is None
    # Boxes inside the image: each sample's bilinear weights sum to 1, so the feature
    # gradients of sum(out) add up to one per output element, only on the boxes' own levels.
    total = sum(float(tf.reduce_sum(g)) for g in grads["feats"].values() if g is not None)
    np.testing.assert_allclose(total, float(tf.size(out)), rtol=1e-5)
    used = set(car.assign_levels(boxes, 64).numpy().ravel())
    for level, g in grads["feats"].items():
        assert (g is not None and float(tf.reduce_sum(tf.abs(g))) > 0) == (level in used)


def test_mixed_precision_features_give_float32():
    feats = {k: tf.cast(v, tf.float16)
             for k, v in _ramp_features(32, (2, 3, 4, 5), batch=1).items()}
    out = car.multilevel_crop_and_resize(feats, _square_boxes([8], 32), 32, crop_size=2)
    assert out.dtype == tf.float32


@pytest.mark.parametrize("features, kwargs, match", [
    ({"P2": tf.zeros([1, 8, 8, 1]), "P3": tf.zeros([1, 4, 4, 1])}, {}, "level 4"),
    ({"P2": tf.zeros([1, 9, 9, 1])}, dict(min_level=2, max_level=2), "stride 4"),
    ({"X": tf.zeros([1, 8, 8, 1])}, {}, "'X'"),
    ({"P2": tf.zeros([1, 8, 8, 1])}, dict(min_level=2, max_level=2, backend="cuda"), "cuda"),
    ({"P2": tf.zeros([1, 8, 8, 1])}, dict(min_level=2, max_level=2, crop_size=0), "crop_size"),
    ({"P2": tf.zeros([2, 8, 8, 1])}, dict(min_level=2, max_level=2), "batch 2"),
])
def test_bad_arguments(features, kwargs, match):
    with pytest.raises(ValueError, match=match):
        car.multilevel_crop_and_resize(features, tf.zeros([1, 1, 4]), 32, **kwargs)


def test_crop_slots_both_modes_agree_on_valid_slots():
    rng = np.random.default_rng(4)
    features = {f"P{level}": tf.constant(rng.normal(size=(2, 64 // 2 ** level, 64 // 2 ** level,
                                                           3)), tf.float32) for level in (2, 3, 4, 5)}
    boxes = tf.constant([[[0.1, 0.1, 0.6, 0.5], [0.0] * 4, [0.2, 0.3, 0.9, 0.95]],
                         [[0.0] * 4, [0.05, 0.05, 0.3, 0.3], [0.0] * 4]], tf.float32)
    valid = tf.constant([[True, False, True], [False, True, False]])
    dense, to_slots_all = car.crop_slots(features, boxes, valid, 64, crop_size=3, all_slots=True)
    sparse, to_slots = car.crop_slots(features, boxes, valid, 64, crop_size=3)
    assert dense.shape[0] == 6 and sparse.shape[0] == 3
    a, b = to_slots_all(dense).numpy(), to_slots(sparse).numpy()
    assert a.shape == b.shape == (2, 3, 3, 3, 3)
    np.testing.assert_allclose(a[valid.numpy()], b[valid.numpy()], atol=1e-5)
    assert not b[~valid.numpy()].any()  # slots not cropped are zeros


@pytest.mark.parametrize("sides", [(114, 58, 30, 16), (27, 15, 9, 6), (10,)])
def test_atlas_places_every_map_in_its_own_region(sides):
    # (27, 15, 9, 6): padded P2..P5 of a 100 px image, whose column (30) is taller than P2.
    rng = np.random.default_rng(0)
    maps = [tf.constant(rng.uniform(1, 2, size=(2, s, s + 1, 3)), tf.float32) for s in sides]
    origin_y, origin_x, height, width = car.atlas_layout(maps)
    atlas = car.pack_atlas(maps, height, width).numpy()
    assert atlas.shape == (2, int(height), int(width), 3)
    covered = np.zeros(atlas.shape[1:3], bool)
    for m, y, x in zip(maps, origin_y, origin_x):
        h, w = m.shape[1:3]
        np.testing.assert_array_equal(atlas[:, int(y):int(y) + h, int(x):int(x) + w], m)
        assert not covered[int(y):int(y) + h, int(x):int(x) + w].any()  # no overlap
        covered[int(y):int(y) + h, int(x):int(x) + w] = True
    assert not atlas[:, ~covered].any()  # the rest is zero fill


@pytest.mark.parametrize("all_slots", [False, True])
def test_crop_slots_of_several_box_sets_equal_separate_calls(all_slots):
    rng = np.random.default_rng(5)
    features = {f"P{level}": tf.constant(rng.normal(size=(2, 64 // 2 ** level, 64 // 2 ** level,
                                                           3)), tf.float32) for level in (2, 3, 4, 5)}
    tight = tf.constant([[[0.1, 0.1, 0.6, 0.5], [0.0] * 4, [0.2, 0.3, 0.9, 0.95]],
                         [[0.0] * 4, [0.05, 0.05, 0.3, 0.3], [0.4, 0.4, 0.5, 0.45]]], tf.float32)
    wide = tf.clip_by_value((tight - 0.5) * 2.5 + 0.5, 0.0, 1.0)
    valid = tf.constant([[True, False, True], [False, True, True]])
    together, to_slots = car.crop_slots(features, [tight, wide], valid, 64, crop_size=3,
                                        all_slots=all_slots)
    assert len(together) == 2
    for boxes, crops in zip([tight, wide], together):
        alone, alone_to_slots = car.crop_slots(features, boxes, valid, 64, crop_size=3,
                                               all_slots=all_slots)
        np.testing.assert_allclose(to_slots(crops).numpy(), alone_to_slots(alone).numpy(),
                                   atol=1e-6)
