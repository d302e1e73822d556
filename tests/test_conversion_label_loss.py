"""A conversion that lost its labels fails: none of the annotations kept, or more than
`--max_skip_fraction` of them skipped, is an error with the counts and the top reasons,
and no shard is left behind."""

import io
import json
import subprocess
import sys

import pytest
from PIL import Image

from data_tools import coco_checks, coco_to_tfrecord, voc_to_tfrecord, yolo_to_tfrecord
from data_tools.convert_common import BOX_EMPTY
from scdnn_tf.data.tfrecord_writer import ConversionError, ConversionSummary

from helpers import REPO_ROOT, child_env, write_voc


def _jpeg(size=(32, 24)):
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 120, 150)).save(buf, format="JPEG")
    return buf.getvalue()


def _coco_files(tmp_path, anns, num_images=4):
    img_dir = tmp_path / "images"
    img_dir.mkdir(parents=True)
    images = []
    for i in range(num_images):
        (img_dir / f"{i}.jpg").write_bytes(_jpeg())
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": 32, "height": 24})
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 3, "name": "car"}]}))
    return str(path), str(img_dir)


def _ann(ann_id, image_id, bbox=(4, 2, 8, 10), iscrowd=0):
    return {"id": ann_id, "image_id": image_id, "category_id": 3, "bbox": list(bbox),
            "iscrowd": iscrowd}


def _shards(tmp_path):
    out = tmp_path / "o"
    return sorted(p.name for p in out.iterdir() if "tfrecord" in p.name) if out.exists() else []


def test_string_iscrowd_everywhere_fails_with_reason_and_count(tmp_path):
    anns = [_ann(k, k % 4 + 1, iscrowd="0") for k in range(12)]
    path, img_dir = _coco_files(tmp_path, anns)
    with pytest.raises(ConversionError) as e:
        coco_to_tfrecord.convert(path, img_dir, str(tmp_path / "o" / "c"), 1,
                                 max_skip_fraction=1.0)  # none kept fails whatever the flag
    text = str(e.value)
    assert "none of the 12 annotations was kept" in text
    assert f"{coco_checks.MALFORMED_ANNOTATION}: 12" in text and "'iscrowd'" in text
    assert _shards(tmp_path) == []


def test_skipped_fraction_over_the_limit_fails_and_the_flag_accepts_it(tmp_path):
    # 20 annotations, 3 with an empty box: 15% skipped.
    anns = [_ann(k, k % 4 + 1, bbox=(4, 2, 0, 10) if k < 3 else (4, 2, 8, 10))
            for k in range(20)]
    path, img_dir = _coco_files(tmp_path, anns)
    with pytest.raises(ConversionError) as e:
        coco_to_tfrecord.convert(path, img_dir, str(tmp_path / "o" / "c"), 1)  # default 0.1
    text = str(e.value)
    assert "3 of 20 annotations were skipped (15.0%)" in text
    assert "--max_skip_fraction=0.1" in text and f"{BOX_EMPTY}: 3" in text
    assert _shards(tmp_path) == []
    s = coco_to_tfrecord.convert(path, img_dir, str(tmp_path / "o" / "c"), 1,
                                 max_skip_fraction=0.2)
    assert (s.objects_written, s.annotations_total) == (17, 20)
    assert s.as_dict()["annotations_skipped"] == {BOX_EMPTY: 3}


def test_a_few_skips_under_the_default_pass(tmp_path):
    anns = [_ann(k, k % 4 + 1, bbox=(4, 2, 0, 10) if k == 0 else (4, 2, 8, 10))
            for k in range(20)]
    s = coco_to_tfrecord.convert(*_coco_files(tmp_path, anns), str(tmp_path / "o" / "c"), 1)
    assert s.objects_written == 19 and "annotations skipped: 1 of 20" in s.report()


def test_images_lost_count_their_annotations(tmp_path):
    # Two of four images missing on disk: their 4 of 8 annotations are lost.
    anns = [_ann(k, k % 4 + 1) for k in range(8)]
    path, img_dir = _coco_files(tmp_path, anns)
    for name in ("0.jpg", "1.jpg"):
        (tmp_path / "images" / name).unlink()
    with pytest.raises(ConversionError, match=r"4 of 8 annotations were skipped \(50.0%\)"):
        coco_to_tfrecord.convert(path, img_dir, str(tmp_path / "o" / "c"), 1,
                                 max_skip_fraction=0.4)


def test_crowd_only_file_keeps_nothing_and_fails(tmp_path):
    anns = [_ann(k, 1, iscrowd=1) for k in range(3)]
    path, img_dir = _coco_files(tmp_path, anns)
    with pytest.raises(ConversionError, match="none of the 3 annotations.*crowd box left out: 3"):
        coco_to_tfrecord.convert(path, img_dir, str(tmp_path / "o" / "c"), 1)
    s = coco_to_tfrecord.convert(path, img_dir, str(tmp_path / "o" / "c"), 1,
                                 include_crowd=True)
    assert s.objects_written == 3


def test_images_without_annotations_are_not_a_loss(tmp_path):
    s = coco_to_tfrecord.convert(*_coco_files(tmp_path, []), str(tmp_path / "o" / "c"), 1)
    assert s.images_written == 4 and s.annotations_total == 0


def test_yolo_all_lines_malformed_fails(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for i in range(3):
        (tmp_path / "img" / f"{i}.jpg").write_bytes(_jpeg())
        (tmp_path / "lab" / f"{i}.txt").write_text("0,0.5,0.5,0.2,0.2\n0,0.4,0.4,0.1,0.1\n")
    (tmp_path / "names.txt").write_text("car\n")
    with pytest.raises(ConversionError,
                       match=f"none of the 6 annotations.*{yolo_to_tfrecord.BAD_LINE}: 6"):
        yolo_to_tfrecord.convert(str(tmp_path / "img"), str(tmp_path / "lab"),
                                 str(tmp_path / "names.txt"), str(tmp_path / "o" / "y"), 1)
    assert _shards(tmp_path) == []


def test_voc_unknown_classes_everywhere_fail(tmp_path):
    root = write_voc(str(tmp_path), {"a": [("Cat", 0, 1, 1, 10, 10)],
                                     "b": [("Dog", 0, 1, 1, 10, 10), ("Dog", 0, 2, 2, 9, 9)]})
    with pytest.raises(ConversionError,
                       match=f"none of the 3 annotations.*{voc_to_tfrecord.UNKNOWN_CLASS}: 3"):
        voc_to_tfrecord.convert(root, "2007", "trainval", str(tmp_path / "o" / "v"), 1)


def test_voc_repeated_id_is_not_a_loss(tmp_path):
    root = write_voc(str(tmp_path), {"a": [("cat", 0, 1, 1, 10, 10)]})
    with open(tmp_path / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "trainval.txt",
              "a") as f:
        f.write("a\n")
    s = voc_to_tfrecord.convert(root, "2007", "trainval", str(tmp_path / "o" / "v"), 1,
                                max_skip_fraction=0.0)
    assert s.num_skipped == 1 and s.annotations_total == 1


def test_summary_accounts_every_annotation():
    s = ConversionSummary()
    s.add_written(5)
    s.skip("bad box", "x", annotations=1)
    s.skip("missing image file", "y.jpg", annotations=3)
    s.skip("missing image file", "z.jpg")  # an image without objects
    s.note("crowd box left out", "w", annotations=1)
    assert s.annotations_total == 10
    s.check_annotation_loss(0.4)
    with pytest.raises(ConversionError, match=r"4 of 10 .*missing image file: 3 \(e.g. y.jpg\); "
                                              r"bad box: 1"):
        s.check_annotation_loss(0.3)
    with pytest.raises(ValueError, match="1.5"):
        s.check_annotation_loss(1.5)


@pytest.mark.spawns
def test_cli_lost_labels_is_one_line_exit_2(tmp_path):
    path, img_dir = _coco_files(tmp_path, [_ann(k, 1, iscrowd="0") for k in range(5)])
    proc = subprocess.run(
        [sys.executable, "-m", "data_tools.coco_to_tfrecord", f"--annotations={path}",
         f"--image_dir={img_dir}", f"--output_prefix={tmp_path}/o/c", "--num_workers=1"],
        capture_output=True, text=True, cwd=REPO_ROOT, env=child_env(), timeout=120)
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and "none of the 5 annotations was kept" in errors[0]
    assert _shards(tmp_path) == []
