"""float32 vs mixed_bfloat16 (and optionally mixed_float16): train step, inference, a conv.

    python benchmarks/precision.py [--configs=small@128x16,resnet50@448x2]
        [--precisions=float32,mixed_bfloat16] [--parts=train,inference,conv]
        [--repeats=5] [--steps=1] [--json_out=precision.json]

One process; every round times each precision in turn (contenders alternated, so all
see the same machine load), medians over `--repeats` rounds, and the ratio to float32
as the median of the per-round ratios:
  train     SCDNN's `fit`-style train step (AdamW; Keras' train_function) on a fixed
            synthetic batch (configs/demo.flags' head for `small`, paper defaults otherwise);
  inference SCDNN's forward pass (training=False, in a tf.function), per image;
  conv      a bare 3x3 convolution `--conv_shape` (default 8x56x56x256 -> 256) in each
            dtype: the machine's convolution rate, native or emulated.
The record starts with the CPU model, its AVX2 / AVX-512 / AMX flags (bfloat16 is
native with amx_bf16 or avx512_bf16, emulated and slow otherwise), what `--precision=auto`
would choose here, and the load average (also per config, and at the end).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import train_step_lib as lib  # noqa: E402
from scdnn_tf.core.precision import (choose_precision, local_gpu_details,  # noqa: E402
                                precision_policy, read_cpuinfo, vector_cpu_flags)

flags.DEFINE_list("configs", ["small@128x16", "resnet50@448x2"], "backbone@size x batch.")
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Precisions timed (float32 "
                  "first: the ratios are to it).")
flags.DEFINE_list("parts", ["train", "inference", "conv"], "Parts to run.")
flags.DEFINE_integer("repeats", 5, "Alternated rounds (median reported).")
flags.DEFINE_integer("steps", 1, "Calls per timed round.")
flags.DEFINE_integer("num_classes", 80, "Classes.")
flags.DEFINE_list("conv_shape", ["8", "56", "56", "256", "256"], "B,H,W,Cin,Cout of the 3x3 conv.")
flags.DEFINE_string("json_out", "precision.json", "Where to write the results.")
FLAGS = flags.FLAGS
DTYPES = {"float32": tf.float32, "mixed_bfloat16": tf.bfloat16, "mixed_float16": tf.float16}


def load_avg() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(v, 2) for v in os.getloadavg()]


def machine() -> dict:
    """CPU model, vector flags, auto's choice and the load average."""
    text = read_cpuinfo()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), "unknown")
    auto, reason = choose_precision(text, local_gpu_details())
    return {"cpu": model, "cpu_count": os.cpu_count(), "cpu_flags": vector_cpu_flags(text),
            "auto_precision": auto, "auto_reason": reason, "tensorflow": tf.__version__,
            "load_avg_start": load_avg()}


def alternate(fns: dict, repeats: int, steps: int, per: int = 1) -> dict:
    """{name: [seconds per call / per]} over rounds in which every fn runs in turn."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(lib.time_steps(fn, steps) / per)
    return times


def summarize(times: dict, unit_scale: float = 1.0) -> dict:
    """Medians and the median per-round ratio of each contender to the first."""
    first = next(iter(times))
    return {name: {"median": unit_scale * statistics.median(ts), "rounds": ts,
                   f"ratio_to_{first}": statistics.median(
                       [t / f for t, f in zip(ts, times[first])])}
            for name, ts in times.items()}


def run_model_parts(config: str, precisions, parts, num_classes, repeats, steps) -> dict:
    backbone, size, batch_size = lib.parse_config(config)
    batch = lib.synthetic_batch(batch_size, size, num_classes)
    train, infer = {}, {}
    for precision in precisions:
        with precision_policy(precision):
            model = lib.build_scdnn(backbone, size, num_classes)
        if "train" in parts:
            train[precision] = lib.train_stepper(model, batch)
        if "inference" in parts:
            infer[precision] = lib.inference_stepper(model, batch["image"])
    out = {"batch": batch_size, "load_avg_before": load_avg()}
    fns = {**{("train", p): f for p, f in train.items()},
           **{("inference", p): f for p, f in infer.items()}}
    times = alternate(fns, repeats, steps)
    for part in ("train", "inference"):
        per = 1 if part == "train" else batch_size  # inference per image
        part_times = {p: [t / per for t in times[(part, p)]] for p in precisions
                      if (part, p) in times}
        if part_times:
            out[part] = summarize(part_times)
    out["load_avg_after"] = load_avg()
    return out


def run_conv(shape, precisions, repeats) -> dict:
    b, h, w, cin, cout = (int(v) for v in shape)
    flop = 2.0 * b * h * w * cin * cout * 9
    fns = {}
    for precision in precisions:
        dtype = DTYPES[precision]
        x = tf.cast(tf.random.normal([b, h, w, cin]), dtype)
        k = tf.cast(tf.random.normal([3, 3, cin, cout]), dtype)
        conv = tf.function(lambda x=x, k=k: {"loss": tf.nn.conv2d(x, k, 1, "SAME")})
        fns[precision] = conv
    times = alternate(fns, repeats, steps=1)
    out = summarize(times)
    for precision in precisions:
        out[precision]["gflop_per_s"] = flop / out[precision]["median"] / 1e9
    return {"shape": [b, h, w, cin, cout], **out, "load_avg_after": load_avg()}


def print_record(record: dict) -> None:
    m = record["machine"]
    print(f"CPU {m['cpu']} ({m['cpu_count']} logical); flags {' '.join(m['cpu_flags'])}; "
          f"auto -> {m['auto_precision']} ({m['auto_reason']}); load {m['load_avg_start']}")
    for config, entry in record.get("models", {}).items():
        for part in ("train", "inference"):
            if part not in entry:
                continue
            unit = "s/step" if part == "train" else "s/image"
            cells = ", ".join(f"{p} {v['median']:.3f} {unit} (x{v['ratio_to_float32']:.2f})"
                              for p, v in entry[part].items())
            print(f"[{part}] {config}: {cells}; load {entry['load_avg_after']}")
    if "conv" in record:
        c = record["conv"]
        cells = ", ".join(f"{p} {c[p]['gflop_per_s']:.0f} GFLOP/s" for p in FLAGS.precisions)
        print(f"[conv] {'x'.join(map(str, c['shape']))}: {cells}; load {c['load_avg_after']}")


def main(argv):
    del argv
    if FLAGS.precisions[0] != "float32":
        raise app.UsageError("--precisions must start with float32 (the reference)")
    record = {"machine": machine(), "repeats": FLAGS.repeats, "steps": FLAGS.steps,
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    parts = []
    if "conv" in FLAGS.parts:  # first: seconds, where the models may take long
        parts.append(("conv", lambda: run_conv(FLAGS.conv_shape, FLAGS.precisions,
                                               FLAGS.repeats)))
    if {"train", "inference"} & set(FLAGS.parts):
        record["models"] = {}
        parts += [(c, lambda c=c: run_model_parts(c, FLAGS.precisions, FLAGS.parts,
                                                  FLAGS.num_classes, FLAGS.repeats,
                                                  FLAGS.steps)) for c in FLAGS.configs]
    for name, run in parts:  # the record is printed and written after each part
        if name == "conv":
            record["conv"] = run()
        else:
            record["models"][name] = run()
        record["load_avg_end"] = load_avg()
        print_record(record)
        with open(FLAGS.json_out, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {FLAGS.json_out}", flush=True)


if __name__ == "__main__":
    app.run(main)
