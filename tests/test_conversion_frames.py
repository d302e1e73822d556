"""Conversion integrity: boxes in the frame they were drawn in (declared size, EXIF),
nothing mixed into an output prefix, nothing left behind by a failed run."""

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_tools import (
    coco_to_tfrecord,
    convert_common,
    frames,
    image_checks,
    voc_to_tfrecord,
    yolo_to_tfrecord,
)
from data_tools.inspect_tfrecord import iter_examples
from scdnn_tf.data.tfrecord_writer import ConversionError
from scdnn_tf.data.label_map import write_label_map

from helpers import write_voc


def _jpeg(w, h, color=(90, 90, 90), exif_orientation=None, block=None):
    """A w x h JPEG; `block` = (x0, y0, x1, y1) painted white; optional EXIF orientation."""
    im = Image.new("RGB", (w, h), color)
    if block:
        im.paste((255, 255, 255), block)
    buf = io.BytesIO()
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        im.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    else:
        im.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _coco(tmp_path, files, images, anns, prefix="o/c", num_shards=1, **kw):
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    for name, data in files.items():
        (img_dir / name).write_bytes(data)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 3, "name": "car"}]}))
    s = coco_to_tfrecord.convert(str(path), str(img_dir), str(tmp_path / prefix),
                                 num_shards=num_shards, **kw)
    return s, {e["filename"].decode(): e for e in iter_examples(str(tmp_path / prefix) + "-*")}


def _ann(image_id, bbox, ann_id=1):
    return {"id": ann_id, "image_id": image_id, "category_id": 3, "bbox": bbox, "iscrowd": 0}


def test_uniform_rescale_uses_declared_size(tmp_path):
    # Declared 64x48 (a folder downscaled by 2 holds 32x24 files): boxes stay where drawn.
    s, exs = _coco(tmp_path, {"a.jpg": _jpeg(32, 24)},
                   [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
                   [_ann(1, [8, 4, 16, 20])])
    np.testing.assert_allclose(exs["a.jpg"]["boxes"][0], [4 / 48, 8 / 64, 24 / 48, 24 / 64],
                               atol=1e-6)
    assert len(s.notes[convert_common.RESCALED]) == 1 and s.num_skipped == 0


def test_uniform_rescale_tolerates_rounding():
    assert frames.is_uniform_rescale((427, 640), (214, 320))
    assert frames.is_uniform_rescale((427, 640), (213, 320))
    assert not frames.is_uniform_rescale((48, 64), (32, 32))


def test_non_uniform_size_mismatch_is_skipped(tmp_path):
    files = {"a.jpg": _jpeg(32, 32), "b.jpg": _jpeg(64, 48)}
    images = [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
              {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48}]
    s, exs = _coco(tmp_path, files, images, [_ann(1, [8, 4, 16, 20]), _ann(2, [8, 4, 16, 20], 2)],
                   max_skip_fraction=1.0)
    assert set(exs) == {"b.jpg"}
    assert s.skip_counts() == {convert_common.SIZE_MISMATCH: 1}
    assert "a.jpg" in s.skips[convert_common.SIZE_MISMATCH][0]
    (tmp_path / "strict").mkdir()
    with pytest.raises(ConversionError, match="a.jpg"):
        _coco(tmp_path / "strict", files, images, [], strict=True)


def test_voc_missing_size_uses_file_size(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    (voc / "JPEGImages" / "1.jpg").write_bytes(_jpeg(100, 50))
    (voc / "Annotations" / "1.xml").write_text(
        "<annotation><object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>50</xmax><ymax>25</ymax></bndbox></object></annotation>")
    (voc / "ImageSets/Main/trainval.txt").write_text("1\n")
    s = voc_to_tfrecord.convert(str(tmp_path / "VOCdevkit"), "2007", "trainval",
                                str(tmp_path / "o" / "v"), 1)
    (ex,) = list(iter_examples(str(tmp_path / "o" / "v-*")))
    np.testing.assert_allclose(ex["boxes"][0], [0, 0, 0.5, 0.5], atol=1e-6)
    assert len(s.notes[voc_to_tfrecord.NO_SIZE]) == 1 and s.num_skipped == 0


def _rotated_photo():
    """(stored JPEG with EXIF orientation 6, displayed size (w, h), white block in the
    displayed frame as x0, y0, x1, y1 pixels)."""
    displayed = Image.new("RGB", (24, 32), (90, 90, 90))
    displayed.paste((255, 255, 255), (2, 20, 10, 30))
    stored = displayed.transpose(Image.Transpose.ROTATE_90)  # orientation 6 rotates it back
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue(), (24, 32), (2, 20, 10, 30)


def _block_mean(ex):
    image = tf.io.decode_jpeg(ex["encoded"]).numpy().astype(float)
    h, w = image.shape[:2]
    y0, x0, y1, x1 = ex["boxes"][0]
    inside = image[int(y0 * h) + 1:int(y1 * h) - 1, int(x0 * w) + 1:int(x1 * w) - 1]
    return image.shape[:2], inside.mean()


def test_exif_rotation_applied_when_labels_are_in_displayed_frame(tmp_path):
    data, (w, h), (x0, y0, x1, y1) = _rotated_photo()
    s, exs = _coco(tmp_path, {"r.jpg": data}, [{"id": 1, "file_name": "r.jpg", "width": w,
                                                 "height": h}],
                   [_ann(1, [x0, y0, x1 - x0, y1 - y0])])
    shape, mean = _block_mean(exs["r.jpg"])
    assert shape == (h, w) and mean > 230  # TF decodes the stored pixels: now upright
    assert (exs["r.jpg"]["height"], exs["r.jpg"]["width"]) == (h, w)
    assert len(s.notes[convert_common.EXIF_APPLIED]) == 1


def test_exif_not_applied_when_size_matches_stored_frame(tmp_path):
    data, (w, h), _ = _rotated_photo()
    s, exs = _coco(tmp_path, {"r.jpg": data}, [{"id": 1, "file_name": "r.jpg", "width": h,
                                                 "height": w}], [_ann(1, [1, 1, 5, 5])])
    assert exs["r.jpg"]["encoded"] == data
    assert len(s.notes[convert_common.EXIF_NOT_APPLIED]) == 1


def test_choose_frame_prefers_displayed_frame():
    img = image_checks.LoadedImage(b"", "jpeg", height=24, width=32, mode="RGB", orientation=6)
    assert frames.choose_frame((32, 24), False, img) == frames.Frame((32, 24), True,
                                                                     orientation=6)
    assert frames.choose_frame((24, 32), False, img) == frames.Frame((24, 32), False,
                                                                     orientation=6)
    assert frames.choose_frame((64, 48), False, img).rescaled  # 2x the displayed frame
    assert frames.choose_frame((30, 30), False, img) is None
    assert frames.choose_frame(None, True, img) == frames.Frame((32, 24), True, orientation=6)


@pytest.mark.parametrize("num_workers", [1, 2])
def test_yolo_always_applies_exif(tmp_path, num_workers):
    data, (w, h), (x0, y0, x1, y1) = _rotated_photo()
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    (tmp_path / "img" / "r.jpg").write_bytes(data)
    (tmp_path / "lab" / "r.txt").write_text(
        f"0 {(x0 + x1) / 2 / w} {(y0 + y1) / 2 / h} {(x1 - x0) / w} {(y1 - y0) / h}\n")
    (tmp_path / "names.txt").write_text("car\n")
    s = yolo_to_tfrecord.convert(str(tmp_path / "img"), str(tmp_path / "lab"),
                                 str(tmp_path / "names.txt"), str(tmp_path / "o" / "y"), 1,
                                 num_workers=num_workers)
    (ex,) = list(iter_examples(str(tmp_path / "o" / "y-*")))
    shape, mean = _block_mean(ex)
    assert shape == (h, w) and mean > 230
    assert len(s.notes[convert_common.EXIF_APPLIED]) == 1


def _two_images(tmp_path):
    files = {"a.jpg": _jpeg(32, 24), "b.jpg": _jpeg(32, 24)}
    images = [{"id": i + 1, "file_name": n, "width": 32, "height": 24}
              for i, n in enumerate(files)]
    return files, images


def test_stale_shards_of_the_prefix_are_removed(tmp_path):
    files, images = _two_images(tmp_path)
    _coco(tmp_path, files, images, [], num_shards=3)
    (tmp_path / "o" / "other-00000-of-00001.tfrecord").write_bytes(b"")  # another prefix
    s, exs = _coco(tmp_path, files, images, [], num_shards=2)
    left = sorted(os.listdir(tmp_path / "o"))
    assert [n for n in left if n.startswith("c-")] == ["c-00000-of-00002.tfrecord",
                                                       "c-00001-of-00002.tfrecord"]
    assert "other-00000-of-00001.tfrecord" in left
    assert len(exs) == 2 and len(s.notes[convert_common.STALE_SHARD]) == 3


def test_label_map_checked_before_any_shard(tmp_path):
    files, images = _two_images(tmp_path)
    write_label_map(str(tmp_path / "o" / "label_map.txt"), ["car", "bus"])
    with pytest.raises(ValueError, match="different class list"):
        _coco(tmp_path, files, images, [])
    assert sorted(os.listdir(tmp_path / "o")) == ["label_map.txt"]  # no shard, no temp file


def test_zero_images_written_is_an_error(tmp_path):
    files = {"a.jpg": b"not an image"}
    images = [{"id": 1, "file_name": "a.jpg", "width": 32, "height": 24}]
    with pytest.raises(ConversionError, match="no image was written(.|\n)*a.jpg"):
        _coco(tmp_path, files, images, [])
    assert not (tmp_path / "o").exists() or not [
        n for n in os.listdir(tmp_path / "o") if "tfrecord" in n]


def test_symlinked_image_files_are_fine(tmp_path):
    elsewhere = tmp_path / "store"
    elsewhere.mkdir()
    (elsewhere / "real.jpg").write_bytes(_jpeg(32, 24))
    (tmp_path / "images").mkdir()
    os.symlink(elsewhere / "real.jpg", tmp_path / "images" / "a.jpg")
    s, exs = _coco(tmp_path, {}, [{"id": 1, "file_name": "a.jpg", "width": 32, "height": 24},
                                  {"id": 2, "file_name": "../store/real.jpg"}], [])
    assert set(exs) == {"a.jpg"}
    assert s.skip_counts() == {coco_to_tfrecord.ESCAPING_NAME: 1}  # the *name* still counts


def test_duplicate_images_written_once(tmp_path):
    files, _ = _two_images(tmp_path)
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"},
              {"id": 3, "file_name": "a.jpg"}]
    s, exs = _coco(tmp_path, files, images, [])
    assert sorted(exs) == ["a.jpg", "b.jpg"]
    (item,) = s.skips[convert_common.DUPLICATE_IMAGE]
    assert "id 3" in item and "id 1, which was written" in item


def test_voc_repeated_id_written_once(tmp_path):
    root = write_voc(str(tmp_path), {"000001": [("dog", 0, 1, 1, 10, 10)]})
    with open(os.path.join(root, "VOC2007", "ImageSets", "Main", "trainval.txt"), "a") as f:
        f.write("000001\n")
    s = voc_to_tfrecord.convert(root, "2007", "trainval", str(tmp_path / "o" / "v"), 1)
    assert s.images_written == 1 and len(s.skips[convert_common.DUPLICATE_IMAGE]) == 1
