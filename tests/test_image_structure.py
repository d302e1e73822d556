"""The structural image check vs TensorFlow's decoders, on a corpus of damaged files.

Property: every file the training decoder rejects is rejected by the check (no miss);
files it rejects that TensorFlow decodes (false alarms) stay few.
"""

import glob
import io
import json
import os
import pathlib
import struct
import zlib

import pytest
import tensorflow as tf
from PIL import Image

from data_tools import coco_to_tfrecord, image_checks, jpeg_structure, png_structure
from data_tools.inspect_tfrecord import iter_examples
from scdnn_tf.data import preprocess

import damage_corpus


def _tf_rejects(data: bytes) -> bool:
    """True if the training decoders fail: `decode_image` (evaluation, export, plain
    training) or, for JPEG, the augmented path's `decode_and_crop_jpeg` at 1/8 scale."""
    try:
        image = preprocess.decode_image(tf.constant(data))
        if data.startswith(b"\xff\xd8"):
            h, w = image.shape[:2]
            tf.io.decode_and_crop_jpeg(data, [0, 0, -(-h // 8), -(-w // 8)], channels=3,
                                       ratio=8)
    except tf.errors.InvalidArgumentError:
        return True
    return False


def _check_rejects(data: bytes, path) -> bool:
    """True if `load_image` (default check; its decode fallback included) rejects `data`."""
    path.write_bytes(data)
    return isinstance(image_checks.load_image(str(path)), image_checks.ImageProblem)


def _misses_and_false_alarms(corpus, tmp_path):
    misses, false_alarms = [], []
    for label, data in corpus:
        tf_says, check_says = _tf_rejects(data), _check_rejects(data, tmp_path / "x")
        if tf_says and not check_says:
            misses.append(label)
        if check_says and not tf_says:
            false_alarms.append(label)
    return misses, false_alarms


def test_intact_files_pass():
    for name, data in {**damage_corpus.jpeg_variants(), **damage_corpus.png_variants()}.items():
        assert not _tf_rejects(data), name
        assert image_checks.structure_problem(data, image_checks.sniff_format(data)) is None


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_every_file_tf_rejects_is_rejected(kind, tmp_path):
    variants = damage_corpus.jpeg_variants() if kind == "jpeg" else damage_corpus.png_variants()
    damage = damage_corpus.damaged_jpegs if kind == "jpeg" else damage_corpus.damaged_pngs
    corpus = [(f"{name}: {label}", bad) for name, data in variants.items()
              for label, bad in damage(data)]
    misses, false_alarms = _misses_and_false_alarms(corpus, tmp_path)
    rejected = sum(_tf_rejects(d) for _, d in corpus)
    assert rejected > len(corpus) // 3  # the corpus does exercise the decoder's errors
    assert misses == []
    assert len(false_alarms) <= 0.02 * len(corpus), false_alarms


def test_real_photos_damaged(coco_real, tmp_path):
    paths = sorted(glob.glob(os.path.join(coco_real, "**", "*.jpg"), recursive=True))[:3]
    corpus = [(f"{os.path.basename(p)}: {label}", bad) for p in paths
              for label, bad in damage_corpus.damaged_jpegs(pathlib.Path(p).read_bytes(),
                                                                per_class=3)]
    misses, false_alarms = _misses_and_false_alarms(corpus, tmp_path)
    assert misses == []
    assert len(false_alarms) <= 0.02 * len(corpus), false_alarms


def _baseline():
    return damage_corpus.jpeg_variants()["baseline_420"]


def test_exif_thumbnail_eoi_is_not_the_image_eoi():
    # The thumbnail's SOI..EOI is inside APP1: a file cut right after it has no image EOI
    # (a search for the first EOI would accept it; TensorFlow does not).
    data = damage_corpus.jpeg_variants()["exif_thumbnail"]
    cut = data[:data.index(b"\xff\xd9") + 2]
    assert len(cut) < len(data) // 2
    assert _tf_rejects(cut)
    assert "no EOI" in jpeg_structure.jpeg_problem(cut)


def test_eoi_replaced_by_garbage_is_rejected():
    # TensorFlow reads up to EOI and fails at the end of the data; Pillow's decode does not.
    data = _baseline()[:-2] + b"\x12\x34"
    assert _tf_rejects(data)
    assert "no EOI" in jpeg_structure.jpeg_problem(data)


def test_arithmetic_coding_is_not_covered():
    data = _baseline()
    segments, _ = damage_corpus.jpeg_segments(data)
    sof = next(start for marker, start, _ in segments if marker == 0xC0)
    arithmetic = data[:sof + 1] + b"\xc9" + data[sof + 2:]
    with pytest.raises(jpeg_structure.NotCovered):
        jpeg_structure.jpeg_problem(arithmetic)
    assert image_checks.structure_problem(arithmetic, "jpeg") == image_checks.DECODE_NEEDED


def test_huffman_code_space():
    two = bytes([2] + [0] * 15)  # codes 0, 1 of length 1: 1 is all ones
    assert "more codes" in jpeg_structure.huffman_table_problem(two, b"\0\1", dc=True)
    full = bytes([1, 2] + [0] * 14)  # 0, 10, 11: 11 is all ones
    assert jpeg_structure.huffman_table_problem(full, b"\0\1\2", dc=True) is not None
    ok = bytes([1, 1] + [0] * 14)  # 0, 10
    assert jpeg_structure.huffman_table_problem(ok, b"\0\1", dc=True) is None
    assert "DC symbol" in jpeg_structure.huffman_table_problem(ok, b"\0\x10", dc=True)
    assert jpeg_structure.huffman_table_problem(ok, b"\0\x10", dc=False) is None


def test_ihdr_and_row_layout():
    ihdr = struct.pack(">IIBBBBB", 5, 3, 8, 2, 0, 0, 0)
    assert png_structure.ihdr_problem(ihdr) is None
    rgb_4bit = struct.pack(">IIBBBBB", 5, 3, 4, 2, 0, 0, 0)
    assert "colour type 2 / bit depth 4" in png_structure.ihdr_problem(rgb_4bit)
    assert "size" in png_structure.ihdr_problem(struct.pack(">IIBBBBB", 0, 3, 8, 2, 0, 0, 0))
    assert png_structure.row_layout(5, 3, 8, 2, 0) == [(3, 15)]
    assert png_structure.row_layout(3, 1, 1, 0, 0) == [(1, 1)]
    # Adam7 on 3x3: passes 1 (1x1), 4 (1x1 at x=2), 5 (2x1 at y=2), 6 (1x2), 7 (3x1).
    assert png_structure.row_layout(3, 3, 8, 0, 1) == [(1, 1), (1, 1), (1, 2), (2, 1),
                                                       (1, 3)]


def test_image_data_filter_types():
    layout = [(2, 3)]
    assert png_structure.image_data_problem(b"\0abc\4def", layout) is None
    assert "filter type 5" in png_structure.image_data_problem(b"\0abc\5def", layout)
    assert "inflates to 7" in png_structure.image_data_problem(b"\0abc\4de", layout)
    assert png_structure.image_data_problem(b"\0abc\4defXX", layout) is None  # a warning


def test_inflate_errors_past_the_image_are_warnings():
    raw = bytes(range(200)) * 50
    stream = zlib.compress(raw)
    assert png_structure.inflate_image_data(stream, len(raw)) == (raw, None)
    bad_checksum = stream[:-1] + bytes([stream[-1] ^ 1])
    # zlib checks the checksum in the call that yields the last byte: fatal for libpng
    # when the image needs all of them, never reached when it needs fewer.
    assert "incorrect data check" in png_structure.inflate_image_data(bad_checksum, len(raw))[1]
    assert png_structure.inflate_image_data(bad_checksum, len(raw) - 1) == (raw, None)
    assert "ends early" in png_structure.inflate_image_data(stream[:-4], len(raw))[1]


def _png(mode="RGB"):
    buf = io.BytesIO()
    Image.new(mode, (32, 24), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_damaged_iend_rejected_by_structure_kept_by_decode(tmp_path):
    # A bad IEND CRC: Pillow decodes the pixels fine, TensorFlow's decoder fails.
    bad = bytearray(_png())
    bad[-1] ^= 0xFF
    bad = bytes(bad)
    assert _tf_rejects(bad)
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    (img_dir / "good.png").write_bytes(_png())
    (img_dir / "bad.png").write_bytes(bad)
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "good.png", "height": 24, "width": 32},
                   {"id": 2, "file_name": "bad.png", "height": 24, "width": 32}],
        "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    written = {}
    for check in image_checks.CHECKS:
        out = tmp_path / check / "c"
        summary = coco_to_tfrecord.convert(str(ann), str(img_dir), str(out), num_shards=1,
                                           image_check=check)
        written[check] = sorted(e["filename"].decode() for e in iter_examples(f"{out}-*"))
        if check == "structure":
            detail = summary.skips[image_checks.CORRUPT][0]
            assert "bad.png" in detail and "CRC mismatch in IEND" in detail
    assert written == {"structure": ["good.png"], "decode": ["bad.png", "good.png"]}


def test_unknown_check_name_is_an_error(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(_png())
    with pytest.raises(ValueError, match="check must be one of"):
        image_checks.load_image(str(path), check="fast")
    loaded = image_checks.load_image(str(path), check="decode")
    assert (loaded.width, loaded.height, loaded.image_format) == (32, 24, "png")
    assert loaded.encoded == _png()
