"""Training checkpoints: a name-keyed layout, integrity checks and a restore that falls back.

Layout: every model variable is saved under `variables/<variable path>` and every optimizer
variable under `optimizer/<model variable path>:<slot>` (`momentum`, `velocity`, `average`
for EMA, ...) or `optimizer/<name>` (`iteration`, `learning_rate`, and `loss_scale:<name>`
for the mixed-precision loss scale). Keys are names, never positions, so a slot is always
restored into the variable it belongs to, even when the set of trainable variables changes
between runs (`--freeze_stages`) or the optimizer gains a loss-scale wrapper
(`--mixed_precision`). (`/` in a variable path is written `:`.)

`find_restorable(model_dir)` picks the newest checkpoint that reads completely: every
`ckpt-N` named by the `checkpoint` state file or present on disk is a candidate, newest
first; a damaged one (missing `.index` or data shard, truncated data) is reported with its
reason and moved into `model_dir/damaged/` so that no later save writes over it.

`disk_full_guard(model_dir, step)` turns a full disk met while a run writes into
model_dir (a checkpoint save, event files, the run's side files) into one
`files.DiskFullError` naming model_dir, the step and the newest good checkpoint to
resume from, after removing what the interrupted save left (`ckpt-N_temp*`, a partial
`ckpt-N`, temporaries of the `checkpoint` state file).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from scdnn_tf.utils import files

_CKPT = re.compile(r"^ckpt-(\d+)(?:\.index|\.data-\d+-of-\d+)$")
DAMAGED_DIR = "damaged"


class CheckpointError(ValueError):
    """A checkpoint or model_dir that cannot be used; the message names the files."""


def _key(path: str) -> str:
    return path.replace("/", ":")


def _file_key(group: str, key: str) -> str:
    # tf.train.Checkpoint escapes "." in object names as "..".
    return f"{group}/{key.replace('.', '..')}/.ATTRIBUTES/VARIABLE_VALUE"


def model_variables(model: keras.Model) -> dict[str, keras.Variable]:
    """{key: variable} for every model variable (weights, BN statistics, seed states)."""
    out = {}
    for variable in model.variables:
        key = _key(variable.path)
        if key in out:
            raise ValueError(f"two model variables share the path {variable.path!r}: "
                             "give the layers unique names")
        out[key] = variable
    return out


def optimizer_variables(optimizer, model: keras.Model) -> dict[str, keras.Variable]:
    """{key: variable} for the optimizer's variables, slots keyed by their model variable.

    Keras names a slot `<model variable path with / as _>_<slot>`; the longest matching
    model variable path identifies its owner.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    bases = sorted(((v.path.replace("/", "_"), v.path) for v in model.variables),
                   key=lambda item: -len(item[0]))
    out = {}
    for variable in inner.variables:
        name = variable.name
        owner = next((path for base, path in bases if name.startswith(base + "_")), None)
        key = f"{_key(owner)}:{name[len(owner) + 1:]}" if owner else name
        if key in out:
            raise ValueError(f"two optimizer variables map to {key!r}")
        out[key] = variable
    if inner is not optimizer:  # LossScaleOptimizer: its own scale and counter
        own = {id(v) for v in inner.variables}
        for variable in optimizer.variables:
            if id(variable) not in own:
                out[f"loss_scale:{variable.name}"] = variable
    return out


def make_checkpoint(model: keras.Model) -> tf.train.Checkpoint:
    """A tf.train.Checkpoint writing the name-keyed layout of `model` and its optimizer."""
    return tf.train.Checkpoint(
        variables=tf.train.Checkpoint(**model_variables(model)),
        optimizer=tf.train.Checkpoint(**optimizer_variables(model.optimizer, model)))


def checkpoint_step(prefix: str) -> int:
    return int(re.search(r"ckpt-(\d+)$", prefix).group(1))


def candidates(model_dir: str) -> list[str]:
    """Checkpoint prefixes of model_dir, newest first: the state file's and any on disk."""
    steps = set()
    if tf.io.gfile.isdir(model_dir):
        for name in tf.io.gfile.listdir(model_dir):
            match = _CKPT.match(name.rstrip("/"))
            if match:
                steps.add(int(match.group(1)))
    try:
        state = tf.train.get_checkpoint_state(model_dir)
    except (tf.errors.OpError, ValueError):  # an unparsable state file: the disk decides
        state = None
    if state is not None:
        for path in list(state.all_model_checkpoint_paths) + [state.model_checkpoint_path]:
            match = re.search(r"ckpt-(\d+)$", path or "")
            if match:
                steps.add(int(match.group(1)))
    return [os.path.join(model_dir, f"ckpt-{step}") for step in sorted(steps, reverse=True)]


def damage(prefix: str) -> str | None:
    """Why the checkpoint at `prefix` cannot be restored, or None if every tensor reads."""
    if not tf.io.gfile.exists(prefix + ".index"):
        return f"{os.path.basename(prefix)}.index is missing"
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, IndexError, ValueError, OSError) as e:
        detail = getattr(e, "message", None) or str(e)
        return f"it does not read completely ({type(e).__name__}: {detail.splitlines()[0]})"
    return None


def holds_a_run(model_dir: str) -> bool:
    """True when model_dir has a run's config.json or any checkpoint file."""
    if not tf.io.gfile.isdir(model_dir):
        return False
    names = tf.io.gfile.listdir(model_dir)
    return "config.json" in names or any(n.startswith("ckpt-") for n in names)


def find_restorable(model_dir: str, move_damaged: bool = True) -> str | None:
    """The newest checkpoint of model_dir that reads completely (None for a new run).

    Damaged newer checkpoints are logged with their reason and (if `move_damaged`: the
    run's writer) moved to `model_dir/damaged/`. Raises CheckpointError when model_dir holds checkpoint files but
    none of them reads.
    """
    found = candidates(model_dir)
    bad = []
    for prefix in found:
        reason = damage(prefix)
        if reason is None:
            for damaged_prefix, why in bad:
                logging.warning("checkpoint %s is damaged (%s)%s; using %s", damaged_prefix,
                                why, f": moved to {DAMAGED_DIR}/" if move_damaged else "",
                                prefix)
                if move_damaged:
                    _move_aside(damaged_prefix)
            return prefix
        bad.append((prefix, reason))
    if bad:
        listing = "; ".join(f"{p}: {why}" for p, why in bad)
        raise CheckpointError(f"--model_dir={model_dir!r} holds checkpoints but none reads "
                              f"completely ({listing}); restore them from a backup or use a "
                              "new --model_dir")
    return None


def _move_aside(prefix: str) -> None:
    folder = os.path.join(os.path.dirname(prefix), DAMAGED_DIR)
    tf.io.gfile.makedirs(folder)
    for path in tf.io.gfile.glob(prefix + ".*"):
        tf.io.gfile.rename(path, os.path.join(folder, os.path.basename(path)), overwrite=True)


def write_state_file(model_dir: str, keep: list[str]) -> None:
    """Rewrites `model_dir/checkpoint` to list `keep` (oldest first, last = latest)."""
    if keep:
        tf.compat.v1.train.update_checkpoint_state(
            model_dir, keep[-1], all_model_checkpoint_paths=keep)


def restore(model: keras.Model, prefix: str) -> dict[str, list[str]]:
    """Assigns the checkpoint's values to `model` and its optimizer, matched by name.

    Every model variable must be in the checkpoint with its shape (else CheckpointError
    naming it). Optimizer variables absent from the checkpoint keep their initial values
    (EMA averages start from the restored weights); checkpoint optimizer values without a
    variable are left out. Returns {"missing": [...], "unused": [...]} optimizer keys.
    """
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    if not any(name.startswith("variables/") for name in shapes):
        raise CheckpointError(
            f"{prefix} was written in the positional layout of scdnn_tf 0.1 and cannot be "
            "resumed by this version; start a new --model_dir (the weights can be read with "
            "tf.train.Checkpoint(model=..., optimizer=...))")
    for key, variable in model_variables(model).items():
        name = _file_key("variables", key)
        if name not in shapes:
            raise CheckpointError(f"{prefix} has no value for model variable {variable.path!r}")
        _assign(variable, reader.get_tensor(name), prefix)
    expected = optimizer_variables(model.optimizer, model)
    missing = []
    for key, variable in expected.items():
        name = _file_key("optimizer", key)
        if name in shapes:
            _assign(variable, reader.get_tensor(name), prefix)
        else:
            missing.append(key)
    present = {_file_key("optimizer", key) for key in expected}
    unused = sorted(n.split("/")[1].replace("..", ".") for n in shapes
                    if n.startswith("optimizer/") and n not in present)
    by_path = {_key(v.path): v for v in model.trainable_variables}
    for key in missing:  # EMA averages new to this run start at the current weights
        owner, _, slot = key.rpartition(":")
        if slot == "average" and owner in by_path:
            expected[key].assign(by_path[owner])
    return {"missing": missing, "unused": unused}


def _assign(variable, value: np.ndarray, prefix: str) -> None:
    if tuple(variable.shape) != tuple(value.shape):
        raise CheckpointError(f"{prefix}: {variable.path!r} has shape {tuple(value.shape)} in "
                              f"the checkpoint but {tuple(variable.shape)} in the model")
    variable.assign(value.astype(variable.dtype))


def remove_partial_saves(model_dir: str, step: int | None = None) -> list[str]:
    """Removes what an interrupted save leaves in model_dir; returns the removed paths.

    `ckpt-N_temp*` (TensorFlow's staging of a save), temporaries of the `checkpoint`
    state file, and, with `step`, a `ckpt-<step>` that does not read completely.
    """
    removed = []
    for path in sorted(tf.io.gfile.glob(os.path.join(model_dir, "ckpt-*_temp*"))
                       + tf.io.gfile.glob(os.path.join(model_dir, "checkpoint.tmp*"))):
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
        removed.append(path)
    prefix = os.path.join(model_dir, f"ckpt-{step}")
    if step is not None and tf.io.gfile.glob(prefix + ".*") and damage(prefix) is not None:
        for path in tf.io.gfile.glob(prefix + ".*"):
            tf.io.gfile.remove(path)
            removed.append(path)
    return removed


def _failed_file(error: BaseException) -> str:
    name = getattr(error, "filename", None)
    if name:
        return str(name)
    match = re.search(r"(/[^;\s\]]+)", getattr(error, "message", None) or str(error))
    return match.group(1) if match else "a file"


@contextlib.contextmanager
def disk_full_guard(model_dir: str, step=None):
    """Re-raises a full disk met inside the block as `files.DiskFullError`.

    Args:
      model_dir: the run's folder (named, cleaned of partial saves, searched for the
        newest good checkpoint).
      step: callable giving the current global step, or None (before training starts).
    """
    try:
        yield
    except Exception as e:
        if isinstance(e, files.DiskFullError) or not files.is_disk_full(e):
            raise  # an inner guard's report, or no disk problem
        at = step() if step is not None else None
        removed = remove_partial_saves(model_dir, at)
        try:
            newest = find_restorable(model_dir, move_damaged=False)
        except CheckpointError:
            newest = None
        resume = (f"the newest good checkpoint is {newest} (step {checkpoint_step(newest)}): "
                  "free space and run the same command again to resume from it"
                  if newest else "no checkpoint was written yet: free space and run the same "
                  "command again to start the run")
        where = f" at step {at}" if at is not None else ""
        cleaned = f"; removed the partial {', '.join(os.path.basename(p) for p in removed)}" \
            if removed else ""
        raise files.DiskFullError(
            f"no space left on device in --model_dir={model_dir}{where} (writing "
            f"{_failed_file(e)}){cleaned}; {resume}") from e


def keep_list(model_dir: str, restored: str | None) -> list[str]:
    """The intact checkpoints up to `restored`, oldest first (for the state file)."""
    if restored is None:
        return []
    step = checkpoint_step(restored)
    return [p for p in reversed(candidates(model_dir)) if checkpoint_step(p) <= step
            and tf.io.gfile.exists(p + ".index")]
