"""Reading TFRecord shards so that a damaged shard is named (or skipped and counted).

TF's own reader reports damage as "corrupted record at 480" / "truncated record at
1053" without the file name, and `ignore_errors` silently ends the file. So:

1. `scan_tfrecord` walks the record headers of each shard in Python (reads 12 bytes
   per record, checks each length field's CRC and that the record fits in the file).
   This finds truncated files (the common case: a copy or a conversion that was cut
   short) and damaged length fields before training starts.
2. `shard_dataset` reads the records the scan vouched for, stops at the first data CRC
   error (`ignore_errors`), then compares the number read with the scan's count at an
   end-of-file sentinel. Strict mode raises `InvalidArgumentError` naming the shard;
   skip mode prints a warning naming it and increments `ShardStats.runtime_skips`.

Record framing (TFRecord): uint64 length, uint32 masked crc32c(length), data,
uint32 masked crc32c(data), all little-endian.
"""

from __future__ import annotations

import dataclasses
import struct

import tensorflow as tf

from scdnn_tf.data.tfrecord_writer import masked_crc32c


def scan_tfrecord(path: str) -> tuple[int, str | None]:
    """Counts the well-framed records at the start of a TFRecord file.

    Args:
      path: a local or tf.io.gfile path.

    Returns:
      (number of records before the first framing problem, None if the whole file is
      well framed, otherwise a description of the problem with its byte offset).
      Data checksums are not verified here (that would mean reading every byte); the
      reader catches those (see `shard_dataset`).
    """
    size = tf.io.gfile.stat(path).length
    count, offset = 0, 0
    with tf.io.gfile.GFile(path, "rb") as f:
        while offset < size:
            f.seek(offset)
            header = f.read(12)
            if len(header) < 12:
                return count, f"truncated record header at byte {offset} (file size {size})"
            (length,) = struct.unpack("<Q", header[:8])
            (crc,) = struct.unpack("<I", header[8:])
            if masked_crc32c(header[:8]) != crc:
                return count, f"corrupted record length at byte {offset}"
            end = offset + 12 + length + 4
            if end > size:
                return count, (f"truncated record at byte {offset}: needs {end - offset} bytes, "
                               f"{size - offset} left")
            count += 1
            offset = end
    return count, None


@dataclasses.dataclass
class ShardStats:
    """Damaged shards met by a pipeline built with `skip_corrupt=True`.

    Attributes:
      scan_skips: {shard path: problem} found by the header scan when the dataset was
        built (the remainder of each of these shards is skipped).
      runtime_skips: int64 tf.Variable, shards whose reading stopped early on a data
        checksum error while iterating (incremented by the input pipeline itself).
    """

    scan_skips: dict = dataclasses.field(default_factory=dict)
    runtime_skips: tf.Variable = dataclasses.field(
        default_factory=lambda: tf.Variable(0, dtype=tf.int64, trainable=False,
                                            name="corrupt_shards_skipped"))

    @property
    def num_skipped(self) -> int:
        """Total damaged shards seen so far (scan + runtime)."""
        return len(self.scan_skips) + int(self.runtime_skips.numpy())


def shard_dataset(path: tf.Tensor, expected: tf.Tensor, skip_corrupt: bool,
                  stats: ShardStats | None = None) -> tf.data.Dataset:
    """Serialized records of one shard, with a named error if reading stops early.

    Args:
      path: scalar string tensor, the shard.
      expected: scalar int64, records the header scan found (the reader reads no more,
        so a truncated tail is never touched).
      skip_corrupt: if False, a data checksum error raises InvalidArgumentError naming
        the shard; if True, the rest of the shard is skipped with a warning.
      stats: where to count runtime skips (optional).

    Returns:
      A dataset of scalar tf.string records.
    """
    records = tf.data.TFRecordDataset(path).take(expected).ignore_errors()
    flagged = records.map(lambda r: (r, tf.constant(False)))
    sentinel = tf.data.Dataset.from_tensors((tf.constant(b""), tf.constant(True)))

    def check(index, item):
        record, is_end = item
        complete = tf.logical_or(tf.logical_not(is_end), tf.equal(index, expected))
        if skip_corrupt:
            def report():
                tf.print("WARNING: corrupt TFRecord shard", path, ": skipped its remainder after",
                         index, "of", expected, "records", output_stream="file://stderr")
                if stats is not None:
                    stats.runtime_skips.assign_add(1)
                return tf.constant(True)
            done = tf.cond(complete, lambda: tf.constant(True), report)
        else:
            done = tf.debugging.Assert(
                complete, ["corrupt TFRecord shard", path, "(data checksum error): read", index,
                           "of", expected, "records"])
        with tf.control_dependencies([done]):
            return tf.identity(record), is_end

    checked = flagged.concatenate(sentinel).enumerate().map(check)
    return checked.filter(lambda r, is_end: tf.logical_not(is_end)).map(lambda r, _: r)
