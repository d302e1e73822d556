"""Callbacks keyed on the global step: NaN stop, checkpoints, logger interval means, EMA swap."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from scdnn_tf.engine import callbacks as cb
from scdnn_tf.evaluation.metrics import multilabel_metrics


class _Tiny(keras.Model):
    """One dense layer; train_step returns a running-mean `loss` like the real models."""

    def __init__(self):
        super().__init__(name="tiny")
        self.dense = keras.layers.Dense(1, kernel_initializer="ones")
        self.tracker = keras.metrics.Mean(name="loss")

    def call(self, x):
        return self.dense(x)

    @property
    def metrics(self):
        return [self.tracker]

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            per_example = tf.reduce_mean(tf.square(self(x) - y), axis=-1)
            loss = tf.nn.compute_average_loss(per_example)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        self.tracker.update_state(per_example)
        return {"loss": self.tracker.result()}


def _model(lr=0.01, **optimizer_kwargs):
    model = _Tiny()
    model.compile(keras.optimizers.SGD(lr, **optimizer_kwargs))
    model(np.zeros((1, 2), np.float32))
    return model


def _data(n=8, nan_at=None):
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2) / 10
    y = np.ones((n, 1), np.float32)
    if nan_at is not None:
        x[nan_at] = np.nan
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(1)


def test_non_finite_loss_raises_naming_step_and_loss():
    model = _model()
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 3: loss=nan"):
        model.fit(_data(nan_at=2), epochs=1, verbose=0, callbacks=[cb.NonFiniteLossStop()])
    assert cb.global_step(model) == 3


def test_finite_training_is_not_stopped():
    model = _model()
    model.fit(_data(), epochs=1, verbose=0, callbacks=[cb.NonFiniteLossStop()])
    assert cb.global_step(model) == 8


def test_step_checkpoint_saves_every_n_and_last(tmp_path):
    model = _model()
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    manager = tf.train.CheckpointManager(ckpt, str(tmp_path), max_to_keep=None)
    model.fit(_data(n=7), epochs=1, verbose=0,
              callbacks=[cb.StepCheckpoint(manager, every=3, last_step=7)])
    saved = sorted(int(p.split("-")[-1].split(".")[0]) for p in glob.glob(str(tmp_path / "ckpt-*.index")))
    assert saved == [3, 6, 7]
    reader = tf.train.load_checkpoint(str(tmp_path / "ckpt-3"))
    assert reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 3


def test_stop_at_step_ends_fit_mid_epoch():
    model = _model()
    model.fit(_data().repeat(), epochs=3, steps_per_epoch=4, verbose=0,
              callbacks=[cb.StopAtStep(6)])
    assert cb.global_step(model) == 6


def test_logger_writes_interval_means_lr_and_throughput(tmp_path):
    model = _model(lr=0.0)  # constant weights: the per-step loss is known in advance
    writer = tf.summary.create_file_writer(str(tmp_path))
    model.fit(_data(n=6), epochs=1, verbose=0,
              callbacks=[cb.TrainLogger(writer, every=2, global_batch_size=1, total_steps=6)])
    writer.flush()
    x = np.arange(12, dtype=np.float32).reshape(6, 2) / 10
    per_step = (x.sum(axis=1) - 1) ** 2  # kernel ones, bias 0, target 1
    values = {}
    for path in glob.glob(os.path.join(tmp_path, "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                values.setdefault(v.tag, {})[event.step] = float(tf.make_ndarray(v.tensor))
    assert sorted(values["loss"]) == [2, 4, 6]
    for step in (2, 4, 6):
        assert values["loss"][step] == pytest.approx(per_step[step - 2:step].mean(), rel=1e-5)
        assert values["learning_rate"][step] == 0.0
        assert values["images_per_second"][step] > 0


def test_ema_weights_swaps_in_averages_and_restores():
    model = _model(lr=0.1, use_ema=True, ema_momentum=0.5)
    model.fit(_data(), epochs=1, verbose=0, callbacks=[])
    # fit copies the EMA into the model at its end; move the live weights away from it.
    average = [a.numpy() for a in model.optimizer._model_variables_moving_average]
    model.dense.kernel.assign(model.dense.kernel + 1.0)
    live = [v.numpy() for v in model.trainable_variables]
    with cb.ema_weights(model):
        inside = [v.numpy() for v in model.trainable_variables]
    for a, b in zip(inside, average):
        np.testing.assert_allclose(a, b)
    for a, b in zip(model.trainable_variables, live):
        np.testing.assert_allclose(a.numpy(), b)


def test_ema_weights_without_ema_is_a_no_op():
    model = _model()
    before = [v.numpy() for v in model.trainable_variables]
    with cb.ema_weights(model):
        for a, b in zip(model.trainable_variables, before):
            np.testing.assert_array_equal(a.numpy(), b)


def test_eval_summaries_hold_metrics_context_ap_and_images(tmp_path):
    rng = np.random.RandomState(0)
    y = (rng.rand(20, 3) > 0.5).astype(np.float32)
    y[0] = 1
    metrics = multilabel_metrics(y, rng.rand(20, 3))
    writer = tf.summary.create_file_writer(str(tmp_path))
    images = np.zeros((2, 8, 8, 3), np.uint8)
    cb.write_eval_summaries(writer, 7, metrics, ["sun", "ball", "tree"], images,
                            context_classes=("sun", "ball", "car"))
    tags = {}
    for path in glob.glob(os.path.join(tmp_path, "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                tags[v.tag] = (event.step, tf.make_ndarray(v.tensor))
    for tag in ("mAP", "CF1", "OF1", "CP", "OR", "OF1_top3", "AP_context/sun", "AP_context/ball",
                "mAP_context", "patches"):
        assert tags[tag][0] == 7, tag
    assert float(tags["AP_context/ball"][1]) == pytest.approx(metrics["per_class_AP"][1])
    assert float(tags["mAP_context"][1]) == pytest.approx(np.mean(metrics["per_class_AP"][:2]))
    assert len(tags["patches"][1]) == 2 + 2  # width, height, then the two encoded images
    assert "AP_context/car" not in tags


def test_format_duration():
    assert [cb.format_duration(s) for s in (0, 12.4, 245, 3720, -3)] == [
        "0s", "12s", "4m05s", "1h02m", "0s"]
