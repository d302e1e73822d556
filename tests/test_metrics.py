"""Tests for scdnn_tf.evaluation.metrics: sklearn parity for AP, a hand-computed P/R/F1 example,
best thresholds against a brute-force scan, the streaming accumulator, bad input."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from scdnn_tf.evaluation import metrics as M

# Hand example: 4 images x 4 classes, threshold 0.5 (predict when score >= 0.5).
Y = np.array([[1, 0, 1, 0],
              [0, 1, 0, 0],
              [1, 1, 0, 0],
              [0, 0, 1, 0]])  # class 3 has no positive: not "evaluated".
S = np.array([[0.9, 0.6, 0.4, 0.7],   # >=0.5: c0 c1 c3; top-3 = c0 c3 c1 (same set)
              [0.2, 0.8, 0.1, 0.3],   # >=0.5: c1
              [0.6, 0.7, 0.55, 0.8],  # >=0.5: all; top-3 = c3 c1 c0, so c2 drops in top-3
              [0.1, 0.3, 0.5, 0.0]])  # >=0.5: c2 (0.5 counts: >=)


def test_hand_example_threshold_metrics():
    m = M.multilabel_metrics(Y, S, threshold=0.5)
    # class 0: tp=2 np=2 ng=2 -> P=1 R=1 F1=1
    # class 1: tp=2 np=3 ng=2 -> P=2/3 R=1 F1=0.8
    # class 2: tp=1 (img3) np=2 (img2,img3) ng=2 -> P=1/2 R=1/2 F1=1/2
    # class 3: tp=0 np=2 ng=0 -> not evaluated, but its 2 false positives count in OP
    np.testing.assert_allclose(m["per_class_P"], [1, 2 / 3, 0.5, 0])
    np.testing.assert_allclose(m["per_class_R"], [1, 1, 0.5, np.nan])
    np.testing.assert_allclose(m["per_class_F1"], [1, 0.8, 0.5, np.nan])
    # CP = (1 + 2/3 + 1/2)/3 = 13/18; CR = (1 + 1 + 1/2)/3 = 5/6
    # CF1 = 2*(13/18)*(5/6) / (13/18 + 5/6) = 65/84; CF1_mean = (1 + 0.8 + 0.5)/3 = 2.3/3
    assert m["CP"] == pytest.approx(13 / 18)
    assert m["CR"] == pytest.approx(5 / 6)
    assert m["CF1"] == pytest.approx(65 / 84)
    assert m["CF1_mean"] == pytest.approx(2.3 / 3)
    # OP = sum tp / sum np = 5 / (2+3+2+2) = 5/9; OR = 5 / (2+2+2) = 5/6
    # OF1 = 2*(5/9)*(5/6) / (5/9 + 5/6) = 2/3
    assert m["OP"] == pytest.approx(5 / 9)
    assert m["OR"] == pytest.approx(5 / 6)
    assert m["OF1"] == pytest.approx(2 / 3)
    # AP: c0 and c1 rank both positives first -> 1. c2 order .55(-) .5(+) .4(+) .1(-):
    # AP = (1/2 + 2/3)/2 = 7/12. mAP = (1 + 1 + 7/12)/3 = 31/36; c3 -> NaN
    np.testing.assert_allclose(m["per_class_AP"], [1, 1, 7 / 12, np.nan])
    assert m["mAP"] == pytest.approx(31 / 36)
    assert m["num_images"] == 4 and m["num_classes_evaluated"] == 3


def test_hand_example_top3_metrics():
    m = M.multilabel_metrics(Y, S, threshold=0.5)
    # Only change vs threshold-only: image 2 class 2 (0.55, 4th highest) is dropped.
    # class 2: tp=1 np=1 ng=2 -> P=1 R=1/2 F1=2/3
    # CP = (1 + 2/3 + 1)/3 = 8/9; CR = 5/6; CF1 = 2*(8/9)*(5/6)/(8/9 + 5/6) = 80/93
    # CF1_mean = (1 + 0.8 + 2/3)/3 = 37/45
    assert m["CP_top3"] == pytest.approx(8 / 9)
    assert m["CR_top3"] == pytest.approx(5 / 6)
    assert m["CF1_top3"] == pytest.approx(80 / 93)
    assert m["CF1_mean_top3"] == pytest.approx(37 / 45)
    # OP = 5 / (2+3+1+2) = 5/8; OR = 5/6; OF1 = 2*(5/8)*(5/6)/(5/8 + 5/6) = 5/7
    assert m["OP_top3"] == pytest.approx(5 / 8)
    assert m["OR_top3"] == pytest.approx(5 / 6)
    assert m["OF1_top3"] == pytest.approx(5 / 7)


def test_hand_example_weights_drop_entries():
    w = np.ones_like(Y)
    w[0, 2] = 0  # a "difficult" positive of class 2 (missed at 0.4)
    w[2, 3] = 0  # a false positive of class 3
    m = M.multilabel_metrics(Y, S, threshold=0.5, weights=w)
    # class 2 now: ng=1 (img3), np=2 (img2, img3), tp=1 -> P=1/2 R=1
    np.testing.assert_allclose(m["per_class_P"], [1, 2 / 3, 0.5, 0])
    np.testing.assert_allclose(m["per_class_R"], [1, 1, 1, np.nan])
    # OP = 5 / (2+3+2+1) = 5/8; OR = 5 / (2+2+1) = 1
    assert m["OP"] == pytest.approx(5 / 8)
    assert m["OR"] == pytest.approx(1.0)
    # class 2 AP over images 1,2,3: .55(-) .5(+) .1(-) -> 1/2
    np.testing.assert_allclose(m["per_class_AP"], [1, 1, 0.5, np.nan])


def test_top3_ties_go_to_lower_class_index():
    y = np.array([[0, 0, 0, 1]])
    s = np.full((1, 4), 0.6)
    m = M.multilabel_metrics(y, s)
    # All four above threshold; top-3 of a 4-way tie = classes 0,1,2, so class 3 is missed.
    assert m["OR"] == 1.0 and m["OR_top3"] == 0.0


def _random_case(seed, n=60, c=7, decimals=None):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.3).astype(np.int64)
    s = np.clip(0.4 * y + 0.6 * rng.random((n, c)), 0, 1)
    if decimals is not None:
        s = np.round(s, decimals)  # many tied scores
    y[:, -1] = 0  # a class without positives
    w = (rng.random((n, c)) > 0.2).astype(np.float32)
    return y, s, w


@pytest.mark.parametrize("decimals", [None, 1, 2])
@pytest.mark.parametrize("use_weights", [False, True])
def test_ap_matches_sklearn(decimals, use_weights):
    y, s, w = _random_case(seed=decimals or 0, decimals=decimals)
    weights = w if use_weights else None
    m = M.multilabel_metrics(y, s, weights=weights)
    mask = w.astype(bool) if use_weights else np.ones_like(y, bool)
    expected = []
    for c in range(y.shape[1]):
        yc, sc = y[mask[:, c], c], s[mask[:, c], c]
        expected.append(average_precision_score(yc, sc) if yc.any() else np.nan)
    np.testing.assert_allclose(m["per_class_AP"], expected, atol=1e-6)
    assert np.isnan(m["per_class_AP"][-1])
    assert m["mAP"] == pytest.approx(np.nanmean(expected), abs=1e-6)
    np.testing.assert_allclose(M.average_precision_per_class(y, s, weights), expected, atol=1e-6)


def test_ap_all_scores_tied_equals_prevalence():
    y = np.array([[1], [0], [0], [1], [0]])
    s = np.full((5, 1), 0.3)
    # One threshold: P = 2/5 at R = 1, so AP = 0.4 (sklearn agrees; no ordering luck).
    assert M.average_precision_per_class(y, s)[0] == pytest.approx(0.4)
    assert average_precision_score(y[:, 0], s[:, 0]) == pytest.approx(0.4)


def _f1_at(y, s, m, t):
    pred = (s >= t) & m
    tp, npred, npos = (pred & y).sum(), pred.sum(), (y & m).sum()
    return 0.0 if tp == 0 else 2 * tp / (npred + npos)


@pytest.mark.parametrize("decimals", [None, 1])
def test_best_thresholds_maximize_f1(decimals):
    y, s, w = _random_case(seed=5, decimals=decimals)
    y, m = y.astype(bool), w.astype(bool)
    best = M.per_class_best_thresholds(y, s, weights=w)
    for c in range(y.shape[1] - 1):
        grid = np.union1d(np.linspace(0, 1, 1001), s[:, c])
        scan = max(_f1_at(y[:, c], s[:, c], m[:, c], t) for t in grid)
        assert _f1_at(y[:, c], s[:, c], m[:, c], best[c]) == pytest.approx(scan, abs=1e-12)
    assert best[-1] == 0.5  # no positives: the default
    # Applied per class, multilabel_metrics reproduces the best F1.
    out = M.multilabel_metrics(y, s, threshold=best, weights=w)
    for c in range(y.shape[1] - 1):
        assert out["per_class_F1"][c] == pytest.approx(_f1_at(y[:, c], s[:, c], m[:, c], best[c]))


def test_format_metrics_table():
    m = M.multilabel_metrics(Y, S)
    text = M.format_metrics_table(m, ["cat", "dog", "giraffe", "zebra"], sort_by_ap=True)
    assert " 86.1" in text  # mAP 31/36 x100
    assert " 72.2" in text  # CP 13/18 x100
    rows = [line.split()[0] for line in text.splitlines()[-4:]]
    assert rows == ["cat", "dog", "giraffe", "zebra"]  # AP 1, 1, 7/12, NaN last
    assert text.splitlines()[-2].split()[1] == "58.3"
    with pytest.raises(ValueError, match="3 class names for 4 classes"):
        M.format_metrics_table(m, ["a", "b", "c"])


@pytest.mark.parametrize("args, pattern", [
    ((np.zeros((4, 3)), np.zeros((4, 2))), r"\(4, 3\).*\(4, 2\)"),
    ((np.zeros((4, 3)), np.zeros((4, 3)), 0.5, np.ones((4, 2))), r"weights shape \(4, 2\)"),
    ((np.zeros(3), np.zeros(3)), r"\[N, C\].*\(3,\)"),
    ((Y, np.where(S > 0.85, np.nan, S)), r"non-finite.*image 0, class 0.*\(4, 4\)"),
    ((Y, S * 10 - 5), r"probabilities in \[0, 1\].*sigmoid"),
    ((Y * 2 - 1, S), r"y_true must contain only 0 and 1.*-1"),
    ((Y, S, np.zeros(3)), r"threshold must be a scalar or \[4\]"),
    ((Y, S, 1.5), r"threshold"),
    ((np.zeros((4, 4)), S), r"no class has a positive"),
])
def test_bad_input(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        M.multilabel_metrics(*args)


def _confident_case(seed=0, n=80, c=5):
    """Logits in [17, 25]: every float32 sigmoid is exactly 1.0, the logits are distinct."""
    rng = np.random.default_rng(seed)
    logits = (17.0 + 8.0 * rng.random((n, c))).astype(np.float32)
    y = (rng.random((n, c)) < 0.4).astype(np.int64)
    y[0] = 1  # every class has a positive
    return y, logits


def test_confident_logits_match_sklearn_where_float32_sigmoid_ties():
    y, logits = _confident_case()
    saturated = 1 / (1 + np.exp(-logits))  # float32, as the model's sigmoid
    assert np.all(saturated == 1.0)
    m = M.multilabel_metrics(y, logits, from_logits=True)
    expected = [average_precision_score(y[:, c], logits[:, c]) for c in range(y.shape[1])]
    np.testing.assert_allclose(m["per_class_AP"], expected, atol=1e-12)
    assert m["mAP"] == pytest.approx(np.mean(expected), abs=1e-12)
    # The tied probabilities give each class its prevalence as AP: clearly lower.
    tied = M.multilabel_metrics(y, saturated)["mAP"]
    assert tied < m["mAP"] - 0.05


def test_confident_top3_does_not_depend_on_class_order():
    y, logits = _confident_case(seed=1, c=6)
    threshold = 0.5
    m = M.multilabel_metrics(y, logits, threshold, from_logits=True)
    order = np.random.default_rng(2).permutation(y.shape[1])
    shuffled = M.multilabel_metrics(y[:, order], logits[:, order], threshold, from_logits=True)
    for key in ("OP_top3", "OR_top3", "OF1_top3", "CP_top3", "CR_top3", "CF1_top3"):
        assert shuffled[key] == pytest.approx(m[key], abs=1e-12), key
    # By hand: the top-3 by logit of each row, all above threshold 0.5.
    top = np.argsort(-logits, axis=1)[:, :3]
    pred = np.zeros_like(y, bool)
    np.put_along_axis(pred, top, True, axis=1)
    tp = (pred & (y == 1)).sum()
    assert m["OP_top3"] == pytest.approx(tp / pred.sum())
    assert m["OR_top3"] == pytest.approx(tp / y.sum())


def _exact_sigmoid_at_least(x, t):
    """sigmoid(x) >= t with rational t and an 800-digit exp: an independent formulation."""
    from decimal import Decimal, localcontext
    from fractions import Fraction

    with localcontext() as ctx:
        ctx.prec = 800  # exp(-x) of a subnormal x still differs from 1
        q = Fraction(t)  # exact value of the float
        # 1 / (1 + e^-x) >= p/q'  <=>  q' >= p (1 + e^-x)
        return Decimal(q.denominator) >= Decimal(q.numerator) * (1 + Decimal(-x).exp())


@pytest.mark.parametrize("t", [0.5, 0.3, 0.7, 0.9, 0.999, 1e-12, 1 - 1e-12, 0.123456789])
def test_logit_threshold_is_the_exact_cut(t):
    from scdnn_tf.evaluation.thresholds import logit_threshold

    cut = float(logit_threshold(t))
    below = np.nextafter(cut, -np.inf)
    assert _exact_sigmoid_at_least(cut, t) and not _exact_sigmoid_at_least(below, t)


def test_thresholds_on_logits_equal_thresholds_on_probabilities():
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 3, (200, 4))
    y = (rng.random((200, 4)) < 0.4).astype(np.int64)
    probs = 1 / (1 + np.exp(-logits))
    for threshold in (0.5, 0.8, np.array([0.2, 0.5, 0.7, 0.95])):
        a = M.multilabel_metrics(y, logits, threshold, from_logits=True)
        b = M.multilabel_metrics(y, probs, threshold)
        for k in ("CP", "CR", "CF1", "OP", "OR", "OF1", "CP_top3", "OF1_top3", "mAP"):
            assert a[k] == pytest.approx(b[k], abs=1e-12), (k, threshold)
    assert M.logit_threshold(0.0) == -np.inf and M.logit_threshold(1.0) == np.inf
    # t = 1 predicts nothing even for a logit whose float32 sigmoid is 1.0.
    m = M.multilabel_metrics([[1, 0]], np.array([[40.0, -40.0]]), 1.0, from_logits=True)
    assert m["OP"] == 0.0 and m["OR"] == 0.0


def test_best_thresholds_from_logits_reproduce_the_best_f1():
    y, logits = _confident_case(seed=6, n=60, c=4)
    y = y.astype(bool)
    best = M.per_class_best_thresholds(y, logits, from_logits=True)
    assert np.all((best > 0) & (best < 1))
    cuts = M.logit_threshold(best)
    out = M.multilabel_metrics(y, logits, threshold=best, from_logits=True)
    for c in range(y.shape[1]):
        scan = max(_f1_at(y[:, c], logits[:, c], np.ones(len(y), bool), t)
                   for t in np.unique(logits[:, c]))
        assert _f1_at(y[:, c], logits[:, c], np.ones(len(y), bool), cuts[c]) == \
            pytest.approx(scan, abs=1e-12)
        assert out["per_class_F1"][c] == pytest.approx(scan, abs=1e-12)
