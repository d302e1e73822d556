"""benchmarks/conv_ceiling.py: the model's kernels found, counted and run correctly."""

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import conv_ceiling, train_step_lib


@pytest.fixture(scope="module")
def traced():
    batch = train_step_lib.synthetic_batch(2, 64, 5)
    model = train_step_lib.build_scdnn("small", 64, 5)
    graph = tf.function(lambda b: model(b, training=True)).get_concrete_function(batch).graph
    return model, batch, graph


def _profiled_conv_flops(graph):
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    opts["account_type_regexes"] = ["Conv2D"]
    return float(tf.compat.v1.profiler.profile(graph, options=opts).total_float_ops)


def test_every_convolution_is_counted_once_with_its_part_and_flops(traced):
    _, _, graph = traced
    specs = conv_ceiling.conv_specs(graph)
    ops = [op for op in graph.get_operations() if op.type == "Conv2D"]
    assert sum(specs.values()) == len(ops)
    assert {part for _, part in specs} == {"backbone", "FPN", "dense patch heads"}
    # Only the stem convolution reads the image, which needs no input gradient.
    no_input_grad = [(s, part) for s, part in specs if not s.needs_input_grad]
    assert len(no_input_grad) == 1 and no_input_grad[0][1] == "backbone"
    assert no_input_grad[0][0].input_shape[-1] == 3
    # Forward FLOPs (a third of a convolution's training FLOPs, half for the stem) agree
    # with TF's profiler, strides and padding included.
    forward = sum(count * conv_ceiling.conv_flops(s) / (3 if s.needs_input_grad else 2)
                  for (s, _), count in specs.items())
    assert forward == pytest.approx(_profiled_conv_flops(graph), rel=1e-6)


@pytest.mark.parametrize("strides,padding,explicit", [
    ((1, 2, 2, 1), "SAME", ()), ((1, 1, 1, 1), "VALID", ()),
    ((1, 2, 2, 1), "EXPLICIT", (0, 0, 1, 2, 2, 1, 0, 0))])
def test_timed_kernels_are_the_convolution_and_its_two_gradients(strides, padding, explicit):
    x = tf.random.stateless_normal([2, 9, 10, 3], seed=[1, 2])
    w = tf.random.stateless_normal([3, 3, 3, 4], seed=[3, 4])
    pads = [[explicit[2 * i], explicit[2 * i + 1]] for i in range(4)] if explicit else padding
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        y = tf.nn.conv2d(x, w, strides, pads)
    dy = tf.random.stateless_normal(y.shape, seed=[5, 6])
    dx, dw = tape.gradient(y, [x, w], output_gradients=dy)
    spec = conv_ceiling.ConvSpec(tuple(x.shape), tuple(w.shape), tuple(y.shape), strides,
                                 padding, explicit, (1, 1, 1, 1), True)
    results = [op(x, w, dy) for op in conv_ceiling.conv_ops(spec)]
    for got, want in zip(results, [y, dx, dw]):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
    no_grad = spec._replace(needs_input_grad=False)
    assert len(conv_ceiling.conv_ops(no_grad)) == 2
    assert conv_ceiling.conv_flops(no_grad) == pytest.approx(2 / 3 * conv_ceiling.conv_flops(spec))


def test_timed_matmul_kernels_are_the_product_and_its_two_gradients():
    a = tf.random.stateless_normal([6, 4], seed=[1, 2])
    b = tf.random.stateless_normal([4, 3], seed=[3, 4])
    dy = tf.random.stateless_normal([6, 3], seed=[5, 6])
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        y = a @ b
    da, db = tape.gradient(y, [a, b], output_gradients=dy)
    for got, want in zip([op(a, b, dy) for op in conv_ceiling.matmul_ops()], [y, da, db]):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_label_predictor_matmuls_take_the_valid_patch_count(traced):
    model, _, graph = traced
    specs = conv_ceiling.matmul_specs(graph, patches=7)
    # fc1 and fc2 of both predictors run on the valid patches; the classifiers on all
    # slots (a static count).
    rows = sorted(m for (m, _, _), _ in specs)
    assert rows.count(7) == 2 and sum(c for (s, _), c in specs.items() if s[0] == 7) == 4
    fc1 = [(s, c) for (s, _), c in specs.items() if s[1] == model.crop_size**2 * model.fpn_channels]
    assert fc1 == [((7, model.crop_size**2 * model.fpn_channels, model.fc_units), 2)]
    assert conv_ceiling.matmul_flops((7, 3, 5)) == 3 * 2 * 7 * 3 * 5


def test_measure_reports_every_part_and_a_bound():
    result = conv_ceiling.measure("small@64x2", rounds=1, reps=1, num_classes=5)
    assert set(result["parts"]) == {"backbone", "FPN", "dense patch heads", "label predictors"}
    assert result["timed_train_gflop"] <= result["train_gflop"] * 1.001
    assert all(v["alone_vs_matmul"] > 0 for v in result["parts"].values())
    assert result["step_bound_vs_matmul"] > 0
