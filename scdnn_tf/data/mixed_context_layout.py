"""The `mixed_context` scene layout: deciding surroundings at two distances.

Every cue-bearing object carries two coloured cues, each red or blue:
- a *near outline*, 1-3 px (at 128 px) hugging the object, inside the box scaled by 1.5;
- a *far frame*, the band between the box scaled by `FAR_FRAME[0]` and by `FAR_FRAME[1]`
  about its centre: outside every crop of scale < 2.8, wholly inside the crop of scale 4.
A yellow disc is `near_red` / `near_blue` by the colour of its near outline (its far
frame is a coloured distractor); a grey box with a window is `far_red` / `far_blue` by the
colour of its far frame (its near outline is the distractor). So a small context crop
cannot see the far cue, and a large one sees the near cue only shrunk to a few pixels.
`tree` and `person` carry no cue. Objects are placed so that no frame or outline touches
another object's near zone (box scaled by 1.5), and the deciding frames of two boxes
never cross, so each cue is intact where the rule reads it.
"""

from __future__ import annotations

import numpy as np

from scdnn_tf.data.shape_draw import (GROUNDS, SKY, draw_object, grid, mask_box,
                                      textured_surfaces, tile_edges)

MIN_SIZE = 64  # pixels
CLASSES = ["near_red", "near_blue", "far_red", "far_blue", "tree", "person"]
GROUPS = {"near": ["near_red", "near_blue"], "far": ["far_red", "far_blue"],
          "other": ["tree", "person"]}
CUE_COLOURS = {"red": (225, 35, 35), "blue": (40, 60, 225)}
FAR_FRAME = (2.8, 3.4)  # inner, outer scale of the far frame about the object's centre
NEAR_ZONE = 1.5  # the near outline lies inside the box scaled by this
_SURFACES = {"sky": SKY, "grass": GROUNDS["grass"], "road": GROUNDS["road"]}  # no blue water
_WEIGHTS = np.array([2, 2, 2, 2, 1, 1], np.float64) / 10.0
_DRAWN_AS = {"near": "ball", "far": "car"}


def _scaled(box, f):
    """Pixel box (y0, x0, y1, x1) scaled by f about its centre (floats)."""
    cy, cx = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hh, hw = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    return (cy - f * hh, cx - f * hw, cy + f * hh, cx + f * hw)


def _meets(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(a, b):
    return b[0] <= a[0] and b[1] <= a[1] and a[2] <= b[2] and a[3] <= b[3]


def _meets_frame(r, box):
    """Whether rect r touches the far-frame band of `box`."""
    return _meets(r, _scaled(box, FAR_FRAME[1])) and not _inside(r, _scaled(box, FAR_FRAME[0]))


def _frames_cross(a, b):
    outer_a, outer_b = _scaled(a, FAR_FRAME[1]), _scaled(b, FAR_FRAME[1])
    return _meets(outer_a, outer_b) and not (_inside(outer_a, _scaled(b, FAR_FRAME[0]))
                                             or _inside(outer_b, _scaled(a, FAR_FRAME[0])))


def _visible(box, s):
    """Fraction of the far frame's outer box inside the image."""
    o = _scaled(box, FAR_FRAME[1])
    inter = max(0.0, min(o[2], s) - max(o[0], 0)) * max(0.0, min(o[3], s) - max(o[1], 0))
    return inter / ((o[2] - o[0]) * (o[3] - o[1]))


def _fits(box, group, placed, s):
    near = _scaled(box, NEAR_ZONE)
    if group == "far" and _visible(box, s) < 0.6:
        return False
    for other, other_group in placed:
        if _meets(near, _scaled(other, NEAR_ZONE)):
            return False
        if other_group != "other" and _meets_frame(near, other):
            return False
        if group != "other" and _meets_frame(_scaled(other, NEAR_ZONE), box):
            return False
        if group == other_group == "far" and _frames_cross(box, other):
            return False
    return True


def frame_mask(yy, xx, box):
    """Pixels [S, S] of the far frame of a pixel box (y0, x0, y1, x1)."""
    o, i = _scaled(box, FAR_FRAME[1]), _scaled(box, FAR_FRAME[0])
    return ((yy >= o[0]) & (yy < o[2]) & (xx >= o[1]) & (xx < o[3])
            & ~((yy >= i[0]) & (yy < i[2]) & (xx >= i[1]) & (xx < i[3])))


def _outline(yy, xx, group, y0, x0, h, w, t):
    if group == "near":  # a ring of width t around the disc
        r = h / 2.0
        dist2 = (yy - (y0 + r)) ** 2 + (xx - (x0 + r)) ** 2
        return (dist2 > r * r) & (dist2 <= (r + t) ** 2)
    return ((yy >= y0 - t) & (yy < y0 + h + t) & (xx >= x0 - t) & (xx < x0 + w + t)
            & ~((yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)))


def render(rng: np.random.Generator, image_size: int = 128):
    """Draws one `mixed_context` scene; returns (image uint8 [S, S, 3], objects) as `render_scene`.

    The surface kind of each object is the tile under its centre.
    """
    if image_size < MIN_SIZE:  # below it the cues' pixel margins no longer fit
        raise ValueError(f"layout 'mixed_context' needs image_size >= {MIN_SIZE}, got {image_size}")
    s, k = image_size, image_size / 128.0
    ys = tile_edges(rng, s, int(rng.integers(2, 4)))
    xs = tile_edges(rng, s, int(rng.integers(2, 4)))
    regions = [(list(_SURFACES)[rng.integers(len(_SURFACES))], ys[i], xs[j], ys[i + 1], xs[j + 1])
               for i in range(len(ys) - 1) for j in range(len(xs) - 1)]
    image = textured_surfaces(rng, s, regions, _SURFACES)
    placed, specs = [], []
    for _ in range(int(rng.integers(2, 5))):
        name = CLASSES[rng.choice(len(CLASSES), p=_WEIGHTS)]
        group = next(g for g, names in GROUPS.items() if name in names)
        if group == "other":
            h = int(round(rng.integers(16, 25) * k))
            h, w = (h, int(round(h * 0.7))) if name == "tree" else (h, max(int(round(h * 0.5)), 3))
        else:
            h = w = int(round(rng.integers(12, 21) * k))
        for _ in range(30):
            y0, x0 = int(rng.integers(1, s - h)), int(rng.integers(1, s - w))
            box = (y0, x0, y0 + h, x0 + w)
            if _fits(box, group, placed, s):
                break
        else:
            continue
        colours = [list(CUE_COLOURS)[c] for c in rng.integers(2, size=2)]  # near, far
        if group != "other":  # the class names the deciding cue's colour
            colours[0 if group == "near" else 1] = name.split("_")[1]
        # Outline width: within the near zone (r + t <= 1.5 r) at every image size.
        t = max(1, min(int(round(rng.integers(1, 4) * k)), h // 4))
        placed.append((box, group))
        specs.append((name, group, box, colours, t))
    yy, xx = grid(s)
    # Painting order: distractor frames, deciding frames (never crossing), outlines, objects.
    for want in ("near", "far"):
        for name, group, box, colours, _ in specs:
            if group == want:
                image[frame_mask(yy, xx, box)] = CUE_COLOURS[colours[1]]
    for name, group, (y0, x0, y1, x1), colours, t in specs:
        if group != "other":
            image[_outline(yy, xx, group, y0, x0, y1 - y0, x1 - x0, t)] = CUE_COLOURS[colours[0]]
    objects = []
    for name, group, (y0, x0, y1, x1), _, _ in specs:
        mask = draw_object(image, yy, xx, _DRAWN_AS.get(group, name), y0, x0, y1 - y0, x1 - x0)
        cy, cx = min((y0 + y1) // 2, s - 1), min((x0 + x1) // 2, s - 1)
        kind = next(r[0] for r in regions if r[1] <= cy < r[3] and r[2] <= cx < r[4])
        objects.append((name, mask_box(mask) / s, kind))
    return image, objects
