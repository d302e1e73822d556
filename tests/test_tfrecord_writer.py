"""ShardedWriter, ConversionSummary and the ordered worker pool."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from data_tools.parallel import ordered_map
from scdnn_tf.data.tfrecord_writer import (ConversionError, ConversionSummary, ShardedWriter,
                                           shard_paths)
from scdnn_tf.utils.progress import Progress
from scdnn_tf.data import records

from helpers import REPO_ROOT, child_env


def _read(path):
    return [r.numpy() for r in tf.data.TFRecordDataset(path)]


def test_shards_round_robin_and_final_names(tmp_path):
    prefix = str(tmp_path / "out" / "train")
    with ShardedWriter(prefix, 3) as w:
        for i in range(7):
            w.write(str(i).encode())
        # While writing, only hidden temp files exist: nothing named like a shard.
        assert not any(n.endswith(".tfrecord") for n in os.listdir(tmp_path / "out"))
    assert w.paths == shard_paths(prefix, 3)
    assert w.paths[0].endswith("train-00000-of-00003.tfrecord")
    assert sorted(os.listdir(tmp_path / "out")) == [os.path.basename(p) for p in w.paths]
    assert [_read(p) for p in w.paths] == [[b"0", b"3", b"6"], [b"1", b"4"], [b"2", b"5"]]


def test_accepts_examples(tmp_path):
    ex = tf.train.Example()
    ex.features.feature["k"].int64_list.value.append(5)
    with ShardedWriter(str(tmp_path / "a"), 1) as w:
        w.write(ex)
    assert tf.train.Example.FromString(_read(w.paths[0])[0]) == ex


def test_exception_leaves_no_shard(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with ShardedWriter(str(tmp_path / "a"), 2) as w:
            w.write(b"x")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_shards.*0"):
        ShardedWriter(str(tmp_path / "a"), 0)
    with pytest.raises(ValueError, match="output_prefix"):
        ShardedWriter(str(tmp_path) + "/", 1)


def test_summary_counts_and_report():
    s = ConversionSummary()
    s.add_written(3)
    s.add_written(0)
    s.skip("missing image file", "a.jpg")
    s.skip("missing image file", "b.jpg")
    s.clip("c.jpg annotation 1")
    s.note("crowd box left out", "d.jpg annotation 2")
    assert (s.images_written, s.objects_written, s.num_skipped) == (2, 3, 2)
    text = s.report()
    assert "images written: 2" in text and "objects written: 3" in text
    assert "missing image file: 2 -- a.jpg, b.jpg" in text
    assert "clipped" in text and "crowd box left out: 1" in text
    assert s.as_dict()["skipped"] == {"missing image file": 2}
    s.raise_if_strict()  # not strict: no error


def test_summary_strict_raises_on_skip_not_on_note():
    s = ConversionSummary(strict=True)
    s.note("crowd box left out", "x")
    s.clip("y")
    with pytest.raises(ConversionError, match="missing image file: a.jpg"):
        s.skip("missing image file", "a.jpg")


def _square(x):
    return x * x


@pytest.mark.parametrize("workers", [1, 2])
def test_ordered_map_keeps_order(workers):
    items = iter(range(20))  # a plain iterator: consumed lazily
    out = list(ordered_map(_square, items, workers, max_in_flight=3))
    assert out == [(i, i * i) for i in range(20)]


def _fail_on_3(x):
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x


def test_ordered_map_propagates_worker_errors():
    with pytest.raises(ValueError, match="bad item 3"):
        list(ordered_map(_fail_on_3, range(10), 2))


def test_progress_writes_periodic_and_final_lines_with_rate_and_eta():
    stream = io.StringIO()  # not a terminal: plain lines
    with Progress(4, "demo", unit="images", stream=stream, interval=0.0) as bar:
        for _ in range(4):
            bar.update()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5  # one per update (interval 0) and the final one
    assert lines[1].startswith("demo:") and "2/4" in lines[1] and "<" in lines[1]  # ETA
    assert "4/4" in lines[-1] and "images/s" in lines[-1]
    quiet = io.StringIO()
    with Progress(4, "demo", stream=quiet, interval=3600) as bar:
        for _ in range(4):
            bar.update()
    assert len(quiet.getvalue().splitlines()) == 1  # only the final line


def test_writer_bytes_equal_tensorflows_and_parse(tmp_path):
    # The TensorFlow-free framing and Example classes give TF's own bytes.
    example = records.build_example(
        encoded=b"\x89PNG fake", image_format="png", height=3, width=4, filename="a.png",
        source_id="7", boxes=[[0.1, 0.2, 0.5, 0.6]], classes=[2], class_texts=["car"])
    tf_example = tf.train.Example.FromString(example.SerializeToString())
    with ShardedWriter(str(tmp_path / "ours"), 1) as writer:
        writer.write(example)
        writer.write(b"")  # an empty record frames too
    with tf.io.TFRecordWriter(str(tmp_path / "theirs.tfrecord")) as writer:
        writer.write(tf_example.SerializeToString(deterministic=True))
        writer.write(b"")
    ours = (tmp_path / "ours-00000-of-00001.tfrecord").read_bytes()
    assert ours == (tmp_path / "theirs.tfrecord").read_bytes()
    parsed = records.parse_example(next(iter(tf.data.TFRecordDataset(
        str(tmp_path / "ours-00000-of-00001.tfrecord")))))
    np.testing.assert_allclose(parsed["boxes"].numpy(), [[0.1, 0.2, 0.5, 0.6]], rtol=1e-6)
    assert parsed["classes"].numpy().tolist() == [2] and parsed["filename"].numpy() == b"a.png"


def test_converters_never_import_tensorflow():
    code = ("import sys; import data_tools.coco_to_tfrecord, data_tools.voc_to_tfrecord, "
            "data_tools.yolo_to_tfrecord, data_tools.make_shapes; "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO_ROOT, env=child_env())
    assert out.stdout.strip() == "False", out.stderr
