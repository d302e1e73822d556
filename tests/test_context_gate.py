"""Adaptive context: the gate layer and the scale-mixing math."""

import numpy as np
import pytest
import tensorflow as tf

from scdnn_tf.modeling.context_gate import ContextGate, effective_scale, mix_scales


def test_gate_rows_sum_to_one_and_depend_on_the_crop():
    crops = tf.random.stateless_normal([5, 7, 7, 8], seed=[1, 2]) * 3
    gate = ContextGate(3, units=16, name="gate")
    weights = gate(crops).numpy()
    assert weights.shape == (5, 3) and (weights > 0).all()
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
    assert np.abs(weights[0] - weights[1]).max() > 1e-4


def test_mix_scales_and_effective_scale_by_hand():
    emb = tf.constant([[[[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]]]])  # [1,1,K=3,U=2]
    w = tf.constant([[[0.5, 0.25, 0.25]]])
    np.testing.assert_allclose(mix_scales(emb, w).numpy(), [[[1.5, 1.5]]])
    np.testing.assert_allclose(effective_scale(w, (1.5, 2.5, 4.0)).numpy(), [[2.375]])


def test_config_round_trip_and_validation():
    gate = ContextGate(2, units=4, name="gate")
    assert ContextGate.from_config(gate.get_config()).get_config() == gate.get_config()
    with pytest.raises(ValueError, match="num_scales must be >= 2, got 1"):
        ContextGate(1)
