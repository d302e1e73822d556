"""The pure helpers of the benchmark scripts: log parsing, the replicated COCO set."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from benchmarks import convert_coco, light_accuracy, train_step_lib


def test_parse_log_reads_final_metrics_and_median_rate_without_the_first_line():
    log = "\n".join([
        "I1201 step 50/400  loss 1.2  lr 0.01  5.0 img/s",
        "I1201 step 100/400  loss 1.0  lr 0.01  40.0 img/s",
        "I1201 step 150/400  loss 0.9  lr 0.01  60.0 img/s",
        "I1201 step 200/400  loss 0.8  lr 0.01  50.0 img/s",
        'I1201 final validation metrics: {"mAP": 0.9, "CF1": 0.8}'])
    parsed = light_accuracy.parse_log(log)
    assert parsed["metrics"] == {"mAP": 0.9, "CF1": 0.8}
    assert parsed["train_images_per_s"] == 50.0  # median of 40, 60, 50 (5.0: tracing)


def test_parse_log_without_metrics_is_an_error_showing_the_log_end():
    with pytest.raises(RuntimeError, match="no final validation metrics") as info:
        light_accuracy.parse_log("step 50/400 ... 5.0 img/s\nTraceback: boom")
    assert "Traceback: boom" in str(info.value)


def _subset(root, name, image_ids):
    folder = os.path.join(root, name, "train2017")
    os.makedirs(folder)
    os.makedirs(os.path.join(root, name, "annotations"))
    images, annotations = [], []
    for i in image_ids:
        # The photo's red level and its box's x both encode the source id.
        Image.new("RGB", (8, 6), (20 * i, 0, 0)).save(os.path.join(folder, f"{i}.jpg"))
        images.append({"id": i, "file_name": f"{i}.jpg", "height": 6, "width": 8})
        annotations.append({"id": 10 * i, "image_id": i, "bbox": [i, 1, 2, 2],
                            "category_id": 1, "iscrowd": 0, "area": 4})
    with open(os.path.join(root, name, "annotations", "instances_train2017.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": 1, "name": "person"}]}, f)


def test_replicate_gives_new_unique_names_and_ids_with_annotations_following(tmp_path):
    data = tmp_path / "coco_real"
    for name, ids in zip(convert_coco.SUBSETS, ([3, 1], [7], [5, 9])):  # same id twice: no
        _subset(str(data), name, ids)
    ann, image_dir = convert_coco.replicate(str(data), str(tmp_path / "work"), 12)
    with open(ann) as f:
        merged = json.load(f)
    images = merged["images"]
    assert len(images) == 15  # whole copies of the 5 photos until >= 12
    assert len({i["id"] for i in images}) == 15
    assert len({i["file_name"] for i in images}) == 15
    assert sorted(os.listdir(image_dir)) == sorted(i["file_name"] for i in images)
    assert len({a["id"] for a in merged["annotations"]}) == 15
    by_id = {i["id"]: i for i in images}
    for a in merged["annotations"]:  # each box still points at a copy of its own photo
        pixels = np.asarray(Image.open(os.path.join(image_dir,
                                                    by_id[a["image_id"]]["file_name"])))
        assert abs(int(pixels[3, 4, 0]) - 20 * a["bbox"][0]) < 10


def test_light_model_halves_channels_and_keeps_the_three_largest_anchors():
    model = train_step_lib.build_scdnn("small", 64, 3, light=True)
    assert model.min_level == 3
    assert model.fpn_channels == train_step_lib.DEMO_SCDNN["fpn_channels"] // 2
    assert model.anchor_sizes == tuple(float(s) for s in
                                       train_step_lib.DEMO_SCDNN["anchor_sizes"][1:])
