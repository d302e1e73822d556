"""Latency per image: exported SavedModel (`serving_default`, JPEG bytes in) vs the Keras
model, for SCDNN and for the plain baseline classifier (same backbone and image size).

    python benchmarks/export_latency.py [--configs=small@128,resnet50@224] [--repeats=5]
        [--batch_sizes=1,32] [--models=scdnn,baseline] [--precisions=float32,mixed_bfloat16]
        [--json_out=export_latency.json]

For each configuration (random weights; 80 classes; SCDNN with configs/demo.flags' head
settings for `small`, the paper defaults otherwise), model (SCDNN, baseline) and batch
size (1, 32):
  keras:      `model(images)` in a tf.function on already-decoded, resized float images;
  savedmodel: the loaded `serving_default` signature on JPEG bytes (decode + resize +
              model + postprocessing, what a TF Serving client pays for apart from the
              network).
Each figure is the median over `--repeats` rounds (one warm-up call each first), divided
by the batch size; within a round every contender (Keras and SavedModel, each precision)
runs once in turn, so all see the same load. The SCDNN / baseline and precision /
float32 ratios compare the SavedModels (ratios of the medians). With `--precisions`, each
precision's model holds the float32 model's weights and its export computes in that
precision (float32 inputs and outputs). Images are real
COCO photos from ../shared/data when present, else random-noise JPEGs of 640x480.
`--light` builds SCDNN with the lighter option (benchmarks/README.md).
"""

from __future__ import annotations

import glob
import io
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scdnn_tf.data.preprocess import decode_image, resize_image  # noqa: E402
from scdnn_tf.core.precision import (precision_policy, read_cpuinfo,  # noqa: E402
                                     vector_cpu_flags)
from scdnn_tf.serving.exporter import export_saved_model  # noqa: E402
from benchmarks.train_step_lib import build_scdnn  # noqa: E402
from scdnn_tf.modeling.baseline import BaselineClassifier  # noqa: E402

flags.DEFINE_list("configs", ["small@128", "resnet50@224"], "backbone@image_size entries.")
flags.DEFINE_list("batch_sizes", ["1", "32"], "Batch sizes.")
flags.DEFINE_integer("repeats", 5, "Timed calls per measurement (the median is reported).")
flags.DEFINE_string("json_out", "export_latency.json", "Where to write the results.")
flags.DEFINE_list("models", ["scdnn", "baseline"], "Models timed (scdnn, baseline).")
flags.DEFINE_list("precisions", ["float32"], "Compute precisions of the exports (float32 "
                  "first: the others are compared with it), e.g. float32,mixed_bfloat16.")
flags.DEFINE_bool("light", False, "SCDNN with the lighter option of benchmarks/README.md "
                  "(min_level=3; 128 FPN channels for large backbones).")
FLAGS = flags.FLAGS

COCO = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "shared", "data", "coco_real", "coco_tiny", "train2017")


def load_jpegs(n: int) -> tuple[list[bytes], str]:
    files = sorted(glob.glob(os.path.join(COCO, "*.jpg")))[:n]
    if len(files) == n:
        return [open(f, "rb").read() for f in files], "COCO photos"
    from PIL import Image  # noqa: PLC0415
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), np.uint8)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out, "random 640x480 JPEGs"


def alternated_medians(fns: dict, repeats: int) -> dict:
    """{name: median seconds}, every fn timed once per round in turn (one warm-up each)."""
    for fn in fns.values():
        fn()  # warm-up (tracing, allocations)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def build_models(model_name: str, backbone: str, image_size: int, precisions,
                 light: bool = False) -> dict:
    """{precision: model}, the same weights in each (random; float32 first)."""
    models = {}
    for precision in precisions:
        with precision_policy(precision):
            if model_name == "scdnn":  # as train_step.py builds it (demo settings for `small`)
                model = build_scdnn(backbone, image_size, 80, light=light)
            else:
                model = BaselineClassifier(80, backbone=backbone, image_size=image_size)
            model(tf.zeros([1, image_size, image_size, 3]))
        if models:
            model.set_weights(next(iter(models.values())).get_weights())
        models[precision] = model
    return models


def measure(model_name: str, backbone: str, image_size: int, batch_sizes, jpegs,
            repeats: int, light: bool = False, precisions=("float32",)) -> list[dict]:
    models = build_models(model_name, backbone, image_size, precisions, light)
    names = [f"class{i}" for i in range(80)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        serving, keras_fns, export_s = {}, {}, {}
        for precision, model in models.items():
            start = time.perf_counter()
            path = export_saved_model(model, names, os.path.join(tmp, precision))
            export_s[precision] = time.perf_counter() - start
            serving[precision] = tf.saved_model.load(path).signatures["serving_default"]
            keras_fns[precision] = tf.function(
                lambda x, model=model: model(x, training=False)["logits"])
        for b in batch_sizes:
            data = tf.constant(jpegs[:b])
            images = tf.stack([resize_image(decode_image(e), image_size) for e in jpegs[:b]])
            fns = {}
            for p in models:  # contenders alternated within each round
                fns[("keras", p)] = lambda f=keras_fns[p]: f(images).numpy()
                fns[("saved", p)] = lambda f=serving[p]: f(image_bytes=data)["scores"].numpy()
            seconds = alternated_medians(fns, repeats)
            for p in models:
                rows.append({"model": model_name, "backbone": backbone, "image_size": image_size,
                             "precision": p, "batch": b,
                             "keras_ms_per_image": 1000 * seconds[("keras", p)] / b,
                             "savedmodel_ms_per_image": 1000 * seconds[("saved", p)] / b,
                             "export_seconds": export_s[p], "load_avg": os.getloadavg()[0]})
                print(f"{model_name} {backbone}@{image_size} {p} batch {b}: keras "
                      f"{rows[-1]['keras_ms_per_image']:.1f} ms/img, savedmodel "
                      f"{rows[-1]['savedmodel_ms_per_image']:.1f} ms/img", flush=True)
    return rows


def main(argv):
    del argv
    if FLAGS.precisions[0] != "float32":
        raise app.UsageError("--precisions must start with float32 (the reference)")
    batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    jpegs, source = load_jpegs(max(batch_sizes))
    cpu_flags = vector_cpu_flags(read_cpuinfo())
    rows = []
    for entry in FLAGS.configs:
        backbone, size = entry.split("@")
        for model_name in FLAGS.models:
            rows += measure(model_name, backbone, int(size), batch_sizes, jpegs, FLAGS.repeats,
                            light=FLAGS.light, precisions=FLAGS.precisions)
    print(f"\nlatency per image (ms), median of {FLAGS.repeats}; {source}; "
          f"{os.cpu_count()} CPU cores (flags {' '.join(cpu_flags)}); load "
          f"{os.getloadavg()[0]:.1f}{'; SCDNN light' if FLAGS.light else ''}")
    print(f"{'model':<26}{'precision':>16}{'batch':>6}{'keras':>10}{'savedmodel':>12}"
          f"{'saved/keras':>13}{'vs float32':>12}{'vs baseline':>13}")
    saved = {(r["model"], r["backbone"], r["image_size"], r["precision"], r["batch"]):
             r["savedmodel_ms_per_image"] for r in rows}
    for r in rows:
        key = (r["backbone"], r["image_size"])
        r["savedmodel_vs_float32"] = r["savedmodel_ms_per_image"] / saved[
            (r["model"], *key, "float32", r["batch"])]
        base = saved.get(("baseline", *key, r["precision"], r["batch"]))
        r["savedmodel_vs_baseline"] = r["savedmodel_ms_per_image"] / base if base else None
        print(f"{r['model'] + ' ' + r['backbone'] + '@' + str(r['image_size']):<26}"
              f"{r['precision']:>16}{r['batch']:>6}{r['keras_ms_per_image']:>10.1f}"
              f"{r['savedmodel_ms_per_image']:>12.1f}"
              f"{r['savedmodel_ms_per_image'] / r['keras_ms_per_image']:>13.2f}"
              f"{r['savedmodel_vs_float32']:>12.2f}"
              f"{r['savedmodel_vs_baseline'] or float('nan'):>13.2f}")
    with open(FLAGS.json_out, "w", encoding="utf-8") as f:
        json.dump({"source": source, "repeats": FLAGS.repeats, "rows": rows,
                   "cpu_flags": cpu_flags, "tensorflow": tf.__version__}, f, indent=2)
    print(f"written {FLAGS.json_out}")


if __name__ == "__main__":
    app.run(main)
