"""Drawing primitives shared by the synthetic scene layouts (`scdnn_tf.data.shapes`).

Masks are boolean [S, S] arrays over pixel centres; sizes and positions are in pixels.
"""

from __future__ import annotations

import numpy as np

GROUNDS = {"grass": (80, 160, 60), "water": (40, 90, 170), "road": (95, 95, 100)}
SKY = (150, 200, 240)
YELLOW, GREY, WINDOW = (250, 210, 40), (170, 170, 175), (60, 70, 90)


def grid(size):
    """(yy, xx) float32 [size, size] each: the pixel centres."""
    return np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres (y, x)


def disc(yy, xx, y0, x0, d):
    """Mask of the disc of diameter d whose bounding box has its top-left at (y0, x0)."""
    r = d / 2.0
    return (yy - (y0 + r)) ** 2 + (xx - (x0 + r)) ** 2 <= r * r


def triangle(yy, xx, apex, left, right):
    """Mask of the triangle with (y, x) corners apex, left, right."""
    def side(p, q):
        return (q[1] - p[1]) * (yy - p[0]) - (q[0] - p[0]) * (xx - p[1])
    s = [side(apex, left), side(left, right), side(right, apex)]
    return ((s[0] >= 0) & (s[1] >= 0) & (s[2] >= 0)) | ((s[0] <= 0) & (s[1] <= 0) & (s[2] <= 0))


def segment(yy, xx, p, q, width):
    """Mask of the segment p -> q ((y, x) points) drawn `width` pixels wide."""
    py, px, qy, qx = p[0], p[1], q[0], q[1]
    dy, dx = qy - py, qx - px
    t = np.clip(((yy - py) * dy + (xx - px) * dx) / max(dy * dy + dx * dx, 1e-6), 0, 1)
    return (yy - (py + t * dy)) ** 2 + (xx - (px + t * dx)) ** 2 <= (width / 2.0) ** 2


def rect(yy, xx, y0, x0, h, w):
    """Mask of the h x w rectangle with its top-left at (y0, x0)."""
    return (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)


def object_size(name, rng, k):
    """(height, width) in pixels at scale k = image_size / 128."""
    if name in ("sun", "ball"):  # the same distribution: identical object pixels
        d = int(round(rng.integers(10, 25) * k))
        return d, d
    if name in ("boat", "car"):
        return int(round(rng.integers(10, 17) * k)), int(round(rng.integers(20, 37) * k))
    if name == "tree":
        h = int(round(rng.integers(18, 33) * k))
        return h, int(round(h * 0.7))
    if name == "house":
        w = int(round(rng.integers(14, 27) * k))
        return int(round(w * 1.5)), w
    if name == "bird":
        w = int(round(rng.integers(12, 19) * k))
        return w // 2, w
    h = int(round(rng.integers(18, 31) * k))  # person
    return h, max(int(round(h * 0.5)), 5)


def draw_object(image, yy, xx, name, y0, x0, h, w):
    """Paints one object with its top-left at (y0, x0); returns its pixel mask."""
    layers = []  # (mask, colour), painted in order
    if name in ("sun", "ball"):
        layers.append((disc(yy, xx, y0, x0, h), YELLOW))
    elif name in ("boat", "car"):
        body = rect(yy, xx, y0, x0, h, w)
        win = rect(yy, xx, y0 + h * 0.2, x0 + w * 0.2, h * 0.35, w * 0.6)
        layers += [(body, GREY), (win, WINDOW)]
    elif name == "tree":
        th = max(int(h * 0.25), 2)
        layers.append((rect(yy, xx, y0 + h - th, x0 + w * 0.4, th, max(w * 0.2, 2)), (110, 70, 30)))
        layers.append((triangle(yy, xx, (y0, x0 + w / 2), (y0 + h - th, x0), (y0 + h - th, x0 + w)),
                       (20, 100, 30)))
    elif name == "house":
        roof = h - w
        layers.append((triangle(yy, xx, (y0, x0 + w / 2), (y0 + roof, x0), (y0 + roof, x0 + w)),
                       (90, 40, 30)))
        layers.append((rect(yy, xx, y0 + roof, x0, w, w), (200, 40, 40)))
    elif name == "bird":
        lw = max(w / 8.0, 1.5)
        layers.append((segment(yy, xx, (y0, x0), (y0 + h, x0 + w / 2), lw)
                       | segment(yy, xx, (y0 + h, x0 + w / 2), (y0, x0 + w), lw), (30, 30, 40)))
    else:  # person
        lw, r = max(w / 5.0, 1.5), w / 2.0
        cx, neck, hip = x0 + w / 2, y0 + r * 1.2, y0 + h * 0.6
        mask = disc(yy, xx, y0, cx - r * 0.6, r * 1.2)
        for p, q in [((neck, cx), (hip, cx)), ((hip, cx), (y0 + h, x0)), ((hip, cx), (y0 + h, x0 + w)),
                     ((neck + h * 0.1, x0), (neck + h * 0.1, x0 + w))]:
            mask |= segment(yy, xx, p, q, lw)
        layers.append((mask, (20, 20, 20)))
    union = np.zeros(yy.shape, bool)
    for mask, colour in layers:
        image[mask] = colour
        union |= mask
    return union


def tile_edges(rng, s, n):
    """n + 1 integer cut positions 0 = e_0 < ... < e_n = s, interior ones jittered."""
    edges = np.linspace(0.0, s, n + 1)
    edges[1:-1] += rng.uniform(-0.2, 0.2, n - 1) * s / n
    return np.round(edges).astype(int)


def mask_box(mask):
    """Pixel box [y0, x0, y1, x1] (exclusive ends) of a non-empty mask [S, S]."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.float32)


def textured_surfaces(rng, s, regions, colours):
    """uint8 [s, s, 3] image of regions (kind, y0, x0, y1, x1) in `colours`, with mild noise."""
    image = np.empty((s, s, 3), np.uint8)
    for kind, y0, x0, y1, x1 in regions:
        image[y0:y1, x0:x1] = colours[kind]
    noise = rng.integers(-6, 7, size=(s, s, 1))
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)
