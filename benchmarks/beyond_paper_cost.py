"""The `cost` experiment of benchmarks/beyond_paper.py: parameters and train step time of
each option vs the paper configuration, in one process.

Each contender is the network `scdnn_tf.core.builders.build_model` makes from a TrainConfig
(the same flag -> model mapping as training), compiled with AdamW and stepped through
Keras' `train_function` on a fixed synthetic batch (`benchmarks.train_step_lib`).
Contenders alternate within each round (the order rotates by one per round); the
step-time ratio is the median over rounds of the per-round ratio to the paper model.
"""

from __future__ import annotations

import os
import statistics

from absl import flags

from benchmarks import train_step_lib as lib
from benchmarks.beyond_paper_lib import DEMO_FLAGS
from scdnn_tf.core.config import TrainConfig, config_from_flags, define_flags

# The sizes of the issue: the CPU demo, and resnet50 at 448 px (paper defaults, random init).
SIZES = {"demo": ((f"--flagfile={DEMO_FLAGS}",), 8),
         "resnet50@448x2": (("--backbone=resnet50", "--image_size=448",
                             "--global_batch_size=2", "--backbone_weights="), 80)}


def config_from_args(args) -> TrainConfig:
    """TrainConfig from command-line style flags (a flagfile allowed), as `scdnn_tf.train`
    would read them.

    Raises:
      ValueError: a flag this checkout does not define (named), or a bad value.
    """
    values = flags.FlagValues()
    define_flags(values)
    try:
        values(["cost", *args])
    except flags.Error as e:
        raise ValueError(str(e)) from None
    return TrainConfig(**config_from_flags(values))


def build_contender(config: TrainConfig, num_classes: int):
    """The compiled network of `config` (variables built; AdamW, no XLA)."""
    import keras  # noqa: PLC0415 (TensorFlow loads only for this experiment)

    from scdnn_tf.core.builders import build_model  # noqa: PLC0415
    model = build_model(config, num_classes, load_backbone_weights=False)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    return model


def rotated(names: list[str], round_index: int) -> list[str]:
    """The contenders' order in round `round_index` (rotated by one per round)."""
    k = round_index % len(names)
    return names[k:] + names[:k]


def ratio_summary(timings: dict[str, list[float]], reference: str) -> dict[str, float]:
    """Median over rounds of each contender's per-round step time / the reference's."""
    return {name: statistics.median(t / r for t, r in zip(times, timings[reference]))
            for name, times in timings.items()}


def measure_size(size: str, options: dict[str, tuple[str, ...]], rounds: int, steps: int,
                 report=print) -> dict:
    """Parameters, step times and ratios vs "paper" of each option at one size.

    Returns:
      {"options": {name: {"params", "step_s" (median), "step_ratio", "params_ratio"}},
       "unavailable": {name: error}, "load_avg": [per round], "batch", "rounds", "steps"}.
    """
    base_args, num_classes = SIZES[size]
    models, unavailable = {}, {}
    for name, extra in options.items():
        try:
            config = config_from_args([*base_args, *extra])
        except ValueError as e:
            unavailable[name] = str(e)
            report(f"cost {size} {name}: not available: {e}")
            continue
        models[name] = build_contender(config, num_classes)
    if "paper" not in models:
        raise ValueError(f"cost {size}: the paper configuration did not build")
    batch = lib.synthetic_batch(config.global_batch_size, config.image_size, num_classes)
    steppers = {name: lib.train_stepper(model, batch) for name, model in models.items()}
    timings = {name: [] for name in models}
    loads = []
    for i in range(rounds):
        for name in rotated(list(models), i):
            timings[name].append(lib.time_steps(steppers[name], steps))
        loads.append(os.getloadavg()[0])
    ratios = ratio_summary(timings, "paper")
    paper_params = models["paper"].count_params()
    out = {name: {"params": model.count_params(),
                  "params_ratio": model.count_params() / paper_params,
                  "step_s": statistics.median(timings[name]), "step_ratio": ratios[name]}
           for name, model in models.items()}
    return {"options": out, "unavailable": unavailable, "load_avg": loads,
            "batch": config.global_batch_size, "rounds": rounds, "steps": steps}


def cost_table(results: dict) -> str:
    """Markdown: one row per (size, option) with params, ratios and median step time."""
    lines = ["| size | option | parameters | params / paper | step s | step / paper |",
             "|---|---|---|---|---|---|"]
    for size, entry in results.items():
        for name, r in entry["options"].items():
            lines.append(f"| {size} | {name} | {r['params']:,} | {r['params_ratio']:.3f} | "
                         f"{r['step_s']:.3f} | {r['step_ratio']:.2f} |")
        for name, error in entry["unavailable"].items():
            lines.append(f"| {size} | {name} | not available: {error.splitlines()[0]} | | | |")
    return "\n".join(lines)
