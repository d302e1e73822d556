"""timm / torchvision ImageNet ResNet(X) checkpoints -> by-name Keras weights files.

Key mapping (timm and torchvision share it): module path with '.' -> '_' is our layer
name (``layer2.0.downsample.1`` -> ``layer2_0_downsample_1``); conv weights go from torch
[out, in/groups, kh, kw] to Keras [kh, kw, in/groups, out]; BatchNorm weight, bias,
running_mean, running_var -> gamma, beta, moving_mean, moving_variance; the linear ``fc``
weight [out, in] is transposed. ``num_batches_tracked`` is dropped. Every other key must
be used exactly once, so a checkpoint of another architecture fails loudly.

``.safetensors`` files are read with the `safetensors` numpy API (extra ``weights``);
``.pth`` state dicts need torch. The CLI is ``python -m data_tools.convert_weights``;
``--backbone_weights=hf-hub:...`` (`hub_weights.py`) calls `convert_checkpoint` too.
"""

import os
import pickle

import keras
import numpy as np
from absl import logging

from scdnn_tf.modeling.backbone_graph import build_resnext_classifier
from scdnn_tf.modeling.resnext import RESNEXT_ARCHS
from scdnn_tf.modeling.weights_by_name import (
    layers_with_variables, load_weights_by_name, save_weights_by_name)

ARCHS = tuple(sorted(RESNEXT_ARCHS))
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")
_IGNORED_SUFFIX = ".num_batches_tracked"


class DamagedCheckpointError(ValueError):
    """A checkpoint file that exists but cannot be read (truncated or corrupt).

    Attributes:
        path: the file.
        reason: what the reader said, with the file's size.
    """

    def __init__(self, path, error):
        self.path = path
        detail = " ".join(str(error).split()) or type(error).__name__
        self.reason = f"truncated or corrupt ({os.path.getsize(path)} bytes; {detail})"
        super().__init__(f"{path}: damaged checkpoint, {self.reason}; download it again")


def load_torch_state_dict(path):
    """Reads a checkpoint into {key: np.ndarray float32}.

    Args:
        path: ``.safetensors`` (timm) or ``.pth`` / ``.pt`` / ``.bin`` (torch.save of a
            state dict, or of a dict holding one under "state_dict" / "model").

    Raises:
        FileNotFoundError, ValueError (unknown extension), ImportError (missing package),
        DamagedCheckpointError (truncated or corrupt file; the message names it).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        try:
            from safetensors.numpy import load_file
        except ImportError as e:
            raise ImportError("reading .safetensors needs the `safetensors` package: "
                              "pip install 'scdnn_tf[weights]'") from e
        try:
            state = load_file(path)
        except Exception as e:  # safetensors raises its own SafetensorError (an Exception)
            raise DamagedCheckpointError(path, e) from None
    elif path.endswith((".pth", ".pt", ".bin")):
        try:
            import torch
        except ImportError as e:
            raise ImportError(f"reading {path} needs torch (pip install torch); or convert "
                              "the timm .safetensors file instead") from e
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as e:
            raise DamagedCheckpointError(path, e) from None
        for wrapper in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
        state = {k: v.detach().float().numpy() for k, v in state.items()}
    else:
        raise ValueError(f"{path}: unknown checkpoint type (expected .safetensors or .pth)")
    # DataParallel checkpoints prefix every key with "module.".
    return {k.removeprefix("module."): np.asarray(v, np.float32) for k, v in state.items()
            if not k.endswith(_IGNORED_SUFFIX)}


def torch_to_keras_arrays(state, model, source="checkpoint"):
    """Maps a torch state dict onto the layers of `model`.

    Args:
        state: {torch key: np.ndarray} (see `load_torch_state_dict`).
        model: Keras model with torchvision-style layer names (`build_resnext_classifier`).
        source: Name used in error messages.

    Returns:
        {keras layer name: [np.ndarray, ...]} in Keras variable order.

    Raises:
        ValueError: a key the model needs is missing, or the checkpoint has keys the
            model does not use (listed).
    """
    arrays, used = {}, set()

    def take(key):
        if key not in state:
            raise ValueError(f"{source}: key {key!r} missing from the checkpoint (not a "
                             f"{model.name!r} checkpoint? check --arch)")
        used.add(key)
        return state[key]

    for layer in layers_with_variables(model):
        prefix = layer.name.replace("_", ".")
        if isinstance(layer, keras.layers.Conv2D):
            arrays[layer.name] = [take(f"{prefix}.weight").transpose(2, 3, 1, 0)]
            if layer.use_bias:
                arrays[layer.name].append(take(f"{prefix}.bias"))
        elif isinstance(layer, keras.layers.BatchNormalization):
            arrays[layer.name] = [take(f"{prefix}.{k}") for k in _BN_KEYS]
        elif isinstance(layer, keras.layers.Dense):
            arrays[layer.name] = [take(f"{prefix}.weight").T, take(f"{prefix}.bias")]
        else:
            raise ValueError(f"no torch mapping for layer {layer.name!r} "
                             f"({type(layer).__name__})")
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"{source}: {len(unused)} checkpoint keys are not used by "
                         f"{model.name!r} (wrong --arch?): {unused[:8]}")
    return arrays


def convert_checkpoint(source, arch, output):
    """Converts `source` into a by-name Keras weights file for backbone `arch`.

    Args:
        source: Path of the timm .safetensors or torchvision .pth checkpoint.
        arch: One of `ARCHS`.
        output: Output path, conventionally ending in ``.weights.h5``.

    Returns:
        The classifier keras.Model holding the converted weights (backbone + ``fc``).
    """
    if arch not in ARCHS:
        hint = (" (keras.applications resnet50 is ResNet v1: use weights='imagenet' for it, "
                "or convert torch ResNet-50 weights with --arch=resnet50_tv)"
                if arch == "resnet50" else "")
        raise ValueError(f"unknown --arch {arch!r}; valid: {', '.join(ARCHS)}{hint}")
    state = load_torch_state_dict(source)
    if "fc.weight" not in state:
        raise ValueError(f"{source}: no 'fc.weight' key; is this a ResNet(X) checkpoint?")
    model = build_resnext_classifier(arch, num_classes=state["fc.weight"].shape[0])
    arrays = torch_to_keras_arrays(state, model, source)
    save_weights_by_name(model, output, arrays)
    # Load back what was written so `model` is exactly what a user gets from the file.
    load_weights_by_name(model, output)
    logging.info("converted %d tensors of %s into %s (%s)", len(state), source, output, arch)
    return model
