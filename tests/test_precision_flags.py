"""`--precision` through the config, the flags, export, evaluation, predict and resume."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from scdnn_tf.core.config import TrainConfig, config_from_flags, define_flags
from scdnn_tf.core.precision import fold_old_flag, precision_policy
from scdnn_tf.engine.trainer import run_training
from scdnn_tf.evaluation.evaluator import run_evaluation
from scdnn_tf.serving.exporter import export_saved_model, load_from_model_dir
from scdnn_tf.serving.predictor import run_prediction

from helpers import tiny_config
from test_export import NAMES, encode, random_image, tiny_scdnn
from test_resume_safety import Probe, _values, data_dir  # noqa: F401 (a fixture)


def _flags(*argv):
    values = flags.FlagValues()
    define_flags(values)
    values(["prog", *argv])
    return values


def test_mixed_precision_is_the_old_name_of_mixed_float16():
    assert TrainConfig().precision == "float32"
    assert TrainConfig(mixed_precision=True).precision == "mixed_float16"
    assert TrainConfig(precision="mixed_float16", mixed_precision=True).precision == "mixed_float16"
    # An old run's config.json has no `precision` key.
    old = TrainConfig().to_dict()
    del old["precision"]
    old["mixed_precision"] = True
    assert TrainConfig.from_dict(old).precision == "mixed_float16"


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "auto"])
def test_conflicting_precision_flags_are_one_clear_error(precision):
    with pytest.raises(ValueError, match=f"--mixed_precision .* conflicts with "
                                         f"--precision={precision}"):
        TrainConfig(precision=precision, mixed_precision=True)
    with pytest.raises(ValueError, match="conflicts"):
        config_from_flags(_flags(f"--precision={precision}", "--mixed_precision"))


def test_flags_fold_and_explicit_float32_conflicts():
    assert TrainConfig(**config_from_flags(_flags("--mixed_precision"))).precision == \
        "mixed_float16"
    assert TrainConfig(**config_from_flags(_flags("--precision=mixed_bfloat16"))).precision == \
        "mixed_bfloat16"
    with pytest.raises(ValueError, match="--precision=float32"):  # explicit, not the default
        config_from_flags(_flags("--precision=float32", "--mixed_precision"))
    with pytest.raises(flags.IllegalFlagValueError):
        _flags("--precision=bfloat16")
    assert fold_old_flag("mixed_bfloat16", False, precision_given=True) == "mixed_bfloat16"


def test_flags_txt_reproduces_the_precision(tmp_path):
    TrainConfig(precision="mixed_bfloat16").write(str(tmp_path))
    values = _flags(f"--flagfile={tmp_path / 'flags.txt'}")
    assert TrainConfig(**config_from_flags(values)).precision == "mixed_bfloat16"
    assert TrainConfig.read(str(tmp_path)).precision == "mixed_bfloat16"


def _conv_dtypes(signature):
    """Dtypes (attribute T) of the Conv2D nodes of a loaded signature's graph."""
    graph_def = signature.graph.as_graph_def()
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    return {tf.as_dtype(n.attr["T"].type) for n in nodes if n.op == "Conv2D"}


@pytest.mark.slow
def test_bfloat16_export_round_trip_close_to_float32(tmp_path):
    keras.utils.set_random_seed(0)
    model32 = tiny_scdnn()
    # Objectness and deltas independent of the features (zero 1x1 kernels): both exports
    # keep the same patches, so their scores differ by bfloat16 rounding only (with random
    # weights, one swapped patch can move an image's max-pooled logit by several units).
    for layer in (model32.patch_heads.patch_classifier, model32.patch_heads.location_regressor):
        layer.kernel.assign(tf.zeros_like(layer.kernel))
    with precision_policy("mixed_bfloat16"):
        model16 = tiny_scdnn()
    model16.set_weights(model32.get_weights())
    loaded = {name: tf.saved_model.load(export_saved_model(m, NAMES, str(tmp_path / name)))
              for name, m in (("float32", model32), ("bfloat16", model16))}
    signatures = {k: v.signatures["serving_default"] for k, v in loaded.items()}
    assert _conv_dtypes(signatures["float32"]) == {tf.float32}
    assert tf.bfloat16 in _conv_dtypes(signatures["bfloat16"])
    data = tf.constant([encode(random_image(96, 80, seed)) for seed in range(4)])
    out = {k: s(image_bytes=data) for k, s in signatures.items()}
    for key in ("scores", "top_scores", "patch_boxes", "patch_scores"):
        assert out["bfloat16"][key].dtype == tf.float32, key
    a, b = out["float32"]["scores"].numpy(), out["bfloat16"]["scores"].numpy()
    np.testing.assert_array_equal(out["bfloat16"]["patch_boxes"], out["float32"]["patch_boxes"])
    assert not np.array_equal(a, b)  # it really computed in bfloat16
    np.testing.assert_allclose(b, a, atol=0.05)  # 8 significant bits through ~20 layers


def test_predict_refuses_a_precision_for_a_saved_model(tmp_path):
    with pytest.raises(ValueError, match="--precision=mixed_bfloat16 applies to --model_dir"):
        run_prediction([str(tmp_path)], saved_model=str(tmp_path), precision="mixed_bfloat16")


class PrecisionProbe(Probe):
    """Also the policy the run computes in and its step losses."""

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.policy = self.model.dtype_policy.name
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


def _checkpoint_dtypes(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {reader.get_variable_to_dtype_map()[k] for k in reader.get_variable_to_shape_map()
            if k.startswith("variables/")}


@pytest.mark.slow
def test_resume_float32_to_bfloat16_and_back(data_dir, tmp_path):
    probes = []
    for steps, precision in ((2, "float32"), (3, "mixed_bfloat16"), (4, "float32")):
        probes.append(PrecisionProbe())
        run_training(tiny_config(data_dir, tmp_path, train_steps=steps, checkpoint_every=1,
                                 eval_pattern="", precision=precision),
                     extra_callbacks=[probes[-1]])
        assert keras.mixed_precision.global_policy().name == "float32"  # not leaked
    assert [p.policy for p in probes] == ["float32", "mixed_bfloat16", "float32"]
    assert [p.step for p in probes] == [0, 2, 3]
    for probe in probes:
        assert probe.losses and np.isfinite(probe.losses).all()
    for step, probe in ((2, probes[1]), (3, probes[2])):  # each resume starts from the save
        saved = _values(str(tmp_path / f"ckpt-{step}"), "variables")
        assert probe.model_state.keys() == saved.keys()
        for key, value in saved.items():
            np.testing.assert_array_equal(probe.model_state[key], value, err_msg=key)
    before, after = (_values(str(tmp_path / f"ckpt-{s}"), "variables") for s in (2, 3))
    assert any(not np.array_equal(before[k], after[k]) for k in before)  # a bfloat16 step
    for step in (2, 3, 4):  # bfloat16 compute, float32 checkpoints
        assert _checkpoint_dtypes(str(tmp_path / f"ckpt-{step}")) == {tf.float32}
    assert TrainConfig.read(str(tmp_path)).precision == "float32"


@pytest.mark.slow
def test_inference_is_float32_whatever_the_run_trained_in(data_dir, tmp_path):
    run_training(tiny_config(data_dir, tmp_path, train_steps=1, checkpoint_every=1,
                             precision="mixed_bfloat16"))
    for overrides, expected in (({}, "float32"), ({"precision": "mixed_bfloat16"},
                                                  "mixed_bfloat16"),
                                ({"mixed_precision": True}, "mixed_float16")):
        run_evaluation(str(tmp_path), overrides)
        with open(os.path.join(tmp_path, "metrics.json"), encoding="utf-8") as f:
            assert json.load(f)["precision"] == expected, overrides
    model32, _, _ = load_from_model_dir(str(tmp_path))
    model16, _, _ = load_from_model_dir(str(tmp_path), "mixed_bfloat16")
    assert model32.dtype_policy.name == "float32"
    assert model16.patch_heads.shared_conv.compute_dtype == "bfloat16"
    for a, b in zip(model32.get_weights(), model16.get_weights()):
        np.testing.assert_array_equal(a, b)
