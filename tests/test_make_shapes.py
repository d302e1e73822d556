"""The synthetic shapes dataset: determinism, exact boxes, context-only classes."""

import glob
import os

import numpy as np
import pytest

from scdnn_tf.data import shapes as ms
from scdnn_tf.data.label_map import read_label_map
from scdnn_tf.data.pipeline import make_dataset

COLOURS = {
    "sun": [ms.YELLOW], "ball": [ms.YELLOW], "boat": [ms.GREY, ms.WINDOW],
    "car": [ms.GREY, ms.WINDOW], "tree": [(110, 70, 30), (20, 100, 30)],
    "house": [(90, 40, 30), (200, 40, 40)], "bird": [(30, 30, 40)], "person": [(20, 20, 20)],
}


def _scenes(n, size=128):
    for i in range(n):
        yield ms.render_scene(np.random.default_rng([7, 0, i]), size)


def _is_colour(pixels, colours):
    return np.any([np.all(pixels == c, axis=-1) for c in colours], axis=0)


def _isolated(scene):
    """(name, ground, pixel box) of the objects no other object's box touches."""
    image, objects = scene
    boxes = [np.round(o[1] * image.shape[0]).astype(int) for o in objects]
    for j, ((name, _, ground), (y0, x0, y1, x1)) in enumerate(zip(objects, boxes)):
        if not any(b[0] <= y1 and y0 <= b[2] and b[1] <= x1 and x0 <= b[3]
                   for k, b in enumerate(boxes) if k != j):
            yield name, ground, (y0, x0, y1, x1)


def _files(folder):
    return {os.path.basename(p): open(p, "rb").read()
            for p in sorted(glob.glob(os.path.join(folder, "*.tfrecord")))}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = ms.make_shapes(str(tmp_path / "a"), 6, 3, seed=1)
    ms.make_shapes(str(tmp_path / "b"), 6, 3, seed=1)
    ms.make_shapes(str(tmp_path / "c"), 6, 3, seed=2)
    fa, fb, fc = (_files(str(tmp_path / d)) for d in "abc")
    assert set(fa) == {"train-00000-of-00001.tfrecord", "val-00000-of-00001.tfrecord"}
    assert fa == fb and fa != fc
    assert read_label_map(a["label_map"]) == ms.CLASSES


def test_boxes_are_the_drawn_pixels():
    checked = 0
    for image, objects in _scenes(40):
        for name, _, (y0, x0, y1, x1) in _isolated((image, objects)):
            hit = _is_colour(image, COLOURS[name])
            # Nothing of it in the 1-pixel ring around its box ...
            ring = hit[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1].sum()
            assert ring == hit[y0:y1, x0:x1].sum(), name
            # ... and the box is tight: each edge row/column holds object pixels.
            assert hit[y0, x0:x1].any() and hit[y1 - 1, x0:x1].any(), name
            assert hit[y0:y1, x0].any() and hit[y0:y1, x1 - 1].any(), name
            checked += 1
    assert checked > 50


@pytest.mark.parametrize("pair", ms.CONTEXT_CLASSES)
def test_context_pairs_identical_object_pixels(pair):
    crops = {pair[0]: {}, pair[1]: {}}
    grounds = {pair[0]: set(), pair[1]: set()}
    for image, objects in _scenes(150):
        for name, ground, (y0, x0, y1, x1) in _isolated((image, objects)):
            if name in crops:
                crops[name].setdefault((y1 - y0, x1 - x0), image[y0:y1, x0:x1])
                grounds[name].add(ground)
    # Context decides: disjoint surroundings for ball/sun (grass vs sky) and boat/car.
    if pair == ("sun", "ball"):
        assert grounds["ball"] == {"grass"}
    else:
        assert grounds["boat"] == {"water"} and grounds["car"] == {"road"}
    common = set(crops[pair[0]]) & set(crops[pair[1]])
    assert len(common) >= 3
    colours = COLOURS[pair[0]]
    for size in common:
        a, b = crops[pair[0]][size], crops[pair[1]][size]
        ma, mb = _is_colour(a, colours), _is_colour(b, colours)
        np.testing.assert_array_equal(ma, mb)  # same mask ...
        np.testing.assert_array_equal(a[ma], b[mb])  # ... same object pixels
        assert (ma.all() or np.any(a[~ma] != b[~mb]))  # surroundings differ


def test_records_load_and_ensure_is_idempotent(tmp_path):
    out = ms.ensure_shapes_dataset(str(tmp_path), num_train=8, num_val=4, seed=3)
    mtime = os.path.getmtime(out["train"][0])
    again = ms.ensure_shapes_dataset(str(tmp_path), num_train=8, num_val=4, seed=3)
    assert again == out and os.path.getmtime(out["train"][0]) == mtime
    ds = make_dataset(os.path.join(str(tmp_path), "val-*"), len(ms.CLASSES), 64, 4,
                      training=False)
    batch = next(iter(ds))
    expected = [ms.render_scene(np.random.default_rng([3, 1, i]), 128)[1] for i in range(4)]
    for labels, cls, objs in zip(batch["labels"].numpy(), batch["box_classes"].numpy(), expected):
        assert list(cls[cls >= 0]) == [ms.CLASSES.index(o[0]) for o in objs]
        assert set(np.flatnonzero(labels)) == {ms.CLASSES.index(o[0]) for o in objs}
        assert 2 <= len(objs) <= 5
    ms.ensure_shapes_dataset(str(tmp_path), num_train=4, num_val=4, seed=3)
    assert len(glob.glob(os.path.join(str(tmp_path), "train-*"))) == 1


def test_rejects_bad_image_size(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        ms.make_shapes(str(tmp_path), 1, 1, 0, image_size=512)


def _surfaces(image):
    """Set of surface kinds whose (textured) colour covers >= 5 % of the image."""
    found = set()
    for kind, colour in ms.SURFACES.items():
        close = np.all(np.abs(image.astype(int) - colour) <= 6, axis=-1)
        if close.mean() >= 0.05:
            found.add(kind)
    return found


def test_tiles_make_context_local_and_bands_global():
    # Tiles: a vehicle's class is not given by which surfaces the image holds; scenes
    # with both water and road and a single vehicle exist, with either label.
    ambiguous = set()
    for image, objects in _scenes(200):
        vehicles = [o for o in objects if o[0] in ("boat", "car")]
        if len(vehicles) == 1 and {"water", "road"} <= _surfaces(image):
            ambiguous.add(vehicles[0][0])
        for name, _, kind in objects:
            assert name in ms._ON_SURFACE[kind], (name, kind)
    assert ambiguous == {"boat", "car"}
    # Bands: one ground per image, so the surfaces alone decide boat vs car.
    for i in range(60):
        image, objects = ms.render_scene(np.random.default_rng([7, 1, i]), 128, "bands")
        grounds = _surfaces(image) - {"sky"}
        assert len(grounds) == 1 and {o[2] for o in objects} - {"sky"} <= grounds
    with pytest.raises(ValueError, match="'grid'"):
        ms.render_scene(np.random.default_rng(0), 128, "grid")
