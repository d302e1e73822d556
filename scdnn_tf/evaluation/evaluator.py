"""The evaluation library: scoring a dataset, the metrics, per-class thresholds.

`run_evaluation(model_dir)` loads the newest intact checkpoint of a training model_dir (the network is rebuilt from its
`config.json`, with the EMA weights swapped in when the run used `--ema_decay`), scores
`--eval_pattern`, prints the metrics and a per-class AP table, writes `metrics.json` into
model_dir and, with `--thresholds_out=FILE`, per-class thresholds maximizing each class's
F1 on that split (json: {"classes": [...], "thresholds": [...]}) for predict and export.

`Predictor` and `compute_metrics` also serve training's periodic evaluation. The command
line front end is `scdnn_tf/evaluate.py`.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from absl import logging

from scdnn_tf.evaluation import metrics as metrics_lib
from scdnn_tf.core import restore
from scdnn_tf.core.strategy import make_strategy
from scdnn_tf.data.label_map import read_label_map
from scdnn_tf.data.label_map import read_class_id_map
from scdnn_tf.data.input_errors import input_errors
from scdnn_tf.data.pipeline import count_records, make_dataset
from scdnn_tf.utils import files
from scdnn_tf.utils.progress import Progress
from scdnn_tf.core.config import TrainConfig
from scdnn_tf.core.precision import fold_old_flag

_OUTPUT_KEYS = ("patch_boxes", "context_boxes", "patch_scores", "patch_context_scale")
# Flags that may differ between training and evaluation; everything else comes from the
# model_dir's config.json so the network matches its checkpoint.
EVAL_OVERRIDES = ("eval_pattern", "global_batch_size", "strategy", "eval_threshold",
                  "class_id_map", "max_boxes", "num_eval_images", "num_patches", "precision",
                  "mixed_precision")


def _pad_batch(batch: dict, global_batch_size: int) -> dict:
    """Pads a (possibly partial, last) batch to the full global batch; adds `valid` [B].

    Every replica then gets the same number of images (no empty per-replica batches,
    which proposal/NMS code need not support); padded rows are dropped on the host.
    """
    size = tf.shape(batch["image"])[0]
    pad = global_batch_size - size
    out = {}
    for key, value in batch.items():
        paddings = [[0, pad]] + [[0, 0]] * (value.shape.rank - 1)
        fill = -1 if key == "box_classes" else 0
        padded = tf.pad(value, paddings, constant_values=tf.cast(fill, value.dtype))
        padded.set_shape([global_batch_size] + value.shape.as_list()[1:])
        out[key] = padded
    # int32, not bool: strategy.gather does not take bool tensors.
    out["valid"] = tf.sequence_mask(size, global_batch_size, dtype=tf.int32)
    return out


def _logits(outputs: dict) -> tf.Tensor:
    # Mixed precision logits are float16: the metrics take float32 (as float64 on the host).
    return tf.cast(outputs["logits"], tf.float32)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    """float32 sigmoid computed in float64 without overflow (exp of -|x| only)."""
    x = logits.astype(np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)


class Predictor:
    """Scores batches with a model under a strategy; the traced functions are reused.

    Args:
      model: returns a dict with `logits` [B,C] (and optionally the patch outputs) when
        called on images [B,S,S,3].
      strategy: the strategy the model was built under.
      global_batch_size: batch size of the datasets given to `predict_dataset`.
    """

    def __init__(self, model, strategy: tf.distribute.Strategy, global_batch_size: int):
        self.model, self.strategy, self.global_batch_size = model, strategy, global_batch_size
        self._step = tf.function(self._distributed_step)
        self._forward = tf.function(self._outputs)

    def _outputs(self, images):
        outputs = self.model(images, training=False)
        out = {"scores": tf.sigmoid(_logits(outputs))}
        out.update({k: tf.cast(outputs[k], tf.float32) for k in _OUTPUT_KEYS if k in outputs})
        return out

    def _distributed_step(self, batch):
        def replica_fn(b):
            return {"logits": _logits(self.model(b["image"], training=False)),
                    "labels": b["labels"],
                    "label_weights": b["label_weights"], "valid": b["valid"]}
        per_replica = self.strategy.run(replica_fn, args=(batch,))
        # gather: all replicas (and all workers under multi_worker_mirrored), in order.
        return {k: self.strategy.gather(v, axis=0) for k, v in per_replica.items()}

    def predict_dataset(self, dataset: tf.data.Dataset,
                        progress: Progress | None = None) -> dict[str, np.ndarray]:
        """Scores a finite dataset of pipeline batches (batch size <= global_batch_size).

        Args:
          dataset: batches from `make_dataset(training=False)`.
          progress: optional `Progress`, advanced by the images of each batch.

        Returns:
          numpy dict over all images, in dataset order: `logits` [N,C] float32 (what
          the metrics rank: no ties from a saturated sigmoid), `scores` [N,C] (their
          sigmoid, for display), `labels` [N,C], `label_weights` [N,C].
        """
        padded = dataset.map(lambda b: _pad_batch(b, self.global_batch_size))
        parts = {"logits": [], "labels": [], "label_weights": []}
        for batch in self.strategy.experimental_distribute_dataset(padded):
            result = {k: v.numpy() for k, v in self._step(batch).items()}
            for key in parts:
                parts[key].append(result[key][result["valid"].astype(bool)])
            if progress is not None:
                progress.update(int(result["valid"].sum()))
        if not parts["logits"]:
            raise ValueError("the evaluation dataset is empty")
        out = {k: np.concatenate(v) for k, v in parts.items()}
        out["scores"] = _sigmoid(out["logits"])
        return out

    def sample_outputs(self, dataset: tf.data.Dataset, num_images: int) -> dict[str, np.ndarray]:
        """Outputs for the first `num_images` images of a dataset (for drawing).

        Returns:
          numpy dict: `image` [K,S,S,3], `scores` [K,C], and `patch_boxes`,
          `context_boxes`, `patch_scores` when the model produces them.
        """
        batch = next(iter(dataset.unbatch().batch(num_images).take(1)))
        out = {k: v.numpy() for k, v in self._forward(batch["image"]).items()}
        out["image"] = batch["image"].numpy()
        return out


def compute_metrics(predictions: dict, threshold: float = 0.5) -> dict:
    """`multilabel_metrics` on `predict_dataset` output, ranked by the logits."""
    return metrics_lib.multilabel_metrics(predictions["labels"], predictions["logits"],
                                          threshold, predictions["label_weights"],
                                          from_logits=True)


def metrics_to_json(metrics: dict, class_names) -> dict:
    """JSON-ready copy: per-class arrays become {class name: value} (NaN -> null)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, np.ndarray):
            out[key] = {n: (None if np.isnan(v) else float(v)) for n, v in zip(class_names, value)}
        else:
            out[key] = value
    return out


def write_thresholds(path: str, predictions: dict, class_names) -> np.ndarray:
    """Writes per-class F1-maximizing thresholds as json {"classes", "thresholds"} (whole:
    a failed write leaves no partial file)."""
    thresholds = metrics_lib.per_class_best_thresholds(
        predictions["labels"], predictions["logits"], predictions["label_weights"],
        from_logits=True)
    files.write_json(path, {"classes": list(class_names),
                            "thresholds": [float(t) for t in thresholds]})
    return thresholds


def run_evaluation(model_dir: str, overrides: dict | None = None,
                   thresholds_out: str | None = None) -> dict:
    """Evaluates the latest checkpoint of a training model_dir.

    Args:
      model_dir: a directory written by `run_training` (config.json, label map, checkpoints).
      overrides: TrainConfig values replacing config.json's (only `EVAL_OVERRIDES` keys;
        `precision` / `mixed_precision` choose the evaluation's precision, float32 when
        absent whatever the run trained in).
      thresholds_out: optional path for the per-class thresholds json.

    Returns:
      the metrics dict (also written to `model_dir/metrics.json`).

    Raises:
      ValueError / FileNotFoundError: no checkpoint, no eval pattern, bad override, a
        malformed side file or a record failing a check (named), an output that cannot
        be written (checked before the model is built).
      files.DiskFullError: metrics.json or the thresholds could not be written.
    """
    if not model_dir:
        raise ValueError("--model_dir is required: the folder of the training run to evaluate")
    config = TrainConfig.read(model_dir)
    bad = sorted(set(overrides or {}) - set(EVAL_OVERRIDES))
    if bad:
        raise ValueError(f"flags {bad} cannot change at evaluation (they define the model); "
                         f"only {EVAL_OVERRIDES} can")
    overrides = dict(overrides or {})
    # Not the training precision: float32 unless --precision (or --mixed_precision) is given.
    given = "precision" in overrides
    precision = fold_old_flag(overrides.pop("precision", "float32"),
                              overrides.pop("mixed_precision", False), precision_given=given)
    for key, value in overrides.items():
        setattr(config, key, value)
    if not config.eval_pattern:
        raise ValueError("--eval_pattern is required (and config.json has none)")
    with files.flag_errors("model_dir", model_dir):
        class_names = read_label_map(os.path.join(model_dir, restore.LABEL_MAP_NAME))
    # Everything that can fail before the work, before the model is built.
    files.check_writable(model_dir, "model_dir", folder=True)  # metrics.json
    if thresholds_out:
        files.check_writable(thresholds_out, "thresholds_out")
    with files.flag_errors("class_id_map", config.class_id_map):
        read_class_id_map(config.class_id_map)
    with files.flag_errors("eval_pattern", config.eval_pattern):
        dataset = make_eval_dataset(config, len(class_names), class_names)
    strategy = make_strategy(config.strategy)
    model, _, checkpoint_path = restore.restore_for_inference(config, len(class_names), strategy,
                                                              precision)
    logging.info("evaluating %s on %s", checkpoint_path, config.eval_pattern)
    with Progress(count_records(config.eval_pattern), "evaluating", unit="images") as bar, \
            input_errors(f"--eval_pattern={config.eval_pattern}"):
        predictions = Predictor(model, strategy, config.global_batch_size).predict_dataset(
            dataset, progress=bar)
    metrics = compute_metrics(predictions, config.eval_threshold)
    print(metrics_lib.format_metrics_table(metrics, class_names))
    result = metrics_to_json(metrics, class_names)
    result.update(checkpoint=checkpoint_path, eval_pattern=config.eval_pattern,
                  threshold=config.eval_threshold, precision=model.dtype_policy.name)
    files.write_json(os.path.join(model_dir, "metrics.json"), result)
    if thresholds_out:
        write_thresholds(thresholds_out, predictions, class_names)
        logging.info("per-class thresholds written to %s", thresholds_out)
    return metrics


def make_eval_dataset(config: TrainConfig, num_classes: int,
                      class_names: list[str] | None = None) -> tf.data.Dataset:
    """Finite, deterministic, unaugmented validation batches of `global_batch_size`.

    With `class_names`, each record's stored class names are checked against them."""
    return make_dataset(config.eval_pattern, num_classes, config.image_size,
                        config.global_batch_size, training=False, max_boxes=config.max_boxes,
                        class_id_map=read_class_id_map(config.class_id_map),
                        class_names=class_names)
