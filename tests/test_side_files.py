"""Side files given by flag: a malformed file is one line naming the flag, the path and the
position; outputs are checked for writability before any work; files are written whole."""

import json
import os

import pytest

from scdnn_tf.core.config import TrainConfig
from scdnn_tf.data.label_map import read_class_id_map
from scdnn_tf.engine.trainer import prepare_inputs
from scdnn_tf.serving.exporter import read_thresholds
from scdnn_tf.utils import files

from helpers import tiny_config, write_tiny_dataset


def _write(path, data):
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


@pytest.mark.parametrize("text, position", [
    ('{"classes": ["a", "b"], "thresholds": [0.5, ', "line 1 column 45: Expecting value"),
    ('{"classes": ["a", "b"],\n "thresholds": [0.5 0.2]}',
     "line 2 column 21: Expecting ',' delimiter"),
    ("", "line 1 column 1: Expecting value"),
])
def test_truncated_thresholds_name_flag_path_and_position(tmp_path, text, position):
    path = _write(tmp_path / "t.json", text)
    with pytest.raises(ValueError) as e:
        read_thresholds(path, ["a", "b"])
    assert str(e.value) == f"--thresholds={path}: not valid JSON at {position}"


@pytest.mark.parametrize("content, problem", [
    ({"classes": "ab", "thresholds": [0.5, 0.5]}, "expected a JSON object with a 'classes'"),
    ({"classes": ["a", "b"], "thresholds": [0.5, "x"]}, "thresholds[1] is not a number ('x')"),
    ({"classes": ["a", "b"], "thresholds": [0.5]}, "2 classes but 1 thresholds"),
    ({"classes": ["a", "c"], "thresholds": [0.5, 0.5]}, "missing ['b'], unknown ['c']"),
    ({"classes": ["a", "b"], "thresholds": [0.5, 1.5]}, "outside [0, 1] for ['b']"),
])
def test_thresholds_content_problems_name_the_flag(tmp_path, content, problem):
    path = _write(tmp_path / "t.json", json.dumps(content))
    with pytest.raises(ValueError) as e:
        read_thresholds(path, ["a", "b"])
    assert str(e.value).startswith(f"--thresholds={path}: ") and problem in str(e.value)


def test_missing_folder_and_non_utf8_files(tmp_path):
    with pytest.raises(ValueError, match=f"^--thresholds={tmp_path}/none.json: not found$"):
        read_thresholds(str(tmp_path / "none.json"), ["a"])
    with pytest.raises(ValueError, match=f"^--thresholds={tmp_path}: is a folder, not a file$"):
        read_thresholds(str(tmp_path), ["a"])
    path = _write(tmp_path / "latin1.json", b'{"classes":\n ["caf\xe9"]}')
    with pytest.raises(ValueError, match=r"not UTF-8 text at line 2 \(byte 18"):
        read_thresholds(path, ["a"])


def test_label_map_and_class_id_map_name_flag_and_line(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", num_train=2, num_val=1)
    config = tiny_config(data, tmp_path / "run")
    labels = _write(tmp_path / "labels.txt", b"red\ngr\xffeen\nblue\n")
    config.label_map = labels
    with pytest.raises(ValueError, match=f"^--label_map={labels}: not UTF-8 text at line 2 "):
        prepare_inputs(config)
    _write(tmp_path / "labels.txt", "red\n\nblue\n")
    with pytest.raises(ValueError, match=f"^--label_map={labels}: line 2 is empty"):
        prepare_inputs(config)
    _write(tmp_path / "labels.txt", "red\ngreen\nred\n")
    with pytest.raises(ValueError, match=r"duplicate class names \['red'\] \('red' on lines "
                                         r"\[1, 3\]\)"):
        prepare_inputs(config)
    config.label_map = f"{data}/label_map.txt"
    config.class_id_map = _write(tmp_path / "ids.txt", "1\n3\nseven\n")
    with pytest.raises(ValueError, match=f"^--class_id_map={config.class_id_map}: line 3 "
                                         "'seven' is not an integer id"):
        prepare_inputs(config)
    _write(tmp_path / "ids.txt", "1\n3\n1\n")
    with pytest.raises(ValueError, match="line 3 repeats id 1 of line 1"):
        read_class_id_map(config.class_id_map)


def test_records_for_another_label_map_fail_before_any_model(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", num_train=2, num_val=1)
    config = tiny_config(data, tmp_path / "run")
    config.label_map = _write(tmp_path / "two.txt", "red\ngreen\n")  # records use 3 classes
    with pytest.raises(ValueError, match=rf"^--(train|eval)_pattern={data}/(train|val)-\*: "
                                         r"class index outside 0\.\.1 \(num_classes=2\): \[2\] "
                                         r"in record .* at index \d of shard "):
        prepare_inputs(config)
    config.label_map = _write(tmp_path / "other.txt", "red\nblue\ngreen\n")
    with pytest.raises(ValueError, match="class names stored in record .* differ from the label "
                                         "map: class 1 stored as 'green' but the label map names "
                                         "it 'blue'"):
        prepare_inputs(config)
    assert not os.path.exists(tmp_path / "run")


def test_damaged_config_json_names_model_dir_file_and_position(tmp_path):
    config = tiny_config(str(tmp_path), tmp_path)
    config.write(str(tmp_path))
    text = (tmp_path / "config.json").read_text()
    _write(tmp_path / "config.json", text[: len(text) // 2])
    with pytest.raises(ValueError, match=f"^--model_dir={tmp_path}: {tmp_path}/config.json: not "
                                         r"valid JSON at line \d+ column \d+: "):
        TrainConfig.read(str(tmp_path))
    _write(tmp_path / "config.json", "[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object of flag values, got list"):
        TrainConfig.read(str(tmp_path))


def test_check_writable(tmp_path):
    blocker = _write(tmp_path / "file", "x")
    files.check_writable(str(tmp_path / "new" / "deeper" / "t.json"), "thresholds_out")
    assert not os.path.exists(tmp_path / "new")  # nothing made by the check
    assert os.listdir(tmp_path) == ["file"]
    with pytest.raises(ValueError, match=f"^--thresholds_out={blocker}/t.json: {blocker} is a "
                                         "file, not a folder$"):
        files.check_writable(f"{blocker}/t.json", "thresholds_out")
    with pytest.raises(ValueError, match="is a folder; give a file path"):
        files.check_writable(str(tmp_path), "thresholds_out")
    with pytest.raises(ValueError, match=f"^--export_dir={blocker}: is a file; give a folder$"):
        files.check_writable(blocker, "export_dir", folder=True)
    files.check_writable(str(tmp_path / "exports"), "export_dir", folder=True)


def test_write_atomically_keeps_the_old_file_on_error(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    files.write_json(str(path), {"a": 1})

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(files.DiskFullError, match=f"no space left on device writing {path}"):
        files.write_json(str(path), {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["metrics.json"]  # the temporary file is gone


@pytest.mark.spawns
def test_bad_flagfile_line_is_one_line_naming_file_and_line(tmp_path):
    import subprocess
    import sys

    from helpers import REPO_ROOT, child_env

    flagfile = _write(tmp_path / "run.flags", "--num_shards=2\n--num_shardz=3\n")
    bad_value = _write(tmp_path / "value.flags", "\n--num_shards=two\n")
    for args, expected in (
            ([f"--flagfile={flagfile}"], f"--flagfile={flagfile} line 2: Unknown command line "
                                         "flag 'num_shardz'"),
            ([f"--flagfile={bad_value}"], f"--flagfile={bad_value} line 2: flag "
                                          "--num_shards=two: "),
            ([f"--flagfile={tmp_path}/none.flags"], f"--flagfile={tmp_path}/none.flags: no such "
                                                    "file or directory")):
        proc = subprocess.run([sys.executable, "-m", "data_tools.coco_to_tfrecord", *args],
                              capture_output=True, text=True, cwd=REPO_ROOT, env=child_env(),
                              timeout=120)
        assert proc.returncode == 2, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"coco_to_tfrecord: error: {expected}"), line


def test_empty_label_map_and_config_values_of_the_wrong_kind(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", num_train=2, num_val=1)
    config = tiny_config(data, tmp_path / "run")
    config.label_map = _write(tmp_path / "empty.txt", "\n")
    with pytest.raises(ValueError, match=f"^--label_map={config.label_map}: no class name"):
        prepare_inputs(config)
    run = tmp_path / "old"
    tiny_config(data, run).write(str(run))
    values = json.loads((run / "config.json").read_text())
    for key, bad in (("image_size", "64"), ("augment", 1), ("anchor_sizes", ["8", 16])):
        _write(run / "config.json", json.dumps({**values, key: bad}))
        with pytest.raises(ValueError, match=f"^--model_dir={run}: {run}/config.json: '{key}' "
                                             "is .*, not a value of its kind"):
            TrainConfig.read(str(run))


def test_damaged_backbone_weights_name_the_flag(tmp_path):
    from scdnn_tf.core.builders import build_model

    path = _write(tmp_path / "small.weights.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    config = tiny_config(str(tmp_path), tmp_path / "run", backbone_weights=path)
    with pytest.raises(ValueError, match=f"^--backbone_weights={path}: not a readable weights "
                                         "file"):
        build_model(config, 3)
