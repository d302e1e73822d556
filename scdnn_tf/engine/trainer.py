"""Training library: `run_training(TrainConfig) -> final validation metrics`.

Distribution: the model and optimizer are built inside `strategy.scope()`; the training
data comes from `strategy.distribute_datasets_from_function`, each input pipeline
batching `global_batch_size / num_replicas` images (and, under multi_worker_mirrored,
reading its own shards), so one step always consumes `global_batch_size` images (the
function form is used for its per-worker file sharding).

Steps: `loop.train_loop` runs the model's `train_step` in chunks of `eval_every`
batches until `StopAtStep` ends it at `train_steps` (batches the mixed-precision loss
scale skips do not count as steps). Checkpoints, evaluations, logs and the stop are keyed
on the optimizer's global step (see callbacks.py), so a run resumed mid-chunk stops exactly
at `train_steps` and evaluates at the same steps as an uninterrupted run. After a resume
the input pipeline is reseeded with `seed + restored_step` (replaying the stream would
mean decoding every skipped image).

EMA (`--ema_decay`): Keras' optimizer-level EMA (`use_ema=True`); the averages are
optimizer variables, so they are checkpointed with it. Each evaluation scores the raw
weights (TensorBoard run `eval`) and the averages swapped into the model
(`callbacks.ema_weights`; run `eval_ema`), and records the better of the two in
model_dir (`restore.WEIGHTS_CHOICE_NAME`), which export and evaluation then restore.
The loop copies the averages into the model at the end (as `fit` does).

Precision (`--precision`): the model is built under that Keras dtype policy
(`core.precision.precision_policy`; variables float32 in every case). Under mixed_float16
`compile` wraps the optimizer in a `LossScaleOptimizer`, so the model's `train_step`
differentiates `optimizer.scale_loss(loss)` and calls `optimizer.apply_gradients` (which
unscales and skips steps with non-finite gradients); mixed_bfloat16 needs no loss scale.
Losses are computed from float32 logits in both.

Multi-worker (`multi_worker_mirrored`): only the chief (worker 0) writes into model_dir
(flags, label map, checkpoints, summaries). The other workers still run every save (a
save may read variables through collectives) but into a temporary directory deleted at
the end, and every worker restores from model_dir, which must therefore be shared.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import tensorflow as tf
from absl import logging

from scdnn_tf.engine import callbacks as callbacks_lib
from scdnn_tf.core import checkpoints, init_from, restore
from scdnn_tf.core.strategy import make_strategy, worker_write_dir
from scdnn_tf.evaluation import evaluator
from scdnn_tf.engine import preemption
from scdnn_tf.engine import run_lock
from scdnn_tf.engine import summaries
from scdnn_tf.engine import loop
from scdnn_tf.evaluation import visualize
from scdnn_tf.data import record_checks, shapes
from scdnn_tf.data.input_errors import input_errors
from scdnn_tf.data.label_map import read_class_id_map, read_label_map, write_label_map
from scdnn_tf.data.pipeline import make_dataset
from scdnn_tf.data.randaugment import parse_randaugment
from scdnn_tf.core.config import ARCHITECTURE_FIELDS, TrainConfig
from scdnn_tf.utils import files


def _train_dataset(config, class_names, strategy, seed, truncation=None):
    num_classes = len(class_names)
    class_id_map = read_class_id_map(config.class_id_map)

    def dataset_fn(context: tf.distribute.InputContext):
        return make_dataset(config.train_pattern, num_classes, config.image_size,
                            context.get_per_replica_batch_size(config.global_batch_size),
                            training=True, max_boxes=config.max_boxes,
                            augment=config.augment, color_jitter=config.color_jitter,
                            class_id_map=class_id_map, class_names=class_names,
                            truncation=truncation, seed=seed, input_context=context,
                            randaugment_spec=parse_randaugment(config.randaugment),
                            cutout=config.cutout)

    return strategy.distribute_datasets_from_function(dataset_fn)


def prepare_inputs(config: TrainConfig) -> list[str]:
    """Generates demo data if asked, validates the flags and the label / class-id maps, and
    checks the first records of every shard against them (before any model is built).
    Returns the class names."""
    if config.demo_data_dir and not tf.io.gfile.glob(config.train_pattern):
        files.check_writable(config.demo_data_dir, "demo_data_dir", folder=True)
        logging.info("generating the synthetic shapes dataset in %s", config.demo_data_dir)
        shapes.ensure_shapes_dataset(config.demo_data_dir)
    config.validate()
    with files.flag_errors("label_map", config.label_map):
        class_names = read_label_map(config.label_map)
    with files.flag_errors("class_id_map", config.class_id_map):
        id_map = read_class_id_map(config.class_id_map)
    if id_map is not None and len(id_map) != len(class_names):
        raise ValueError(f"--class_id_map={config.class_id_map!r} has {len(id_map)} ids but "
                         f"--label_map={config.label_map!r} has {len(class_names)} classes")
    for flag in ("train_pattern", "eval_pattern"):
        pattern = getattr(config, flag)
        if pattern:
            with files.flag_errors(flag, pattern):
                record_checks.check_first_records(sorted(tf.io.gfile.glob(pattern)),
                                                  len(class_names), class_names, id_map)
    return class_names


def check_and_write_run_files(config: TrainConfig, class_names: list[str]) -> None:
    """Refuses a resume whose settings cannot continue the run in model_dir; writes
    flags.txt, config.json and the label map. Call with the model_dir lock held."""
    if os.path.isfile(os.path.join(config.model_dir, "config.json")):
        previous = TrainConfig.read(config.model_dir)
        _refuse_changes(previous, config, ARCHITECTURE_FIELDS, "use a new model_dir")
        _refuse_changes(previous, config, restore.RESUME_FIXED_FIELDS,
                        "its optimizer state cannot carry over; keep the flag or use a new "
                        "model_dir")
        for name in restore.RESUME_CHANGEABLE_FIELDS:
            if getattr(previous, name) != getattr(config, name):
                logging.info("--%s changes from %r to %r on resume: the weights and the "
                             "optimizer state are restored by variable name", name,
                             getattr(previous, name), getattr(config, name))
        previous_names = read_label_map(os.path.join(config.model_dir, restore.LABEL_MAP_NAME))
        if previous_names != class_names:
            raise ValueError(f"--label_map={config.label_map!r} differs from the label map of "
                             f"the run in --model_dir={config.model_dir!r}")
    config.write(config.model_dir)
    write_label_map(os.path.join(config.model_dir, restore.LABEL_MAP_NAME), class_names)


def _refuse_changes(previous: TrainConfig, config: TrainConfig, names, advice: str) -> None:
    for name in names:
        if getattr(previous, name) != getattr(config, name):
            raise ValueError(f"--{name}={getattr(config, name)!r} differs from "
                             f"{getattr(previous, name)!r} of the run in --model_dir="
                             f"{config.model_dir!r}: {advice}")


def _context_classes() -> tuple[str, ...]:
    """The synthetic scenes' context-decided class names (pairs told apart by surroundings)."""
    return tuple(name for group in shapes.CONTEXT_CLASSES
                 for name in ((group,) if isinstance(group, str) else group))


def make_evaluate_fn(config, model, strategy, class_names, writers):
    """fn(step, weights) -> metrics: scores the validation set, writes eval summaries into
    `writers[weights]` ("raw" / "ema"), logs a line."""
    dataset = evaluator.make_eval_dataset(config, len(class_names), class_names)
    context_classes = _context_classes()
    predictor = evaluator.Predictor(model, strategy, config.global_batch_size)

    def evaluate_fn(step: int, weights: str = "raw") -> dict:
        with input_errors(f"--eval_pattern={config.eval_pattern}"):
            predictions = predictor.predict_dataset(dataset)
            samples = (predictor.sample_outputs(dataset, config.num_eval_images)
                       if config.num_eval_images else None)
        metrics = evaluator.compute_metrics(predictions, config.eval_threshold)
        drawn = None
        if samples is not None:
            if "patch_boxes" in samples:
                scale = max(1, 256 // config.image_size)
                drawn = visualize.draw_batch(samples["image"], samples, class_names, scale=scale)
        callbacks_lib.write_eval_summaries(writers[weights], step, metrics, class_names, drawn,
                                           context_classes, predictions)
        logging.info("step %d eval%s: mAP %.2f  CF1 %.2f  OF1 %.2f  (%d images)", step,
                     " (EMA weights)" if weights == "ema" else "", 100 * metrics["mAP"],
                     100 * metrics["CF1"], 100 * metrics["OF1"], metrics["num_images"])
        return metrics

    return evaluate_fn


def run_training(config: TrainConfig, extra_callbacks=()) -> dict:
    """Trains (or resumes) per `config`; returns the last validation metrics ({} if none).

    Args:
      config: the run's settings.
      extra_callbacks: Keras callbacks run after the built-in ones at each step.

    Raises:
      ValueError: an invalid flag (named). FloatingPointError: a NaN/inf loss (step named).
    """
    strategy = make_strategy(config.strategy)
    write_dir = worker_write_dir(strategy, config.model_dir)
    chief = write_dir == config.model_dir
    replicas = strategy.num_replicas_in_sync
    if config.global_batch_size % replicas:
        raise ValueError(f"--global_batch_size={config.global_batch_size} is not divisible by "
                         f"the {replicas} replicas of --strategy={config.strategy}")
    class_names = prepare_inputs(config)
    if chief:
        files.check_writable(config.model_dir, "model_dir", folder=True)
    try:
        with checkpoints.disk_full_guard(config.model_dir), \
                run_lock.locked(config.model_dir, enabled=chief):
            if chief:  # the others read nothing half-written: the chief checks and writes
                check_and_write_run_files(config, class_names)
            return _train(config, strategy, class_names, write_dir, extra_callbacks)
    finally:
        if not chief:
            shutil.rmtree(write_dir, ignore_errors=True)


def _train(config, strategy, class_names, write_dir, extra_callbacks) -> dict:
    model, manager, restored = restore.build_and_restore(config, len(class_names), strategy,
                                                         save_dir=write_dir)
    if config.init_from and restored:
        logging.info("--init_from=%s ignored: the run resumes from its own checkpoint %s",
                     config.init_from, restored)
    elif config.init_from:
        with strategy.scope():
            init_from.initialize(model, config.init_from, class_names)
    # A full disk (checkpoint, event files, side files): one line, partial saves removed.
    with checkpoints.disk_full_guard(write_dir, lambda: callbacks_lib.global_step(model)):
        return _train_model(config, strategy, class_names, write_dir, extra_callbacks, model,
                            manager)


def _train_model(config, strategy, class_names, write_dir, extra_callbacks, model,
                 manager) -> dict:
    replicas = strategy.num_replicas_in_sync
    step = callbacks_lib.global_step(model)
    logging.info("%s: %d replicas, %s params, starting at step %d of %d", config.model, replicas,
                 f"{model.count_params():,}", step, config.train_steps)
    train_writer = tf.summary.create_file_writer(os.path.join(write_dir, "train"))
    runs = {"raw": "eval", **({"ema": "eval_ema"} if config.ema_decay > 0 else {})}
    eval_writers = {name: tf.summary.create_file_writer(os.path.join(write_dir, run))
                    for name, run in runs.items()}
    summaries.write_hparams(write_dir, config)
    evaluate_fn = (make_evaluate_fn(config, model, strategy, class_names, eval_writers)
                   if config.eval_pattern else None)
    choose = lambda s, results: restore.write_weights_choice(write_dir, s, results)  # noqa: E731
    if step >= config.train_steps:
        logging.info("model_dir already holds step %d >= --train_steps", step)
        if evaluate_fn is None:
            return {}
        best, results = callbacks_lib.evaluate_both_ways(model, evaluate_fn, step, choose)
        return results[best]
    evaluation = None
    watcher = preemption.SignalWatcher()
    stopper = preemption.PreemptionCheckpoint(watcher, manager,
                                              (train_writer, *eval_writers.values()), strategy)
    if evaluate_fn is not None:
        evaluation = callbacks_lib.PeriodicEvaluation(evaluate_fn, config.eval_every,
                                                      config.train_steps,
                                                      skip=lambda: stopper.requested,
                                                      choose=choose)
    # The logger (which flushes) before the checkpoint: a kill right after a save cannot
    # lose the scalars of any step up to the checkpoint it resumes from.
    callbacks = [callbacks_lib.NonFiniteLossStop(),
                 callbacks_lib.TrainLogger(
                     train_writer, config.log_every, config.global_batch_size,
                     config.train_steps, paused=[evaluation] if evaluation else ()),
                 callbacks_lib.StepCheckpoint(manager, config.checkpoint_every, config.train_steps),
                 stopper,
                 callbacks_lib.StopAtStep(config.train_steps)]
    if evaluation is not None:
        callbacks.append(evaluation)
    callbacks.extend(summaries.profiler_callbacks(config, write_dir))
    callbacks.extend(extra_callbacks)
    truncation = record_checks.TruncationCounter()  # outside strategy.scope(): plain variables
    dataset = _train_dataset(config, class_names, strategy, config.seed + step, truncation)
    with watcher, input_errors(f"--train_pattern={config.train_pattern}"):
        loop.train_loop(model, strategy, dataset, callbacks, start_step=step,
                        steps_per_epoch=config.eval_every, jit_compile=config.jit_compile)
    truncation.log(config.max_boxes)  # once per run: how many examples lost box targets
    train_writer.flush()
    if stopper.stopped is not None:
        raise stopper.stopped
    return evaluation.last_metrics if evaluation and evaluation.last_metrics else {}


def metrics_summary(metrics: dict) -> dict:
    """The scalar entries of a metrics dict (for printing / json)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (float, np.floating))}
