"""The run directory and what it holds: strategy, model, optimizer, checkpoint restore.

Everything that both training and evaluation/export need to rebuild a run from its
`--model_dir` lives here, so that imports run one way: the CLIs -> `training` /
`evaluation` / `export` -> `run_dir` -> the model, the data pipeline and `checkpoints`.
"""

from __future__ import annotations

import tempfile

import keras
import tensorflow as tf
from absl import logging

from scdnn_tf import checkpoints
from scdnn_tf.data.pipeline import make_dataset
from scdnn_tf.train_config import TrainConfig

LABEL_MAP_NAME = "label_map.txt"
# A resumed run must keep these (the slots of SGD and AdamW differ); the changeable ones
# are safe because checkpoints match the optimizer state to variables by name.
RESUME_FIXED_FIELDS = ("optimizer",)
RESUME_CHANGEABLE_FIELDS = ("ema_decay", "mixed_precision", "freeze_stages")


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
                      context_scale=config.context_scale,
                      context_scales=config.context_scales or None, relation=config.relation,
                      relation_layers=config.relation_layers, global_patch=config.global_patch,
                      branches=config.branches,
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
