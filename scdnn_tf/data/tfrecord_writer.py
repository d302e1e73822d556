"""Sharded TFRecord output and the per-run conversion summary shared by all converters.

`ShardedWriter` writes `{prefix}-00000-of-00008.tfrecord` ... but only under hidden
temporary names (`.{name}.tmp` in the same folder) until the run succeeds: a killed or
failed run never leaves a file that looks like a complete shard, and a glob such as
`OUT/train-*` never picks up a half-written one.

`ConversionSummary` counts what was written and everything that was not, by reason,
with the offending items listed, so a user can see at the end of a run exactly which
files or annotations were dropped and why. It also counts the annotations (objects)
each skip or omission lost, so a conversion that lost too many of its labels fails
(`check_annotation_loss`) instead of writing images without them.
"""

from __future__ import annotations

import collections
import glob
import os
from typing import Iterable

import struct

import google_crc32c


class ConversionError(ValueError):
    """A conversion problem that must stop the run (any skip under `--strict`)."""


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum of `data` (crc32c, rotated and offset as TF masks it)."""
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


class TFRecordFile:
    """Appends records to a local file in TFRecord framing (what tf.io.TFRecordWriter
    writes: uint64 length, masked crc32c of it, data, masked crc32c of the data; all
    little-endian), without importing TensorFlow."""

    def __init__(self, path: str):
        self._file = open(path, "wb")  # noqa: SIM115 (closed by close())

    def write(self, data: bytes) -> None:
        length = struct.pack("<Q", len(data))
        self._file.write(b"".join((length, struct.pack("<I", masked_crc32c(length)), data,
                                   struct.pack("<I", masked_crc32c(data)))))

    def close(self) -> None:
        self._file.close()


def shard_paths(output_prefix: str, num_shards: int) -> list[str]:
    """Final shard names: `{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord`, i = 0..n-1."""
    return [f"{output_prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]


def stale_shards(output_prefix: str, keep: list[str]) -> list[str]:
    """Shards of `output_prefix` (any `-NNNNN-of-NNNNN`) that are not in `keep`, sorted."""
    digits = "[0-9]" * 5
    pattern = f"{glob.escape(output_prefix)}-{digits}-of-{digits}.tfrecord"
    keep_abs = {os.path.abspath(p) for p in keep}
    return sorted(p for p in glob.glob(pattern) if os.path.abspath(p) not in keep_abs)


def _temp_path(path: str) -> str:
    # Hidden name in the same folder: the final rename stays on one filesystem (atomic)
    # and shell/tf globs on the prefix do not match it.
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.tmp")


class ShardedWriter:
    """Round-robin TFRecord writer over `num_shards` files; a context manager.

    Example i (0-based, in call order) goes to shard `i % num_shards`, so the output
    is deterministic when the examples arrive in a deterministic order.

    A successful `close()` also deletes the other shards of the same prefix (left by an
    earlier run with another `num_shards`), so the prefix holds exactly this run's shards.

    Attributes:
      paths: the final shard paths (they exist only after a successful `close()`).
      num_written: examples written so far.
      removed: stale shards of the prefix deleted by `close()`.
    """

    def __init__(self, output_prefix: str, num_shards: int):
        if not isinstance(num_shards, int) or num_shards < 1:
            raise ValueError(f"num_shards must be a positive integer, got {num_shards!r}")
        if not output_prefix or output_prefix.endswith(("/", os.sep)):
            raise ValueError(
                f"output_prefix must name files (e.g. out/train), got {output_prefix!r}")
        self.paths = shard_paths(output_prefix, num_shards)
        self._prefix = output_prefix
        self.removed: list[str] = []
        self._temp_paths = [_temp_path(p) for p in self.paths]
        folder = os.path.dirname(os.path.abspath(output_prefix))
        os.makedirs(folder, exist_ok=True)
        self._writers = [TFRecordFile(p) for p in self._temp_paths]
        self.num_written = 0
        self._closed = False

    def write(self, example) -> None:
        """Appends one example (an Example message, e.g. `records.build_example`'s or a
        `tf.train.Example`, or its serialized bytes)."""
        if self._closed:
            raise ValueError("ShardedWriter.write called after close()/abort()")
        # deterministic: the feature map's order otherwise varies from process to process,
        # and the same input would give different file bytes.
        data = example if isinstance(example, bytes) else example.SerializeToString(
            deterministic=True)
        self._writers[self.num_written % len(self._writers)].write(data)
        self.num_written += 1

    def _close_writers(self) -> None:
        for w in self._writers:
            w.close()
        self._closed = True

    def close(self) -> list[str]:
        """Flushes and renames the temporary files to their final names; returns paths."""
        if self._closed:
            return self.paths
        self._close_writers()
        for tmp, final in zip(self._temp_paths, self.paths):
            os.replace(tmp, final)
        self.removed = stale_shards(self._prefix, self.paths)
        for path in self.removed:
            os.remove(path)
        return self.paths

    def abort(self) -> None:
        """Closes and deletes the temporary files; no final-named shard is created."""
        if not self._closed:
            self._close_writers()
        for tmp in self._temp_paths:
            if os.path.exists(tmp):
                os.remove(tmp)

    def __enter__(self) -> "ShardedWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False  # never swallow the exception


class ConversionSummary:
    """Counts written images/objects and every item left out, by reason.

    Three kinds of events:
      * `skip(reason, item)`: bad input that was dropped (an image or a box). Under
        `strict=True` the first skip raises `ConversionError` (naming reason and item).
      * `clip(item)`: a box partly outside the image, clipped to it and kept.
      * `note(reason, item)`: a deliberate omission or an informational event that is
        not a data error (crowd boxes left out by option, a non-RGB image kept, ...).
        Never fatal, even under `strict`.
      * `warn(message)`: a dataset-level problem that is not one item (e.g. no image
        has a label file). Raises `ConversionError` under `strict`.

    `skip` and `note` take the number of annotations the event lost (`annotations=`):
    one for a dropped box or annotation entry, all of an image's objects for a dropped
    image, one for an annotation file whose objects are unknown (unreadable). Every
    annotation read ends up written (`objects_written`), skipped or left out.
    """

    def __init__(self, strict: bool = False, max_listed: int = 10):
        self.strict = strict
        self.max_listed = max_listed
        self.images_written = 0
        self.objects_written = 0
        self.skips: dict[str, list[str]] = collections.defaultdict(list)
        self.notes: dict[str, list[str]] = collections.defaultdict(list)
        self.clipped: list[str] = []
        self.warnings: list[str] = []
        self.paths: list[str] = []  # output files, filled in by the converter
        # Annotations lost, by reason: skipped (bad input) and left out (by option).
        self.annotations_skipped: collections.Counter = collections.Counter()
        self.annotations_left_out: collections.Counter = collections.Counter()

    def add_written(self, num_objects: int) -> None:
        """Records one written image with `num_objects` boxes."""
        self.images_written += 1
        self.objects_written += int(num_objects)

    def skip(self, reason: str, item: str, annotations: int = 0) -> None:
        """Records a dropped item (losing `annotations` objects); raises
        `ConversionError` in strict mode."""
        self.skips[reason].append(str(item))
        if annotations:
            self.annotations_skipped[reason] += int(annotations)
        if self.strict:
            raise ConversionError(f"--strict: {reason}: {item}")

    def warn(self, message: str) -> None:
        """Records a dataset-level warning; raises `ConversionError` in strict mode."""
        self.warnings.append(str(message))
        if self.strict:
            raise ConversionError(f"--strict: {message}")

    def clip(self, item: str) -> None:
        """Records a box that was clipped to the image."""
        self.clipped.append(str(item))

    def note(self, reason: str, item: str, annotations: int = 0) -> None:
        """Records a non-error event (never fatal), e.g. `annotations` objects left out
        by option."""
        self.notes[reason].append(str(item))
        if annotations:
            self.annotations_left_out[reason] += int(annotations)

    @property
    def num_skipped(self) -> int:
        return sum(len(v) for v in self.skips.values())

    @property
    def annotations_total(self) -> int:
        """Annotations read: written, skipped or left out."""
        return (self.objects_written + sum(self.annotations_skipped.values())
                + sum(self.annotations_left_out.values()))

    def _top_reasons(self, counts: collections.Counter, limit: int = 3) -> str:
        parts = []
        for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]:
            items = self.skips.get(reason) or self.notes.get(reason) or [""]
            parts.append(f"{reason}: {n} (e.g. {items[0]})")
        return "; ".join(parts)

    def check_annotation_loss(self, max_skip_fraction: float) -> None:
        """Raises `ConversionError` when the conversion lost its labels.

        Fails when annotations were read and none was written (whatever the reason,
        including options that leave objects out), or when the skipped fraction of all
        annotations exceeds `max_skip_fraction` (0 = any skip fails, 1 = only the
        none-kept rule). The message gives the counts and the top reasons with an item.
        """
        if not 0.0 <= max_skip_fraction <= 1.0:
            raise ValueError(f"max_skip_fraction must be in [0, 1], got {max_skip_fraction!r}")
        total = self.annotations_total
        lost = sum(self.annotations_skipped.values())
        if total and not self.objects_written:
            raise ConversionError(
                f"none of the {total} annotations was kept, so the records would carry no "
                "labels; top reasons: "
                + self._top_reasons(self.annotations_skipped + self.annotations_left_out))
        if total and lost / total > max_skip_fraction:
            raise ConversionError(
                f"{lost} of {total} annotations were skipped ({lost / total:.1%}), more than "
                f"--max_skip_fraction={max_skip_fraction:g}; top reasons: "
                f"{self._top_reasons(self.annotations_skipped)}. Fix the input, or raise "
                "--max_skip_fraction to accept the loss")

    def skip_counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in sorted(self.skips.items())}

    def raise_if_strict(self) -> None:
        """Raises `ConversionError` if strict and anything was skipped (end-of-run check)."""
        if self.strict and self.num_skipped:
            raise ConversionError("--strict: items were skipped:\n" + self.report())

    def _section(self, title: str, groups: Iterable[tuple[str, list[str]]]) -> list[str]:
        lines = []
        for reason, items in groups:
            shown = ", ".join(items[: self.max_listed])
            more = f" (+{len(items) - self.max_listed} more)" if len(items) > self.max_listed else ""
            lines.append(f"  {title} {reason}: {len(items)} -- {shown}{more}")
        return lines

    def report(self) -> str:
        """Printable multi-line summary of the run."""
        lines = [f"images written: {self.images_written}",
                 f"objects written: {self.objects_written}",
                 f"items skipped: {self.num_skipped}",
                 f"annotations skipped: {sum(self.annotations_skipped.values())} of "
                 f"{self.annotations_total}"]
        lines += self._section("skipped,", sorted(self.skips.items()))
        if self.clipped:
            lines += self._section("", [("boxes clipped to the image", self.clipped)])
        lines += self._section("note,", sorted(self.notes.items()))
        lines += [f"  WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """JSON-friendly counts (for benchmarks and logs)."""
        return {
            "images_written": self.images_written,
            "objects_written": self.objects_written,
            "skipped": self.skip_counts(),
            "annotations_total": self.annotations_total,
            "annotations_skipped": dict(sorted(self.annotations_skipped.items())),
            "boxes_clipped": len(self.clipped),
            "notes": {k: len(v) for k, v in sorted(self.notes.items())},
            "warnings": list(self.warnings),
        }
