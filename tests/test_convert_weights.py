"""Weight conversion without torch: torch-layout state dicts made from Keras models.

The real timm/torchvision parity check is tests/parity/test_timm_parity.py.
"""

import keras
import numpy as np
import pytest

from scdnn_tf.modeling.backbones import build_backbone, build_resnext_classifier
from scdnn_tf.modeling.timm_weights import (
    DamagedCheckpointError, convert_checkpoint, load_torch_state_dict, torch_to_keras_arrays)
from scdnn_tf.modeling.weights_by_name import (
    check_readable, layers_with_variables, load_weights_by_name, save_weights_by_name)

from helpers import randomize_batchnorm, torch_state_dict


def _safetensors_numpy():
    return pytest.importorskip("safetensors.numpy", reason="pip install 'scdnn_tf[weights]'")


def _images(size=64):
    return np.random.default_rng(3).uniform(0, 255, (2, size, size, 3)).astype("float32")


def test_mapping_round_trip_on_small_classifier():
    source = build_resnext_classifier("small", num_classes=7)
    randomize_batchnorm(source)
    target = build_resnext_classifier("small", num_classes=7)
    state = {k: v for k, v in torch_state_dict(source).items()
             if not k.endswith("num_batches_tracked")}
    arrays = torch_to_keras_arrays(state, target)
    for layer in layers_with_variables(target):
        layer.set_weights(arrays[layer.name])
    x = _images()
    np.testing.assert_allclose(target(x), source(x), atol=1e-5)


def test_missing_and_unused_keys_are_reported():
    model = build_resnext_classifier("small", num_classes=2)
    state = torch_state_dict(model)
    state.pop("layer3.0.bn2.running_var")
    with pytest.raises(ValueError, match="'layer3.0.bn2.running_var' missing"):
        torch_to_keras_arrays(state, model, "ckpt")
    state = torch_state_dict(model)
    state["layer5.0.conv1.weight"] = np.zeros(3, "float32")
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    with pytest.raises(ValueError, match=r"1 checkpoint keys .*layer5\.0\.conv1\.weight"):
        torch_to_keras_arrays(state, model, "ckpt")


def test_load_torch_state_dict_safetensors_and_errors(tmp_path):
    safetensors_numpy = _safetensors_numpy()
    path = str(tmp_path / "model.safetensors")
    safetensors_numpy.save_file({"module.fc.weight": np.ones((2, 3), np.float32),
                                 "bn1.num_batches_tracked": np.array(1, np.int64)}, path)
    state = load_torch_state_dict(path)
    assert list(state) == ["fc.weight"] and state["fc.weight"].dtype == np.float32
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_torch_state_dict(str(tmp_path / "missing.safetensors"))
    other = tmp_path / "model.onnx"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="model.onnx: unknown checkpoint type"):
        load_torch_state_dict(str(other))


def test_unknown_arch_lists_valid_and_explains_keras_resnet50(tmp_path):
    with pytest.raises(ValueError, match="resnext101_32x8d.*ResNet v1.*resnet50_tv"):
        convert_checkpoint(str(tmp_path / "x.safetensors"), "resnet50", str(tmp_path / "o.h5"))


def test_convert_resnext50_safetensors_end_to_end(tmp_path):
    safetensors_numpy = _safetensors_numpy()
    source = build_resnext_classifier("resnext50_32x4d", num_classes=10)
    randomize_batchnorm(source, seed=1)
    checkpoint = str(tmp_path / "model.safetensors")
    safetensors_numpy.save_file(torch_state_dict(source), checkpoint)
    output = str(tmp_path / "resnext50_32x4d.weights.h5")
    converted = convert_checkpoint(checkpoint, "resnext50_32x4d", output)
    x = _images(32)
    np.testing.assert_allclose(converted(x), source(x), atol=1e-4)
    backbone = build_backbone("resnext50_32x4d", weights=output)  # fc skipped
    reference = keras.Model(source.input, source.get_layer("layer4_2_out").output)
    np.testing.assert_allclose(backbone(x)["C5"], reference(x), atol=1e-4)


def test_cli_module_is_a_thin_wrapper_over_the_library():
    from data_tools import convert_weights as cli  # noqa: PLC0415

    assert cli.convert_checkpoint is convert_checkpoint


@pytest.mark.parametrize("keep", [0, 5, 0.5, -8])
def test_damaged_safetensors_names_the_file(tmp_path, keep):
    safetensors_numpy = _safetensors_numpy()
    path = tmp_path / "model.safetensors"
    safetensors_numpy.save_file({"fc.weight": np.ones((64, 32), np.float32)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(DamagedCheckpointError, match=r"model.safetensors: damaged checkpoint, "
                                                     r"truncated or corrupt \(\d+ bytes"):
        load_torch_state_dict(str(path))


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.99])
def test_truncated_weights_file_names_it(tmp_path, fraction):
    model = build_resnext_classifier("small", num_classes=2)
    path = tmp_path / "small.weights.h5"
    save_weights_by_name(model, str(path))
    check_readable(str(path))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ValueError, match="small.weights.h5: not a readable"):
        check_readable(str(path))
    with pytest.raises(ValueError, match="small.weights.h5"):
        load_weights_by_name(build_resnext_classifier("small", num_classes=2), str(path))


@pytest.mark.spawns
def test_convert_weights_cli_damaged_source_is_one_line(tmp_path):
    import subprocess
    import sys

    from helpers import REPO_ROOT, child_env

    source = tmp_path / "model.safetensors"
    source.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    proc = subprocess.run([sys.executable, "-m", "data_tools.convert_weights",
                           f"--source={source}", "--arch=resnet50_tv",
                           f"--output={tmp_path}/o.weights.h5"],
                          capture_output=True, text=True, cwd=REPO_ROOT, env=child_env(),
                          timeout=300)
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(errors) == 1 and f"{source}: damaged checkpoint" in errors[0]
    assert not (tmp_path / "o.weights.h5").exists()
