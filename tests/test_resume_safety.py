"""A resumed run never silently starts over: damaged checkpoints, locks, changed flags."""

import glob
import hashlib
import os
import socket
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf

from scdnn_tf.core import checkpoints

from scdnn_tf.engine import run_lock
from scdnn_tf.data.pipeline import make_dataset
from scdnn_tf.engine.trainer import run_training

from helpers import tiny_config, write_tiny_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


class Probe(keras.callbacks.Callback):
    """Records the step and the name-keyed state right after the restore."""

    def on_train_begin(self, logs=None):
        self.step = int(self.model.optimizer.iterations.numpy())
        self.model_state = {k: v.numpy() for k, v in checkpoints.model_variables(self.model).items()}
        self.optimizer_state = {k: v.numpy() for k, v in checkpoints.optimizer_variables(
            self.model.optimizer, self.model).items()}


def _digest(prefix):
    return hashlib.sha256(b"".join(open(p, "rb").read() for p in sorted(glob.glob(prefix + ".*"))
                                   )).hexdigest()


def _values(prefix, group):
    reader = tf.train.load_checkpoint(prefix)
    head = f"{group}/"
    return {name[len(head):-len("/.ATTRIBUTES/VARIABLE_VALUE")].replace("..", "."):
            reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith(head)}


@pytest.mark.slow
def test_partial_copy_with_damaged_newest_resumes_from_the_intact_one(data_dir, tmp_path):
    config = tiny_config(data_dir, tmp_path, train_steps=4, checkpoint_every=2, eval_pattern="")
    run_training(config)
    kept = _digest(str(tmp_path / "ckpt-2"))
    os.remove(tmp_path / "checkpoint")  # a partial copy of the run ...
    data = tmp_path / "ckpt-4.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:100])  # ... whose newest data file was cut short
    probe = Probe()
    run_training(tiny_config(data_dir, tmp_path, train_steps=6, checkpoint_every=2,
                             eval_pattern=""), extra_callbacks=[probe])
    assert probe.step == 2  # not 0
    assert _digest(str(tmp_path / "ckpt-2")) == kept  # nothing older rewritten
    assert os.path.exists(tmp_path / "damaged" / "ckpt-4.data-00000-of-00001")
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-6")


@pytest.mark.slow
def test_changed_freeze_ema_and_precision_restore_by_name(data_dir, tmp_path):
    first = tiny_config(data_dir, tmp_path, train_steps=2, checkpoint_every=2, eval_pattern="",
                        freeze_stages=2, mixed_precision=True, momentum=0.9)
    run_training(first)
    saved_model = _values(str(tmp_path / "ckpt-2"), "variables")
    saved_slots = _values(str(tmp_path / "ckpt-2"), "optimizer")
    probe = Probe()
    run_training(tiny_config(data_dir, tmp_path, train_steps=3, checkpoint_every=2,
                             eval_pattern="", freeze_stages=1, mixed_precision=False,
                             ema_decay=0.5, momentum=0.9), extra_callbacks=[probe])
    keras.mixed_precision.set_global_policy("float32")
    assert probe.step == 2
    assert probe.model_state.keys() == saved_model.keys()
    for key, value in saved_model.items():
        np.testing.assert_array_equal(probe.model_state[key], value, err_msg=key)
    momentum = {k for k in probe.optimizer_state if k.endswith(":momentum")}
    carried, fresh = momentum & saved_slots.keys(), momentum - saved_slots.keys()
    assert carried and fresh  # stage 1 became trainable: its slots are new
    for key in carried:
        np.testing.assert_array_equal(probe.optimizer_state[key], saved_slots[key], err_msg=key)
        assert np.any(saved_slots[key] != 0), key  # a real carried value, not zeros
    for key in fresh:
        np.testing.assert_array_equal(probe.optimizer_state[key], 0.0, err_msg=key)
    for key, value in probe.optimizer_state.items():  # EMA, new: starts at the weights
        if key.endswith(":average"):
            np.testing.assert_array_equal(value, saved_model[key.rsplit(":", 1)[0]], err_msg=key)


@pytest.mark.slow
def test_changed_optimizer_is_refused_naming_both_values(data_dir, tmp_path):
    run_training(tiny_config(data_dir, tmp_path, train_steps=1, checkpoint_every=1,
                             eval_pattern=""))
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(ValueError, match=r"--optimizer='adamw' differs from 'sgd'"):
        run_training(tiny_config(data_dir, tmp_path, train_steps=2, eval_pattern="",
                                 optimizer="adamw"))
    assert (tmp_path / "config.json").read_text() == before


def test_second_run_on_a_locked_model_dir_stops_naming_the_holder(data_dir, tmp_path):
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / run_lock.LOCK_NAME).write_text(f"{socket.gethostname()} {holder.pid}\n")
        with pytest.raises(run_lock.LockedError, match=f"process {holder.pid}"):
            run_training(tiny_config(data_dir, tmp_path, eval_pattern=""))
        assert not (tmp_path / "config.json").exists()  # nothing written
    finally:
        holder.kill()
        holder.wait()


def test_shards_without_records_are_refused_naming_the_pattern(data_dir, tmp_path):
    empty = tmp_path / "train-00000-of-00001.tfrecord"
    with tf.io.TFRecordWriter(str(empty)):
        pass
    pattern = str(tmp_path / "train-*")
    with pytest.raises(ValueError, match=r"train-\*'.*1 TFRecord shard.*hold 0 records"):
        make_dataset(pattern, 3, 64, 2, training=True)
    with pytest.raises(ValueError, match="hold 0 records"):
        make_dataset(pattern, 3, 64, 2, training=False)
    with pytest.raises(ValueError, match="hold 0 records"):
        run_training(tiny_config(data_dir, tmp_path / "run", train_pattern=pattern,
                                 eval_pattern=""))
