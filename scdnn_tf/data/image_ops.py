"""Image operations of RandAugment on float32 [H, W, 3] images with values in [0, 255].

Photometric ops follow PIL's definitions (ImageOps, ImageEnhance) on the 0..255 scale.
Geometric ops are 3x3 forward maps of continuous pixel coordinates (x, y), where pixel
(row i, column j) covers [j, j + 1) x [i, i + 1), so a normalized box coordinate y is
the pixel coordinate y * H: `transform_image` warps the image by such a map and
`transform_boxes` moves boxes with it under the random crop's keep-and-clip rule.
"""

from __future__ import annotations

import tensorflow as tf

from scdnn_tf.data.augment import MIN_VISIBLE_FRACTION, crop_boxes

FILL = 128  # grey: the value of pixels a geometric op uncovers
INTERPOLATION = "BILINEAR"  # of the geometric ops (ImageProjectiveTransformV3)


# ---- photometric ops: float32 [H, W, 3] in [0, 255] -> the same ----
# The image is the resized training image (float32, values 0..255); the ops follow
# PIL's definitions on that scale, with the 0..255 levels for equalize and posterize.

def blend(degenerate, image, factor):
    """PIL ImageEnhance: degenerate + factor * (image - degenerate), clipped to 0..255."""
    return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0)


def _gray(x):
    """ITU-R 601-2 luma of RGB [H, W, 3] -> [H, W, 1] (PIL's "L")."""
    return tf.tensordot(x, tf.constant([[0.299], [0.587], [0.114]]), 1)


def autocontrast(image):
    """Stretches each channel to the full 0..255 range (a flat channel is unchanged)."""
    lo = tf.reduce_min(image, axis=[0, 1])
    hi = tf.reduce_max(image, axis=[0, 1])
    spread = hi > lo
    scale = tf.where(spread, 255.0 / tf.where(spread, hi - lo, 1.0), 1.0)
    return (image - tf.where(spread, lo, 0.0)) * scale


def equalize(image):
    """Histogram equalization per channel of the 0..255 levels, PIL's rule."""
    ids = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.int32) + [0, 256, 512]
    hist = tf.reshape(tf.math.bincount(ids, minlength=768, maxlength=768), [3, 256])
    # PIL: step = (count - count of the last non-empty bin) // 255; identity if 0.
    last_bin = 255 - tf.argmax(tf.reverse(tf.cast(hist > 0, tf.int32), [1]), axis=1,
                               output_type=tf.int32)
    last = tf.gather(hist, last_bin, batch_dims=1)
    step = (tf.reduce_sum(hist, axis=1) - last) // 255
    safe_step = tf.maximum(step, 1)[:, tf.newaxis]
    lut = tf.minimum((safe_step // 2 + tf.cumsum(hist, axis=1, exclusive=True)) // safe_step,
                     255)
    lut = tf.where((step > 0)[:, tf.newaxis], lut, tf.range(256)[tf.newaxis])
    return tf.gather(tf.cast(tf.reshape(lut, [-1]), tf.float32), ids)


def posterize(image, bits: int):
    """Keeps the `bits` (1..8) most significant bits of each level."""
    step = float(2 ** (8 - bits))
    return tf.floor(image / step) * step


# Masks as 0/1 factors rather than tf.where: the select kernel is several times slower
# on whole images.

def solarize(image, threshold):
    """Inverts the values >= threshold."""
    return image + tf.cast(image >= threshold, tf.float32) * (255.0 - 2.0 * image)


def solarize_add(image, addition, threshold=128.0):
    """Adds `addition` to the values below `threshold` (saturating at 255)."""
    return image + tf.cast(image < threshold, tf.float32) * tf.minimum(addition, 255.0 - image)


def color(image, factor):
    """Saturation: blend with the grey image."""
    return blend(_gray(image), image, factor)


def contrast(image, factor):
    """Contrast: blend with the mean grey level."""
    return blend(tf.reduce_mean(_gray(image)), image, factor)


def brightness(image, factor):
    """Brightness: blend with black."""
    return tf.clip_by_value(image * factor, 0.0, 255.0)


def sharpness(image, factor):
    """Sharpness: blend with PIL's SMOOTH filter (3x3, centre 5, others 1; /13) of the
    image, whose one-pixel border stays as it is."""
    rows = image[:-2] + image[1:-1] + image[2:]            # separable 3x3 box sum
    box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
    centre = image[1:-1, 1:-1]
    smooth = (box + 4.0 * centre) / 13.0
    degenerate = image + tf.pad(smooth - centre, [[1, 1], [1, 1], [0, 0]])
    return blend(degenerate, image, factor)


# ---- geometric ops: a forward map of continuous pixel coordinates (x, y) ----

def affine_matrix(linear, shift, height, width):
    """[3, 3] map v -> A (v - c) + c + shift of (x, y) pixel coordinates, c the centre.

    Continuous coordinates: pixel (row i, column j) covers [j, j + 1) x [i, i + 1), so
    a normalized box coordinate y is the pixel coordinate y * H.
    """
    linear = tf.cast(tf.convert_to_tensor(linear), tf.float32)
    centre = tf.stack([tf.cast(width, tf.float32), tf.cast(height, tf.float32)]) / 2.0
    offset = centre - tf.linalg.matvec(linear, centre) + tf.cast(shift, tf.float32)
    top = tf.concat([linear, offset[:, tf.newaxis]], axis=1)
    return tf.concat([top, [[0.0, 0.0, 1.0]]], axis=0)


def transform_image(image, matrix, fill=FILL, output_size=None):
    """Warps [H, W, 3] by the forward map `matrix` (bilinear, constant fill) -> float32.

    Args:
      image: [H, W, 3] values in [0, 255].
      matrix: [3, 3] forward map in the output frame's pixel coordinates.
      fill: the value of uncovered pixels.
      output_size: None (the input size) or S: the output is S x S, the input stretched
        onto it (a resize and the warp in one bilinear resampling).
    """
    image = tf.cast(image, tf.float32)
    in_hw = tf.cast(tf.shape(image)[:2], tf.float32)
    out_shape = tf.shape(image)[:2] if output_size is None else tf.constant([output_size] * 2)
    out_hw = tf.cast(out_shape, tf.float32)
    stretch = tf.linalg.diag(tf.stack([in_hw[1] / out_hw[1], in_hw[0] / out_hw[0], 1.0]))
    # The op takes the output -> input map in pixel-index coordinates (centre of
    # pixel (i, j) at (j, i)): index = continuous - 0.5.
    to_index = tf.constant([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    from_index = tf.constant([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    inverse = to_index @ stretch @ tf.linalg.inv(matrix) @ from_index
    params = tf.reshape(inverse / inverse[2, 2], [-1])[:8]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis], transforms=params[tf.newaxis], output_shape=out_shape,
        fill_value=float(fill), interpolation=INTERPOLATION, fill_mode="CONSTANT")
    return out[0]


def transform_boxes(boxes, matrix, height, width, min_visible=MIN_VISIBLE_FRACTION):
    """Moves normalized yxyx boxes [N, 4] by `matrix`; -> (boxes clipped, keep [N]).

    The new box encloses the 4 mapped corners; the crop rule then clips it to the image
    and keeps it when at least `min_visible` of its area is inside.
    """
    hw = tf.cast(tf.stack([height, width]), tf.float32)
    pix = tf.reshape(boxes * tf.concat([hw, hw], 0), [-1, 2, 2])  # [N, (min, max), (y, x)]
    ys, xs = pix[:, :, 0], pix[:, :, 1]
    corners_x = tf.stack([xs[:, 0], xs[:, 1], xs[:, 0], xs[:, 1]], axis=1)
    corners_y = tf.stack([ys[:, 0], ys[:, 0], ys[:, 1], ys[:, 1]], axis=1)
    points = tf.stack([corners_x, corners_y, tf.ones_like(corners_x)], axis=-1)  # [N, 4, 3]
    mapped = tf.einsum("ij,nkj->nki", matrix, points)
    x, y = mapped[..., 0] / mapped[..., 2], mapped[..., 1] / mapped[..., 2]
    moved = tf.stack([tf.reduce_min(y, 1), tf.reduce_min(x, 1), tf.reduce_max(y, 1),
                      tf.reduce_max(x, 1)], axis=1) / tf.concat([hw, hw], 0)
    window = tf.stack([0.0, 0.0, hw[0], hw[1]])
    return crop_boxes(moved, tf.cast(hw, tf.int32), window, min_visible)
