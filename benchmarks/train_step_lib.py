"""Helpers of benchmarks/train_step.py: models, synthetic batches, timers, FLOP counts.

Kept apart from the CLI so that tests and other benchmarks can reuse them.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from scdnn_tf.modeling.baseline import BaselineClassifier
from scdnn_tf.modeling.scdnn import SCDNN

# configs/demo.flags for the `small` backbone; SCDNN's (paper) defaults otherwise.
DEMO_SCDNN = dict(fpn_channels=64, fc_units=256, anchor_sizes=(16, 32, 64, 128),
                  num_patches=16, num_train_patches=32)
# The lighter option (not the default), as configs/coco_light.flags derives from
# coco.flags: no stride-4 pyramid level, half the pyramid channels, the three largest
# anchor sizes (one per level P3..P5).
LIGHT_SCDNN = dict(min_level=3)
MAX_BOXES = 100  # the input pipeline's default padding


def parse_config(text: str) -> tuple[str, int, int]:
    """'small@128x16' -> ('small', 128, 16)."""
    try:
        backbone, rest = text.split("@")
        size, batch = rest.split("x")
        return backbone, int(size), int(batch)
    except ValueError as e:
        raise ValueError(f"--configs entry {text!r} must look like small@128x16") from e


def synthetic_batch(batch_size: int, image_size: int, num_classes: int, max_boxes=MAX_BOXES,
                    seed: int = 0) -> dict:
    """A fixed pipeline-shaped batch: 1..8 valid boxes (10-40% of the side) per image."""
    rng = np.random.default_rng(seed)
    yx = rng.uniform(0.0, 0.6, (batch_size, max_boxes, 2))
    hw = rng.uniform(0.1, 0.4, (batch_size, max_boxes, 2))
    boxes = np.concatenate([yx, yx + hw], -1).astype(np.float32)
    classes = np.full((batch_size, max_boxes), -1, np.int32)
    labels = np.zeros((batch_size, num_classes), np.float32)
    for b in range(batch_size):
        n = int(rng.integers(1, 9))
        classes[b, :n] = rng.integers(0, num_classes, n)
        labels[b, classes[b, :n]] = 1.0
    boxes[classes < 0] = 0.0
    return {"image": tf.constant(rng.uniform(0, 255, (batch_size, image_size, image_size, 3)),
                                 tf.float32),
            "boxes": tf.constant(boxes), "box_classes": tf.constant(classes),
            "labels": tf.constant(labels), "label_weights": tf.ones_like(labels)}


def set_policy(mixed: bool) -> None:
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")


def _compile(model, size, xla, optimizer=None):
    model(tf.zeros([1, size, size, 3]), training=False)  # build the variables
    model.compile(optimizer=optimizer or keras.optimizers.AdamW(1e-3), jit_compile=xla)
    return model


def build_scdnn(backbone: str, size: int, num_classes: int, xla: bool = False,
                light: bool = False, optimizer=None) -> SCDNN:
    """SCDNN (demo settings for `small`); XLA needs the gather crop backend.

    optimizer: a Keras optimizer (default AdamW).
    light: P3..P5 only (`min_level=3`), half the channels, the three largest anchors
    (demo: 32 channels, anchors 32/64/128; paper settings: 128, 64/128/256).
    """
    kwargs = dict(DEMO_SCDNN) if backbone == "small" else {}
    if light:
        sizes = kwargs.get("anchor_sizes", (32, 64, 128, 256))
        kwargs.update(LIGHT_SCDNN, anchor_sizes=sizes[1:],
                      fpn_channels=kwargs.get("fpn_channels", 256) // 2)
    if xla:  # passed only when needed, so this also runs against older SCDNN versions
        kwargs["crop_backend"] = "gather"
    model = SCDNN(num_classes, backbone=backbone, image_size=size, **kwargs)
    return _compile(model, size, xla, optimizer)


def build_baseline(backbone: str, size: int, num_classes: int, xla: bool = False):
    return _compile(BaselineClassifier(num_classes, backbone=backbone, image_size=size), size, xla)


def train_stepper(model, batch):
    """A callable running one `fit`-style train step (Keras' train_function) on `batch`."""
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    model.make_train_function()
    return lambda: model.train_function(iterator)


def inference_stepper(model, images):
    """A callable running the model's inference forward pass (logits) on `images`."""
    forward = tf.function(lambda x: {"loss": model(x, training=False)["logits"]})
    return lambda: forward(images)


def time_steps(stepper, steps: int) -> float:
    """Seconds per call over `steps` calls of `stepper` (returning a dict with "loss"),
    after one untimed call."""
    stepper()["loss"].numpy()
    start = time.perf_counter()
    for _ in range(steps):
        logs = stepper()
    logs["loss"].numpy()  # waits for the last call
    return (time.perf_counter() - start) / steps


def matmul_flops_per_s(n: int = 2048, reps: int = 3) -> float:
    """float32 FLOP/s of an n^3 matmul (2 n^3 FLOPs), median of `reps`."""
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    f = tf.function(lambda: tf.matmul(a, b))
    f().numpy()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        f().numpy()
        times.append(time.perf_counter() - start)
    return 2.0 * n**3 / statistics.median(times)


def _profiled_flops(fn, *args) -> float:
    graph = tf.function(fn).get_concrete_function(*args).graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return float(tf.compat.v1.profiler.profile(graph, options=opts).total_float_ops)


def valid_patches(model, batch, training=True) -> int:
    """Number of valid patches SCDNN keeps for `batch` (the label predictors' rows)."""
    return int(tf.reduce_sum(tf.cast(model(batch, training=training)["patch_valid"], tf.int32)))


def _predictor_flops(model, batch, training=True) -> float:
    """FLOPs of SCDNN's label predictors on the batch's valid patches (dynamic count)."""
    patches = float(valid_patches(model, batch, training))
    flat = model.crop_size**2 * model.fpn_channels
    per_patch = 2.0 * (flat * model.fc_units + model.fc_units**2 +
                       model.fc_units * model.num_classes)
    branches = 2 if model.branches == "both" else 1
    return branches * patches * per_patch


def forward_flops(model, batch) -> float:
    """Forward FLOPs of one training-mode call (multiply-add = 2) on `batch`.

    Static-shape ops are counted by the TF profiler on the traced graph; SCDNN's label
    predictors run on a dynamic number of valid patches, invisible to the profiler, and
    are added analytically for this batch.
    """
    flops = _profiled_flops(lambda x: model(x, training=True), batch)
    if isinstance(model, SCDNN) and getattr(model, "crop_backend", None) == "tf_image":
        flops += _predictor_flops(model, batch)
    return flops


def inference_flops(model, images) -> float:
    """Forward FLOPs of one inference-mode call on `images`, counted as forward_flops."""
    flops = _profiled_flops(lambda x: model(x, training=False), images)
    if isinstance(model, SCDNN) and getattr(model, "crop_backend", None) == "tf_image":
        flops += _predictor_flops(model, images, training=False)
    return flops


def _images_per_s(dataset, batches: int, repeats: int) -> float:
    iterator = iter(dataset)
    next(iterator)  # fill buffers
    rates = []
    for _ in range(repeats):
        start, count = time.perf_counter(), 0
        for _ in range(batches):
            count += int(next(iterator)["image"].shape[0])
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def pipeline_images_per_s(pattern, size, batch_size, repeats, batches=20) -> float:
    """`make_dataset(training=True)` images/s on existing records (repeated stream)."""
    from scdnn_tf.data.pipeline import make_dataset  # noqa: PLC0415
    ds = make_dataset(pattern, 80, size, batch_size, training=True, repeat=True)
    return _images_per_s(ds, batches, repeats)


def coco_pipeline_images_per_s(coco_dir, size, batch_size, repeats, batches=20) -> float:
    """Same on the real COCO photos, converted to a temporary folder first."""
    from benchmarks.input_pipeline import convert_subsets  # noqa: PLC0415 (the converter)
    with tempfile.TemporaryDirectory() as tmp:
        convert_subsets(coco_dir, tmp)
        return pipeline_images_per_s(os.path.join(tmp, "*.tfrecord"), size, batch_size,
                                     repeats, batches)
