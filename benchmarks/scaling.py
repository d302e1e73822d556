r"""Scaling: SCDNN train-step time, peak memory and FLOPs vs image size and batch.

    python -m benchmarks.scaling [--backbone=resnet50] [--sizes=224,320,448]
        [--batches=1,2,4] [--steps=3] [--json_out=scaling.json]

One fresh Python process per (size, batch) config, so that each peak resident set size
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`, read in the child after its timed steps and
before any FLOP counting) belongs to that config alone; the RSS after building the model
is reported too, the difference being what the steps add (activations, gradients,
optimizer slots, TF's buffers). Each child builds SCDNN with the paper defaults (as
benchmarks/train_step.py), times `--steps` Keras train steps after one warm-up step
(median), then counts the training-mode forward FLOPs (TF profiler + the label
predictors analytically, as train_step.py). Configs run in order of FLOPs, interleaving
sizes and batches; the load average is recorded per config. Time per image and per
GFLOP are the columns that should stay flat.
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_string("backbone", "resnet50", "Backbone (paper settings for non-small).")
flags.DEFINE_list("sizes", ["224", "320", "448"], "Image sides, pixels.")
flags.DEFINE_list("batches", ["1", "2", "4"], "Global batch sizes.")
flags.DEFINE_integer("steps", 3, "Timed train steps per config (median reported).")
flags.DEFINE_integer("num_classes", 80, "Classes.")
flags.DEFINE_string("child", None, "Internal: run one config SIZExBATCH and write JSON.")
flags.DEFINE_string("json_out", "scaling.json", "Where to write the results.")
FLAGS = flags.FLAGS


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_child(backbone, size, batch_size, steps, num_classes) -> dict:
    """Builds, times and counts one config in this process."""
    from benchmarks import train_step_lib as lib
    model = lib.build_scdnn(backbone, size, num_classes)
    batch = lib.synthetic_batch(batch_size, size, num_classes)
    stepper = lib.train_stepper(model, batch)
    built_mb = _rss_mb()
    stepper()["loss"].numpy()  # trace + warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        stepper()["loss"].numpy()
        times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"size": size, "batch": batch_size, "step_s": statistics.median(times),
            "step_times": times, "rss_after_build_mb": built_mb, "peak_rss_mb": peak_mb,
            "forward_gflop": lib.forward_flops(model, batch) / 1e9,
            "load_avg": os.getloadavg()[0]}


def run_parent(backbone, sizes, batches, steps, num_classes) -> list[dict]:
    configs = sorted(itertools.product(sizes, batches), key=lambda c: c[0] ** 2 * c[1])
    rows = []
    for size, batch_size in configs:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            subprocess.run([sys.executable, "-m", "benchmarks.scaling", f"--child={size}x{batch_size}",
                            f"--backbone={backbone}", f"--steps={steps}",
                            f"--num_classes={num_classes}", f"--json_out={out.name}"],
                           check=True, cwd=os.path.dirname(os.path.dirname(
                               os.path.abspath(__file__))))
            with open(out.name) as f:
                rows.append(json.load(f))
        r = rows[-1]
        print(f"{size}x{batch_size}: {r['step_s']:.2f} s, peak {r['peak_rss_mb']:.0f} MB, "
              f"{r['forward_gflop']:.1f} GFLOP fwd (load {r['load_avg']:.1f})", flush=True)
    return rows


def print_table(rows) -> None:
    ref = min(rows, key=lambda r: r["forward_gflop"])
    ref_rate = ref["step_s"] / ref["forward_gflop"]
    print(f"\n{'size':>5s} {'batch':>5s} {'fwd GFLOP':>9s} {'step s':>7s} {'s/image':>8s} "
          f"{'ms/GFLOP':>9s} {'vs smallest':>11s} {'peak MB':>8s} {'built MB':>8s} {'load':>5s}")
    for r in sorted(rows, key=lambda r: (r["batch"], r["size"])):
        per_gflop = r["step_s"] / r["forward_gflop"]
        print(f"{r['size']:5d} {r['batch']:5d} {r['forward_gflop']:9.1f} {r['step_s']:7.2f} "
              f"{r['step_s'] / r['batch']:8.2f} {1e3 * per_gflop:9.1f} "
              f"{per_gflop / ref_rate:11.2f} {r['peak_rss_mb']:8.0f} "
              f"{r['rss_after_build_mb']:8.0f} {r['load_avg']:5.1f}")


def main(argv):
    del argv
    if FLAGS.child:
        size, batch_size = (int(v) for v in FLAGS.child.split("x"))
        result = run_child(FLAGS.backbone, size, batch_size, FLAGS.steps, FLAGS.num_classes)
        with open(FLAGS.json_out, "w") as f:
            json.dump(result, f)
        return
    rows = run_parent(FLAGS.backbone, [int(s) for s in FLAGS.sizes],
                      [int(b) for b in FLAGS.batches], FLAGS.steps, FLAGS.num_classes)
    print_table(rows)
    with open(FLAGS.json_out, "w") as f:
        json.dump({"backbone": FLAGS.backbone, "rows": rows}, f, indent=1)
    print(f"wrote {FLAGS.json_out}")


if __name__ == "__main__":
    app.run(main)
