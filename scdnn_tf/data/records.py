"""The TFRecord format: one `tf.train.Example` per image, TF Object Detection API keys.

Writers (the `data_tools` converters) call `build_example` (TensorFlow-free: the
message classes of `example_proto.py`, so a conversion does not pay TensorFlow's
start-up); readers (the input pipeline, `inspect_tfrecord`) call `parse_example`. Boxes are `[ymin, xmin, ymax, xmax]`
normalized to [0, 1]; class labels are contiguous indices 0..C-1 into the label map.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import functools

import numpy as np

from scdnn_tf.data import example_proto as pb

# Feature keys (TF Object Detection API names).
ENCODED = "image/encoded"
FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
FILENAME = "image/filename"
SOURCE_ID = "image/source_id"
SHA256 = "image/key/sha256"
YMIN = "image/object/bbox/ymin"
XMIN = "image/object/bbox/xmin"
YMAX = "image/object/bbox/ymax"
XMAX = "image/object/bbox/xmax"
OBJECT_LABEL = "image/object/class/label"
OBJECT_TEXT = "image/object/class/text"
IS_CROWD = "image/object/is_crowd"
DIFFICULT = "image/object/difficult"
IMAGE_LABEL = "image/class/label"


def _bytes(values: Sequence[bytes]) -> pb.Feature:
    return pb.Feature(bytes_list=pb.BytesList(value=list(values)))


def _ints(values) -> pb.Feature:
    return pb.Feature(int64_list=pb.Int64List(value=[int(v) for v in values]))


def _floats(values) -> pb.Feature:
    return pb.Feature(float_list=pb.FloatList(value=[float(v) for v in values]))


def _to_bytes(s: str | bytes) -> bytes:
    return s if isinstance(s, bytes) else s.encode("utf-8")


def build_example(
    *,
    encoded: bytes,
    image_format: str,
    height: int,
    width: int,
    filename: str,
    source_id: str,
    boxes: np.ndarray | Sequence[Sequence[float]] = (),
    classes: Sequence[int] = (),
    class_texts: Sequence[str] = (),
    is_crowd: Sequence[int] | None = None,
    difficult: Sequence[int] | None = None,
    image_labels: Sequence[int] | None = None,
) -> pb.Example:
    """Builds the Example for one image.

    Args:
      encoded: the original file bytes (JPEG or PNG; converters re-encode only to apply
        an EXIF orientation).
      image_format: "jpeg" or "png".
      height, width: image size in pixels.
      filename, source_id: the file name and the dataset's own image id.
      boxes: [N, 4] normalized `[ymin, xmin, ymax, xmax]`, already clipped to [0, 1].
      classes: [N] contiguous class indices (0..C-1).
      class_texts: [N] class names.
      is_crowd, difficult: [N] 0/1 flags (default all 0).
      image_labels: indices of the image-level labels. Default: the sorted set of
        `classes` (what a detection dataset implies); give it explicitly for
        labels-only datasets.

    Returns:
      An Example message (`example_proto.Example`: the same fields and bytes as a
      `tf.train.Example`; `tf.train.Example.FromString(e.SerializeToString())` reads it).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    n = boxes.shape[0]
    classes = list(classes)
    class_texts = list(class_texts)
    is_crowd = [0] * n if is_crowd is None else list(is_crowd)
    difficult = [0] * n if difficult is None else list(difficult)
    if not (len(classes) == len(class_texts) == len(is_crowd) == len(difficult) == n):
        raise ValueError(
            f"{filename}: per-object lists disagree in length: boxes={n}, classes={len(classes)}, "
            f"class_texts={len(class_texts)}, is_crowd={len(is_crowd)}, difficult={len(difficult)}")
    if image_labels is None:
        image_labels = sorted(set(int(c) for c in classes))
    feature = {
        ENCODED: _bytes([encoded]),
        FORMAT: _bytes([_to_bytes(image_format)]),
        HEIGHT: _ints([height]),
        WIDTH: _ints([width]),
        FILENAME: _bytes([_to_bytes(filename)]),
        SOURCE_ID: _bytes([_to_bytes(str(source_id))]),
        SHA256: _bytes([hashlib.sha256(encoded).hexdigest().encode("ascii")]),
        YMIN: _floats(boxes[:, 0]),
        XMIN: _floats(boxes[:, 1]),
        YMAX: _floats(boxes[:, 2]),
        XMAX: _floats(boxes[:, 3]),
        OBJECT_LABEL: _ints(classes),
        OBJECT_TEXT: _bytes([_to_bytes(t) for t in class_texts]),
        IS_CROWD: _ints(is_crowd),
        DIFFICULT: _ints(difficult),
        IMAGE_LABEL: _ints(image_labels),
    }
    return pb.Example(features=pb.Features(feature=feature))


@functools.cache
def _features(image_required: bool = True) -> dict:
    # Only `image/encoded` may be required: records from other tools (e.g. TF Model
    # Garden's create_coco_tf_record, which has no `image/class/label` or `difficult`)
    # still parse. Without `image_required`, a record lacking it parses with empty bytes
    # (the image check then names the record).
    import tensorflow as tf  # noqa: PLC0415 (writers never need it)
    encoded = ({} if image_required else {"default_value": b""})
    return {
        ENCODED: tf.io.FixedLenFeature([], tf.string, **encoded),
        FORMAT: tf.io.FixedLenFeature([], tf.string, default_value=b""),
        HEIGHT: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        WIDTH: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=b""),
        SOURCE_ID: tf.io.FixedLenFeature([], tf.string, default_value=b""),
        YMIN: tf.io.VarLenFeature(tf.float32),
        XMIN: tf.io.VarLenFeature(tf.float32),
        YMAX: tf.io.VarLenFeature(tf.float32),
        XMAX: tf.io.VarLenFeature(tf.float32),
        OBJECT_LABEL: tf.io.VarLenFeature(tf.int64),
        OBJECT_TEXT: tf.io.VarLenFeature(tf.string),
        IS_CROWD: tf.io.VarLenFeature(tf.int64),
        DIFFICULT: tf.io.VarLenFeature(tf.int64),
        IMAGE_LABEL: tf.io.VarLenFeature(tf.int64),
    }


def parse_example(serialized, context=None) -> dict:
    """Parses one serialized Example into dense tensors.

    Args:
      serialized: scalar string, the record.
      context: optional scalar string appended to the record's name in messages (e.g.
        " at index 7 of shard /data/train-00000-of-00008.tfrecord"). When given, the
        per-object lists are checked to agree in length (an error naming the record) and
        a missing `image/encoded` parses as empty bytes (for the image check to name);
        without it, a missing `image/encoded` is a parse error.

    Returns a dict with: `encoded` (string scalar, empty if absent), `format`, `filename`,
    `source_id`, `height`, `width` (int32 scalars, 0 if absent), `boxes` [N, 4] float32
    normalized yxyx, `classes` [N] int32, `class_texts` [N] string, `is_crowd` [N] int32,
    `difficult` [N] int32 (zeros if absent), `image_labels` [K] int32 (empty if absent;
    the pipeline then derives labels from `classes`), and `where`, the record named for
    messages ("record NAME (source_id ID)" + `context`).
    """
    import tensorflow as tf  # noqa: PLC0415

    f = tf.io.parse_single_example(serialized, _features(image_required=context is None))
    dense = {k: tf.sparse.to_dense(v) for k, v in f.items() if isinstance(v, tf.SparseTensor)}
    where = tf.strings.join(["record ", f[FILENAME], " (source_id ", f[SOURCE_ID], ")",
                             "" if context is None else context])
    coords = [dense[k] for k in (YMIN, XMIN, YMAX, XMAX)]
    if context is not None:
        sizes = tf.stack([tf.size(t) for t in (*coords, dense[OBJECT_LABEL])])
        check = tf.debugging.Assert(
            tf.reduce_all(tf.equal(sizes, sizes[0])),
            ["per-object lists of", where, "disagree in length (ymin, xmin, ymax, xmax, "
             "class/label):", sizes], summarize=5)
        with tf.control_dependencies([check]):
            coords = [tf.identity(t) for t in coords]
    boxes = tf.stack(coords, axis=-1)
    n = tf.shape(boxes)[0]
    classes = tf.cast(dense[OBJECT_LABEL], tf.int32)

    def flag(key):
        v = tf.cast(dense[key], tf.int32)
        return tf.cond(tf.shape(v)[0] == n, lambda: v, lambda: tf.zeros([n], tf.int32))

    return {
        "encoded": f[ENCODED],
        "format": f[FORMAT],
        "filename": f[FILENAME],
        "source_id": f[SOURCE_ID],
        "height": tf.cast(f[HEIGHT], tf.int32),
        "width": tf.cast(f[WIDTH], tf.int32),
        "boxes": boxes,
        "classes": classes,
        "class_texts": dense[OBJECT_TEXT],
        "is_crowd": flag(IS_CROWD),
        "difficult": flag(DIFFICULT),
        "image_labels": tf.cast(dense[IMAGE_LABEL], tf.int32),
        "where": where,
    }
