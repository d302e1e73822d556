"""The training decode of the original pipeline (commit 9aca18e), for the 'before' contender.

Before: the whole photo was decoded (`decode_image`), flipped, cropped, cast to float32
(and colour-jittered at crop size), then resized with antialiasing. Copied here from that
version so both pipelines can be timed in one process; everything else in `make_dataset`
(reading, shuffling, labels, batching) is the same code for both. With the same seed this
copy gives the original version's batches exactly (checked against a checkout of 9aca18e).
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

from scdnn_tf.data import augment, preprocess


def original_decode_and_augment(encoded, boxes, seed, image_size, scale_range=(0.5, 1.0),
                                crop=True, jitter=False, context=None):
    """The original decode + `augment` + resize, with the signature of `decode_and_augment`."""
    image = preprocess.decode_image(encoded, context=context)
    flip_seed, crop_seed, color_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    image, boxes = augment.random_flip(image, boxes, flip_seed)
    shape = tf.shape(image)
    full = tf.stack([0, 0, shape[0], shape[1]])
    window = tf.cond(tf.convert_to_tensor(crop),
                     lambda: augment.sample_crop_window(shape[0], shape[1], scale_range,
                                                        crop_seed),
                     lambda: full)
    image, boxes, keep = augment.crop_image_and_boxes(image, boxes, window)
    image = augment.color_jitter(image, color_seed) if jitter else tf.cast(image, tf.float32)
    resized = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    return tf.clip_by_value(resized, 0.0, 255.0), boxes, keep


@contextlib.contextmanager
def original_training_decode():
    """While active, datasets built by `make_dataset` use the original training decode."""
    current = augment.decode_and_augment
    augment.decode_and_augment = original_decode_and_augment
    try:
        yield
    finally:
        augment.decode_and_augment = current
