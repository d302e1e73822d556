"""EXIF orientation: phones store pixels unrotated plus a tag; labels and people see the
displayed (rotated) frame. `upright(encoded)` gives the bytes of the displayed image."""

from __future__ import annotations

import io

import numpy as np
import tensorflow as tf

# EXIF orientation (tag 0x0112) -> numpy steps giving the displayed image from the stored
# [H, W, 3] pixels, as Pillow's ImageOps.exif_transpose (FLIP_LEFT_RIGHT, ROTATE_180,
# FLIP_TOP_BOTTOM, TRANSPOSE, ROTATE_270, TRANSVERSE, ROTATE_90).
_ORIENTATIONS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def exif_orientation(encoded: bytes) -> int:
    """The EXIF orientation (1..8) of image bytes; 1 when absent or unreadable.

    Reads the header only (Pillow opens lazily).
    """
    import warnings  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # huge images: refused later by the model
            with Image.open(io.BytesIO(encoded)) as image:
                orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 (not an image, damaged EXIF: scored as stored)
        return 1
    return orientation if orientation in _ORIENTATIONS else 1


def upright(encoded: bytes) -> bytes:
    """Image bytes with their EXIF orientation applied (PNG), or unchanged.

    Decoded by the serving code's own `decode_image`, so the pixels are those the
    model would see, only turned; re-encoded as PNG, which is lossless. Bytes that do
    not decode are returned unchanged (the model then reports what is wrong).
    """
    orientation = exif_orientation(encoded)
    if orientation == 1:
        return encoded
    from scdnn_tf.data.preprocess import decode_image  # noqa: PLC0415
    from scdnn_tf.data.image_headers import DEFAULT_MAX_PIXELS, header_pixels  # noqa: PLC0415

    try:
        if not 0 <= int(header_pixels(encoded)) <= DEFAULT_MAX_PIXELS:
            return encoded  # refused by the model from its header, never decoded here
        pixels = decode_image(encoded).numpy()
    except tf.errors.OpError:
        return encoded
    turned = np.ascontiguousarray(_ORIENTATIONS[orientation](pixels))
    return tf.io.encode_png(turned).numpy()
