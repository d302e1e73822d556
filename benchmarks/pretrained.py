r"""Real COCO photos with an ImageNet-pretrained MobileNetV2: does looking at object patches
and their surroundings (SCDNN) beat pooling the whole image (the GAP baseline)?

    python -m benchmarks.pretrained --weights=PATH/mobilenet_v2_1.0_no_top.weights.h5
        --real_data_dir=DIR [--table=backbone|recipe] [--seeds=0,1] [--train_steps=100]
        [--image_size=224] [--variants=...] [--out_dir=/tmp/pretrained] [--json_out=...]

Split (fixed, by collection; benchmarks/beyond_paper_data.py): train on coco_mini +
coco128, score on coco_tiny + tiny_coco without the photos already in train. Contenders,
each trained from the same pretrained weights with `configs/coco_mobilenet_v2.flags`
(only data paths, weights, image size, steps, seed and the warm-up + cosine schedule
overridden, plus the variant's own flags), then scored with `python -m scdnn_tf.evaluate`.
--table=backbone:
  probe       the floor: the frozen backbone's pooled features, one logistic regression
              per class (no fine-tuning; computed in this process)
  baseline*   the GAP baseline fine-tuned, at several learning rates (its best is kept)
  scdnn*      the paper configuration, + --global_patch, + --global_patch
              --relation=attention (learning rate 5e-3)
--table=recipe: both models with BCE or ASL, each with and without RandAugment + Cutout,
then each model's best cell again with the one-cycle schedule.
Columns: held-out mAP; mean AP of classes whose median box covers under 1 % of the image
(in the training photos) and of the rest; training-set mAP (fit). A run whose results json
exists is reused (re-run after an interruption to continue).
"""

from __future__ import annotations

from scdnn_tf.utils import tf_start  # noqa: F401,I001  first: TensorFlow's start-up notes filtered
from scdnn_tf.utils import cli  # noqa: E402

import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

from benchmarks import beyond_paper_data as data  # noqa: E402
from benchmarks import beyond_paper_lib as lib  # noqa: E402
from benchmarks import pretrained_lib  # noqa: E402
from scdnn_tf.data.label_map import read_label_map  # noqa: E402

RECIPE = os.path.join(lib.REPO, "scdnn_tf", "configs", "coco_mobilenet_v2.flags")
BASELINE = "--model=baseline"
VARIANTS = {
    "baseline lr 1e-2": (BASELINE, "--learning_rate=0.01"),
    "baseline lr 3e-2": (BASELINE, "--learning_rate=0.03"),
    "scdnn": ("--learning_rate=0.005",),
    "scdnn +global": ("--learning_rate=0.005", "--global_patch"),
    "scdnn +global +relation": ("--learning_rate=0.005", "--global_patch",
                                "--relation=attention"),
}
# The recipe table: today's recipe (BCE, flip + scale-crop, cosine) against ASL and
# RandAugment + Cutout (ASL's and ML-Decoder's settings), then one-cycle for the best cell
# of each model. Each model keeps one learning rate across its cells.
SCDNN_LR = "--learning_rate=0.001"
RECIPE_BASE = {"scdnn": (SCDNN_LR,), "baseline": (BASELINE, "--learning_rate=0.03")}
RECIPE_CELLS = {"bce": (), "asl": ("--label_loss=asl",),
                "bce +RA+cutout": ("--randaugment=2,9", "--cutout=0.5"),
                "asl +RA+cutout": ("--label_loss=asl", "--randaugment=2,9", "--cutout=0.5")}
ONECYCLE = ("--lr_schedule=onecycle", "--lr_peak_fraction=0.2")
WARMUP_FRACTION = 0.1
HELD_OUT, TRAIN = "held_out", "train"


def _write(json_out: str, out: dict) -> None:
    tmp = json_out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, json_out)


def probe(split: dict, weights: str, image_size: int, out_dir: str) -> dict:
    """The frozen linear probe's metrics on the held-out and the training photos (reused
    from out_dir when done) and the size groups of the classes."""
    path = os.path.join(out_dir, f"probe_{image_size}.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    names = read_label_map(split["label_map"])
    start = time.perf_counter()
    train = pretrained_lib.records_arrays(split["train_pattern"], len(names), image_size)
    held = pretrained_lib.records_arrays(split["eval_pattern"], len(names), image_size)
    train_x = pretrained_lib.pooled_features(train[0], weights)
    held_x = pretrained_lib.pooled_features(held[0], weights)
    result = {"eval": {}, "groups": pretrained_lib.size_groups(train[3], names)}
    for set_name, x, arrays in ((HELD_OUT, held_x, held), (TRAIN, train_x, train)):
        scores = pretrained_lib.linear_probe_scores(train_x, train[1], x)
        result["eval"][set_name] = pretrained_lib.probe_metrics(scores, arrays[1], arrays[2],
                                                                names)
    result.update(variant="probe (frozen, linear)", seed=0, wall_s=time.perf_counter() - start)
    os.makedirs(out_dir, exist_ok=True)
    _write(path, result)
    return result


def run_all(settings: dict, report=print) -> dict:
    """The probe, then every chosen variant for every seed; the summary table."""
    split = data.real_split(settings["real_data_dir"], settings["out_dir"])
    floor = probe(split, settings["weights"], settings["image_size"], settings["out_dir"])
    groups = floor["groups"]
    chosen = {k: v for k, v in VARIANTS.items()
              if not settings["variants"] or k in settings["variants"]}
    steps = settings["train_steps"]
    runs = _run_maker(settings, split)(chosen)
    results, failures = lib.execute_all(runs, settings["out_dir"], settings["parallel"], report)
    summary = summarize([floor] + results, groups)
    table = lib.markdown_table(summary, ["held-out mAP", *groups, "train mAP (fit)"])
    return {"split": split, "groups": groups, "probe": floor, "runs": results,
            "failures": failures, "summary": summary, "table": table, "steps": steps}


def recipe_variants() -> dict[str, tuple[str, ...]]:
    """{"<model> <cell>": flags} of the recipe table's grid (cosine schedule)."""
    return {f"{model} {cell}": base + extra for model, base in RECIPE_BASE.items()
            for cell, extra in RECIPE_CELLS.items()}


def best_cells(summary: dict) -> dict[str, str]:
    """{model: the grid variant with the highest mean held-out mAP} (cosine cells only)."""
    best = {}
    for model in RECIPE_BASE:
        scored = [(cells["held-out mAP"]["mean"], variant) for variant, cells in summary.items()
                  if variant.startswith(model + " ") and "onecycle" not in variant
                  and cells["held-out mAP"]["mean"] is not None]
        if scored:
            best[model] = max(scored)[1]
    return best


def onecycle_runs(best: dict[str, str], grid: dict, make) -> list:
    """Runs of each model's best cell with the one-cycle schedule (no separate warm-up:
    one-cycle rises to its peak over --lr_peak_fraction of the steps)."""
    chosen = {f"{variant} onecycle": grid[variant] + ONECYCLE for variant in best.values()}
    return [dataclasses.replace(run, warmup_steps=0) for run in make(chosen)]


def run_recipe(settings: dict, report=print) -> dict:
    """The recipe table: the grid for both models and every seed, then one-cycle for each
    model's best grid cell."""
    split = data.real_split(settings["real_data_dir"], settings["out_dir"])
    groups = probe(split, settings["weights"], settings["image_size"], settings["out_dir"])["groups"]
    make = _run_maker(settings, split)
    grid = recipe_variants()
    results, failures = lib.execute_all(make(grid), settings["out_dir"], settings["parallel"],
                                        report)
    best = best_cells(summarize(results, groups))
    more, more_failures = lib.execute_all(onecycle_runs(best, grid, make), settings["out_dir"],
                                          settings["parallel"], report)
    summary = summarize(results + more, groups)
    table = lib.markdown_table(summary, ["held-out mAP", *groups, "train mAP (fit)"])
    return {"split": split, "groups": groups, "runs": results + more, "best": best,
            "failures": failures + more_failures, "summary": summary, "table": table,
            "steps": settings["train_steps"]}


def _run_maker(settings: dict, split: dict):
    """variants -> runs on the real split (shared data, weights, image size, steps, seeds;
    finished runs of either table are reused by name)."""
    # Warm-up + cosine unless a variant says otherwise (the flagfile ships one-cycle).
    common = (*data.data_flags(split), f"--backbone_weights={settings['weights']}",
              f"--image_size={settings['image_size']}", "--lr_schedule=cosine")
    steps = settings["train_steps"]

    def make(variants: dict) -> list:
        return lib.make_runs(f"pretrained_{settings['image_size']}", variants, settings["seeds"],
                             common, [(HELD_OUT, split["eval_pattern"]),
                                      (TRAIN, split["train_pattern"])],
                             steps, max(1, int(WARMUP_FRACTION * steps)), flagfile=RECIPE)
    return make


def summarize(results: list[dict], groups: dict) -> dict:
    """{variant: {column: {"mean", "seeds"}}}: held-out mAP, each size group's mean AP on
    the held-out photos, and the training-set mAP."""
    held = lib.summarize(results, groups, HELD_OUT)
    fit = lib.summarize(results, None, TRAIN)
    return {variant: {"held-out mAP": cells["mAP"],
                      **{g: cells[g] for g in groups},
                      "train mAP (fit)": fit[variant]["mAP"]}
            for variant, cells in held.items()}


def define_flags() -> None:
    """The CLI flags (defined from `__main__` only, so that importing defines none)."""
    flags.DEFINE_string("weights", None, "MobileNetV2 ImageNet no-top .weights.h5 (Keras' "
                        "mobilenet_v2_1.0_no_top file).", required=True)
    flags.DEFINE_string("real_data_dir", None, "Folder of the real COCO collections (coco_mini, "
                        "coco128, coco_tiny, tiny_coco).", required=True)
    flags.DEFINE_list("seeds", ["0", "1"], "Training seeds (each trains every variant).")
    flags.DEFINE_integer("train_steps", 100, "Steps per run (batch 16).", lower_bound=1)
    flags.DEFINE_integer("image_size", 224, "Image side, px.", lower_bound=64)
    flags.DEFINE_list("variants", [], f"Only these variants (default all: {list(VARIANTS)}).")
    flags.DEFINE_enum("table", "backbone", ["backbone", "recipe"], "backbone: SCDNN variants "
                      "against the GAP baseline and the probe; recipe: BCE vs ASL, with and "
                      "without RandAugment + Cutout, then one-cycle for each model's best.")
    flags.DEFINE_integer("parallel", 1, "Training processes at once.", lower_bound=1)
    flags.DEFINE_string("out_dir", "/tmp/pretrained", "Data, model_dirs and per-run results.")
    flags.DEFINE_string("json_out", "pretrained.json", "Results file.")


FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    for path, flag in ((FLAGS.weights, "--weights"), (FLAGS.real_data_dir, "--real_data_dir")):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{flag}={path}: not found")
    settings = {"weights": FLAGS.weights, "real_data_dir": FLAGS.real_data_dir,
                "seeds": [int(s) for s in FLAGS.seeds], "train_steps": FLAGS.train_steps,
                "image_size": FLAGS.image_size, "variants": tuple(FLAGS.variants),
                "parallel": FLAGS.parallel, "out_dir": FLAGS.out_dir}
    out = run_recipe(settings) if FLAGS.table == "recipe" else run_all(settings)
    print(out["table"])
    for label, error in out["failures"]:
        print(f"failed: {label}: {error.splitlines()[0]}")
    _write(FLAGS.json_out, out)
    print(f"wrote {FLAGS.json_out}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
