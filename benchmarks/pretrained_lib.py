"""Pieces of benchmarks/pretrained.py that need no training: the frozen linear probe,
object sizes per class, and the size groups of the per-class AP.

Kept apart from the CLI so that tests drive them on small inputs.
"""

from __future__ import annotations

import statistics

import numpy as np
import tensorflow as tf

from scdnn_tf.data.pipeline import make_dataset
from scdnn_tf.evaluation import evaluator

SMALL_AREA = 0.01  # a class is "small" when its median box covers under 1 % of the image


def records_arrays(pattern: str, num_classes: int, image_size: int, batch_size: int = 16):
    """Every record of `pattern`, unaugmented: (images uint8 [N,S,S,3], labels [N,C],
    label_weights [N,C], box areas per class {index: [normalized areas]})."""
    dataset = make_dataset(pattern, num_classes, image_size, batch_size, training=False)
    images, labels, weights, areas = [], [], [], {}
    for batch in dataset:
        images.append(tf.cast(tf.clip_by_value(tf.round(batch["image"]), 0, 255), tf.uint8).numpy())
        labels.append(batch["labels"].numpy())
        weights.append(batch["label_weights"].numpy())
        boxes, classes = batch["boxes"].numpy(), batch["box_classes"].numpy()
        area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
        for c, a in zip(classes[classes >= 0], area[classes >= 0]):
            areas.setdefault(int(c), []).append(float(a))
    return (np.concatenate(images), np.concatenate(labels), np.concatenate(weights), areas)


def size_groups(areas: dict[int, list[float]], class_names: list[str],
                threshold: float = SMALL_AREA) -> dict[str, list[str]]:
    """Classes by the median normalized area of their boxes: small (< threshold) and the
    rest; classes without a box are in neither."""
    medians = {c: statistics.median(a) for c, a in areas.items() if a}
    small = [class_names[c] for c in sorted(medians) if medians[c] < threshold]
    rest = [class_names[c] for c in sorted(medians) if medians[c] >= threshold]
    return {f"small (median box < {100 * threshold:g} % of image)": small,
            "the rest": rest}


def pooled_features(images: np.ndarray, weights_path: str, batch_size: int = 32) -> np.ndarray:
    """Global-average-pooled features [N, 1280] of keras.applications' MobileNetV2 with the
    ImageNet weights at `weights_path` (inputs [0, 255] scaled by its preprocess_input)."""
    import keras  # noqa: PLC0415

    size = images.shape[1]
    net = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False,
                                         weights=weights_path, pooling="avg")
    prep = keras.applications.mobilenet_v2.preprocess_input
    return np.concatenate([net(prep(images[i:i + batch_size].astype("float32")),
                               training=False).numpy()
                           for i in range(0, len(images), batch_size)])


def linear_probe_scores(train_x, train_y, eval_x, c: float = 1.0, seed: int = 0):
    """One logistic regression per class on standardized features -> eval logits [N, C].

    Classes with no positive (or no negative) training image get a constant score."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    scaler = StandardScaler().fit(train_x)
    tx, ex = scaler.transform(train_x), scaler.transform(eval_x)
    scores = np.zeros([len(eval_x), train_y.shape[1]], np.float32)
    for k in range(train_y.shape[1]):
        y = train_y[:, k] > 0.5
        if y.all() or not y.any():
            scores[:, k] = 10.0 if y.all() else -10.0
            continue
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(tx, y)
        scores[:, k] = clf.decision_function(ex)
    return scores


def probe_metrics(scores, labels, label_weights, class_names) -> dict:
    """The evaluator's metrics json of probe logits: mAP, per_class_AP by name, ..."""
    predictions = {"labels": labels, "logits": scores, "label_weights": label_weights}
    return evaluator.metrics_to_json(evaluator.compute_metrics(predictions), class_names)
