"""The conversion loop shared by the COCO, VOC and YOLO converters.

A converter turns its annotation format into a stream of `ImageTask`s (file path +
boxes in pixels or normalized units + classes); `run_conversion` loads and checks each
image in worker processes, normalizes and checks the boxes in the frame they were
drawn in (below), builds the `tf.train.Example` and writes it to sharded output, counting every
skip in a `ConversionSummary`.

Frames: pixel boxes are in the frame the annotation file declares (`expected_hw`). A
file that is a uniform rescale of it (a resized image folder) is normalized by the
declared size (counted note); any other size mismatch skips the image. A JPEG/PNG with
an EXIF orientation is stored upright (re-encoded) when its labels are in the displayed
frame: always for normalized boxes (YOLO tools display rotated), and for pixel boxes
when the declared size matches the rotated frame (or no size is declared).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Iterable, Sequence

import numpy as np
from absl import flags

from data_tools import frames, image_checks
from data_tools.parallel import ordered_map
from scdnn_tf.data import label_map, records
from scdnn_tf.data.tfrecord_writer import (
    ConversionError,
    ConversionSummary,
    ShardedWriter,
)
from scdnn_tf.utils import files
from scdnn_tf.utils.progress import Progress

# Box skip reasons.
BOX_EMPTY = "box with zero or negative area"
BOX_OUTSIDE = "box wholly outside the image"
BOX_NONFINITE = "box with NaN or infinite coordinates"
# Image skip reasons / notes.
SIZE_MISMATCH = "image size differs from the annotation size (not a uniform rescale)"
DUPLICATE_IMAGE = "duplicate image (written once)"
RESCALED = "image is a uniform rescale of the annotation size (boxes scaled)"
EXIF_APPLIED = "EXIF orientation applied (image re-encoded upright)"
EXIF_NOT_APPLIED = ("EXIF orientation not applied (annotation size matches the stored "
                    "frame)")
STALE_SHARD = "stale shard of this output prefix removed"

# The largest fraction of all annotations that may be skipped as bad input before a
# conversion fails (`--max_skip_fraction`): real datasets lose a few degenerate boxes,
# while a systematic fault (a format quirk, a wrong image folder) loses far more.
DEFAULT_MAX_SKIP_FRACTION = 0.1

# Coordinates this far outside [0, 1] (float noise in annotation files) are not
# counted as "clipped"; they are still clamped.
_TOLERANCE = 1e-6


@dataclasses.dataclass
class ImageTask:
    """One image to convert.

    Attributes:
      path: the image file.
      filename: the name stored in `image/filename` (relative to the dataset root).
      source_id: the dataset's own image id.
      boxes: [N, 4] `[ymin, xmin, ymax, xmax]` in `box_units`.
      box_units: "pixels" (continuous pixel coordinates, 0..W) or "normalized".
      classes, class_texts, is_crowd, difficult: per-object lists of length N.
      object_names: per-object labels for messages (e.g. "a.jpg annotation 17").
      expected_hw: (height, width) stated by the annotation file, if any.
    """
    path: str
    filename: str
    source_id: str
    boxes: np.ndarray
    box_units: str
    classes: list[int]
    class_texts: list[str]
    is_crowd: list[int] | None = None
    difficult: list[int] | None = None
    object_names: list[str] | None = None
    expected_hw: tuple[int, int] | None = None


def check_boxes(boxes: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Clips normalized boxes to [0, 1] and classifies each.

    Args:
      boxes: [N, 4] normalized `[ymin, xmin, ymax, xmax]`.

    Returns:
      (clipped [N, 4] float32, status [N]) with status "ok", "clipped" (partly
      outside, clipped), BOX_NONFINITE (a NaN or inf coordinate), BOX_EMPTY
      (ymax <= ymin or xmax <= xmin as given) or BOX_OUTSIDE (nothing left inside the
      image after clipping).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    clipped = np.clip(np.nan_to_num(boxes, nan=0.0), 0.0, 1.0)
    status = []
    for b, c in zip(boxes, clipped):
        if not np.all(np.isfinite(b)):
            status.append(BOX_NONFINITE)
        elif b[2] <= b[0] or b[3] <= b[1]:
            status.append(BOX_EMPTY)
        elif c[2] <= c[0] or c[3] <= c[1]:
            status.append(BOX_OUTSIDE)
        elif np.any(b < -_TOLERANCE) or np.any(b > 1 + _TOLERANCE):
            status.append("clipped")
        else:
            status.append("ok")
    return clipped.astype(np.float32), status


def _object_fields(task: ImageTask, keep: Sequence[int]):
    n = len(task.classes)
    crowd = task.is_crowd if task.is_crowd is not None else [0] * n
    diff = task.difficult if task.difficult is not None else [0] * n
    return ([task.classes[i] for i in keep], [task.class_texts[i] for i in keep],
            [crowd[i] for i in keep], [diff[i] for i in keep])


def _report_frame(task: ImageTask, image, frame: frames.Frame | None,
                  summary: ConversionSummary) -> bool:
    """Counts the frame decision; False if the image is skipped."""
    size = f"{image.height}x{image.width}"
    if frame is None:
        h, w = task.expected_hw
        summary.skip(SIZE_MISMATCH, f"{task.path} annotation {h}x{w} image {size}",
                     annotations=len(task.classes))
        return False
    if frame.rescaled:
        summary.note(RESCALED, f"{task.path} annotation {frame.hw[0]}x{frame.hw[1]} "
                               f"image {size}")
    if frame.orientation != 1:
        summary.note(EXIF_APPLIED if frame.upright else EXIF_NOT_APPLIED,
                     f"{task.path} (orientation {frame.orientation})")
    return True


def _example_for(task: ImageTask, image: image_checks.LoadedImage, frame_hw,
                 summary: ConversionSummary):
    boxes = np.asarray(task.boxes, np.float64).reshape(-1, 4)
    if task.box_units == "pixels":
        boxes = boxes / np.array([frame_hw[0], frame_hw[1], frame_hw[0], frame_hw[1]])
    elif task.box_units != "normalized":
        raise ValueError(f"unknown box_units {task.box_units!r}")
    clipped, status = check_boxes(boxes)
    names = task.object_names or [f"{task.filename} object {i}" for i in range(len(status))]
    keep = []
    for i, s in enumerate(status):
        if s in (BOX_EMPTY, BOX_OUTSIDE, BOX_NONFINITE):
            summary.skip(s, f"{names[i]} {np.round(boxes[i], 4).tolist()}", annotations=1)
            continue
        if s == "clipped":
            summary.clip(names[i])
        keep.append(i)
    classes, texts, crowd, diff = _object_fields(task, keep)
    example = records.build_example(
        encoded=image.encoded, image_format=image.image_format, height=image.height,
        width=image.width, filename=task.filename, source_id=task.source_id,
        boxes=clipped[keep], classes=classes, class_texts=texts, is_crowd=crowd,
        difficult=diff)
    return example, len(keep)


def run_conversion(tasks: Iterable[ImageTask], output_prefix: str, num_shards: int,
                   summary: ConversionSummary, num_workers: int = 1,
                   max_image_side: int = image_checks.DEFAULT_MAX_SIDE,
                   image_check: str = "structure",
                   total: int | None = None, desc: str = "converting",
                   max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION) -> list[str]:
    """Converts `tasks` into `num_shards` TFRecord shards; returns the shard paths.

    Deterministic: example i of the (ordered) output goes to shard i % num_shards.
    On any exception (including a strict-mode skip, no image written at all, or a
    conversion that lost its labels: see `ConversionSummary.check_annotation_loss`) no
    final-named shard of this run is left; on success other shards of the prefix are
    removed (noted).
    """
    if image_check not in image_checks.CHECKS:
        raise ValueError(f"image_check must be one of {image_checks.CHECKS}, "
                         f"got {image_check!r}")
    if not 0.0 <= max_skip_fraction <= 1.0:
        raise ValueError(f"--max_skip_fraction must be in [0, 1], got {max_skip_fraction!r}")
    load = functools.partial(frames.load_framed, max_side=max_image_side, check=image_check)

    def arg(task):
        return task.path, task.expected_hw, task.box_units == "normalized"

    with ShardedWriter(output_prefix, num_shards) as writer, Progress(total, desc, unit="images") as bar:
        for task, (image, frame) in ordered_map(load, tasks, num_workers, arg=arg):
            bar.update()
            if isinstance(image, image_checks.ImageProblem):
                summary.skip(image.reason, image.detail, annotations=len(task.classes))
                continue
            if image.mode != "RGB":
                summary.note(f"non-RGB image kept (mode {image.mode}; the input pipeline "
                             "decodes it to RGB)", task.path)
            if not _report_frame(task, image, frame, summary):
                continue
            example, n = _example_for(task, image, frame.hw, summary)
            writer.write(example)
            summary.add_written(n)
        if writer.num_written == 0:
            raise ConversionError("no image was written; nothing to train on:\n"
                                  + summary.report())
        summary.check_annotation_loss(max_skip_fraction)
    for path in writer.removed:
        summary.note(STALE_SHARD, path)
    return writer.paths


def skip_duplicates(tasks: Iterable[ImageTask], summary: ConversionSummary):
    """Yields each task whose image file was not seen before; later ones are counted skips.

    Two entries for one file (two ids, or a repeated id in a split list) would write the
    same image twice; the first is written and each repeat names it. A repeat's
    annotations count as skipped unless they are the written entry's own (a repeated id).
    """
    seen: dict[str, tuple[str, int]] = {}  # file -> (written id, its annotations' hash)
    for task in tasks:
        key = os.path.normcase(os.path.abspath(task.path))
        labels = hash((tuple(task.classes), np.asarray(task.boxes, np.float64).tobytes()))
        if key in seen:
            first_id, first_labels = seen[key]
            summary.skip(DUPLICATE_IMAGE, f"{task.filename} (id {task.source_id}): same file "
                                          f"as id {first_id}, which was written",
                         annotations=0 if labels == first_labels else len(task.classes))
            continue
        seen[key] = (task.source_id, labels)
        yield task


def check_label_map_beside(output_prefix: str, names: list[str],
                           filename: str = "label_map.txt") -> str:
    """Raises ValueError if a different label map is already next to the shards.

    Train and validation shards written to the same folder must share one class order,
    so an existing different label map is an error (delete it to start over). Called
    before any record is written; returns the label map path.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(output_prefix)), filename)
    if os.path.exists(path):
        existing = label_map.read_label_map(path)
        if existing != list(names):
            raise ValueError(f"{path} already exists with a different class list "
                             f"({len(existing)} vs {len(names)} classes); delete it or use "
                             "another output folder")
    return path


def write_label_map_beside(output_prefix: str, names: list[str],
                           filename: str = "label_map.txt") -> str:
    """Writes the label map next to the shards (after `check_label_map_beside`)."""
    path = check_label_map_beside(output_prefix, names, filename)
    label_map.write_label_map(path, list(names))
    return path


def run_main(convert_fn, *args, **kwargs) -> None:
    """Runs a converter from its CLI and prints its summary (errors: see `scdnn_tf.utils.cli`);
    the output folder is checked for writability first."""
    files.check_writable(kwargs["output_prefix"], "output_prefix")
    print(convert_fn(*args, **kwargs).report())


def define_common_flags() -> None:
    """Flags every converter has (defined in `__main__` only, so modules import cleanly)."""
    flags.DEFINE_string("output_prefix", None, "Output path prefix, e.g. out/train: writes "
                        "out/train-00000-of-0000N.tfrecord ... and out/label_map.txt.")
    flags.DEFINE_integer("num_shards", 8, "Number of output shards.", lower_bound=1)
    flags.DEFINE_integer("num_workers", max(1, min(8, os.cpu_count() or 1)),
                         "Worker processes that read and check images.", lower_bound=1)
    flags.DEFINE_boolean("strict", False, "Fail on the first skipped item instead of "
                         "counting it (a --max_skip_fraction of 0, and more).")
    flags.DEFINE_float("max_skip_fraction", DEFAULT_MAX_SKIP_FRACTION,
                       "Fail when more than this fraction of all annotations is skipped as "
                       "bad input (0..1; 1 accepts any loss). A conversion that keeps none "
                       "of its annotations always fails.", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_integer("max_image_side", image_checks.DEFAULT_MAX_SIDE,
                         "Images with a larger side (pixels) are skipped.", lower_bound=1)
    flags.DEFINE_enum("image_check", "structure", list(image_checks.CHECKS),
                      "How images are checked: 'structure' checks the file's structure "
                      "against what TensorFlow's decoders reject (fast); 'decode' decodes "
                      "every image with Pillow (slower).")
    flags.mark_flag_as_required("output_prefix")


def common_kwargs(FLAGS) -> dict:
    """The common flags as keyword arguments of the converters' `convert(...)`."""
    return dict(output_prefix=FLAGS.output_prefix, num_shards=FLAGS.num_shards,
                num_workers=FLAGS.num_workers, strict=FLAGS.strict,
                max_skip_fraction=FLAGS.max_skip_fraction,
                max_image_side=FLAGS.max_image_side, image_check=FLAGS.image_check)
