"""RandAugment and Cutout on the training image, with the boxes kept right.

The pipeline hands them the decoded, cropped and flipped uint8 image and lets them do its
resize to S x S: the drawn geometric ops are composed into one warp that also resizes
(one bilinear resampling), the other ops then run on the S x S float32 image (0..255).

RandAugment (Cubuk et al. 2020) applies `num_ops` operations drawn uniformly from `OPS`,
each at one strength set by the magnitude M in [0, 10] (m = M / 10):

- geometric (the boxes move): rotate by +-30m degrees, shear_x / shear_y by +-0.3m,
  translate_x / translate_y by +-0.45m of the side; all about the image centre,
  bilinear, uncovered pixels filled with grey (`FILL`);
- photometric (the boxes stay): autocontrast, equalize, invert, posterize (8 - 4m bits
  kept), solarize (threshold 256 - 256m), solarize_add (+110m below 128), and the
  enhancements color, contrast, brightness, sharpness (factor 1 +- 0.9m), as in PIL.

The sign of each signed strength is random. A geometric map moves the 4 corners of each
box, takes their enclosing axis-aligned box and then applies the random crop's rule
(`augment.crop_boxes` with the whole image as window): a box keeps its place when at
least `min_visible` of its area stays in the image and is clipped to it; otherwise its
`keep` entry turns False (the caller drops it with its class, as for the crop).

Cutout (DeVries and Taylor 2017, as in ASL) greys out one rectangle of FRACTION times
the image height and width, centred at a uniform random pixel and clipped to the image.
It never changes boxes or labels.

Randomness is stateless: every function takes a `seed` [2], so a seed gives one result.
"""

from __future__ import annotations

import math

import tensorflow as tf

from scdnn_tf.data import preprocess
from scdnn_tf.data.augment import MIN_VISIBLE_FRACTION
from scdnn_tf.data.image_ops import (FILL, affine_matrix, autocontrast, brightness, color,
                                     contrast, equalize, posterize, sharpness, solarize,
                                     solarize_add, transform_boxes, transform_image)

MAX_MAGNITUDE = 10.0
PHOTOMETRIC = ("autocontrast", "equalize", "invert", "posterize", "solarize", "solarize_add",
               "color", "contrast", "brightness", "sharpness")
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
OPS = PHOTOMETRIC + GEOMETRIC
_MAX_ROTATE, _MAX_SHEAR, _MAX_TRANSLATE, _MAX_ENHANCE = 30.0, 0.3, 0.45, 0.9


def parse_randaugment(text: str, flag: str = "--randaugment"):
    """Parses "N,M" (ops per image, magnitude 0..10) -> (N, M), or None for "" / N = 0."""
    parts = [p.strip() for p in str(text).split(",")] if str(text).strip() else []
    if not parts:
        return None
    try:
        if len(parts) != 2:
            raise ValueError
        num_ops, magnitude = int(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"{flag} must be N,M (ops per image, magnitude), got {text!r}") from None
    check_randaugment(num_ops, magnitude, flag)
    return (num_ops, magnitude) if num_ops else None


def check_randaugment(num_ops, magnitude, flag="randaugment") -> None:
    """ValueError unless 0 <= num_ops <= 10 (an int) and 0 <= magnitude <= 10."""
    if isinstance(num_ops, bool) or not isinstance(num_ops, int) or not 0 <= num_ops <= 10:
        raise ValueError(f"{flag}: N (ops per image) must be an int in 0..10, got {num_ops!r}")
    if not (isinstance(magnitude, (int, float)) and 0.0 <= magnitude <= MAX_MAGNITUDE):
        raise ValueError(f"{flag}: M (magnitude) must be in [0, {MAX_MAGNITUDE:g}], "
                         f"got {magnitude!r}")


def check_cutout(fraction, flag="cutout") -> None:
    """ValueError unless 0 <= fraction < 1 (0 = no cutout)."""
    if not (isinstance(fraction, (int, float)) and 0.0 <= fraction < 1.0):
        raise ValueError(f"{flag} must be a fraction in [0, 1), got {fraction!r}")


def geometric_matrix(op: str, strength, height, width):
    """The forward [3, 3] matrix of a geometric op at a signed strength (see OPS)."""
    s = tf.cast(strength, tf.float32)
    zero, one = tf.zeros([]), tf.ones([])
    if op == "rotate":
        a = s * (math.pi / 180.0)
        linear = [[tf.cos(a), -tf.sin(a)], [tf.sin(a), tf.cos(a)]]
    elif op == "shear_x":
        linear = [[one, s], [zero, one]]
    elif op == "shear_y":
        linear = [[one, zero], [s, one]]
    else:
        linear = [[one, zero], [zero, one]]
    shift = tf.zeros([2])
    if op == "translate_x":
        shift = tf.stack([s * tf.cast(width, tf.float32), zero])
    elif op == "translate_y":
        shift = tf.stack([zero, s * tf.cast(height, tf.float32)])
    elif op not in GEOMETRIC:
        raise ValueError(f"not a geometric op: {op!r} (one of {GEOMETRIC})")
    return affine_matrix(tf.stack([tf.stack(r) for r in linear]), shift, height, width)


# ---- RandAugment and Cutout ----

def _photometric(op: str, image, m: float, sign):
    if op == "autocontrast":
        return autocontrast(image)
    if op == "equalize":
        return equalize(image)
    if op == "invert":
        return 255.0 - image
    if op == "posterize":
        return posterize(image, 8 - int(round(4 * m)))
    if op == "solarize":
        return solarize(image, 256.0 - 256.0 * m)
    if op == "solarize_add":
        return solarize_add(image, 110.0 * m)
    enhance = {"color": color, "contrast": contrast, "brightness": brightness,
               "sharpness": sharpness}[op]
    return enhance(image, 1.0 + sign * _MAX_ENHANCE * m)


def _geometric_strength(op: str, m: float, sign):
    top = {"rotate": _MAX_ROTATE, "shear_x": _MAX_SHEAR, "shear_y": _MAX_SHEAR}
    return sign * top.get(op, _MAX_TRANSLATE) * m


def apply_op(op: str, image, boxes, magnitude, sign, min_visible=MIN_VISIBLE_FRACTION):
    """One op at magnitude M (0..10) and sign (+-1): (image, boxes, keep [N] bool)."""
    m = float(magnitude) / MAX_MAGNITUDE
    image = tf.cast(image, tf.float32)
    keep = tf.ones(tf.shape(boxes)[:1], tf.bool)
    if op in PHOTOMETRIC:
        return _photometric(op, image, m, sign), boxes, keep
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    matrix = geometric_matrix(op, _geometric_strength(op, m, sign), height, width)
    moved, keep = transform_boxes(boxes, matrix, height, width, min_visible)
    return transform_image(image, matrix), moved, keep


def draw_ops(seed, num_ops, geometric=True):
    """The ops of one image: (indices [N] int32 into OPS, signs [N] float32 +-1).

    `geometric` False (scalar bool) turns drawn geometric ops into `len(OPS)`: none.
    """
    indices, signs = [], []
    op_seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num_ops)) if num_ops else []
    for op_seed in op_seeds:
        index_seed, sign_seed = tf.unstack(tf.random.experimental.stateless_split(op_seed, 2))
        index = tf.random.stateless_uniform([], index_seed, 0, len(OPS), tf.int32)
        allowed = tf.convert_to_tensor(geometric) | (index < len(PHOTOMETRIC))
        indices.append(tf.where(allowed, index, len(OPS)))
        signs.append(tf.where(tf.random.stateless_uniform([], sign_seed) < 0.5, -1.0, 1.0))
    return indices, signs


def composite_matrix(indices, signs, magnitude, height, width):
    """The product, in drawn order, of the drawn geometric ops' [3, 3] matrices."""
    m = float(magnitude) / MAX_MAGNITUDE
    matrix = tf.eye(3)
    for index, sign in zip(indices, signs):
        def branch(op, sign=sign):
            if op not in GEOMETRIC:
                return lambda: tf.eye(3)
            return lambda: geometric_matrix(op, _geometric_strength(op, m, sign), height, width)
        step = tf.switch_case(index, [branch(op) for op in OPS] + [lambda: tf.eye(3)])
        matrix = tf.ensure_shape(step, [3, 3]) @ matrix
    return matrix


def randaugment(image, boxes, seed, num_ops, magnitude, geometric=True,
                min_visible=MIN_VISIBLE_FRACTION, output_size=None):
    """`num_ops` ops drawn uniformly from OPS at magnitude M.

    The drawn geometric ops are composed into one warp, applied first (one resampling
    instead of one per op); the boxes move by that composite map under the crop rule. The
    photometric ops then follow in drawn order.

    Args:
      image: [H, W, 3] with values in [0, 255].
      boxes: [N, 4] normalized yxyx.
      seed: [2] stateless seed.
      num_ops, magnitude: N and M (see `check_randaugment`).
      geometric: scalar bool (Python or tensor); False turns drawn geometric ops into
        no-ops (for images whose labels are not all backed by boxes).
      min_visible: the crop rule's visible fraction for moved boxes.
      output_size: None, or S to also resize the image to S x S: within the warp when a
        geometric op is drawn, else by `preprocess.resize_image` (the ops are defined in
        the S x S frame).

    Returns:
      (image float32 [H, W, 3] or [S, S, 3], boxes [N, 4], keep [N] bool: False for
      dropped boxes).
    """
    check_randaugment(num_ops, magnitude)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    indices, signs = draw_ops(seed, num_ops, geometric)
    out_hw = tf.shape(image)[:2] if output_size is None else tf.constant([output_size] * 2)
    matrix = composite_matrix(indices, signs, magnitude, out_hw[0], out_hw[1])
    warped = tf.reduce_any(tf.stack([(i >= len(PHOTOMETRIC)) & (i < len(OPS)) for i in indices]
                                    or [tf.constant(False)]))
    moved, keep = transform_boxes(boxes, matrix, out_hw[0], out_hw[1], min_visible)
    boxes = tf.where(warped, moved, boxes)
    keep = keep | ~warped

    def plain():
        if output_size is None:
            return tf.cast(image, tf.float32)
        return preprocess.resize_image(image, output_size)

    image = tf.cond(warped, lambda: transform_image(image, matrix, output_size=output_size),
                    plain)
    m = float(magnitude) / MAX_MAGNITUDE
    for index, sign in zip(indices, signs):
        def branch(op, image=image, sign=sign):
            if op in GEOMETRIC:  # applied above
                return lambda: image
            return lambda: _photometric(op, image, m, sign)
        image = tf.switch_case(index, [branch(op) for op in OPS] + [lambda image=image: image])
    return image, boxes, keep


def cutout(image, fraction, seed, fill=FILL):
    """Fills one rectangle of `fraction` x (H, W), centred at a uniform pixel, with `fill`.

    Args:
      image: [H, W, 3] any dtype.
      fraction: side fraction in [0, 1) (0 = no hole).
      seed: [2] stateless seed.
      fill: the hole's value.

    Returns:
      The image with the hole (same dtype). Boxes and labels are not affected.
    """
    check_cutout(fraction)
    shape = tf.shape(image)
    hw = shape[:2]
    half = tf.cast(tf.round(fraction * tf.cast(hw, tf.float32)), tf.int32) // 2
    centre = tf.cast(tf.random.stateless_uniform([2], seed) * tf.cast(hw, tf.float32),
                     tf.int32)
    lo, hi = tf.maximum(centre - half, 0), tf.minimum(centre + half, hw)
    rows = tf.cast((tf.range(hw[0]) >= lo[0]) & (tf.range(hw[0]) < hi[0]), image.dtype)
    cols = tf.cast((tf.range(hw[1]) >= lo[1]) & (tf.range(hw[1]) < hi[1]), image.dtype)
    hole = (rows[:, tf.newaxis] * cols[tf.newaxis, :])[..., tf.newaxis]  # [H, W, 1] 0/1
    # A product rather than tf.where: the select kernel is several times slower here.
    return image * (1 - hole) + tf.cast(fill, image.dtype) * hole


def make_augmenter(randaugment_spec=None, cutout_fraction=0.0,
                   min_visible=MIN_VISIBLE_FRACTION):
    """fn(image, boxes, seed, geometric, output_size=None) -> (image float32, boxes, keep),
    or None if both are off. With `output_size` S the image is also resized to S x S (see
    `randaugment`).

    Args:
      randaugment_spec: None or (N, M).
      cutout_fraction: Cutout's side fraction (0 = off). Cutout runs after RandAugment.
      min_visible: the crop rule's visible fraction for boxes moved by geometric ops.
    """
    if randaugment_spec is not None:
        check_randaugment(*randaugment_spec)
    check_cutout(cutout_fraction)
    num_ops = randaugment_spec[0] if randaugment_spec else 0
    if not num_ops and not cutout_fraction:
        return None

    def augmenter(image, boxes, seed, geometric=True, output_size=None):
        ra_seed, cut_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        keep = tf.ones(tf.shape(boxes)[:1], tf.bool)
        if num_ops:
            image, boxes, keep = randaugment(image, boxes, ra_seed, num_ops,
                                             randaugment_spec[1], geometric, min_visible,
                                             output_size)
        elif output_size is not None:
            image = preprocess.resize_image(image, output_size)
        image = tf.cast(image, tf.float32)
        if cutout_fraction:
            image = cutout(image, cutout_fraction, cut_seed)
        return image, boxes, keep

    return augmenter
