"""Image decoding and resizing shared by the input pipeline, export and predict.

The exported SavedModel (`serving_default`, encoded bytes -> scores) calls exactly
`decode_image` and `resize_image`, as evaluation and un-augmented training do, so they see
identical pixels. All functions are graph-safe: they run inside a `tf.function`.

Augmented training decodes JPEGs faster with `decode_jpeg_window`: only the crop window
is decoded, and with libjpeg's DCT scaling (1/2, 1/4, 1/8) when the output side is at
most that fraction of the window's side. DCT scaling averages blocks of source pixels,
so the antialiased resize that follows sees an image already close to its output size;
the pixels differ slightly from a full-resolution decode, which is part of augmentation.

What `tf.io.decode_image(channels=3)` does with unusual inputs (checked on TF 2.21 in
`tests/test_preprocess.py`): grayscale (L, LA) is replicated to RGB, RGBA drops alpha,
CMYK/YCCK JPEG is converted to RGB by libjpeg, and a 16-bit PNG is scaled to 8 bits
(v * 255 / 65535). GIF gives its first frame (`expand_animations=False`); BMP and WebP
also decode. Anything else fails with an `InvalidArgumentError` that names the problem.
"""

from __future__ import annotations

import tensorflow as tf

# Leading bytes of the formats tf.io.decode_image understands. Checked before decoding so
# that non-image bytes fail with a message saying what was received, not a bare
# "Unknown image file format" deep inside the op.
_MAGIC = (
    b"\xff\xd8\xff",        # JPEG
    b"\x89PNG\r\n\x1a\n",   # PNG
    b"GIF87a", b"GIF89a",   # GIF
    b"BM",                  # BMP
)
_WEBP = (b"RIFF", b"WEBP")  # "RIFF" at 0, "WEBP" at 8
# DCT scale denominators libjpeg (tf.io.decode_jpeg's `ratio`) supports.
JPEG_RATIOS = (1, 2, 4, 8)


def _is_known_format(encoded: tf.Tensor) -> tf.Tensor:
    """Scalar bool: `encoded` starts with the signature of a decodable image format."""
    # Padded first: substr fails on a position past the end (payloads under 12 bytes).
    head = tf.strings.substr(encoded, 0, 12) + b"\0" * 12
    checks = [tf.equal(tf.strings.substr(head, 0, len(m)), m) for m in _MAGIC]
    checks.append(tf.logical_and(
        tf.equal(tf.strings.substr(head, 0, 4), _WEBP[0]),
        tf.equal(tf.strings.substr(head, 8, 4), _WEBP[1])))
    return tf.reduce_any(tf.stack(checks))


def is_jpeg(encoded: tf.Tensor) -> tf.Tensor:
    """Scalar bool: `encoded` starts with the JPEG signature."""
    return tf.equal(tf.strings.substr(encoded, 0, len(_MAGIC[0])), _MAGIC[0])


def jpeg_ratio(crop_hw: tf.Tensor, image_size: int) -> tf.Tensor:
    """The largest DCT scale denominator r in 1, 2, 4, 8 with both crop sides >= r * S.

    Decoding at 1/r then never needs upsampling to reach the S x S output.

    Args:
      crop_hw: int [2] crop (or image) height and width in source pixels.
      image_size: output side S in pixels.

    Returns:
      int32 scalar r.
    """
    side = tf.reduce_min(tf.cast(crop_hw, tf.int32))
    ratio = tf.constant(1, tf.int32)
    for r in JPEG_RATIOS[1:]:
        ratio = tf.where(side >= r * image_size, tf.constant(r, tf.int32), ratio)
    return ratio


def scaled_window(window: tf.Tensor, ratio: tf.Tensor, image_hw: tf.Tensor) -> tf.Tensor:
    """The smallest window of the image decoded at 1/`ratio` that covers `window`.

    libjpeg's image at 1/r is ceil(H / r) x ceil(W / r) and its pixel i holds source pixels
    [i * r, (i + 1) * r) (the last one partly padding when r does not divide the side).
    The returned window, multiplied by r, is the source-pixel region it shows: normalize
    boxes to that region (not to `window`) and they stay on the same content.

    Args:
      window: int [4] `[y0, x0, h, w]` in source pixels, inside the image.
      ratio: int scalar r (1, 2, 4 or 8).
      image_hw: int [2] source height and width.

    Returns:
      int32 [4] `[y0, x0, h, w]` in pixels of the 1/r image.
    """
    window = tf.cast(window, tf.int32)
    r = tf.cast(ratio, tf.int32)
    hw = tf.cast(image_hw, tf.int32)
    ceil_div = lambda a, b: -(-a // b)  # noqa: E731
    start = window[:2] // r
    end = tf.minimum(ceil_div(window[:2] + window[2:], r), ceil_div(hw, r))
    return tf.concat([start, end - start], axis=0)


def decode_jpeg_window(encoded: tf.Tensor, window: tf.Tensor, image_size: int):
    """Decodes the part of a JPEG covering `window`, DCT-scaled by `jpeg_ratio`.

    Args:
      encoded: scalar tf.string, JPEG bytes.
      window: int [4] `[y0, x0, h, w]` in source pixels (from `tf.image.extract_jpeg_shape`).
      image_size: output side S the caller resizes to.

    Returns:
      (uint8 [h', w', 3] image, float32 [4] `[y0, x0, h, w]`: the source-pixel region the
      image shows, for `augment.crop_boxes`).
    """
    image_hw = tf.image.extract_jpeg_shape(encoded)[:2]
    ratio = jpeg_ratio(tf.cast(window, tf.int32)[2:], image_size)
    scaled = scaled_window(window, ratio, image_hw)
    branches = [lambda r=r: tf.io.decode_and_crop_jpeg(encoded, scaled, channels=3, ratio=r)
                for r in JPEG_RATIOS]
    # `ratio` is an op attribute, not an input: one branch per value.
    index = tf.argmax(tf.cast(tf.equal(JPEG_RATIOS, ratio), tf.int32), output_type=tf.int32)
    image = tf.switch_case(index, branches)
    image.set_shape([None, None, 3])
    return image, tf.cast(scaled * ratio, tf.float32)


def decode_image(encoded: tf.Tensor, context: tf.Tensor | str | None = None) -> tf.Tensor:
    """Decodes JPEG/PNG (also GIF/BMP/WebP) bytes to 8-bit RGB.

    Args:
      encoded: scalar tf.string, the file bytes.
      context: optional scalar string (e.g. the record's file name) added to the error
        message when the bytes are not an image.

    Returns:
      uint8 tensor [H, W, 3].

    Raises:
      tf.errors.InvalidArgumentError: the bytes are not an image of a known format
        (message starts with "decode_image:") or are a damaged image (TF's own message).
    """
    encoded = tf.convert_to_tensor(encoded, tf.string)
    where = context if isinstance(context, tf.Tensor) else tf.constant(context or "", tf.string)
    # tf.debugging.Assert raises InvalidArgumentError, the same class as the decode op.
    check = tf.debugging.Assert(
        _is_known_format(encoded),
        ["decode_image: input is not a JPEG/PNG/GIF/BMP/WebP image", where,
         "length", tf.strings.length(encoded), "first bytes",
         tf.strings.substr(encoded, 0, 8, unit="BYTE")],
        summarize=8)
    with tf.control_dependencies([check]):
        image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize_image(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resizes to a square `image_size` x `image_size`, ignoring the aspect ratio.

    Not keeping the aspect ratio means normalized boxes are unchanged by the resize.
    Bilinear with antialiasing: when shrinking (a 640 px COCO photo to 224) plain
    bilinear aliases fine texture; when enlarging antialias makes no difference (so the
    faster plain op runs then).

    Args:
      image: [H, W, 3] (or [B, H, W, 3]) uint8 or float in [0, 255].
      image_size: output side S in pixels (positive int).

    Returns:
      float32 [S, S, 3] (or [B, S, S, 3]) with values in [0, 255].
    """
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        # uint8 goes in as is: the resize kernel computes in float32 either way (same
        # result, checked in tests), and a float copy of a full photo costs time.
        image = tf.cast(image, tf.float32)
    size = [image_size, image_size]
    hw = tf.shape(image)[-3:-1]
    # Antialiasing only widens the kernel along sides that shrink; when neither does, the
    # antialiased kernel is plain bilinear (same values to float rounding, ~1e-5 on the
    # 0..255 scale, tested), and the plain bilinear op is about twice as fast.
    resized = tf.cond(tf.reduce_any(hw > image_size),
                      lambda: tf.image.resize(image, size, method="bilinear", antialias=True),
                      lambda: tf.image.resize(image, size, method="bilinear"))
    # The triangle kernel has non-negative weights, so values stay in range; the clip only
    # removes float rounding above 255.
    return tf.clip_by_value(resized, 0.0, 255.0)
