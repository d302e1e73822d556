"""YOLO converter on coco128 and on small generated folders."""

import os

import numpy as np
import pytest
from PIL import Image

from data_tools import yolo_to_tfrecord
from data_tools.inspect_tfrecord import iter_examples
from scdnn_tf.data.label_map import read_label_map


def test_coco128(coco_real, tmp_path):
    root = os.path.join(coco_real, "coco128")
    label_dir = os.path.join(root, "labels", "train2017")
    summary = yolo_to_tfrecord.convert(
        os.path.join(root, "images", "train2017"), label_dir,
        os.path.join(root, "config.yaml"), str(tmp_path / "c128"), num_shards=3,
        num_workers=2)
    examples = {ex["source_id"].decode(): ex for ex in iter_examples(str(tmp_path / "c128-*"))}
    assert len(examples) == summary.images_written == 128
    orphans = summary.skips[yolo_to_tfrecord.LABEL_WITHOUT_IMAGE]
    assert len(orphans) == 2 and summary.num_skipped == 2
    for stem in ("000000000250", "000000000508"):  # no label file = no objects
        assert examples[stem]["classes"].size == 0
    names = read_label_map(str(tmp_path / "label_map.txt"))
    assert len(names) == 80 and names[0] == "person"
    # One image checked against its label file, line by line.
    rows = np.loadtxt(os.path.join(label_dir, "000000000009.txt"), ndmin=2)
    ex = examples["000000000009"]
    assert ex["classes"].tolist() == rows[:, 0].astype(int).tolist()
    cx, cy, w, h = rows[:, 1:].T
    expected = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1)
    np.testing.assert_allclose(ex["boxes"], np.clip(expected, 0, 1), atol=1e-5)
    assert summary.objects_written == sum(ex["classes"].size for ex in examples.values())


@pytest.mark.parametrize("content,suffix", [
    ("names: [cat, dog]\n", ".yaml"),
    ("names:\n  0: cat\n  1: dog\n", ".yaml"),
    ("cat\ndog\n\n", ".txt"),
])
def test_read_names_formats(tmp_path, content, suffix):
    p = tmp_path / f"names{suffix}"
    p.write_text(content)
    assert yolo_to_tfrecord.read_names(str(p)) == ["cat", "dog"]


def test_read_names_rejects_gaps(tmp_path):
    p = tmp_path / "data.yaml"
    p.write_text("names:\n  0: cat\n  2: dog\n")
    with pytest.raises(ValueError, match="data.yaml"):
        yolo_to_tfrecord.read_names(str(p))


def test_bad_lines_and_classes_counted(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    Image.new("RGB", (40, 20), (9, 9, 9)).save(tmp_path / "img" / "a.jpg")
    (tmp_path / "lab" / "a.txt").write_text(
        "0 0.5 0.5 0.5 0.5\n1 0.5 0.5\n7 0.5 0.5 0.1 0.1\n1 0.9 0.5 0.4 0.2\n")
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    s = yolo_to_tfrecord.convert(str(tmp_path / "img"), str(tmp_path / "lab"),
                                 str(tmp_path / "names.txt"), str(tmp_path / "out" / "y"), 1,
                                 max_skip_fraction=1.0)
    assert s.skip_counts() == {yolo_to_tfrecord.BAD_LINE: 1, yolo_to_tfrecord.BAD_CLASS: 1}
    assert len(s.clipped) == 1  # the box centred at x=0.9, width 0.4
    (ex,) = iter_examples(str(tmp_path / "out" / "y-*"))
    np.testing.assert_allclose(ex["boxes"], [[0.25, 0.25, 0.75, 0.75], [0.4, 0.7, 0.6, 1.0]],
                               atol=1e-6)
    assert [t.decode() for t in ex["class_texts"]] == ["cat", "dog"]
