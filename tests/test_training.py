"""Training: flag validation, a short run's outputs, resume, NaN stop, 1 vs 2 replicas."""

import glob
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from scdnn_tf.core.config import TrainConfig, config_from_flags, define_flags
from scdnn_tf.engine.trainer import run_training

from helpers import CLASSES, read_events, tiny_config, write_tiny_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("override, flag", [
    (dict(learning_rate=-0.1), "--learning_rate"),
    (dict(backbone="resnet9"), "--backbone"),
    (dict(image_size=100), "--image_size"),
    (dict(label_map="/nonexistent/labels.txt"), "--label_map"),
    (dict(train_pattern="/nonexistent/train-*"), "--train_pattern"),
    (dict(eval_pattern="/nonexistent/val-*"), "--eval_pattern"),
    (dict(warmup_steps=3), "--warmup_steps"),
    (dict(momentum=1.5), "--momentum"),
    (dict(ema_decay=1.0), "--ema_decay"),
    (dict(strategy="tpu"), "--strategy"),
    (dict(branches="all"), "--branches"),
    (dict(backbone_weights="/nonexistent/w.weights.h5"), "--backbone_weights"),
    (dict(context_scale=0.5), "--context_scale"),
    (dict(model_dir=""), "--model_dir"),
    (dict(min_level=4), "--min_level"),
    (dict(min_level=3), "--anchor_sizes"),  # 4 sizes for P3..P5
    (dict(context_scales=(0.5, 2.0)), "--context_scales"),
    (dict(context_scales=(2.0, 2.0)), "--context_scales"),
    (dict(relation="graph"), "--relation"),
    (dict(relation_layers=0), "--relation_layers"),
])
def test_validate_names_the_flag(data_dir, tmp_path, override, flag):
    config = tiny_config(data_dir, override.pop("model_dir", tmp_path), **override)
    with pytest.raises(ValueError, match=flag):
        config.validate()


def test_run_rejects_batch_not_divisible_by_replicas(data_dir, tmp_path):
    # conftest gives two logical CPUs: mirrored has 2 replicas.
    config = tiny_config(data_dir, tmp_path, strategy="mirrored", global_batch_size=3)
    with pytest.raises(ValueError, match="--global_batch_size=3 is not divisible by the 2"):
        run_training(config)


def test_run_rejects_class_id_map_of_wrong_length(data_dir, tmp_path):
    id_map = tmp_path / "ids.txt"
    id_map.write_text("1\n2\n")
    config = tiny_config(data_dir, tmp_path / "run", class_id_map=str(id_map))
    with pytest.raises(ValueError, match="--class_id_map=.* has 2 ids but --label_map"):
        run_training(config)


def test_flags_txt_is_a_reusable_flagfile(data_dir, tmp_path):
    config = tiny_config(data_dir, tmp_path, color_jitter=True, anchor_sizes=(4.0, 8.0, 16.0, 32.0),
                         context_scales=(1.5, 2.5, 4.0), relation="attention", global_patch=True)
    config.write(str(tmp_path))
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    flag_values(["prog", f"--flagfile={tmp_path / 'flags.txt'}"])
    assert TrainConfig(**config_from_flags(flag_values)) == config
    assert TrainConfig.read(str(tmp_path)) == config


@pytest.mark.slow
def test_run_with_every_option_beyond_the_paper_and_its_resume_check(data_dir, tmp_path):
    options = dict(relation="attention", context_scales=(1.5, 3.0), global_patch=True)
    metrics = run_training(tiny_config(data_dir, tmp_path, **options))
    assert metrics["num_images"] == 6 and np.isfinite(metrics["mAP"])
    images = read_events(str(tmp_path / "eval"))
    assert any("patch" in tag for tag in images), sorted(images)
    # The options define the network: resuming the run without one of them is refused.
    for name in options:
        changed = tiny_config(data_dir, tmp_path, train_steps=5,
                              **{**options, name: TrainConfig().__getattribute__(name)})
        with pytest.raises(ValueError, match=f"--{name}"):
            run_training(changed)


@pytest.mark.slow
def test_short_run_writes_checkpoints_flags_label_map_and_summaries(data_dir, tmp_path):
    metrics = run_training(tiny_config(data_dir, tmp_path))
    # The mean of the per-class APs over the classes that have positives, on all 6 images.
    assert metrics["mAP"] == pytest.approx(np.nanmean(metrics["per_class_AP"]))
    assert metrics["num_images"] == 6 and "OF1" in metrics
    names = sorted(os.listdir(tmp_path))
    assert {"ckpt-2.index", "ckpt-3.index", "checkpoint", "flags.txt", "config.json",
            "label_map.txt"} <= set(names)
    assert (tmp_path / "label_map.txt").read_text().split() == CLASSES
    assert "--learning_rate=0.01" in (tmp_path / "flags.txt").read_text().splitlines()
    train = read_events(str(tmp_path / "train"))
    for tag in ("loss", "loss_label", "loss_patch", "loss_regression", "learning_rate",
                "images_per_second"):
        assert sorted(train[tag]) == [1, 2, 3], tag
    assert train["learning_rate"][1] == pytest.approx(0.01 * 0.5 * (1 + np.cos(np.pi / 3)))
    evals = read_events(str(tmp_path / "eval"))
    for tag in ("mAP", "CF1", "OF1", "CP", "CR", "OP", "OR", "CF1_mean", "OF1_top3"):
        assert list(evals[tag]) == [3], tag
    assert evals["mAP"][3] == pytest.approx(metrics["mAP"], abs=1e-6)
    assert evals["patches"][3] == 2  # two drawn validation images
    assert evals["pr_curve/red"][3].shape == (6, 101)


class _Crash(keras.callbacks.Callback):
    """Simulates a kill right after the step-`at` checkpoint."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.at:
            raise KeyboardInterrupt(f"simulated crash at step {self.at}")


def _checkpoint_values(path):
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(path)
            if name.startswith(("variables/", "optimizer/"))}


def _without_checkpoints_after(model_dir, step):
    """Deletes the checkpoints numbered > step and points the state file at ckpt-`step`."""
    kept = []
    for index in sorted(glob.glob(os.path.join(model_dir, "ckpt-*.index"))):
        prefix = index[:-len(".index")]
        if int(prefix.rsplit("-", 1)[1]) > step:
            for path in glob.glob(prefix + ".*"):
                os.remove(path)
        else:
            kept.append(prefix)
    kept.sort(key=lambda p: int(p.rsplit("-", 1)[1]))
    tf.compat.v1.train.update_checkpoint_state(model_dir, kept[-1], kept)


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(data_dir, tmp_path):
    common = dict(train_steps=8, checkpoint_every=3, eval_every=4, ema_decay=0.5)
    full = tiny_config(data_dir, tmp_path / "full", **common)
    run_training(full)
    cut = tiny_config(data_dir, tmp_path / "cut", **common)
    with pytest.raises(KeyboardInterrupt):
        run_training(cut, extra_callbacks=[_Crash(at=7)])
    # Killed at step 7: the last checkpoint is step 6, identical to the uninterrupted run's
    # (same process, same seed: the same computation).
    assert tf.train.latest_checkpoint(cut.model_dir).endswith("ckpt-6")
    full_at6 = _checkpoint_values(os.path.join(full.model_dir, "ckpt-6"))
    at6 = _checkpoint_values(os.path.join(cut.model_dir, "ckpt-6"))
    assert at6.keys() == full_at6.keys()
    for name, value in full_at6.items():
        np.testing.assert_allclose(at6[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    # A copy of the uninterrupted run cut back to its step-6 checkpoint: the reference for
    # the resumed steps (both resumes read the stream reseeded with seed + 6).
    copy = tiny_config(data_dir, tmp_path / "copy", **common)
    shutil.copytree(full.model_dir, copy.model_dir)
    _without_checkpoints_after(copy.model_dir, 6)
    seen = {}

    class Probe(keras.callbacks.Callback):
        def __init__(self, key):
            super().__init__()
            self.key = key

        def on_train_begin(self, logs=None):  # after the restore, before any step
            seen[self.key] = (int(self.model.optimizer.iterations.numpy()),
                              {v.path: v.numpy() for v in self.model.variables})

    run_training(cut, extra_callbacks=[Probe("cut")])
    run_training(copy, extra_callbacks=[Probe("copy")])
    # The restored weights are the step-6 weights of the uninterrupted run, by name.
    for key in ("cut", "copy"):
        step, weights = seen[key]
        assert step == 6
        for path, value in weights.items():
            np.testing.assert_allclose(
                value, full_at6[f"variables/{path.replace('/', ':')}/.ATTRIBUTES/VARIABLE_VALUE"],
                rtol=1e-5, atol=1e-6, err_msg=path)
    assert tf.train.latest_checkpoint(cut.model_dir).endswith("ckpt-8")
    train_cut, train_copy, train_full = (read_events(os.path.join(c.model_dir, "train"))
                                         for c in (cut, copy, full))
    # Steps continue (7 logged twice: once before the crash, once after the resume; the
    # later one counts), the schedule continues, and the resumed steps are exactly those of
    # the uninterrupted run resumed from the same checkpoint with the same stream.
    assert sorted(train_cut["loss"]) == list(range(1, 9))
    for step in (7, 8):
        assert train_cut["learning_rate"][step] == pytest.approx(train_full["learning_rate"][step])
        for tag in ("loss", "loss_label", "loss_patch", "loss_regression"):
            assert train_cut[tag][step] == pytest.approx(train_copy[tag][step], rel=1e-5,
                                                         abs=1e-6), (tag, step)
    assert read_events(os.path.join(cut.model_dir, "eval"))["mAP"].keys() == {4, 8}


@pytest.mark.slow
def test_nan_loss_stops_with_step_and_loss_named(data_dir, tmp_path):
    config = tiny_config(data_dir, tmp_path, learning_rate=1e30, optimizer="sgd", momentum=0.0,
                         weight_decay=0.0, train_steps=6, checkpoint_every=1)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step \d+: .*loss.*=(nan|inf)"):
        run_training(config)
    # No checkpoint holds the non-finite weights.
    for path in glob.glob(str(tmp_path / "ckpt-*.index")):
        values = _checkpoint_values(path[:-len(".index")])
        assert all(np.isfinite(v).all() for v in values.values() if v.dtype.kind == "f"), path


@pytest.mark.slow
@pytest.mark.parametrize("model", ["baseline", "scdnn"])
def test_two_replicas_match_one_device(data_dir, tmp_path, model):
    # Same seed, same global batch of 4: one device vs two logical CPUs (2 images each).
    # BatchNorm statistics are per replica, so they are frozen here; every anchor is sampled
    # (anchor_samples > 2 x 1020 anchors at 64 px), so the patch loss has no randomness.
    losses = {}
    for strategy in ("one_device", "mirrored"):
        config = tiny_config(data_dir, tmp_path / strategy, model=model, strategy=strategy,
                             freeze_bn=True, eval_pattern="", train_steps=3, anchor_samples=4096)
        run_training(config)
        losses[strategy] = read_events(os.path.join(config.model_dir, "train"))
    for tag in losses["one_device"]:
        if tag.startswith("loss"):
            for step in (1, 2, 3):
                # After step 1 the weights come from all-reduced gradients (a different
                # float32 summation order): see tests/test_multi_worker.py. The gradient
                # scaling is pinned exactly by tests/test_scdnn.py.
                rel = 1e-4 if step == 1 else 1e-3
                assert losses["mirrored"][tag][step] == pytest.approx(
                    losses["one_device"][tag][step], rel=rel, abs=1e-5), (tag, step)
