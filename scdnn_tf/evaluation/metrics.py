"""Multi-label classification metrics (NumPy): mAP, CP/CR/CF1, OP/OR/OF1 and top-3 variants.

Conventions (docs/metrics.md has the full text):
  * All values are fractions in [0, 1]; printing code (`format_metrics_table`) shows x100.
  * AP is non-interpolated, identical to `sklearn.metrics.average_precision_score` (tied
    scores form one threshold). mAP and every per-class mean (CP, CR, CF1_mean) run over
    the "evaluated" classes: those with at least one positive among weighted entries.
  * An entry (image n, class c) with weight 0 (VOC "difficult") is left out of class c's
    AP and of every P/R count; it still takes part in the image's top-3 ranking, because
    the model does not know which entries are difficult.
  * A label is predicted when score >= threshold (ML-GCN's `scores >= 0` on logits).
    A class with no predictions has precision 0 (ML-GCN sets Np=0 to 1).
  * `from_logits=True`: y_score are logits. Ranking (AP, top-3) uses them directly, since a
    float32 sigmoid saturates to exactly 1.0 above ~16.6 and would tie confident scores;
    probability thresholds t are applied exactly as `logit >= logit_threshold(t)`.
"""

from __future__ import annotations

import numpy as np

from scdnn_tf.evaluation.thresholds import logit_threshold, probability_at_most

TOP_K = 3
_SUMMARY_KEYS = ("mAP", "CP", "CR", "CF1", "CF1_mean", "OP", "OR", "OF1")


def _validate(y_true, y_score, weights=None, from_logits=False):
    """Checks and converts inputs.

    Args:
      y_true: [N, C] 0/1 labels (bool, int or float).
      y_score: [N, C] probabilities in [0, 1] (after the sigmoid), or finite logits when
        `from_logits`.
      weights: [N, C] 0/1 or None (all ones).

    Returns:
      (y_true bool [N,C], y_score float64 [N,C], mask bool [N,C]).

    Raises:
      ValueError: on a shape mismatch, non-finite or out-of-range scores, labels or
        weights other than 0/1. The message echoes the shapes.
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    shapes = f"y_true shape {y_true.shape}, y_score shape {y_score.shape}"
    if weights is not None:
        weights = np.asarray(weights)
        shapes += f", weights shape {weights.shape}"
    if y_true.ndim != 2 or y_true.shape != y_score.shape or (
            weights is not None and weights.shape != y_true.shape):
        raise ValueError(f"expected equal [N, C] shapes, got {shapes}")
    bad = ~np.isfinite(y_score)
    if bad.any():
        n, c = np.argwhere(bad)[0]
        raise ValueError(f"y_score has {int(bad.sum())} non-finite values (first at image {n}, "
                         f"class {c}: {y_score[n, c]}); {shapes}")
    if not from_logits and y_score.size and (y_score.min() < 0 or y_score.max() > 1):
        raise ValueError(f"y_score must be probabilities in [0, 1] (apply the sigmoid, or pass from_logits=True); "
                         f"got range [{y_score.min()}, {y_score.max()}]; {shapes}")
    for name, arr in (("y_true", y_true), ("weights", weights)):
        if arr is not None and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must contain only 0 and 1, got values "
                             f"{np.unique(arr)[:10].tolist()}; {shapes}")
    mask = np.ones(y_true.shape, bool) if weights is None else weights.astype(bool)
    return y_true.astype(bool), y_score, mask


def _threshold_curve(y, s):
    """Cumulative counts at each distinct score, highest first (sklearn's _binary_clf_curve).

    Args:
      y: [n] bool labels of one class; s: [n] float scores.

    Returns:
      (thresholds [T] descending distinct scores, tp [T], fp [T]): predicting
      `s >= thresholds[t]` gives tp[t] true and fp[t] false positives.
    """
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp = np.cumsum(y, dtype=np.float64)
    fp = np.arange(1, len(s) + 1, dtype=np.float64) - tp
    # Tied scores are one threshold: only the last index of each run of equal scores counts.
    ends = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, bool)
    return s[ends], tp[ends], fp[ends]


def _class_curves(y_true, y_score, mask):
    """Yields (c, thresholds, tp, fp, num_positives) per class over its weighted entries."""
    for c in range(y_true.shape[1]):
        m = mask[:, c]
        thresholds, tp, fp = _threshold_curve(y_true[m, c], y_score[m, c])
        yield c, thresholds, tp, fp, (tp[-1] if len(tp) else 0.0)


def average_precision_per_class(y_true, y_score, weights=None,
                                from_logits: bool = False) -> np.ndarray:
    """Non-interpolated AP per class, = sklearn average_precision_score per column.

    AP = sum_t (R_t - R_{t-1}) * P_t over distinct score thresholds t (highest first).

    Args:
      y_true: [N, C] 0/1. y_score: [N, C] probabilities (logits if `from_logits`).
      weights: [N, C] 0/1 or None.

    Returns:
      float64 [C], NaN for classes without a positive among weighted entries.
    """
    return _average_precision(*_validate(y_true, y_score, weights, from_logits))


def _average_precision(y_true, y_score, mask):
    """`average_precision_per_class` on validated bool/float64/bool [N, C] arrays."""
    ap = np.full(y_true.shape[1], np.nan)
    for c, _, tp, fp, num_pos in _class_curves(y_true, y_score, mask):
        if num_pos > 0:
            ap[c] = np.sum(np.diff(tp, prepend=0.0) / num_pos * tp / (tp + fp))
    return ap


def _predictions(y_score, threshold, top_k=None):
    """bool [N, C]: score >= threshold (scalar or [C]), and among the top_k of its row if set.

    Ties in the top-k ranking go to the lower class index (stable sort).
    """
    pred = y_score >= threshold
    if top_k is not None and top_k < y_score.shape[1]:
        top = np.argsort(-y_score, axis=1, kind="stable")[:, :top_k]
        in_top = np.zeros_like(pred)
        np.put_along_axis(in_top, top, True, axis=1)
        pred &= in_top
    return pred


def _f1(p, r):
    """Harmonic mean, 0 where p + r == 0 (NaN propagates)."""
    p, r = np.asarray(p, np.float64), np.asarray(r, np.float64)
    total = p + r
    safe = np.where(total > 0, total, 1.0)
    return np.where(total > 0, 2 * p * r / safe, np.where(np.isnan(total), np.nan, 0.0))


def _count_metrics(pred, y_true, mask, evaluated):
    """Per-class and overall P/R/F1 from boolean predictions over weighted entries."""
    tp = np.sum(pred & y_true & mask, axis=0, dtype=np.float64)
    num_pred = np.sum(pred & mask, axis=0, dtype=np.float64)
    num_pos = np.sum(y_true & mask, axis=0, dtype=np.float64)
    precision = tp / np.maximum(num_pred, 1)  # no predictions -> precision 0 (ML-GCN).
    recall = np.where(num_pos > 0, tp / np.maximum(num_pos, 1), np.nan)
    f1 = _f1(precision, recall)
    cp, cr = precision[evaluated].mean(), recall[evaluated].mean()
    op = tp.sum() / max(num_pred.sum(), 1.0)
    orr = tp.sum() / num_pos.sum()
    out = {"CP": cp, "CR": cr, "CF1": _f1(cp, cr), "CF1_mean": f1[evaluated].mean(),
           "OP": op, "OR": orr, "OF1": _f1(op, orr)}
    return {k: float(v) for k, v in out.items()}, precision, recall, f1


def multilabel_metrics(y_true, y_score, threshold=0.5, weights=None,
                       from_logits: bool = False) -> dict:
    """All multi-label metrics in one pass.

    Args:
      y_true: [N, C] 0/1 ground truth.
      y_score: [N, C] probabilities in [0, 1] (sigmoid of the logits), or the logits
        themselves with `from_logits=True` (ranked without saturation).
      threshold: scalar, or [C] per-class probability thresholds (e.g.
        `per_class_best_thresholds`). A label is predicted when sigmoid(logit) >= threshold,
        decided exactly (`logit_threshold`) with `from_logits`.
      weights: [N, C] 0/1 or None; entries with 0 are left out of AP and all counts.
      from_logits: y_score holds logits.

    Returns:
      dict of floats in [0, 1]: mAP, CP, CR, CF1 (F1 of CP and CR, ML-GCN/C-Tran),
      CF1_mean (mean per-class F1, ASL), OP, OR, OF1 (micro), those seven again
      with suffix `_top3` (prediction = in the image's top 3 AND >= threshold), plus
      `per_class_AP`, `per_class_P`, `per_class_R`, `per_class_F1` (float64 [C], NaN where
      a class has no positive; P is 0, not NaN, for such a class), `num_images` (N) and
      `num_classes_evaluated`.

    Raises:
      ValueError: bad inputs (see `_validate`), a threshold of the wrong shape or
        range, or no class with a positive among weighted entries.
    """
    y_true, y_score, mask = _validate(y_true, y_score, weights, from_logits)
    num_classes = y_true.shape[1]
    threshold = np.asarray(threshold, np.float64)
    if threshold.shape not in ((), (num_classes,)) or not np.all((threshold >= 0) & (threshold <= 1)):
        raise ValueError(f"threshold must be a scalar or [{num_classes}] in [0, 1], got shape "
                         f"{threshold.shape}, values {np.ravel(threshold)[:5].tolist()}")
    if from_logits:
        threshold = logit_threshold(threshold)
    evaluated = np.any(y_true & mask, axis=0)
    if not evaluated.any():
        raise ValueError(f"no class has a positive label among weighted entries "
                         f"(y_true shape {y_true.shape}); metrics are undefined")
    ap = _average_precision(y_true, y_score, mask)
    out = {"mAP": float(ap[evaluated].mean())}
    counts, precision, recall, f1 = _count_metrics(
        _predictions(y_score, threshold), y_true, mask, evaluated)
    out.update(counts)
    top3, _, _, _ = _count_metrics(
        _predictions(y_score, threshold, TOP_K), y_true, mask, evaluated)
    out.update({k + "_top3": v for k, v in top3.items()})
    out.update(per_class_AP=ap, per_class_P=precision, per_class_R=recall, per_class_F1=f1,
               num_images=int(y_true.shape[0]), num_classes_evaluated=int(evaluated.sum()))
    return out


def per_class_best_thresholds(y_true, y_score, weights=None, default=0.5,
                              from_logits: bool = False) -> np.ndarray:
    """Per-class probability threshold maximizing that class's F1 on the given split.

    Candidates are the distinct scores of the class's weighted entries (F1 only changes
    there); the returned value t is a score, so `score >= t` reproduces the best F1. When
    several thresholds give the same best F1 the highest (fewest predictions) wins. With
    `from_logits` the best logit x becomes `probability_at_most(x)`, so the exact rule
    `sigmoid(logit) >= t` reproduces it (up to float64's resolution of probabilities
    near 1, i.e. logits above ~25 closer together than 1e-16 / sigmoid').

    Args:
      y_true: [N, C] 0/1. y_score: [N, C] probabilities (logits if `from_logits`).
      weights: [N, C] 0/1 or None.
      default: threshold for classes without a positive (F1 is 0 for every threshold, so
        the split carries no evidence; keep the global default rather than silence the
        class with 1.0).

    Returns:
      float64 [C] thresholds in [0, 1].
    """
    y_true, y_score, mask = _validate(y_true, y_score, weights, from_logits)
    best = np.full(y_true.shape[1], float(default))
    for c, thresholds, tp, fp, num_pos in _class_curves(y_true, y_score, mask):
        if num_pos > 0:
            best[c] = thresholds[np.argmax(2 * tp / (tp + fp + num_pos))]
            if from_logits:
                best[c] = probability_at_most(best[c])
    return best


def _pct(value) -> str:
    return "   -" if value is None or np.isnan(value) else f"{100 * value:5.1f}"


def format_metrics_table(metrics: dict, class_names, sort_by_ap: bool = False) -> str:
    """Human-readable summary (x100, one decimal) and per-class AP/P/R/F1 table.

    Args:
      metrics: the dict returned by `multilabel_metrics`.
      class_names: C names in label order.
      sort_by_ap: sort the per-class rows by AP, best first (NaN last); else label order.

    Returns:
      a multi-line string.
    """
    ap = np.asarray(metrics["per_class_AP"])
    if len(class_names) != len(ap):
        raise ValueError(f"{len(class_names)} class names for {len(ap)} classes in metrics")
    lines = [
        f"{metrics['num_images']} images, {metrics['num_classes_evaluated']} of {len(ap)} "
        "classes with positives; values x100",
        "        " + " ".join(f"{k:>8}" for k in _SUMMARY_KEYS),
        "all     " + " ".join(f"{_pct(metrics[k]):>8}" for k in _SUMMARY_KEYS),
        "top-3   " + " ".join(
            f"{'':>8}" if k == "mAP" else f"{_pct(metrics[k + '_top3']):>8}" for k in _SUMMARY_KEYS),
        "",
    ]
    width = max([len("class")] + [len(n) for n in class_names])
    lines.append(f"{'class':<{width}}    AP     P     R    F1")
    order = np.argsort(-np.nan_to_num(ap, nan=-1.0), kind="stable") if sort_by_ap else range(len(ap))
    for c in order:
        row = [metrics[k][c] for k in ("per_class_AP", "per_class_P", "per_class_R", "per_class_F1")]
        lines.append(f"{class_names[c]:<{width}} " + " ".join(_pct(v) for v in row))
    return "\n".join(lines)
