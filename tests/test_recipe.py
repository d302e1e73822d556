"""The training recipe flags: one-cycle schedule, label loss and augmentation flags, EMA
scored both ways with the better weights recorded and exported."""

import json
import math
import os

import numpy as np
import pytest

from scdnn_tf.core import restore
from scdnn_tf.core.builders import build_model, build_schedule
from scdnn_tf.engine.trainer import run_training
from scdnn_tf.serving.exporter import load_from_model_dir

from helpers import read_events, tiny_config, write_tiny_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def test_onecycle_peaks_at_its_fraction_and_ends_low(tmp_path):
    config = tiny_config(tmp_path, tmp_path, lr_schedule="onecycle", train_steps=200,
                         learning_rate=0.1)
    schedule = build_schedule(config)
    values = np.array([float(schedule(step)) for step in range(201)])
    assert int(np.argmax(values)) == 40  # 20 % of 200 steps
    assert values[40] == pytest.approx(0.1)
    assert values[0] == pytest.approx(0.1 / 25)
    assert (np.diff(values[:41]) > 0).all() and (np.diff(values[40:]) <= 0).all()
    assert values[200] == pytest.approx(0.1 / 25 / 1e4)
    assert values[120] == pytest.approx(  # cosine half way down: the mean of peak and end
        (0.1 + 0.1 / 25 / 1e4) / 2, rel=1e-4)
    late = tiny_config(tmp_path, tmp_path, lr_schedule="onecycle", train_steps=200,
                       lr_peak_fraction=0.5, onecycle_div_factor=10)
    values = [float(build_schedule(late)(s)) for s in (0, 100, 101)]
    assert values[0] == pytest.approx(0.001) and values[1] == pytest.approx(0.01)
    assert values[1] > values[2]


def test_cosine_schedule_unchanged(tmp_path):
    config = tiny_config(tmp_path, tmp_path, train_steps=100, warmup_steps=10,
                         learning_rate=0.2)
    schedule = build_schedule(config)
    assert float(schedule(5)) == pytest.approx(0.1)
    assert float(schedule(55)) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))


@pytest.mark.parametrize("override, message", [
    (dict(label_loss="l1"), "--label_loss='l1' must be one of bce, focal, asl"),
    (dict(asl_gamma_neg=-1.0), "--asl_gamma_neg=-1.0 must be >= 0"),
    (dict(asl_clip=1.0), r"--asl_clip=1.0 must be in \[0, 1\)"),
    (dict(focal_gamma=float("inf")), "--focal_gamma=inf must be >= 0"),
    (dict(randaugment="2"), "--randaugment must be N,M .* got '2'"),
    (dict(randaugment="2,11"), r"--randaugment: M \(magnitude\) must be in \[0, 10\], got 11.0"),
    (dict(cutout=1.5), r"--cutout=1.5 must be in \[0, 1\)"),
    (dict(lr_peak_fraction=0.0), r"--lr_peak_fraction=0.0 must be in \(0, 1\)"),
    (dict(onecycle_div_factor=0.5), "--onecycle_div_factor=0.5 must be >= 1"),
    (dict(lr_schedule="onecycle", warmup_steps=1), "--warmup_steps=1 is for --lr_schedule"),
    (dict(lr_schedule="step"), "--lr_schedule='step' must be one of cosine, onecycle"),
])
def test_recipe_flags_validated(data_dir, tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(data_dir, tmp_path, **override).validate()


@pytest.mark.parametrize("model", ["scdnn", "baseline"])
def test_build_model_passes_the_label_loss(tmp_path, model):
    config = tiny_config(tmp_path, tmp_path, model=model, label_loss="asl", asl_gamma_neg=2.0,
                         asl_gamma_pos=1.0, asl_clip=0.1, focal_gamma=3.0)
    got = build_model(config, 3).get_config()
    assert {k: got[k] for k in ("label_loss", "asl_gamma_neg", "asl_gamma_pos", "asl_clip",
                                "focal_gamma")} == dict(label_loss="asl", asl_gamma_neg=2.0,
                                                        asl_gamma_pos=1.0, asl_clip=0.1,
                                                        focal_gamma=3.0)


@pytest.fixture(scope="module")
def ema_run(data_dir, tmp_path_factory):
    """A tiny run with every recipe option and EMA, evaluated at steps 2 and 4."""
    config = tiny_config(data_dir, tmp_path_factory.mktemp("ema_run"), train_steps=4,
                         eval_every=2, ema_decay=0.5, label_loss="asl", randaugment="2,9",
                         cutout=0.5, lr_schedule="onecycle", learning_rate=0.05)
    return config, run_training(config)


def test_every_evaluation_scores_raw_and_ema_weights(ema_run):
    config, metrics = ema_run
    raw = read_events(os.path.join(config.model_dir, "eval"))
    ema = read_events(os.path.join(config.model_dir, "eval_ema"))
    for events in (raw, ema):
        assert sorted(events["mAP"]) == [2, 4] and sorted(events["CF1"]) == [2, 4]
    record = json.load(open(os.path.join(config.model_dir, restore.WEIGHTS_CHOICE_NAME)))
    assert record["step"] == 4 and record["metric"] == "mAP"
    assert record["raw"] == pytest.approx(raw["mAP"][4], abs=1e-6)
    assert record["ema"] == pytest.approx(ema["mAP"][4], abs=1e-6)
    better = "raw" if record["raw"] > record["ema"] else "ema"
    assert record["best"] == better
    assert metrics["mAP"] == pytest.approx(record[better], abs=1e-6)  # the run's result
    assert config.to_dict()["label_loss"] == "asl"
    train = read_events(os.path.join(config.model_dir, "train"))
    lr = train["learning_rate"]  # one-cycle over 4 steps: peak at step 1, then down
    assert lr[1] == pytest.approx(0.05) and lr[4] < lr[3] < lr[2] < lr[1]


def _weights(model):
    return [v.numpy() for v in model.trainable_variables]


def test_export_loads_the_recorded_better_weights_and_honours_the_override(ema_run):
    config, _ = ema_run
    path = os.path.join(config.model_dir, restore.WEIGHTS_CHOICE_NAME)
    recorded = json.load(open(path))
    raw = _weights(load_from_model_dir(config.model_dir, weights="raw")[0])
    ema = _weights(load_from_model_dir(config.model_dir, weights="ema")[0])
    assert any(not np.allclose(a, b) for a, b in zip(raw, ema))
    try:
        for best, expected in (("raw", raw), ("ema", ema)):
            with open(path, "w") as f:
                json.dump({**recorded, "best": best}, f)
            got = _weights(load_from_model_dir(config.model_dir, weights="auto")[0])
            for a, b in zip(got, expected):
                np.testing.assert_array_equal(a, b)
        os.remove(path)  # no record (a run that never evaluated): the EMA weights
        assert restore.resolve_weights(config, "auto") == "ema"
        with open(path, "w") as f:
            f.write("{not json")
        with pytest.raises(ValueError, match="weights_choice.json: not a weights record"):
            restore.resolve_weights(config, "auto")
    finally:
        with open(path, "w") as f:
            json.dump(recorded, f)


def test_weights_choice_without_ema(tmp_path):
    config = tiny_config(tmp_path, tmp_path)
    assert restore.resolve_weights(config, "auto") == "raw"
    assert restore.resolve_weights(config, "raw") == "raw"
    with pytest.raises(ValueError, match="--weights=ema: the run .* did not use --ema_decay"):
        restore.resolve_weights(config, "ema")
    with pytest.raises(ValueError, match="--weights='best' must be one of auto, raw, ema"):
        restore.resolve_weights(config, "best")


def test_better_weights_rule():
    assert restore.better_weights({"raw": {"mAP": 0.6}, "ema": {"mAP": 0.5}}) == "raw"
    assert restore.better_weights({"raw": {"mAP": 0.5}, "ema": {"mAP": 0.5}}) == "ema"
    assert restore.better_weights({"raw": {"mAP": 0.1}, "ema": {"mAP": float("nan")}}) == "raw"
    assert restore.better_weights({"raw": {"mAP": float("nan")}, "ema": {"mAP": 0.1}}) == "ema"
