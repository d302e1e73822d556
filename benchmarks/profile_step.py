r"""Where SCDNN's train step spends its time: nested prefixes of the network, timed.

    python -m benchmarks.profile_step [--config=resnet50@448x2] [--rounds=5]
        [--json_out=profile_step.json]

Each prefix is run forward and backward (gradients of a scalar of its outputs with
respect to every variable it uses, no optimizer update) in its own tf.function:
`backbone`, `+fpn`, `+patch_heads`, `+rest` (patch generators, crops, label predictors,
aggregation, the three losses: the whole model's loss gradient) and `step` (Keras'
train_function: `+rest` plus the AdamW update). The cost of a part is the difference of
consecutive prefixes (per-round differences, median over rounds; the prefixes alternate
within every round). The same SCDNN as benchmarks/train_step.py (paper defaults for
non-small backbones, configs/demo.flags for `small`); forward FLOPs per prefix from the
TF profiler.
"""

from __future__ import annotations

import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf
from absl import app, flags

from benchmarks import train_step_lib as lib

flags.DEFINE_string("config", "resnet50@448x2", "backbone@size x batch.")
flags.DEFINE_integer("rounds", 5, "Timed rounds (one call of each prefix per round).")
flags.DEFINE_integer("num_classes", 80, "Classes.")
flags.DEFINE_string("json_out", "profile_step.json", "Where to write the results.")
FLAGS = flags.FLAGS


def _scalar(tensors):
    return tf.add_n([tf.reduce_mean(tf.cast(t, tf.float32)) for t in tf.nest.flatten(tensors)
                     if t.dtype.is_floating])


def prefixes(model, batch):
    """name -> fn(images) returning the network prefix's outputs (training mode)."""
    images = batch["image"]

    def backbone(x):
        return model.backbone(x, training=True)

    def fpn(x):
        return model.fpn(backbone(x))

    def heads(x):
        return model.patch_heads(fpn(x))

    def rest(x):
        outputs = model(dict(batch, image=x), training=True)
        return tf.reduce_mean(model.compute_losses(batch, outputs)["loss"])

    del images
    return {"backbone": backbone, "+fpn": fpn, "+patch_heads": heads, "+rest": rest}


def grad_fn(fn, variables):
    @tf.function
    def run(x):
        with tf.GradientTape() as tape:
            value = _scalar(fn(x))
        grads = tape.gradient(value, variables)
        return {"loss": tf.add_n([value] + [tf.reduce_sum(g) * 0.0 for g in grads
                                            if g is not None])}
    return run


def main(argv):
    del argv
    backbone, size, batch_size = lib.parse_config(FLAGS.config)
    model = lib.build_scdnn(backbone, size, FLAGS.num_classes)
    batch = lib.synthetic_batch(batch_size, size, FLAGS.num_classes)
    images = batch["image"]
    fns = {k: grad_fn(f, model.trainable_variables) for k, f in prefixes(model, batch).items()}
    step = lib.train_stepper(model, batch)
    runners = {k: (lambda f=f: f(images)) for k, f in fns.items()}
    runners["step"] = step
    for r in runners.values():
        r()["loss"].numpy()  # trace
    names = list(runners)
    times = {k: [] for k in names}
    for i in range(FLAGS.rounds):
        for k in names[i % len(names):] + names[:i % len(names)]:
            start = time.perf_counter()
            runners[k]()["loss"].numpy()
            times[k].append(time.perf_counter() - start)
    flops = {k: lib._profiled_flops(f, images) / 1e9 for k, f in prefixes(model, batch).items()
             if k != "+rest"}
    flops["+rest"] = lib.forward_flops(model, batch) / 1e9
    out = {"config": FLAGS.config, "load_avg": os.getloadavg(), "seconds": times, "parts": {}}
    prev = None
    print(f"{FLAGS.config}, {FLAGS.rounds} rounds, load {os.getloadavg()[0]:.1f}")
    print(f"{'prefix':14s} {'fwd+bwd s':>9s} {'part s':>8s} {'share':>6s} {'part fwd GFLOP':>15s}")
    total = statistics.median(times["step"])
    for k in names:
        cum = statistics.median(times[k])
        part = (statistics.median([a - b for a, b in zip(times[k], times[prev])])
                if prev else cum)
        fl = flops.get(k, flops["+rest"])
        fl_prev = flops.get(prev, 0.0) if prev else 0.0
        out["parts"][k] = {"cumulative_s": cum, "part_s": part,
                           "part_forward_gflop": fl - fl_prev if k != "step" else 0.0}
        print(f"{k:14s} {cum:9.2f} {part:8.2f} {part / total:6.0%} "
              f"{out['parts'][k]['part_forward_gflop']:15.1f}")
        prev = k
    with open(FLAGS.json_out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {FLAGS.json_out}")


if __name__ == "__main__":
    app.run(main)
