"""Training augmentation that keeps boxes right: scale-crop, flip, colour jitter.

Pure functions on one image. Randomness is stateless: every random function takes a
`seed` tensor of shape [2] (int32/int64), so a given seed always gives the same result
and the pipeline controls determinism by the seeds it feeds in.

Boxes are `[ymin, xmin, ymax, xmax]` normalized to the image, with the box edge at
pixel coordinate `y * H` (so a crop of pixel rows `[y0, y0 + h)` maps `y` to
`(y * H - y0) / h`, and a later resize that ignores the aspect ratio keeps them valid).

Crop rule for boxes (`crop_image_and_boxes`): a box is kept when at least
`min_visible` (default 0.5) of its area lies inside the crop window; kept boxes are
clipped to the window. A zero-area box is kept when its centre is inside the window.
The caller filters the per-box data (classes, flags) with the returned `keep` mask and
recomputes image labels from what remains (see `pipeline.labels_from_objects`).
"""

from __future__ import annotations

import tensorflow as tf

from scdnn_tf.data import preprocess

MIN_VISIBLE_FRACTION = 0.5


def flip_left_right(image: tf.Tensor, boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mirrors the image horizontally and the boxes with it.

    Args:
      image: [H, W, 3] any dtype.
      boxes: [N, 4] normalized yxyx.

    Returns:
      (image [H, W, 3], boxes [N, 4]) with `xmin' = 1 - xmax`, `xmax' = 1 - xmin`.
    """
    ymin, xmin, ymax, xmax = tf.unstack(boxes, num=4, axis=-1)
    flipped = tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1)
    return tf.image.flip_left_right(image), flipped


def random_flip(image, boxes, seed) -> tuple[tf.Tensor, tf.Tensor]:
    """`flip_left_right` with probability 0.5 (stateless, `seed` [2])."""
    do_flip = tf.random.stateless_uniform([], seed) < 0.5
    return tf.cond(do_flip, lambda: flip_left_right(image, boxes), lambda: (image, boxes))


def sample_crop_window(height, width, scale_range, seed) -> tf.Tensor:
    """Draws a crop window: side fraction `s ~ U(scale_range)` of each side, uniform offset.

    The same fraction is used for height and width (the crop has the image's aspect
    ratio; the resize to a square happens afterwards anyway).

    Args:
      height, width: image size in pixels (scalar int tensors).
      scale_range: (low, high) with 0 < low <= high <= 1.
      seed: [2] stateless seed.

    Returns:
      int32 [4]: `[y0, x0, crop_height, crop_width]` in pixels, inside the image.
    """
    low, high = scale_range
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"scale_range must satisfy 0 < low <= high <= 1, got {scale_range!r}")
    s_seed, y_seed, x_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    scale = tf.random.stateless_uniform([], s_seed, minval=low, maxval=high)
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    ch = tf.clip_by_value(tf.cast(tf.round(scale * h), tf.int32), 1, tf.cast(height, tf.int32))
    cw = tf.clip_by_value(tf.cast(tf.round(scale * w), tf.int32), 1, tf.cast(width, tf.int32))
    # maxval is exclusive: offsets 0..H-ch inclusive.
    y0 = tf.random.stateless_uniform([], y_seed, 0, tf.cast(height, tf.int32) - ch + 1, tf.int32)
    x0 = tf.random.stateless_uniform([], x_seed, 0, tf.cast(width, tf.int32) - cw + 1, tf.int32)
    return tf.stack([y0, x0, ch, cw])


def crop_boxes(boxes, image_hw, window, min_visible=MIN_VISIBLE_FRACTION):
    """Re-expresses boxes in a crop window (the box half of `crop_image_and_boxes`).

    Args:
      boxes: [N, 4] normalized yxyx in the full image.
      image_hw: [2] full image height and width in pixels.
      window: [4] `[y0, x0, crop_height, crop_width]` in pixels of the full image (float
        allowed: the region a DCT-scaled decode shows can reach past the image edge).
      min_visible: minimum fraction of a box's area inside the window to keep it.

    Returns:
      (boxes [N, 4] normalized to the window and clipped to [0, 1], keep [N] bool).
    """
    hw = tf.cast(image_hw, tf.float32)
    window = tf.cast(window, tf.float32)
    offset = tf.concat([window[:2], window[:2]], axis=0)
    size = tf.concat([window[2:], window[2:]], axis=0)
    # Everything in pixels of the full image first, then normalized to the crop.
    pix = boxes * tf.concat([hw, hw], axis=0)
    clipped = tf.clip_by_value(pix - offset, 0.0, size)
    area = (pix[:, 2] - pix[:, 0]) * (pix[:, 3] - pix[:, 1])
    inter = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    centre = (pix[:, :2] + pix[:, 2:]) / 2.0 - offset[:2]
    centre_inside = tf.reduce_all((centre >= 0.0) & (centre <= size[:2]), axis=-1)
    keep = tf.where(area > 0.0, inter >= min_visible * area, centre_inside)
    return clipped / size, keep


def crop_image_and_boxes(image, boxes, window, min_visible=MIN_VISIBLE_FRACTION):
    """Crops the image to `window` and re-expresses the boxes in the crop.

    Args:
      image: [H, W, 3].
      boxes: [N, 4] normalized yxyx in the full image.
      window: int [4] `[y0, x0, crop_height, crop_width]` in pixels.
      min_visible: minimum fraction of a box's area inside the window to keep it.

    Returns:
      (image [h, w, 3], boxes [N, 4] normalized to the crop and clipped to [0, 1],
       keep [N] bool). Boxes with `keep == False` should be discarded by the caller.
    """
    y0, x0, ch, cw = tf.unstack(window, num=4)
    cropped = tf.image.crop_to_bounding_box(image, y0, x0, ch, cw)
    boxes, keep = crop_boxes(boxes, tf.shape(image)[:2], window, min_visible)
    return cropped, boxes, keep


def color_jitter(image, seed, brightness=32.0, contrast=(0.8, 1.25), saturation=(0.8, 1.25),
                 hue=0.04) -> tf.Tensor:
    """Random brightness, contrast, saturation and hue (tf.image, stateless).

    Args:
      image: [H, W, 3] uint8 or float in [0, 255].
      seed: [2] stateless seed.
      brightness: max additive change in pixel units (0..255 scale).
      contrast, saturation: (low, high) multiplicative factor ranges.
      hue: max hue rotation as a fraction of the colour wheel (<= 0.5).

    Returns:
      float32 [H, W, 3] in [0, 255].
    """
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    # tf.image's hue/saturation ops assume floats in [0, 1].
    x = tf.cast(image, tf.float32) / 255.0
    x = tf.image.stateless_random_brightness(x, brightness / 255.0, seeds[0])
    x = tf.image.stateless_random_contrast(x, contrast[0], contrast[1], seeds[1])
    x = tf.clip_by_value(x, 0.0, 1.0)
    x = tf.image.stateless_random_saturation(x, saturation[0], saturation[1], seeds[2])
    x = tf.image.stateless_random_hue(x, hue, seeds[3])
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def decode_and_augment(encoded, boxes, seed, image_size, scale_range=(0.5, 1.0), crop=True,
                       jitter=False, context=None, extra_fn=None):
    """Decodes and augments one training image: scale-crop, flip, resize, colour jitter.

    The crop window is drawn from the image size alone, so a JPEG is decoded only inside
    the window and DCT-scaled when the output allows it (`preprocess.decode_jpeg_window`);
    other formats are decoded whole and cropped. Colour jitter runs on the S x S output.

    The caller decides `crop` per image: the pipeline turns it off for images whose
    labels are not all backed by boxes (labels-only records), since a crop could cut
    an object out of view without the label knowing.

    Args:
      encoded: scalar tf.string, the image file bytes.
      boxes: [N, 4] normalized yxyx.
      seed: [2] stateless seed.
      image_size: output side S in pixels.
      scale_range: side-fraction range of the crop.
      crop: scalar bool (Python or tensor).
      jitter: Python bool.
      context: optional scalar string naming the record, for decode errors.
      extra_fn: optional fn(image, boxes, seed, geometric, image_size) -> (image [S, S, 3],
        boxes, keep) that takes over the resize of the flipped crop, before colour jitter
        (RandAugment and Cutout: `randaugment.make_augmenter`); `geometric` is `crop`; its
        seed is derived from `seed` apart from the other draws.

    Returns:
      (image [S, S, 3] float32 in [0, 255], boxes [N, 4], keep [N] bool).
    """
    flip_seed, crop_seed, color_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))

    def window_for(image_hw):
        return tf.cond(tf.convert_to_tensor(crop),
                       lambda: sample_crop_window(image_hw[0], image_hw[1], scale_range,
                                                  crop_seed),
                       lambda: tf.stack([0, 0, image_hw[0], image_hw[1]]))

    def jpeg():
        image_hw = tf.image.extract_jpeg_shape(encoded)[:2]
        image, region = preprocess.decode_jpeg_window(encoded, window_for(image_hw), image_size)
        return image, region, image_hw

    def other():
        image = preprocess.decode_image(encoded, context=context)
        image_hw = tf.shape(image)[:2]
        window = window_for(image_hw)
        image = tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])
        return image, tf.cast(window, tf.float32), image_hw

    image, region, image_hw = tf.cond(preprocess.is_jpeg(encoded), jpeg, other)
    boxes, keep = crop_boxes(boxes, image_hw, region)
    # Flipping the uint8 crop moves fewer bytes than flipping the float32 output.
    image, boxes = random_flip(image, boxes, flip_seed)
    if extra_fn is None:
        image = preprocess.resize_image(image, image_size)
    else:
        extra_seed = tf.random.experimental.stateless_fold_in(seed, 1)
        image, boxes, kept = extra_fn(image, boxes, extra_seed, tf.convert_to_tensor(crop),
                                      image_size)
        keep = keep & kept
    if jitter:
        image = color_jitter(image, color_seed)
    return image, boxes, keep
