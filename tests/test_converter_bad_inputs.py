"""Bad input catalogue (converter half): each case is a counted skip naming the file or a
clear error naming the file, the rest still converts, and `strict` turns skips into errors."""

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_tools import coco_to_tfrecord, image_checks, voc_to_tfrecord
from data_tools.convert_common import BOX_EMPTY, BOX_OUTSIDE
from data_tools.inspect_tfrecord import iter_examples
from scdnn_tf.data.tfrecord_writer import ConversionError

from helpers import write_voc


def _encode(mode="RGB", size=(32, 24), fmt="JPEG", color=100):
    buf = io.BytesIO()
    Image.new(mode, size, color if mode in ("L", "I;16") else (color,) * len(mode)).save(
        buf, format=fmt)
    return buf.getvalue()


GOOD = _encode()  # 32 wide, 24 high


def _coco(tmp_path, files, images=None, anns=None, strict=False, categories=None):
    """Writes files + an instances json, converts; returns (summary, {filename: example}).

    Default: one image entry per file (ids 1..n, 32x24) and one box on `good.jpg` (id 1).
    """
    files = {"good.jpg": GOOD, **files}
    img_dir = tmp_path / "images"
    img_dir.mkdir(parents=True)
    for name, data in files.items():
        if data is not None:
            (img_dir / name).write_bytes(data)
    if images is None:
        images = [{"id": i + 1, "file_name": n, "height": 24, "width": 32}
                  for i, n in enumerate(files)]
    anns = anns if anns is not None else []
    anns = [{"id": 1000, "image_id": 1, "category_id": 3, "bbox": [4, 2, 8, 10], "iscrowd": 0}
            ] + anns
    ann_path = tmp_path / "instances.json"
    ann_path.write_text(json.dumps({"images": images, "annotations": anns, "categories":
                                    categories or [{"id": 3, "name": "car"}]}))
    summary = coco_to_tfrecord.convert(str(ann_path), str(img_dir), str(tmp_path / "o" / "c"),
                                       num_shards=2, num_workers=1, strict=strict,
                                       max_skip_fraction=1.0)
    exs = {e["filename"].decode(): e for e in iter_examples(str(tmp_path / "o" / "c-*"))}
    np.testing.assert_allclose(exs["good.jpg"]["boxes"][0], [2 / 24, 4 / 32, 12 / 24, 12 / 32],
                               atol=1e-6)  # the rest converts
    return summary, exs


def _truncated():
    data = _encode(size=(64, 64))
    return data[: len(data) // 2]


@pytest.mark.parametrize("data,reason", [
    (_truncated(), image_checks.CORRUPT),
    (b"", image_checks.EMPTY),
    (_encode(fmt="GIF", mode="L"), image_checks.UNSUPPORTED),
    (b"\xff\xd8\xff\xe0 not really a jpeg", image_checks.CORRUPT),
    (None, image_checks.MISSING),
])
def test_bad_image_files_are_counted_skips(tmp_path, data, reason):
    s, exs = _coco(tmp_path, {"bad.jpg": data})
    assert s.skip_counts() == {reason: 1}
    assert "bad.jpg" in s.skips[reason][0]
    assert set(exs) == {"good.jpg"}
    with pytest.raises(ConversionError, match="bad.jpg"):
        _coco(tmp_path / "strict", {"bad.jpg": data}, strict=True)


def test_oversized_image_skipped(tmp_path):
    s, exs = _coco(tmp_path, {"huge.png": _encode("L", (10_001, 2), "PNG")})
    assert s.skip_counts() == {image_checks.TOO_LARGE: 1}
    assert "huge.png: 10001x2" in s.skips[image_checks.TOO_LARGE][0]
    assert set(exs) == {"good.jpg"}


@pytest.mark.parametrize("data,fmt,mode", [
    (_encode("RGB", fmt="PNG"), b"png", "RGB"),   # a PNG named .jpg: stored as PNG
    (_encode("L"), b"jpeg", "L"),
    (_encode("CMYK"), b"jpeg", "CMYK"),
    (_encode("I;16", fmt="PNG"), b"png", "I;16"),
])
def test_unusual_but_valid_images_kept_byte_exact(tmp_path, data, fmt, mode):
    s, exs = _coco(tmp_path, {"odd.jpg": data})
    assert s.num_skipped == 0 and s.images_written == 2
    ex = exs["odd.jpg"]
    assert ex["encoded"] == data and ex["format"] == fmt
    assert (ex["height"], ex["width"]) == (24, 32)
    if mode != "RGB":
        assert any("odd.jpg" in i for items in s.notes.values() for i in items)
    # The kept bytes decode to 3-channel 8-bit in TF (what the input pipeline needs).
    assert tf.io.decode_image(data, channels=3, dtype=tf.uint8).shape == (24, 32, 3)


@pytest.mark.parametrize("bbox,reason", [
    ([5, 5, 0, 4], BOX_EMPTY), ([5, 5, 4, -2], BOX_EMPTY),
    ([40, 2, 5, 5], BOX_OUTSIDE), ([-9, -9, 5, 5], BOX_OUTSIDE),
])
def test_degenerate_and_outside_boxes_skipped(tmp_path, bbox, reason):
    s, exs = _coco(tmp_path, {}, anns=[{"id": 7, "image_id": 1, "category_id": 3,
                                        "bbox": bbox, "iscrowd": 0}])
    assert s.skip_counts() == {reason: 1} and "good.jpg annotation 7" in s.skips[reason][0]
    assert s.objects_written == 1


def test_partly_outside_box_clipped(tmp_path):
    s, exs = _coco(tmp_path, {}, anns=[{"id": 7, "image_id": 1, "category_id": 3,
                                        "bbox": [24, -4, 16, 14], "iscrowd": 0}])
    assert s.num_skipped == 0 and s.clipped == ["good.jpg annotation 7"]
    np.testing.assert_allclose(exs["good.jpg"]["boxes"][1], [0, 0.75, 10 / 24, 1], atol=1e-6)


def test_unknown_category_and_orphan_annotation(tmp_path):
    s, _ = _coco(tmp_path, {}, anns=[
        {"id": 8, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5], "iscrowd": 0},
        {"id": 9, "image_id": 555, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 0}])
    assert s.skip_counts() == {coco_to_tfrecord.UNKNOWN_CATEGORY: 1,
                               coco_to_tfrecord.MISSING_IMAGE_ID: 1}
    assert "category 99" in s.skips[coco_to_tfrecord.UNKNOWN_CATEGORY][0]
    assert "image id 555" in s.skips[coco_to_tfrecord.MISSING_IMAGE_ID][0]


def test_escaping_file_name_and_duplicate_ids(tmp_path):
    (tmp_path / "secret.jpg").write_bytes(GOOD)
    images = [{"id": 1, "file_name": "good.jpg", "height": 24, "width": 32},
              {"id": 2, "file_name": "../secret.jpg", "height": 24, "width": 32},
              {"id": 3, "file_name": "a.jpg", "height": 24, "width": 32},
              {"id": 3, "file_name": "b.jpg", "height": 24, "width": 32}]
    s, exs = _coco(tmp_path, {"a.jpg": GOOD, "b.jpg": GOOD}, images=images)
    assert s.skip_counts() == {coco_to_tfrecord.ESCAPING_NAME: 1,
                               coco_to_tfrecord.DUPLICATE_ID: 1}
    assert "../secret.jpg" in s.skips[coco_to_tfrecord.ESCAPING_NAME][0]
    assert "a.jpg, b.jpg" in s.skips[coco_to_tfrecord.DUPLICATE_ID][0]
    assert set(exs) == {"good.jpg"}


def test_malformed_json_names_the_file(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('{"images": [')
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        coco_to_tfrecord.convert(str(p), str(tmp_path), str(tmp_path / "o" / "c"), 1)
    assert not (tmp_path / "o").exists() or not os.listdir(tmp_path / "o")


_BOMB = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
         + "".join(f'<!ENTITY lol{i} "{("&lol%s;" % (i - 1 or "")) * 10}">' for i in range(1, 9))
         + ']><annotation><size><width>10</width><height>10</height></size>'
         '<object><name>&lol8;</name></object></annotation>')


@pytest.mark.parametrize("xml,reason,message", [
    ("<annotation><size><width>10</width>", voc_to_tfrecord.MALFORMED_XML, "malformed XML"),
    (_BOMB, voc_to_tfrecord.UNSAFE_XML, "refused"),
])
def test_bad_voc_xml_skipped(tmp_path, xml, reason, message):
    root = write_voc(str(tmp_path), {"ok": [("cat", 0, 1, 1, 9, 9)], "bad": []})
    (tmp_path / "VOCdevkit" / "VOC2007" / "Annotations" / "bad.xml").write_text(xml)
    s = voc_to_tfrecord.convert(root, "2007", "trainval", str(tmp_path / "o" / "v"), 1,
                                max_skip_fraction=1.0)
    assert s.skip_counts() == {reason: 1}
    assert "bad.xml" in s.skips[reason][0] and message in s.skips[reason][0]
    assert [e["source_id"] for e in iter_examples(str(tmp_path / "o" / "v-*"))] == [b"ok"]


def test_strict_failure_mid_run_leaves_no_shard(tmp_path):
    files = {f"{i}.jpg": GOOD for i in range(6)}
    files["3.jpg"] = b""
    with pytest.raises(ConversionError, match="3.jpg"):
        _coco(tmp_path, files, strict=True)
    assert os.listdir(tmp_path / "o") == []  # no shard, no temp file, no label map


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
def test_jpeg_check_reads_all_coded_data(tmp_path, keep):
    # The check decodes JPEGs at 1/8 scale; a photo-sized file cut anywhere in its coded
    # data must still be caught, and an intact one keeps its size and mode.
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(
        buf, format="JPEG", quality=90)
    data = buf.getvalue()
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    whole = image_checks.load_image(str(path))
    assert (whole.width, whole.height, whole.mode) == (640, 480, "RGB")
    path.write_bytes(data[: int(len(data) * keep)])
    problem = image_checks.load_image(str(path))
    assert isinstance(problem, image_checks.ImageProblem) and problem.reason == image_checks.CORRUPT
