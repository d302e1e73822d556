r"""Peer benchmark: SCDNN vs TF Model Garden's Faster R-CNN (same building blocks).

    sh benchmarks/make_mg_venv.sh ~/mg_venv          # once: the Model Garden venv
    python -m benchmarks.peer_faster_rcnn --model_garden_python=~/mg_venv/bin/python \
        [--image_size=448 --batch=2 --rounds=5] [--json_out=peer_faster_rcnn.json]

SCDNN (resnet50 backbone, the paper's defaults: P2..P5, 256 channels, FC 1024, 64 train
patches) runs in this process; Model Garden's Faster R-CNN R50-FPN (P2..P6, RPN, 1000
proposals, 512 sampled RoIs per image, multilevel RoIAlign) runs in its own venv, a child
process (`peer_faster_rcnn_mg.py`) that holds two variants: the 2-FC box head
(`num_convs=0, num_fcs=2, fc_dims=1024`: SCDNN's label predictors are 2-FC too) and its
default head (4 conv + 1 FC, for reference). Random init, float32, 80 classes (81 with
background), one synthetic batch per side with the same 1..8 boxes per image; SGD with
momentum on both sides (their recipe's optimizer and configs/coco.flags').

After one warm-up call of each, every round times one train step and one inference call
of each contender, in an order that rotates every round; the child times its own calls
(the parent is idle meanwhile), so only compute is timed. Ratios are per round (both
contenders saw that round's load), median over rounds. FLOPs: the TF profiler's
float_ops on each side's traced forward graph (training mode for the train step,
inference mode for inference; multiply-add = 2); SCDNN's label predictors (a dynamic
patch count) are added analytically. Training FLOPs = 3 x forward.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from benchmarks import train_step_lib as lib

flags.DEFINE_string("model_garden_python", os.path.expanduser("~/mg_venv/bin/python"),
                    "Python of the venv with tf-models-official (benchmarks/make_mg_venv.sh).")
flags.DEFINE_integer("image_size", 448, "Input side, pixels.")
flags.DEFINE_integer("batch", 2, "Images per step.")
flags.DEFINE_integer("rounds", 5, "Timed rounds (one call per contender and kind each).")
flags.DEFINE_integer("num_classes", 80, "Classes (Model Garden adds a background class).")
flags.DEFINE_string("json_out", "peer_faster_rcnn.json", "Where to write the results.")
FLAGS = flags.FLAGS

MG_HEADS = ("mg_2fc", "mg_default")
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_faster_rcnn_mg.py")


class ModelGardenWorker:
    """The Model Garden side: a child process answering one JSON line per command."""

    def __init__(self, python, image_size, batch, num_classes):
        with tempfile.NamedTemporaryFile(suffix=".npz", delete=False) as f:
            np.savez(f, boxes=batch["boxes"].numpy(), classes=batch["box_classes"].numpy())
        self.proc = subprocess.Popen(
            [python, WORKER, f"--boxes={f.name}", f"--image_size={image_size}",
             f"--num_classes={num_classes + 1}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            self.info = self._read()  # sent once both models are built, warmed up, counted
        finally:
            os.unlink(f.name)

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the Model Garden worker exited ({self.proc.wait()}); its "
                               "stderr is above")
        return json.loads(line)

    def time(self, kind, head) -> float:
        self.proc.stdin.write(f"{kind} {head}\n")
        self.proc.stdin.flush()
        return self._read()["seconds"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def _timed_once(stepper) -> float:
    start = time.perf_counter()
    stepper()["loss"].numpy()
    return time.perf_counter() - start


def build_scdnn_side(batch, image_size, num_classes):
    """SCDNN steppers (warmed up) and its forward FLOPs, training and inference mode."""
    # SGD with momentum, as configs/coco.flags and as Model Garden's Faster R-CNN recipe.
    model = lib.build_scdnn("resnet50", image_size, num_classes,
                            optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    train, infer = lib.train_stepper(model, batch), lib.inference_stepper(model, batch["image"])
    train(), infer()  # trace
    flops = {"train_forward_gflop": lib.forward_flops(model, batch) / 1e9,
             "inference_gflop": lib.inference_flops(model, batch["image"]) / 1e9}
    return {"train": train, "inference": infer}, flops


def run(mg_python, image_size, batch_size, rounds, num_classes) -> dict:
    batch = lib.synthetic_batch(batch_size, image_size, num_classes)
    worker = ModelGardenWorker(mg_python, image_size, batch, num_classes)
    steppers, scdnn_flops = build_scdnn_side(batch, image_size, num_classes)
    contenders = ["scdnn", *MG_HEADS]
    times = {kind: {c: [] for c in contenders} for kind in ("train", "inference")}
    loads = []
    for r in range(rounds):
        order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
        for kind in ("train", "inference"):
            for c in order:
                seconds = (_timed_once(steppers[kind]) if c == "scdnn"
                           else worker.time(kind, c))
                times[kind][c].append(seconds)
        loads.append(os.getloadavg())
        print(f"round {r + 1}/{rounds}: " + ", ".join(
            f"{kind} {c} {times[kind][c][-1]:.2f} s" for kind in times for c in contenders)
            + f"  (load {loads[-1][0]:.1f})", flush=True)
    worker.close()
    out = {"image_size": image_size, "batch": batch_size, "rounds": rounds,
           "load_avg_per_round": loads, "tensorflow_scdnn": tf.__version__,
           "model_garden": worker.info, "scdnn_flops": scdnn_flops, "seconds": times,
           "median_s": {k: {c: statistics.median(v) for c, v in d.items()}
                        for k, d in times.items()},
           "ratio": {}}
    for kind, d in times.items():
        for head in MG_HEADS:
            out["ratio"][f"{kind}_scdnn_over_{head}"] = statistics.median(
                [s / m for s, m in zip(d["scdnn"], d[head])])
    return out


def print_table(res) -> None:
    mg, sc = res["model_garden"]["flops"], res["scdnn_flops"]
    gflop = {"scdnn": (sc["train_forward_gflop"], sc["inference_gflop"]),
             **{h: (mg[h]["train_forward_gflop"], mg[h]["inference_gflop"]) for h in MG_HEADS}}
    b = res["batch"]
    print(f"\n{res['image_size']} px, batch {b}, {res['rounds']} rounds, load "
          + " ".join(f"{l[0]:.1f}" for l in res["load_avg_per_round"]))
    print(f"{'model':12s} {'train s':>8s} {'fwd GFLOP':>10s} {'train GFLOP/s':>14s} "
          f"{'infer s':>8s} {'infer GFLOP':>12s}")
    for c in ("scdnn", *MG_HEADS):
        t, i = res["median_s"]["train"][c], res["median_s"]["inference"][c]
        print(f"{c:12s} {t:8.2f} {gflop[c][0]:10.1f} {3 * gflop[c][0] / t:14.1f} "
              f"{i:8.2f} {gflop[c][1]:12.1f}")
    for k, v in res["ratio"].items():
        print(f"{k:40s} {v:.2f}")


def main(argv):
    del argv
    res = run(FLAGS.model_garden_python, FLAGS.image_size, FLAGS.batch, FLAGS.rounds,
              FLAGS.num_classes)
    print_table(res)
    with open(FLAGS.json_out, "w") as f:
        json.dump(res, f, indent=1, default=float)
    print(f"wrote {FLAGS.json_out}")


if __name__ == "__main__":
    app.run(main)
