"""Box arithmetic on `[ymin, xmin, ymax, xmax]` boxes.

All functions are pure, batched by broadcasting over leading dimensions, and
XLA-compatible. Boxes are normalized to [0, 1] unless a name says pixels.

Precision: every function casts its inputs to float32 and returns float32, even
when called with float16 / bfloat16 tensors under mixed precision. Box math
(log / exp of ratios, IoU of small boxes) loses too much in 16-bit floats, and
the cost is negligible next to the convolutions.

Aspect: because boxes are normalized, a "square" box in normalized units is
square in pixels only when the image is square. Images entering the model are
resized to S x S in this project (see `data/preprocess.py`), so normalized and
pixel aspect ratios coincide; on non-square images the encoding is still
consistent (the anchors are normalized the same way), only "aspect ratio"
names would refer to normalized units.
"""

import math

import tensorflow as tf

# Sizes below this (normalized units, ~1/1000 of a pixel at S=1000) are treated
# as this size in log/division, so that empty or degenerate boxes give finite
# values instead of -inf / NaN.
_EPS = 1e-6

# Largest allowed log size ratio in `decode_boxes` (as in Faster R-CNN /
# Detectron): stops exp() from overflowing on wild early-training deltas.
BBOX_XFORM_CLIP = math.log(1000.0 / 16.0)


def _f32(x):
    """Converts to a float32 tensor (casting 16-bit inputs up)."""
    x = tf.convert_to_tensor(x)
    return x if x.dtype == tf.float32 else tf.cast(x, tf.float32)


def _split(boxes):
    """Returns ymin, xmin, ymax, xmax, each [...], of float32 boxes [..., 4]."""
    return tf.unstack(_f32(boxes), num=4, axis=-1)


def _centre_size(boxes):
    """Returns (cy, cx, h, w) of boxes [..., 4]; sizes clamped at 0."""
    ymin, xmin, ymax, xmax = _split(boxes)
    h = tf.maximum(ymax - ymin, 0.0)
    w = tf.maximum(xmax - xmin, 0.0)
    return ymin + 0.5 * h, xmin + 0.5 * w, h, w


def _from_centre_size(cy, cx, h, w):
    """Inverse of `_centre_size`: returns boxes [..., 4]."""
    return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def box_area(boxes):
    """Area of boxes.

    Args:
      boxes: [..., 4] yxyx (any units). Inverted boxes (ymax < ymin) count as empty.

    Returns:
      float32 [...] areas (in the squared units of the input), >= 0.
    """
    _, _, h, w = _centre_size(boxes)
    return h * w


def iou(boxes1, boxes2):
    """Pairwise intersection-over-union.

    Args:
      boxes1: [..., N, 4] yxyx.
      boxes2: [..., M, 4] yxyx; leading dims must broadcast with those of boxes1
        (e.g. gt [B, M, 4] against anchors [A, 4]).

    Returns:
      float32 [..., N, M]. 0 when either box is empty (never NaN).

    Memory: the [..., N, M] intermediates are materialized (~3 live at once in
    graph mode, fused under XLA); for B=16, M=100, A=50k each is 320 MB.
    """
    y1a, x1a, y2a, x2a = [t[..., :, None] for t in _split(boxes1)]
    y1b, x1b, y2b, x2b = [t[..., None, :] for t in _split(boxes2)]
    ih = tf.maximum(tf.minimum(y2a, y2b) - tf.maximum(y1a, y1b), 0.0)
    iw = tf.maximum(tf.minimum(x2a, x2b) - tf.maximum(x1a, x1b), 0.0)
    inter = ih * iw
    union = box_area(boxes1)[..., :, None] + box_area(boxes2)[..., None, :] - inter
    # union == 0 only when both boxes are empty; then inter == 0 too -> IoU 0.
    return tf.math.divide_no_nan(inter, union)


def encode_boxes(boxes, anchors):
    """Encodes boxes as regression targets relative to anchors.

    ty = (cy - cya) / ha, tx = (cx - cxa) / wa, th = log(h / ha), tw = log(w / wa)
    (no extra target weights). Zero sizes are replaced by a tiny epsilon so empty
    boxes (e.g. padding) give large-negative but finite targets.

    Args:
      boxes: [..., 4] yxyx.
      anchors: [..., 4] yxyx, broadcastable with boxes.

    Returns:
      float32 [..., 4] deltas (ty, tx, th, tw).
    """
    cy, cx, h, w = _centre_size(boxes)
    cya, cxa, ha, wa = _centre_size(anchors)
    ha = tf.maximum(ha, _EPS)
    wa = tf.maximum(wa, _EPS)
    ty = (cy - cya) / ha
    tx = (cx - cxa) / wa
    th = tf.math.log(tf.maximum(h, _EPS) / ha)
    tw = tf.math.log(tf.maximum(w, _EPS) / wa)
    return tf.stack([ty, tx, th, tw], axis=-1)


def decode_boxes(deltas, anchors):
    """Inverse of `encode_boxes`.

    th and tw are clipped from above at log(1000/16) before exp (Faster R-CNN),
    so a box is at most 62.5x its anchor per side. The result is NOT clipped to
    the image; use `clip_boxes`.

    Args:
      deltas: [..., 4] (ty, tx, th, tw), any float dtype.
      anchors: [..., 4] yxyx, broadcastable with deltas.

    Returns:
      float32 [..., 4] yxyx boxes.
    """
    ty, tx, th, tw = tf.unstack(_f32(deltas), num=4, axis=-1)
    cya, cxa, ha, wa = _centre_size(anchors)
    th = tf.minimum(th, BBOX_XFORM_CLIP)
    tw = tf.minimum(tw, BBOX_XFORM_CLIP)
    return _from_centre_size(cya + ty * ha, cxa + tx * wa, ha * tf.exp(th), wa * tf.exp(tw))


def clip_boxes(boxes):
    """Clips normalized boxes [..., 4] to the image [0, 1]; returns float32."""
    return tf.clip_by_value(_f32(boxes), 0.0, 1.0)


def scale_boxes(boxes, scale):
    """Scales boxes about their centre (context expansion).

    Args:
      boxes: [..., 4] yxyx.
      scale: scalar or tensor broadcastable to [...]: factor applied to both the
        height and the width (2.0 doubles each side, i.e. 4x the area). Not clipped.

    Returns:
      float32 [..., 4].
    """
    cy, cx, h, w = _centre_size(boxes)
    scale = _f32(scale)
    return _from_centre_size(cy, cx, h * scale, w * scale)


def _yxyx_factors(height, width):
    """[4] float32 multipliers (h, w, h, w)."""
    height = _f32(height)
    width = _f32(width)
    return tf.stack([height, width, height, width], axis=-1)


def to_pixels(boxes, height, width):
    """Normalized [..., 4] boxes -> pixel coordinates of a height x width image.

    `height` / `width` are scalars (or broadcastable to [...]) ; returns float32.
    """
    return _f32(boxes) * _yxyx_factors(height, width)
