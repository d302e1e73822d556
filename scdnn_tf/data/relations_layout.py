"""The `relations` scene layout: classes decided only by a far-away object.

The image is a stack of 2-3 rows; each row has a left and a right tile, split at the
image's vertical centre line. One column (left or right, chosen per scene) holds the
*pair objects*: a yellow disc on grass is a `ball` when a `person` stands in the same
row and a `stone` otherwise; a grey box with a window on road is a `car` when a `house`
stands in the same row and a `wagon` otherwise. Both classes of a pair are drawn by the
same code with the same size distribution on the same surface kind, beside the same
kinds of distractors (`tree`, `bird`). The other column holds, per row, one of
`person`, `house`, `tree`, `bird` or nothing, always level with the row's pair object
(their vertical extents overlap), so "something stands beside it" says nothing: only
*what* stands beside it does.

Every object is placed so that its box scaled by `CONTEXT_REACH` about its centre (the
widest context crop) stays inside its own column, `margin` pixels clear of the centre
line. So no context crop of any object holds both a pair object and the object that
decides it: the decision needs a relation between two patches.
"""

from __future__ import annotations

import numpy as np

from scdnn_tf.data.shape_draw import GROUNDS, SKY, draw_object, grid, mask_box, textured_surfaces

# pair class, its other class, the surface both stand on, what they are drawn as, and
# the cue: the first class iff an object of the cue class stands in the same row.
RULES = (("ball", "stone", "grass", "ball", "person"),
         ("car", "wagon", "road", "car", "house"))
MIN_SIZE = 64  # pixels
CLASSES = ["ball", "stone", "car", "wagon", "person", "house", "tree", "bird"]
GROUPS = {"relation": ["ball", "stone", "car", "wagon"],
          "other": ["person", "house", "tree", "bird"]}
CONTEXT_REACH = 4.0  # widest context scale the crops are guaranteed not to span columns at
_SIDE = ("person", "house", "tree", "bird", None)  # what may stand in the far column
_SURFACES = {"sky": SKY, **GROUNDS}
# (height, width) ranges at 128 px; small enough that the reach fits in a half image.
_SIZES = {"ball": ((10, 17), None), "car": ((8, 13), (14, 23)), "tree": ((14, 23), 0.7),
          "bird": ((6, 9), 2.0), "person": ((16, 25), 0.5), "house": ((12, 17), None)}


def _size(name, rng, k):
    (lo, hi), width = _SIZES[name]
    a = int(round(rng.integers(lo, hi) * k))
    if name == "ball":
        return a, a
    if name == "house":  # a = width; the roof makes it 1.5 x as tall
        return int(round(a * 1.5)), a
    if name == "car":
        return a, int(round(rng.integers(*width) * k))
    return a, max(int(round(a * width)), 3)


def _x_range(w, s, cut, margin, near_column):
    """Left edges x0 keeping the box scaled by CONTEXT_REACH inside its column."""
    half = CONTEXT_REACH * w / 2.0
    if near_column:  # centre + half <= cut - margin, and 1 px clear of the image edge
        return 1, int(np.floor(cut - margin - half - w / 2.0))
    return int(np.ceil(cut + margin + half - w / 2.0)), s - w - 1


def _place(rng, h, w, rows, xs, taken):
    """(y0, x0) inside rows [lo, hi] x xs [lo, hi] clear of the `taken` boxes, or None."""
    for _ in range(20):
        y0, x0 = int(rng.integers(rows[0], rows[1] + 1)), int(rng.integers(xs[0], xs[1] + 1))
        if all(y0 + h < t[0] or t[2] < y0 or x0 + w < t[1] or t[3] < x0 for t in taken):
            return y0, x0
    return None


def _rows(rng, s):
    n = int(rng.integers(2, 4))
    edges = np.linspace(0.0, s, n + 1)
    edges[1:-1] += rng.uniform(-0.15, 0.15, n - 1) * s / n
    edges = np.round(edges).astype(int)
    return list(zip(edges[:-1], edges[1:]))


def render(rng: np.random.Generator, image_size: int = 128):
    """Draws one `relations` scene; returns (image uint8 [S, S, 3], objects) as `render_scene`."""
    if image_size < MIN_SIZE:  # below it the cues' pixel margins no longer fit
        raise ValueError(f"layout 'relations' needs image_size >= {MIN_SIZE}, got {image_size}")
    s, k = image_size, image_size / 128.0
    cut, margin = s // 2, max(1, int(round(2 * k)))
    rows = _rows(rng, s)
    plan = []  # per row: (near surface, pair rule or None, far surface, far object or None)
    for _ in rows:
        choice = int(rng.integers(5))  # 0-1: a disc, 2-3: a grey box, 4: no pair object
        rule = RULES[choice // 2] if choice < 4 else None
        near = rule[2] if rule else list(_SURFACES)[rng.integers(len(_SURFACES))]
        if rule and rng.random() < 0.5:  # the cue: half of the pair objects get it
            far_name = rule[4]
        else:
            others = [n for n in _SIDE if not (rule and n == rule[4])]
            far_name = others[rng.integers(len(others))]
        plan.append((near, rule, list(_SURFACES)[rng.integers(len(_SURFACES))], far_name))
    regions = []
    for (top, bottom), (near, _, far, _) in zip(rows, plan):
        regions += [(near, top, 0, bottom, cut), (far, top, cut, bottom, s)]
    image = textured_surfaces(rng, s, regions, _SURFACES)
    yy, xx = grid(s)
    objects = []

    def add(name, drawn_as, kind, y0, x0, h, w):
        mask = draw_object(image, yy, xx, drawn_as, y0, x0, h, w)
        objects.append((name, mask_box(mask), kind))

    for (top, bottom), (near, rule, far, far_name) in zip(rows, plan):
        taken, level = [], None
        if rule:
            h, w = _size(rule[3], rng, k)
            # Always fits: the sizes are bounded so that the reach fits in half an image.
            y0, x0 = _place(rng, h, w, (top + 1, bottom - h - 1),
                            _x_range(w, s, cut, margin, True), [])
            name = rule[0] if far_name == rule[4] else rule[1]
            add(name, rule[3], near, y0, x0, h, w)
            taken.append((y0, x0, y0 + h, x0 + w))
            level = (y0, y0 + h)
        if rng.random() < 0.5:  # a distractor beside the pair object, as often for each class
            name = ("tree", "bird")[rng.integers(2)]
            h, w = _size(name, rng, k)
            pos = _place(rng, h, w, (top + 1, bottom - h - 1),
                         _x_range(w, s, cut, margin, True), taken)
            if pos:
                add(name, name, near, *pos, h, w)
        if far_name:
            h, w = _size(far_name, rng, k)
            lo, hi = top + 1, bottom - h - 1
            if level:  # level with the pair object: vertical extents overlap
                lo, hi = max(lo, level[0] - h + 1), min(hi, level[1] - 1)
            pos = _place(rng, h, w, (lo, hi), _x_range(w, s, cut, margin, False), [])
            add(far_name, far_name, far, *pos, h, w)
    if rng.random() < 0.5:  # the near column on the right: a mirror image
        image = image[:, ::-1].copy()
        objects = [(n, np.array([b[0], s - b[3], b[2], s - b[1]], np.float32), kd)
                   for n, b, kd in objects]
    return image, [(n, b / s, kd) for n, b, kd in objects]
