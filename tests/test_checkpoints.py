"""Checkpoint layout and restore: name-keyed slots, fallback past damaged checkpoints."""

import os
import re
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from scdnn_tf.core import checkpoints

from scdnn_tf.engine import preemption

from scdnn_tf.engine import run_lock


def _model(frozen=(), loss_scale=False, ema=False):
    """Three Dense layers; `frozen` names are not trainable. Optimizer built (slots exist)."""
    model = keras.Sequential([keras.Input((3,))] + [
        keras.layers.Dense(4, name=name, trainable=name not in frozen) for name in ("a", "b", "c")],
        name="net")
    optimizer = keras.optimizers.SGD(momentum=0.9, use_ema=ema)
    if loss_scale:
        optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _fill(model, seed):
    """Distinct values in every model and optimizer variable (slots included)."""
    rng = np.random.RandomState(seed)
    for variable in model.variables + list(model.optimizer.variables):
        variable.assign(rng.uniform(1, 2, variable.shape).astype(variable.dtype))


def _save_three(tmp_path):
    model = _model()
    manager = tf.train.CheckpointManager(checkpoints.make_checkpoint(model), str(tmp_path),
                                         max_to_keep=None)
    for step in (1, 2, 3):
        _fill(model, step)
        manager.save(checkpoint_number=step)
    return model


def test_keys_are_names_not_positions():
    model = _model(loss_scale=True)
    keys = set(checkpoints.optimizer_variables(model.optimizer, model))
    assert {"net:a:kernel:momentum", "net:c:bias:momentum", "iteration",
            "loss_scale:dynamic_scale"} <= keys
    assert set(checkpoints.model_variables(model)) == {
        f"net:{n}:{w}" for n in "abc" for w in ("kernel", "bias")}


def test_slots_follow_their_variable_when_the_trainable_set_changes(tmp_path):
    # Saved with `a` frozen (slots for b, c), restored with `b` frozen (slots for a, c):
    # by position, a's slot would receive b's momentum.
    old = _model(frozen=("a",))
    _fill(old, 0)
    path = checkpoints.make_checkpoint(old).save(str(tmp_path / "ckpt"))
    saved = {k: v.numpy() for k, v in checkpoints.optimizer_variables(old.optimizer, old).items()}
    new = _model(frozen=("b",))
    notes = checkpoints.restore(new, path)
    state = checkpoints.optimizer_variables(new.optimizer, new)
    np.testing.assert_array_equal(state["net:c:kernel:momentum"].numpy(),
                                  saved["net:c:kernel:momentum"])
    np.testing.assert_array_equal(state["net:a:kernel:momentum"].numpy(), 0.0)  # new: fresh
    assert "net:a:kernel:momentum" in notes["missing"]
    assert "net:b:kernel:momentum" in notes["unused"]
    for layer_old, layer_new in zip(old.layers, new.layers):
        for w_old, w_new in zip(layer_old.weights, layer_new.weights):
            np.testing.assert_array_equal(w_old.numpy(), w_new.numpy())


def test_ema_turned_on_at_resume_starts_from_the_restored_weights(tmp_path):
    old = _model()
    _fill(old, 0)
    path = checkpoints.make_checkpoint(old).save(str(tmp_path / "ckpt"))
    new = _model(ema=True)
    checkpoints.restore(new, path)
    state = checkpoints.optimizer_variables(new.optimizer, new)
    np.testing.assert_array_equal(state["net:b:kernel:average"].numpy(),
                                  old.get_layer("b").kernel.numpy())


def test_loss_scale_wrapper_added_at_resume_keeps_the_inner_state(tmp_path):
    old = _model()
    _fill(old, 0)
    path = checkpoints.make_checkpoint(old).save(str(tmp_path / "ckpt"))
    new = _model(loss_scale=True)
    checkpoints.restore(new, path)
    assert int(new.optimizer.iterations.numpy()) == int(old.optimizer.iterations.numpy())
    state = checkpoints.optimizer_variables(new.optimizer, new)
    np.testing.assert_array_equal(
        state["net:a:bias:momentum"].numpy(),
        checkpoints.optimizer_variables(old.optimizer, old)["net:a:bias:momentum"].numpy())


def test_a_shape_mismatch_names_the_variable(tmp_path):
    path = checkpoints.make_checkpoint(_model()).save(str(tmp_path / "ckpt"))
    other = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="a"),
                              keras.layers.Dense(4, name="b"), keras.layers.Dense(4, name="c")],
                             name="net")
    other.compile(optimizer=keras.optimizers.SGD(momentum=0.9))
    other.optimizer.build(other.trainable_variables)
    with pytest.raises(checkpoints.CheckpointError, match=r"'net/a/kernel' has shape \(3, 4\)"):
        checkpoints.restore(other, path)


def test_missing_state_file_still_finds_the_newest_checkpoint(tmp_path):
    _save_three(tmp_path)
    os.remove(tmp_path / "checkpoint")
    assert checkpoints.find_restorable(str(tmp_path)) == str(tmp_path / "ckpt-3")


@pytest.mark.parametrize("damage, reason", [
    ("index", r"ckpt-3\.index is missing"),
    ("truncate", r"does not read completely"),
])
def test_damaged_newest_falls_back_and_is_moved_aside(tmp_path, damage, reason, caplog):
    _save_three(tmp_path)
    if damage == "index":
        os.remove(tmp_path / "ckpt-3.index")
    else:
        data = tmp_path / "ckpt-3.data-00000-of-00001"
        data.write_bytes(data.read_bytes()[:40])
    with caplog.at_level("WARNING"):
        assert checkpoints.find_restorable(str(tmp_path)) == str(tmp_path / "ckpt-2")
    assert any("ckpt-3" in r.getMessage() and
               re.search(reason, r.getMessage()) for r in caplog.records)
    assert not any(p.name.startswith("ckpt-3") for p in tmp_path.iterdir())
    assert any(p.name.startswith("ckpt-3") for p in (tmp_path / "damaged").iterdir())


def test_read_only_lookup_leaves_damaged_files_in_place(tmp_path):
    _save_three(tmp_path)
    os.remove(tmp_path / "ckpt-3.index")
    assert checkpoints.find_restorable(str(tmp_path), move_damaged=False).endswith("ckpt-2")
    assert (tmp_path / "ckpt-3.data-00000-of-00001").exists()


def test_no_readable_checkpoint_is_an_error_naming_each(tmp_path):
    _save_three(tmp_path)
    for step in (1, 2, 3):
        os.remove(tmp_path / f"ckpt-{step}.index")
    with pytest.raises(checkpoints.CheckpointError, match=r"none reads completely.*ckpt-3.*"
                       r"ckpt-2.*ckpt-1"):
        checkpoints.find_restorable(str(tmp_path))


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, caplog):
    import socket  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    live = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = tmp_path / run_lock.LOCK_NAME
    try:
        lock.write_text(f"{socket.gethostname()} {live.pid}\n")
        with pytest.raises(run_lock.LockedError, match=f"in use by the training process "
                           f"{live.pid} on {socket.gethostname()}"):
            run_lock.acquire(str(tmp_path))
        lock.write_text(f"{socket.gethostname()} {dead.pid}\n")
        with caplog.at_level("WARNING"), run_lock.locked(str(tmp_path)):
            assert lock.read_text().split() == [socket.gethostname(), str(os.getpid())]
        assert any("stale lock" in r.getMessage() for r in caplog.records)
        assert not lock.exists()  # released
        lock.write_text(f"otherhost {dead.pid}\n")  # another host's: cannot tell, refuse
        with pytest.raises(run_lock.LockedError, match="otherhost"):
            run_lock.acquire(str(tmp_path))
    finally:
        live.kill()
        live.wait()


def test_signal_watcher_records_the_signal_instead_of_dying():
    # Whatever handler was there is put back (a background job starts with SIGINT ignored).
    before = signal.getsignal(signal.SIGINT)
    with preemption.SignalWatcher() as watcher:
        assert signal.getsignal(signal.SIGINT) is not before
        os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt without it
        assert watcher.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before
    error = preemption.Preempted(7, signal.SIGTERM, "/m/ckpt-7")
    assert error.exit_code == 143 and "after step 7" in str(error)
