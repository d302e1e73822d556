r"""Backbone forward + backward with Keras' BatchNormalization vs the fused kernel.

    python -m benchmarks.batch_norm [--configs=resnet50@448x2,resnet50@224x8]
        [--rounds=5] [--json_out=batch_norm.json]

The same keras.applications ResNet-50 (random init) twice in one process: with Keras 3's
`BatchNormalization` (`tf.nn.moments` + `tf.nn.batch_normalization`) and with every
BatchNorm swapped for `FusedBatchNormalization` (`fuse_batch_norms`, same weights). Each
round runs one forward + backward (gradients of every variable, training-mode BatchNorm;
`--frozen` for frozen BatchNorm) of each, order alternating; the ratio is per round,
median over rounds. Also printed: the largest relative gradient difference between the
two (norm of the difference / norm of the gradient, conv biases excluded: their
gradient is zero up to rounding under a following BatchNorm) next to the same figure
for the Keras model fed the images scaled by 1 + 1e-6, which shows how far rounding
alone moves the gradients of this randomly initialized network.
"""

from __future__ import annotations

import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf
from absl import app, flags

from benchmarks import train_step_lib as lib
from scdnn_tf.modeling.fused_batch_norm import fuse_batch_norms

flags.DEFINE_list("configs", ["resnet50@448x2", "resnet50@224x8"],
                  "resnet50@size x batch entries.")
flags.DEFINE_integer("rounds", 5, "Timed rounds.")
flags.DEFINE_bool("frozen", False, "Frozen BatchNorm (moving statistics) instead.")
flags.DEFINE_string("json_out", "batch_norm.json", "Where to write the results.")
FLAGS = flags.FLAGS


def _gradient_fn(model):
    @tf.function
    def grads(x):
        with tf.GradientTape() as tape:
            outputs = model(x, training=True)
            loss = tf.reduce_mean(tf.square(outputs))
        return tape.gradient(loss, model.trainable_variables)
    return grads


def _worst_difference(a, b, variables):
    return max(float(tf.norm(p - q) / tf.norm(p)) for p, q, v in zip(a, b, variables)
               if not v.path.endswith("bias"))


def run_config(text, rounds, frozen):
    _, size, batch = lib.parse_config(text)
    inputs = keras.Input((size, size, 3))
    base = keras.applications.ResNet50(include_top=False, weights=None, input_tensor=inputs)
    models = {"keras": keras.Model(inputs, base.output)}
    models["fused"] = fuse_batch_norms(models["keras"])
    if frozen:
        for model in models.values():
            for layer in model.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False
    images = tf.random.uniform((batch, size, size, 3), 0, 255, seed=1)
    fns = {k: _gradient_fn(m) for k, m in models.items()}
    first = {k: f(images) for k, f in fns.items()}  # traces
    variables = models["keras"].trainable_variables
    rounding = _worst_difference(first["keras"], fns["keras"](images * (1 + 1e-6)), variables)
    fused_vs_keras = _worst_difference(first["keras"], first["fused"], variables)
    times = {k: [] for k in fns}
    for r in range(rounds):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            start = time.perf_counter()
            fns[k](images)[0].numpy()
            times[k].append(time.perf_counter() - start)
    ratios = [f / k for f, k in zip(times["fused"], times["keras"])]
    return {"keras_s": statistics.median(times["keras"]),
            "fused_s": statistics.median(times["fused"]),
            "ratio_fused_over_keras": statistics.median(ratios), "ratios": ratios,
            "gradient_difference_fused_vs_keras": fused_vs_keras,
            "gradient_difference_input_scaled_1e-6": rounding,
            "load_avg": os.getloadavg()[0]}


def main(argv):
    del argv
    out = {"frozen": FLAGS.frozen, "rounds": FLAGS.rounds, "configs": {}}
    for text in FLAGS.configs:
        out["configs"][text] = run_config(text, FLAGS.rounds, FLAGS.frozen)
    mode = "frozen" if FLAGS.frozen else "training-mode"
    print(f"\nResNet-50 forward + backward, {mode} BatchNorm, {FLAGS.rounds} rounds")
    print(f"{'config':16s} {'keras BN s':>11s} {'fused s':>8s} {'ratio':>6s} "
          f"{'grad diff':>10s} {'(1e-6 input)':>13s} {'load':>5s}")
    for text, e in out["configs"].items():
        print(f"{text:16s} {e['keras_s']:11.3f} {e['fused_s']:8.3f} "
              f"{e['ratio_fused_over_keras']:6.2f} {e['gradient_difference_fused_vs_keras']:10.3f} "
              f"{e['gradient_difference_input_scaled_1e-6']:13.3f} {e['load_avg']:5.1f}")
    with open(FLAGS.json_out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {FLAGS.json_out}")


if __name__ == "__main__":
    app.run(main)
