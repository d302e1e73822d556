"""The `relations` and `mixed_context` scene layouts, and the unchanged `tiles` / `bands`."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from scdnn_tf.data import mixed_context_layout as mc
from scdnn_tf.data import relations_layout as rl
from scdnn_tf.data import shapes as ms
from scdnn_tf.data.label_map import read_label_map
from scdnn_tf.data.pipeline import make_dataset

S = 128
# Every colour a relations / tiles scene paints (surfaces, then object parts).
PALETTE = np.array(list(ms.SURFACES.values()) + [
    ms.YELLOW, ms.GREY, ms.WINDOW, (110, 70, 30), (20, 100, 30), (90, 40, 30), (200, 40, 40),
    (30, 30, 40), (20, 20, 20)], np.int32)
CUE_PIXELS = {"person": [(20, 20, 20)], "house": [(90, 40, 30), (200, 40, 40)]}
# Per-dimension |mean difference| / standard error above which two crop distributions
# are called different. Under equal distributions each ratio is ~N(0, 1) (means over
# >= 50 crops); with the 31 dimensions compared, P(max > 4.5) ~ 31 * 7e-6 ~ 2e-4.
Z_TOLERANCE = 4.5


def _scenes(layout, n, seed=11, size=S):
    return [ms.render_scene(np.random.default_rng([seed, 0, i]), size, layout) for i in range(n)]


def _scene_hash(layout, size, seed):
    image, objects = ms.render_scene(np.random.default_rng(seed), size, layout)
    h = hashlib.sha256(image.tobytes())
    for name, box, kind in objects:
        h.update(name.encode())
        h.update(np.asarray(box, np.float32).tobytes())
        h.update(kind.encode())
    return h.hexdigest()


# Computed once with the code of commit 198d2dd (before the new layouts): they pin the
# old tiles / bands output, image bytes and objects alike.
PINNED = [
    ("tiles", 128, [5, 0, 0], "ddc1f86ab38ced7125398da75fbe096f3f0ecbe5bb7ad7c14c184d23a63783bf"),
    ("tiles", 128, [5, 0, 1], "78d2de65dedcc384e3d3905a0f75fb23046b8fd664cc269e9a5c346459b32735"),
    ("tiles", 96, [5, 1, 2], "8650600aeb95add70be05560dfb6cfd5a5122c9a6566452b58aa280ebe6ab7b1"),
    ("tiles", 200, [9, 0, 3], "2984321c02ec997de22c864bca4e8c7e8ac9c4f270267293618318c25446ba5f"),
    ("bands", 128, [5, 0, 0], "d19c295cd00013d8bc65c33e196ca8afe5012b83bf87beaed40da8e5b6f72936"),
    ("bands", 128, [5, 0, 1], "3184195c9297a511ef32106a86ae910a47fe68c93406f31bb5db98b6713fc064"),
    ("bands", 96, [5, 1, 2], "a164926e224c6b992c5e065efda6a85eec42433a23a390afad76fd7316a4d8b1"),
    ("bands", 200, [9, 0, 3], "a98646b1a50f408f5f39e37e69dd33b1ac39f44a237d6a54f932bdb9b51f31cd"),
]


@pytest.mark.parametrize("layout,size,seed,expected", PINNED)
def test_old_layouts_render_the_same_bytes(layout, size, seed, expected):
    assert _scene_hash(layout, size, seed) == expected


@pytest.mark.parametrize("layout", ["relations", "mixed_context"])
def test_new_layouts_deterministic_exact_boxes_any_size(layout):
    for size in (64, 128, 200):
        a, b = _scenes(layout, 5, size=size), _scenes(layout, 5, size=size)
        for (ia, oa), (ib, ob) in zip(a, b):
            np.testing.assert_array_equal(ia, ib)
            assert [(n, tuple(x), kd) for n, x, kd in oa] == [(n, tuple(x), kd) for n, x, kd in ob]
            assert ia.shape == (size, size, 3) and len(oa) >= 2
            for name, box, _ in oa:
                assert name in ms.LAYOUT_CLASSES[layout]
                y0, x0, y1, x1 = box * size
                assert 0 <= y0 < y1 <= size and 0 <= x0 < x1 <= size
    assert not np.array_equal(_scenes(layout, 1, seed=1)[0][0], _scenes(layout, 1, seed=2)[0][0])
    with pytest.raises(ValueError, match="image_size >= 64"):
        ms.render_scene(np.random.default_rng(0), 48, layout)


def test_groups_partition_each_layouts_classes():
    for layout in ms.LAYOUTS:
        names = [n for group in ms.LAYOUT_GROUPS[layout].values() for n in group]
        assert sorted(names) == sorted(ms.LAYOUT_CLASSES[layout]), layout
    assert ms.LAYOUT_CLASSES["tiles"] == ms.CLASSES


def _crop(box, scale, size=S):
    """Pixel slices of `box` (normalized) scaled by `scale` about its centre, clipped."""
    cy, cx = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hh, hw = scale * (box[2] - box[0]) / 2, scale * (box[3] - box[1]) / 2
    y0, x0 = max(0, int(np.floor((cy - hh) * size))), max(0, int(np.floor((cx - hw) * size)))
    y1, x1 = min(size, int(np.ceil((cy + hh) * size))), min(size, int(np.ceil((cx + hw) * size)))
    return slice(y0, y1), slice(x0, x1)


def _meets(sl, box, size=S):
    y0, x0, y1, x1 = box * size
    return sl[0].start < y1 and y0 < sl[0].stop and sl[1].start < x1 and x0 < sl[1].stop


def _features(image, box, scale):
    """Crop statistics: per palette colour the fraction of its pixels nearest it and
    whether any is (a few cue pixels barely move a fraction), and the crop's area."""
    crop = image[_crop(box, scale)].reshape(-1, 1, 3).astype(np.int32)
    counts = np.bincount(np.argmin(((crop - PALETTE[None]) ** 2).sum(-1), axis=1),
                         minlength=len(PALETTE))
    return np.concatenate([counts / len(crop), counts > 0, [len(crop) / S ** 2]])


def _max_z(feats_a, feats_b):
    a, b = np.array(feats_a), np.array(feats_b)
    se = np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))
    diff = np.abs(a.mean(0) - b.mean(0))
    assert np.all(diff[se == 0] == 0)  # a constant feature must be the same constant
    return float(np.max(diff[se > 0] / se[se > 0]))


def _pair_features(layout, pair, scale, n=300):
    feats = {pair[0]: [], pair[1]: []}
    for image, objects in _scenes(layout, n):
        for name, box, _ in objects:
            if name in feats:
                feats[name].append(_features(image, box, scale))
    assert min(len(f) for f in feats.values()) >= 50
    return _max_z(feats[pair[0]], feats[pair[1]])


@pytest.mark.parametrize("rule", rl.RULES, ids=lambda r: f"{r[0]}-{r[1]}")
def test_relations_widest_crops_same_distribution_for_both_classes(rule):
    z = _pair_features("relations", rule[:2], rl.CONTEXT_REACH)
    print(f"{rule[0]} vs {rule[1]} at scale 4: max z = {z:.2f} (tolerance {Z_TOLERANCE})")
    assert z < Z_TOLERANCE


def test_the_crop_statistic_detects_a_context_decided_pair():
    # In `tiles` sun / ball are told apart by the surface in their crop: the same
    # statistic must see it, so the test above can fail.
    z = _pair_features("tiles", ("sun", "ball"), 2.0)
    print(f"tiles sun vs ball at scale 2: max z = {z:.2f}")
    assert z > 4 * Z_TOLERANCE


def test_relations_no_cue_inside_any_widest_crop():
    checked = 0
    cue_classes = {r[4] for r in rl.RULES}
    for image, objects in _scenes("relations", 300):
        pairs = [o for o in objects if o[0] in GROUP_RELATION]
        cues = [o for o in objects if o[0] in cue_classes]
        for _, pbox, _ in pairs:
            crop = image[_crop(pbox, rl.CONTEXT_REACH)]
            for colours in CUE_PIXELS.values():
                assert not np.any([np.all(crop == c, -1) for c in colours])
            for _, cbox, _ in cues:  # neither sees the other, with a margin
                assert not _meets(_crop(pbox, rl.CONTEXT_REACH), cbox)
                assert not _meets(_crop(cbox, rl.CONTEXT_REACH), pbox)
                checked += 1
    assert checked > 300


GROUP_RELATION = set(rl.GROUPS["relation"])


def test_relations_label_is_the_cue_in_the_same_row():
    counts = {r[0]: 0 for r in rl.RULES} | {r[1]: 0 for r in rl.RULES}
    decoys = 0  # second-class objects with something else standing beside them
    for image, objects in _scenes("relations", 200):
        for name, box, kind in objects:
            rule = next((r for r in rl.RULES if name in r[:2]), None)
            if rule is None:
                continue
            level = [o for o in objects if o[1][0] < box[2] and box[0] < o[1][2]]
            beside = {o[0] for o in level if not _meets(_crop(box, rl.CONTEXT_REACH), o[1])}
            assert name == (rule[0] if rule[4] in beside else rule[1])
            assert kind == rule[2]  # both classes on the same surface kind
            counts[name] += 1
            decoys += rule[1] == name and bool(beside)
    assert min(counts.values()) >= 60, counts
    # The far side also holds the other cue or a distractor: presence alone is no cue.
    assert decoys > 0.5 * (counts["stone"] + counts["wagon"])


def _mixed_objects(n, size):
    for image, objects in _scenes("mixed_context", n, size=size):
        for name, box, _ in objects:
            group = next(g for g, names in mc.GROUPS.items() if name in names)
            if group != "other":
                yield image, name, group, np.round(box * size).astype(int)


def _rect_mask(size, y0, x0, y1, x1):
    """Pixels [size, size] whose centres lie in the rectangle (pixel units)."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    return (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)


def _scaled(b, f):
    cy, cx, hh, hw = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, (b[2] - b[0]) / 2, (b[3] - b[1]) / 2
    return cy - f * hh, cx - f * hw, cy + f * hh, cx + f * hw


def _far_frame(size, b):
    return (_rect_mask(size, *_scaled(b, mc.FAR_FRAME[1]))
            & ~_rect_mask(size, *_scaled(b, mc.FAR_FRAME[0])))


def _colour_of(pixels):
    for colour, rgb in mc.CUE_COLOURS.items():
        if np.all(pixels == rgb):
            return colour
    return None


@pytest.mark.parametrize("size", [64, 128])
def test_mixed_context_class_is_the_colour_of_its_deciding_ring(size):
    seen = set()  # (far-group class, its near outline's colour)
    for image, name, group, b in _mixed_objects(150, size):
        y0, x0, y1, x1 = b
        r = (y1 - y0) / 2.0
        yy, xx = np.mgrid[0:size, 0:size] + 0.5
        d2 = (yy - (y0 + r)) ** 2 + (xx - (x0 + r)) ** 2
        near = ((d2 > r * r) & (d2 <= (r + 1) ** 2) if group == "near"
                else _rect_mask(size, y0 - 1, x0 - 1, y1 + 1, x1 + 1)
                & ~_rect_mask(size, y0, x0, y1, x1))
        near_colour = _colour_of(image[near])
        assert near_colour is not None, (name, b)  # the outline is intact all round
        if group == "near":
            assert name == f"near_{near_colour}"
        else:
            far = _far_frame(size, b)
            assert far.any() and _colour_of(image[far]) == name.split("_")[1]
            seen.add((name, near_colour))
    # The other group's cue is a random distractor: both colours occur with each class.
    assert seen == {(n, c) for n in mc.GROUPS["far"] for c in mc.CUE_COLOURS}


@pytest.mark.parametrize("size", [64, 128])
def test_mixed_context_near_cue_in_small_crop_far_cue_only_in_large(size):
    checked = 0
    colours = [np.array(c) for c in mc.CUE_COLOURS.values()]
    for image, name, group, b in _mixed_objects(60, size):
        inside = {s: _rect_mask(size, *_scaled(b, s)) for s in (1.5, 2.5, 4.0)}
        t = (b[2] - b[0]) // 4  # the widest outline the layout draws for this object
        near = _rect_mask(size, b[0] - t, b[1] - t, b[2] + t, b[3] + t)
        assert np.all(inside[1.5][near]), name
        far = _far_frame(size, b)
        assert far.any() and not np.any(far & inside[2.5]) and np.all(inside[4.0][far])
        # In pixels: the scale-1.5 crop holds the near colour; the far frame has the
        # class colour (far group) wherever it is in the image.
        crop15 = image[_crop(b / size, 1.5, size)]
        assert any(np.all(crop15 == c, -1).any() for c in colours)
        if group == "far":
            assert np.all(image[far] == mc.CUE_COLOURS[name.split("_")[1]])
        checked += 1
    assert checked > 60


@pytest.mark.parametrize("layout", ["relations", "mixed_context"])
def test_make_shapes_writes_the_layouts_label_map(tmp_path, layout):
    out = ms.ensure_shapes_dataset(str(tmp_path), num_train=3, num_val=2, seed=5, layout=layout)
    names = read_label_map(out["label_map"])
    assert names == ms.LAYOUT_CLASSES[layout]
    batch = next(iter(make_dataset(os.path.join(str(tmp_path), "val-*"), len(names), S, 2,
                                   training=False)))
    expected = [ms.render_scene(np.random.default_rng([5, 1, i]), S, layout)[1] for i in range(2)]
    for cls, objs in zip(batch["box_classes"].numpy(), expected):
        assert list(cls[cls >= 0]) == [names.index(o[0]) for o in objs]
    with pytest.raises(ValueError, match="'grid'"):
        ms.make_shapes(str(tmp_path / "x"), 1, 1, 0, layout="grid")


def test_make_shapes_cli_accepts_the_new_layouts_same_bytes_in_another_process(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-m", "data_tools.make_shapes", f"--output_dir={tmp_path / 'cli'}",
         "--num_train=2", "--num_val=1", "--layout=mixed_context", "--seed=3"],
        cwd=root, capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": root})
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_label_map(str(tmp_path / "cli" / "label_map.txt")) == mc.CLASSES
    # The same parameters in this process: the same file bytes (the records' feature
    # maps are serialized in a fixed order).
    ms.make_shapes(str(tmp_path / "here"), 2, 1, seed=3, layout="mixed_context")
    for name in ("train-00000-of-00001.tfrecord", "val-00000-of-00001.tfrecord"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "here" / name).read_bytes()
