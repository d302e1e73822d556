"""Weight files keyed by layer name (HDF5), so converted ImageNet weights load into any
model that has layers of the same names -- a backbone, or a classifier built around it.

Keras 3's own ``model.save_weights`` files are keyed by layer *class and position*, not
by name, so a backbone file could not be loaded into a larger model; hence this format:

    /  attrs: format = "scdnn_tf.weights_by_name.v1"
    /<layer name>/<i>   dataset i = the layer's i-th own variable, in the order of
                        `Layer.save_own_variables` (trainable first, e.g. BN gamma, beta,
                        moving_mean, moving_variance; conv kernel [kh, kw, in/groups, out]).
"""

import os

import h5py
import keras
import numpy as np
from absl import logging

FORMAT = "scdnn_tf.weights_by_name.v1"


def layers_with_variables(model):
    """Leaf layers of `model` (nested models flattened) that own variables."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from layers_with_variables(layer)
        elif layer.weights:
            yield layer


def layer_variables(layer):
    """A layer's own variables as {"0": np.ndarray, ...} (Keras save order)."""
    store = {}
    layer.save_own_variables(store)
    return {key: keras.ops.convert_to_numpy(value) for key, value in store.items()}


def save_weights_by_name(model, path, arrays=None):
    """Writes every variable-owning layer of `model` to `path` keyed by layer name.

    Args:
        model: A built keras.Model.
        path: Output file (``.weights.h5`` by convention).
        arrays: Optional {layer_name: [np.ndarray, ...]} to write instead of the model's
            current values (shapes are still checked against the model).
    """
    with h5py.File(path, "w") as f:
        f.attrs["format"] = FORMAT
        for layer in layers_with_variables(model):
            current = layer_variables(layer)
            values = current if arrays is None else {
                str(i): a for i, a in enumerate(arrays[layer.name])}
            _check_shapes(layer.name, current, values, path)
            group = f.create_group(layer.name)
            for key, value in values.items():
                group.create_dataset(key, data=np.asarray(value))


def _check_shapes(layer_name, expected, found, path):
    if len(expected) != len(found):
        raise ValueError(
            f"{path}: layer {layer_name!r} has {len(found)} variables in the file but "
            f"{len(expected)} in the model")
    for key in expected:
        if tuple(expected[key].shape) != tuple(np.shape(found[key])):
            raise ValueError(
                f"{path}: shape mismatch in layer {layer_name!r}, variable {key}: file has "
                f"{tuple(np.shape(found[key]))}, model expects {tuple(expected[key].shape)}")


def is_by_name_file(path):
    """True when `path` is a readable HDF5 file written by `save_weights_by_name`.

    Raises:
        FileNotFoundError: `path` does not exist.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == FORMAT
    except OSError:
        return False


def check_readable(path, by_name=True):
    """Raises ValueError naming `path` unless it is an HDF5 file (with `by_name`, one
    written by `save_weights_by_name`) whose every variable reads back: a truncated or
    partly overwritten file fails here."""
    try:
        with h5py.File(path, "r") as f:
            if by_name and f.attrs.get("format") != FORMAT:
                raise ValueError(f"{path}: not a by-name weights file")

            def read(name, node):
                if isinstance(node, h5py.Dataset):
                    node[()]

            f.visititems(read)
    except (OSError, KeyError, RuntimeError) as e:
        raise ValueError(f"{path}: not a readable weights file "
                         f"({' '.join(str(e).split())})") from None


def load_weights_by_name(model, path):
    """Loads a `save_weights_by_name` file into `model`, matching layers by name.

    Every variable-owning layer of the model must be in the file with identical shapes;
    layers in the file that the model lacks (e.g. an ImageNet ``fc`` when loading a
    backbone) are skipped and counted in the log. All shapes are checked before any
    variable is assigned, so a failed load leaves the model untouched.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: not a by-name file, a model layer missing from it, or the first
            layer whose variable shapes differ (named, with both shapes).
    """
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise FileNotFoundError(f"weights file not found: {path}") from None
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 weights file ({e})") from None
    with f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(
                f"{path}: not a by-name weights file (attribute format={FORMAT!r} missing); "
                "files written by keras model.save_weights load with model.load_weights")
        plan = []
        for layer in layers_with_variables(model):
            if layer.name not in f:
                raise ValueError(f"{path}: layer {layer.name!r} of model {model.name!r} is "
                                 "missing from the weights file")
            try:
                found = {key: f[layer.name][key][()] for key in f[layer.name]}
            except (OSError, KeyError) as e:  # damaged data inside a readable file
                raise ValueError(f"{path}: layer {layer.name!r} cannot be read, the file is "
                                 f"damaged ({' '.join(str(e).split())})") from None
            _check_shapes(layer.name, layer_variables(layer), found, path)
            plan.append((layer, found))
        unused = set(f.keys()) - {layer.name for layer, _ in plan}
    for layer, found in plan:
        layer.load_own_variables(found)
    logging.info("loaded %d layers from %s (%d unused in the file%s)", len(plan), path,
                 len(unused), f": {sorted(unused)[:5]}" if unused else "")
