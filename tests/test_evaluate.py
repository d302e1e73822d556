"""Evaluation: the padded distributed predictor, metrics.json and thresholds from a model_dir."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from scdnn_tf.evaluation import evaluator as evaluate
from scdnn_tf.data.pipeline import make_dataset
from scdnn_tf.core.strategy import make_strategy
from scdnn_tf.engine.trainer import run_training
from helpers import CLASSES, tiny_config, write_tiny_dataset


def _toy_model():
    inputs = keras.Input((64, 64, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    logits = keras.layers.Dense(3, kernel_initializer="glorot_uniform", name="fc")(pooled / 255.0)
    return keras.Model(inputs, {"logits": logits})


def test_predictor_pads_the_last_batch_and_keeps_order(tmp_path):
    data = write_tiny_dataset(tmp_path, num_train=2, num_val=7)
    dataset = make_dataset(f"{data}/val-*", 3, 64, 4, training=False)
    strategy = make_strategy("mirrored")  # two logical CPUs: 2 images per replica
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = _toy_model()
    predictions = evaluate.Predictor(model, strategy, 4).predict_dataset(dataset)
    images = np.concatenate([b["image"].numpy() for b in dataset])
    labels = np.concatenate([b["labels"].numpy() for b in dataset])
    assert predictions["scores"].shape == (7, 3)
    expected = tf.sigmoid(model(images)["logits"]).numpy()
    np.testing.assert_allclose(predictions["scores"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(predictions["labels"], labels)
    samples = evaluate.Predictor(model, strategy, 4).sample_outputs(dataset, 5)
    assert samples["image"].shape == (5, 64, 64, 3) and samples["scores"].shape == (5, 3)
    assert "patch_boxes" not in samples


def test_confident_model_is_ranked_by_logits(tmp_path):
    """Logits 17..25: float32 sigmoids all tie at 1.0, the metrics still rank correctly."""
    from sklearn.metrics import average_precision_score

    data = write_tiny_dataset(tmp_path, num_train=2, num_val=12)
    dataset = make_dataset(f"{data}/val-*", 3, 64, 4, training=False)
    inputs = keras.Input((64, 64, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs) / 255.0
    kernel = np.array([[30.0, -20.0, 10.0], [-20.0, 30.0, -25.0], [10.0, -10.0, 30.0]])
    logits = keras.layers.Dense(3, kernel_initializer=keras.initializers.Constant(kernel),
                                bias_initializer=keras.initializers.Constant(21.0))(pooled)
    model = keras.Model(inputs, {"logits": keras.ops.clip(logits, 17.5, 60.0)})
    predictions = evaluate.Predictor(model, tf.distribute.get_strategy(), 4).predict_dataset(
        dataset)
    assert np.all(predictions["scores"] == 1.0)  # saturated: useless for ranking
    for c in range(3):
        assert len(np.unique(predictions["logits"][:, c])) > 8
    metrics = evaluate.compute_metrics(predictions)
    labels = predictions["labels"]
    expected = [average_precision_score(labels[:, c], predictions["logits"][:, c])
                for c in range(3) if labels[:, c].any()]
    assert metrics["mAP"] == pytest.approx(np.mean(expected), abs=1e-12)
    thresholds = evaluate.metrics_lib.per_class_best_thresholds(
        labels, predictions["logits"], from_logits=True)
    assert np.all(thresholds < 1.0)  # a threshold of 1.0 would predict nothing


def test_metrics_to_json_names_classes():
    rng = np.random.RandomState(0)
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]], np.float32)
    out = evaluate.metrics_to_json(evaluate.compute_metrics(
        {"labels": y, "logits": rng.randn(3, 3), "label_weights": np.ones_like(y)}), CLASSES)
    assert set(out["per_class_AP"]) == set(CLASSES)
    assert out["per_class_AP"]["blue"] is None  # no positive -> NaN -> null
    json.dumps(out)


def test_run_evaluation_rejects_architecture_overrides(tmp_path):
    tiny_config(str(tmp_path), tmp_path).write(str(tmp_path))
    with pytest.raises(ValueError, match=r"\['backbone'\] cannot change at evaluation"):
        evaluate.run_evaluation(str(tmp_path), {"backbone": "resnet50"})


def test_run_evaluation_without_checkpoint_fails_clearly(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", num_train=2, num_val=2)
    config = tiny_config(data, tmp_path / "run")
    config.write(config.model_dir)
    with open(os.path.join(config.model_dir, "label_map.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    with pytest.raises(FileNotFoundError, match="no checkpoint in --model_dir"):
        evaluate.run_evaluation(config.model_dir)


@pytest.mark.slow
def test_evaluate_writes_metrics_and_thresholds_matching_training(tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    config = tiny_config(data, tmp_path / "run", train_steps=2, eval_every=2, ema_decay=0.5)
    final = run_training(config)
    thresholds_path = tmp_path / "thresholds.json"
    metrics = evaluate.run_evaluation(config.model_dir, {"strategy": "mirrored"},
                                      str(thresholds_path))
    # Same checkpoint, same EMA weights: evaluation reproduces training's last evaluation.
    assert metrics["mAP"] == pytest.approx(final["mAP"], abs=1e-5)
    with open(os.path.join(config.model_dir, "metrics.json")) as f:
        saved = json.load(f)
    assert saved["mAP"] == pytest.approx(metrics["mAP"])
    assert set(saved["per_class_AP"]) == set(CLASSES)
    assert saved["checkpoint"].endswith("ckpt-2")
    with open(thresholds_path) as f:
        thresholds = json.load(f)
    assert thresholds["classes"] == CLASSES
    assert len(thresholds["thresholds"]) == 3
    assert all(0.0 <= t <= 1.0 for t in thresholds["thresholds"])
    # The inference patch count may change at evaluation (no variable depends on it).
    fewer = evaluate.run_evaluation(config.model_dir, {"num_patches": 1})
    assert fewer["num_images"] == metrics["num_images"]
    assert fewer["mAP"] == pytest.approx(np.nanmean(fewer["per_class_AP"]))
