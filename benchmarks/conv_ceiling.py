"""The kernel ceiling: how fast a model's convolutions and matmuls run alone, vs a matmul.

    python -m benchmarks.conv_ceiling --configs=resnet50@448x2,small@128x16

Every `Conv2D` of SCDNN's traced training-mode forward pass (backbone, FPN, dense patch
heads) is timed on its own, with the shapes, strides and padding it has in the model:
the forward convolution, the input gradient (not for the convolution of the image, which
needs none) and the filter gradient, each TF's own kernel as the train step runs it.
The label predictors' matmuls are timed the same way (forward and both gradients) at the
batch's number of valid patches. Identical kernels are timed once and counted as often
as they occur. Each kernel's time is the fastest of `--reps` calls less the cost of
calling an empty tf.function (which the train step does not pay); in each round the
2048^3 float32 matmul is timed the same way, and the ratios are the median over rounds
(load average recorded).

The table gives, per part of the network, the training FLOP/s of its kernels when each
runs alone. The last line divides the whole step's training FLOPs (3 x the forward
FLOPs, as `train_step.py` counts them) by the kernels' time alone, as if everything
between them (BatchNorm, ReLU, additions, crops, losses, the optimizer update) were
free: a step made of these kernels, run one at a time, does not reach a higher fraction
of the matmul rate.
"""

from __future__ import annotations

import collections
import json
import os
import re
import statistics
import time

from absl import app, flags

import scdnn_tf.utils.tf_start  # noqa: F401  (quiet TF start-up logs)
import tensorflow as tf

from benchmarks import train_step_lib as lib

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The CLI's flags, defined only when run as a script (tests import the module
    alongside other benchmarks that define flags of the same names)."""
    flags.DEFINE_list("configs", ["resnet50@448x2", "small@128x16"], "backbone@size x batch.")
    flags.DEFINE_integer("rounds", 3, "Rounds (the matmul and every kernel each round).")
    flags.DEFINE_integer("reps", 3, "Timed calls per kernel per round (the fastest counts).")
    flags.DEFINE_integer("num_classes", 80, "Classes of the model.")
    flags.DEFINE_string("json_out", "conv_ceiling.json", "Where to write the results.")


# Conv2D ops are named model/component/layer/...: the component decides the part.
PARTS = {"fpn": "FPN", "patch_heads": "dense patch heads"}
# Ops between the model input and the stem convolution (preprocessing and padding).
PASS_THROUGH = ("Pad", "MirrorPad", "RealDiv", "AddV2", "Sub", "Mul", "Cast", "Identity")
ConvSpec = collections.namedtuple(
    "ConvSpec", "input_shape filter_shape output_shape strides padding explicit_paddings "
                "dilations needs_input_grad")


def _part(op_name: str) -> str:
    component = re.sub(r"_\d+$", "", op_name.split("/")[1])
    return PARTS.get(component, "backbone")


def conv_specs(graph: tf.Graph) -> dict:
    """{(ConvSpec, part): count} of the NHWC Conv2D ops of `graph`.

    A convolution of the model input (after preprocessing) needs no input gradient in a
    train step.
    """
    specs: dict = {}
    for op in graph.get_operations():
        if op.type != "Conv2D":
            continue
        if op.get_attr("data_format") != b"NHWC":
            raise ValueError(f"{op.name}: data_format {op.get_attr('data_format')!r}, "
                             "only NHWC is timed")
        shapes = [op.inputs[0].shape, op.inputs[1].shape, op.outputs[0].shape]
        if not all(s.is_fully_defined() for s in shapes):
            raise ValueError(f"{op.name}: shapes {shapes} are not static")
        source = op.inputs[0].op
        while source.type in PASS_THROUGH:
            source = source.inputs[0].op
        needs_input_grad = source.type != "Placeholder"
        spec = ConvSpec(tuple(shapes[0]), tuple(shapes[1]), tuple(shapes[2]),
                        tuple(op.get_attr("strides")), op.get_attr("padding").decode(),
                        tuple(op.get_attr("explicit_paddings")),
                        tuple(op.get_attr("dilations")), needs_input_grad)
        key = (spec, _part(op.name))
        specs[key] = specs.get(key, 0) + 1
    if not specs:
        raise ValueError("no Conv2D op in the traced graph")
    return specs


def conv_flops(spec: ConvSpec) -> float:
    """Training FLOPs of one convolution: forward, input gradient (if any), filter
    gradient, 2 x N x Ho x Wo x kh x kw x Cin x Cout each."""
    n, ho, wo, cout = spec.output_shape
    kh, kw, cin, _ = spec.filter_shape
    forward = 2.0 * n * ho * wo * kh * kw * cin * cout
    return forward * (3 if spec.needs_input_grad else 2)


def conv_ops(spec: ConvSpec) -> list:
    """The training kernels of one convolution as the train step runs them, each a
    function of (x, w, dy): the forward output, the input gradient (if needed) and the
    filter gradient for the upstream gradient dy."""
    attrs = dict(strides=list(spec.strides), padding=spec.padding,
                 explicit_paddings=list(spec.explicit_paddings),
                 dilations=list(spec.dilations), data_format="NHWC")
    ops = [lambda x, w, dy: tf.raw_ops.Conv2D(input=x, filter=w, **attrs)]
    if spec.needs_input_grad:
        ops.append(lambda x, w, dy: tf.raw_ops.Conv2DBackpropInput(
            input_sizes=spec.input_shape, filter=w, out_backprop=dy, **attrs))
    ops.append(lambda x, w, dy: tf.raw_ops.Conv2DBackpropFilter(
        input=x, filter_sizes=spec.filter_shape, out_backprop=dy, **attrs))
    return ops


def _timed_functions(ops, *args) -> list:
    """One warmed-up tf.function per op applied to `args`, each returning the first
    element of its result (the timing stays free of host copies)."""
    kernels = [tf.function(lambda op=op: tf.reshape(op(*args), [-1])[0]) for op in ops]
    for kernel in kernels:
        kernel().numpy()  # trace and warm up outside the timing
    return kernels


def _kernels(spec: ConvSpec) -> list:
    """The timed training kernels of one convolution, on random inputs."""
    return _timed_functions(conv_ops(spec), tf.random.normal(spec.input_shape),
                            tf.random.normal(spec.filter_shape) * 0.05,
                            tf.random.normal(spec.output_shape))


def _best_seconds(kernel, reps: int) -> float:
    """The fastest of `reps` calls: a ceiling is about what a kernel can reach."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        kernel().numpy()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_best_flops_per_s(overhead: float, n: int = 2048, reps: int = 5) -> float:
    """float32 FLOP/s of an n^3 matmul (2 n^3 FLOPs), timed as the kernels are."""
    kernels = _timed_functions([tf.matmul], tf.random.normal([n, n]), tf.random.normal([n, n]))
    return 2.0 * n**3 / _seconds(kernels, reps, overhead)


def call_overhead(reps: int = 50) -> float:
    """Seconds of calling a tf.function that does (almost) nothing, fetching a scalar:
    the host-side cost every timed kernel call pays and the train step does not."""
    tiny = tf.zeros([2, 2])
    kernel = tf.function(lambda: tiny[0, 0])
    kernel().numpy()
    return _best_seconds(kernel, reps)


def _seconds(kernels, reps: int, overhead: float) -> float:
    return sum(max(_best_seconds(k, reps) - overhead, 0.0) for k in kernels)


def matmul_specs(graph: tf.Graph, patches: int) -> dict:
    """{((m, k, n), part): count} of the MatMul ops of `graph` (all need both gradients).

    The label predictors run on the batch's valid patches, a dynamic count: a leading
    dimension the graph leaves open is `patches`.
    """
    specs: dict = {}
    for op in graph.get_operations():
        if op.type != "MatMul":
            continue
        if op.get_attr("transpose_a") or op.get_attr("transpose_b"):
            raise ValueError(f"{op.name}: transposed MatMul is not timed")
        k, n = op.inputs[1].shape
        m = op.inputs[0].shape[0]
        key = ((patches if m is None else int(m), int(k), int(n)), "label predictors")
        specs[key] = specs.get(key, 0) + 1
    return specs


def matmul_flops(spec) -> float:
    """Training FLOPs of one [m, k] x [k, n] matmul: forward and both gradients."""
    m, k, n = spec
    return 3 * 2.0 * m * k * n


def matmul_ops() -> list:
    """The training kernels of a matmul a @ b, each a function of (a, b, dy): the forward
    product and the gradients for a and for b."""
    return [lambda a, b, dy: tf.matmul(a, b),
            lambda a, b, dy: tf.matmul(dy, b, transpose_b=True),
            lambda a, b, dy: tf.matmul(a, dy, transpose_a=True)]


def _matmul_kernels(spec) -> list:
    """The timed training kernels of one [m, k] x [k, n] matmul, on random inputs."""
    m, k, n = spec
    return _timed_functions(matmul_ops(), tf.random.normal([m, k]), tf.random.normal([k, n]),
                            tf.random.normal([m, n]))


def measure(config: str, rounds: int, reps: int, num_classes: int) -> dict:
    """Isolated kernel times of the model's convolutions and matmuls, per part."""
    backbone, size, batch_size = lib.parse_config(config)
    batch = lib.synthetic_batch(batch_size, size, num_classes)
    model = lib.build_scdnn(backbone, size, num_classes)
    train_flops = 3.0 * lib.forward_flops(model, batch)
    graph = tf.function(lambda b: model(b, training=True)).get_concrete_function(batch).graph
    # (part, count, training FLOPs of one, kernels)
    items = [(part, count, conv_flops(spec), _kernels(spec))
             for (spec, part), count in conv_specs(graph).items()]
    items += [(part, count, matmul_flops(spec), _matmul_kernels(spec))
              for (spec, part), count in
              matmul_specs(graph, lib.valid_patches(model, batch)).items()]
    part_flops = collections.Counter()
    for part, count, flops, _ in items:
        part_flops[part] += count * flops
    fractions = collections.defaultdict(list)
    bounds = []
    matmuls = []
    overheads = []
    for _ in range(rounds):
        overhead = call_overhead()
        overheads.append(overhead)
        matmul = matmul_best_flops_per_s(overhead)
        part_seconds = collections.Counter()
        for part, count, _, kernels in items:
            part_seconds[part] += count * _seconds(kernels, reps, overhead)
        for part, seconds in part_seconds.items():
            fractions[part].append(part_flops[part] / seconds / matmul)
        bounds.append(train_flops / sum(part_seconds.values()) / matmul)
        matmuls.append(matmul)
    return {
        "config": config,
        "train_gflop": train_flops / 1e9,
        "timed_train_gflop": sum(part_flops.values()) / 1e9,
        "kernels": sum(count for _, count, _, _ in items),
        "distinct_kernels": len(items),
        "matmul_gflops": statistics.median(matmuls) / 1e9,
        "parts": {part: {"train_gflop": part_flops[part] / 1e9,
                         "alone_vs_matmul": statistics.median(fractions[part])}
                  for part in part_flops},
        "step_bound_vs_matmul": statistics.median(bounds),
        "step_bound_per_round": bounds,
        "call_overhead_us": 1e6 * statistics.median(overheads),
        "load_average": os.getloadavg()[0],
    }


def print_table(results: list) -> None:
    print("| config | part | train GFLOP | alone, / matmul |")
    print("|---|---|---|---|")
    for r in results:
        for part, v in sorted(r["parts"].items()):
            print(f"| {r['config']} (matmul {r['matmul_gflops']:.0f} GFLOP/s) | {part} | "
                  f"{v['train_gflop']:.1f} | {100 * v['alone_vs_matmul']:.0f} % |")
        print(f"| {r['config']} | whole step over the timed kernels' time "
              f"({r['kernels']} kernels, {r['distinct_kernels']} distinct) | "
              f"{r['train_gflop']:.1f} ({r['timed_train_gflop']:.1f} timed) | "
              f"<= {100 * r['step_bound_vs_matmul']:.0f} % |")
    print("load average:", ", ".join(f"{r['load_average']:.1f}" for r in results),
          "| call overhead subtracted per kernel call:",
          ", ".join(f"{r['call_overhead_us']:.0f} us" for r in results))


def main(argv):
    del argv
    results = [measure(c, FLAGS.rounds, FLAGS.reps, FLAGS.num_classes) for c in FLAGS.configs]
    print_table(results)
    with open(FLAGS.json_out, "w") as f:
        json.dump(results, f, indent=1)
    print("wrote", FLAGS.json_out)


if __name__ == "__main__":
    define_flags()
    app.run(main)
