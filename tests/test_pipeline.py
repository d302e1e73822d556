"""make_dataset: batch contract, label rules, class maps, damaged shards, real photos."""

import os
import struct

import numpy as np
import pytest
import tensorflow as tf

from scdnn_tf.data import records
from scdnn_tf.data.pipeline import labels_from_objects, make_dataset
from scdnn_tf.data.shards import ShardStats

C = 4
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
# One object per corner, class i in corner i: crops drop some of them.
CORNERS = [[0.05, 0.05, 0.35, 0.35], [0.05, 0.65, 0.35, 0.95],
           [0.65, 0.05, 0.95, 0.35], [0.65, 0.65, 0.95, 0.95]]


def _example(i=0, boxes=CORNERS, classes=(0, 1, 2, 3), size=48, raw=False, **kw):
    img = np.full((size, size + 16, 3), 90, np.uint8)
    h, w = img.shape[:2]
    for b, c in zip(boxes, classes):
        y0, x0, y1, x1 = np.round(np.asarray(b) * [h, w, h, w]).astype(int)
        img[y0:y1, x0:x1] = COLOURS[c % 4]
    enc = tf.io.encode_png(img).numpy()
    if raw:  # TF Model Garden style: raw ids, no image/class/label, no difficult
        ex = tf.train.Example()
        ex.features.feature[records.ENCODED].bytes_list.value.append(enc)
        for k, key in enumerate((records.YMIN, records.XMIN, records.YMAX, records.XMAX)):
            ex.features.feature[key].float_list.value.extend([b[k] for b in boxes])
        ex.features.feature[records.OBJECT_LABEL].int64_list.value.extend(classes)
        return ex
    return records.build_example(encoded=enc, image_format="png", height=h, width=w,
                                 filename=f"img{i}.png", source_id=str(i), boxes=boxes,
                                 classes=list(classes), class_texts=[str(c) for c in classes], **kw)


def _write(path, examples):
    with tf.io.TFRecordWriter(str(path)) as w:
        for ex in examples:
            w.write(ex.SerializeToString())
    return str(path)


def _all(ds):
    out = [{k: v.numpy() for k, v in b.items()} for b in ds]
    return {k: np.concatenate([b[k] for b in out]) for k in out[0]}


def test_batch_contract_and_padding(tmp_path):
    _write(tmp_path / "a.tfrecord", [_example(i) for i in range(5)])
    ds = make_dataset(str(tmp_path / "*.tfrecord"), C, 32, 2, training=True, max_boxes=6, seed=0,
                      shuffle_buffer=8)
    batch = next(iter(ds))
    assert batch["image"].shape == (2, 32, 32, 3) and batch["image"].dtype == tf.float32
    assert batch["boxes"].shape == (2, 6, 4) and batch["boxes"].dtype == tf.float32
    assert batch["box_classes"].shape == (2, 6) and batch["box_classes"].dtype == tf.int32
    assert batch["labels"].shape == (2, C) and batch["label_weights"].shape == (2, C)
    cls = batch["box_classes"].numpy()
    assert (cls[:, 4:] == -1).all()  # at most 4 objects: the rest is padding
    assert (batch["boxes"].numpy()[cls == -1] == 0).all()
    img = batch["image"].numpy()
    assert img.min() >= 0 and img.max() <= 255


def test_eval_is_deterministic_and_complete(tmp_path):
    for s in range(3):
        _write(tmp_path / f"s{s}.tfrecord", [_example(10 * s + i) for i in range(3)])
    make = lambda: make_dataset(str(tmp_path / "s*"), C, 24, 4, training=False)  # noqa: E731
    a, b = _all(make()), _all(make())
    assert a["image"].shape[0] == 9
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_allclose(a["boxes"][0, :4], CORNERS, atol=1e-6)  # no augmentation


def test_labels_follow_boxes_after_crop(tmp_path):
    _write(tmp_path / "a.tfrecord", [_example(i) for i in range(16)])
    ds = make_dataset(str(tmp_path / "a.tfrecord"), C, 32, 8, training=True, seed=3, shuffle_buffer=16,
                      scale_range=(0.3, 0.6))
    dropped = 0
    for batch in ds.take(4):
        for labels, cls in zip(batch["labels"].numpy(), batch["box_classes"].numpy()):
            expect = np.zeros(C)
            expect[cls[cls >= 0]] = 1
            np.testing.assert_array_equal(labels, expect)
            dropped += int(expect.sum() < 4)
    assert dropped > 0  # the crops really removed objects


def test_labels_only_records_keep_labels(tmp_path):
    ex = _example(0, boxes=[], classes=(), image_labels=[0, 2])
    _write(tmp_path / "a.tfrecord", [ex] * 4)
    ds = make_dataset(str(tmp_path / "a.tfrecord"), C, 16, 4, training=True, seed=1, shuffle_buffer=4,
                      scale_range=(0.2, 0.3))
    for batch in ds.take(3):
        np.testing.assert_array_equal(batch["labels"].numpy(), [[1, 0, 1, 0]] * 4)
        assert (batch["box_classes"].numpy() == -1).all()
        assert (batch["label_weights"].numpy() == 1).all()


def test_difficult_and_crowd(tmp_path):
    # class 0 plain, class 1 only difficult, class 2 crowd only, class 3 plain + difficult.
    ex = _example(0, classes=(0, 1, 2, 3), difficult=[0, 1, 0, 0], is_crowd=[0, 0, 1, 0])
    ex2 = _example(1, boxes=CORNERS + [[0.4, 0.4, 0.6, 0.6]], classes=(0, 1, 2, 3, 3),
                   difficult=[0, 0, 0, 0, 1])
    _write(tmp_path / "a.tfrecord", [ex, ex2])
    out = _all(make_dataset(str(tmp_path / "a.tfrecord"), C, 16, 2, training=False))
    np.testing.assert_array_equal(out["labels"], [[1, 0, 0, 1], [1, 1, 1, 1]])
    np.testing.assert_array_equal(out["label_weights"], [[1, 0, 1, 1], [1, 1, 1, 1]])
    np.testing.assert_array_equal(out["box_classes"][0, :3], [0, 3, -1])  # targets only
    np.testing.assert_array_equal(out["box_classes"][1, :5], [0, 1, 2, 3, -1])


def test_labels_from_objects_unit():
    labels, weights = labels_from_objects(
        tf.constant([1, 1, 2], tf.int32), tf.constant([0, 0, 0]), tf.constant([1, 0, 1]),
        tf.constant([0], tf.int32), 3)
    np.testing.assert_array_equal(labels, [1, 1, 0])  # 1 has a non-difficult box
    np.testing.assert_array_equal(weights, [1, 1, 0])


def test_max_boxes_keeps_first(tmp_path):
    _write(tmp_path / "a.tfrecord", [_example(0)])
    out = _all(make_dataset(str(tmp_path / "a.tfrecord"), C, 16, 1, training=False, max_boxes=2))
    np.testing.assert_array_equal(out["box_classes"], [[0, 1]])
    np.testing.assert_array_equal(out["labels"], [[1, 1, 1, 1]])


def test_model_garden_ids_with_class_id_map(tmp_path):
    _write(tmp_path / "mg.tfrecord", [_example(0, boxes=CORNERS[:2], classes=(1, 90), raw=True)])
    out = _all(make_dataset(str(tmp_path / "mg.tfrecord"), 3, 16, 1, training=False,
                            class_id_map={1: 0, 2: 1, 90: 2}))
    np.testing.assert_array_equal(out["labels"], [[1, 0, 1]])
    np.testing.assert_array_equal(out["box_classes"][0, :3], [0, 2, -1])
    with pytest.raises(ValueError, match=r"class ids not in class_id_map: \[90\] in record .*"
                                         r"at index 0 of shard .*mg.tfrecord"):
        make_dataset(str(tmp_path / "mg.tfrecord"), 3, 16, 1, training=False, class_id_map={1: 0})
    with pytest.raises(tf.errors.InvalidArgumentError, match="not in class_id_map"):
        _all(make_dataset(str(tmp_path / "mg.tfrecord"), 3, 16, 1, training=False,
                          class_id_map={1: 0}, check_first=0))
    with pytest.raises(ValueError, match=r"outside 0\.\.2 \(num_classes=3\): \[90\]"):
        make_dataset(str(tmp_path / "mg.tfrecord"), 3, 16, 1, training=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)outside 0\.\.2.*90"):
        _all(make_dataset(str(tmp_path / "mg.tfrecord"), 3, 16, 1, training=False, check_first=0))


def test_no_match_names_pattern(tmp_path):
    with pytest.raises(ValueError, match="nothing-here"):
        make_dataset(str(tmp_path / "nothing-here-*"), C, 16, 1, training=False)


def _damaged_shards(tmp_path):
    good = _write(tmp_path / "d-0.tfrecord", [_example(i) for i in range(3)])
    data = open(_write(tmp_path / "tmp.rec", [_example(i) for i in range(4)]), "rb").read()
    os.remove(tmp_path / "tmp.rec")
    trunc = tmp_path / "d-1.tfrecord"
    trunc.write_bytes(data[:-100])  # 3 whole records, the 4th cut
    flipped = bytearray(data)
    first = 12 + struct.unpack("<Q", data[:8])[0] + 4  # where record 2 starts
    flipped[first + 12 + 40] ^= 0xFF  # a data checksum error inside record 2
    crc = tmp_path / "e-0.tfrecord"
    crc.write_bytes(bytes(flipped))
    return good, str(trunc), str(crc)


def test_truncated_shard(tmp_path):
    _, trunc, _ = _damaged_shards(tmp_path)
    with pytest.raises(ValueError, match="d-1.tfrecord"):
        make_dataset(str(tmp_path / "d-*"), C, 16, 2, training=False)
    stats = ShardStats()
    out = _all(make_dataset(str(tmp_path / "d-*"), C, 16, 2, training=False, skip_corrupt=True,
                            stats=stats))
    assert out["image"].shape[0] == 6 and list(stats.scan_skips) == [trunc]
    assert stats.num_skipped == 1


def test_checksum_error_shard(tmp_path):
    _damaged_shards(tmp_path)
    with pytest.raises(tf.errors.InvalidArgumentError, match="e-0.tfrecord"):
        _all(make_dataset(str(tmp_path / "e-*"), C, 16, 2, training=False))
    stats = ShardStats()
    out = _all(make_dataset(str(tmp_path / "e-*"), C, 16, 1, training=False, skip_corrupt=True,
                            stats=stats))
    assert out["image"].shape[0] == 1 and stats.num_skipped == 1


def test_input_context_shards_files(tmp_path):
    for s in range(2):
        _write(tmp_path / f"s{s}.tfrecord", [_example(10 * s + i, classes=(s,) * 4) for i in range(2)])
    seen = []
    for pid in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pid)
        out = _all(make_dataset(str(tmp_path / "s*"), C, 8, 1, training=False, input_context=ctx))
        seen.append(sorted(set(out["box_classes"].ravel()) - {-1}))
    assert seen == [[0], [1]]


def test_real_coco_photos_batch(coco_real, tmp_path):
    from pycocotools.coco import COCO
    root = os.path.join(coco_real, "coco_tiny")
    coco = COCO(os.path.join(root, "annotations", "instances_train2017.json"))
    cat_ids = sorted(coco.getCatIds())
    index = {c: i for i, c in enumerate(cat_ids)}
    examples = []
    for img_id in sorted(coco.getImgIds())[:6]:
        info = coco.loadImgs(img_id)[0]
        h, w = info["height"], info["width"]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        boxes = [[y / h, x / w, min(1, (y + bh) / h), min(1, (x + bw) / w)]
                 for x, y, bw, bh in (a["bbox"] for a in anns)]
        with open(os.path.join(root, "train2017", info["file_name"]), "rb") as f:
            enc = f.read()
        examples.append(records.build_example(
            encoded=enc, image_format="jpeg", height=h, width=w, filename=info["file_name"],
            source_id=str(img_id), boxes=boxes, classes=[index[a["category_id"]] for a in anns],
            class_texts=[coco.cats[a["category_id"]]["name"] for a in anns],
            is_crowd=[a["iscrowd"] for a in anns]))
    _write(tmp_path / "coco.tfrecord", examples)
    ds = make_dataset(str(tmp_path / "coco.tfrecord"), 80, 64, 3, training=True, seed=0,
                      color_jitter=True)
    for batch in ds.take(2):
        assert batch["image"].shape == (3, 64, 64, 3)
        cls, labels = batch["box_classes"].numpy(), batch["labels"].numpy()
        for c, l in zip(cls, labels):
            assert set(c[c >= 0]) == set(np.flatnonzero(l))  # no crowd-only in the first six
        b = batch["boxes"].numpy()[cls >= 0]
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
        assert b.min() >= 0 and b.max() <= 1


@pytest.mark.parametrize("training", [False, True])
def test_unaugmented_images_are_the_serving_pixels(tmp_path, training):
    """Evaluation (and training without augmentation) decode exactly like the SavedModel."""
    from scdnn_tf.data.preprocess import decode_image, resize_image
    rng = np.random.default_rng(3)
    encoded = [tf.io.encode_jpeg(rng.integers(0, 256, (90, 70, 3), np.uint8)).numpy(),
               tf.io.encode_png(rng.integers(0, 256, (40, 64, 3), np.uint8)).numpy()]
    examples = [records.build_example(encoded=e, image_format=f, height=1, width=1,
                                      filename=f"img{i}", source_id=str(i), boxes=[CORNERS[0]],
                                      classes=[0], class_texts=["0"])
                for i, (e, f) in enumerate(zip(encoded, ["jpeg", "png"]))]
    path = _write(tmp_path / "a.tfrecord", examples)
    ds = make_dataset(path, C, 48, 2, training=training, augment=False, seed=0, repeat=False,
                      shuffle_buffer=1)
    got = next(iter(ds))["image"].numpy()
    served = [resize_image(decode_image(e), 48).numpy() for e in encoded]
    order = [0, 1] if np.array_equal(got[0], served[0]) else [1, 0]
    for g, k in zip(got, order):
        np.testing.assert_array_equal(g, served[k])
