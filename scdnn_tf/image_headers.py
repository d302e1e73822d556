"""Image size from a file's header, in TF ops (it runs inside the exported SavedModel).

Decoding allocates height * width * 3 bytes (GIF: also a byte per pixel per frame for
its raster), so a size limit must be applied before decoding. These functions read the
size fields of each format `tf.io.decode_image` accepts, from at most the first 32 bytes
(JPEG: `tf.io.extract_jpeg_shape`, which walks the markers up to SOF).
"""

from __future__ import annotations

import tensorflow as tf

_HEAD = 32  # header bytes read: enough for every format's size fields
# header_pixels codes (besides a pixel count >= 0).
NOT_AN_IMAGE, NO_SIZE = -2, -1
_MAX_SIDE = 1 << 31  # sides are clamped here before multiplying: no int64 overflow


def _header_bytes(encoded: tf.Tensor) -> tf.Tensor:
    """int64 [_HEAD]: the first bytes, zero-padded (shorter payloads never index out)."""
    head = tf.strings.substr(encoded, 0, _HEAD)  # pos 0 is valid for any length
    padded = tf.strings.substr(tf.strings.join([head, b"\0" * _HEAD]), 0, _HEAD)
    return tf.cast(tf.io.decode_raw(padded, tf.uint8), tf.int64)


def _starts_with(h: tf.Tensor, magic: bytes, offset: int = 0) -> tf.Tensor:
    return tf.reduce_all(tf.equal(h[offset:offset + len(magic)], list(magic)))


def _uint(h: tf.Tensor, offset: int, size: int, big_endian: bool = False) -> tf.Tensor:
    digits = h[offset:offset + size]
    weights = [1 << (8 * i) for i in range(size)]
    return tf.reduce_sum(digits * tf.constant(weights[::-1] if big_endian else weights,
                                              tf.int64))


def _area(width: tf.Tensor, height: tf.Tensor) -> tf.Tensor:
    return tf.minimum(width, _MAX_SIDE) * tf.minimum(height, _MAX_SIDE)


def _webp_pixels(h: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """Canvas size of a RIFF/WEBP file from its first chunk (VP8, VP8L or VP8X)."""
    lossy = tf.logical_and(_starts_with(h, b"VP8 ", 12), length >= 30)
    lossless = _starts_with(h, b"VP8L", 12) & tf.equal(h[20], 0x2F) & (length >= 25)
    extended = tf.logical_and(_starts_with(h, b"VP8X", 12), length >= 30)
    bits = _uint(h, 21, 4)
    return tf.case([
        (lossy, lambda: _area(_uint(h, 26, 2) % (1 << 14), _uint(h, 28, 2) % (1 << 14))),
        (lossless, lambda: _area(bits % (1 << 14) + 1, (bits // (1 << 14)) % (1 << 14) + 1)),
        (extended, lambda: _area(_uint(h, 24, 3) + 1, _uint(h, 27, 3) + 1)),
    ], default=lambda: tf.constant(NO_SIZE, tf.int64))


def header_pixels(encoded: tf.Tensor) -> tf.Tensor:
    """height * width declared by an image file's header, without decoding (int64 scalar).

    JPEG: `tf.io.extract_jpeg_shape` (the SOF marker; raises InvalidArgumentError on
    damaged markers). PNG: IHDR (big-endian uint32 at 16, 20). GIF: the logical screen
    (little-endian uint16 at 6, 8), the canvas TF decodes to. BMP: little-endian int32 at
    18, 22 (the sign of the height is the row order). WebP: the VP8/VP8L/VP8X chunk.

    Returns:
      the pixel count; `NO_SIZE` (-1) for a known format whose header is too short or
      unreadable; `NOT_AN_IMAGE` (-2) for bytes of no known format.
    """
    h = _header_bytes(encoded)
    length = tf.cast(tf.strings.length(encoded), tf.int64)

    def bmp():
        width, height = _uint(h, 18, 4), _uint(h, 22, 4)
        signed = [tf.where(v >= 1 << 31, (1 << 32) - v, v) for v in (width, height)]
        return _area(*signed)

    def need(size):
        return length >= size

    return tf.case([
        (_starts_with(h, b"\xff\xd8\xff"), lambda: tf.reduce_prod(
            tf.cast(tf.io.extract_jpeg_shape(encoded)[:2], tf.int64))),
        (_starts_with(h, b"\x89PNG\r\n\x1a\n") & need(24),
         lambda: _area(_uint(h, 16, 4, True), _uint(h, 20, 4, True))),
        ((_starts_with(h, b"GIF87a") | _starts_with(h, b"GIF89a")) & need(10),
         lambda: _area(_uint(h, 6, 2), _uint(h, 8, 2))),
        (_starts_with(h, b"BM") & need(26), bmp),
        (_starts_with(h, b"RIFF") & _starts_with(h, b"WEBP", 8), lambda: _webp_pixels(h, length)),
        (_starts_with(h, b"\x89PNG") | _starts_with(h, b"GIF8") | _starts_with(h, b"BM"),
         lambda: tf.constant(NO_SIZE, tf.int64)),
    ], default=lambda: tf.constant(NOT_AN_IMAGE, tf.int64))
