"""A full disk while a run writes: one line naming the folder, the step and the newest good
checkpoint, a dedicated exit status, and no temporary files left.

The disks are small tmpfs mounts: the tests need root (as CI runs) and skip otherwise.
"""

import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from scdnn_tf.core import checkpoints, restore
from scdnn_tf.data.label_map import write_label_map
from scdnn_tf.engine.trainer import run_training
from scdnn_tf.evaluation.evaluator import run_evaluation
from scdnn_tf.utils import files

from helpers import CLASSES, REPO_ROOT, child_env, tiny_config, tiny_flags, write_tiny_dataset


@pytest.fixture
def small_disk(tmp_path):
    """make(size) -> a folder on a tmpfs of `size` ("5m", "256k")."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounts = []

    def make(size):
        folder = tmp_path / f"disk{len(mounts)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(folder)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounts.append(folder)
        return folder

    yield make
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _fill(folder):
    """Fills the disk holding `folder` (a filler file takes every free block)."""
    with open(folder / ".filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def _run_cli(module, *args):
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=child_env(), timeout=600)
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(errors) == 1, proc.stderr[-3000:]
    return proc.returncode, errors[0]


def _saved_run(model_dir):
    """A model_dir with config, label map and one checkpoint (no training needed)."""
    config = tiny_config("/nowhere", model_dir)
    config.write(str(model_dir))
    write_label_map(os.path.join(model_dir, restore.LABEL_MAP_NAME), CLASSES)
    _, manager, _ = restore.build_and_restore(config, len(CLASSES), tf.distribute.get_strategy())
    return manager.save(checkpoint_number=2)


def test_guard_names_dir_step_and_removes_partial_saves(small_disk, tmp_path):
    disk = small_disk("256k")
    (disk / "ckpt-7_temp").mkdir()
    (disk / "ckpt-7_temp" / "part-00000").write_bytes(b"x" * 1000)
    with pytest.raises(files.DiskFullError) as e:
        with checkpoints.disk_full_guard(str(disk), lambda: 7):
            with open(disk / "big", "wb") as f:
                f.write(b"\0" * 400_000)
    message = str(e.value)
    assert message.startswith(f"no space left on device in --model_dir={disk} at step 7 ")
    assert "removed the partial ckpt-7_temp" in message
    assert "no checkpoint was written yet" in message
    assert not (disk / "ckpt-7_temp").exists()
    with pytest.raises(ZeroDivisionError):  # anything else passes through
        with checkpoints.disk_full_guard(str(disk)):
            raise ZeroDivisionError


@pytest.mark.slow
@pytest.mark.spawns
def test_train_on_a_full_disk_is_one_line_and_resumes(small_disk, tmp_path):
    data = write_tiny_dataset(tmp_path / "data", num_train=8, num_val=2)
    run = small_disk("5m") / "run"  # one checkpoint (~3 MB) fits, the second does not
    flags = [*tiny_flags(data, run), "--train_steps=4", "--checkpoint_every=2"]
    code, error = _run_cli("scdnn_tf.train", *flags)
    assert code == files.DISK_FULL_EXIT, error
    assert f"no space left on device in --model_dir={run} at step 4" in error
    assert f"the newest good checkpoint is {run}/ckpt-2 (step 2)" in error
    left = sorted(os.listdir(run))
    assert not [n for n in left if "ckpt-4" in n or "tmp" in n], left
    # Nothing was damaged: the same command on a copy with room resumes from step 2.
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    flags = [*tiny_flags(data, copy), "--train_steps=4", "--checkpoint_every=2"]
    proc = subprocess.run([sys.executable, "-m", "scdnn_tf.train", *flags], capture_output=True,
                          text=True, cwd=REPO_ROOT, env=child_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "restored" in proc.stderr and f"{copy}/ckpt-2" in proc.stderr
    assert os.path.exists(copy / "ckpt-4.index")


def test_run_files_on_a_full_disk_before_any_step(small_disk, tmp_path):
    data = write_tiny_dataset(tmp_path / "data", num_train=2, num_val=1)
    disk = small_disk("64k")
    _fill(disk)
    with pytest.raises(files.DiskFullError) as e:
        run_training(tiny_config(data, disk / "run"))
    assert f"in --model_dir={disk}/run (writing" in str(e.value)
    assert "no checkpoint was written yet" in str(e.value)
    assert [n for n in os.listdir(disk / "run") if n.endswith(".tmp") or "lock" in n] == []


def test_metrics_json_on_a_full_disk(small_disk):
    run = small_disk("8m") / "run"
    data = write_tiny_dataset(run.parent / "data", num_train=1, num_val=2)
    _saved_run(run)
    config_path = run / "config.json"
    config_path.write_text(config_path.read_text().replace("/nowhere", data))
    _fill(run)
    with pytest.raises(files.DiskFullError, match=f"no space left on device writing "
                                                  f"{run}/metrics.json"):
        run_evaluation(str(run))
    assert not [n for n in os.listdir(run) if "metrics" in n]


@pytest.mark.slow
@pytest.mark.spawns
def test_export_on_a_full_disk_leaves_no_partial_version(small_disk, tmp_path):
    checkpoint = _saved_run(tmp_path / "run")
    export_dir = small_disk("256k") / "served"
    code, error = _run_cli("scdnn_tf.export", f"--model_dir={tmp_path}/run",
                           f"--export_dir={export_dir}")
    assert code == files.DISK_FULL_EXIT, error
    assert (f"no space left on device writing the SavedModel of {checkpoint} into "
            f"--export_dir={export_dir} (version 1); the partial export was removed") in error
    assert os.listdir(export_dir) == []
