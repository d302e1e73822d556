"""The third bad-input catalogue through the CLIs: a record failing a check inside the input
pipeline, a malformed side file, an unwritable output: one line, exit 2, no traceback."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from scdnn_tf.core import restore
from scdnn_tf.data.label_map import write_label_map
from scdnn_tf.data.records import build_example

from helpers import CLASSES, REPO_ROOT, child_env, tiny_config, tiny_flags

pytestmark = [pytest.mark.slow, pytest.mark.spawns]


def run_cli(module, *args):
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=child_env(), timeout=600)
    return proc.returncode, proc.stderr


def one_error_line(code, stderr):
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr and "flags:" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


def _png(color):
    buf = io.BytesIO()
    image = np.full((32, 32, 3), 128, np.uint8)
    image[8:24, 8:24] = color
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


def write_records(path, objects, prefix):
    """One record per entry of `objects` = [(class, stored name)] (one box each)."""
    with tf.io.TFRecordWriter(str(path)) as w:
        for i, (c, text) in enumerate(objects):
            w.write(build_example(
                encoded=_png((200, 30 * c, 30)), image_format="png", height=32, width=32,
                filename=f"{prefix}{i}.png", source_id=str(i), boxes=[[0.25, 0.25, 0.75, 0.75]],
                classes=[c], class_texts=[text]).SerializeToString())
    return str(path)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A model_dir (config, label map, one checkpoint) and its data folder."""
    root = tmp_path_factory.mktemp("run")
    good = [(i % 3, CLASSES[i % 3]) for i in range(6)]
    write_records(root / "val-00000-of-00001.tfrecord", good, "val")
    config = tiny_config(str(root), root / "run")
    config.write(config.model_dir)
    write_label_map(os.path.join(config.model_dir, restore.LABEL_MAP_NAME), CLASSES)
    _, manager, _ = restore.build_and_restore(config, len(CLASSES), tf.distribute.get_strategy())
    manager.save(checkpoint_number=1)
    return root


def test_train_record_outside_the_label_map_mid_run(tmp_path):
    # The first records pass the start check; record 5 uses a class the label map lacks.
    shard = write_records(tmp_path / "train-00000-of-00001.tfrecord",
                          [(0, "red"), (1, "green")] * 2 + [(0, "red"), (2, "blue")], "train")
    write_label_map(str(tmp_path / "label_map.txt"), ["red", "green"])
    code, err = run_cli("scdnn_tf.train", *tiny_flags(str(tmp_path), tmp_path / "run"),
                        "--train_steps=6", "--checkpoint_every=100")
    line = one_error_line(code, err)
    assert line.startswith("train: error: class index outside 0..1 (num_classes=2): 2 in record "
                           f"train5.png (source_id 5) at index 5 of shard {shard}"), line


def test_train_label_map_of_another_dataset_fails_before_the_model(tmp_path):
    shard = write_records(tmp_path / "train-00000-of-00001.tfrecord",
                          [(2, "blue"), (0, "red")], "train")
    write_label_map(str(tmp_path / "label_map.txt"), ["red", "green"])
    code, err = run_cli("scdnn_tf.train", *tiny_flags(str(tmp_path), tmp_path / "run"))
    line = one_error_line(code, err)
    assert f"--train_pattern={tmp_path}/train-*: class index outside 0..1 (num_classes=2): [2] " \
           f"in record train0.png (source_id 0) at index 0 of shard {shard}" in line
    assert not os.path.exists(tmp_path / "run")


def test_evaluate_records_with_other_class_names_mid_run(saved_run, tmp_path):
    records = [(i % 3, CLASSES[i % 3]) for i in range(5)] + [(1, "umbrella")]
    shard = write_records(tmp_path / "other-00000-of-00001.tfrecord", records, "other")
    code, err = run_cli("scdnn_tf.evaluate", f"--model_dir={saved_run}/run",
                        f"--eval_pattern={shard}")
    line = one_error_line(code, err)
    assert line.startswith(f"evaluate: error: class names stored in record other5.png "
                           f"(source_id 5) at index 5 of shard {shard} differ from the label "
                           "map: class indices 1 stored as umbrella but the label map names "
                           "them green"), line
    assert not os.path.exists(saved_run / "run" / "metrics.json")


def _blocker(path):
    """A plain file where a folder is expected."""
    path.write_text("x")
    return path


def test_evaluate_unwritable_thresholds_out_fails_before_evaluating(saved_run, tmp_path):
    blocker = _blocker(tmp_path / "file")
    code, err = run_cli("scdnn_tf.evaluate", f"--model_dir={saved_run}/run",
                        f"--thresholds_out={blocker}/t.json")
    line = one_error_line(code, err)
    assert line == (f"evaluate: error: --thresholds_out={blocker}/t.json: {blocker} is a file, "
                    "not a folder")
    assert "evaluating" not in err and not os.path.exists(saved_run / "run" / "metrics.json")


@pytest.mark.parametrize("tool", ["export", "predict"])
def test_truncated_thresholds_file(saved_run, tmp_path, tool):
    cut = tmp_path / "t.json"
    cut.write_text('{"classes": ["red", "green", "blue"], "thresholds": [0.5, ')
    image = tmp_path / "a.png"
    image.write_bytes(_png((200, 30, 30)))
    args = ([f"--export_dir={tmp_path}/served"] if tool == "export" else [str(image)])
    code, err = run_cli(f"scdnn_tf.{tool}", f"--model_dir={saved_run}/run",
                        f"--thresholds={cut}", *args)
    line = one_error_line(code, err)
    assert line == (f"{tool}: error: --thresholds={cut}: not valid JSON at line 1 column 59: "
                    "Expecting value")
    assert not os.path.exists(tmp_path / "served")


def test_export_dir_that_is_a_file_fails_before_loading(saved_run, tmp_path):
    blocker = _blocker(tmp_path / "served")
    code, err = run_cli("scdnn_tf.export", f"--model_dir={saved_run}/run",
                        f"--export_dir={blocker}")
    line = one_error_line(code, err)
    assert line == f"export: error: --export_dir={blocker}: is a file; give a folder"
