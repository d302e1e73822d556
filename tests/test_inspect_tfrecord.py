"""inspect_tfrecord: statistics and drawn images."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from data_tools import inspect_tfrecord
from scdnn_tf.data.tfrecord_writer import ShardedWriter
from scdnn_tf.data import records
from scdnn_tf.data.label_map import write_label_map


def _jpeg(h=40, w=60):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (0, 0, 0)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def shards(tmp_path):
    write_label_map(str(tmp_path / "label_map.txt"), ["cat", "dog"])
    with ShardedWriter(str(tmp_path / "s"), 2) as w:
        for i, classes in enumerate([[0, 1, 1], [], [1]]):
            w.write(records.build_example(
                encoded=_jpeg(), image_format="jpeg", height=40, width=60,
                filename=f"{i}.jpg", source_id=str(i),
                boxes=[[0.25, 0.25, 0.75, 0.5]] * len(classes), classes=classes,
                class_texts=["cat" if c == 0 else "dog" for c in classes]))
    return str(tmp_path / "s-*")


def test_counts_and_histogram(shards):
    stats = inspect_tfrecord.inspect(shards)
    assert stats["num_records"] == 3 and stats["num_objects"] == 4
    assert stats["class_counts"] == {"dog": 3, "cat": 1}
    assert stats["objects_per_image"] == {0: 1, 1: 1, 3: 1}
    text = inspect_tfrecord.format_report(stats)
    assert "records: 3" in text and "dog" in text


def test_draws_boxes(shards, tmp_path):
    stats = inspect_tfrecord.inspect(shards, draw_dir=str(tmp_path / "d"), num=2)
    assert len(stats["drawn"]) == 2 and all(os.path.exists(p) for p in stats["drawn"])
    first = np.asarray(Image.open(stats["drawn"][0]).convert("RGB"), np.int32)
    # Box outline at x = 0.5 * 60 = 30 px, rows 10..30, drawn green on a black image.
    assert first[20, 29:32, 1].max() > 150 and first[20, 5, 1] < 30


def test_label_map_mismatch_is_clear(shards, tmp_path):
    write_label_map(str(tmp_path / "one.txt"), ["cat"])
    with pytest.raises(ValueError, match="outside the label map"):
        inspect_tfrecord.inspect(shards, label_map=str(tmp_path / "one.txt"))


def test_no_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-"):
        inspect_tfrecord.inspect(str(tmp_path / "nothing-*"))


def test_sixteen_bit_png_drawn_scaled():
    buf = io.BytesIO()
    Image.new("I;16", (4, 4), 65535).save(buf, format="PNG")
    assert inspect_tfrecord.to_rgb(buf.getvalue()).getpixel((0, 0)) == (255, 255, 255)
