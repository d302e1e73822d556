"""Augmentation keeps boxes on the right pixels."""

import numpy as np
import pytest
import tensorflow as tf

from scdnn_tf.data import augment as aug

H, W = 60, 90
RED, BLUE = (255, 0, 0), (0, 0, 255)


def _scene():
    """Grey image, a red and a blue rectangle; boxes normalized yxyx (pixel edges)."""
    img = np.full((H, W, 3), 128, np.uint8)
    rects = [(6, 9, 30, 45, RED), (33, 54, 57, 87, BLUE)]
    boxes = []
    for y0, x0, y1, x1, colour in rects:
        img[y0:y1, x0:x1] = colour
        boxes.append([y0 / H, x0 / W, y1 / H, x1 / W])
    return img, np.array(boxes, np.float32), [RED, BLUE]


def _interior(image, box, margin=2):
    """Pixels strictly inside a normalized box (a margin avoids resampled edges)."""
    h, w = image.shape[:2]
    y0, x0, y1, x1 = np.round(np.asarray(box) * [h, w, h, w]).astype(int)
    return image[y0 + margin:y1 - margin, x0 + margin:x1 - margin]


def test_flip_boxes_and_pixels():
    img, boxes, colours = _scene()
    fimg, fboxes = aug.flip_left_right(img, boxes)
    np.testing.assert_allclose(fboxes[0], [6 / H, 1 - 45 / W, 30 / H, 1 - 9 / W], atol=1e-6)
    for box, colour in zip(fboxes.numpy(), colours):
        assert (_interior(fimg.numpy(), box, 0) == colour).all()


def test_crop_reexpresses_and_drops_by_visible_fraction():
    img = np.zeros((100, 100, 3), np.uint8)
    boxes = np.array([[0.0, 0.0, 0.2, 0.2],     # fully inside the crop
                      [0.3, 0.0, 0.6, 0.2],     # rows 30..60: 2/3 inside -> kept, clipped
                      [0.4, 0.0, 0.9, 0.2],     # rows 40..90: 1/5 inside -> dropped
                      [0.8, 0.8, 1.0, 1.0]], np.float32)  # outside -> dropped
    window = tf.constant([0, 0, 50, 50])  # pixel rows/cols [0, 50)
    out, nboxes, keep = aug.crop_image_and_boxes(img, boxes, window)
    assert out.shape == (50, 50, 3)
    np.testing.assert_array_equal(keep.numpy(), [True, True, False, False])
    np.testing.assert_allclose(nboxes[0], [0, 0, 0.4, 0.4], atol=1e-6)
    np.testing.assert_allclose(nboxes[1], [0.6, 0, 1.0, 0.4], atol=1e-6)
    # An offset window: boxes are shifted into crop coordinates and clipped.
    _, nboxes, keep = aug.crop_image_and_boxes(img, boxes, tf.constant([10, 5, 40, 40]))
    np.testing.assert_allclose(nboxes[1], [0.5, 0, 1.0, 15 / 40], atol=1e-6)
    assert not keep.numpy()[3]


def test_sample_crop_window_in_bounds():
    for s in range(20):
        y0, x0, ch, cw = aug.sample_crop_window(60, 90, (0.3, 0.7), tf.constant([s, 7])).numpy()
        assert 0 <= y0 and y0 + ch <= 60 and 0 <= x0 and x0 + cw <= 90
        assert 0.29 * 60 <= ch <= 0.71 * 60 and 0.29 * 90 <= cw <= 0.71 * 90
    with pytest.raises(ValueError, match="scale_range"):
        aug.sample_crop_window(60, 90, (0.0, 1.5), tf.constant([1, 2]))


def _encode(img, fmt):
    return (tf.io.encode_png(img) if fmt == "png" else tf.io.encode_jpeg(img, quality=98)).numpy()


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_augmented_boxes_frame_the_object_pixels(fmt):
    """Through random crop + resize + flip, each kept box still covers its colour."""
    img, boxes, colours = _scene()
    encoded = _encode(img, fmt)
    kept_any, dropped_any, flipped_any = False, False, False
    for s in range(24):
        out, nboxes, keep = aug.decode_and_augment(encoded, boxes, tf.constant([s, 3]), 64,
                                                   (0.4, 0.9), crop=True)
        assert out.shape == (64, 64, 3) and out.dtype == tf.float32
        for box, colour, k in zip(nboxes.numpy(), colours, keep.numpy()):
            if not k:
                dropped_any = True
                continue
            kept_any = True
            inside = _interior(out.numpy(), box)
            if inside.size == 0:
                continue
            np.testing.assert_allclose(inside.reshape(-1, 3).mean(0), colour, atol=6)
        if keep.numpy()[0] and nboxes.numpy()[0][1] > 0.5:
            flipped_any = True  # the red box (left half) moved to the right half
    assert kept_any and dropped_any and flipped_any


def test_no_crop_keeps_everything():
    img, boxes, _ = _scene()
    out, nboxes, keep = aug.decode_and_augment(_encode(img, "png"), boxes, tf.constant([5, 5]),
                                               32, crop=False)
    assert out.shape == (32, 32, 3) and out.dtype == tf.float32
    assert keep.numpy().all()
    flipped = aug.flip_left_right(img, boxes)[1].numpy()
    assert any(np.allclose(nboxes.numpy(), b, atol=1e-6) for b in (boxes, flipped))


def test_color_jitter_range_and_determinism():
    img, _, _ = _scene()
    a = aug.color_jitter(img, tf.constant([1, 2])).numpy()
    b = aug.color_jitter(img, tf.constant([1, 2])).numpy()
    c = aug.color_jitter(img, tf.constant([9, 2])).numpy()
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 255
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1


@pytest.mark.parametrize("size", [32, 64, 128])  # DCT ratios 8, 4, 2 for these crops
def test_dct_scaled_crop_keeps_boxes_on_the_object(size):
    """The box stays on the drawn object to within a pixel, through crop + 1/r decode."""
    h, w = 475, 637  # not multiples of 8: the 1/r image has ceil(side / r) pixels
    img = np.full((h, w, 3), 128, np.uint8)
    img[150:330, 203:461] = RED
    box = np.array([[150 / h, 203 / w, 330 / h, 461 / w]], np.float32)
    encoded = tf.io.encode_jpeg(img, quality=98).numpy()
    for s in range(6):
        out, nbox, keep = aug.decode_and_augment(encoded, box, tf.constant([s, 11]), size,
                                                 (0.6, 1.0), crop=True)
        if not keep.numpy()[0]:
            continue
        red = (out.numpy()[..., 0] > 191) & (out.numpy()[..., 1] < 64)
        rows, cols = np.flatnonzero(red.any(1)), np.flatnonzero(red.any(0))
        drawn = np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.float64)
        np.testing.assert_allclose(drawn, nbox.numpy()[0] * size, atol=1.0)
