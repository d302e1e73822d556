"""Export: SavedModel layout, signatures, parity with Keras, bad inputs, the CLI."""

import glob
import io
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from scdnn_tf.data.preprocess import decode_image, resize_image
from scdnn_tf.data.records import build_example
from scdnn_tf.serving.exporter import export_saved_model, next_version, read_thresholds
from scdnn_tf.modeling.scdnn import SCDNN
from scdnn_tf.data.image_headers import NO_SIZE, NOT_AN_IMAGE, header_pixels
from scdnn_tf.serving.signatures import postprocess
from scdnn_tf.evaluation.thresholds import logit_threshold

NAMES = ["person", "car", "traffic light", "dog", "racket"]
THRESHOLDS = [0.1, 0.2, 0.3, 0.4, 0.5]


def tiny_scdnn(num_classes=len(NAMES)):
    model = SCDNN(num_classes, backbone="small", image_size=64, fpn_channels=16, fc_units=32,
                  anchor_sizes=(8, 16, 32, 64), num_patches=6)
    model(tf.zeros([1, 64, 64, 3]))
    return model


def encode(array, fmt="PNG", **kwargs):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(keras model, loaded SavedModel, version dir) exported once for the module."""
    model = tiny_scdnn()
    path = export_saved_model(model, NAMES, str(tmp_path_factory.mktemp("export")), THRESHOLDS,
                              top_k=3)
    return model, tf.saved_model.load(path), path


def keras_scores(model, encoded_list):
    images = tf.stack([resize_image(decode_image(e), model.image_size) for e in encoded_list])
    return tf.sigmoid(model(images, training=False)["logits"]).numpy()


def test_postprocess_thresholds_and_top_k():
    logits = tf.constant([[0.0, 2.0, -1.0], [3.0, -3.0, 0.5]])
    out = postprocess(logits, logit_threshold([0.5, 0.9, 0.2]), tf.constant(["a", "b", "c"]), 5)
    scores = 1 / (1 + np.exp(-logits.numpy()))
    np.testing.assert_allclose(out["scores"], scores, rtol=1e-6)
    # score >= threshold: 0.5 >= 0.5 counts; 0.88 < 0.9 does not.
    np.testing.assert_array_equal(out["labels"], [[True, False, True], [True, False, True]])
    np.testing.assert_array_equal(out["top_classes"], [[1, 0, 2], [0, 2, 1]])  # k clamped to 3
    assert out["top_class_names"].numpy().tolist() == [[b"b", b"a", b"c"], [b"a", b"c", b"b"]]
    np.testing.assert_allclose(out["top_scores"], np.sort(scores, axis=1)[:, ::-1], rtol=1e-6)


def test_confident_logits_rank_and_threshold_without_ties():
    # float32 sigmoid of all three is exactly 1.0: ranking by it would give [0, 1, 2].
    logits = tf.constant([[20.0, 18.0, 30.0]])
    out = postprocess(logits, logit_threshold([0.5, 1.0, 0.5]), tf.constant(["a", "b", "c"]), 3)
    assert np.all(out["scores"].numpy() == 1.0)
    np.testing.assert_array_equal(out["top_classes"], [[2, 0, 1]])
    np.testing.assert_array_equal(out["labels"], [[True, False, True]])  # sigmoid(18) < 1


def rgba_webp(h, w):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 4), np.uint8)).save(buf, format="WEBP")
    return buf.getvalue()


def jpeg_with_exif():
    exif = Image.Exif()
    exif[0x0112] = 6
    return {"exif": exif.tobytes(), "progressive": True}


@pytest.mark.parametrize("fmt, kwargs", [("PNG", {}), ("JPEG", {}), ("JPEG", jpeg_with_exif()),
                                         ("GIF", {}), ("BMP", {}), ("WEBP", {}),
                                         ("WEBP", {"lossless": True})])
def test_header_pixels_reads_every_accepted_format(fmt, kwargs):
    assert int(header_pixels(encode(random_image(7, 5), fmt, **kwargs))) == 35
    assert int(header_pixels(rgba_webp(7, 5))) == 35  # extended (VP8X) header


def test_jpeg_header_walk_agrees_with_tf(coco_real):
    files = sorted(glob.glob(os.path.join(coco_real, "coco_tiny", "train2017", "*.jpg")))[:20]
    for path in files:
        data = open(path, "rb").read()
        shape = tf.io.extract_jpeg_shape(data).numpy()
        assert int(header_pixels(data)) == shape[0] * shape[1], path


def test_header_pixels_counts_every_gif_frame():
    frames = [Image.fromarray(random_image(30, 40, seed=i)).convert("P") for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    assert int(header_pixels(buf.getvalue())) == 3 * 30 * 40


@pytest.mark.parametrize("payload, expected", [
    (b"\x89PNG\r\n\x1a\n", NO_SIZE),  # too short for an IHDR
    (b"GIF89a\x01", NO_SIZE), (b"BM\x00", NO_SIZE), (b"RIFF\0\0\0\0WEBPVP8Z", NO_SIZE),
    (b"abc", NOT_AN_IMAGE), (b"", NOT_AN_IMAGE), (b"plain text, longer than a header", NOT_AN_IMAGE),
])
def test_header_pixels_of_short_or_unknown_payloads(payload, expected):
    assert int(header_pixels(payload)) == expected


def huge_headers():
    """Tiny payloads whose headers declare far more than 50 MP (built by hand)."""
    le16, le32 = (lambda v: v.to_bytes(2, "little")), (lambda v: v.to_bytes(4, "little"))
    gif = b"GIF89a" + le16(20000) + le16(20000) + b"\x00\x00\x00" + b"\x3b"
    # A 10x10 screen with a colour table, an extension, a tiny frame, then a frame
    # declaring 20000x20000: TF's decoder sizes its output by the largest frame.
    frame = (lambda w, h: b"\x2c" + le16(0) * 2 + le16(w) + le16(h) + b"\x00"
             + b"\x02\x02\x4c\x01\x00")
    gif_frames = (b"GIF89a" + le16(10) + le16(10) + b"\x80\x00\x00" + b"\0" * 6
                  + b"\x21\xf9\x04\x00\x00\x00\x00\x00" + frame(2, 2) + frame(20000, 20000)
                  + b"\x3b")
    bmp = (b"BM" + le32(0) + le32(0) + le32(54) + le32(40) + le32(16000) + le32(16000)
           + le16(1) + le16(24) + b"\0" * 24)
    bmp_top_down = bmp[:22] + (2**32 - 16000).to_bytes(4, "little") + bmp[26:]
    vp8 = b"\x00\x00\x00\x9d\x01\x2a" + le16(16383) + le16(16383)
    webp = b"RIFF" + le32(4 + 8 + len(vp8)) + b"WEBP" + b"VP8 " + le32(len(vp8)) + vp8
    bits = (16383 - 1) | ((16383 - 1) << 14)
    webp_lossless = b"RIFF" + le32(30) + b"WEBPVP8L" + le32(5) + b"\x2f" + le32(bits)
    webp_extended = (b"RIFF" + le32(30) + b"WEBPVP8X" + le32(10) + b"\0" * 4
                     + (16383).to_bytes(3, "little") * 2)
    return {"gif": (gif, 400_000_000), "gif_frames": (gif_frames, 400_000_004), "bmp": (bmp, 256_000_000),
            "bmp_top_down": (bmp_top_down, 256_000_000), "webp": (webp, 16383**2),
            "webp_lossless": (webp_lossless, 16383**2), "webp_extended": (webp_extended, 16384**2)}


@pytest.mark.parametrize("name", sorted(huge_headers()))
def test_huge_headers_are_refused_before_decoding(exported, name):
    payload, pixels = huge_headers()[name]
    assert len(payload) < 100 and int(header_pixels(payload)) == pixels
    _, loaded, _ = exported
    good = encode(random_image(20, 20))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"input 1\] \[image header declares\] \[{pixels}\].*above the limit"):
        loaded.signatures["serving_default"](image_bytes=tf.constant([good, payload]))


def test_next_version(tmp_path):
    assert next_version(str(tmp_path / "missing")) == 1
    for name in ("1", "3", "notes"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert next_version(str(tmp_path)) == 4


def test_read_thresholds_matches_by_name(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"classes": ["b", "a"], "thresholds": [0.2, 0.7]}))
    np.testing.assert_allclose(read_thresholds(str(path), ["a", "b"]), [0.7, 0.2])
    with pytest.raises(ValueError, match=r"missing \['c'\]"):
        read_thresholds(str(path), ["a", "b", "c"])
    path.write_text(json.dumps({"classes": ["a"], "thresholds": [1.5]}))
    with pytest.raises(ValueError, match="outside"):
        read_thresholds(str(path), ["a"])


def test_layout_assets_and_class_names(exported, tmp_path):
    model, loaded, path = exported
    assert os.path.basename(path) == "1"
    with open(os.path.join(path, "assets", "label_map.txt"), encoding="utf-8") as f:
        assert f.read().splitlines() == NAMES
    meta = loaded.signatures["class_names"]()
    assert [n.decode() for n in meta["class_names"].numpy()] == NAMES
    np.testing.assert_allclose(meta["thresholds"], THRESHOLDS)
    # Versions: the next export goes to 2; an existing version is refused; no staging left.
    base = os.path.dirname(path)
    assert next_version(base) == 2
    with pytest.raises(FileExistsError):
        export_saved_model(model, NAMES, base, version=1)
    assert sorted(os.listdir(base)) == ["1"]


def test_three_signatures_agree_with_keras(exported):
    model, loaded, _ = exported
    images = [random_image(50, 90, seed=1), random_image(50, 90, seed=2)]
    encoded = [encode(images[0]), encode(images[1], "JPEG", quality=90)]
    expected = keras_scores(model, encoded)
    by_bytes = loaded.signatures["serving_default"](image_bytes=tf.constant(encoded))
    np.testing.assert_allclose(by_bytes["scores"], expected, atol=1e-5)
    decoded = tf.stack([decode_image(e) for e in encoded])
    by_tensor = loaded.signatures["image_tensor"](images=decoded)
    np.testing.assert_allclose(by_tensor["scores"], expected, atol=1e-5)
    examples = [build_example(encoded=e, image_format="png", height=50, width=90,
                              filename=f"img{i}", source_id=str(i)).SerializeToString()
                for i, e in enumerate(encoded)]
    by_example = loaded.signatures["tf_example"](examples=tf.constant(examples))
    np.testing.assert_allclose(by_example["scores"], expected, atol=1e-5)
    out = by_bytes
    assert out["labels"].dtype == tf.bool and out["top_classes"].dtype == tf.int32
    np.testing.assert_array_equal(out["labels"], expected >= np.array(THRESHOLDS))
    assert out["top_class_names"].shape == (2, 3) and out["patch_boxes"].shape == (2, 6, 4)
    assert out["context_boxes"].shape == (2, 6, 4) and out["patch_scores"].shape == (2, 6)
    names = np.array(NAMES)[out["top_classes"].numpy()]
    assert out["top_class_names"].numpy().astype(str).tolist() == names.tolist()


def truncated_jpeg():
    """A real JPEG cut in half: its header reads, its scan data ends early."""
    data = encode(random_image(64, 64, seed=3), "JPEG", quality=95)
    return data[:len(data) // 2]


@pytest.mark.parametrize("payload, message", [
    (b"this is not an image", r"\[input 1\] \[is not a JPEG/PNG/GIF/BMP/WebP image"),
    (b"abc", r"\[input 1\] \[is not a JPEG/PNG/GIF/BMP/WebP image: length\] \[3\]"),
    (b"", r"\[input 1\] \[is empty"),
    (b"\xff\xd8\xff\xe0 truncated jpeg", r"\[input 1\] \[.*holds no image size"),
    (truncated_jpeg(), r"\[input 1\] \[could not be decoded: .*damaged or truncated"),
    (b"GIF89a\x01", r"\[input 1\] \[.*holds no image size"),
])
def test_bad_bytes_give_clear_errors(exported, payload, message):
    _, loaded, _ = exported
    good = encode(random_image(20, 20))
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures["serving_default"](image_bytes=tf.constant([good, payload, good]))
    # The loaded model still serves after a rejected request.
    again = loaded.signatures["serving_default"](image_bytes=tf.constant([good]))
    assert again["scores"].shape == (1, 5)


def test_empty_batch_and_empty_tensor_are_rejected(exported):
    _, loaded, _ = exported
    # Repeated: graph ops without a dependency run in any order, and the per-element checks
    # (an argmax over the batch) once raced the empty-batch check.
    for _ in range(25):
        with pytest.raises(tf.errors.InvalidArgumentError, match="image_bytes: empty batch"):
            loaded.signatures["serving_default"](image_bytes=tf.constant([], tf.string))
        with pytest.raises(tf.errors.InvalidArgumentError, match="examples: empty batch"):
            loaded.signatures["tf_example"](examples=tf.constant([], tf.string))
    with pytest.raises(tf.errors.InvalidArgumentError, match="height and width must be > 0"):
        loaded.signatures["image_tensor"](images=tf.zeros([1, 0, 8, 3], tf.uint8))

def test_bad_records_and_tensors_are_named(exported):
    _, loaded, _ = exported
    good = build_example(encoded=encode(random_image(20, 20)), image_format="png", height=20,
                         width=20, filename="good.png", source_id="1").SerializeToString()
    no_image = tf.train.Example(features=tf.train.Features(feature={
        "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x.png"]))}))
    for bad in (no_image.SerializeToString(), b"not a proto"):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=r"\[record 1\] \[is not a serialized tf.Example with an "
                                 r"image/encoded"):
            loaded.signatures["tf_example"](examples=tf.constant([good, bad, good]))
    garbage = build_example(encoded=b"GARBAGE!", image_format="png", height=1, width=1,
                            filename="broken.png", source_id="9").SerializeToString()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[record 1 broken.png\] \[is not"):
        loaded.signatures["tf_example"](examples=tf.constant([good, garbage]))
    cut = build_example(encoded=truncated_jpeg(), image_format="jpeg", height=64, width=64,
                        filename="cut.jpg", source_id="2").SerializeToString()
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"\[record 1 cut.jpg\] \[could not be decoded"):
        loaded.signatures["tf_example"](examples=tf.constant([good, cut]))
    rgba = np.zeros([2, 8, 8, 4], np.uint8)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"expected uint8 \[N, H, W, 3\] \(RGB\), got shape\] \[2 8 8 4\]"):
        loaded.signatures["image_tensor"](images=tf.constant(rgba))


def test_huge_png_is_refused_before_decoding(exported):
    _, loaded, _ = exported
    # A real 12000x12000 PNG (1-bit, so it is small to build); 144 MP > the 50 MP cap.
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, format="PNG")
    with pytest.raises(tf.errors.InvalidArgumentError, match="144000000.*above the limit"):
        loaded.signatures["serving_default"](image_bytes=tf.constant([buf.getvalue()]))


def test_fresh_tensorflow_only_process_matches_keras(exported, coco_real, tmp_path):
    model, _, path = exported
    files = sorted(glob.glob(os.path.join(coco_real, "coco_tiny", "train2017", "*.jpg")))[:2]
    script = textwrap.dedent(f"""
        import sys, numpy as np, tensorflow as tf
        loaded = tf.saved_model.load({path!r})
        data = [open(f, "rb").read() for f in {files!r}]
        out = loaded.signatures["serving_default"](image_bytes=tf.constant(data))
        assert not [m for m in sys.modules if m.startswith("scdnn_tf")], "scdnn_tf imported"
        np.save({str(tmp_path / "scores.npy")!r}, out["scores"].numpy())
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH="")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=str(tmp_path), env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = keras_scores(model, [open(f, "rb").read() for f in files])
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), expected, atol=1e-5)


def test_saved_model_cli_lists_predict_signatures(exported):
    _, _, path = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if not os.path.exists(cli):
        pytest.skip(f"saved_model_cli not found next to {sys.executable}")
    proc = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    blocks = dict(re.findall(r"signature_def\['([^']+)'\]:(.*?)Method name is: ", proc.stdout,
                             re.S))
    methods = dict(re.findall(r"signature_def\['([^']+)'\]:.*?Method name is: (\S*)",
                              proc.stdout, re.S))
    for name in ("serving_default", "image_tensor", "tf_example", "class_names"):
        assert methods.get(name) == "tensorflow/serving/predict", (name, methods)
    assert "inputs['image_bytes']" in blocks["serving_default"]
    assert "inputs['examples']" in blocks["tf_example"]
    assert "outputs['top_class_names']" in blocks["serving_default"]


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    dict(relation="attention"), dict(context_scales=(1.5, 2.5, 4.0)), dict(global_patch=True)],
    ids=["relation", "context_scales", "global_patch"])
def test_export_round_trip_with_each_option(options, tmp_path):
    model = SCDNN(len(NAMES), backbone="small", image_size=64, fpn_channels=16, fc_units=32,
                  anchor_sizes=(8, 16, 32, 64), num_patches=6, **options)
    model(tf.zeros([1, 64, 64, 3]))
    loaded = tf.saved_model.load(export_saved_model(model, NAMES, str(tmp_path), THRESHOLDS))
    encoded = [encode(random_image(40, 70, seed=3)), encode(random_image(64, 64, seed=4))]
    out = loaded.signatures["serving_default"](image_bytes=tf.constant(encoded))
    np.testing.assert_allclose(out["scores"], keras_scores(model, encoded), atol=1e-5)
    assert ("context_weights" in out) == ("context_scales" in options)
    if "context_scales" in options:
        images = tf.stack([resize_image(decode_image(e), 64) for e in encoded])
        expected = model(images)
        assert out["context_weights"].shape == (2, 6, 3)
        np.testing.assert_allclose(out["context_weights"], expected["context_weights"], atol=1e-5)
        np.testing.assert_allclose(out["patch_context_scale"], expected["patch_context_scale"],
                                   atol=1e-4)
