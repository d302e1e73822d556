"""Tests for scdnn_tf.modeling.box_ops against hand-computed values."""

import math

import numpy as np
import pytest
import tensorflow as tf

from scdnn_tf.modeling import box_ops


def test_box_area_values_and_inverted_boxes():
    boxes = tf.constant([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 4.0], [2.0, 2.0, 1.0, 3.0]])
    np.testing.assert_allclose(box_ops.box_area(boxes), [6.0, 0.0, 0.0])


@pytest.mark.parametrize("b1, b2, expected", [
    ([0, 0, 2, 2], [1, 1, 3, 3], 1.0 / 7.0),      # partial overlap
    ([0, 0, 2, 2], [2, 2, 3, 3], 0.0),            # touching corners
    ([0, 0, 1, 1], [5, 5, 6, 6], 0.0),            # disjoint
    ([0, 0, 4, 4], [1, 1, 2, 2], 1.0 / 16.0),     # contained
    ([0, 0, 4, 2], [0, 0, 4, 2], 1.0),            # identical
    ([0, 0, 2, 4], [1, -1, 3, 1], 1.0 / 11.0),    # overlap along both axes, non-square
    ([1, 1, 1, 1], [0, 0, 2, 2], 0.0),            # empty box
    ([1, 1, 1, 1], [1, 1, 1, 1], 0.0),            # both empty: 0, not NaN
])
def test_iou_hand_computed(b1, b2, expected):
    value = box_ops.iou(tf.constant([b1], tf.float32), tf.constant([b2], tf.float32))
    assert value.shape == (1, 1)
    np.testing.assert_allclose(value.numpy()[0, 0], expected, rtol=1e-6)


def test_iou_pairwise_broadcast_shape_and_symmetry():
    rng = np.random.default_rng(0)
    yx = rng.uniform(0, 0.5, size=(2, 3, 2))
    b1 = np.concatenate([yx, yx + rng.uniform(0, 0.5, size=(2, 3, 2))], -1).astype(np.float32)
    yx = rng.uniform(0, 0.5, size=(5, 2))
    b2 = np.concatenate([yx, yx + rng.uniform(0, 0.5, size=(5, 2))], -1).astype(np.float32)
    out = box_ops.iou(b1, b2)
    assert out.shape == (2, 3, 5)
    # Element [b, n, m] must be the IoU of b1[b, n] with b2[m], regardless of the batching.
    single = box_ops.iou(b1[1, 2:3], b2[4:5]).numpy()[0, 0]
    np.testing.assert_allclose(out.numpy()[1, 2, 4], single, rtol=1e-6)
    np.testing.assert_allclose(box_ops.iou(b2, b1[0]).numpy(), out.numpy()[0].T, rtol=1e-6)


def test_iou_float16_input_computes_in_float32():
    b = tf.constant([[0.0, 0.0, 0.5, 0.5]], tf.float16)
    out = box_ops.iou(b, tf.constant([[0.25, 0.25, 0.75, 0.75]], tf.bfloat16))
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy()[0, 0], 1.0 / 7.0, rtol=1e-6)


def test_encode_hand_computed():
    anchors = tf.constant([[0.0, 0.0, 2.0, 2.0]])
    boxes = tf.constant([[1.0, 0.0, 3.0, 4.0]])  # cy=2, cx=2, h=2, w=4
    np.testing.assert_allclose(box_ops.encode_boxes(boxes, anchors),
                               [[0.5, 0.5, 0.0, math.log(2.0)]], rtol=1e-6, atol=1e-7)


def test_encode_decode_round_trip():
    rng = np.random.default_rng(1)
    def random_boxes(n):
        yx = rng.uniform(0, 0.8, size=(n, 2))
        return np.concatenate([yx, yx + rng.uniform(0.01, 0.5, size=(n, 2))], -1).astype(np.float32)
    boxes, anchors = random_boxes(50), random_boxes(50)
    deltas = box_ops.encode_boxes(boxes, anchors)
    np.testing.assert_allclose(box_ops.decode_boxes(deltas, anchors), boxes, atol=1e-5)
    # Broadcasting: one set of anchors against a batch of boxes.
    batched = box_ops.encode_boxes(np.stack([boxes, boxes[::-1]]), anchors)
    np.testing.assert_allclose(batched[0], deltas, rtol=1e-6)


def test_encode_empty_box_is_finite():
    deltas = box_ops.encode_boxes(tf.zeros([3, 4]), tf.constant([[0.0, 0.0, 0.1, 0.1]] * 3))
    assert np.all(np.isfinite(deltas.numpy()))
    deltas = box_ops.encode_boxes(tf.constant([[0.0, 0.0, 0.1, 0.1]]), tf.zeros([1, 4]))
    assert np.all(np.isfinite(deltas.numpy()))


def test_decode_clips_log_sizes():
    anchors = tf.constant([[0.4, 0.4, 0.5, 0.6]])  # h = 0.1, w = 0.2, centre (0.45, 0.5)
    out = box_ops.decode_boxes(tf.constant([[0.0, 0.0, 100.0, 50.0]]), anchors).numpy()[0]
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[2] - out[0], 0.1 * 1000.0 / 16.0, rtol=1e-5)
    np.testing.assert_allclose(out[3] - out[1], 0.2 * 1000.0 / 16.0, rtol=1e-5)
    np.testing.assert_allclose([(out[0] + out[2]) / 2, (out[1] + out[3]) / 2], [0.45, 0.5],
                               atol=1e-5)
    # Below the clip value nothing changes: th = log(2) doubles the height.
    out = box_ops.decode_boxes(tf.constant([[0.0, 0.0, math.log(2.0), 0.0]]), anchors).numpy()[0]
    np.testing.assert_allclose(out, [0.35, 0.4, 0.55, 0.6], atol=1e-6)


def test_decode_float16_deltas_give_float32():
    out = box_ops.decode_boxes(tf.zeros([2, 4], tf.float16), tf.constant([[0.0, 0.0, 0.5, 0.5]]))
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.5, 0.5]] * 2)


def test_clip_boxes():
    out = box_ops.clip_boxes(tf.constant([[-0.2, 0.3, 1.4, 0.9], [0.1, -1.0, 0.2, 2.0]]))
    np.testing.assert_allclose(out, [[0.0, 0.3, 1.0, 0.9], [0.1, 0.0, 0.2, 1.0]])


def test_scale_boxes_about_centre():
    boxes = tf.constant([[0.2, 0.2, 0.4, 0.6], [0.5, 0.5, 0.7, 0.7]])
    np.testing.assert_allclose(box_ops.scale_boxes(boxes, 2.0),
                               [[0.1, 0.0, 0.5, 0.8], [0.4, 0.4, 0.8, 0.8]], atol=1e-6)
    # Per-box scales, and no clipping (context boxes are clipped by the caller).
    np.testing.assert_allclose(box_ops.scale_boxes(boxes, tf.constant([1.0, 5.0])),
                               [[0.2, 0.2, 0.4, 0.6], [0.1, 0.1, 1.1, 1.1]], atol=1e-6)


def test_pixels_round_trip_non_square():
    boxes = tf.constant([[0.1, 0.2, 0.5, 1.0]])
    pixels = box_ops.to_pixels(boxes, 100, 200)
    np.testing.assert_allclose(pixels, [[10.0, 40.0, 50.0, 200.0]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(pixels) / [100, 200, 100, 200], boxes, rtol=1e-6)


def test_iou_and_decode_under_xla():
    @tf.function(jit_compile=True)
    def fn(b1, b2, deltas):
        return box_ops.iou(b1, b2), box_ops.decode_boxes(deltas, b2)

    b1 = tf.constant([[[0.0, 0.0, 0.5, 0.5]]])
    b2 = tf.constant([[0.25, 0.25, 0.75, 0.75], [0.5, 0.5, 0.5, 0.5]])
    ious, decoded = fn(b1, b2, tf.zeros([2, 4]))
    np.testing.assert_allclose(ious, [[[1.0 / 7.0, 0.0]]], rtol=1e-6)
    np.testing.assert_allclose(decoded, b2, atol=1e-6)
