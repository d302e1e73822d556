"""Drawing patches and labels: colours land on the box edges, shapes, errors."""

import numpy as np
import pytest

from scdnn_tf.evaluation import visualize as vis


def _grey(size=32):
    return np.full((size, size, 3), 100.0, np.float32)


def test_tight_and_context_boxes_drawn_in_their_colours():
    # Box corners map to y*(H-1): [0.25, 0.25, 0.75, 0.75] on 33 px -> rows/cols 8..24.
    out = vis.draw_patches(_grey(33), patch_boxes=[[0.25, 0.25, 0.75, 0.75]],
                           context_boxes=[[0.0, 0.0, 1.0, 1.0]], patch_scores=[0.9])
    assert out.dtype == np.uint8 and out.shape == (33, 33, 3)
    assert tuple(out[8, 16]) == vis.TIGHT_COLOR and tuple(out[24, 16]) == vis.TIGHT_COLOR
    assert tuple(out[16, 8]) == vis.TIGHT_COLOR and tuple(out[16, 24]) == vis.TIGHT_COLOR
    assert tuple(out[32, 16]) == vis.CONTEXT_COLOR and tuple(out[16, 0]) == vis.CONTEXT_COLOR
    assert tuple(out[16, 16]) == (100, 100, 100)  # inside untouched


def test_only_best_patches_above_min_score_are_drawn():
    boxes = [[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.9, 0.9], [0.3, 0.3, 0.4, 0.4]]
    out = vis.draw_patches(_grey(101), patch_boxes=boxes, patch_scores=[0.2, 0.9, 0.05],
                           max_patches=2, min_patch_score=0.1)
    assert tuple(out[50, 70]) == vis.TIGHT_COLOR   # best patch (top edge, row 50)
    assert tuple(out[10, 15]) == vis.TIGHT_COLOR   # second best
    assert tuple(out[30, 35]) == (100, 100, 100)   # below min_patch_score


def test_labels_are_written_and_scale_enlarges():
    image = _grey(16)
    plain = vis.draw_patches(image, scale=4)
    labelled = vis.draw_patches(image, labels=[("ball", 0.93)], scale=4)
    assert plain.shape == (64, 64, 3)
    assert (plain == 100).all()
    corner = labelled[:16, :60]
    assert (corner > 200).any() and (corner == 0).any()  # white text on black


def test_top_labels_order_and_threshold():
    names = ["a", "b", "c", "d"]
    assert vis.top_labels([0.1, 0.9, 0.5, 0.7], names, k=3) == [
        ("b", pytest.approx(0.9)), ("d", pytest.approx(0.7)), ("c", pytest.approx(0.5))]
    assert [n for n, _ in vis.top_labels([0.1, 0.9, 0.5, 0.7], names, k=3, min_score=0.6)] == ["b", "d"]
    with pytest.raises(ValueError, match="does not match 4 classes"):
        vis.top_labels([0.1, 0.2], names)


def test_draw_batch_stacks_and_uses_optional_outputs():
    images = np.stack([_grey(32), _grey(32)])
    outputs = {"scores": np.array([[0.9, 0.1], [0.2, 0.8]]),
               "patch_boxes": np.array([[[0.0, 0.0, 0.5, 0.5]], [[0.5, 0.5, 1.0, 1.0]]]),
               "patch_scores": np.array([[0.7], [0.6]])}
    out = vis.draw_batch(images, outputs, ["x", "y"], k=1, scale=2)
    assert out.shape == (2, 64, 64, 3) and out.dtype == np.uint8
    assert tuple(out[1, 63, 40]) == vis.TIGHT_COLOR


@pytest.mark.parametrize("kwargs, message", [
    (dict(image=np.zeros((8, 8))), "expected an RGB image"),
    (dict(image=np.zeros((8, 8, 3)), scale=0), "scale must be an integer >= 1"),
    (dict(image=np.zeros((8, 8, 3)), patch_boxes=[[0, 0, 1, 1]], patch_scores=[0.1, 0.2]),
     "2 patch scores for 1 patch boxes"),
])
def test_bad_inputs_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        vis.draw_patches(**kwargs)


def test_float_image_is_rounded_and_clipped():
    image = np.array([[[-5.0, 127.6, 300.0]]], np.float32)
    assert vis.to_uint8_image(image).tolist() == [[[0, 128, 255]]]


def test_chosen_context_scale_is_written_at_the_context_box():
    args = dict(patch_boxes=[[0.4, 0.4, 0.6, 0.6]], context_boxes=[[0.1, 0.1, 0.9, 0.9]],
                patch_scores=[0.9], scale=4)
    plain = vis.draw_patches(_grey(32), **args)
    labelled = vis.draw_patches(_grey(32), patch_context_scale=[2.7], **args)
    changed = np.argwhere(np.any(plain != labelled, axis=-1))
    assert len(changed) > 10
    # The text sits inside the context box, at its top-left corner (rows/cols from 12).
    assert changed.min(0).tolist() >= [12, 12] and changed[:, 0].max() < 64
    # Antialiased text in the context colour over grey: blends with red >= green >= blue.
    r, g, b = labelled[changed[:, 0], changed[:, 1]].astype(int).T
    assert (r >= g).all() and (g >= b).all() and r.max() > 200
