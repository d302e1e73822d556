"""Pyramid level assignment and multi-level RoIAlign-style crop-and-resize.

Sampling convention (pinned by tests/test_crop_and_resize.py), equal to
Detectron2 `ROIAlign(aligned=True, sampling_ratio=1)`:

* A normalized box [y1, x1, y2, x2] covers pixels y1*S .. y2*S of the S x S image
  (continuous coordinates, pixel k spans [k, k+1)).
* Output bin i (of crop_size) samples one point, the bin centre
  y = y1 + (i + 0.5) * (y2 - y1) / crop_size (normalized).
* A level-l map has stride s = 2**l and cell j centred on pixel (j + 0.5) * s, so
  the sample falls at feature index p = y * S / s - 0.5 (= y * H_f - 0.5 when S is
  a multiple of s), read by bilinear interpolation.
* Borders: like RoIAlign, p in [-1, 0) reads row 0 and p in (H_f-1, H_f] reads row
  H_f-1 (clamping); further out reads 0. Implemented by padding each map with one
  replicated row/column per side, which also makes H_f == 1 maps well defined.
  `tf.image.crop_and_resize` maps a normalized u to u * (H' - 1) on the padded
  map (H' = H_f + 2), so it is fed u = (p + 1) / (H' - 1) for the first and last
  bin centres.

Level selection: every box is cropped once, on its own level. All levels' (padded)
maps are put into one source with static shape, and each box samples only its level:

* `tf_image`: the padded maps of an image are packed side by side into one atlas
  ([B, H, W, C]: the largest level at the origin, the others in a column to its right)
  and a box reads its level's region of its image's atlas (one
  `tf.image.crop_and_resize` call, whose image gradient is computed by
  `crop_and_resize_grad`: TF's CPU kernel for it races);
* `gather`: the padded maps are flattened and concatenated per image ([B, sum H'W', C]);
  a box's bilinear taps are gathered at its level's offset.
Bins whose sample falls outside the box's own padded map are zeroed explicitly (they
would otherwise read the next level's region). This replaced cropping
every box on every level and keeping the right one with `tf.where`, which did 4x the
crops and, above all, 4x the (slow, serial on CPU) crop gradient: the train step of
the CPU demo spent more time there than in the backbone (see benchmarks/README.md).

Gradients flow to the features; boxes are wrapped in `tf.stop_gradient`: as in
Faster R-CNN, box coordinates are trained by the location regressor's own loss,
not by the label loss back-propagated through the sampling positions.

`tf.image.crop_and_resize` has no XLA kernel, so `backend="gather"` provides the
same sampling with plain gathers for use under `jit_compile=True`.
"""

import re

import tensorflow as tf

from scdnn_tf.modeling import crop_and_resize_grad

# Added to the level before flooring so a box exactly on a level boundary
# (224 px, 112 px, ...) is not pushed down a level by float32 rounding in log2.
_LEVEL_TOLERANCE = 1e-5
_BACKENDS = ("tf_image", "gather")


def assign_levels(boxes, image_size, min_level=2, max_level=5, canonical_size=224,
                  canonical_level=4):
    """FPN level of each box: floor(canonical_level + log2(sqrt(w*h) / canonical_size)).

    Args:
      boxes: [B, N, 4] normalized yxyx (any float dtype).
      image_size: S, the side of the square image in pixels (w, h = size * S).
      min_level, max_level: clamp range.
      canonical_size, canonical_level: a canonical_size px box maps to canonical_level.

    Returns:
      [B, N] int32 in [min_level, max_level]; empty / inverted boxes -> min_level.
    """
    if min_level > max_level:
        raise ValueError(f"min_level {min_level!r} > max_level {max_level!r}")
    if not canonical_size > 0:
        raise ValueError(f"canonical_size must be > 0, got {canonical_size!r}")
    ymin, xmin, ymax, xmax = tf.unstack(tf.cast(boxes, tf.float32), num=4, axis=-1)
    h = tf.maximum(ymax - ymin, 0.0) * float(image_size)
    w = tf.maximum(xmax - xmin, 0.0) * float(image_size)
    # max(.., 1e-6): log2 of an empty box would be -inf (floor/cast of which is UB).
    side = tf.maximum(tf.sqrt(h * w), 1e-6)
    level = canonical_level + tf.math.log(side / canonical_size) / tf.math.log(2.0)
    level = tf.floor(level + _LEVEL_TOLERANCE)
    level = tf.clip_by_value(level, float(min_level), float(max_level))
    return tf.cast(level, tf.int32)


def _level_of_key(key):
    """2 for keys 2, "P2", "p2", "C2"."""
    if isinstance(key, int):
        return key
    match = re.fullmatch(r"[A-Za-z]*(\d+)", str(key))
    if not match:
        raise ValueError(f"feature key {key!r} is not a level (expected e.g. 2 or 'P2')")
    return int(match.group(1))


def _features_by_level(features, image_size, min_level, max_level):
    """{level: float32 [B, H, W, C]} for min_level..max_level, validated."""
    by_level = {_level_of_key(k): v for k, v in features.items()}
    out = {}
    for level in range(min_level, max_level + 1):
        if level not in by_level:
            raise ValueError(f"features lack level {level} (keys: {sorted(features)!r})")
        feat = tf.cast(by_level[level], tf.float32)
        expected = image_size / 2**level
        for side in feat.shape[1:3]:
            if side is not None and abs(side - expected) >= 1:
                raise ValueError(
                    f"level {level} map is {tuple(feat.shape)} but an image of {image_size} px "
                    f"at stride {2**level} gives ~{expected:g} cells")
        out[level] = feat
    return out


def _bin_centres(lo, hi, cells_per_unit, crop_size):
    """Padded-map coordinates [K, crop] of the bin centres between lo and hi [K].

    `cells_per_unit` is a Python number or a [K] tensor (each box's level).
    """
    i = tf.range(crop_size, dtype=tf.float32) + 0.5
    y = lo[..., None] + i * ((hi - lo) / crop_size)[..., None]
    if isinstance(cells_per_unit, tf.Tensor):
        cells_per_unit = cells_per_unit[..., None]
    return y * cells_per_unit - 0.5 + 1.0  # +1: one padded row/column before index 0


def _per_box(values, level_index):
    """Gathers a per-level list of int scalars at level_index [K] -> [K] int32."""
    return tf.gather(tf.stack([tf.cast(v, tf.int32) for v in values]), level_index)


def atlas_layout(padded_maps):
    """Where each padded map sits in a per-image atlas, and the atlas side.

    The first (largest) map is at (0, 0); the others are stacked top to bottom in a
    column to its right. With halving sides the column is no taller than the first map,
    so the atlas wastes little (at 448 px: 114 x 172 for 17,516 cells of P2..P5, where
    stacking the levels on the batch axis at the largest map's size took 4 x 114 x 114).

    Args:
      padded_maps: list over levels of [B, H'_l, W'_l, C].

    Returns:
      (origin_y, origin_x, height, width): per-level int32 lists, int32 scalars.
    """
    heights = [tf.shape(m)[1] for m in padded_maps]
    widths = [tf.shape(m)[2] for m in padded_maps]
    zero = tf.constant(0)
    origin_x = [zero] + [widths[0]] * (len(widths) - 1)
    origin_y = [zero] + [tf.add_n([zero] + heights[1:k]) for k in range(1, len(heights))]
    column_h = tf.add_n([zero] + heights[1:])
    height = tf.maximum(heights[0], column_h)
    width = widths[0] + (tf.reduce_max(tf.stack(widths[1:])) if len(widths) > 1 else 0)
    return origin_y, origin_x, height, width


def pack_atlas(padded_maps, height, width):
    """The padded maps placed as `atlas_layout` says: [B, height, width, C]."""
    def pad_to(m, h, w):
        return tf.pad(m, [[0, 0], [0, h - tf.shape(m)[1]], [0, w - tf.shape(m)[2]], [0, 0]])

    if len(padded_maps) == 1:
        return padded_maps[0]
    column_w = width - tf.shape(padded_maps[0])[2]
    column = tf.concat([pad_to(m, tf.shape(m)[1], column_w) for m in padded_maps[1:]], axis=1)
    return tf.concat([pad_to(padded_maps[0], height, tf.shape(padded_maps[0])[2]),
                      pad_to(column, height, column_w)], axis=2)


def _crop_tf_image(padded_maps, level_index, image_index, ys, xs, crop_size):
    """One `tf.image.crop_and_resize` over a per-image atlas of the padded maps.

    Args:
      padded_maps: list over levels of [B, H'_l, W'_l, C] (one replicated border).
      level_index: [K] int32, index into padded_maps of each box's level.
      image_index: [K] int32, image of each box.
      ys, xs: [K, crop] sample coordinates on the box's padded map.

    Returns:
      [K, crop, crop, C] (samples outside the box's padded map not yet zeroed).
    """
    origin_y, origin_x, height, width = atlas_layout(padded_maps)
    canvas = pack_atlas(padded_maps, height, width)  # [B, H, W, C]
    ys = ys + tf.cast(_per_box(origin_y, level_index), tf.float32)[:, None]
    xs = xs + tf.cast(_per_box(origin_x, level_index), tf.float32)[:, None]
    # crop_and_resize maps a normalized u to u * (H - 1) on the canvas.
    hp = tf.cast(height - 1, tf.float32)
    wp = tf.cast(width - 1, tf.float32)
    tf_boxes = tf.stack([ys[:, 0] / hp, xs[:, 0] / wp, ys[:, -1] / hp, xs[:, -1] / wp], axis=-1)
    # Not tf.image.crop_and_resize directly: its CPU image gradient races (see the module).
    return crop_and_resize_grad.crop_and_resize(canvas, tf_boxes, image_index, crop_size)


def _axis_taps(coords, size):
    """Indices (i0, i1) and weights (w0, w1) of 1-D bilinear taps; size [K] int32."""
    low = tf.floor(coords)
    frac = coords - low
    last = (size - 1)[:, None]
    i0 = tf.clip_by_value(tf.cast(low, tf.int32), 0, last)
    i1 = tf.minimum(i0 + 1, last)
    return i0, i1, 1.0 - frac, frac


def _crop_gather(padded_maps, level_index, image_index, ys, xs, crop_size):
    """Same as `_crop_tf_image` with gathers from a flat atlas of all maps (XLA-compatible)."""
    shape = tf.shape(padded_maps[0])
    batch, channels = shape[0], shape[3]
    heights = [tf.shape(m)[1] for m in padded_maps]
    widths = [tf.shape(m)[2] for m in padded_maps]
    sizes = [h * w for h, w in zip(heights, widths)]
    offsets = [tf.add_n(sizes[:i]) if i else 0 for i in range(len(sizes))]
    # [B * T, C], T = sum of the padded map sizes: image b, level l at b*T + offset_l.
    atlas = tf.concat([tf.reshape(m, [batch, -1, channels]) for m in padded_maps], axis=1)
    total = tf.shape(atlas)[1]
    atlas = tf.reshape(atlas, [-1, channels])
    width = _per_box(widths, level_index)[:, None, None]  # [K, 1, 1]
    base = (image_index * total + _per_box(offsets, level_index))[:, None, None]
    y0, y1, wy0, wy1 = _axis_taps(ys, _per_box(heights, level_index))  # [K, crop]
    x0, x1, wx0, wx1 = _axis_taps(xs, _per_box(widths, level_index))

    def tap(yi, xi, wy, wx):
        index = base + yi[:, :, None] * width + xi[:, None, :]  # [K, crop, crop]
        return tf.gather(atlas, index) * (wy[:, :, None] * wx[:, None, :])[..., None]

    return tap(y0, x0, wy0, wx0) + tap(y0, x1, wy0, wx1) + tap(y1, x0, wy1, wx0) + tap(
        y1, x1, wy1, wx1)


def _check_args(backend, crop_size):
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if not isinstance(crop_size, int) or crop_size <= 0:
        raise ValueError(f"crop_size must be a positive int, got {crop_size!r}")


def _crop_boxes(by_level, boxes, image_index, image_size, crop_size, min_level, max_level,
                backend):
    """Crops a flat list of boxes [K, 4] of images image_index [K] -> [K, crop, crop, C]."""
    level_index = assign_levels(boxes[None], image_size, min_level, max_level)[0] - min_level
    # Cells per normalized unit on each box's level: S / stride.
    cells = tf.gather(tf.constant([image_size / 2**l for l in by_level], tf.float32), level_index)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, num=4, axis=-1)
    ys = _bin_centres(ymin, ymax, cells, crop_size)  # [K, crop]
    xs = _bin_centres(xmin, xmax, cells, crop_size)
    # SYMMETRIC with width 1 replicates the edge row/column (RoIAlign clamping).
    padded = [tf.pad(feat, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
              for feat in by_level.values()]
    crop_fn = _crop_tf_image if backend == "tf_image" else _crop_gather
    crops = crop_fn(padded, level_index, image_index, ys, xs, crop_size)
    # Samples outside the box's own padded map read 0 (RoIAlign), not a neighbour's data.
    def inside(coords, sizes):
        size = tf.cast(_per_box(sizes, level_index) - 1, tf.float32)[:, None]
        return (coords >= 0.0) & (coords <= size)

    y_in = inside(ys, [tf.shape(m)[1] for m in padded])
    x_in = inside(xs, [tf.shape(m)[2] for m in padded])
    return crops * tf.cast(y_in[:, :, None] & x_in[:, None, :], tf.float32)[..., None]


def _prepare(features, boxes, image_size, min_level, max_level):
    """Validated {level: float32 map} and float32 boxes without gradient."""
    by_level = _features_by_level(features, image_size, min_level, max_level)
    boxes = tf.stop_gradient(tf.cast(boxes, tf.float32))
    for level, feat in by_level.items():
        if None not in (feat.shape[0], boxes.shape[0]) and feat.shape[0] != boxes.shape[0]:
            raise ValueError(f"level {level} features have batch {feat.shape[0]} but boxes "
                             f"have batch {boxes.shape[0]}")
    return by_level, boxes


def multilevel_crop_and_resize(features, boxes, image_size, crop_size=7, min_level=2,
                               max_level=5, backend="tf_image"):
    """Crops each box from its FPN level (see module docstring for the convention).

    Args:
      features: dict {level or "P<level>": [B, H_l, W_l, C]} covering min_level..max_level
        (extra levels are ignored); any float dtype, cast to float32.
      boxes: [B, N, 4] normalized yxyx; no gradient flows to them.
      image_size: S, side of the square input image in pixels.
      crop_size: output side (bins per axis).
      min_level, max_level: levels used by `assign_levels`.
      backend: "tf_image" (tf.image.crop_and_resize; not XLA-compilable) or
        "gather" (same numbers, plain gathers; use under jit_compile=True).

    Returns:
      float32 [B, N, crop_size, crop_size, C].
    """
    _check_args(backend, crop_size)
    by_level, boxes = _prepare(features, boxes, image_size, min_level, max_level)
    batch, num = tf.shape(boxes)[0], tf.shape(boxes)[1]
    image_index = tf.repeat(tf.range(batch), num)
    crops = _crop_boxes(by_level, tf.reshape(boxes, [-1, 4]), image_index, image_size,
                        crop_size, min_level, max_level, backend)
    return tf.reshape(crops, tf.concat([[batch, num], tf.shape(crops)[1:]], 0))


def crop_valid_boxes(features, boxes, valid, image_size, crop_size=7, min_level=2, max_level=5,
                     backend="tf_image"):
    """Like `multilevel_crop_and_resize`, but crops only the boxes marked valid.

    The number of crops V is dynamic, so this is for graph mode, not XLA. Padded patch
    slots (e.g. the ground-truth slots appended in training, mostly padding) then cost
    nothing downstream: classify the crops, then `tf.scatter_nd(indices, values, [B, N, ...])`.

    Args:
      features, image_size, crop_size, min_level, max_level, backend: as in
        `multilevel_crop_and_resize`.
      boxes: [B, N, 4] normalized yxyx, or [B, N, S, 4]: S boxes per slot.
      valid: [B, N] bool.

    Returns:
      crops float32 [V, crop, crop, C] (or [V, S, crop, crop, C]; row-major order over
      (image, slot)) and indices int32 [V, 2] (image, slot) of each crop.
    """
    _check_args(backend, crop_size)
    by_level, boxes = _prepare(features, boxes, image_size, min_level, max_level)
    indices = tf.cast(tf.where(tf.cast(valid, tf.bool)), tf.int32)  # [V, 2]
    picked = tf.gather_nd(boxes, indices)  # [V, 4] or [V, S, 4]
    per_slot = 1 if boxes.shape.rank == 3 else int(boxes.shape[2])
    crops = _crop_boxes(by_level, tf.reshape(picked, [-1, 4]),
                        tf.repeat(indices[:, 0], per_slot), image_size, crop_size,
                        min_level, max_level, backend)
    if boxes.shape.rank == 4:
        crops = tf.reshape(crops, tf.concat([[-1, per_slot], tf.shape(crops)[1:]], 0))
    return crops, indices


def crop_slots(features, boxes, valid, image_size, crop_size=7, min_level=2, max_level=5,
               all_slots=False):
    """Crops of the patch slots of a batch, and the map back to slots.

    Args:
      features, image_size, crop_size, min_level, max_level: as in
        `multilevel_crop_and_resize`.
      boxes: [B, N, 4] normalized yxyx, or a list of such box sets over the same slots
        (e.g. the tight and the context patches): all are cropped in one call, from one
        atlas of the maps, whose gradient is then accumulated once.
      valid: [B, N] bool.
      all_slots: True: crop every slot with the "gather" backend (P = B*N, static shapes,
        for XLA); False: only the valid slots with tf.image (P = V, dynamic).

    Returns:
      crops float32 [P, crop, crop, C] (a list of them, in order, for a list of box sets)
      and `to_slots`, a function mapping any [P, ...] tensor with static trailing dims to
      [B, N, ...] (zeros in slots not cropped).
    """
    single = not isinstance(boxes, (list, tuple))
    sets = [boxes] if single else list(boxes)
    slots = tf.shape(valid)
    if all_slots:
        crops = multilevel_crop_and_resize(features, tf.concat(sets, axis=1), image_size,
                                           crop_size, min_level, max_level, backend="gather")
        # [B, S*N, ...] -> S tensors [B*N, ...]
        crops = tf.split(crops, len(sets), axis=1)
        crops = [tf.reshape(c, tf.concat([[-1], tf.shape(c)[2:]], 0)) for c in crops]

        def to_slots(x):
            return tf.reshape(x, tf.concat([slots, x.shape[1:].as_list()], 0))
    else:
        crops, index = crop_valid_boxes(features, tf.stack(sets, axis=2), valid, image_size,
                                        crop_size, min_level, max_level)
        crops = tf.unstack(crops, num=len(sets), axis=1)

        def to_slots(x):
            return tf.scatter_nd(index, x, tf.concat([slots, x.shape[1:].as_list()], 0))
    return (crops[0] if single else crops), to_slots
