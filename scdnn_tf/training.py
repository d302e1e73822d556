"""Training library: `run_training(TrainConfig) -> final validation metrics`.

Distribution: the model and optimizer are built inside `strategy.scope()`; the training
data comes from `strategy.distribute_datasets_from_function`, each input pipeline
batching `global_batch_size / num_replicas` images (and, under multi_worker_mirrored,
reading its own shards), so one step always consumes `global_batch_size` images (the
function form is used for its per-worker file sharding).

Steps: `train_loop.train_loop` runs the model's `train_step` in chunks of `eval_every`
batches until `StopAtStep` ends it at `train_steps` (batches the mixed-precision loss
scale skips do not count as steps). Checkpoints, evaluations, logs and the stop are keyed
on the optimizer's global step (see callbacks.py), so a run resumed mid-chunk stops exactly
at `train_steps` and evaluates at the same steps as an uninterrupted run. After a resume
the input pipeline is reseeded with `seed + restored_step` (replaying the stream would
mean decoding every skipped image).

EMA (`--ema_decay`): Keras' optimizer-level EMA (`use_ema=True`); the averages are
optimizer variables, so they are checkpointed with it. Evaluation swaps them into the
model (`callbacks.ema_weights`) and back; the loop copies them into the model at the
end, so the model returned/exported after training holds the EMA weights.

Mixed precision: `keras.mixed_precision.set_global_policy("mixed_float16")` before
building; `compile` then wraps the optimizer in a `LossScaleOptimizer`. The model's
`train_step` must differentiate `optimizer.scale_loss(loss)` and call
`optimizer.apply_gradients` (which unscales and skips steps with non-finite gradients),
and compute its losses from float32 logits.

Multi-worker (`multi_worker_mirrored`): only the chief (worker 0) writes into model_dir
(flags, label map, checkpoints, summaries). The other workers still run every save (a
save may read variables through collectives) but into a temporary directory deleted at
the end, and every worker restores from model_dir, which must therefore be shared.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from scdnn_tf import callbacks as callbacks_lib
from scdnn_tf import checkpoints, preemption, run_lock, train_loop
from scdnn_tf import evaluate, visualize
from scdnn_tf.data import record_checks
from scdnn_tf.data.label_map import read_label_map, write_label_map
from scdnn_tf.data.pipeline import make_dataset
from scdnn_tf.flags_common import ARCHITECTURE_FIELDS, TrainConfig  # noqa: F401 (re-export)

LABEL_MAP_NAME = "label_map.txt"
# A resumed run must keep these (the slots of SGD and AdamW differ); the changeable ones
# are safe because checkpoints match the optimizer state to variables by name.
RESUME_FIXED_FIELDS = ("optimizer",)
RESUME_CHANGEABLE_FIELDS = ("ema_decay", "mixed_precision", "freeze_stages")


@functools.lru_cache(maxsize=None)
def make_strategy(name: str) -> tf.distribute.Strategy:
    """`mirrored` (all local GPUs, else all logical CPUs), `multi_worker_mirrored`
    (cluster from TF_CONFIG) or `one_device` (first GPU, else the CPU).

    One instance per name and process: several MirroredStrategy objects in one process
    (training then evaluation, or tests) collide in their collective-op instance keys.
    """
    if name not in _STRATEGIES:
        if name == "mirrored":
            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
            _STRATEGIES[name] = tf.distribute.MirroredStrategy(devices)
        elif name == "multi_worker_mirrored":
            _STRATEGIES[name] = tf.distribute.MultiWorkerMirroredStrategy()
        elif name == "one_device":
            _STRATEGIES[name] = tf.distribute.OneDeviceStrategy(
                "/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0")
        else:
            raise ValueError(f"--strategy={name!r} must be one of mirrored, "
                             "multi_worker_mirrored, one_device")
    return _STRATEGIES[name]


_STRATEGIES: dict[str, tf.distribute.Strategy] = {}


def worker_write_dir(strategy: tf.distribute.Strategy, model_dir: str) -> str:
    """model_dir on the chief (any single-worker strategy); a new temporary directory on
    the other workers of a multi-worker cluster (the TF multi-worker guide's pattern)."""
    if strategy.extended.should_checkpoint:
        return model_dir
    task_id = getattr(strategy.cluster_resolver, "task_id", "x")
    return tempfile.mkdtemp(prefix=f"scdnn_worker{task_id}_")


def read_class_id_map(path: str) -> dict[int, int] | None:
    """File of source class ids, one per line in label map order -> {source id: index}."""
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    try:
        ids = [int(v) for v in lines]
    except ValueError as e:
        raise ValueError(f"--class_id_map={path!r}: every line must be an integer id ({e})") from e
    if len(set(ids)) != len(ids):
        raise ValueError(f"--class_id_map={path!r} repeats ids")
    return {source: index for index, source in enumerate(ids)}


def build_model(config: TrainConfig, num_classes: int, load_backbone_weights: bool = True):
    """The network named by `--model`, built (variables created) in the current scope."""
    weights = (config.backbone_weights or None) if load_backbone_weights else None
    common = dict(backbone=config.backbone, backbone_weights=weights,
                  image_size=config.image_size, freeze_bn=config.freeze_bn,
                  freeze_stages=config.freeze_stages)
    if config.model == "baseline":
        from scdnn_tf.modeling.baseline import BaselineClassifier  # noqa: PLC0415
        model = BaselineClassifier(num_classes, label_loss_weight=config.label_weight, **common)
    else:
        from scdnn_tf.modeling.scdnn import SCDNN  # noqa: PLC0415
        model = SCDNN(num_classes, fpn_channels=config.fpn_channels, min_level=config.min_level,
                      anchor_sizes=config.anchor_sizes, aspect_ratios=config.aspect_ratios,
                      num_patches=config.num_patches, num_train_patches=config.num_train_patches,
                      anchor_samples=config.anchor_samples,
                      # tf.image.crop_and_resize has no XLA kernel: same sampling via gathers.
                      crop_backend="gather" if config.jit_compile else "tf_image",
                      context_scale=config.context_scale, branches=config.branches,
                      aggregation=config.aggregation, fusion=config.fusion,
                      fc_units=config.fc_units, dropout=config.dropout,
                      regression_weight=config.regression_weight,
                      patch_weight=config.patch_weight, label_weight=config.label_weight,
                      **common)
    model(tf.zeros([1, config.image_size, config.image_size, 3]), training=False)
    return model


def build_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW, warm-up + cosine schedule, optional EMA."""
    decay_steps = config.train_steps - config.warmup_steps
    if config.warmup_steps:
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps, warmup_target=config.learning_rate,
            warmup_steps=config.warmup_steps)
    else:
        schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps)
    common = dict(learning_rate=schedule, weight_decay=config.weight_decay or None,
                  global_clipnorm=config.global_clipnorm or None,
                  use_ema=config.ema_decay > 0, ema_momentum=config.ema_decay or 0.99)
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(momentum=config.momentum, nesterov=config.nesterov,
                                         **common)
    else:
        optimizer = keras.optimizers.AdamW(**common)
    # Decay shrinks weights toward 0; biases and normalization scales/offsets are exempt.
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def set_precision_policy(config: TrainConfig) -> None:
    keras.mixed_precision.set_global_policy(
        "mixed_float16" if config.mixed_precision else "float32")


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
    set_precision_policy(config)
    with strategy.scope():
        keras.utils.set_random_seed(config.seed)
        model = build_model(config, num_classes, load_backbone_weights)
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
                         "--mixed_precision)", len(notes["missing"]), len(notes["unused"]))
        if writer:
            checkpoints.write_state_file(config.model_dir,
                                         checkpoints.keep_list(config.model_dir, latest))
    manager = tf.train.CheckpointManager(checkpoint, save_dir or config.model_dir,
                                         max_to_keep=config.keep_checkpoints)
    return model, manager, latest


def restore_for_inference(config: TrainConfig, num_classes: int, strategy):
    """Newest intact checkpoint of config.model_dir with EMA weights in place (if used).

    Returns:
      (model, optimizer, checkpoint path). Raises FileNotFoundError without a checkpoint.
    """
    model, _, latest = build_and_restore(config, num_classes, strategy,
                                         load_backbone_weights=False, for_training=False)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in --model_dir={config.model_dir!r}")
    model.optimizer.finalize_variable_values(model.trainable_variables)  # EMA -> weights
    return model, model.optimizer, latest


def make_eval_dataset(config: TrainConfig, num_classes: int,
                      class_names: list[str] | None = None) -> tf.data.Dataset:
    """Finite, deterministic, unaugmented validation batches of `global_batch_size`.

    With `class_names`, each record's stored class names are checked against them."""
    return make_dataset(config.eval_pattern, num_classes, config.image_size,
                        config.global_batch_size, training=False, max_boxes=config.max_boxes,
                        class_id_map=read_class_id_map(config.class_id_map),
                        class_names=class_names)


def _train_dataset(config, class_names, strategy, seed, truncation=None):
    num_classes = len(class_names)
    class_id_map = read_class_id_map(config.class_id_map)

    def dataset_fn(context: tf.distribute.InputContext):
        return make_dataset(config.train_pattern, num_classes, config.image_size,
                            context.get_per_replica_batch_size(config.global_batch_size),
                            training=True, max_boxes=config.max_boxes,
                            augment=config.augment, color_jitter=config.color_jitter,
                            class_id_map=class_id_map, class_names=class_names,
                            truncation=truncation, seed=seed, input_context=context)

    return strategy.distribute_datasets_from_function(dataset_fn)


def prepare_inputs(config: TrainConfig) -> list[str]:
    """Generates demo data if asked, validates the flags and the label / class-id maps.
    Returns the class names."""
    if config.demo_data_dir and not tf.io.gfile.glob(config.train_pattern):
        from data_tools.make_shapes import ensure_shapes_dataset  # noqa: PLC0415
        logging.info("generating the synthetic shapes dataset in %s", config.demo_data_dir)
        ensure_shapes_dataset(config.demo_data_dir)
    config.validate()
    class_names = read_label_map(config.label_map)
    id_map = read_class_id_map(config.class_id_map)
    if id_map is not None and len(id_map) != len(class_names):
        raise ValueError(f"--class_id_map={config.class_id_map!r} has {len(id_map)} ids but "
                         f"--label_map={config.label_map!r} has {len(class_names)} classes")
    return class_names


def check_and_write_run_files(config: TrainConfig, class_names: list[str]) -> None:
    """Refuses a resume whose settings cannot continue the run in model_dir; writes
    flags.txt, config.json and the label map. Call with the model_dir lock held."""
    if os.path.isfile(os.path.join(config.model_dir, "config.json")):
        previous = TrainConfig.read(config.model_dir)
        for name in ARCHITECTURE_FIELDS:
            if getattr(previous, name) != getattr(config, name):
                raise ValueError(f"--{name}={getattr(config, name)!r} differs from "
                                 f"{getattr(previous, name)!r} of the run in --model_dir="
                                 f"{config.model_dir!r}; use a new model_dir")
        for name in RESUME_FIXED_FIELDS:
            if getattr(previous, name) != getattr(config, name):
                raise ValueError(f"--{name}={getattr(config, name)!r} differs from "
                                 f"{getattr(previous, name)!r} of the run in --model_dir="
                                 f"{config.model_dir!r}: its optimizer state cannot carry "
                                 "over; keep the flag or use a new model_dir")
        for name in RESUME_CHANGEABLE_FIELDS:
            if getattr(previous, name) != getattr(config, name):
                logging.info("--%s changes from %r to %r on resume: the weights and the "
                             "optimizer state are restored by variable name", name,
                             getattr(previous, name), getattr(config, name))
        previous_names = read_label_map(os.path.join(config.model_dir, LABEL_MAP_NAME))
        if previous_names != class_names:
            raise ValueError(f"--label_map={config.label_map!r} differs from the label map of "
                             f"the run in --model_dir={config.model_dir!r}")
    config.write(config.model_dir)
    write_label_map(os.path.join(config.model_dir, LABEL_MAP_NAME), class_names)


def _context_classes() -> tuple[str, ...]:
    """The synthetic scenes' context-decided class names (pairs told apart by surroundings)."""
    try:
        from data_tools.make_shapes import CONTEXT_CLASSES  # noqa: PLC0415
    except ImportError:
        return ()
    return tuple(name for group in CONTEXT_CLASSES
                 for name in ((group,) if isinstance(group, str) else group))


def make_evaluate_fn(config, model, strategy, class_names, writer):
    """fn(step) -> metrics: scores the validation set, writes eval summaries, logs a line."""
    dataset = make_eval_dataset(config, len(class_names), class_names)
    context_classes = _context_classes()
    predictor = evaluate.Predictor(model, strategy, config.global_batch_size)

    def evaluate_fn(step: int) -> dict:
        predictions = predictor.predict_dataset(dataset)
        metrics = evaluate.compute_metrics(predictions, config.eval_threshold)
        drawn = None
        if config.num_eval_images:
            samples = predictor.sample_outputs(dataset, config.num_eval_images)
            if "patch_boxes" in samples:
                scale = max(1, 256 // config.image_size)
                drawn = visualize.draw_batch(samples["image"], samples, class_names, scale=scale)
        callbacks_lib.write_eval_summaries(writer, step, metrics, class_names, drawn,
                                           context_classes)
        logging.info("step %d eval: mAP %.2f  CF1 %.2f  OF1 %.2f  (%d images)", step,
                     100 * metrics["mAP"], 100 * metrics["CF1"], 100 * metrics["OF1"],
                     metrics["num_images"])
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
    try:
        with run_lock.locked(config.model_dir, enabled=chief):
            if chief:  # the others read nothing half-written: the chief checks and writes
                check_and_write_run_files(config, class_names)
            return _train(config, strategy, class_names, write_dir, extra_callbacks)
    finally:
        if not chief:
            shutil.rmtree(write_dir, ignore_errors=True)


def _train(config, strategy, class_names, write_dir, extra_callbacks) -> dict:
    replicas = strategy.num_replicas_in_sync
    model, manager, restored = build_and_restore(config, len(class_names), strategy,
                                                 save_dir=write_dir)
    step = callbacks_lib.global_step(model)
    logging.info("%s: %d replicas, %s params, starting at step %d of %d", config.model, replicas,
                 f"{model.count_params():,}", step, config.train_steps)
    train_writer = tf.summary.create_file_writer(os.path.join(write_dir, "train"))
    eval_writer = tf.summary.create_file_writer(os.path.join(write_dir, "eval"))
    evaluate_fn = (make_evaluate_fn(config, model, strategy, class_names, eval_writer)
                   if config.eval_pattern else None)
    if step >= config.train_steps:
        logging.info("model_dir already holds step %d >= --train_steps", step)
        if evaluate_fn is None:
            return {}
        with callbacks_lib.ema_weights(model):
            return evaluate_fn(step)
    evaluation = None
    watcher = preemption.SignalWatcher()
    stopper = preemption.PreemptionCheckpoint(watcher, manager, (train_writer, eval_writer),
                                              strategy)
    if evaluate_fn is not None:
        evaluation = callbacks_lib.PeriodicEvaluation(evaluate_fn, config.eval_every,
                                                      config.train_steps,
                                                      skip=lambda: stopper.requested)
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
    callbacks.extend(extra_callbacks)
    truncation = record_checks.TruncationCounter()  # outside strategy.scope(): plain variables
    dataset = _train_dataset(config, class_names, strategy, config.seed + step, truncation)
    with watcher:
        train_loop.train_loop(model, strategy, dataset, callbacks, start_step=step,
                              steps_per_epoch=config.eval_every, jit_compile=config.jit_compile)
    truncation.log(config.max_boxes)  # once per run: how many examples lost box targets
    train_writer.flush()
    if stopper.stopped is not None:
        raise stopper.stopped
    return evaluation.last_metrics if evaluation and evaluation.last_metrics else {}


def metrics_summary(metrics: dict) -> dict:
    """The scalar entries of a metrics dict (for printing / json)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (float, np.floating))}
