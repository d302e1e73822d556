"""``--init_from``: a new run starts from another run's weights, across label spaces.

Variables are matched by name (the checkpoints' name-keyed layout, `core/checkpoints.py`): a
model variable whose path and shape are in the source checkpoint takes its value
(backbone, FPN, patch heads, the label predictors' hidden layers, ...). The per-class
variables (every variable of a layer named ``classifier``: the label predictors' and the
GAP baseline's output layers, class axis last) take, for each class whose name is in both
label maps, the source's row of that class; the other classes keep their fresh
initialization. The optimizer state and the random seed states (dropout) are not taken:
the new run starts at step 0.

`plan_init` and `merge_classes` are the pure part; `initialize` reads the checkpoint and
the label map next to it, assigns, logs the counts and refuses a source that matches
nothing.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf
from absl import logging

from scdnn_tf.core import checkpoints
from scdnn_tf.core.restore import LABEL_MAP_NAME
from scdnn_tf.data.label_map import read_label_map

CLASS_LAYER = "classifier"
_PREFIX, _SUFFIX = "variables/", "/.ATTRIBUTES/VARIABLE_VALUE"
_SEED_STATE = "seed_generator_state"  # random streams: a new run starts its own


@dataclasses.dataclass
class InitPlan:
    """What `initialize` does with each variable (keys as in `checkpoints.model_variables`).

    Attributes:
        loaded: Target keys copied whole from the source.
        by_class: Target keys copied class by class: {key: class axis}.
        new: Target keys left as initialized (absent from the source, another shape, or
            a random seed state).
        skipped: Source keys no target variable takes.
        class_pairs: [(source class index, target class index)] of the shared names.
    """
    loaded: list
    by_class: dict
    new: list
    skipped: list
    class_pairs: list


def class_pairs(source_names, target_names):
    """[(source index, target index)] of the class names in both lists, target order."""
    index = {name: i for i, name in enumerate(source_names)}
    return [(index[name], j) for j, name in enumerate(target_names) if name in index]


def class_axes(keys):
    """{key: -1} for the keys of per-class variables (their layer is named ``classifier``)."""
    return {key: -1 for key in keys if key.split(":")[-2:-1] == [CLASS_LAYER]}


def plan_init(source_shapes, target_shapes, source_names, target_names):
    """Plans the initialization of a model from a checkpoint.

    Args:
        source_shapes: {key: shape} of the source checkpoint's model variables.
        target_shapes: {key: shape} of the new model's variables.
        source_names, target_names: The class names of the source and new runs.

    Returns:
        InitPlan.

    Raises:
        ValueError: a per-class variable of the source whose class axis is not the
            length of the source label map (the label map is not the checkpoint's).
    """
    pairs = class_pairs(source_names, target_names)
    axes = class_axes(target_shapes)
    loaded, by_class, new = [], {}, []
    for key, shape in target_shapes.items():
        source = source_shapes.get(key)
        shape = tuple(shape)
        if source is None or key.endswith(_SEED_STATE):
            new.append(key)
        elif key in axes:
            axis = axes[key]
            source = tuple(source)
            if source[axis] != len(source_names):
                raise ValueError(f"{key!r} has {source[axis]} classes in the checkpoint but its "
                                 f"label map has {len(source_names)}")
            others_match = (np.delete(source, axis).tolist() == np.delete(shape, axis).tolist())
            if others_match and pairs:
                by_class[key] = axis
            else:
                new.append(key)
        elif tuple(source) == shape:
            loaded.append(key)
        else:
            new.append(key)
    used = set(loaded) | set(by_class)
    skipped = sorted(key for key in source_shapes if key not in used)
    return InitPlan(loaded, by_class, new, skipped, pairs)


def merge_classes(source, target, axis, pairs):
    """`target` with the slices `pairs` [(source i, target j)] along `axis` from `source`."""
    out = np.array(target, copy=True)
    source_index, target_index = (list(t) for t in zip(*pairs))
    np.moveaxis(out, axis, 0)[target_index] = np.moveaxis(np.asarray(source), axis, 0)[
        source_index]
    return out


def resolve_source(spec):
    """(checkpoint prefix, label map path) of a model_dir or a checkpoint prefix.

    Raises:
        ValueError: neither, or a model_dir without a readable checkpoint.
    """
    if tf.io.gfile.isdir(spec):
        try:
            prefix = checkpoints.find_restorable(spec, move_damaged=False)
        except checkpoints.CheckpointError as e:
            raise ValueError(f"--init_from={spec!r}: {e}") from None
        if prefix is None:
            raise ValueError(f"--init_from={spec!r}: the directory holds no checkpoint")
        folder = spec
    elif tf.io.gfile.exists(spec + ".index"):
        prefix, folder = spec, os.path.dirname(spec)
    else:
        raise ValueError(f"--init_from={spec!r}: neither a model_dir holding checkpoints nor "
                         "a checkpoint prefix (MODEL_DIR/ckpt-N)")
    return prefix, os.path.join(folder, LABEL_MAP_NAME)


def initialize(model, spec, class_names):
    """Initializes `model` (built, in its strategy scope) from the run or checkpoint `spec`.

    Args:
        model: The new run's model.
        spec: A model_dir (its newest intact checkpoint) or a checkpoint prefix; the
            source's label map is ``label_map.txt`` in the same directory.
        class_names: The new run's class names.

    Returns:
        The InitPlan carried out.

    Raises:
        ValueError: the source is missing, unreadable, has no label map, or no variable
            matches (each a one-line message naming ``--init_from``).
    """
    prefix, label_map = resolve_source(spec)
    try:
        source_names = read_label_map(label_map)
        reader = tf.train.load_checkpoint(prefix)
        shapes = reader.get_variable_to_shape_map()
    except (OSError, ValueError, tf.errors.OpError) as e:
        detail = (getattr(e, "message", None) or str(e)).splitlines()[0]
        raise ValueError(f"--init_from={spec!r}: cannot read {prefix} or its label map "
                         f"({detail})") from None
    source_shapes = {name[len(_PREFIX):-len(_SUFFIX)].replace("..", "."): shape
                     for name, shape in shapes.items()
                     if name.startswith(_PREFIX) and name.endswith(_SUFFIX)}
    variables = checkpoints.model_variables(model)
    try:
        plan = plan_init(source_shapes, {k: v.shape for k, v in variables.items()},
                         source_names, class_names)
    except ValueError as e:
        raise ValueError(f"--init_from={spec!r}: {e} ({label_map})") from None
    if not plan.loaded and not plan.by_class:
        raise ValueError(f"--init_from={spec!r}: no variable of {prefix} matches this model by "
                         "name and shape (another --model or --backbone?)")

    def value(key):
        return reader.get_tensor(f"{_PREFIX}{key.replace('.', '..')}{_SUFFIX}")

    for key in plan.loaded:
        variables[key].assign(value(key).astype(variables[key].dtype))
    for key, axis in plan.by_class.items():
        merged = merge_classes(value(key), variables[key].numpy(), axis, plan.class_pairs)
        variables[key].assign(merged.astype(variables[key].dtype))
    shared = [class_names[j] for _, j in plan.class_pairs]
    logging.info("--init_from=%s: %s; %d variables loaded, %d per-class variables with %d of "
                 "%d classes copied (%s), %d new%s, %d of the checkpoint skipped%s", spec,
                 prefix, len(plan.loaded), len(plan.by_class), len(shared), len(class_names),
                 ", ".join(shared[:10]) + (" ..." if len(shared) > 10 else ""), len(plan.new),
                 f" {plan.new[:5]}" if plan.new else "", len(plan.skipped),
                 f" {plan.skipped[:5]}" if plan.skipped else "")
    if not plan.class_pairs:
        logging.warning("--init_from=%s: no class name is in both label maps; the output "
                        "layers start fresh", spec)
    return plan
