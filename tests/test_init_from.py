"""--init_from: the variable plan (pure), a 6-class run initializing a 4-class run, and the
refusals."""

import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from scdnn_tf import SCDNN
from scdnn_tf.core import checkpoints, init_from, restore
from scdnn_tf.core.strategy import make_strategy
from scdnn_tf.engine.trainer import run_training
from scdnn_tf.modeling.baseline import BaselineClassifier

from helpers import tiny_config, write_tiny_dataset

SOURCE_CLASSES = ["red", "green", "blue", "cyan", "magenta", "yellow"]
TARGET_CLASSES = ["green", "white", "red", "black"]  # green = source 1, red = source 0


def test_class_pairs_follow_the_names():
    assert init_from.class_pairs(SOURCE_CLASSES, TARGET_CLASSES) == [(1, 0), (0, 2)]
    assert init_from.class_pairs(["a"], ["b"]) == []


def test_plan_sorts_variables_into_loaded_by_class_new_and_skipped():
    source = {"conv:kernel": (3, 3, 3, 8), "fpn:kernel": (1, 1, 8, 4), "old_head:kernel": (4, 2),
              "pred:classifier:kernel": (16, 6), "pred:classifier:bias": (6,),
              "seed_generator:seed_generator_state": (2,)}
    target = {"conv:kernel": (3, 3, 3, 8), "fpn:kernel": (1, 1, 8, 8), "new_head:kernel": (4, 2),
              "pred:classifier:kernel": (16, 4), "pred:classifier:bias": (4,),
              "seed_generator:seed_generator_state": (2,)}
    plan = init_from.plan_init(source, target, SOURCE_CLASSES, TARGET_CLASSES)
    assert plan.loaded == ["conv:kernel"]
    assert plan.by_class == {"pred:classifier:kernel": -1, "pred:classifier:bias": -1}
    assert sorted(plan.new) == ["fpn:kernel", "new_head:kernel",
                                "seed_generator:seed_generator_state"]
    assert plan.skipped == ["fpn:kernel", "old_head:kernel", "seed_generator:seed_generator_state"]
    assert plan.class_pairs == [(1, 0), (0, 2)]
    # Another hidden width: the output layer cannot take rows.
    wider = dict(target, **{"pred:classifier:kernel": (32, 4)})
    assert "pred:classifier:kernel" in init_from.plan_init(
        source, wider, SOURCE_CLASSES, TARGET_CLASSES).new
    # No shared class: output layers new, the rest still loads.
    plan = init_from.plan_init(source, target, SOURCE_CLASSES, ["x", "y", "z", "w"])
    assert plan.loaded == ["conv:kernel"] and not plan.by_class
    with pytest.raises(ValueError, match="6 classes in the checkpoint but its label map has 5"):
        init_from.plan_init(source, target, SOURCE_CLASSES[:5], TARGET_CLASSES)


def test_merge_classes_copies_the_paired_slices_only():
    source = np.arange(12, dtype="float32").reshape(2, 6)
    target = -np.ones((2, 4), "float32")
    merged = init_from.merge_classes(source, target, -1, [(1, 0), (0, 2)])
    np.testing.assert_array_equal(merged, [[1, -1, 0, -1], [7, -1, 6, -1]])
    np.testing.assert_array_equal(target, -1)  # not modified in place
    np.testing.assert_array_equal(
        init_from.merge_classes(np.arange(6.0), np.zeros(4), 0, [(5, 3)]), [0, 0, 0, 5])


@pytest.mark.parametrize("make", [
    lambda c: SCDNN(num_classes=c, backbone="small", image_size=64, fpn_channels=16,
                    anchor_sizes=(8, 16, 32, 64), num_patches=4, num_train_patches=4,
                    fc_units=16, relation="attention", global_patch=True,
                    context_scales=(1.5, 3.0)),
    lambda c: BaselineClassifier(c, backbone="small", image_size=64)])
def test_class_axes_are_exactly_the_variables_with_a_class_dimension(make):
    shapes = []
    for num_classes in (3, 5):
        model = make(num_classes)
        model(np.zeros((1, 64, 64, 3), "float32"))
        shapes.append({k: tuple(v.shape) for k, v in checkpoints.model_variables(model).items()})
    differ = {k for k in shapes[0] if shapes[0][k] != shapes[1][k]}
    axes = init_from.class_axes(shapes[0])
    assert differ and set(axes) == differ
    for key, axis in axes.items():
        assert (shapes[0][key][axis], shapes[1][key][axis]) == (3, 5)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("init_from")
    data = write_tiny_dataset(root / "data6", class_names=SOURCE_CLASSES)
    model_dir = root / "source"
    run_training(tiny_config(data, model_dir, eval_pattern="", train_steps=2,
                             learning_rate=0.05))
    return str(model_dir)


@pytest.fixture(scope="module")
def target_data(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("data4"), class_names=TARGET_CLASSES)


def _source_value(model_dir, key):
    prefix = checkpoints.find_restorable(model_dir, move_damaged=False)
    return tf.train.load_checkpoint(prefix).get_tensor(
        f"variables/{key.replace('.', '..')}/.ATTRIBUTES/VARIABLE_VALUE")


def test_a_six_class_run_initializes_a_four_class_run(source_run, target_data, tmp_path):
    config = tiny_config(target_data, tmp_path / "target", eval_pattern="", init_from=source_run)
    config.validate()
    strategy = make_strategy("one_device")
    model, _, restored = restore.build_and_restore(config, 4, strategy)
    assert restored is None
    variables = checkpoints.model_variables(model)
    fresh = {k: v.numpy() for k, v in variables.items()}
    with strategy.scope():
        plan = init_from.initialize(model, source_run, TARGET_CLASSES)
    class_keys = {k for k in variables if ":classifier:" in k}
    assert set(plan.by_class) == class_keys and len(class_keys) == 4
    assert not plan.new and not plan.skipped
    assert set(plan.loaded) == set(variables) - class_keys
    for key in plan.loaded:  # backbone, FPN, patch heads, hidden layers: the source's
        np.testing.assert_array_equal(variables[key].numpy(), _source_value(source_run, key))
    assert any(key.startswith("conv1") for key in plan.loaded)  # the backbone's stem
    for key in class_keys:
        value, source = variables[key].numpy(), _source_value(source_run, key)
        np.testing.assert_array_equal(value[..., 0], source[..., 1])  # green
        np.testing.assert_array_equal(value[..., 2], source[..., 0])  # red
        for new_class in (1, 3):  # white, black: as initialized, no source class
            np.testing.assert_array_equal(value[..., new_class], fresh[key][..., new_class])
            if key.endswith("kernel"):
                assert not any(np.allclose(value[..., new_class], source[..., c])
                               for c in range(6))
    assert int(model.optimizer.iterations.numpy()) == 0
    for variable in model.optimizer.variables:  # momentum slots: fresh zeros
        if variable.name != "learning_rate":
            assert not np.any(variable.numpy()), variable.name


def test_a_run_starts_from_init_from_and_its_resume_ignores_it(source_run, target_data,
                                                               tmp_path, caplog):
    model_dir = tmp_path / "target"
    caplog.set_level(logging.INFO, logger="absl")  # an earlier absl app may have raised its level
    run_training(tiny_config(target_data, model_dir, eval_pattern="", train_steps=1,
                             init_from=source_run))
    assert "4 per-class variables with 2 of 4 classes copied (green, red)" in caplog.text
    caplog.clear()  # the same run again: it holds step 1 already, nothing left to train
    run_training(tiny_config(target_data, model_dir, eval_pattern="", train_steps=1,
                             init_from=source_run))
    assert "ignored: the run resumes from its own checkpoint" in caplog.text
    assert "classes copied" not in caplog.text


def test_refusals_name_the_flag_and_the_problem(source_run, target_data, tmp_path):
    with pytest.raises(ValueError, match="--init_from=.*nowhere.* must be a model_dir or a "
                                         "checkpoint prefix"):
        tiny_config(target_data, tmp_path / "t", init_from=str(tmp_path / "nowhere")).validate()
    with pytest.raises(ValueError, match="must not be --model_dir"):
        tiny_config(target_data, source_run, init_from=source_run).validate()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="the directory holds no checkpoint"):
        init_from.resolve_source(str(empty))
    model = BaselineClassifier(4, backbone="small", image_size=64)
    model(np.zeros((1, 64, 64, 3), "float32"))
    # A GAP baseline takes an SCDNN run's backbone; its own classifier starts fresh.
    plan = init_from.initialize(model, source_run, TARGET_CLASSES)
    assert sorted(plan.new) == ["baseline:classifier:bias", "baseline:classifier:kernel"]
    assert len(plan.loaded) == len(model.variables) - 2 and not plan.by_class
    # A checkpoint copied without its label map.
    bare = tmp_path / "bare"
    bare.mkdir()
    prefix = checkpoints.find_restorable(source_run, move_damaged=False)
    for path in tf.io.gfile.glob(prefix + ".*"):
        shutil.copy(path, bare)
    with pytest.raises(ValueError, match="cannot read .*label map not found"):
        init_from.initialize(model, str(bare / os.path.basename(prefix)), TARGET_CLASSES)
    # A checkpoint none of whose variables is in the model.
    other = tmp_path / "other"
    tf.train.Checkpoint(variables=tf.train.Checkpoint(unrelated=tf.Variable([1.0]))).write(
        str(other / "ckpt-1"))
    (other / "label_map.txt").write_text("red\n")
    with pytest.raises(ValueError, match="no variable of .* matches this model"):
        init_from.initialize(model, str(other / "ckpt-1"), TARGET_CLASSES)
