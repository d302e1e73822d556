"""predict: per-image labels, JSON, drawing, bad files, batching; the export + predict CLIs."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from scdnn_tf.serving.exporter import export_saved_model
from scdnn_tf.modeling.scdnn import SCDNN
from scdnn_tf.data.preprocess import decode_image
from scdnn_tf.data.orientation import exif_orientation
from scdnn_tf.serving.predictor import (Predictor, Result, list_images, make_result, predict_files,
                                 run_prediction)

NAMES = ["person", "car", "backpack"]
THRESHOLDS = [0.0, 0.5, 1.0]  # person always, backpack never: deterministic label lists
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(backbone="small", image_size=64, fpn_channels=16, fc_units=32,
            anchor_sizes=(8, 16, 32, 64), num_patches=6)


def write_png(path, seed, h=48, w=36):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    model = SCDNN(len(NAMES), **TINY)
    model(tf.zeros([1, 64, 64, 3]))
    path = export_saved_model(model, NAMES, str(tmp_path_factory.mktemp("export")), THRESHOLDS)
    return model, path


@pytest.fixture(scope="module")
def loaded(models):
    """The exported model loaded once (loading costs seconds)."""
    return Predictor.from_saved_model(models[1])


@pytest.fixture
def folder(tmp_path):
    """5 good PNGs (one in a subfolder), a text file named .jpg, an empty .png."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i in range(4):
        write_png(root / f"img{i}.png", i)
    write_png(root / "sub" / "img9.png", 9, 30, 80)
    (root / "broken.jpg").write_text("not an image")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("ignored: not an image extension")
    return root


def test_result_line_is_the_poster_format():
    result = Result("a.jpg", [("person", 0.9994), ("car", 0.989), ("backpack", 0.6041)], [], [])
    assert result.line() == "a.jpg: person 0.999, car 0.989, backpack 0.604"
    assert Result("b.jpg", [], [], []).line() == "b.jpg: (no label above threshold)"


def test_make_result_sorts_and_thresholds():
    predictor = Predictor(None, NAMES, [0.3, 0.3, 0.9])
    outputs = {"scores": np.array([[0.4, 0.8, 0.85]]), "top_scores": np.array([[0.85, 0.8]]),
               "top_class_names": np.array([[b"backpack", b"car"]], object),
               "patch_boxes": np.zeros([1, 2, 4]), "context_boxes": np.ones([1, 2, 4]),
               "patch_scores": np.array([[0.7, 0.0]]), "patch_valid": np.array([[True, False]])}
    result = make_result("x.png", outputs, 0, predictor)
    assert [n for n, _ in result.labels] == ["car", "person"]  # backpack 0.85 < 0.9
    assert result.top == [("backpack", 0.85), ("car", 0.8)]
    assert result.patches == [{"box": [0.0] * 4, "context_box": [1.0] * 4, "score": 0.7}]


def test_list_images(folder):
    files = list_images([str(folder), str(folder / "notes.txt")])
    names = [os.path.relpath(f, folder) for f in files]
    assert names == ["broken.jpg", "empty.png", "img0.png", "img1.png", "img2.png", "img3.png",
                     os.path.join("sub", "img9.png"), "notes.txt"]


def test_folder_with_bad_files_goes_on(models, folder, tmp_path):
    _, path = models
    predictor = Predictor.from_saved_model(path)
    assert predictor.class_names == NAMES
    paths = list_images([str(folder)]) + [str(tmp_path / "missing.png")]
    out, progress = io.StringIO(), io.StringIO()
    results, failures = predict_files(predictor, paths, batch_size=2, out=out,
                                      draw_dir=str(tmp_path / "drawn"), progress=progress)
    assert [os.path.basename(r.path) for r in results] == [
        "img0.png", "img1.png", "img2.png", "img3.png", "img9.png"]
    failed = {os.path.basename(p): e for p, e in failures}
    assert sorted(failed) == ["broken.jpg", "empty.png", "missing.png"]
    assert "not a JPEG/PNG" in failed["broken.jpg"] and "is empty" in failed["empty.png"]
    assert "cannot read" in failed["missing.png"]
    for r in results:  # person (threshold 0) always, backpack (threshold 1) never
        assert "person" in [n for n, _ in r.labels]
        assert "backpack" not in [n for n, _ in r.labels]
        assert [s for _, s in r.labels] == sorted((s for _, s in r.labels), reverse=True)
    lines = out.getvalue().splitlines()  # input order, errors included
    assert [line.split(":")[0] for line in lines] == paths
    assert [line for line in lines if "ERROR" in line][0].startswith(str(folder / "broken.jpg"))
    assert "5 images scored, 3 failed" in progress.getvalue()
    drawn = Image.open(tmp_path / "drawn" / "img9.png")
    assert drawn.size == (80, 30)  # the original image, not the model's 64x64 input


@pytest.mark.slow
def test_json_output_and_keras_predictor_agree(models, folder):
    model, path = models
    paths = [str(folder / f"img{i}.png") for i in range(3)]
    saved, keras_out = io.StringIO(), io.StringIO()
    predict_files(Predictor.from_saved_model(path), paths, 3, saved, as_json=True, progress=None)
    predict_files(Predictor.from_model(model, NAMES, THRESHOLDS), paths, 2, keras_out,
                  as_json=True, progress=None)
    a = [json.loads(line) for line in saved.getvalue().splitlines()]
    b = [json.loads(line) for line in keras_out.getvalue().splitlines()]
    assert [r["path"] for r in a] == paths and [r["path"] for r in b] == paths
    for x, y in zip(a, b):
        assert [n for n, _ in x["labels"]] == [n for n, _ in y["labels"]]
        np.testing.assert_allclose([s for _, s in x["labels"]], [s for _, s in y["labels"]],
                                   atol=1e-5)
        assert len(x["patches"]) == len(y["patches"]) and set(x["patches"][0]) == {
            "box", "context_box", "score"}


@pytest.mark.slow
def test_export_cli_from_model_dir_then_predict_cli(folder, tmp_path):
    """model_dir (training's own config/checkpoint code) -> export CLI -> predict CLI."""
    from scdnn_tf.core import restore
    from scdnn_tf.data.label_map import write_label_map
    from scdnn_tf.core.config import TrainConfig

    model_dir = str(tmp_path / "run")
    config = TrainConfig(model_dir=model_dir, image_size=64, fpn_channels=16, fc_units=32,
                         anchor_sizes=(8.0, 16.0, 32.0, 64.0), num_patches=6,
                         strategy="one_device")
    config.write(model_dir)
    write_label_map(os.path.join(model_dir, restore.LABEL_MAP_NAME), NAMES)
    model, manager, _ = restore.build_and_restore(config, len(NAMES), tf.distribute.get_strategy())
    manager.save()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    export_dir = str(tmp_path / "served")
    proc = subprocess.run([sys.executable, "-m", "scdnn_tf.export", f"--model_dir={model_dir}",
                           f"--export_dir={export_dir}"], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.listdir(export_dir) == ["1"]
    image = str(folder / "img0.png")
    proc = subprocess.run([sys.executable, "-m", "scdnn_tf.predict",
                           f"--saved_model={export_dir}/1", "--json", image,
                           str(folder / "broken.jpg")],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]  # one file failed
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert "error" in lines[1] and "1 images scored, 1 failed" in proc.stderr
    expected = Predictor.from_model(model, NAMES)([open(image, "rb").read()])["scores"][0]
    got = {n: s for n, s in lines[0]["labels"]}
    for c, name in enumerate(NAMES):
        if expected[c] >= 0.5:
            assert abs(got[name] - expected[c]) < 1e-5


def test_errors_say_what_is_wrong_never_a_tf_node(loaded, tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
        buf, "JPEG", quality=95)
    bad = {"cut.jpg": buf.getvalue()[:len(buf.getvalue()) // 2], "abc.png": b"abc",
           "text.jpg": b"not an image at all", "empty.png": b"",
           "huge.gif": b"GIF89a" + (20000).to_bytes(2, "little") * 2 + b"\0\0\0;"}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    write_png(tmp_path / "good.png", 1)
    paths = sorted(str(p) for p in tmp_path.iterdir())
    results, failures = predict_files(loaded, paths, batch_size=3, out=io.StringIO(),
                                      progress=None)
    assert [os.path.basename(r.path) for r in results] == ["good.png"]
    failed = {os.path.basename(p): e for p, e in failures}
    assert failed["cut.jpg"].startswith("could not be decoded")
    assert failed["abc.png"].startswith("is not a JPEG/PNG/GIF/BMP/WebP image: length 3")
    assert failed["text.jpg"].startswith("is not a JPEG/PNG")
    assert failed["empty.png"] == "is empty (0 bytes), not an image"
    assert failed["huge.gif"].startswith("image header declares 400000000 pixels")
    for error in failed.values():
        for noise in ("node", "{{", "Op:", "__inference", "input 0", "Graph execution"):
            assert noise not in error, error


def test_exit_code_counts_failures(models, loaded, folder, monkeypatch):
    _, path = models
    monkeypatch.setattr(Predictor, "from_saved_model", lambda p: loaded if p == path else None)
    progress = io.StringIO()
    good = [str(folder / "img0.png"), str(folder / "img1.png")]
    assert run_prediction(good, saved_model=path, out=io.StringIO(), progress=progress) == 0
    assert "2 images scored, 0 failed" in progress.getvalue()
    progress = io.StringIO()
    code = run_prediction(good + [str(folder / "broken.jpg")], saved_model=path, out=io.StringIO(),
               progress=progress)
    assert code == 1 and "2 images scored, 1 failed" in progress.getvalue()


@pytest.mark.parametrize("target", ["a_file", "a_file/sub"])
def test_unwritable_draw_folder_fails_at_start(tmp_path, folder, target):
    (tmp_path / "a_file").write_text("a file, not a folder")
    draw_dir = str(tmp_path / target)
    # A saved_model that does not exist: the draw folder is checked before loading it.
    with pytest.raises(ValueError, match=f"--draw={draw_dir}: cannot write images there"):
        run_prediction([str(folder)], saved_model=str(tmp_path / "missing_model"), draw_dir=draw_dir)


class _Recorder:
    """A stand-in serving function: records the decoded pixels the model would see."""

    def __init__(self):
        self.seen = []

    def __call__(self, encoded):
        n = int(encoded.shape[0])
        self.seen.extend(decode_image(e).numpy() for e in encoded)
        return {"scores": tf.fill([n, 3], 0.9), "top_scores": tf.fill([n, 1], 0.9),
                "top_class_names": tf.fill([n, 1], "person")}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_before_scoring(tmp_path, orientation):
    from PIL import ImageOps

    stored = np.random.default_rng(orientation).integers(0, 256, (12, 20, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, "JPEG", exif=exif.tobytes(), quality=95)
    data = path.read_bytes()
    assert exif_orientation(data) == orientation
    # Expected: TF's decode of the stored pixels, turned by Pillow's exif_transpose.
    reference = Image.fromarray(decode_image(data).numpy())
    reference.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(reference))
    recorder = _Recorder()
    results, failures = predict_files(Predictor(recorder, NAMES, [0.5] * 3), [str(path)],
                                      out=io.StringIO(), draw_dir=str(tmp_path / "drawn"),
                                      progress=None)
    assert len(results) == 1 and not failures
    np.testing.assert_array_equal(recorder.seen[0], expected)
    drawn = Image.open(tmp_path / "drawn" / "phone.png")
    assert drawn.size == (expected.shape[1], expected.shape[0])  # drawn upright too


def test_make_result_reports_the_chosen_context_with_several_scales():
    predictor = Predictor(None, NAMES, [0.5, 0.5, 0.5])
    outputs = {"scores": np.array([[0.4, 0.8, 0.2]]), "top_scores": np.array([[0.8]]),
               "top_class_names": np.array([[b"car"]], object),
               "patch_boxes": np.zeros([1, 2, 4]), "context_boxes": np.ones([1, 2, 4]),
               "patch_scores": np.array([[0.7, 0.6]]), "patch_valid": np.array([[False, True]]),
               "context_weights": np.array([[[0.5, 0.5], [0.25, 0.75]]]),
               "patch_context_scale": np.array([[2.0, 3.25]])}
    result = make_result("x.png", outputs, 0, predictor)
    assert result.patches == [{"box": [0.0] * 4, "context_box": [1.0] * 4, "score": 0.6,
                               "context_weights": [0.25, 0.75], "context_scale": 3.25}]
