"""The SCDNN train / eval steps are traced once, whatever the batches' contents.

A retrace per step (e.g. from Python values or shape-varying tensors reaching the step)
would make every step pay graph construction and optimization. The batches below keep
their shapes but vary what could plausibly leak into the trace: pixel values, the number
of valid boxes (which sets the dynamic patch and gt counts inside the step) and labels.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from scdnn_tf.modeling.scdnn import SCDNN

SIZE, BATCH, CLASSES, MAX_BOXES = 64, 2, 3, 6


def _dataset(num_images=8, seed=0):
    rng = np.random.default_rng(seed)
    boxes = np.zeros((num_images, MAX_BOXES, 4), np.float32)
    classes = np.full((num_images, MAX_BOXES), -1, np.int32)
    for i in range(num_images):
        n = i % (MAX_BOXES + 1)  # 0..6 valid boxes: the dynamic counts change every batch
        yx = rng.uniform(0.0, 0.5, (n, 2))
        boxes[i, :n] = np.concatenate([yx, yx + rng.uniform(0.1, 0.5, (n, 2))], -1)
        classes[i, :n] = rng.integers(0, CLASSES, n)
    labels = np.zeros((num_images, CLASSES), np.float32)
    for i in range(num_images):
        labels[i, classes[i][classes[i] >= 0]] = 1.0
    data = {"image": rng.uniform(0, 255, (num_images, SIZE, SIZE, 3)).astype(np.float32),
            "boxes": boxes, "box_classes": classes, "labels": labels,
            "label_weights": np.ones_like(labels)}
    return tf.data.Dataset.from_tensor_slices(data).batch(BATCH, drop_remainder=True)


class CountingSCDNN(SCDNN):
    """SCDNN counting how often its train / test step bodies are traced (Python side effect)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.traces = {"train": 0, "test": 0}

    def train_step(self, data):
        self.traces["train"] += 1  # runs once per trace, never per graph execution
        return super().train_step(data)

    def test_step(self, data):
        self.traces["test"] += 1
        return super().test_step(data)


def _model():
    keras.utils.set_random_seed(0)
    model = CountingSCDNN(CLASSES, backbone="small", image_size=SIZE, fpn_channels=16,
                          fc_units=32, anchor_sizes=(16, 32, 64, 128), num_patches=4,
                          num_train_patches=8, pre_nms_topk=50)
    model(tf.zeros([1, SIZE, SIZE, 3]))  # variables, as `core.builders.build_model` does
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    # As `core.restore.build_and_restore` does: slots created before the first step. Otherwise
    # tf.function traces the first step twice (variables created while tracing), once only.
    model.optimizer.build(model.trainable_variables)
    return model


@pytest.mark.slow
def test_fit_traces_train_step_once_and_evaluate_once():
    model = _model()
    ds = _dataset()
    history = model.fit(ds.repeat(), steps_per_epoch=3, epochs=2, verbose=0)
    assert model.traces["train"] == 1, model.traces
    assert np.all(np.isfinite(history.history["loss"]))
    # The optimizer really stepped 6 times through that single graph.
    assert int(model.optimizer.iterations.numpy()) == 6
    model.evaluate(ds, verbose=0)
    model.evaluate(_dataset(seed=1), verbose=0)  # new values, same shapes
    assert model.traces["test"] == 1, model.traces
    assert model.traces["train"] == 1, model.traces


def test_inference_at_fixed_batch_shape_does_not_retrace():
    model = _model()
    predict = tf.function(lambda images: model(images, training=False)["logits"])
    rng = np.random.default_rng(0)
    for _ in range(3):
        predict(tf.constant(rng.uniform(0, 255, (BATCH, SIZE, SIZE, 3)), tf.float32))
    assert predict.experimental_get_tracing_count() == 1
    # A different batch size is a new input signature: the counter does see retraces.
    predict(tf.zeros((BATCH + 1, SIZE, SIZE, 3)))
    assert predict.experimental_get_tracing_count() == 2
