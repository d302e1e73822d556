"""Conversion integrity: malformed entries and label files are counted skips naming them,
category/label-map defects are one clear error, readers check stored class names."""

import io
import json
import math

import pytest
import tensorflow as tf
from PIL import Image

from data_tools import (
    coco_checks,
    coco_to_tfrecord,
    convert_common,
    inspect_tfrecord,
    yolo_to_tfrecord,
)
from data_tools.inspect_tfrecord import iter_examples
from scdnn_tf.data.tfrecord_writer import ConversionError, ShardedWriter
from scdnn_tf.data import record_checks, records
from scdnn_tf.data.label_map import read_label_map, write_label_map
from scdnn_tf.data.pipeline import make_dataset


def _jpeg(w=32, h=24):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (90, 90, 90)).save(buf, format="JPEG")
    return buf.getvalue()


def _coco_json(tmp_path, images=None, anns=(), categories=None, raw=None):
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "images" / "a.jpg").write_bytes(_jpeg())
    data = raw if raw is not None else {
        "images": images or [{"id": 1, "file_name": "a.jpg", "width": 32, "height": 24}],
        "annotations": list(anns),
        "categories": categories or [{"id": 3, "name": "car"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))  # NaN/Infinity allowed, as Python writes them
    return str(path)


def _convert(tmp_path, path, **kw):
    kw.setdefault("max_skip_fraction", 1.0)  # tiny sets: each case is a large fraction
    s = coco_to_tfrecord.convert(path, str(tmp_path / "images"), str(tmp_path / "o" / "c"), 1,
                                 **kw)
    return s, list(iter_examples(str(tmp_path / "o" / "c-*")))


GOOD = {"id": 1, "image_id": 1, "category_id": 3, "bbox": [4, 2, 8, 10], "iscrowd": 0}


@pytest.mark.parametrize("bad,problem", [
    ({"bbox": [1, 2, 3]}, "3 numbers"),
    ({"bbox": [1, 2, 3, 4, 5]}, "5 numbers"),
    ({"bbox": ["1", 2, 3, 4]}, "non-numeric"),
    ({"bbox": None}, "null"),
    ({"bbox": "missing"}, "missing"),
    ({"iscrowd": "0"}, "iscrowd"),
    ({"category_id": None}, "category_id"),
])
def test_malformed_annotation_is_counted_skip(tmp_path, bad, problem):
    ann = {**GOOD, "id": 7, **bad}
    if bad.get("bbox") == "missing":
        del ann["bbox"]
    s, exs = _convert(tmp_path, _coco_json(tmp_path, anns=[GOOD, ann]))
    (item,) = s.skips[coco_checks.MALFORMED_ANNOTATION]
    assert "annotations[1] (id 7)" in item and problem in item
    assert exs[0]["classes"].tolist() == [0]  # the good box of the same image is kept
    with pytest.raises(ConversionError, match=r"annotations\[1\]"):
        coco_to_tfrecord.convert(_coco_json(tmp_path, anns=[GOOD, ann]), str(tmp_path / "images"),
                                 str(tmp_path / "s" / "c"), 1, strict=True)


def test_image_without_id_is_counted_skip(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg"}, {"file_name": "b.jpg"}]
    s, exs = _convert(tmp_path, _coco_json(tmp_path, images=images))
    (item,) = s.skips[coco_checks.MALFORMED_IMAGE]
    assert "images[1] (b.jpg)" in item and "'id'" in item and len(exs) == 1


@pytest.mark.parametrize("raw,match", [
    ({"images": [], "annotations": None, "categories": []}, "'annotations' must be a list"),
    ({"images": [], "categories": [{"id": 1}]}, "category id 1 .* no valid 'name'"),
    ({"images": [], "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]},
     r"duplicate category ids \(id 1: ids \[1, 1\] names \['a', 'b'\]"),
    ({"images": [], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "a"}]},
     r"duplicate category names \(name 'a': ids \[1, 2\]"),
])
def test_file_level_defects_are_one_error(tmp_path, raw, match):
    path = _coco_json(tmp_path, raw=raw)
    with pytest.raises(ValueError, match=match) as e:
        _convert(tmp_path, path)
    assert "instances.json" in str(e.value)
    assert not (tmp_path / "o").exists()


def test_nonfinite_box_has_its_own_reason(tmp_path):
    ann = {**GOOD, "id": 8, "bbox": [math.nan, 2, 8, 10]}
    s, _ = _convert(tmp_path, _coco_json(tmp_path, anns=[GOOD, ann]))
    assert s.skip_counts() == {convert_common.BOX_NONFINITE: 1}
    assert "annotation 8" in s.skips[convert_common.BOX_NONFINITE][0]


# --- YOLO ---

def _yolo(tmp_path, images, labels, names="car\nbus\n", **kw):
    """images: relative paths; labels: {relative path: bytes or None (a folder)}."""
    for rel in images:
        p = tmp_path / "img" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_jpeg())
    (tmp_path / "lab").mkdir(exist_ok=True)
    for rel, data in labels.items():
        p = tmp_path / "lab" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.mkdir() if data is None else p.write_bytes(data)
    (tmp_path / "names.txt").write_text(names)
    kw.setdefault("max_skip_fraction", 1.0)
    s = yolo_to_tfrecord.convert(str(tmp_path / "img"), str(tmp_path / "lab"),
                                 str(tmp_path / "names.txt"), str(tmp_path / "o" / "y"), 1, **kw)
    return s, {e["filename"].decode(): e for e in iter_examples(str(tmp_path / "o" / "y-*"))}


LINE = b"1 0.5 0.5 0.2 0.2\n"


def test_yolo_unreadable_label_files_are_counted_skips(tmp_path):
    s, exs = _yolo(tmp_path, ["a.jpg", "b.jpg", "c.jpg"],
                   {"a.txt": LINE, "b.txt": b"1 0.5 0.5 \xff\xfe 0.2\n", "c.txt": None})
    assert sorted(exs) == ["a.jpg"]
    items = " ".join(s.skips[yolo_to_tfrecord.BAD_LABEL_FILE])
    assert "b.txt: not UTF-8" in items and "c.txt: is a folder" in items


def test_yolo_bom_and_nonfinite(tmp_path):
    s, exs = _yolo(tmp_path, ["a.jpg", "b.jpg"],
                   {"a.txt": b"\xef\xbb\xbf" + LINE, "b.txt": LINE + b"0 nan 0.5 0.2 0.2\n"})
    assert exs["a.jpg"]["classes"].tolist() == [1] and exs["b.jpg"]["classes"].tolist() == [1]
    assert s.skip_counts() == {convert_common.BOX_NONFINITE: 1}


def test_yolo_nested_folders_and_images_without_labels(tmp_path):
    s, exs = _yolo(tmp_path, ["a/x.jpg", "a/b/y.jpg", "z.jpg"],
                   {"a/x.txt": LINE, "a/b/y.txt": LINE + LINE})
    assert sorted(exs) == ["a/b/y.jpg", "a/x.jpg", "z.jpg"]
    assert exs["a/b/y.jpg"]["classes"].tolist() == [1, 1] and exs["z.jpg"]["classes"].size == 0
    (item,) = s.notes[yolo_to_tfrecord.NO_LABEL_FILE]
    assert item.endswith("z.jpg") and s.num_skipped == 0


def test_yolo_same_stem_written_once(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "a.png")
    s, exs = _yolo(tmp_path, ["a.jpg"], {"a.txt": LINE})
    assert sorted(exs) == ["a.jpg"]
    (item,) = s.skips[convert_common.DUPLICATE_IMAGE]
    assert item.startswith("a.png") and "a.jpg, which was written" in item


def test_yolo_no_label_at_all_warns_and_strict_fails(tmp_path):
    s, exs = _yolo(tmp_path, ["a.jpg"], {"other.txt": b""})
    assert len(exs) == 1 and "no image in" in s.warnings[0] and "WARNING" in s.report()
    (tmp_path / "s").mkdir()
    with pytest.raises(ConversionError, match="no image in"):
        _yolo(tmp_path / "s", ["a.jpg"], {}, strict=True)


def test_blank_line_in_names_means_the_same_as_in_a_label_map(tmp_path):
    p = tmp_path / "names.txt"
    p.write_text("car\n\nbus\n")
    with pytest.raises(ValueError, match="line 2 is empty") as conv:
        yolo_to_tfrecord.read_names(str(p))
    with pytest.raises(ValueError, match="line 2 is empty") as reader:
        read_label_map(str(p))
    assert str(conv.value) == str(reader.value)
    p.write_text("car\nbus\n\n")  # trailing blank lines: ignored by both
    assert yolo_to_tfrecord.read_names(str(p)) == read_label_map(str(p)) == ["car", "bus"]


# --- readers ---

def _records(tmp_path, objects, names=("cat", "dog")):
    """One record per entry of `objects` = [(classes, texts)]; label map `names`."""
    write_label_map(str(tmp_path / "label_map.txt"), list(names))
    with ShardedWriter(str(tmp_path / "r"), 1) as w:
        for i, (classes, texts) in enumerate(objects):
            w.write(records.build_example(
                encoded=_jpeg(), image_format="jpeg", height=24, width=32, filename=f"{i}.jpg",
                source_id=str(i), boxes=[[0.1, 0.1, 0.5, 0.5]] * len(classes), classes=classes,
                class_texts=texts))
    return str(tmp_path / "r-*")


def test_pipeline_compares_stored_names_with_label_map(tmp_path):
    pattern = _records(tmp_path, [([0], ["cat"]), ([1, 0], ["dog", "umbrella"])])
    ok = make_dataset(pattern, 2, 16, 1, training=False, class_names=["cat", "dog"],
                      check_first=1).take(1)
    assert len(list(ok)) == 1
    with pytest.raises(ValueError, match="record 1.jpg .*at index 1 of shard .*r-00000-of-00001"
                                         ".*class 0 stored as 'umbrella' but the label map "
                                         "names it 'cat'"):
        make_dataset(pattern, 2, 16, 1, training=False, class_names=["cat", "dog"])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="(?s)record 1.jpg.*umbrella.*label map names them.*cat"):
        list(make_dataset(pattern, 2, 16, 1, training=False, class_names=["cat", "dog"],
                          check_first=1))


def test_inspect_compares_stored_names_with_label_map(tmp_path):
    pattern = _records(tmp_path, [([1, 0], ["dog", "umbrella"])])
    with pytest.raises(ValueError, match="record 0.jpg .*class 0 stored as 'umbrella', "
                                         "label map 'cat'"):
        inspect_tfrecord.inspect(pattern)


def test_max_boxes_truncation_counted_and_inspect_reports_largest(tmp_path):
    pattern = _records(tmp_path, [([0, 1, 1], ["cat", "dog", "dog"]), ([0], ["cat"]),
                                  ([1] * 4, ["dog"] * 4)])
    counter = record_checks.TruncationCounter()
    list(make_dataset(pattern, 2, 16, 1, training=False, max_boxes=2, truncation=counter))
    assert (int(counter.images.numpy()), int(counter.boxes.numpy())) == (2, 3)
    assert counter.message(2).startswith("max_boxes=2: 2 of 3 examples")
    fresh = record_checks.TruncationCounter()
    list(make_dataset(pattern, 2, 16, 1, training=False, max_boxes=4, truncation=fresh))
    assert fresh.message(4) is None
    stats = inspect_tfrecord.inspect(pattern)
    assert stats["max_objects"] == 4
    assert "largest object count: 4" in inspect_tfrecord.format_report(stats)


def test_inspect_names_truncated_shard(tmp_path):
    pattern = _records(tmp_path, [([0], ["cat"]), ([1], ["dog"])])
    (path,) = tf.io.gfile.glob(pattern)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) - 20])
    with pytest.raises(ValueError, match=f"corrupt TFRecord shard {path}: truncated"):
        inspect_tfrecord.inspect(pattern)
