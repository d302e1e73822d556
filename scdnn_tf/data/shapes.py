"""Synthetic "shapes" scenes: the demo's and the tests' dataset.

Each scene is a patchwork of surfaces, an irregular 2-3 x 2-3 grid of sky, grass,
water and road tiles (`layout="tiles"`, the default), with 2-5 objects, each lying
inside one tile. Some classes are told apart ONLY by the surface around them
(`CONTEXT_CLASSES`): a `sun` and a `ball` are the same yellow disc (same colour, same
size distribution, same pixel mask for a given radius), one on sky, the other on
grass; a `boat` and a `car` are the same grey box with windows, one on water, the
other on road. The tight crop of such an object does not tell its class, and, since
one image holds several surfaces, neither does the image as a whole: the object's own
surroundings do. The other classes have their own shape: `tree` (green triangle on a
trunk), `house` (red square with a roof), `bird` (dark V, on sky), `person` (stick
figure on grass or road). `layout="bands"` (one sky band over one ground band, so the
ground is global to the image) is kept for comparison. `layout="relations"`
(`relations_layout`: classes decided only by another object far away in the same row)
and `layout="mixed_context"` (`mixed_context_layout`: classes decided by a thin outline
hugging the object or by a wide frame far out) have their own class lists
(`LAYOUT_CLASSES`) and report groups (`LAYOUT_GROUPS`).

    python -m data_tools.make_shapes --output_dir=/tmp/shapes --num_train=2000 --num_val=500 --seed=0

writes `train-*.tfrecord`, `val-*.tfrecord` (PNG images, exact boxes: the extent of each
object's drawn pixels) and `label_map.txt`. Same seed -> byte-identical files.
"""

from __future__ import annotations

import glob
import io
import json
import os

import numpy as np
from PIL import Image

from scdnn_tf.data import mixed_context_layout, relations_layout
from scdnn_tf.data.label_map import write_label_map
from scdnn_tf.data.records import build_example
from scdnn_tf.data.shape_draw import (  # noqa: F401  (colours re-exported for users / tests)
    GREY, GROUNDS, SKY, WINDOW, YELLOW, draw_object, grid, mask_box, object_size,
    textured_surfaces, tile_edges)
from scdnn_tf.data.tfrecord_writer import ShardedWriter

CLASSES = ["sun", "ball", "boat", "car", "tree", "house", "bird", "person"]
CONTEXT_CLASSES = [("sun", "ball"), ("boat", "car")]
# Which classes may appear over each ground (sky objects go with every ground).
_ON_GROUND = {"grass": ["ball", "tree", "house", "person"], "water": ["boat"],
              "road": ["car", "person", "house", "tree"]}
_IN_SKY = ["sun", "bird"]
META = "shapes_meta.json"


def _iou(a, b):
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / float(area(a) + area(b) - inter)


LAYOUTS = ("tiles", "bands", "relations", "mixed_context")
# Each layout's class list (the label map `make_shapes` writes) and the class groups the
# experiments report on.
LAYOUT_CLASSES = {"tiles": CLASSES, "bands": CLASSES, "relations": relations_layout.CLASSES,
                  "mixed_context": mixed_context_layout.CLASSES}
_TILES_GROUPS = {"context": ["sun", "ball", "boat", "car"],
                 "shape": ["tree", "house", "bird", "person"]}
LAYOUT_GROUPS = {"tiles": _TILES_GROUPS, "bands": _TILES_GROUPS,
                 "relations": relations_layout.GROUPS,
                 "mixed_context": mixed_context_layout.GROUPS}
_RENDERERS = {"relations": relations_layout.render, "mixed_context": mixed_context_layout.render}
# Which classes may stand on each kind of surface.
_ON_SURFACE = {"sky": _IN_SKY, **_ON_GROUND}
SURFACES = {"sky": SKY, **GROUNDS}


def _regions(rng, s, layout):
    """Surface regions (kind, y0, x0, y1, x1) in pixels that tile the image.

    `bands`: a sky band over one ground band (the ground kind is global to the image).
    `tiles`: an irregular 2-3 x 2-3 grid of sky / grass / water / road tiles (at least
    two kinds), so which surface an object stands on is a local property.
    """
    if layout == "bands":
        horizon = int(round(rng.uniform(0.35, 0.65) * s))
        ground = list(GROUNDS)[rng.integers(len(GROUNDS))]
        return [("sky", 0, 0, horizon, s), (ground, horizon, 0, s, s)]
    ys, xs = tile_edges(rng, s, int(rng.integers(2, 4))), tile_edges(rng, s, int(rng.integers(2, 4)))
    cells = [(ys[i], xs[j], ys[i + 1], xs[j + 1]) for i in range(len(ys) - 1)
             for j in range(len(xs) - 1)]
    while True:
        kinds = [list(SURFACES)[k] for k in rng.integers(len(SURFACES), size=len(cells))]
        if len(set(kinds)) >= 2:
            return [(kind, *cell) for kind, cell in zip(kinds, cells)]


def render_scene(rng: np.random.Generator, image_size: int = 128, layout: str = "tiles"):
    """Draws one scene.

    Args:
      rng: the scene's random generator.
      image_size: side in pixels.
      layout: "tiles" (local surfaces, the demo's default), "bands" (one sky band
        over one ground band), "relations" (classes decided by a far object in the same
        row, `relations_layout`) or "mixed_context" (classes decided by a near outline or
        a far frame, `mixed_context_layout`).

    Returns:
      (image uint8 [S, S, 3], objects: list of (class name, box [4] normalized yxyx,
       surface kind the object stands on)). Boxes are the exact extent of each
       object's pixels; an object lies entirely inside its surface region.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout in _RENDERERS:
        return _RENDERERS[layout](rng, image_size)
    s, k = image_size, image_size / 128.0
    yy, xx = grid(s)
    regions = _regions(rng, s, layout)
    image = textured_surfaces(rng, s, regions, SURFACES)  # texture drawn under the objects
    placed, objects = [], []
    for _ in range(int(rng.integers(2, 6))):
        kind, top, left, bottom, right = regions[rng.integers(len(regions))]
        candidates = _ON_SURFACE[kind]
        name = candidates[rng.integers(len(candidates))]
        h, w = object_size(name, rng, k)
        if h > bottom - top or w > right - left:  # a small region: shrink the object to fit
            f = min((bottom - top) / h, (right - left) / w)
            h, w = int(h * f), int(w * f)
            if min(h, w) < 6:
                continue
        for _ in range(20):  # rejection sampling: moderate overlap only
            # 1 px clear of the region's edges where it fits: never on a border.
            my, mx = min(1, (bottom - top - h) // 2), min(1, (right - left - w) // 2)
            y0 = int(rng.integers(top + my, bottom - h - my + 1))
            x0 = int(rng.integers(left + mx, right - w - mx + 1))
            box = (y0, x0, y0 + h, x0 + w)
            if all(_iou(box, p) < 0.25 for p in placed):
                break
        else:
            continue
        mask = draw_object(image, yy, xx, name, y0, x0, h, w)
        placed.append(box)
        objects.append((name, mask_box(mask) / s, kind))
    return image, objects


def _example(image, objects, index, split, classes):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    names = [o[0] for o in objects]
    return build_example(
        encoded=buf.getvalue(), image_format="png", height=image.shape[0], width=image.shape[1],
        filename=f"{split}_{index:06d}.png", source_id=f"{split}-{index}",
        boxes=np.stack([o[1] for o in objects]) if objects else np.zeros((0, 4)),
        classes=[classes.index(n) for n in names], class_texts=names)


def make_shapes(output_dir: str, num_train: int, num_val: int, seed: int,
                image_size: int = 128, layout: str = "tiles") -> dict:
    """Writes the dataset; returns {"train": [paths], "val": [paths], "label_map": path}."""
    if not 32 <= int(image_size) <= 256:
        raise ValueError(f"image_size must be in 32..256, got {image_size!r}")
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train/num_val must be >= 0, got {num_train}, {num_val}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    out = {"label_map": os.path.join(output_dir, "label_map.txt")}
    classes = LAYOUT_CLASSES[layout]
    write_label_map(out["label_map"], classes)
    for split_id, (split, n) in enumerate([("train", num_train), ("val", num_val)]):
        for stale in glob.glob(os.path.join(output_dir, f"{split}-*-of-*.tfrecord")):
            os.remove(stale)  # an earlier run with another shard count
        shards = max(1, min(8, n // 1000))
        with ShardedWriter(os.path.join(output_dir, split), shards) as writer:
            for i in range(n):
                # One generator per image: an image does not depend on the split sizes.
                rng = np.random.default_rng([seed, split_id, i])
                writer.write(_example(*render_scene(rng, image_size, layout), i, split, classes))
        out[split] = writer.paths
    return out


def ensure_shapes_dataset(output_dir: str, num_train: int = 2000, num_val: int = 500,
                          seed: int = 0, image_size: int = 128, layout: str = "tiles") -> dict:
    """Generates the dataset unless `output_dir` already holds one with these parameters."""
    params = {"num_train": num_train, "num_val": num_val, "seed": seed, "image_size": image_size,
              "layout": layout}
    meta = os.path.join(output_dir, META)
    if os.path.exists(meta):
        with open(meta) as f:
            done = json.load(f)
        if done.get("params") == params and all(os.path.exists(p) for p in done["train"] + done["val"]):
            return {k: done[k] for k in ("train", "val", "label_map")}
    out = make_shapes(output_dir, num_train, num_val, seed, image_size, layout)
    with open(meta, "w") as f:  # written last: marks a complete dataset
        json.dump({"params": params, **out}, f, indent=1)
    return out
