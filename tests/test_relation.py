"""Relation module: geometry features, the padding mask, and the encoder layer."""

import numpy as np
import pytest
import tensorflow as tf

from scdnn_tf.modeling.relation import (PatchRelation, box_geometry, key_padding_mask,
                                        relate_compact, sinusoidal_embedding, valid_first)


def _inputs(seed=0, batch=2, num=6, units=16):
    rng = np.random.default_rng(seed)
    y, x = rng.uniform(0, 0.6, (2, batch, num))
    h, w = rng.uniform(0.05, 0.4, (2, batch, num))
    boxes = np.stack([y, x, y + h, x + w], -1).astype(np.float32)
    valid = np.array([[1, 1, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0]], bool)[:batch, :num]
    return rng.normal(size=(batch, num, units)).astype(np.float32), boxes, valid


def test_box_geometry_centre_and_log_size():
    geo = box_geometry(tf.constant([[0.2, 0.1, 0.6, 0.3]])).numpy()
    np.testing.assert_allclose(geo, [[0.4, 0.2, np.log(0.4), np.log(0.2)]], rtol=1e-6)
    assert np.isfinite(box_geometry(tf.zeros([1, 4])).numpy()).all()  # padding boxes


def test_sinusoid_dot_products_depend_only_on_differences():
    # What lets attention learn "same row" from absolute centres.
    emb = lambda v: sinusoidal_embedding(tf.constant([[v]]), 6).numpy()[0]  # noqa: E731
    assert emb(0.1).shape == (12,)
    np.testing.assert_allclose(emb(0.1) @ emb(0.3), emb(0.5) @ emb(0.7), atol=1e-4)
    assert abs(emb(0.1) @ emb(0.1) - emb(0.1) @ emb(0.4)) > 0.5


def test_key_padding_mask():
    mask = key_padding_mask(tf.constant([[True, False, True]])).numpy()
    assert mask.shape == (1, 3, 3)
    assert (mask == np.array([[True, False, True]] * 3)).all()


def test_padding_patches_cannot_change_valid_outputs():
    emb, boxes, valid = _inputs()
    layer = PatchRelation(num_layers=2, name="relation")
    out = layer(emb, boxes, valid).numpy()
    rng = np.random.default_rng(5)
    emb2 = np.where(valid[..., None], emb, rng.normal(size=emb.shape) * 100).astype(np.float32)
    boxes2 = np.where(valid[..., None], boxes, rng.uniform(size=boxes.shape)).astype(np.float32)
    out2 = layer(emb2, boxes2, valid).numpy()
    np.testing.assert_array_equal(out[valid], out2[valid])
    # ... while a valid patch's content does reach the other valid patches of its image.
    emb3 = emb.copy()
    emb3[0, 3] += rng.normal(size=emb.shape[-1]) * 5  # (a constant shift is normalized away)
    out3 = layer(emb3, boxes, valid).numpy()
    assert np.abs(out3[0, 0] - out[0, 0]).max() > 1e-3
    np.testing.assert_array_equal(out3[1, 0], out[1, 0])  # and not other images'


def test_output_shape_dtype_and_config_round_trip():
    emb, boxes, valid = _inputs()
    layer = PatchRelation(num_layers=2, num_heads=2, key_dim=8, ffn_units=32,
                          num_frequencies=4, name="relation")
    out = layer(emb, boxes, valid)
    assert out.shape == emb.shape and out.dtype == tf.float32
    clone = PatchRelation.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    clone(emb, boxes, valid)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(emb, boxes, valid).numpy(), out.numpy(), atol=1e-6)
    paths = {w.path for w in layer.weights}
    assert "relation/layer1_attention/query/kernel" in paths
    assert "relation/geometry_embedding/kernel" in paths


@pytest.mark.parametrize("name,value", [("num_layers", 0), ("num_heads", -1), ("key_dim", 0)])
def test_invalid_arguments_echo_value(name, value):
    with pytest.raises(ValueError, match=f"{name} must be >= 1, got {value}"):
        PatchRelation(**{name: value})


def test_compact_call_equals_the_full_call_on_valid_slots():
    emb, boxes, valid = _inputs(seed=3)
    layer = PatchRelation(name="relation")
    full = layer(emb, boxes, valid).numpy()
    compact = relate_compact(layer, tf.constant(emb), tf.constant(boxes), tf.constant(valid))
    np.testing.assert_allclose(compact.numpy()[valid], full[valid], atol=1e-4)
    index = valid_first(tf.constant(valid)).numpy()
    assert index.shape == (2, 3) and list(index[0]) == [0, 1, 3] and index[1, 0] == 0
