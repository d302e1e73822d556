"""mixed_bfloat16: a finite train step, and the float32 islands really float32.

The model computes its convolutions and dense layers in bfloat16 under the
`mixed_bfloat16` policy; what needs float32 (box math, top-k / NMS, crop sampling,
BatchNorm statistics, the logits the losses read, the relation softmax, the context
gate) must stay float32. The graph tests read the traced train step's ops, so a layer
that silently falls back to the compute dtype is caught whatever its Python code says.
Every CPU runs these (bfloat16 is emulated where the CPU lacks it); none measures speed.
"""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

from scdnn_tf import SCDNN
from scdnn_tf.modeling.baseline import BaselineClassifier
from scdnn_tf.modeling.context_gate import mix_scales
from scdnn_tf.modeling.fused_batch_norm import FusedBatchNormalization
from scdnn_tf.modeling.patch_generator import ContextPatchGenerator, context_patches
from scdnn_tf.modeling.relation import PatchRelation

TINY = dict(num_classes=3, backbone="small", image_size=64, fpn_channels=16,
            anchor_sizes=(8, 16, 32, 64), num_patches=6, num_train_patches=8, fc_units=32)
ALL_OPTIONS = dict(relation="attention", context_scales=(1.5, 2.5, 4.0), global_patch=True)
# Ops that compare or select values. In bfloat16 only these may see bfloat16 inputs:
# ReLU and max pooling compare with 0 / pick a maximum, which rounding cannot reorder
# beyond ties of values that rounded to the same number (see docs/training.md).
DECIDING_OPS = {"TopKV2", "NonMaxSuppressionV4", "NonMaxSuppressionV5", "Greater",
                "GreaterEqual", "Less", "LessEqual", "Equal", "NotEqual", "ArgMax", "ArgMin",
                "Max", "Min", "Maximum", "Minimum", "SelectV2", "Select", "Softmax",
                "Sigmoid", "Relu", "ReluGrad", "MaxPool", "MaxPoolGrad", "Floor",
                "ClipByValue", "CropAndResize"}
SAFE_IN_BFLOAT16 = {"Relu", "ReluGrad", "MaxPool", "MaxPoolGrad"}


@pytest.fixture
def bfloat16_policy():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _batch():
    return {"image": tf.random.stateless_uniform([2, 64, 64, 3], seed=[1, 0], maxval=255.0),
            "boxes": tf.constant([[[0.1, 0.1, 0.5, 0.6], [0.0] * 4]] * 2),
            "box_classes": tf.constant([[1, -1], [2, -1]]),
            "labels": tf.constant([[0, 1, 0], [0, 0, 1]], tf.float32)}


def _compiled_model(**options):
    model = SCDNN(**TINY, **options)
    model(_batch()["image"])
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    return model


def _graph_ops(graph):
    """(op type, input dtypes, attrs) of a graph's ops and of its function library's."""
    rows = [(op.type, {t.dtype for t in op.inputs}, op.node_def.attr)
            for op in graph.get_operations()]
    for function in graph.as_graph_def().library.function:  # e.g. the NMS map_fn body
        for node in function.node_def:
            dtypes = {tf.as_dtype(v.type) for k, v in node.attr.items() if k == "T" and v.type}
            rows.append((node.op, dtypes, node.attr))
    return rows


def test_bfloat16_train_step_finite_loss_float32_outputs(bfloat16_policy):
    model = _compiled_model(**ALL_OPTIONS)
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)  # no scaling
    before = [v.numpy() for v in model.trainable_variables]
    logs = model.train_on_batch(_batch(), return_dict=True)
    for name in model.LOSS_NAMES:
        assert np.isfinite(logs[name]), (name, logs)
    moved = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
    assert sum(moved) > len(moved) // 2  # a real step, not one skipped
    assert all(v.dtype == "float32" for v in model.variables)  # checkpoints stay float32
    out = model(_batch()["image"])
    for key in ("logits", "object_logits", "context_logits", "patch_boxes", "patch_scores",
                "context_boxes", "context_weights", "patch_context_scale", "objectness",
                "deltas"):
        assert out[key].dtype == tf.float32, key
    losses = model.compute_losses(_batch(), model(_batch(), training=True))
    assert all(v.dtype == tf.float32 for v in losses.values())


def test_the_float32_islands_are_float32_in_the_traced_step(bfloat16_policy):
    model = _compiled_model(**ALL_OPTIONS)
    graph = tf.function(model.train_step).get_concrete_function(_batch()).graph
    rows = _graph_ops(graph)
    types = collections.Counter(op for op, _, _ in rows)
    # bfloat16 really computes (backbone, FPN, heads, label predictors) ...
    assert any(op == "Conv2D" and tf.bfloat16 in d for op, d, _ in rows)
    assert any(op == "MatMul" and tf.bfloat16 in d for op, d, _ in rows)
    # ... and each island is float32: proposals' top-k, NMS, crop sampling, softmaxes.
    for island in ("TopKV2", "NonMaxSuppressionV4", "CropAndResize", "Softmax"):
        assert types[island], island
        got = {dtype for op, dtypes, _ in rows if op == island for dtype in dtypes}
        assert tf.bfloat16 not in got, (island, got)
    # BatchNorm: bfloat16 activations, float32 statistics (attribute U) and updates.
    batch_norms = [attr for op, _, attr in rows if op == "FusedBatchNormV3"]
    assert batch_norms and all(attr["U"].type == tf.float32.as_datatype_enum
                               for attr in batch_norms)


def test_only_relu_and_max_pool_compare_bfloat16_values(bfloat16_policy):
    # The audit of docs/training.md: no top-k, NMS, threshold, max or softmax reads bfloat16.
    model = _compiled_model(**ALL_OPTIONS)
    for fn, arg in ((model.train_step, _batch()),
                    (lambda x: model(x, training=False), _batch()["image"])):
        rows = _graph_ops(tf.function(fn).get_concrete_function(arg).graph)
        deciding = {op for op, dtypes, _ in rows if op in DECIDING_OPS and tf.bfloat16 in dtypes}
        assert deciding <= SAFE_IN_BFLOAT16, deciding - SAFE_IN_BFLOAT16


def test_island_layers_compute_in_float32_and_round_trip(bfloat16_policy):
    model = _compiled_model(**ALL_OPTIONS)
    islands = [model.patch_heads.patch_classifier, model.patch_heads.location_regressor,
               model.object_patch_generator, model.context_gate, model.context_gate.hidden,
               model.context_gate.scores, model.object_predictor.classifier,
               model.context_predictor.classifier, model.object_relation.attentions[0],
               *model.context_patch_generators]
    assert {layer.compute_dtype for layer in islands} == {"float32"}
    assert model.patch_heads.shared_conv.compute_dtype == "bfloat16"
    assert model.object_predictor.fc1.compute_dtype == "bfloat16"
    clone = SCDNN.from_config(model.get_config())
    clone(_batch()["image"])
    assert clone.context_gate.compute_dtype == "float32"
    assert clone.context_patch_generators[0].compute_dtype == "float32"
    assert clone.object_relation.attentions[0].compute_dtype == "float32"


def test_context_boxes_are_not_rounded(bfloat16_policy):
    # 0.3001 is 0.30078125 in bfloat16: an autocast layer would move the crop by ~0.2 px/100.
    boxes = tf.constant([[[0.3001, 0.2003, 0.4007, 0.5009]]])
    got = ContextPatchGenerator(2.0)(boxes)
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), context_patches(boxes, 2.0).numpy(), atol=1e-7)


def test_relation_reads_unrounded_boxes(bfloat16_policy):
    # Two boxes bfloat16 cannot tell apart (both round to 0.5) must give different outputs.
    layer = PatchRelation(num_heads=2, key_dim=8, ffn_units=16)
    embeddings = tf.random.stateless_normal([1, 2, 16], seed=[2, 0])
    valid = tf.constant([[True, True]])
    a = tf.constant([[[0.5, 0.5, 0.7, 0.7], [0.1, 0.1, 0.3, 0.3]]])
    b = tf.constant([[[0.5004, 0.5, 0.7, 0.7], [0.1, 0.1, 0.3, 0.3]]])
    assert np.array_equal(tf.cast(a, tf.bfloat16).numpy(), tf.cast(b, tf.bfloat16).numpy())
    out_a, out_b = layer(embeddings, a, valid), layer(embeddings, b, valid)
    assert out_a.dtype == tf.bfloat16
    assert not np.array_equal(out_a.numpy(), out_b.numpy())


def test_mix_scales_sums_in_float32():
    embeddings = tf.cast(tf.constant([[[[276.0], [272.0], [242.0]]]]), tf.bfloat16)  # exact
    weights = tf.constant([[[0.55, 0.28, 0.17]]])
    got = mix_scales(embeddings, weights)
    assert got.dtype == tf.bfloat16
    # The sum is 269.1, which rounds to 270 in bfloat16 (a step of 2 there); products of
    # bfloat16-rounded weights summed in bfloat16 give 268.
    assert float(got.numpy().ravel()[0]) == 270.0


def test_batch_norm_statistics_float32_under_bfloat16():
    x = tf.random.stateless_normal([4, 6, 6, 8], seed=[3, 0], mean=5.0, stddev=2.0)
    x16 = tf.cast(x, tf.bfloat16)
    layer = FusedBatchNormalization(dtype="mixed_bfloat16", momentum=0.0)
    y = layer(x16, training=True)
    assert y.dtype == tf.bfloat16
    assert layer.moving_mean.dtype == "float32" and layer.moving_variance.dtype == "float32"
    exact = tf.cast(x16, tf.float32).numpy()  # the statistics of the bfloat16 input, in float32
    np.testing.assert_allclose(layer.moving_mean.numpy(), exact.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), exact.var(axis=(0, 1, 2)),
                               rtol=1e-5)


def test_baseline_bfloat16_step(bfloat16_policy):
    model = BaselineClassifier(3, image_size=64)
    model(_batch()["image"])
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    logs = model.train_on_batch(_batch(), return_dict=True)
    assert np.isfinite(logs["loss"])
    assert model(_batch()["image"])["logits"].dtype == tf.float32
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
