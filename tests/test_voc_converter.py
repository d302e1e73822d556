"""VOC converter on a small VOCdevkit-layout fixture written by the test."""


import numpy as np
import pytest

from data_tools import voc_to_tfrecord
from data_tools.inspect_tfrecord import iter_examples
from scdnn_tf.data.label_map import read_label_map

from helpers import write_voc

def test_converts_with_difficult_flags(tmp_path):
    root = write_voc(str(tmp_path), {
        "000001": [("dog", 0, 1, 1, 100, 50), ("person", 1, 11, 6, 30, 25)],
        "000002": [("tvmonitor", 1, 51, 26, 75, 50)],
    })
    s = voc_to_tfrecord.convert(root, "2007", "trainval", str(tmp_path / "out" / "voc"), 2)
    assert (s.images_written, s.objects_written, s.num_skipped) == (2, 3, 0)
    exs = {e["source_id"].decode(): e for e in iter_examples(str(tmp_path / "out" / "voc-*"))}
    e1 = exs["000001"]
    assert [t.decode() for t in e1["class_texts"]] == ["dog", "person"]
    assert e1["classes"].tolist() == [voc_to_tfrecord.VOC_CLASSES.index("dog"),
                                      voc_to_tfrecord.VOC_CLASSES.index("person")]
    assert e1["difficult"].tolist() == [0, 1]
    # 1-based inclusive pixels: xmin=1..xmax=100 spans the whole 100 px width.
    np.testing.assert_allclose(e1["boxes"], [[0, 0, 1, 1], [5 / 50, 10 / 100, 25 / 50, 0.3]],
                               atol=1e-6)
    assert exs["000002"]["difficult"].tolist() == [1]
    assert (e1["height"], e1["width"]) == (50, 100)
    assert read_label_map(str(tmp_path / "out" / "label_map.txt")) == list(
        voc_to_tfrecord.VOC_CLASSES)


def test_difficult_left_out_on_request(tmp_path):
    root = write_voc(str(tmp_path), {"a": [("cat", 0, 1, 1, 10, 10), ("cat", 1, 5, 5, 20, 20)]})
    s = voc_to_tfrecord.convert(root, "2007", "trainval", str(tmp_path / "o" / "v"), 1,
                                include_difficult=False)
    assert s.objects_written == 1 and len(s.notes[voc_to_tfrecord.DIFFICULT_LEFT_OUT]) == 1
    (ex,) = iter_examples(str(tmp_path / "o" / "v-*"))
    assert ex["difficult"].tolist() == [0]


def test_unknown_class_counted(tmp_path):
    root = write_voc(str(tmp_path), {"a": [("unicorn", 0, 1, 1, 10, 10),
                                           ("cat", 0, 1, 1, 10, 10)]})
    s = voc_to_tfrecord.convert(root, "2007", "trainval", str(tmp_path / "o" / "v"), 1,
                                max_skip_fraction=1.0)
    assert s.skip_counts() == {voc_to_tfrecord.UNKNOWN_CLASS: 1}
    assert s.images_written == 1


def test_missing_layout_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="VOC2012"):
        voc_to_tfrecord.convert(str(tmp_path), "2012", "train", str(tmp_path / "o"), 1)
