r"""Accuracy of the light pyramid vs the default on the demo scenes (two seeds each).

    python -m benchmarks.light_accuracy [--seeds=0,1] [--train_steps=800]
        [--out_dir=/tmp/light_accuracy] [--json_out=light_accuracy.json]

Trains `configs/demo.flags` (default: P2..P5, 64 channels, anchors 16..128) and the same
recipe with LIGHT_FLAGS (P3..P5, half the channels, the default's three largest anchor
sizes, as configs/coco_light.flags relates to configs/coco.flags), one fresh
`python -m scdnn_tf.train` per run, runs in the order seed-major (default, light,
default, light) so that both variants share the machine's load. Reports the held-out
metrics of the evaluation at the end of each run (the demo's 500 validation scenes) and
the training images/s the run logged (median of its progress lines after the first).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

from benchmarks.train_log import parse_log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIGHT_FLAGS = ("--min_level=3", "--fpn_channels=32", "--anchor_sizes=32,64,128")

flags.DEFINE_list("seeds", ["0", "1"], "Seeds (each trains both variants).")
flags.DEFINE_integer("train_steps", 800, "Steps per run (the demo's schedule: 800).")
flags.DEFINE_string("out_dir", "/tmp/light_accuracy", "Where the run directories go.")
flags.DEFINE_string("json_out", "light_accuracy.json", "Where to write the results.")
FLAGS = flags.FLAGS

def train_once(variant: str, seed: int, steps: int, out_dir: str) -> dict:
    model_dir = os.path.join(out_dir, f"{variant}_seed{seed}")
    cmd = [sys.executable, "-m", "scdnn_tf.train", "--flagfile=configs/demo.flags",
           f"--model_dir={model_dir}", f"--seed={seed}", f"--train_steps={steps}",
           f"--eval_every={steps}", f"--checkpoint_every={steps}", "--logtostderr"]
    if variant == "light":
        cmd += list(LIGHT_FLAGS)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    result = parse_log(proc.stderr)
    result.update(variant=variant, seed=seed, steps=steps, wall_s=time.perf_counter() - start,
                  load_avg=os.getloadavg()[0], command=" ".join(cmd[1:]))
    return result


def main(argv):
    del argv
    runs = []
    for seed in [int(s) for s in FLAGS.seeds]:
        for variant in ("default", "light"):
            runs.append(train_once(variant, seed, FLAGS.train_steps, FLAGS.out_dir))
            r = runs[-1]
            print(f"{variant:8s} seed {seed}: mAP {100 * r['metrics']['mAP']:.1f}  "
                  f"CF1 {100 * r['metrics']['CF1']:.1f}  OF1 {100 * r['metrics']['OF1']:.1f}  "
                  f"{r['train_images_per_s']} img/s  load {r['load_avg']:.1f}", flush=True)
    summary = {}
    for variant in ("default", "light"):
        mine = [r for r in runs if r["variant"] == variant]
        summary[variant] = {k: statistics.mean(r["metrics"][k] for r in mine)
                            for k in ("mAP", "CF1", "OF1")}
        print(f"{variant:8s} mean over seeds: " +
              "  ".join(f"{k} {100 * v:.1f}" for k, v in summary[variant].items()))
    with open(FLAGS.json_out, "w") as f:
        json.dump({"light_flags": LIGHT_FLAGS, "runs": runs, "mean": summary}, f, indent=1)
    print(f"wrote {FLAGS.json_out}")


if __name__ == "__main__":
    app.run(main)
