"""Reader-side checks of records: stored class names vs the label map, max_boxes truncation,
and the first records of each shard checked before any model is built.

Kept apart from the pipeline so each check is one call there. All are cheap: a gather
and a string compare per record, two counter increments per example, and a few records
per shard read once at the start.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from scdnn_tf.data import records


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


def _record_name(example, index: int, path: str) -> str:
    feature = example.features.feature

    def text(key):
        values = feature[key].bytes_list.value if key in feature else []
        return values[0].decode("utf-8", "replace") if values else ""

    return (f"record {text(records.FILENAME)} (source_id {text(records.SOURCE_ID)}) at index "
            f"{index} of shard {path}")


def _check_first_record(example, where: str, num_classes: int, class_names, class_id_map):
    feature = example.features.feature

    def values(key, kind):
        return list(getattr(feature[key], kind).value) if key in feature else []

    lengths = [len(values(k, "float_list")) for k in (records.YMIN, records.XMIN,
                                                      records.YMAX, records.XMAX)]
    classes = values(records.OBJECT_LABEL, "int64_list")
    if len(set(lengths + [len(classes)])) > 1:
        raise ValueError(f"per-object lists of {where} disagree in length (ymin, xmin, ymax, "
                         f"xmax, class/label): {lengths + [len(classes)]}")
    for ids in (classes, values(records.IMAGE_LABEL, "int64_list")):
        if class_id_map is not None:
            missing = sorted({c for c in ids if c not in class_id_map})
            if missing:
                raise ValueError(f"class ids not in class_id_map: {missing} in {where}")
            ids = [class_id_map[c] for c in ids]
        bad = sorted({c for c in ids if not 0 <= c < num_classes})
        if bad:
            raise ValueError(f"class index outside 0..{num_classes - 1} (num_classes="
                             f"{num_classes}): {bad} in {where} (records written for another "
                             "label map?)")
    if class_names is not None:
        if class_id_map is not None:
            classes = [class_id_map[c] for c in classes]
        texts = [t.decode("utf-8", "replace") for t in values(records.OBJECT_TEXT, "bytes_list")]
        bad = list(dict.fromkeys(class_text_mismatches(classes, texts, list(class_names))))
        if bad:
            raise ValueError(f"class names stored in {where} differ from the label map: " + ", ".join(
                f"class {c} stored as {t!r} but the label map names it {n!r}" for c, t, n in bad[:5])
                + " (records written with another label map?)")


def check_first_records(files: Sequence[str], num_classes: int,
                        class_names: Sequence[str] | None = None,
                        class_id_map: dict | None = None, per_shard: int = 4,
                        max_shards: int = 64) -> int:
    """Checks the first records of each shard before any training or evaluation starts.

    The same checks the input pipeline makes on every record (class ids in the
    class-id map, class indices in 0..C-1, stored class names equal to the label map's,
    per-object lists of one length), made here on the first `per_shard` records of the
    first `max_shards` shards, so a label map or a dataset of the wrong kind fails in
    seconds with a clear message instead of mid-run. Damaged shards are left to the
    pipeline's own checks (they name the shard too).

    Returns:
      The number of records checked.

    Raises:
      ValueError: naming the problem, the record and the shard.
    """
    from tensorflow.core.example import example_pb2  # noqa: PLC0415
    from google.protobuf.message import DecodeError  # noqa: PLC0415

    checked = 0
    for path in list(files)[:max_shards]:
        try:
            serialized = [r.numpy() for r in tf.data.TFRecordDataset(path).take(per_shard)]
        except tf.errors.OpError:
            continue  # damaged: the pipeline's scan reports it
        for index, data in enumerate(serialized):
            try:
                example = example_pb2.Example.FromString(data)
            except DecodeError as e:
                raise ValueError(f"record at index {index} of shard {path} is not a "
                                 f"tf.train.Example ({e})") from None
            _check_first_record(example, _record_name(example, index, path), num_classes,
                                class_names, class_id_map)
            checked += 1
    return checked


def label_map_tensor(class_names: Sequence[str] | None) -> tf.Tensor | None:
    """The label map as a string [C] constant (None stays None)."""
    return None if class_names is None else tf.constant(np.array(list(class_names), object))
