r"""Measurements of the options beyond the paper (relation module, several context scales,
whole-image patch) against the paper configuration.

    python -m benchmarks.beyond_paper [--experiments=relations,mixed_context,tiles,real,cost]
        [--seeds=0,1] [--train_steps=800] [--real_train_steps=600] [--parallel=1]
        [--out_dir=/tmp/beyond_paper] [--json_out=beyond_paper.json]
        [--real_data_dir=DIR] [--variants=...]

Experiments (each run: one fresh `python -m scdnn_tf.train` process on the demo recipe
`configs/demo.flags`, then `python -m scdnn_tf.evaluate` of its final checkpoint, whose
metrics json gives the per-class AP):
  relations      scenes of `--layout=relations`: relation none vs attention; per-group AP
  mixed_context  scenes of `--layout=mixed_context`: context_scale 1.5 / 2.5 / 4 vs
                 context_scales 1.5,2.5,4; per-group AP
  tiles          the demo scenes: paper vs each option; mAP
  real           real COCO photos in --real_data_dir (default: shared/data/coco_real beside
                 the repository), fixed split by collection (benchmarks/beyond_paper_data.py),
                 160 px recipe: paper, +global_patch, +relation, +both, the GAP baseline;
                 held-out mAP and the training-set mAP (fit check)
  cost           parameters and train step time ratio of each option vs the paper config
                 at the demo size and at resnet50@448 batch 2 (in this process)
Scenes: 2000 train / 500 val, seed 0, 128 px, generated into --out_dir. A run whose
results json exists is reused (re-run after an interruption to continue). Tables are AP
x100, mean over seeds (per seed in brackets).
"""

from __future__ import annotations

from scdnn_tf.utils import tf_start  # noqa: F401,I001  first: TensorFlow's start-up notes filtered
from scdnn_tf.utils import cli  # noqa: E402

import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

from absl import app, flags  # noqa: E402

from benchmarks import beyond_paper_cost as cost  # noqa: E402
from benchmarks import beyond_paper_data as data  # noqa: E402
from benchmarks import beyond_paper_lib as lib  # noqa: E402

EXPERIMENTS = ("relations", "mixed_context", "tiles", "real", "cost")
RELATION, SCALES, GLOBAL = "--relation=attention", "--context_scales=1.5,2.5,4", "--global_patch"
OPTIONS = {"paper": (), "relation": (RELATION,), "context_scales": (SCALES,),
           "global_patch": (GLOBAL,)}
SHAPE_VARIANTS = {
    "relations": {"none": (), "attention": (RELATION,)},
    "mixed_context": {"scale 1.5": ("--context_scale=1.5",), "scale 2.5": ("--context_scale=2.5",),
                      "scale 4": ("--context_scale=4",), "scales 1.5,2.5,4": (SCALES,)},
    "tiles": OPTIONS,
}
SHAPE_DELTAS = {"relations": [("attention", "none")],
                "mixed_context": [("scales 1.5,2.5,4", s) for s in ("scale 1.5", "scale 2.5",
                                                                     "scale 4")]
                + [("scales 1.5,2.5,4", ("scale 1.5", "scale 2.5", "scale 4"))],
                "tiles": [(o, "paper") for o in OPTIONS if o != "paper"]}
REAL_VARIANTS = {"paper": (), "global_patch": (GLOBAL,), "relation": (RELATION,),
                 "both": (GLOBAL, RELATION), "baseline": ("--model=baseline",)}
# docs/metrics.md's real-photo recipe: the demo recipe at 160 px, 32/32 patches, no
# augmentation, AdamW 2e-3 (warm-up 100, cosine), weight decay 1e-4, batch 16.
REAL_RECIPE = ("--image_size=160", "--num_patches=32", "--num_train_patches=32", "--noaugment",
               "--optimizer=adamw", "--learning_rate=0.002", "--weight_decay=0.0001",
               "--global_batch_size=16")
DEMO_WARMUP, REAL_WARMUP = 50, 100


@dataclasses.dataclass
class Settings:
    seeds: list
    train_steps: int
    real_train_steps: int
    out_dir: str
    parallel: int = 1
    real_data_dir: str = ""
    shapes_train: int = 2000
    shapes_val: int = 500
    variants: tuple = ()  # only these variant names ('' = all)
    cost_rounds: int = 3
    cost_steps: int = 2
    cost_sizes: tuple = tuple(cost.SIZES)


def _chosen(variants: dict, settings: Settings) -> dict:
    return {k: v for k, v in variants.items() if not settings.variants or k in settings.variants}


def _deltas(pairs, summary):
    """The (a, b) pairs whose variants all ran (b: a name or a tuple of names)."""
    return [(a, b) for a, b in pairs
            if a in summary and all(n in summary for n in (b if isinstance(b, tuple) else (b,)))]


def shapes_experiment(name: str, settings: Settings, report=print) -> dict:
    """relations / mixed_context / tiles: train each variant per seed, score the val scenes."""
    layout = "tiles" if name == "tiles" else name
    scenes = data.shapes_data(settings.out_dir, layout, settings.shapes_train, settings.shapes_val)
    groups = {} if name == "tiles" else data.layout_groups(layout, scenes["classes"])
    runs = lib.make_runs(name, _chosen(SHAPE_VARIANTS[name], settings), settings.seeds,
                         data.data_flags(scenes), [("val", scenes["eval_pattern"])],
                         settings.train_steps, DEMO_WARMUP)
    results, failures = lib.execute_all(runs, settings.out_dir, settings.parallel, report)
    summary = lib.summarize(results, groups, "val")
    table = lib.markdown_table(summary, ["mAP", *groups], _deltas(SHAPE_DELTAS[name], summary))
    return {"groups": groups, "runs": results, "failures": failures, "summary": summary,
            "table": table}


def real_experiment(settings: Settings, report=print) -> dict:
    """Real photos: held-out and training-set mAP of each variant per seed."""
    split = data.real_split(settings.real_data_dir, settings.out_dir)
    common = (*data.data_flags(split), *REAL_RECIPE)
    runs = lib.make_runs("real", _chosen(REAL_VARIANTS, settings), settings.seeds, common,
                         [("held_out", split["eval_pattern"]), ("train", split["train_pattern"])],
                         settings.real_train_steps, REAL_WARMUP)
    results, failures = lib.execute_all(runs, settings.out_dir, settings.parallel, report)
    summary = {}
    for set_name, column in (("held_out", "held-out mAP"), ("train", "train mAP (fit)")):
        for variant, cells in lib.summarize(results, None, set_name).items():
            summary.setdefault(variant, {})[column] = cells["mAP"]
    deltas = _deltas([(v, "paper") for v in REAL_VARIANTS if v != "paper"], summary)
    train_sets = ", ".join(data.TRAIN_COCO + data.TRAIN_YOLO)
    table = (f"train {split['images']['train']} photos ({train_sets}), "
             f"held out {split['images']['eval']} ({', '.join(data.EVAL_COCO)}); "
             f"{settings.real_train_steps} steps\n\n"
             + lib.markdown_table(summary, ["held-out mAP", "train mAP (fit)"], deltas))
    return {"split": split, "runs": results, "failures": failures, "summary": summary,
            "table": table}


def cost_experiment(settings: Settings, report=print) -> dict:
    unknown = sorted(set(settings.cost_sizes) - set(cost.SIZES))
    if unknown:
        raise ValueError(f"--cost_sizes: unknown {unknown}; choose from {tuple(cost.SIZES)}")
    results = {size: cost.measure_size(size, {"paper": (), **_chosen(OPTIONS, settings)},
                                       settings.cost_rounds, settings.cost_steps, report)
               for size in settings.cost_sizes}
    return {"sizes": results, "table": cost.cost_table(results)}


def run_experiments(names, settings: Settings, json_out: str, report=print) -> dict:
    """Runs the named experiments; merges their results into `json_out` (other experiments'
    entries kept). An experiment whose inputs are missing is skipped with the reason."""
    unknown = sorted(set(names) - set(EXPERIMENTS))
    if unknown:
        raise ValueError(f"--experiments: unknown {unknown}; choose from {EXPERIMENTS}")
    out = {}
    if os.path.exists(json_out):
        with open(json_out, encoding="utf-8") as f:
            out = json.load(f)
    for name in names:
        try:
            if name == "real":
                entry = real_experiment(settings, report)
            elif name == "cost":
                entry = cost_experiment(settings, report)
            else:
                entry = shapes_experiment(name, settings, report)
        except (FileNotFoundError, ValueError) as e:
            report(f"## {name}: skipped: {e}")
            out[name] = {"skipped": str(e)}
            continue
        report(f"## {name}\n\n{entry['table']}\n")
        for label, error in entry.get("failures", []):
            report(f"failed: {label}: {error.splitlines()[0]}")
        out[name] = entry
        with open(json_out, "w", encoding="utf-8") as f:  # after each: partial results kept
            json.dump(out, f, indent=1)
    with open(json_out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    report(f"wrote {json_out}")
    return out


def define_flags() -> None:
    """The CLI flags (defined from `__main__` only: importing the module defines none, so it
    can share a process with other benchmarks)."""
    flags.DEFINE_list("experiments", list(EXPERIMENTS), "Experiments to run.")
    flags.DEFINE_list("seeds", ["0", "1"], "Training seeds (each trains every variant).")
    flags.DEFINE_integer("train_steps", 800, "Steps per run of the scene experiments.",
                         lower_bound=1)
    flags.DEFINE_integer("real_train_steps", 600, "Steps per run on the real photos (the issue's "
                         "comparison used 1500).", lower_bound=1)
    flags.DEFINE_string("out_dir", "/tmp/beyond_paper", "Data, model_dirs and per-run results.")
    flags.DEFINE_string("json_out", "beyond_paper.json", "Results file (merged across runs).")
    flags.DEFINE_integer("parallel", 1, "Training processes at once (threads split between "
                         "them).", lower_bound=1)
    flags.DEFINE_string("real_data_dir",
                        os.path.join(os.path.dirname(lib.REPO), "shared", "data", "coco_real"),
                        "Folder of the real COCO collections (coco_mini, coco128, coco_tiny, "
                        "tiny_coco).")
    flags.DEFINE_integer("shapes_train", 2000, "Training scenes per layout.", lower_bound=1)
    flags.DEFINE_integer("shapes_val", 500, "Validation scenes per layout.", lower_bound=1)
    flags.DEFINE_list("variants", [], "Only these variants (table row names; empty = all).")
    flags.DEFINE_integer("cost_rounds", 3, "Alternating timing rounds (median).", lower_bound=1)
    flags.DEFINE_integer("cost_steps", 2, "Train steps per contender per round.", lower_bound=1)
    flags.DEFINE_list("cost_sizes", list(cost.SIZES), "Sizes of the cost experiment.")


FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    settings = Settings(
        seeds=[int(s) for s in FLAGS.seeds], train_steps=FLAGS.train_steps,
        real_train_steps=FLAGS.real_train_steps, out_dir=FLAGS.out_dir,
        parallel=FLAGS.parallel, real_data_dir=FLAGS.real_data_dir,
        shapes_train=FLAGS.shapes_train, shapes_val=FLAGS.shapes_val,
        variants=tuple(FLAGS.variants), cost_rounds=FLAGS.cost_rounds,
        cost_steps=FLAGS.cost_steps, cost_sizes=tuple(FLAGS.cost_sizes))
    run_experiments(FLAGS.experiments, settings, FLAGS.json_out)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
