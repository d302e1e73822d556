"""Crash safety: SIGKILL a real `python -m scdnn_tf.train` process, restart it, check the resume.

The training CLI runs in a subprocess on the tiny dataset of test_training.py (one device,
no evaluation). It is killed with SIGKILL twice at different moments and then run to
the end with the very same command:

1. mid-interval: after a checkpoint was written and training has logged later steps
   (those steps must be redone; the checkpoint must be the resume point);
2. at a checkpoint: as soon as the files of a new checkpoint begin to appear in
   model_dir (a temporary `ckpt-N_temp*` folder or `ckpt-N.index`), i.e. during or just
   after `CheckpointManager.save` (a race that may land either side of the state-file
   update, which is the point: both sides must be safe).

After every kill: every checkpoint the `checkpoint` state file lists reads back
completely (all tensors, checksummed reads) and holds the step its name says;
`tf.train.latest_checkpoint` names one of them. After a restart: the log says it starts
at the latest checkpoint's step and the first step it logs (and the first TensorBoard
step of its event file) is the next one. At the end: the last checkpoint is at
`train_steps`, the checkpoint the first kill left behind is byte-identical (nothing
before it was rewritten or lost), and the TensorBoard loss covers every step.
"""

import glob
import hashlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from helpers import REPO_ROOT, child_env, read_log, tiny_flags, write_tiny_dataset

pytestmark = pytest.mark.spawns

TRAIN_STEPS, CHECKPOINT_EVERY = 30, 5
TIMEOUT = 300  # seconds for any one wait: a start-up (TF import, tracing) takes ~30 s here
STEP_LINE = re.compile(r"step (\d+)/%d " % TRAIN_STEPS)
START_LINE = re.compile(r"starting at step (\d+) of %d" % TRAIN_STEPS)
ITERATIONS = "optimizer/iteration/.ATTRIBUTES/VARIABLE_VALUE"


def start(command, log_path, env=None):
    """Starts `command` with stdout+stderr (absl logs) appended to `log_path`."""
    log = open(log_path, "ab")  # noqa: SIM115 (closed by the child's exit; we only poll)
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                            env=env or child_env())
    log.close()
    return proc


def wait_until(proc, log_path, condition, what, timeout=TIMEOUT, poll=0.005):
    """Polls `condition()` until true; fails (killing `proc`) on timeout or early exit."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before {what}:\n"
                        + read_log(log_path)[-3000:])
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"timed out after {timeout} s waiting for {what}:\n"
                        + read_log(log_path)[-3000:])
        time.sleep(poll)


def kill9(proc):
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def checkpoint_number(path):
    return int(re.search(r"ckpt-(\d+)$", path).group(1))


def assert_checkpoints_intact(model_dir):
    """Every listed checkpoint reads back whole and holds its step; returns the latest step."""
    state = tf.train.get_checkpoint_state(model_dir)
    assert state is not None, f"no checkpoint state in {model_dir}"
    listed = list(state.all_model_checkpoint_paths)
    latest = tf.train.latest_checkpoint(model_dir)
    assert latest in listed, (latest, listed)
    for path in listed:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)  # every tensor: a truncated .data file fails here
        assert int(reader.get_tensor(ITERATIONS)) == checkpoint_number(path), path
    return checkpoint_number(latest)


def file_digest(prefix):
    digest = hashlib.sha256()
    for path in sorted(glob.glob(prefix + ".*")):
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def logged_steps(text):
    return [int(s) for s in STEP_LINE.findall(text)]


def loss_steps_by_pid(model_dir):
    """{pid: sorted steps of the `loss` scalar} per event file of model_dir/train."""
    out = {}
    for path in glob.glob(os.path.join(model_dir, "train", "events.out.tfevents.*")):
        pid = int(path.split(".")[-3])  # events.out.tfevents.TIME.HOST.PID.N.v2
        out[pid] = sorted(event.step for event in tf.compat.v1.train.summary_iterator(path)
                          if any(v.tag == "loss" for v in event.summary.value))
    return out


def new_checkpoint_files(model_dir, after):
    """True when any file or folder of a checkpoint numbered > `after` exists."""
    numbers = [int(m.group(1)) for m in (re.match(r"ckpt-(\d+)", n) for n in os.listdir(model_dir))
               if m]
    return any(n > after for n in numbers)


@pytest.mark.slow
def test_sigkill_and_restart_resumes_from_last_intact_checkpoint(tmp_path):
    data_dir = write_tiny_dataset(tmp_path / "data")
    model_dir = str(tmp_path / "run")
    command = [sys.executable, "-m", "scdnn_tf.train", *tiny_flags(data_dir, model_dir),
               f"--train_steps={TRAIN_STEPS}", f"--checkpoint_every={CHECKPOINT_EVERY}",
               "--keep_checkpoints=100", "--strategy=one_device"]
    runs = []  # (process, log path)

    def launch():
        log_path = str(tmp_path / f"log{len(runs)}.txt")
        runs.append((start(command, log_path), log_path))
        return runs[-1]

    def saved_steps(log_path):
        return [int(s) for s in re.findall(r"step (\d+): checkpoint", read_log(log_path))]

    # 1. Killed mid-interval: a checkpoint exists and later steps have run.
    proc, log = launch()
    wait_until(proc, log, lambda: saved_steps(log) and
               max(logged_steps(read_log(log))) > max(saved_steps(log)) and
               max(logged_steps(read_log(log))) % CHECKPOINT_EVERY,
               "a step past a checkpoint")
    kill9(proc)
    first_kill = assert_checkpoints_intact(model_dir)
    assert first_kill >= CHECKPOINT_EVERY and first_kill in saved_steps(log)
    assert max(logged_steps(read_log(log))) > first_kill
    kept = file_digest(os.path.join(model_dir, f"ckpt-{first_kill}"))

    # 2. Restarted: it resumes at that checkpoint; killed as a new checkpoint appears.
    proc, log = launch()
    wait_until(proc, log, lambda: new_checkpoint_files(model_dir, first_kill),
               "a new checkpoint's files", poll=0.001)
    kill9(proc)
    text = read_log(log)
    assert [int(s) for s in START_LINE.findall(text)] == [first_kill]
    assert logged_steps(text)[0] == first_kill + 1
    second_kill = assert_checkpoints_intact(model_dir)
    assert second_kill >= first_kill

    # 3. Restarted again: runs to the end.
    proc, log = launch()
    assert proc.wait(timeout=TIMEOUT) == 0, read_log(log)[-3000:]
    text = read_log(log)
    assert [int(s) for s in START_LINE.findall(text)] == [second_kill]
    assert logged_steps(text) == list(range(second_kill + 1, TRAIN_STEPS + 1))
    assert assert_checkpoints_intact(model_dir) == TRAIN_STEPS
    assert file_digest(os.path.join(model_dir, f"ckpt-{first_kill}")) == kept

    # TensorBoard: the first run's steps up to its last checkpoint reached disk before
    # the kill; each restart's event file starts right after the checkpoint it resumed.
    by_pid = loss_steps_by_pid(model_dir)
    steps = [by_pid[p.pid] for p, _ in runs]
    assert set(range(1, first_kill + 1)) <= set(steps[0])
    # Each step's scalars are flushed before its log line is printed: no logged step is lost.
    for (_, log_path), tb_steps in zip(runs, steps):
        assert set(logged_steps(read_log(log_path))) == set(tb_steps), log_path
    assert not steps[1] or steps[1][0] == first_kill + 1
    assert steps[2] == list(range(second_kill + 1, TRAIN_STEPS + 1))
    assert set().union(*steps) == set(range(1, TRAIN_STEPS + 1))


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_the_current_step_and_the_restart_continues_from_it(tmp_path, signum, code):
    data_dir = write_tiny_dataset(tmp_path / "data")
    model_dir = str(tmp_path / "run")
    # No periodic checkpoint before the end: whatever is saved comes from the signal.
    command = [sys.executable, "-m", "scdnn_tf.train", *tiny_flags(data_dir, model_dir),
               f"--train_steps={TRAIN_STEPS}", "--checkpoint_every=1000", "--strategy=one_device"]
    log = str(tmp_path / "log0.txt")
    proc = start(command, log)
    wait_until(proc, log, lambda: len(logged_steps(read_log(log))) >= 3, "three logged steps")
    proc.send_signal(signum)
    assert proc.wait(timeout=TIMEOUT) == code, read_log(log)[-3000:]
    text = read_log(log)
    stopped = re.search(r"stopped by %s after step (\d+)" % signal.Signals(signum).name, text)
    assert stopped, text[-3000:]
    step = int(stopped.group(1))
    assert step == max(logged_steps(text)) and 3 <= step < TRAIN_STEPS
    assert assert_checkpoints_intact(model_dir) == step
    assert "Traceback" not in text

    log = str(tmp_path / "log1.txt")
    proc = start(command, log)
    assert proc.wait(timeout=TIMEOUT) == 0, read_log(log)[-3000:]
    text = read_log(log)
    assert [int(s) for s in START_LINE.findall(text)] == [step]
    assert logged_steps(text) == list(range(step + 1, TRAIN_STEPS + 1))
