"""TensorBoard beyond scalars: per-class PR curves, the HParams dashboard, profiler traces.

* `write_pr_curves`: at each evaluation, one ``pr_curve/<class>`` summary per class (the
  PR Curves tab) holding TP, FP, TN, FN, precision and recall at evenly spaced score
  thresholds, counted exactly (``score >= t``, the metrics' convention).
* `write_hparams`: the run's architecture and training flags as HParams (one session
  per model_dir, written at its root) and the eval/train scalars as its metrics, so
  ``tensorboard --logdir runs/`` lists the runs side by side (HParams tab).
* `ProfileSteps`: a profiler trace of global steps K..L (``--profile_steps=K,L``) in
  ``model_dir/train/plugins/profile/<time>/<host>.xplane.pb`` (the Profile tab, from
  the ``tensorboard-plugin-profile`` package, extra ``profile``).
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorboard.plugins.hparams import api as hp
from tensorboard.plugins.pr_curve import metadata as pr_metadata

from scdnn_tf.core.config import parse_profile_steps

NUM_THRESHOLDS = 101
# TrainConfig fields that are file locations or bookkeeping, not choices to compare.
_NOT_HPARAMS = ("train_pattern", "eval_pattern", "label_map", "class_id_map", "demo_data_dir",
                "model_dir", "eval_every", "checkpoint_every", "log_every", "keep_checkpoints",
                "num_eval_images", "profile_steps")
# (run subfolder, tag) of the scalars shown as HParams metrics; the last value is shown.
HPARAM_METRICS = (("eval", "mAP"), ("eval", "CF1"), ("eval", "CF1_mean"), ("eval", "OF1"),
                  ("eval", "CP"), ("eval", "CR"), ("eval", "OP"), ("eval", "OR"),
                  ("train", "loss"), ("train", "images_per_second"))


def pr_curve_data(labels, scores, weights=None, num_thresholds=NUM_THRESHOLDS) -> np.ndarray:
    """Per-class PR-curve tensors in the pr_curves plugin's layout.

    Args:
      labels: [N, C] 0/1 ground truth.
      scores: [N, C] probabilities in [0, 1].
      weights: optional [N, C]; entries with weight 0 are left out (e.g. "difficult").
      num_thresholds: T thresholds ``t_i = i / (T - 1)``.

    Returns:
      float32 [C, 6, T]: rows TP, FP, TN, FN (weighted counts of ``score >= t_i``),
      precision ``TP / max(TP + FP, 1e-7)`` and recall ``TP / max(TP + FN, 1e-7)``.
    """
    labels = np.asarray(labels, np.float64)
    scores = np.asarray(scores, np.float64)
    weights = np.ones_like(labels) if weights is None else np.asarray(weights, np.float64)
    thresholds = np.linspace(0.0, 1.0, num_thresholds)
    positive, negative = labels * weights, (1.0 - labels) * weights
    tp = np.stack([_count_at_or_above(s, w, thresholds) for s, w in zip(scores.T, positive.T)])
    fp = np.stack([_count_at_or_above(s, w, thresholds) for s, w in zip(scores.T, negative.T)])
    fn = positive.sum(0)[:, None] - tp
    tn = negative.sum(0)[:, None] - fp
    precision = tp / np.maximum(tp + fp, 1e-7)
    recall = tp / np.maximum(tp + fn, 1e-7)
    return np.stack([tp, fp, tn, fn, precision, recall], axis=1).astype(np.float32)


def _count_at_or_above(scores, weights, thresholds):
    """sum(weights[scores >= t]) for each t: [T] (sorted scores, suffix sums, O(N log N))."""
    order = np.argsort(scores, kind="stable")
    suffix = np.concatenate([np.cumsum(weights[order][::-1])[::-1], [0.0]])
    return suffix[np.searchsorted(scores[order], thresholds, side="left")]


def write_pr_curves(step: int, labels, scores, class_names, weights=None,
                    num_thresholds=NUM_THRESHOLDS) -> None:
    """Writes ``pr_curve/<class>`` summaries into the default writer at `step`."""
    data = pr_curve_data(labels, scores, weights, num_thresholds)
    for name, tensor in zip(class_names, data):
        md = pr_metadata.create_summary_metadata(
            display_name=name, description=f"precision-recall of class {name}",
            num_thresholds=num_thresholds)
        tf.summary.write(f"pr_curve/{name}", tensor, step=step, metadata=md)


def hparams_of(config) -> dict:
    """The TrainConfig values shown as HParams (tuples as comma-joined strings)."""
    values = {}
    for key, value in config.to_dict().items():
        if key not in _NOT_HPARAMS:
            values[key] = ",".join(f"{v:g}" for v in value) if isinstance(value, list) else value
    return values


def write_hparams(log_dir: str, config) -> None:
    """Writes the HParams experiment and this run's session into `log_dir` (the model_dir)."""
    values = hparams_of(config)
    metrics = [hp.Metric(tag, group=group, display_name=f"{group}/{tag}")
               for group, tag in HPARAM_METRICS]
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        hp.hparams_config(hparams=[hp.HParam(k) for k in values], metrics=metrics)
        hp.hparams(values, trial_id=os.path.basename(os.path.normpath(log_dir)))
    writer.close()


class ProfileSteps(keras.callbacks.Callback):
    """Profiles global steps `first`..`last` (inclusive) into `log_dir` (TensorBoard's
    ``profile_batch`` semantics, keyed on the optimizer's step so a resumed run counts
    the same way; a run resumed past `first` profiles what is left of the range)."""

    def __init__(self, log_dir: str, first: int, last: int):
        super().__init__()
        self.log_dir, self.first, self.last = log_dir, int(first), int(last)
        self.active = self.done = False
        self._trace = None

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def on_train_batch_begin(self, batch, logs=None):
        step = self._step() + 1
        if not (self.active or self.done) and self.first <= step <= self.last:
            tf.profiler.experimental.start(self.log_dir)
            self.active = True
        if self.active:
            # A step marker (the profiler guide's `_r=1` root event), as Keras' TensorBoard
            # callback sets: the Profile tab's overview then shows per-step times.
            self._trace = tf.profiler.experimental.Trace("train", step_num=step, _r=1)
            self._trace.__enter__()

    def on_train_batch_end(self, batch, logs=None):
        if self._trace is not None:
            self._trace.__exit__(None, None, None)
            self._trace = None
        if self.active and self._step() >= self.last:
            self._stop()

    def on_train_end(self, logs=None):
        if self.active:
            self._stop()

    def _stop(self):
        tf.profiler.experimental.stop()
        self.active, self.done = False, True
        logging.info("profiler trace of steps %d..%d written under %s/plugins/profile",
                     self.first, self.last, self.log_dir)


def profiler_callbacks(config, write_dir: str) -> list:
    """[ProfileSteps] writing into write_dir/train when --profile_steps is set, else []."""
    steps = parse_profile_steps(config.profile_steps)
    return [ProfileSteps(os.path.join(write_dir, "train"), *steps)] if steps else []
