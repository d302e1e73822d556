r"""Inspect converted TFRecords: class counts, objects-per-image histogram, drawn samples.

    python -m data_tools.inspect_tfrecord 'out/coco_train-*.tfrecord' \
        --draw=/tmp/check --num=8 [--label_map=out/label_map.txt]

Prints the number of records, objects per class and a histogram of objects per image,
and with `--draw` writes the first `--num` images with their boxes and class names
drawn (normal boxes green, crowd orange, difficult yellow) so a user can
check a conversion by eye. Without `--label_map`, `label_map.txt` beside the shards is
used if present, else the class texts stored in the records.
"""

from __future__ import annotations

from scdnn_tf.utils import tf_start  # noqa: F401,I001  first: TensorFlow's start-up notes filtered
from scdnn_tf.utils import cli  # noqa: E402

import collections
import io
import os

import numpy as np
import tensorflow as tf
from absl import app, flags
from PIL import Image, ImageDraw

from scdnn_tf.data import label_map as label_map_lib
from scdnn_tf.utils import files as side_files
from scdnn_tf.data import input_errors, record_checks, records, shards

FLAGS = flags.FLAGS

_COLORS = {"normal": (0, 255, 0), "crowd": (255, 140, 0), "difficult": (255, 255, 0)}


def to_rgb(encoded: bytes) -> Image.Image:
    """Decodes JPEG/PNG bytes to an 8-bit RGB Pillow image (16-bit scaled, CMYK converted)."""
    im = Image.open(io.BytesIO(encoded))
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, np.float64)
        im = Image.fromarray(np.clip(arr / 257.0, 0, 255).astype(np.uint8))
    return im.convert("RGB")


def draw_boxes(image: Image.Image, boxes: np.ndarray, names: list[str],
               kinds: list[str]) -> Image.Image:
    """Draws normalized yxyx `boxes` [N, 4] with `names` on a copy of `image`."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    for (y0, x0, y1, x1), name, kind in zip(boxes, names, kinds):
        color = _COLORS[kind]
        rect = [x0 * w, y0 * h, x1 * w, y1 * h]
        draw.rectangle(rect, outline=color, width=2)
        left, top = rect[0], max(rect[1] - 12, 0)
        text_box = draw.textbbox((left, top), name)
        draw.rectangle(text_box, fill=color)
        draw.text((left, top), name, fill=(0, 0, 0))
    return out


def iter_examples(pattern: str):
    """Yields `records.parse_example` dicts (numpy values) of every matching record, in
    file-name order then record order. A damaged shard is a ValueError naming it."""
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no files match {pattern}")
    for path in files:
        count, problem = shards.scan_tfrecord(path)
        if problem is not None:
            raise ValueError(f"corrupt TFRecord shard {path}: {problem} after {count} records")
        try:
            for index, serialized in enumerate(tf.data.TFRecordDataset(path)):
                yield _parse(serialized, index, path)
        except tf.errors.DataLossError as e:
            raise ValueError(f"corrupt TFRecord shard {path}: {e.message}") from None


def _parse(serialized, index: int, path: str) -> dict:
    """`records.parse_example` as numpy; a record that cannot be read is a ValueError
    naming the shard and the index."""
    try:
        parsed = records.parse_example(serialized, f" at index {index} of shard {path}")
        return {k: v.numpy() for k, v in parsed.items()}
    except tf.errors.InvalidArgumentError as e:
        detail = input_errors.assertion_text(e.message) or input_errors.op_error_text(e.message)
    except UnicodeDecodeError:  # TF's message quoted the record's undecodable bytes
        detail = "not a tf.train.Example"
    raise ValueError(f"record at index {index} of shard {path} cannot be read: {detail}")


def _class_names(files: list[str], label_map: str | None) -> list[str] | None:
    if label_map:
        with side_files.flag_errors("label_map", label_map):
            return label_map_lib.read_label_map(label_map)
    beside = os.path.join(os.path.dirname(files[0]), "label_map.txt")
    return label_map_lib.read_label_map(beside) if os.path.exists(beside) else None


def _check_against_label_map(ex: dict, classes: list[int], texts: list[str],
                             names: list[str]) -> None:
    """ValueError naming the record if a class is outside `names` or stored by another name."""
    record = f"record {ex['filename'].decode()} (source_id {ex['source_id'].decode()})"
    for c in classes:
        if not 0 <= c < len(names):
            raise ValueError(f"{record}: class {c} is outside the label map "
                             f"({len(names)} classes)")
    bad = list(dict.fromkeys(record_checks.class_text_mismatches(classes, texts, names)))
    if bad:
        raise ValueError(f"{record}: stored class names differ from the label map: " + ", ".join(
            f"class {c} stored as {t!r}, label map {n!r}" for c, t, n in bad[:5]))


def inspect(pattern: str, label_map: str | None = None, draw_dir: str | None = None,
            num: int = 8) -> dict:
    """Reads every record matching `pattern`; returns statistics (and draws samples).

    Returns:
      dict with `num_records`, `num_objects`, `class_counts` {name: count},
      `objects_per_image` {num objects: num images}, `max_objects` (the largest
      object count of one image: the `--max_boxes` that keeps every box), `drawn`
      (list of written paths).
    """
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no files match {pattern}")
    names = _class_names(files, label_map)
    class_counts: collections.Counter = collections.Counter()
    per_image: collections.Counter = collections.Counter()
    drawn = []
    if draw_dir:
        os.makedirs(draw_dir, exist_ok=True)
    n_records = 0
    for ex in iter_examples(pattern):
        classes = ex["classes"].tolist()
        texts = [t.decode("utf-8") for t in ex["class_texts"]]
        if names is not None:
            _check_against_label_map(ex, classes, texts, names)
        labels = [names[c] if names is not None else (texts[i] if i < len(texts) else str(c))
                  for i, c in enumerate(classes)]
        class_counts.update(labels)
        per_image[len(classes)] += 1
        if draw_dir and len(drawn) < num:
            kinds = ["crowd" if cr else "difficult" if d else "normal" for cr, d in
                     zip(ex["is_crowd"], ex["difficult"])]
            image = draw_boxes(to_rgb(ex["encoded"]), ex["boxes"], labels,
                               kinds)
            stem = os.path.splitext(os.path.basename(ex["filename"].decode()))[0]
            path = os.path.join(draw_dir, f"{n_records:05d}_{stem or 'image'}.jpg")
            image.save(path, quality=90)
            drawn.append(path)
        n_records += 1
    return {"num_records": n_records, "num_objects": sum(class_counts.values()),
            "class_counts": dict(class_counts.most_common()),
            "objects_per_image": dict(sorted(per_image.items())),
            "max_objects": max(per_image, default=0), "drawn": drawn}


def format_report(stats: dict) -> str:
    """Printable text for `inspect`'s result."""
    lines = [f"records: {stats['num_records']}", f"objects: {stats['num_objects']}",
             "objects per class:"]
    lines += [f"  {name:<20s} {n}" for name, n in stats["class_counts"].items()]
    lines.append("objects per image (objects: images):")
    peak = max(stats["objects_per_image"].values(), default=1)
    for k, n in stats["objects_per_image"].items():
        lines.append(f"  {k:4d}: {n:5d} {'#' * max(1, round(40 * n / peak))}")
    lines.append(f"largest object count: {stats['max_objects']} (a --max_boxes below it "
                 "drops box targets)")
    if stats["drawn"]:
        lines.append(f"drew {len(stats['drawn'])} images into "
                     f"{os.path.dirname(stats['drawn'][0])}")
    return "\n".join(lines)


def define_flags() -> None:
    flags.DEFINE_string("draw", None, "Folder to write images with boxes drawn.")
    flags.DEFINE_integer("num", 8, "Number of images to draw.", lower_bound=0)
    flags.DEFINE_string("label_map", None, "label_map.txt (default: beside the shards).")


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("usage: inspect_tfrecord PATTERN [--draw=DIR --num=K] "
                             "[--label_map=FILE]")
    if FLAGS.draw:
        side_files.check_writable(FLAGS.draw, "draw", folder=True)  # before reading records
    print(format_report(inspect(argv[1], FLAGS.label_map, FLAGS.draw, FLAGS.num)))


def run() -> None:
    """Console-script entry point (`scdnn-inspect-tfrecord`)."""
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    run()
