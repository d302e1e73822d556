"""Training library: `run_training(TrainConfig) -> final validation metrics`.

Distribution: the model and optimizer are built inside `strategy.scope()`; the training
data comes from `strategy.distribute_datasets_from_function`, each input pipeline
batching `global_batch_size / num_replicas` images (and, under multi_worker_mirrored,
reading its own shards), so one step always consumes `global_batch_size` images. `fit`
accepts that distributed dataset as is. (Handing `fit` a plain dataset batched at the
global size would also give global-batch steps: Keras then calls
`experimental_distribute_dataset`, which splits each batch over the replicas; the
function form is used for its per-worker file sharding.)

Steps: `fit` runs epochs of `eval_every` steps, `epochs = ceil(train_steps / eval_every)`,
starting at `initial_epoch = restored_step // eval_every`. Checkpoints, evaluations, logs
and the stop are keyed on the optimizer's global step (see callbacks.py), so a run
resumed mid-epoch stops exactly at `train_steps` and evaluates at the same steps as an
uninterrupted run. After a resume the input pipeline is reseeded with
`seed + restored_step` (replaying the stream would mean decoding every skipped image).

EMA (`--ema_decay`): Keras' optimizer-level EMA (`use_ema=True`); the averages are
optimizer variables, so they are checkpointed with it. Evaluation swaps them into the
model (`callbacks.ema_weights`) and back; `fit` itself copies them into the model at the
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

import contextlib
import functools
import math
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from scdnn_tf import callbacks as callbacks_lib
from scdnn_tf import evaluate, tensorboard_summaries, visualize
from scdnn_tf.data.label_map import read_label_map, write_label_map
from scdnn_tf.data.pipeline import make_dataset
from scdnn_tf.flags_common import ARCHITECTURE_FIELDS, TrainConfig  # noqa: F401 (re-export)

LABEL_MAP_NAME = "label_map.txt"


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


def build_and_restore(config, num_classes, strategy, load_backbone_weights=True, save_dir=None):
    """Builds model + optimizer in `strategy.scope()`, compiles, restores the latest checkpoint
    of config.model_dir; the returned manager saves into `save_dir` (default model_dir).

    Returns:
      (model, checkpoint manager, restored step: 0 for a fresh run).
    """
    set_precision_policy(config)
    with strategy.scope():
        keras.utils.set_random_seed(config.seed)
        model = build_model(config, num_classes, load_backbone_weights)
        model.compile(optimizer=build_optimizer(config), jit_compile=config.jit_compile)
        # Create the slots (and EMA) now, so the restore below fills existing variables.
        model.optimizer.build(model.trainable_variables)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    manager = tf.train.CheckpointManager(checkpoint, save_dir or config.model_dir,
                                         max_to_keep=config.keep_checkpoints)
    latest = tf.train.latest_checkpoint(config.model_dir)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        logging.info("restored %s", latest)
    return model, manager, callbacks_lib.global_step(model)


def restore_for_inference(config: TrainConfig, num_classes: int, strategy):
    """Latest checkpoint of config.model_dir with EMA weights in place (if used).

    Returns:
      (model, optimizer, checkpoint path). Raises FileNotFoundError without a checkpoint.
    """
    if not tf.train.latest_checkpoint(config.model_dir):
        raise FileNotFoundError(f"no checkpoint in --model_dir={config.model_dir!r}")
    model, manager, _ = build_and_restore(config, num_classes, strategy,
                                          load_backbone_weights=False)
    model.optimizer.finalize_variable_values(model.trainable_variables)  # EMA -> weights
    return model, model.optimizer, manager.latest_checkpoint


def make_eval_dataset(config: TrainConfig, num_classes: int) -> tf.data.Dataset:
    """Finite, deterministic, unaugmented validation batches of `global_batch_size`."""
    return make_dataset(config.eval_pattern, num_classes, config.image_size,
                        config.global_batch_size, training=False, max_boxes=config.max_boxes,
                        class_id_map=read_class_id_map(config.class_id_map))


def _train_dataset(config, num_classes, strategy, seed):
    class_id_map = read_class_id_map(config.class_id_map)

    def dataset_fn(context: tf.distribute.InputContext):
        return make_dataset(config.train_pattern, num_classes, config.image_size,
                            context.get_per_replica_batch_size(config.global_batch_size),
                            training=True, max_boxes=config.max_boxes,
                            augment=config.augment, color_jitter=config.color_jitter,
                            class_id_map=class_id_map,
                            seed=seed, input_context=context)

    return strategy.distribute_datasets_from_function(dataset_fn)


def prepare_model_dir(config: TrainConfig, write: bool = True) -> list[str]:
    """Generates demo data if asked, validates, checks a resumed run's architecture, and
    (if `write`: the chief) writes flags.txt, config.json and the label map. Returns the
    class names."""
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
    if not write:  # non-chief: the chief checks and writes (no reads of half-written files)
        return class_names
    if os.path.isfile(os.path.join(config.model_dir, "config.json")):
        previous = TrainConfig.read(config.model_dir)
        for name in ARCHITECTURE_FIELDS:
            if getattr(previous, name) != getattr(config, name):
                raise ValueError(f"--{name}={getattr(config, name)!r} differs from "
                                 f"{getattr(previous, name)!r} of the run in --model_dir="
                                 f"{config.model_dir!r}; use a new model_dir")
        previous_names = read_label_map(os.path.join(config.model_dir, LABEL_MAP_NAME))
        if previous_names != class_names:
            raise ValueError(f"--label_map={config.label_map!r} differs from the label map of "
                             f"the run in --model_dir={config.model_dir!r}")
    config.write(config.model_dir)
    write_label_map(os.path.join(config.model_dir, LABEL_MAP_NAME), class_names)
    return class_names


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
    dataset = make_eval_dataset(config, len(class_names))
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
                                           context_classes, predictions)
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
    class_names = prepare_model_dir(config, write=write_dir == config.model_dir)
    replicas = strategy.num_replicas_in_sync
    if config.global_batch_size % replicas:
        raise ValueError(f"--global_batch_size={config.global_batch_size} is not divisible by "
                         f"the {replicas} replicas of --strategy={config.strategy}")
    try:
        return _train(config, strategy, class_names, write_dir, extra_callbacks)
    finally:
        if write_dir != config.model_dir:
            shutil.rmtree(write_dir, ignore_errors=True)


def _train(config, strategy, class_names, write_dir, extra_callbacks) -> dict:
    replicas = strategy.num_replicas_in_sync
    model, manager, step = build_and_restore(config, len(class_names), strategy,
                                             save_dir=write_dir)
    logging.info("%s: %d replicas, %s params, starting at step %d of %d", config.model, replicas,
                 f"{model.count_params():,}", step, config.train_steps)
    train_writer = tf.summary.create_file_writer(os.path.join(write_dir, "train"))
    eval_writer = tf.summary.create_file_writer(os.path.join(write_dir, "eval"))
    tensorboard_summaries.write_hparams(write_dir, config)
    evaluate_fn = (make_evaluate_fn(config, model, strategy, class_names, eval_writer)
                   if config.eval_pattern else None)
    if step >= config.train_steps:
        logging.info("model_dir already holds step %d >= --train_steps", step)
        if evaluate_fn is None:
            return {}
        with callbacks_lib.ema_weights(model):
            return evaluate_fn(step)
    evaluation = None
    if evaluate_fn is not None:
        evaluation = callbacks_lib.PeriodicEvaluation(evaluate_fn, config.eval_every,
                                                      config.train_steps)
    # The logger (which flushes) before the checkpoint: a kill right after a save cannot
    # lose the scalars of any step up to the checkpoint it resumes from.
    callbacks = [callbacks_lib.NonFiniteLossStop(),
                 callbacks_lib.TrainLogger(
                     train_writer, config.log_every, config.global_batch_size,
                     config.train_steps, paused=[evaluation] if evaluation else ()),
                 callbacks_lib.StepCheckpoint(manager, config.checkpoint_every, config.train_steps),
                 callbacks_lib.StopAtStep(config.train_steps)]
    if evaluation is not None:
        callbacks.append(evaluation)
    callbacks.extend(tensorboard_summaries.profiler_callbacks(config, write_dir))
    callbacks.extend(extra_callbacks)
    dataset = _train_dataset(config, len(class_names), strategy, config.seed + step)
    with _fit_scope(model, strategy):
        model.fit(dataset, epochs=math.ceil(config.train_steps / config.eval_every),
                  initial_epoch=step // config.eval_every, steps_per_epoch=config.eval_every,
                  callbacks=callbacks, verbose=0)
    train_writer.flush()
    return evaluation.last_metrics if evaluation and evaluation.last_metrics else {}


@contextlib.contextmanager
def _fit_scope(model: keras.Model, strategy: tf.distribute.Strategy):
    """Runs Keras 3.15 `fit` in `strategy.scope()` with the model's own strategy unset.

    With a strategy of its own, `fit` first pulls one batch from the (persistent, since
    `steps_per_epoch` is set) iterator to build the model symbolically: that batch is
    never trained on, and under multi-worker the `strategy.reduce` it does rejects a dict
    batch (keras-team/keras#20585). The model is already built; without its own strategy
    Keras skips the step and takes the strategy from the enclosing scope.
    Under multi-worker, `fit` also reduces each step's logs with
    `strategy.reduce("MEAN", v, axis=0)`, which fails on scalars: the logs get a
    length-1 axis there, so the result is the mean over replicas, as under `mirrored`.
    """
    saved_strategy, saved_step = model._distribute_strategy, model.train_step  # noqa: SLF001
    model._distribute_strategy = None  # noqa: SLF001
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if multi_worker:
        model.train_step = lambda data: {k: tf.reshape(v, [1])
                                         for k, v in saved_step(data).items()}
    try:
        with strategy.scope():
            yield
    finally:
        model._distribute_strategy = saved_strategy  # noqa: SLF001
        if multi_worker:
            del model.train_step  # back to the class's method


def metrics_summary(metrics: dict) -> dict:
    """The scalar entries of a metrics dict (for printing / json)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (float, np.floating))}
