"""Graceful stop on SIGTERM / SIGINT: finish the step, checkpoint it, exit with a known code.

Kubernetes, Slurm and cloud preemption send SIGTERM and allow a grace period. While
training, `SignalWatcher` turns the first SIGTERM or SIGINT into a request;
`PreemptionCheckpoint` (a callback) sees it at the end of the current step, saves a
checkpoint at that step (unless one was just saved), flushes the summary writers and
stops `fit`; training then raises `Preempted`, which the CLI turns into exit status
143 (SIGTERM) or 130 (SIGINT), the statuses a shell reports for those signals. A second
signal kills at once. Under multi-worker training the request is all-reduced every step,
so every worker stops and saves at the same step.
"""

from __future__ import annotations

import signal
import threading

import keras
import tensorflow as tf
from absl import logging

from scdnn_tf.utils.cli import GracefulStop

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


class Preempted(GracefulStop):
    """Training stopped on a signal after checkpointing `step`."""

    def __init__(self, step: int, signum: int, checkpoint: str | None):
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after step {step}; checkpoint {checkpoint}; "
                         "rerun the same command to resume")
        self.step, self.signum, self.checkpoint = step, signum, checkpoint
        self.exit_code = EXIT_CODES[signum]


class SignalWatcher:
    """Context manager recording the first SIGTERM/SIGINT instead of dying on it.

    Only installs handlers in the main thread (Python allows no other); elsewhere it
    records nothing and signals keep their default behaviour.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in EXIT_CODES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        return False

    def _handle(self, signum, frame):
        if self.signum is not None:  # second signal: the default action, now
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.signum = signum
        logging.warning("received %s: stopping after the current step (send it again to "
                        "stop at once)", signal.Signals(signum).name)


class PreemptionCheckpoint(keras.callbacks.Callback):
    """Saves and stops at the end of the step during which a signal arrived."""

    def __init__(self, watcher: SignalWatcher, manager: tf.train.CheckpointManager,
                 writers=(), strategy: tf.distribute.Strategy | None = None):
        super().__init__()
        self.watcher, self.manager, self.writers = watcher, manager, tuple(writers)
        self.multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        self.strategy = strategy
        self.stopped: Preempted | None = None

    @property
    def requested(self) -> bool:
        return self.stopped is not None

    def _agreed_signal(self) -> int | None:
        if not self.multi_worker:
            return self.watcher.signum
        # Every worker learns of a signal any worker received, at the same step.
        local = tf.constant(0 if self.watcher.signum is None else 1, tf.int32)
        count = self.strategy.reduce(
            tf.distribute.ReduceOp.SUM,
            self.strategy.experimental_distribute_values_from_function(lambda _: local),
            axis=None)
        if int(count) == 0:
            return None
        return self.watcher.signum or signal.SIGTERM  # a worker that got none: as preempted

    def on_train_batch_end(self, batch, logs=None):
        signum = self._agreed_signal()
        if signum is None or self.stopped is not None:
            return
        step = int(self.model.optimizer.iterations.numpy())
        path = self.manager.latest_checkpoint
        if not (path and path.endswith(f"ckpt-{step}")):
            path = self.manager.save(checkpoint_number=step)
        for writer in self.writers:
            writer.flush()
        self.model.stop_training = True
        self.stopped = Preempted(step, signum, path)
        logging.warning("%s", self.stopped)
