"""Train step benchmarks: SCDNN vs baseline, FLOP/s vs matmul, XLA / mixed precision, input.

    python benchmarks/train_step.py [--parts=ratio,flops,inference,variants,pipeline]
        [--configs=small@128x16,resnet50@448x2] [--repeats=5] [--steps=3]
        [--json_out=train_step.json]

Parts (all measured in one process, repeats interleaved, medians reported):
  ratio     train step time of SCDNN vs `BaselineClassifier` at each config (same backbone,
            image size, global batch; AdamW; Keras' own `train_function`, one device);
  flops     achieved training FLOP/s of each model = 3 x forward FLOPs (TF profiler on the
            forward graph; the patch predictors, whose patch count is dynamic, analytically)
            / step time, as a fraction of a 2048^3 float32 matmul's FLOP/s timed alongside;
  variants  SCDNN and baseline step with XLA (jit_compile) and/or mixed_float16, first config;
  inference forward latency (training=False, in a tf.function) SCDNN vs baseline, the
            model part of the exported SavedModel (which adds the same JPEG decode + resize
            to both; benchmarks/export_latency.py times the SavedModel itself);
  pipeline  `make_dataset(training=True)` images/s vs the images/s the SCDNN step consumes:
            the demo's shapes records at the demo size, real COCO photos at other sizes.

Batches are synthetic and fixed (random pixels; 1..8 valid boxes per image padded to 100,
as the input pipeline pads), so only compute is timed. Model settings: configs/demo.flags
for `small`, the paper defaults (FPN 256, FC 1024, 64 train patches) otherwise.
`scdnn_light` is the lighter option, not the default, derived as configs/coco_light.flags
is from coco.flags: `min_level=3` (no stride-4 pyramid level: no P2 smoothing, dense head
or crops), half the pyramid channels and the three largest anchor sizes.
"""

from __future__ import annotations

import json
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TF loads: quiet cost-model logs

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import train_step_lib as lib  # noqa: E402

flags.DEFINE_list("parts", ["ratio", "flops", "inference", "variants", "pipeline"],
                  "Parts to run.")
flags.DEFINE_list("configs", ["small@128x16", "resnet50@448x2"], "backbone@size x batch.")
flags.DEFINE_integer("repeats", 5, "Interleaved timed repeats (median reported).")
flags.DEFINE_integer("steps", 3, "Train steps per timed repeat.")
flags.DEFINE_integer("num_classes", 80, "Classes (80 = COCO; the demo has 8).")
flags.DEFINE_string("shapes_pattern", os.path.join(REPO, "data", "shapes", "train-*.tfrecord"),
                    "Demo records for the pipeline part (made by data_tools.make_shapes).")
flags.DEFINE_string("coco_dir", os.path.join(os.path.dirname(REPO), "shared", "data",
                                             "coco_real"), "Real COCO photos (pipeline part).")
flags.DEFINE_string("json_out", "train_step.json", "Where to write the results.")
FLAGS = flags.FLAGS


def run_ratio_and_flops(configs, num_classes, repeats, steps, with_flops) -> dict:
    """SCDNN vs baseline step per config (+ FLOP/s vs matmul when asked)."""
    out = {}
    for text in configs:
        backbone, size, batch_size = lib.parse_config(text)
        batch = lib.synthetic_batch(batch_size, size, num_classes)
        models = {"scdnn": lib.build_scdnn(backbone, size, num_classes),
                  "scdnn_light": lib.build_scdnn(backbone, size, num_classes, light=True),
                  "baseline": lib.build_baseline(backbone, size, num_classes)}
        steppers = {k: lib.train_stepper(m, batch) for k, m in models.items()}
        timings = {k: [] for k in models}
        matmul = []
        for _ in range(repeats):  # interleaved: both models see the same machine load
            for k, stepper in steppers.items():
                timings[k].append(lib.time_steps(stepper, steps))
            if with_flops:
                matmul.append(lib.matmul_flops_per_s())
        entry = {"batch": batch_size, "load_avg": os.getloadavg()[0]}
        for k, ts in timings.items():
            entry[f"{k}_step_s"] = statistics.median(ts)
        ratios = [s / b for s, b in zip(timings["scdnn"], timings["baseline"])]
        entry["ratio_scdnn_over_baseline"] = statistics.median(ratios)
        entry["ratio_per_repeat"] = ratios
        entry["ratio_scdnn_light_over_baseline"] = statistics.median(
            [s / b for s, b in zip(timings["scdnn_light"], timings["baseline"])])
        if with_flops:
            entry["matmul_flops_per_s"] = statistics.median(matmul)
            for k, m in models.items():
                fwd = lib.forward_flops(m, batch)
                entry[f"{k}_forward_gflop"] = fwd / 1e9
                per_s = [3 * fwd / t for t in timings[k]]
                entry[f"{k}_train_flops_per_s"] = statistics.median(per_s)
                entry[f"{k}_fraction_of_matmul"] = statistics.median(
                    [f / mm for f, mm in zip(per_s, matmul)])
        out[text] = entry
    return out


def run_inference(configs, num_classes, repeats, steps) -> dict:
    """Inference latency per image, SCDNN vs baseline, interleaved."""
    out = {}
    for text in configs:
        backbone, size, batch_size = lib.parse_config(text)
        images = lib.synthetic_batch(batch_size, size, num_classes)["image"]
        fns = {"scdnn": lib.build_scdnn(backbone, size, num_classes),
               "scdnn_light": lib.build_scdnn(backbone, size, num_classes, light=True),
               "baseline": lib.build_baseline(backbone, size, num_classes)}
        fns = {k: lib.inference_stepper(m, images) for k, m in fns.items()}
        timings = {k: [] for k in fns}
        for _ in range(repeats):
            for k, fn in fns.items():
                timings[k].append(lib.time_steps(fn, steps) / batch_size)
        out[text] = {f"{k}_ms_per_image": 1e3 * statistics.median(v) for k, v in timings.items()}
        for k in ("scdnn", "scdnn_light"):
            out[text][f"ratio_{k}_over_baseline"] = statistics.median(
                [s / b for s, b in zip(timings[k], timings["baseline"])])
        out[text]["load_avg"] = os.getloadavg()[0]
    return out


def run_variants(config, num_classes, repeats, steps) -> dict:
    """Step time with XLA and/or mixed precision, relative to fp32 without XLA."""
    backbone, size, batch_size = lib.parse_config(config)
    batch = lib.synthetic_batch(batch_size, size, num_classes)
    steppers = {}
    for model_name in ("scdnn", "baseline"):
        for mixed in (False, True):
            for xla in (False, True):
                name = f"{model_name}{'_mixed' if mixed else ''}{'_xla' if xla else ''}"
                lib.set_policy(mixed)
                build = lib.build_scdnn if model_name == "scdnn" else lib.build_baseline
                model = build(backbone, size, num_classes, xla=xla)
                try:
                    steppers[name] = lib.train_stepper(model, batch)
                    steppers[name]()  # compile (XLA) outside the timing
                except Exception as e:  # noqa: BLE001 - report, keep measuring the rest
                    print(f"{name}: failed: {type(e).__name__}: {str(e)[:300]}")
                lib.set_policy(False)
    timings = {k: [] for k in steppers}
    for _ in range(repeats):
        for k, stepper in steppers.items():
            timings[k].append(lib.time_steps(stepper, steps))
    out = {"config": config, "load_avg": os.getloadavg()[0]}
    for k, ts in timings.items():
        base = timings["scdnn" if k.startswith("scdnn") else "baseline"]
        out[k] = {"step_s": statistics.median(ts),
                  "speedup_vs_fp32": statistics.median([b / t for b, t in zip(base, ts)])}
    return out


def run_pipeline(configs, ratio_results, shapes_pattern, coco_dir, repeats) -> dict:
    """Input images/s vs SCDNN step consumption (images/s) per config."""
    out = {}
    for text in configs:
        backbone, size, batch_size = lib.parse_config(text)
        if text not in ratio_results:
            continue
        consumed = batch_size / ratio_results[text]["scdnn_step_s"]
        if backbone == "small" and tf.io.gfile.glob(shapes_pattern):
            rate, source = lib.pipeline_images_per_s(shapes_pattern, size, batch_size,
                                                     repeats), "shapes records"
        else:
            rate, source = lib.coco_pipeline_images_per_s(coco_dir, size, batch_size,
                                                          repeats), "COCO photos"
        out[text] = {"source": source, "pipeline_images_per_s": rate,
                     "train_images_per_s": consumed, "ratio": rate / consumed}
    return out


def print_tables(results: dict) -> None:
    for text, e in results.get("ratio", {}).items():
        print(f"[ratio] {text}: scdnn {e['scdnn_step_s'] * 1e3:.0f} ms, scdnn_light "
              f"{e['scdnn_light_step_s'] * 1e3:.0f} ms, baseline "
              f"{e['baseline_step_s'] * 1e3:.0f} ms, ratio {e['ratio_scdnn_over_baseline']:.2f} "
              f"(light {e['ratio_scdnn_light_over_baseline']:.2f}) (load {e['load_avg']:.1f})")
        if "matmul_flops_per_s" in e:
            print(f"[flops] {text}: matmul {e['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s; "
                  + ", ".join(
                f"{k} fwd {e[f'{k}_forward_gflop']:.1f} GFLOP, train "
                f"{e[f'{k}_train_flops_per_s'] / 1e9:.1f} GFLOP/s = "
                f"{100 * e[f'{k}_fraction_of_matmul']:.0f}% of matmul"
                for k in ("scdnn", "scdnn_light", "baseline")))
    for text, e in results.get("inference", {}).items():
        print(f"[inference] {text}: scdnn {e['scdnn_ms_per_image']:.1f} ms/image, scdnn_light "
              f"{e['scdnn_light_ms_per_image']:.1f}, baseline "
              f"{e['baseline_ms_per_image']:.1f} ms/image, ratio "
              f"{e['ratio_scdnn_over_baseline']:.2f} (light "
              f"{e['ratio_scdnn_light_over_baseline']:.2f}) (load {e['load_avg']:.1f})")
    variants = results.get("variants")
    if variants:
        print(f"[variants] {variants['config']} (load {variants['load_avg']:.1f})")
        for k, v in variants.items():
            if isinstance(v, dict):
                print(f"  {k:22s} {v['step_s'] * 1e3:8.0f} ms  x{v['speedup_vs_fp32']:.2f} vs fp32")
    for text, p in results.get("pipeline", {}).items():
        print(f"[pipeline] {text}: {p['pipeline_images_per_s']:.0f} images/s ({p['source']}) vs "
              f"train {p['train_images_per_s']:.1f} images/s: x{p['ratio']:.1f}")


def main(argv):
    del argv
    results = {"tensorflow": tf.__version__, "cpu_count": os.cpu_count(),
               "load_avg_start": os.getloadavg()[0]}
    if "ratio" in FLAGS.parts or "flops" in FLAGS.parts or "pipeline" in FLAGS.parts:
        results["ratio"] = run_ratio_and_flops(FLAGS.configs, FLAGS.num_classes, FLAGS.repeats,
                                               FLAGS.steps, "flops" in FLAGS.parts)
    if "inference" in FLAGS.parts:
        results["inference"] = run_inference(FLAGS.configs, FLAGS.num_classes, FLAGS.repeats,
                                             FLAGS.steps)
    if "variants" in FLAGS.parts:
        results["variants"] = run_variants(FLAGS.configs[0], FLAGS.num_classes, FLAGS.repeats,
                                           FLAGS.steps)
    if "pipeline" in FLAGS.parts:
        results["pipeline"] = run_pipeline(FLAGS.configs, results["ratio"],
                                           FLAGS.shapes_pattern, FLAGS.coco_dir, FLAGS.repeats)
    results["load_avg_end"] = os.getloadavg()[0]
    print_tables(results)
    with open(FLAGS.json_out, "w") as f:
        json.dump(results, f, indent=1, default=float)
    print(f"wrote {FLAGS.json_out}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    app.run(main)
