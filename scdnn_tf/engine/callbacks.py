"""Keras callbacks of a training run, all keyed on the optimizer's global step.

`model.fit` numbers batches per epoch and restarts at 0 on resume; these callbacks read
`optimizer.iterations` instead, so checkpoints, logs and evaluations land on the same
global steps whether or not the run was interrupted. Order matters in the callback list:
`NonFiniteLossStop` first (never checkpoint NaN weights), then `TrainLogger` (its
scalars reach disk before the step's checkpoint), `StepCheckpoint` and
`PeriodicEvaluation` (`TrainLogger` leaves evaluation time out of images/s whenever it
happened).

The train step's logs are running means since the epoch began (Keras `Mean` trackers,
reset each epoch); `TrainLogger` turns them back into means over its own interval.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from scdnn_tf.core import restore
from scdnn_tf.engine import summaries


def global_step(model: keras.Model) -> int:
    """The optimizer's step counter as a Python int (works for mirrored variables)."""
    return int(model.optimizer.iterations.numpy())


def current_learning_rate(optimizer) -> float:
    """The learning rate the schedule gives at the optimizer's current step."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def has_ema(model: keras.Model) -> bool:
    """Whether the model's optimizer keeps moving averages (`use_ema=True`)."""
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    return bool(getattr(optimizer, "use_ema", False))


@contextlib.contextmanager
def ema_weights(model: keras.Model):
    """Swaps the optimizer's moving averages into the model, restoring the live weights after.

    A no-op when the optimizer has no EMA (`use_ema=False`). Uses the public
    `finalize_variable_values` (EMA -> model variables), after saving the live values.
    """
    if not has_ema(model):
        yield
        return
    variables = model.trainable_variables
    backup = [v.numpy() for v in variables]
    model.optimizer.finalize_variable_values(variables)
    try:
        yield
    finally:
        for variable, value in zip(variables, backup):
            variable.assign(value)


class NonFiniteLossStop(keras.callbacks.Callback):
    """Stops training at the first step whose logged loss values are NaN or inf.

    Raises FloatingPointError naming the global step and the offending loss entries,
    so the CLI exits non-zero with that message (instead of Keras' silent TerminateOnNaN).
    """

    def on_train_batch_end(self, batch, logs=None):
        bad = {k: float(v) for k, v in (logs or {}).items()
               if k.startswith("loss") and not math.isfinite(float(v))}
        if bad:
            self.model.stop_training = True
            detail = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
            raise FloatingPointError(
                f"non-finite loss at step {global_step(self.model)}: {detail}; lower "
                "--learning_rate, add --warmup_steps or --global_clipnorm, or check the data")


class StepCheckpoint(keras.callbacks.Callback):
    """Saves `manager`'s checkpoint every `every` global steps and at `last_step`.

    The final save happens at the last batch, before `fit` overwrites the weights with
    their EMA (`finalize_variable_values`), so a resumed run continues from live weights.
    """

    def __init__(self, manager: tf.train.CheckpointManager, every: int, last_step: int):
        super().__init__()
        self.manager, self.every, self.last_step = manager, int(every), int(last_step)

    def on_train_batch_end(self, batch, logs=None):
        step = global_step(self.model)
        if step % self.every == 0 or step >= self.last_step:
            path = self.manager.save(checkpoint_number=step)
            logging.info("step %d: checkpoint %s", step, path)


class StopAtStep(keras.callbacks.Callback):
    """Ends `fit` exactly at `last_step` (epochs are chunks of eval_every steps, and a
    resumed run may start mid-chunk)."""

    def __init__(self, last_step: int):
        super().__init__()
        self.last_step = int(last_step)

    def on_train_batch_end(self, batch, logs=None):
        if global_step(self.model) >= self.last_step:
            self.model.stop_training = True


def evaluate_both_ways(model: keras.Model, evaluate_fn: Callable[[int, str], dict], step: int,
                       choose: Callable[[int, dict], str] | None = None):
    """Scores the raw weights and, if the optimizer keeps an EMA, the averaged weights.

    Args:
      model: the trained model.
      evaluate_fn: fn(step, weights) -> metrics, weights "raw" or "ema".
      step: the global step.
      choose: fn(step, {"raw": metrics, "ema": metrics}) -> the better weights' name
        (e.g. one that records it); default `restore.better_weights` by mAP.

    Returns:
      (name of the better weights, {weights: metrics}).
    """
    results = {"raw": evaluate_fn(step, "raw")}
    if not has_ema(model):
        return "raw", results
    with ema_weights(model):
        results["ema"] = evaluate_fn(step, "ema")
    best = (choose or (lambda _, r: restore.better_weights(r)))(step, results)
    logging.info("step %d: the %s weights score higher", step, best)
    return best, results


class PeriodicEvaluation(keras.callbacks.Callback):
    """Every `every` global steps and at `last_step`, runs `evaluate_both_ways`; keeps the
    better weights' metrics in `self.last_metrics`, all of them in `self.last_results`."""

    def __init__(self, evaluate_fn: Callable[[int, str], dict], every: int, last_step: int,
                 skip: Callable[[], bool] = lambda: False,
                 choose: Callable[[int, dict], str] | None = None):
        super().__init__()
        self.evaluate_fn, self.every, self.last_step = evaluate_fn, int(every), int(last_step)
        self.skip = skip  # e.g. a pending preemption: no evaluation in the grace period
        self.choose = choose
        self.last_metrics: dict | None = None
        self.last_results: dict = {}
        self.seconds = 0.0  # total time spent evaluating (kept out of training throughput)

    def on_train_batch_end(self, batch, logs=None):
        step = global_step(self.model)
        if (step % self.every == 0 or step >= self.last_step) and not self.skip():
            start = time.perf_counter()
            best, self.last_results = evaluate_both_ways(self.model, self.evaluate_fn, step,
                                                         self.choose)
            self.last_metrics = self.last_results[best]
            self.seconds += time.perf_counter() - start


def format_duration(seconds: float) -> str:
    """`1h02m`, `4m05s` or `12s` (training time left; evaluations not included)."""
    seconds = int(round(max(seconds, 0.0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class TrainLogger(keras.callbacks.Callback):
    """Every `every` steps: one log line and TensorBoard scalars (losses, lr, images/s).

    Args:
      writer: tf.summary writer for `model_dir/train`.
      every: interval in global steps.
      global_batch_size: images per step, for the throughput.
      total_steps: for the "step i/N" display.
      paused: optional callbacks with a `seconds` total (PeriodicEvaluation) whose time
        is left out of images/s.
    """

    def __init__(self, writer, every: int, global_batch_size: int, total_steps: int,
                 paused=()):
        super().__init__()
        self.paused = tuple(paused)
        self.writer, self.every = writer, int(every)
        self.global_batch_size, self.total_steps = int(global_batch_size), int(total_steps)

    def on_epoch_begin(self, epoch, logs=None):
        # Keras resets its Mean trackers each epoch: restart the interval bookkeeping.
        self._batches = 0
        self._mark = (0, {})
        self._time = self._clock()
        self._mark_step = None

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        step = global_step(self.model)
        if self._mark_step is None:
            self._mark_step = step - 1
        if step % self.every and step < self.total_steps:
            return
        means = {k: float(v) for k, v in (logs or {}).items()}
        interval = self.interval_means(means)
        now = self._clock()
        images_per_second = (step - self._mark_step) * self.global_batch_size / (now - self._time)
        lr = current_learning_rate(self.model.optimizer)
        with self.writer.as_default(step=step):
            for key, value in interval.items():
                tf.summary.scalar(key, value)
            tf.summary.scalar("learning_rate", lr)
            tf.summary.scalar("images_per_second", images_per_second)
        # On disk before the log line: a killed run keeps every step it reported.
        self.writer.flush()
        losses = "  ".join(f"{k} {v:.4f}" for k, v in interval.items())
        seconds_per_step = (now - self._time) / max(step - self._mark_step, 1)
        logging.info("step %d/%d  %s  lr %.3g  %.1f img/s  ETA %s", step, self.total_steps,
                     losses, lr, images_per_second,
                     format_duration(seconds_per_step * (self.total_steps - step)))
        self._mark, self._time, self._mark_step = (self._batches, means), now, step

    def _clock(self) -> float:
        return time.perf_counter() - sum(p.seconds for p in self.paused)

    def interval_means(self, running_means: dict) -> dict:
        """Means over the batches since the last log, from means since the epoch began."""
        count_then, means_then = self._mark
        count_now = self._batches
        return {k: (v * count_now - means_then.get(k, 0.0) * count_then) / (count_now - count_then)
                for k, v in running_means.items()}


def write_eval_summaries(writer, step: int, metrics: dict, class_names, images=None,
                         context_classes=(), predictions=None) -> None:
    """TensorBoard eval scalars (every summary metric, per-context-class AP), images and
    per-class PR curves.

    Args:
      writer: tf.summary writer for `model_dir/eval`.
      step: global step.
      metrics: `multilabel_metrics` output.
      class_names: C names.
      images: optional uint8 [K,H,W,3] drawn validation images.
      context_classes: names whose AP is logged as `AP_context/<name>` (with their mean
        as `mAP_context`), e.g. the synthetic scenes' context-decided classes.
      predictions: optional `Predictor.predict_dataset` output (`labels`, `scores`,
        `label_weights` [N,C]) for the `pr_curve/<class>` summaries.
    """
    with writer.as_default(step=step):
        for key, value in metrics.items():
            if isinstance(value, float) and math.isfinite(value):
                tf.summary.scalar(key, value)
        context_ap = [metrics["per_class_AP"][class_names.index(n)]
                      for n in context_classes if n in class_names]
        for name, ap in zip([n for n in context_classes if n in class_names], context_ap):
            if not np.isnan(ap):
                tf.summary.scalar(f"AP_context/{name}", float(ap))
        if context_ap and not np.all(np.isnan(context_ap)):
            tf.summary.scalar("mAP_context", float(np.nanmean(context_ap)))
        if images is not None and len(images):
            tf.summary.image("patches", images, max_outputs=len(images))
        if predictions is not None:
            summaries.write_pr_curves(
                step, predictions["labels"], predictions["scores"], class_names,
                predictions["label_weights"])
    writer.flush()
