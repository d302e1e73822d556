"""Reader-side checks of records: stored class names vs the label map, max_boxes truncation.

Kept apart from the pipeline so each check is one call there. Both are cheap: a gather
and a string compare per record, and two counter increments per example.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf
from absl import logging


def check_class_texts(classes: tf.Tensor, texts: tf.Tensor, names: tf.Tensor,
                      where: tf.Tensor) -> tf.Tensor:
    """Returns `classes` once each stored class name equals its label map name.

    A record whose `image/object/class/text` disagrees with the label map was written
    with another class order (e.g. a val json with one category fewer): its indices
    point at the wrong classes, so reading it is an error.

    Args:
      classes: int32 [N] class indices, already checked to be in 0..C-1.
      texts: string [N] stored class names; any other length (absent) is not checked.
      names: string [C] the label map.
      where: string scalar naming the record for the message.

    Returns:
      `classes` (int32 [N]) with the check as a control dependency.
    """
    expected = tf.gather(names, classes)
    stored = tf.cond(tf.equal(tf.size(texts), tf.size(classes)), lambda: texts,
                     lambda: expected)
    bad = tf.not_equal(stored, expected)
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(bad)),
        ["class names stored in", where, "differ from the label map: class indices",
         tf.boolean_mask(classes, bad), "stored as", tf.boolean_mask(stored, bad),
         "but the label map names them", tf.boolean_mask(expected, bad),
         "(records written with another label map?)"], summarize=5)
    with tf.control_dependencies([check]):
        return tf.identity(classes)


def class_text_mismatches(classes: Sequence[int], texts: Sequence[str],
                          names: Sequence[str]) -> list[tuple[int, str, str]]:
    """(index, stored name, label map name) of each object whose names differ (numpy side).

    Records without stored names (`texts` of another length) have none."""
    if len(texts) != len(classes):
        return []
    return [(int(c), t, names[c]) for c, t in zip(classes, texts) if names[c] != t]


class TruncationCounter:
    """Counts examples with more target boxes than `max_boxes` slots (the rest are dropped).

    Created outside any `strategy.scope()`; the input pipeline calls `count` per example
    and the trainer calls `log` once at the end of the run.
    """

    def __init__(self):
        self.images = tf.Variable(0, dtype=tf.int64, trainable=False, name="truncated_images")
        self.boxes = tf.Variable(0, dtype=tf.int64, trainable=False, name="truncated_boxes")
        self.seen = tf.Variable(0, dtype=tf.int64, trainable=False, name="examples_seen")

    def count(self, num_targets: tf.Tensor, max_boxes: int) -> tf.Operation:
        """Op adding one example with `num_targets` (int32 scalar) target boxes."""
        excess = tf.cast(tf.maximum(num_targets - max_boxes, 0), tf.int64)
        return tf.group(self.seen.assign_add(1),
                        self.images.assign_add(tf.minimum(excess, 1)),
                        self.boxes.assign_add(excess))

    def message(self, max_boxes: int) -> str | None:
        """The report line, or None when nothing was truncated."""
        images, boxes = int(self.images.numpy()), int(self.boxes.numpy())
        if not images:
            return None
        return (f"max_boxes={max_boxes}: {images} of {int(self.seen.numpy())} examples read had "
                f"more target boxes; {boxes} boxes were dropped as box targets (labels keep "
                "them). Raise --max_boxes (inspect_tfrecord reports the largest count).")

    def log(self, max_boxes: int) -> str | None:
        """Logs `message` as a warning (if any); returns it."""
        text = self.message(max_boxes)
        if text:
            logging.warning("%s", text)
        return text


def label_map_tensor(class_names: Sequence[str] | None) -> tf.Tensor | None:
    """The label map as a string [C] constant (None stays None)."""
    return None if class_names is None else tf.constant(np.array(list(class_names), object))
