r"""YOLO-format dataset (images + `cls cx cy w h` label files) -> sharded TFRecords.

    python -m data_tools.yolo_to_tfrecord --image_dir=images/train2017 \
        --label_dir=labels/train2017 --names=data.yaml \
        --output_prefix=out/coco128 --num_shards=4

Each image `<sub>/<stem>.<ext>` under `--image_dir` (subfolders are walked) pairs with
`<label_dir>/<sub>/<stem>.txt`, as YOLO tools map `images/` to `labels/`; a line is
`class cx cy w h`, all normalized to [0, 1] in the displayed (EXIF-rotated) frame. An
image without a label file has no objects (kept, counted); if no image has one, that is
a warning (an error with `--strict`). Label files without an image, unreadable label
files and two images sharing one label file are counted skips. `--names` is a text
file with one class name per line (the rules of `read_label_map`: no blank line
inside), or a YAML file whose `names` is a list or a `{index: name}` dict (Ultralytics
data.yaml).
"""

from __future__ import annotations

from scdnn_tf.utils import cli  # noqa: I001  (imports no TensorFlow: a conversion never needs it)

import os

import numpy as np
import yaml
from absl import flags

from data_tools import convert_common, image_checks
from scdnn_tf.data.tfrecord_writer import ConversionSummary
from scdnn_tf.data import label_map
from scdnn_tf.utils import files

FLAGS = flags.FLAGS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
LABEL_WITHOUT_IMAGE = "label file without an image"
BAD_LINE = "malformed label line"
BAD_CLASS = "class index out of range"
BAD_LABEL_FILE = "unreadable label file (image skipped)"
NO_LABEL_FILE = "image without a label file (kept with no objects)"


def read_names(path: str) -> list[str]:
    """Class names from a names.txt (one per line) or a YAML file with `names`."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"class names file not found: {path}")
    if path.endswith((".yaml", ".yml")):
        try:
            data = yaml.safe_load(files.read_text(path))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or e
            raise ValueError(f"{path}: not valid YAML{where}: {problem}") from None
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, dict):
            keys = sorted(int(k) for k in names)
            if keys != list(range(len(keys))):
                raise ValueError(f"{path}: `names` keys must be 0..N-1, got {keys}")
            names = [names[k] if k in names else names[str(k)] for k in keys]
        if not isinstance(names, list) or not names:
            raise ValueError(f"{path}: needs a non-empty `names` list or dict")
        return [str(n) for n in names]
    names = [n.strip() for n in label_map.read_label_map(path)]
    if not names:
        raise ValueError(f"{path}: no class names")
    return names


def _read_lines(path: str) -> list[str] | str:
    """The lines of a label file (a UTF-8 BOM stripped), or why it cannot be read."""
    if os.path.isdir(path):
        return f"{path}: is a folder, not a label file"
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.readlines()
    except UnicodeDecodeError as e:
        return f"{path}: not UTF-8 text ({e.reason} at byte {e.start})"
    except OSError as e:
        return f"{path}: cannot read ({e.strerror})"


def _count_lines(path: str) -> int:
    """Non-blank lines of a label file (its objects); 1 for an unreadable file."""
    lines = _read_lines(path)
    return 1 if isinstance(lines, str) else sum(1 for line in lines if line.strip())


def parse_label_file(path: str, num_classes: int, summary: ConversionSummary):
    """Reads one label file -> (boxes [N, 4] normalized yxyx, classes, object names), or
    None (counted skip) when the file cannot be read as text."""
    boxes, classes, objects = [], [], []
    lines = _read_lines(path)
    if isinstance(lines, str):
        summary.skip(BAD_LABEL_FILE, lines, annotations=1)
        return None
    for line_no, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        label = f"{path}:{line_no}"
        try:
            if len(parts) != 5:
                raise ValueError(f"expected 5 values, got {len(parts)}")
            cls = int(parts[0])
            cx, cy, w, h = (float(v) for v in parts[1:])
        except ValueError as e:
            summary.skip(BAD_LINE, f"{label} {line.strip()!r} ({e})", annotations=1)
            continue
        if not 0 <= cls < num_classes:
            summary.skip(BAD_CLASS, f"{label} class {cls} (names has {num_classes})",
                         annotations=1)
            continue
        boxes.append([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2])
        classes.append(cls)
        objects.append(label)
    return np.asarray(boxes, np.float64).reshape(-1, 4), classes, objects


def list_images(image_dir: str) -> list[str]:
    """Image paths relative to `image_dir`, subfolders included, sorted ("/"-separated)."""
    found = []
    for root, dirs, files in os.walk(image_dir, followlinks=True):
        dirs.sort()
        rel = os.path.relpath(root, image_dir)
        for n in files:
            if n.lower().endswith(IMAGE_EXTENSIONS):
                found.append(n if rel == "." else os.path.join(rel, n).replace(os.sep, "/"))
    return sorted(found)


def _list_labels(label_dir: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(label_dir, followlinks=True):
        rel = os.path.relpath(root, label_dir)
        found += [n if rel == "." else os.path.join(rel, n).replace(os.sep, "/")
                  for n in files if n.endswith(".txt")]
    return sorted(found)


def _unique_stems(image_files: list[str], summary: ConversionSummary) -> list[str]:
    """Drops (counted) later images that share a stem, hence a label file, with an earlier one."""
    first: dict[str, str] = {}
    kept = []
    for name in image_files:
        stem = os.path.splitext(name)[0]
        if stem in first:
            summary.skip(convert_common.DUPLICATE_IMAGE,
                         f"{name}: shares {stem}.txt with {first[stem]}, which was written")
            continue
        first[stem] = name
        kept.append(name)
    return kept


def _tasks(image_dir, label_dir, image_files, names, summary):
    for name in image_files:
        stem = os.path.splitext(name)[0]
        label_path = os.path.join(label_dir, stem + ".txt")
        if os.path.lexists(label_path):
            parsed = parse_label_file(label_path, len(names), summary)
            if parsed is None:
                continue
            boxes, classes, objects = parsed
        else:
            summary.note(NO_LABEL_FILE, os.path.join(image_dir, name))
            boxes, classes, objects = np.zeros([0, 4]), [], []
        yield convert_common.ImageTask(
            path=os.path.join(image_dir, name), filename=name, source_id=stem, boxes=boxes,
            box_units="normalized", classes=classes, class_texts=[names[c] for c in classes],
            object_names=objects)


def convert(image_dir: str, label_dir: str, names: str, output_prefix: str,
            num_shards: int, num_workers: int = 1, strict: bool = False,
            max_image_side: int = image_checks.DEFAULT_MAX_SIDE,
            image_check: str = "structure",
            max_skip_fraction: float = convert_common.DEFAULT_MAX_SKIP_FRACTION
            ) -> ConversionSummary:
    """Converts a YOLO image/label folder pair; returns the summary."""
    for d in (image_dir, label_dir):
        if not os.path.isdir(d):
            raise FileNotFoundError(f"folder not found: {d}")
    with files.flag_errors("names", names):
        class_names = read_names(names)
    convert_common.check_label_map_beside(output_prefix, class_names)
    summary = ConversionSummary(strict=strict)
    image_files = list_images(image_dir)
    stems = {os.path.splitext(n)[0] for n in image_files}
    labels = _list_labels(label_dir)
    if image_files and not stems & {label[:-4] for label in labels}:
        summary.warn(f"no image in {image_dir} has a label file in {label_dir} (expected "
                     f"e.g. {os.path.join(label_dir, os.path.splitext(image_files[0])[0])}.txt)")
    for label in labels:
        if label[:-4] not in stems:
            path = os.path.join(label_dir, label)
            summary.skip(LABEL_WITHOUT_IMAGE, path, annotations=_count_lines(path))
    image_files = _unique_stems(image_files, summary)
    summary.paths = convert_common.run_conversion(
        _tasks(image_dir, label_dir, image_files, class_names, summary), output_prefix,
        num_shards, summary, num_workers=num_workers, max_image_side=max_image_side,
        image_check=image_check, total=len(image_files), desc="yolo",
        max_skip_fraction=max_skip_fraction)
    convert_common.write_label_map_beside(output_prefix, class_names)
    return summary


def define_flags() -> None:
    flags.DEFINE_string("image_dir", None, "Folder of images.")
    flags.DEFINE_string("label_dir", None, "Folder of <image stem>.txt label files.")
    flags.DEFINE_string("names", None, "names.txt (one per line) or data.yaml (`names`).")
    convert_common.define_common_flags()
    flags.mark_flags_as_required(["image_dir", "label_dir", "names"])


def main(argv):
    del argv
    convert_common.run_main(convert, FLAGS.image_dir, FLAGS.label_dir, FLAGS.names,
                            **convert_common.common_kwargs(FLAGS))


def run() -> None:
    """Console-script entry point (`scdnn-yolo-to-tfrecord`)."""
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    run()
