"""The shipped flagfiles parse into valid TrainConfigs; the light recipes differ as stated."""

import os

import pytest
from absl import flags

from scdnn_tf.core.config import TrainConfig, config_from_flags, define_flags

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _load(name: str) -> TrainConfig:
    """Parses a flagfile; validates it after creating the files it names (cwd = a tmp dir)."""
    values = flags.FlagValues()
    define_flags(values)
    values(["prog", f"--flagfile={os.path.join(CONFIGS, name)}"])
    config = TrainConfig(**config_from_flags(values))
    for path in (config.label_map, config.backbone_weights,
                 config.train_pattern.replace("*", "00000"),
                 config.eval_pattern.replace("*", "00000")):
        if path and path != "imagenet":
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            open(path, "w").close()
    return config.validate()


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(CONFIGS) if f.endswith(".flags")))
def test_flagfile_validates(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _load(name).train_pattern


@pytest.mark.parametrize("dataset", ["coco", "voc"])
def test_light_recipe_is_the_default_with_a_lighter_pyramid(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default, light = _load(f"{dataset}.flags"), _load(f"{dataset}_light.flags")
    assert (light.min_level, light.fpn_channels) == (3, 128)
    assert light.anchor_sizes == (64.0, 128.0, 256.0)  # 8x the stride of P3, P4, P5
    changed = {k for k in vars(default) if getattr(default, k) != getattr(light, k)}
    assert changed == {"min_level", "fpn_channels", "anchor_sizes", "model_dir"}
