"""PR curves, HParams and profiler traces, read back from the event files / trace folders."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.plugins.pr_curve import metadata as pr_metadata
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from scdnn_tf.engine import callbacks as cb
from scdnn_tf.engine import summaries as tbs
from scdnn_tf.core.config import TrainConfig
from scdnn_tf.evaluation.metrics import multilabel_metrics
from scdnn_tf.engine.trainer import run_training
from helpers import CLASSES, tiny_config, write_tiny_dataset

# 5 images, 2 classes; thresholds 0, .25, .5, .75, 1 (num_thresholds=5).
LABELS = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0]], np.float32)
SCORES = np.array([[0.9, 0.1], [0.5, 0.6], [0.3, 0.5], [0.8, 0.0], [0.5, 1.0]], np.float32)
WEIGHTS = np.array([[1, 1], [1, 1], [1, 1], [1, 1], [1, 0]], np.float32)  # image 4 class 1 ignored
# Counted by hand (score >= t). Class 0: positives 0.9, 0.3, 0.5; negatives 0.5, 0.8.
HAND_0 = dict(tp=[3, 3, 2, 1, 0], fp=[2, 2, 2, 1, 0])
# Class 1 (image 4 left out): positives 0.6, 0.5; negatives 0.1, 0.0.
HAND_1 = dict(tp=[2, 2, 2, 0, 0], fp=[2, 0, 0, 0, 0])


def _events(folder):
    """[(step, tag, plugin name, plugin content, ndarray)] from a folder's event files."""
    out = []
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                out.append((event.step, v.tag, v.metadata.plugin_data.plugin_name,
                            v.metadata.plugin_data.content, tf.make_ndarray(v.tensor)))
    return out


def _expected(hand, positives, negatives):
    tp, fp = np.array(hand["tp"], float), np.array(hand["fp"], float)
    fn, tn = positives - tp, negatives - fp
    return np.stack([tp, fp, tn, fn, tp / np.maximum(tp + fp, 1e-7),
                     tp / np.maximum(tp + fn, 1e-7)])


def test_pr_curve_data_equals_hand_counts():
    data = tbs.pr_curve_data(LABELS, SCORES, WEIGHTS, num_thresholds=5)
    assert data.shape == (2, 6, 5) and data.dtype == np.float32
    np.testing.assert_allclose(data[0], _expected(HAND_0, 3, 2), rtol=1e-6)
    np.testing.assert_allclose(data[1], _expected(HAND_1, 2, 2), rtol=1e-6)


def test_eval_summaries_write_pr_curves_the_plugin_reads(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    predictions = {"labels": LABELS, "scores": SCORES, "label_weights": WEIGHTS}
    metrics = multilabel_metrics(LABELS, SCORES, weights=WEIGHTS)
    cb.write_eval_summaries(writer, 9, metrics, ["cat", "dog"], predictions=predictions)
    curves = {tag: (step, name, content, value) for step, tag, name, content, value
              in _events(str(tmp_path)) if tag.startswith("pr_curve/")}
    assert sorted(curves) == ["pr_curve/cat", "pr_curve/dog"]
    step, plugin, content, value = curves["pr_curve/cat"]
    assert (step, plugin) == (9, pr_metadata.PLUGIN_NAME)
    assert pr_metadata.parse_plugin_metadata(content).num_thresholds == tbs.NUM_THRESHOLDS
    assert value.shape == (6, tbs.NUM_THRESHOLDS)
    # Thresholds 0, .25, .5, .75, 1 are indices 0, 25, 50, 75, 100 of the 101.
    np.testing.assert_allclose(value[:, ::25], _expected(HAND_0, 3, 2), rtol=1e-6)
    np.testing.assert_allclose(curves["pr_curve/dog"][3][:, ::25], _expected(HAND_1, 2, 2),
                               rtol=1e-6)


@pytest.mark.parametrize("value", ["3,2", "0,2", "x", "1,2,3", "2,99"])
def test_profile_steps_validation_names_the_flag(tmp_path, value):
    data = write_tiny_dataset(tmp_path / "d", num_train=1, num_val=1)
    with pytest.raises(ValueError, match=r"--profile_steps="):
        tiny_config(data, tmp_path / "m", profile_steps=value).validate()


@pytest.fixture(scope="module")
def profiled_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb")
    data = write_tiny_dataset(root / "data")
    config = tiny_config(data, root / "run", profile_steps="2,3", context_scale=1.5)
    run_training(config)
    return config


@pytest.mark.slow
def test_tiny_run_writes_hparams_session_with_its_flags(profiled_run):
    events = [e for e in _events(profiled_run.model_dir) if e[2] == hp_metadata.PLUGIN_NAME]
    by_tag = {tag: content for _, tag, _, content, _ in events}
    experiment = hp_metadata.parse_experiment_plugin_data(by_tag[hp_metadata.EXPERIMENT_TAG])
    names = {h.name for h in experiment.hparam_infos}
    assert {"backbone", "context_scale", "branches", "min_level", "anchor_sizes"} <= names
    assert "model_dir" not in names and "train_pattern" not in names
    assert {(m.name.group, m.name.tag) for m in experiment.metric_infos} >= {
        ("eval", "mAP"), ("train", "loss")}
    session = hp_metadata.parse_session_start_info_plugin_data(
        by_tag[hp_metadata.SESSION_START_INFO_TAG])
    values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
              for k, v in session.hparams.items()}
    assert values["context_scale"] == pytest.approx(1.5)
    assert values["backbone"] == "small" and values["branches"] == "both"
    assert values["anchor_sizes"] == "8,16,32,64"
    # The metrics the table shows exist where the session points (model_dir/eval).
    eval_tags = {tag for _, tag, *_ in _events(os.path.join(profiled_run.model_dir, "eval"))}
    assert {"mAP", "CF1", "OF1"} <= eval_tags
    assert {f"pr_curve/{c}" for c in CLASSES} <= eval_tags


@pytest.mark.slow
def test_profile_steps_write_a_trace_the_profile_tab_opens(profiled_run):
    traces = glob.glob(os.path.join(profiled_run.model_dir, "train", "plugins", "profile", "*",
                                    "*.xplane.pb"))
    assert len(traces) == 1
    space = xplane_pb2.XSpace()
    with open(traces[0], "rb") as f:
        space.ParseFromString(f.read())
    steps = []
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        stats = {k: v.name for k, v in plane.stat_metadata.items()}
        steps += [s.int64_value for line in plane.lines for e in line.events
                  if names.get(e.metadata_id) == "train"
                  for s in e.stats if stats[s.metadata_id] == "step_num"]
    assert sorted(steps) == [2, 3]  # one step marker per profiled step


def test_no_trace_without_profile_steps(tmp_path):
    assert tbs.profiler_callbacks(TrainConfig(), str(tmp_path)) == []
