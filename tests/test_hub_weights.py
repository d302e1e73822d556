"""--backbone_weights=hf-hub:timm/NAME: a Hugging Face cache laid out as huggingface_hub
lays it out, holding a timm-named checkpoint of random values, read offline.

The end-to-end cases run in a subprocess so that HF_HOME / HF_HUB_OFFLINE / HF_ENDPOINT
are read by huggingface_hub exactly as on a user's machine (it reads them at import).
"""

import hashlib
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from scdnn_tf.core.config import TrainConfig
from scdnn_tf.modeling import hub_weights
from scdnn_tf.modeling.backbones import build_backbone, build_resnext_classifier
from scdnn_tf.modeling.timm_weights import convert_checkpoint
from scdnn_tf.modeling.weights_by_name import check_readable, layers_with_variables
from helpers import randomize_batchnorm, torch_state_dict

pytest.importorskip("huggingface_hub", reason="pip install 'scdnn_tf[hub]'")
safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="pip install 'scdnn_tf[hub]'")

REPO = "timm/resnet50.tv_in1k"
SPEC = f"hf-hub:{REPO}"
COMMIT = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_hf_cache(hub_dir, repo_id, payload, commit=COMMIT, revision="main"):
    """models--OWNER--NAME/{blobs/<sha256>, snapshots/<commit>/model.safetensors -> blob,
    refs/<revision>}: huggingface_hub's cache layout. Returns the snapshot file's path."""
    storage = os.path.join(hub_dir, "models--" + repo_id.replace("/", "--"))
    sha = hashlib.sha256(payload).hexdigest()
    for sub in ("blobs", "refs", os.path.join("snapshots", commit)):
        os.makedirs(os.path.join(storage, sub), exist_ok=True)
    blob = os.path.join(storage, "blobs", sha)
    with open(blob, "wb") as f:
        f.write(payload)
    snapshot = os.path.join(storage, "snapshots", commit, hub_weights.FILENAME)
    os.symlink(os.path.join("..", "..", "blobs", sha), snapshot)
    with open(os.path.join(storage, "refs", revision), "w") as f:
        f.write(commit)
    return snapshot


@pytest.fixture(scope="module")
def checkpoint():
    """(safetensors bytes, state dict): a timm-named resnet50 (torchvision layout), random."""
    source = build_resnext_classifier("resnet50_tv", num_classes=10)
    randomize_batchnorm(source, seed=2)
    state = torch_state_dict(source)
    return safetensors_numpy.save(state), state


def _run(code, env):
    """Runs `code` in a fresh interpreter with `env` added; returns its stdout."""
    full_env = {**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "3", **env}
    result = subprocess.run([sys.executable, "-c", code], env=full_env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    return result


_BUILD = """
import numpy as np, sys
from scdnn_tf.modeling.backbones import build_backbone
from scdnn_tf.modeling.weights_by_name import layers_with_variables
model = build_backbone("resnet50_tv", weights=sys.argv[1] if len(sys.argv) > 1 else {spec!r},
                       image_size=32)
np.savez({out!r}, **{{f"{{l.name}}/{{i}}": w.numpy() for l in layers_with_variables(model)
                      for i, w in enumerate(l.weights)}})
"""


def _backbone_arrays(model):
    return {f"{layer.name}/{i}": w.numpy() for layer in layers_with_variables(model)
            for i, w in enumerate(layer.weights)}


@pytest.mark.slow
@pytest.mark.spawns
def test_offline_hf_cache_gives_the_hand_converted_weights(tmp_path, checkpoint):
    payload, state = checkpoint
    snapshot = write_hf_cache(tmp_path / "hf" / "hub", REPO, payload)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "SCDNN_CACHE": str(tmp_path / "scdnn")}
    out = str(tmp_path / "hub.npz")
    result = _run(_BUILD.format(spec=SPEC, out=out), env)
    assert result.returncode == 0, result.stderr[-3000:]
    cached = tmp_path / "scdnn" / "hf-hub" / "models--timm--resnet50.tv_in1k" / COMMIT
    assert sorted(os.listdir(cached)) == ["resnet50_tv.weights.h5"]  # no temp file left

    # By hand: the documented manual path on the same file.
    manual = str(tmp_path / "manual.weights.h5")
    convert_checkpoint(snapshot, "resnet50_tv", manual)
    expected = _backbone_arrays(build_backbone("resnet50_tv", weights=manual, image_size=32))
    loaded = dict(np.load(out))
    assert sorted(loaded) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)
    # ... and both are the checkpoint's values, not an initialization.
    np.testing.assert_array_equal(loaded["layer2_0_conv2/0"],
                                  state["layer2.0.conv2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(loaded["layer4_2_bn3/3"], state["layer4.2.bn3.running_var"])

    # No route to the hub (not offline mode): huggingface_hub falls back to its cache,
    # and the cached conversion is reused (the same file, not rewritten).
    stamp = os.stat(cached / "resnet50_tv.weights.h5")
    env.update(HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9")
    result = _run(_BUILD.format(spec=SPEC, out=str(tmp_path / "again.npz")), env)
    assert result.returncode == 0, result.stderr[-3000:]
    again = dict(np.load(tmp_path / "again.npz"))
    now = os.stat(cached / "resnet50_tv.weights.h5")
    assert (now.st_ino, now.st_mtime_ns) == (stamp.st_ino, stamp.st_mtime_ns)
    for key, value in expected.items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)


@pytest.mark.slow
@pytest.mark.spawns
def test_offline_without_cache_fails_in_one_line_with_the_manual_commands(tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1",
           "SCDNN_CACHE": str(tmp_path / "scdnn")}
    code = ("from scdnn_tf.modeling.hub_weights import resolve_hub_weights\n"
            "try:\n"
            f"    resolve_hub_weights({SPEC!r}, 'resnet50_tv')\n"
            "except RuntimeError as e:\n"
            "    print(str(e))\n")
    result = _run(code, env)
    assert result.returncode == 0, result.stderr[-3000:]
    message = result.stdout.strip()
    assert "\n" not in message
    assert f"model.safetensors of {REPO}@main is not in the Hugging Face cache" in message
    assert "HF_HUB_OFFLINE" in message
    assert f"hf download {REPO} model.safetensors" in message
    assert ("python -m data_tools.convert_weights --source=weights/resnet50_tv/model.safetensors"
            " --arch=resnet50_tv") in message
    assert not os.path.exists(tmp_path / "scdnn" / "hf-hub")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """In-process: huggingface_hub's (import-time) settings pointed at a tmp cache, offline."""
    constants = pytest.importorskip("huggingface_hub.constants")
    hub_dir = str(tmp_path / "hub")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", hub_dir)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("SCDNN_CACHE", str(tmp_path / "scdnn"))
    return hub_dir


def test_conversion_is_cached_reused_and_leaves_the_seed_stream_alone(
        offline_hub, checkpoint, monkeypatch):
    write_hf_cache(offline_hub, REPO, checkpoint[0])
    random.seed(5)
    path = hub_weights.resolve_hub_weights(SPEC, "resnet50_tv")
    after_conversion = random.random()
    random.seed(5)
    assert after_conversion == random.random()
    assert path == hub_weights.converted_path(REPO, COMMIT, "resnet50_tv")
    assert os.path.isfile(path)

    def no_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr("scdnn_tf.modeling.timm_weights.convert_checkpoint", no_conversion)
    assert hub_weights.resolve_hub_weights(SPEC, "resnet50_tv") == path
    # A pinned commit whose conversion is cached needs no hub call at all.
    monkeypatch.setattr("huggingface_hub.hf_hub_download", no_conversion)
    assert hub_weights.resolve_hub_weights(f"{SPEC}@{COMMIT}", "resnet50_tv") == path


@pytest.mark.parametrize("keep", [0, 100, 0.6])
def test_truncated_checkpoint_in_the_offline_cache_names_it_and_what_to_do(
        offline_hub, checkpoint, keep):
    payload = checkpoint[0]
    snapshot = write_hf_cache(offline_hub, REPO, payload[: int(len(payload) * keep)
                                                       if isinstance(keep, float) else keep])
    blob = os.path.realpath(snapshot)
    with pytest.raises(hub_weights.HubWeightsError) as e:
        hub_weights.resolve_hub_weights(SPEC, "resnet50_tv")
    message = str(e.value)
    assert "\n" not in message and isinstance(e.value, OSError)  # the CLIs: one line, exit 2
    assert snapshot in message and blob in message and "truncated or corrupt" in message
    assert f"replace {blob} with an intact copy of model.safetensors of {REPO}@{COMMIT}" in message
    assert f"hf download {REPO} model.safetensors --revision={COMMIT}" in message
    folder = os.path.dirname(hub_weights.converted_path(REPO, COMMIT, "resnet50_tv"))
    assert os.listdir(folder) == []  # nothing cached


def test_damaged_download_online_says_download_again(checkpoint, tmp_path, monkeypatch):
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    path = tmp_path / "model.safetensors"
    path.write_bytes(checkpoint[0][:50])
    from scdnn_tf.modeling.timm_weights import DamagedCheckpointError, load_torch_state_dict
    with pytest.raises(DamagedCheckpointError) as e:
        load_torch_state_dict(str(path))
    message = hub_weights.damaged_download_message(REPO, COMMIT, str(path), e.value)
    assert f"delete {path} and run again to download it anew" in message


@pytest.mark.parametrize("pinned", [False, True])
def test_damaged_conversion_is_rebuilt_with_a_warning(offline_hub, checkpoint, caplog, pinned):
    write_hf_cache(offline_hub, REPO, checkpoint[0])
    path = hub_weights.resolve_hub_weights(SPEC, "resnet50_tv")
    intact = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(intact[: len(intact) // 3])
    spec = f"{SPEC}@{COMMIT}" if pinned else SPEC
    with caplog.at_level("WARNING"):
        assert hub_weights.resolve_hub_weights(spec, "resnet50_tv") == path
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and path in warnings[0] and "converted again" in warnings[0]
    check_readable(path)
    assert os.path.getsize(path) == len(intact)
    assert sorted(os.listdir(os.path.dirname(path))) == ["resnet50_tv.weights.h5"]


def test_checkpoint_of_another_architecture_fails_and_caches_nothing(offline_hub, checkpoint):
    # Not a timm name, so only the conversion can tell: resnet50 keys, resnext50 shapes.
    write_hf_cache(offline_hub, "someone/my-resnet", checkpoint[0])
    with pytest.raises(ValueError, match="shape mismatch in layer 'layer1_0_conv1'"):
        hub_weights.resolve_hub_weights("hf-hub:someone/my-resnet", "resnext50_32x4d")
    folder = os.path.dirname(hub_weights.converted_path("someone/my-resnet", COMMIT, "x"))
    assert os.listdir(folder) == []  # the partial temporary file was removed


@pytest.mark.parametrize("spec, arch, problem", [
    ("hf-hub:timm/resnet50.tv_in1k", "resnext50_32x4d", "load into backbone 'resnet50_tv'"),
    ("hf-hub:timm/resnext101_32x8d.tv_in1k", "resnet50", "use --backbone=resnet50_tv"),
    ("hf-hub:resnet50", "resnet50_tv", "not of the form hf-hub:OWNER/NAME"),
    ("hf-hub:timm/resnet50.tv_in1k@", "resnet50_tv", "not of the form"),
])
def test_bad_specs_are_refused_before_any_download(spec, arch, problem):
    with pytest.raises(ValueError, match=problem):
        hub_weights.resolve_hub_weights(spec, arch)


def test_train_config_accepts_hub_specs_and_names_the_flag(tmp_path):
    (tmp_path / "labels.txt").write_text("a\n")
    (tmp_path / "train-0").write_bytes(b"")
    base = dict(model_dir=str(tmp_path / "run"), label_map=str(tmp_path / "labels.txt"),
                train_pattern=str(tmp_path / "train-*"))
    TrainConfig(backbone="resnext101_32x8d",
                backbone_weights="hf-hub:timm/resnext101_32x8d.tv_in1k", **base).validate()
    with pytest.raises(ValueError, match=r"--backbone_weights: .*resnext50_32x4d.*"
                                         r"--backbone=resnext101_32x8d"):
        TrainConfig(backbone="resnext101_32x8d",
                    backbone_weights="hf-hub:timm/resnext50_32x4d.a1_in1k", **base).validate()


def test_cache_root_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SCDNN_CACHE", str(tmp_path))
    assert hub_weights.converted_path("timm/a.b", "c" * 40, "resnet50_tv") == os.path.join(
        str(tmp_path), "hf-hub", "models--timm--a.b", "c" * 40, "resnet50_tv.weights.h5")
    monkeypatch.delenv("SCDNN_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub_weights.cache_root() == os.path.join(str(tmp_path / "home"), ".cache", "scdnn_tf")
