"""The distribution strategy of a run, and where each worker of a cluster writes."""

from __future__ import annotations

import tempfile

import tensorflow as tf


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
