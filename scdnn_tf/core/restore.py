"""Rebuilding a run from its model_dir: model and optimizer built, newest intact checkpoint
restored (for training, evaluation and export alike)."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import keras
import tensorflow as tf
from absl import logging

from scdnn_tf.core import checkpoints
from scdnn_tf.core.builders import build_model, build_optimizer
from scdnn_tf.core.config import TrainConfig
from scdnn_tf.core.precision import precision_policy

LABEL_MAP_NAME = "label_map.txt"
# With --ema_decay, each evaluation scores the raw and the averaged weights; the better of
# the last one is recorded here and is what `weights="auto"` restores.
WEIGHTS_CHOICE_NAME = "weights_choice.json"
WEIGHTS = ("auto", "raw", "ema")
# A resumed run must keep these (the slots of SGD and AdamW differ); the changeable ones
# are safe because checkpoints match the optimizer state to variables by name.
RESUME_FIXED_FIELDS = ("optimizer",)
# Checkpoints hold float32 variables whatever the compute precision, so it may change too
# (a mixed_float16 run's loss scale is the only state that comes or goes).
RESUME_CHANGEABLE_FIELDS = ("ema_decay", "precision", "mixed_precision", "freeze_stages")


def build_and_restore(config, num_classes, strategy, load_backbone_weights=True, save_dir=None,
                      for_training=True):
    """Builds model + optimizer in `strategy.scope()`, compiles, restores the newest intact
    checkpoint of config.model_dir; the returned manager saves into `save_dir` (default
    model_dir).

    For training (the run's writer), damaged newer checkpoints are moved aside and the
    `checkpoint` state file is rewritten to list the intact ones; for inference model_dir
    is only read.

    Returns:
      (model, checkpoint manager, restored checkpoint path or None).

    Raises:
      checkpoints.CheckpointError: model_dir holds checkpoints and none reads.
    """
    writer = for_training and (save_dir or config.model_dir) == config.model_dir
    latest = checkpoints.find_restorable(config.model_dir, move_damaged=writer)
    # The layers keep the policy they are built under; the global one is restored after.
    with precision_policy(config.precision), strategy.scope():
        keras.utils.set_random_seed(config.seed)
        model = build_model(config, num_classes, load_backbone_weights)
        # Under mixed_float16, compile wraps the optimizer in a LossScaleOptimizer.
        model.compile(optimizer=build_optimizer(config), jit_compile=config.jit_compile)
        # Create the slots (and EMA) now, so the restore below fills existing variables.
        model.optimizer.build(model.trainable_variables)
        checkpoint = checkpoints.make_checkpoint(model)
    if latest:
        with strategy.scope():
            notes = checkpoints.restore(model, latest)
        logging.info("restored %s", latest)
        if notes["missing"] or notes["unused"]:
            logging.info("optimizer state: %d variables new to this run start fresh, %d of the "
                         "checkpoint are not used (a changed --freeze_stages, --ema_decay or "
                         "--precision)", len(notes["missing"]), len(notes["unused"]))
        if writer:
            checkpoints.write_state_file(config.model_dir,
                                         checkpoints.keep_list(config.model_dir, latest))
    manager = tf.train.CheckpointManager(checkpoint, save_dir or config.model_dir,
                                         max_to_keep=config.keep_checkpoints)
    return model, manager, latest


def better_weights(metrics_by_weights: dict, key: str = "mAP") -> str:
    """"raw" or "ema": the higher `key` ("ema" on a tie or when raw's is NaN)."""
    raw = metrics_by_weights["raw"].get(key, math.nan)
    ema = metrics_by_weights["ema"].get(key, math.nan)
    return "raw" if raw > ema or (math.isnan(ema) and not math.isnan(raw)) else "ema"


def write_weights_choice(model_dir: str, step: int, metrics_by_weights: dict,
                         key: str = "mAP") -> str:
    """Records an evaluation's raw and EMA scores and the better weights; returns it."""
    best = better_weights(metrics_by_weights, key)
    record = {"step": int(step), "metric": key, "best": best,
              **{name: _finite_or_none(m.get(key)) for name, m in metrics_by_weights.items()}}
    path = os.path.join(model_dir, WEIGHTS_CHOICE_NAME)
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    os.replace(f"{path}.tmp", path)
    return best


def _finite_or_none(value):
    return float(value) if value is not None and math.isfinite(value) else None


def resolve_weights(config: TrainConfig, weights: str = "auto") -> str:
    """"raw" or "ema": which weights `weights` (auto / raw / ema) means for this run.

    auto: raw without --ema_decay; with it, the better of the last evaluation recorded
    in model_dir (`WEIGHTS_CHOICE_NAME`), or the EMA weights without a record.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"--weights={weights!r} must be one of {', '.join(WEIGHTS)}")
    if config.ema_decay <= 0:
        if weights == "ema":
            raise ValueError(f"--weights=ema: the run in --model_dir={config.model_dir!r} "
                             "did not use --ema_decay")
        return "raw"
    if weights != "auto":
        return weights
    path = os.path.join(config.model_dir, WEIGHTS_CHOICE_NAME)
    if not os.path.isfile(path):
        return "ema"
    try:
        with open(path, encoding="utf-8") as f:
            best = json.load(f)["best"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a weights record ({e}); pass --weights=raw or ema") from None
    if best not in ("raw", "ema"):
        raise ValueError(f"{path}: best={best!r} is not raw or ema; pass --weights=raw or ema")
    return best


def restore_for_inference(config: TrainConfig, num_classes: int, strategy,
                          precision: str = "float32", weights: str = "auto"):
    """Newest intact checkpoint of config.model_dir, with the weights `resolve_weights`
    picks (the EMA ones swapped in when chosen).

    Args:
      config, num_classes, strategy: the run's config, its class count, the strategy.
      precision: the model's compute precision (a `--precision` value): float32 unless
        asked, whatever the run trained in (its checkpoints are float32).
      weights: "auto", "raw" or "ema" (`resolve_weights`).

    Returns:
      (model, optimizer, checkpoint path). Raises FileNotFoundError without a checkpoint.
    """
    chosen = resolve_weights(config, weights)
    config = dataclasses.replace(config, precision=precision, mixed_precision=False)
    model, _, latest = build_and_restore(config, num_classes, strategy,
                                         load_backbone_weights=False, for_training=False)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in --model_dir={config.model_dir!r}")
    if chosen == "ema":
        model.optimizer.finalize_variable_values(model.trainable_variables)  # EMA -> weights
    logging.info("%s: %s weights (--weights=%s)", latest, chosen, weights)
    return model, model.optimizer, latest
