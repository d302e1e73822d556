"""decode_image / resize_image: odd colour modes, bad bytes, graph mode."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from scdnn_tf.data.preprocess import (
    decode_image,
    decode_jpeg_window,
    jpeg_ratio,
    resize_image,
    scaled_window,
)

RGB = (np.arange(8 * 6 * 3) * 5 % 256).astype(np.uint8).reshape(8, 6, 3)


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _pil_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_grayscale_becomes_rgb(fmt):
    data = _encode(Image.fromarray(RGB[..., 0]), fmt)
    out = decode_image(data).numpy()
    assert out.shape == (8, 6, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    if fmt == "PNG":  # lossless: exact
        np.testing.assert_array_equal(out[..., 0], RGB[..., 0])


def test_rgba_png_drops_alpha():
    rgba = np.dstack([RGB, np.full((8, 6), 7, np.uint8)])
    out = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG")).numpy()
    np.testing.assert_array_equal(out, RGB)


def test_cmyk_jpeg_becomes_rgb():
    data = _encode(Image.fromarray(RGB).convert("CMYK"), "JPEG")
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data).numpy()
    assert out.shape == (8, 6, 3)
    # Same colours as Pillow's CMYK -> RGB conversion of the same file (the two libraries
    # upsample chroma differently, hence a tolerance), and not inverted.
    diff = np.abs(out.astype(int) - _pil_rgb(data).astype(int))
    assert diff.max() <= 10 and diff.mean() < 2.5
    assert np.abs(out.astype(int) - RGB.astype(int)).mean() < 6


def test_16bit_png_scaled_to_8bit():
    rgb16 = RGB.astype(np.uint16) * 257  # v * 257 maps exactly to v in 8 bits
    out = decode_image(tf.io.encode_png(tf.constant(rgb16))).numpy()
    np.testing.assert_array_equal(out, RGB)
    gray16 = _encode(Image.fromarray(RGB[..., 0].astype(np.uint16) * 257), "PNG")
    assert Image.open(io.BytesIO(gray16)).mode.startswith("I")
    np.testing.assert_array_equal(decode_image(gray16).numpy()[..., 1], RGB[..., 0])


def test_non_image_bytes_fail_clearly():
    with pytest.raises(tf.errors.InvalidArgumentError, match="not a JPEG/PNG"):
        decode_image(b"hello, this is text", context="x.jpg")
    for short in (b"", b"abc", b"\xff\xd8"):  # shorter than the signature window
        with pytest.raises(tf.errors.InvalidArgumentError, match="not a JPEG/PNG"):
            decode_image(short, context="x.jpg")


def test_graph_mode_string_signature():
    png = tf.io.encode_png(tf.constant(RGB)).numpy()

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def serve(encoded):
        return resize_image(decode_image(encoded), 16)

    out = serve(tf.constant(png))
    assert out.shape == (16, 16, 3) and out.dtype == tf.float32
    with pytest.raises(tf.errors.InvalidArgumentError, match="decode_image"):
        serve(tf.constant(b"\x00\x01not an image"))


def test_resize_range_dtype_and_constant():
    img = np.zeros((40, 60, 3), np.uint8)
    img[..., 0] = 255
    img[..., 1] = 100
    out = resize_image(img, 24).numpy()
    assert out.shape == (24, 24, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], 255.0, atol=1e-3)
    np.testing.assert_allclose(out[..., 1], 100.0, atol=1e-3)
    noisy = resize_image(np.random.default_rng(0).integers(0, 256, (50, 30, 3), np.uint8), 37)
    assert 0.0 <= float(tf.reduce_min(noisy)) and float(tf.reduce_max(noisy)) <= 255.0


def test_resize_keeps_normalized_geometry():
    # A bar covering rows [0.25, 0.75) of a non-square image covers the same fraction after.
    img = np.zeros((40, 100, 3), np.uint8)
    img[10:30] = 255
    out = resize_image(img, 20).numpy()[..., 0]
    assert out[6:14].min() > 250 and out[:4].max() < 5 and out[16:].max() < 5


@pytest.mark.parametrize("bad", [0, -3, 2.5, "224"])
def test_resize_rejects_bad_size(bad):
    with pytest.raises(ValueError, match="image_size"):
        resize_image(np.zeros((4, 4, 3), np.uint8), bad)


def test_resize_uint8_equals_float_input():
    noisy = np.random.default_rng(1).integers(0, 256, (73, 51, 3), np.uint8)
    for size in (20, 51, 90):  # shrink, same side, enlarge
        np.testing.assert_array_equal(resize_image(noisy, size).numpy(),
                                      resize_image(noisy.astype(np.float32), size).numpy())


@pytest.mark.parametrize("crop_hw, size, expected", [
    ((480, 640), 224, 2), ((447, 640), 224, 1), ((480, 640), 448, 1), ((480, 640), 120, 4),
    ((480, 640), 60, 8), ((4000, 6000), 224, 8), ((64, 64), 64, 1), ((10, 10), 64, 1)])
def test_jpeg_ratio_never_needs_upsampling(crop_hw, size, expected):
    assert int(jpeg_ratio(tf.constant(crop_hw), size)) == expected


def test_scaled_window_covers_the_window_and_respects_ceil():
    hw = tf.constant([475, 637])
    # Start floors, end ceils: source rows [39, 339) -> 1/8 rows [4, 43) = source [32, 344).
    np.testing.assert_array_equal(scaled_window([39, 47, 300, 400], 8, hw), [4, 5, 39, 51])
    np.testing.assert_array_equal(scaled_window([39, 47, 300, 400], 1, hw), [39, 47, 300, 400])
    # The full image at 1/8 is ceil(475 / 8) x ceil(637 / 8) = 60 x 80.
    np.testing.assert_array_equal(scaled_window([0, 0, 475, 637], 8, hw), [0, 0, 60, 80])
    np.testing.assert_array_equal(scaled_window([470, 630, 5, 7], 4, hw), [117, 157, 2, 3])


def _edge_position(profile):
    """Sub-pixel position of a dark-to-bright step in a 1-D profile (count of dark pixels)."""
    return float(np.sum(1.0 - np.asarray(profile, np.float64) / 255.0))


@pytest.mark.parametrize("size, ratio", [(200, 1), (140, 2), (70, 4), (37, 8)])
def test_decode_jpeg_window_region_matches_content(size, ratio):
    """The returned region is what the decoded pixels show (edges land where it says)."""
    h, w, edge_row, edge_col = 475, 637, 203, 301
    img = np.full((h, w, 3), 255, np.uint8)
    img[:, :edge_col] = 0
    img[:edge_row] = 0  # dark above the row edge and left of the column edge
    encoded = tf.io.encode_jpeg(img, quality=100)
    window = tf.constant([39, 47, 300, 400])  # offsets not multiples of 2, 4 or 8
    assert int(jpeg_ratio(window[2:], size)) == ratio
    out, region = decode_jpeg_window(encoded, window, size)
    out, (y0, x0, rh, rw) = out.numpy()[..., 0], region.numpy()
    assert out.shape == (round(rh / ratio), round(rw / ratio))
    assert y0 <= 39 and x0 <= 47 and y0 + rh >= 339 and x0 + rw >= 447
    row = out[-1]  # below the row edge: the column step alone
    col = out[:, -1]  # right of the column edge: the row step alone
    assert abs(_edge_position(row) - (edge_col - x0) / ratio) < 0.25
    assert abs(_edge_position(col) - (edge_row - y0) / ratio) < 0.25


@pytest.mark.parametrize("hw", [(300, 400), (64, 64), (17, 64), (63, 20)])
def test_resize_without_shrinking_equals_the_antialiased_kernel(hw):
    """No side shrinks: the plain bilinear branch gives the antialiased kernel's values."""
    img = tf.constant(np.random.default_rng(2).integers(0, 256, hw + (3,), np.uint8))
    size = max(hw)
    aa = tf.image.resize(img, [size, size], antialias=True).numpy()
    np.testing.assert_allclose(resize_image(img, size).numpy(), aa, atol=1e-3)
    # One side shrinking takes the antialiased branch: the plain kernel would alias.
    np.testing.assert_allclose(resize_image(img, size - 3).numpy(),
                               tf.image.resize(img, [size - 3] * 2, antialias=True).numpy(),
                               atol=1e-3)
