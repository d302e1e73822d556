"""RandAugment and Cutout on the training image, with the boxes kept right.

The pipeline applies them to the resized training image (float32, values 0..255: the
decoded photo after crop, flip and resize), where each op costs the least pixels.

RandAugment (Cubuk et al. 2020) applies `num_ops` operations drawn uniformly from `OPS`,
each at one strength set by the magnitude M in [0, 10] (m = M / 10):

- geometric (the boxes move): rotate by +-30m degrees, shear_x / shear_y by +-0.3m,
  translate_x / translate_y by +-0.45m of the side; all about the image centre,
  bilinear, uncovered pixels filled with grey (`FILL`);
- photometric (the boxes stay): autocontrast, equalize, invert, posterize (8 - 4m bits
  kept), solarize (threshold 256 - 256m), solarize_add (+110m below 128), and the
  enhancements color, contrast, brightness, sharpness (factor 1 +- 0.9m), as in PIL.

The sign of each signed strength is random. A geometric op maps the 4 corners of each
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

from scdnn_tf.data.augment import MIN_VISIBLE_FRACTION, crop_boxes

FILL = 128
INTERPOLATION = "BILINEAR"  # of the geometric ops (ImageProjectiveTransformV3)
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


def solarize(image, threshold):
    """Inverts the values >= threshold."""
    return tf.where(image >= threshold, 255.0 - image, image)


def solarize_add(image, addition, threshold=128.0):
    """Adds `addition` to the values below `threshold` (saturating at 255)."""
    return tf.where(image < threshold, tf.minimum(image + addition, 255.0), image)


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


def transform_image(image, matrix, fill=FILL):
    """Warps float32 [H, W, 3] by the forward map `matrix` (bilinear, constant fill)."""
    # The op takes the output -> input map in pixel-index coordinates (centre of
    # pixel (i, j) at (j, i)): index = continuous - 0.5.
    to_index = tf.constant([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    from_index = tf.constant([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    inverse = to_index @ tf.linalg.inv(matrix) @ from_index
    params = tf.reshape(inverse / inverse[2, 2], [-1])[:8]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis], transforms=params[tf.newaxis],
        output_shape=tf.shape(image)[:2], fill_value=float(fill), interpolation=INTERPOLATION,
        fill_mode="CONSTANT")
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


def randaugment(image, boxes, seed, num_ops, magnitude, geometric=True,
                min_visible=MIN_VISIBLE_FRACTION):
    """`num_ops` ops drawn uniformly from OPS, applied in turn at magnitude M.

    Args:
      image: [H, W, 3] with values in [0, 255] (computed in float32).
      boxes: [N, 4] normalized yxyx.
      seed: [2] stateless seed.
      num_ops, magnitude: N and M (see `check_randaugment`).
      geometric: scalar bool (Python or tensor); False turns a drawn geometric op into
        the identity (for images whose labels are not all backed by boxes).
      min_visible: the crop rule's visible fraction for moved boxes.

    Returns:
      (image float32 [H, W, 3], boxes [N, 4], keep [N] bool: False for dropped boxes).
    """
    check_randaugment(num_ops, magnitude)
    image = tf.cast(image, tf.float32)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    keep = tf.ones(tf.shape(boxes)[:1], tf.bool)
    geometric = tf.convert_to_tensor(geometric)
    op_seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num_ops)) if num_ops else []
    for op_seed in op_seeds:
        index_seed, sign_seed = tf.unstack(tf.random.experimental.stateless_split(op_seed, 2))
        index = tf.random.stateless_uniform([], index_seed, 0, len(OPS), tf.int32)
        sign = tf.where(tf.random.stateless_uniform([], sign_seed) < 0.5, -1.0, 1.0)

        def branch(op, image=image, boxes=boxes, sign=sign):
            def run():
                return apply_op(op, image, boxes, magnitude, sign, min_visible)
            if op in PHOTOMETRIC:
                return run
            identity = (image, boxes, tf.ones(tf.shape(boxes)[:1], tf.bool))
            return lambda: tf.cond(geometric, run, lambda: identity)

        image, boxes, kept = tf.switch_case(index, [branch(op) for op in OPS])
        image = tf.ensure_shape(image, [None, None, 3])
        keep = keep & kept
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
    rows = tf.range(hw[0])[:, tf.newaxis]
    cols = tf.range(hw[1])[tf.newaxis, :]
    hole = (rows >= lo[0]) & (rows < hi[0]) & (cols >= lo[1]) & (cols < hi[1])
    return tf.where(hole[..., tf.newaxis], tf.cast(fill, image.dtype), image)


def make_augmenter(randaugment_spec=None, cutout_fraction=0.0,
                   min_visible=MIN_VISIBLE_FRACTION):
    """fn(image, boxes, seed, geometric) -> (image float32, boxes, keep), or None if off.

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

    def augmenter(image, boxes, seed, geometric=True):
        ra_seed, cut_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        keep = tf.ones(tf.shape(boxes)[:1], tf.bool)
        image = tf.cast(image, tf.float32)
        if num_ops:
            image, boxes, keep = randaugment(image, boxes, ra_seed, num_ops,
                                             randaugment_spec[1], geometric, min_visible)
        if cutout_fraction:
            image = cutout(image, cutout_fraction, cut_seed)
        return image, boxes, keep

    return augmenter
