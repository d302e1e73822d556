"""Expected user errors from the CLIs: one line naming the item, non-zero exit, no traceback."""

import re
import subprocess
import sys

import pytest

from helpers import REPO_ROOT, child_env, tiny_flags, write_tiny_dataset

pytestmark = pytest.mark.spawns


def run_cli(module, *args):
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=child_env(), timeout=300)
    return proc.returncode, proc.stderr


def assert_one_line_error(code, stderr, *needles):
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.mark.slow
def test_train_names_the_bad_flag(tmp_path):
    data_dir = write_tiny_dataset(tmp_path / "data", num_train=2, num_val=1)
    code, err = run_cli("scdnn_tf.train", *tiny_flags(data_dir, tmp_path / "run"),
                        f"--train_pattern={tmp_path}/nothing-*")
    assert_one_line_error(code, err, "--train_pattern", "nothing-*")


@pytest.mark.slow
def test_train_names_each_damaged_checkpoint(tmp_path):
    data_dir = write_tiny_dataset(tmp_path / "data", num_train=2, num_val=1)
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt-5.data-00000-of-00001").write_bytes(b"\0" * 10)
    code, err = run_cli("scdnn_tf.train", *tiny_flags(data_dir, run))
    assert_one_line_error(code, err, "ckpt-5", "none reads completely")


@pytest.mark.slow
def test_evaluate_without_model_dir_names_the_flag():
    code, err = run_cli("scdnn_tf.evaluate")
    assert_one_line_error(code, err, "--model_dir is required")


@pytest.mark.slow
def test_export_of_a_folder_that_is_no_run_names_it(tmp_path):
    code, err = run_cli("scdnn_tf.export", f"--model_dir={tmp_path}",
                        f"--export_dir={tmp_path}/out")
    assert_one_line_error(code, err, "config.json", str(tmp_path))


@pytest.mark.slow
def test_traceback_flag_shows_it(tmp_path):
    code, err = run_cli("scdnn_tf.evaluate", "--traceback")
    assert code != 0 and "Traceback" in err and "--model_dir is required" in err


@pytest.mark.slow
def test_converter_errors_are_one_line(tmp_path):
    code, err = run_cli("data_tools.coco_to_tfrecord", f"--annotations={tmp_path}/none.json",
                        f"--image_dir={tmp_path}", f"--output_prefix={tmp_path}/out/train")
    assert_one_line_error(code, err, "none.json")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"not an image")
    (tmp_path / "instances.json").write_text(
        '{"images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}], '
        '"annotations": [], "categories": [{"id": 1, "name": "cat"}]}')
    code, err = run_cli("data_tools.coco_to_tfrecord", f"--annotations={tmp_path}/instances.json",
                        f"--image_dir={tmp_path}/images", f"--output_prefix={tmp_path}/out/train",
                        "--num_workers=1")
    assert_one_line_error(code, err, "no image was written")


@pytest.mark.slow
def test_training_console_is_one_line_per_interval_and_nothing_else(tmp_path):
    data_dir = write_tiny_dataset(tmp_path / "data", num_train=4, num_val=2)
    code, err = run_cli("scdnn_tf.train", *tiny_flags(data_dir, tmp_path / "run"),
                        "--train_steps=2", "--strategy=one_device", "--backbone=resnext50_32x4d")
    assert code == 0, err[-3000:]
    lines = err.splitlines()
    # Only the package's own log lines (absl format), nothing from TF / Keras internals:
    # no start-up notes, no retracing warnings, no UserWarnings.
    ours = re.compile(r"^[IWE]\d{4} [\d:.]+ +\d+ (trainer|callbacks|train|precision)\.py:\d+\] ")
    assert lines and all(ours.match(line) for line in lines), "\n".join(lines)[-3000:]
    steps = [line for line in lines if re.search(r"\] step \d+/2 ", line)]
    assert len(steps) == 2 and all(re.search(r"img/s  ETA \d+s$", s) for s in steps), steps
