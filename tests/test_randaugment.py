"""RandAugment and Cutout: boxes follow geometric ops, stay under photometric ones."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from scdnn_tf.data import augment as aug
from scdnn_tf.data import image_ops as ops
from scdnn_tf.data import randaugment as ra

H, W = 60, 90


def _drawn(y0, x0, y1, x1):
    """Black image with a red rectangle of pixel rows y0..y1-1, columns x0..x1-1."""
    img = np.zeros((H, W, 3), np.uint8)
    img[y0:y1, x0:x1] = (255, 0, 0)
    return img, np.array([[y0 / H, x0 / W, y1 / H, x1 / W]], np.float32)


def _extent(img):
    """[ymin, xmin, ymax, xmax] in pixels (edges) of the pixels at least half red (the grey
    fill of uncovered pixels is not red)."""
    on = img[..., 0].astype(int) - img[..., 1] > 127
    rows, cols = np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.float64)


@pytest.mark.parametrize("op", ra.GEOMETRIC)
@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_boxes_follow_geometric_ops(op, sign):
    img, box = _drawn(8, 30, 30, 62)  # off-centre: shears about the centre move it too
    out, moved, keep = ra.apply_op(op, img, box, 6, sign)
    assert keep.numpy()[0] and out.dtype == tf.float32 and out.shape == img.shape
    pix = moved.numpy()[0] * [H, W, H, W]
    drawn = _extent(out.numpy())
    # The drawn pixels stay inside the moved box (1 px of bilinear blur) ...
    assert (drawn[:2] >= pix[:2] - 1).all() and (drawn[2:] <= pix[2:] + 1).all(), (drawn, pix)
    # ... and the box is tight around them (the object moved, not just the box grew).
    np.testing.assert_allclose(drawn, pix, atol=2.0)
    assert np.abs(pix - np.array([8, 30, 30, 62])).max() > 3  # it did move


def test_chained_geometric_ops_keep_the_box_on_the_object():
    img, box = _drawn(20, 35, 38, 55)
    image, boxes, keep = tf.constant(img), tf.constant(box), tf.constant([True])
    for op, sign in [("rotate", 1.0), ("shear_x", -1.0), ("translate_y", 1.0)]:
        image, boxes, kept = ra.apply_op(op, image, boxes, 4, sign)
        keep &= kept
    assert keep.numpy()[0]
    drawn, pix = _extent(image.numpy()), boxes.numpy()[0] * [H, W, H, W]
    assert (drawn[:2] >= pix[:2] - 1).all() and (drawn[2:] <= pix[2:] + 1).all()
    assert (drawn[:2] - pix[:2] < 4).all() and (pix[2:] - drawn[2:] < 4).all()


def test_boxes_leaving_the_image_are_dropped_and_clipped_like_the_crop():
    # Box 0 near the right edge leaves the image; box 1 is cut at 40 %; box 2 stays.
    boxes = tf.constant([[0.1, 0.8, 0.3, 0.95], [0.4, 0.1, 0.6, 0.6], [0.7, 0.0, 0.8, 0.2]])
    image = tf.zeros([H, W, 3])
    _, moved, keep = ra.apply_op("translate_x", image, boxes, 10 / 0.45 * 0.4, 1.0)
    expected, expected_keep = aug.crop_boxes(boxes + [0, 0.4, 0, 0.4], [H, W], [0, 0, H, W])
    np.testing.assert_array_equal(keep.numpy(), expected_keep.numpy())
    np.testing.assert_allclose(moved.numpy(), expected.numpy(), atol=1e-5)
    assert keep.numpy().tolist() == [False, True, True]
    np.testing.assert_allclose(moved.numpy()[1], [0.4, 0.5, 0.6, 1.0], atol=1e-5)
    np.testing.assert_allclose(moved.numpy()[2], [0.7, 0.4, 0.8, 0.6], atol=1e-5)
    assert moved.numpy().min() >= 0 and moved.numpy().max() <= 1


def test_randaugment_warps_and_resizes_in_one_step_with_the_boxes():
    """One op per image, the crop resized to 64 x 64 within the warp when it is geometric."""
    img, box = _drawn(8, 30, 30, 62)
    warped = 0
    for s in range(40):
        out, moved, keep = ra.randaugment(img, box, tf.constant([s, 9]), 1, 6, output_size=64)
        assert out.shape == (64, 64, 3) and out.dtype == tf.float32
        if np.array_equal(moved.numpy(), box) or not keep.numpy()[0]:
            continue
        warped += 1
        pix, drawn = moved.numpy()[0] * 64, _extent(out.numpy())
        assert (drawn[:2] >= pix[:2] - 1).all() and (drawn[2:] <= pix[2:] + 1).all(), s
        np.testing.assert_allclose(drawn, pix, atol=2.0)
    assert warped >= 5


def test_composite_matrix_is_the_product_in_drawn_order():
    indices = [tf.constant(ra.OPS.index("rotate")), tf.constant(ra.OPS.index("invert")),
               tf.constant(ra.OPS.index("translate_x"))]
    signs = [tf.constant(1.0), tf.constant(-1.0), tf.constant(-1.0)]
    got = ra.composite_matrix(indices, signs, 5, 40, 60)
    expected = (ra.geometric_matrix("translate_x", -0.225, 40, 60)
                @ ra.geometric_matrix("rotate", 15.0, 40, 60))
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5)


def _photo(seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(40, 200, (H, W, 3)).astype(np.uint8)
    img[10:30, 20:50] = (220, 30, 60)
    return img


@pytest.mark.parametrize("op", ra.PHOTOMETRIC)
def test_photometric_ops_keep_boxes(op):
    img = _photo()
    boxes = tf.constant([[0.1, 0.2, 0.5, 0.6], [0.3, 0.0, 1.0, 1.0]])
    out, same, keep = ra.apply_op(op, img, boxes, 7, -1.0)
    np.testing.assert_array_equal(same.numpy(), boxes.numpy())
    assert keep.numpy().all() and out.dtype == tf.float32 and out.shape == img.shape
    assert np.abs(out.numpy() - img).max() > 0


@pytest.mark.parametrize("name,ours,pil,tol", [
    ("autocontrast", ops.autocontrast, ImageOps.autocontrast, 1),
    ("equalize", ops.equalize, ImageOps.equalize, 0),
    ("posterize", lambda x: ops.posterize(x, 3), lambda p: ImageOps.posterize(p, 3), 0),
    ("solarize", lambda x: ops.solarize(x, 100), lambda p: ImageOps.solarize(p, 100), 0),
    ("color", lambda x: ops.color(x, 0.3), lambda p: ImageEnhance.Color(p).enhance(0.3), 1),
    ("contrast", lambda x: ops.contrast(x, 1.6),
     lambda p: ImageEnhance.Contrast(p).enhance(1.6), 2),
    ("brightness", lambda x: ops.brightness(x, 1.4),
     lambda p: ImageEnhance.Brightness(p).enhance(1.4), 1),
    ("sharpness", lambda x: ops.sharpness(x, 1.8),
     lambda p: ImageEnhance.Sharpness(p).enhance(1.8), 2),
])
def test_photometric_ops_match_pil(name, ours, pil, tol):
    img = _photo(1)
    img[..., 2] = img[..., 2] // 2 + 30  # a channel not spanning 0..255 (autocontrast)
    expected = np.asarray(pil(Image.fromarray(img))).astype(int)
    got = np.round(ours(tf.constant(img, tf.float32)).numpy()).astype(int)
    assert np.abs(got - expected).max() <= tol, name


def test_randaugment_deterministic_per_seed_and_varied_across_seeds():
    img, box = _drawn(18, 30, 40, 62)
    results = [ra.randaugment(img, box, tf.constant([s, 7]), 2, 9) for s in range(6)]
    again = ra.randaugment(img, box, tf.constant([0, 7]), 2, 9)
    for a, b in zip(results[0], again):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    images = {r[0].numpy().tobytes() for r in results}
    assert len(images) > 3


def test_randaugment_without_geometric_leaves_boxes():
    img, box = _drawn(18, 30, 40, 62)
    for s in range(12):
        _, boxes, keep = ra.randaugment(img, box, tf.constant([s, 1]), 3, 9, geometric=False)
        np.testing.assert_array_equal(boxes.numpy(), box)
        assert keep.numpy().all()


def test_cutout_one_grey_hole_of_the_fraction():
    img = np.zeros((H, W, 3), np.uint8)
    for s in range(8):
        out = ra.cutout(img, 0.5, tf.constant([s, 3])).numpy()
        again = ra.cutout(img, 0.5, tf.constant([s, 3])).numpy()
        np.testing.assert_array_equal(out, again)
        hole = out[..., 0] == ra.FILL
        assert (out[~hole] == 0).all() and (out[hole] == ra.FILL).all()
        rows, cols = np.flatnonzero(hole.any(1)), np.flatnonzero(hole.any(0))
        assert hole.sum() == len(rows) * len(cols)  # one rectangle
        assert 0 < len(rows) <= H // 2 and 0 < len(cols) <= W // 2


def _encode(img):
    return tf.io.encode_png(img).numpy()


def test_cutout_in_the_pipeline_never_touches_boxes():
    img, box = _drawn(18, 30, 40, 62)
    only_cutout = ra.make_augmenter(None, 0.5)
    for s in range(6):
        seed = tf.constant([s, 2])
        plain = aug.decode_and_augment(_encode(img), box, seed, 64, (0.6, 1.0))
        cut = aug.decode_and_augment(_encode(img), box, seed, 64, (0.6, 1.0),
                                     extra_fn=only_cutout)
        np.testing.assert_array_equal(cut[1].numpy(), plain[1].numpy())
        np.testing.assert_array_equal(cut[2].numpy(), plain[2].numpy())
        assert np.abs(cut[0].numpy() - plain[0].numpy()).max() > 0


def test_pipeline_augmenter_in_tf_data_graph_is_deterministic_and_box_aware():
    img, box = _drawn(18, 30, 40, 62)
    augmenter = ra.make_augmenter((2, 9), 0.3)
    encoded = _encode(img)

    def run(seed):
        return aug.decode_and_augment(encoded, box, seed, 64, (0.7, 1.0), extra_fn=augmenter)

    seeds = tf.data.Dataset.from_tensor_slices(tf.constant([[s, 5] for s in range(10)]))
    first = [tuple(t.numpy() for t in x) for x in seeds.map(run, num_parallel_calls=2)]
    second = [tuple(t.numpy() for t in x) for x in seeds.map(run, num_parallel_calls=2)]
    for a, b in zip(first, second):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    assert any(not np.allclose(a[1], first[0][1]) for a in first)


@pytest.mark.parametrize("text,expected", [("2,9", (2, 9.0)), (" 1 , 5.5 ", (1, 5.5)),
                                           ("", None), ("0,9", None)])
def test_parse_randaugment(text, expected):
    assert ra.parse_randaugment(text) == expected


@pytest.mark.parametrize("call,match", [
    (lambda: ra.parse_randaugment("2"), r"--randaugment must be N,M .* got '2'"),
    (lambda: ra.parse_randaugment("a,b"), r"got 'a,b'"),
    (lambda: ra.parse_randaugment("11,5"), r"int in 0..10, got 11"),
    (lambda: ra.parse_randaugment("2,12"), r"in \[0, 10\], got 12.0"),
    (lambda: ra.make_augmenter(None, 1.0), r"cutout must be a fraction in \[0, 1\), got 1.0"),
    (lambda: ra.apply_op("zoom", tf.zeros([4, 4, 3]), tf.zeros([0, 4]), 5, 1.0),
     "not a geometric op: 'zoom'"),
])
def test_bad_settings_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _records(path, count=8):
    from scdnn_tf.data import records  # noqa: PLC0415
    corners = [[0.05, 0.05, 0.35, 0.35], [0.05, 0.65, 0.35, 0.95], [0.65, 0.05, 0.95, 0.35],
               [0.65, 0.65, 0.95, 0.95]]
    img = np.full((48, 64, 3), 90, np.uint8)
    for (y0, x0, y1, x1), colour in zip(corners, [(255, 0, 0), (0, 255, 0), (0, 0, 255),
                                                  (255, 255, 0)]):
        img[round(y0 * 48):round(y1 * 48), round(x0 * 64):round(x1 * 64)] = colour
    example = records.build_example(
        encoded=tf.io.encode_png(img).numpy(), image_format="png", height=48, width=64,
        filename="a.png", source_id="0", boxes=corners, classes=[0, 1, 2, 3],
        class_texts=["0", "1", "2", "3"])
    with tf.io.TFRecordWriter(str(path)) as writer:
        for _ in range(count):
            writer.write(example.SerializeToString())
    return corners


def test_make_dataset_with_randaugment_and_cutout(tmp_path):
    from scdnn_tf.data.pipeline import make_dataset  # noqa: PLC0415
    corners = np.array(_records(tmp_path / "a.tfrecord"))
    flipped = corners[:, [0, 3, 2, 1]] * [1, -1, 1, -1] + [0, 1, 0, 1]

    def batches():
        ds = make_dataset(str(tmp_path / "a.tfrecord"), 4, 32, 8, training=True, seed=4,
                          shuffle_buffer=8, scale_range=(1.0, 1.0), randaugment_spec=(3, 10),
                          cutout=0.5)
        return [{k: v.numpy() for k, v in b.items()} for b in ds.take(2)]

    first, second = batches(), batches()
    moved = 0
    for a, b in zip(first, second):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])  # deterministic per seed
        for labels, classes, boxes in zip(a["labels"], a["box_classes"], a["boxes"]):
            expect = np.zeros(4)
            expect[classes[classes >= 0]] = 1
            np.testing.assert_array_equal(labels, expect)  # labels follow kept boxes
            for c, box in zip(classes, boxes):
                if c >= 0:
                    assert 0 <= box.min() and box.max() <= 1
                    moved += not (np.allclose(box, corners[c], atol=1e-5)
                                  or np.allclose(box, flipped[c], atol=1e-5))
    assert moved > 0  # geometric ops moved boxes beyond the flip
