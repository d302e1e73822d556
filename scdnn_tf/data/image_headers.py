"""Image size from a file's header, in TF ops (it runs inside the exported SavedModel).

Decoding allocates height * width * 3 bytes (GIF: also a byte per pixel per frame for
its raster), so a size limit must be applied before decoding. These functions read the
size fields of each format `tf.io.decode_image` accepts, from the first 32 bytes (JPEG:
the segments up to the SOF marker; GIF: the frames' image descriptors, found by walking
its blocks). They never raise: an unreadable header gives `NO_SIZE`.
"""

from __future__ import annotations

import tensorflow as tf

_HEAD = 32  # header bytes read: enough for every format's size fields
# header_pixels codes (besides a pixel count >= 0).
NOT_AN_IMAGE, NO_SIZE = -2, -1
# Default limit of decoded pixels (serving, predict): 50 megapixels; a 24 MP phone photo
# passes, a 12000x12000 (144 MP) image is refused.
DEFAULT_MAX_PIXELS = 50_000_000
_MAX_SIDE = 1 << 31  # sides are clamped here before multiplying: no int64 overflow
_HOPS = 32  # GIF sub-blocks skipped per loop iteration


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


def _gif_pixels(encoded: tf.Tensor) -> tf.Tensor:
    """Pixels a GIF costs TF's decoder: max(canvas, sum of frame areas).

    TF's GIF decoder reads every frame (a byte per pixel each) and sizes its output by
    the largest frame, not by the logical screen, so a small screen with a huge frame
    must be caught from the frames' image descriptors. The block structure is walked
    (extensions and image data are chains of sub-blocks, each led by its size byte);
    a file that ends early or holds an unknown block stops the walk (the decoder fails
    there too).
    """
    at, n = _bytes_reader(encoded)

    def le16(i):
        return at(i) + 256 * at(i + 1)

    def table(packed):  # colour table bytes following a block whose flags are `packed`
        return tf.where(packed >= 128, 3 * tf.bitwise.left_shift(
            tf.constant(2, tf.int64), packed % 8), 0)

    def step(pos, in_blocks, width, height, total):
        # Sub-block hops unrolled: a while_loop iteration costs far more than these ops.
        for _ in range(_HOPS):
            size = at(pos)
            hop = tf.logical_and(in_blocks, tf.logical_and(size > 0, pos < n))
            pos = tf.where(hop, pos + 1 + size, pos)
        kind = at(pos)
        descriptor = tf.logical_and(tf.logical_not(in_blocks), tf.equal(kind, 0x2C))
        w, h = le16(pos + 5), le16(pos + 7)
        after_image = pos + 10 + table(at(pos + 9)) + 1  # + LZW minimum code size byte
        next_pos = tf.where(in_blocks, pos + 1 + kind,  # sub-block (0: end of chain)
                            tf.where(descriptor, after_image, pos + 2))  # or extension
        return (next_pos, tf.logical_not(tf.logical_and(in_blocks, tf.equal(kind, 0))),
                tf.where(descriptor, tf.maximum(width, w), width),
                tf.where(descriptor, tf.maximum(height, h), height),
                tf.where(descriptor, total + w * h, total))

    def more(pos, in_blocks, *_):
        kind = at(pos)
        block = tf.logical_or(tf.equal(kind, 0x2C), tf.equal(kind, 0x21))
        return tf.logical_and(pos < n, tf.logical_or(in_blocks, block))

    zero = tf.constant(0, tf.int64)
    screen = le16(6) * le16(8)
    _, _, width, height, total = tf.while_loop(
        more, step, (13 + table(at(10)), tf.constant(False), zero, zero, zero))
    return tf.maximum(tf.maximum(screen, width * height), total)


def _bytes_reader(encoded: tf.Tensor):
    """(at(i) -> int64 byte, clamped to the last one; length n) over the whole file."""
    b = tf.cast(tf.io.decode_raw(encoded, tf.uint8), tf.int64)
    n = tf.size(b, out_type=tf.int64)

    def at(i):
        return tf.gather(b, tf.clip_by_value(tf.cast(i, tf.int64), 0, n - 1))

    return at, n


def _jpeg_pixels(encoded: tf.Tensor) -> tf.Tensor:
    """height * width from the first SOF marker, found by walking the JPEG segments.

    The same frame header libjpeg (and `tf.io.extract_jpeg_shape`) reads, but a damaged
    or truncated marker chain gives `NO_SIZE` instead of raising an error that names no
    batch element.
    """
    at, n = _bytes_reader(encoded)

    def be16(i):
        return 256 * at(i) + at(i + 1)

    def is_sof(marker):  # C0..CF except DHT (C4), JPG (C8), DAC (CC)
        return (marker >= 0xC0) & (marker <= 0xCF) & tf.not_equal(marker, 0xC4) & \
            tf.not_equal(marker, 0xC8) & tf.not_equal(marker, 0xCC)

    def more(pos, _):
        marker = at(pos + 1)
        return (pos + 3 < n) & tf.equal(at(pos), 0xFF) & tf.logical_not(is_sof(marker)) & \
            tf.not_equal(marker, 0xDA) & tf.not_equal(marker, 0xD9)

    def step(pos, _):
        marker = at(pos + 1)
        standalone = tf.equal(marker, 0xFF) | tf.equal(marker, 0x01) | (
            (marker >= 0xD0) & (marker <= 0xD8))
        return tf.where(tf.equal(marker, 0xFF), pos + 1,  # fill byte
                        tf.where(standalone, pos + 2, pos + 2 + be16(pos + 2))), marker

    pos, _ = tf.while_loop(more, step, (tf.constant(2, tf.int64), tf.constant(0, tf.int64)))
    found = (pos + 8 < n) & tf.equal(at(pos), 0xFF) & is_sof(at(pos + 1))
    return tf.where(found, be16(pos + 5) * be16(pos + 7), NO_SIZE)


def header_pixels(encoded: tf.Tensor) -> tf.Tensor:
    """height * width declared by an image file's header, without decoding (int64 scalar).

    JPEG: the first SOF marker (`_jpeg_pixels`). PNG: IHDR (big-endian uint32 at 16, 20). GIF: the logical screen and
    every frame's image descriptor (`_gif_pixels`). BMP: little-endian int32 at
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
        (_starts_with(h, b"\xff\xd8\xff"), lambda: _jpeg_pixels(encoded)),
        (_starts_with(h, b"\x89PNG\r\n\x1a\n") & need(24),
         lambda: _area(_uint(h, 16, 4, True), _uint(h, 20, 4, True))),
        ((_starts_with(h, b"GIF87a") | _starts_with(h, b"GIF89a")) & need(10),
         lambda: _gif_pixels(encoded)),
        (_starts_with(h, b"BM") & need(26), bmp),
        (_starts_with(h, b"RIFF") & _starts_with(h, b"WEBP", 8), lambda: _webp_pixels(h, length)),
        (_starts_with(h, b"\x89PNG") | _starts_with(h, b"GIF8") | _starts_with(h, b"BM"),
         lambda: tf.constant(NO_SIZE, tf.int64)),
    ], default=lambda: tf.constant(NOT_AN_IMAGE, tf.int64))
