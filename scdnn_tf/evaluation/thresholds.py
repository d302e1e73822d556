"""Probability thresholds on logits, decided exactly.

A float32 sigmoid rounds to exactly 1.0 for logits above ~16.6, so comparing rounded
probabilities ties confident scores. The rule `sigmoid(logit) >= t` is monotone in the
logit: it equals `logit >= cut(t)` for one real cut. These functions give that cut (and
the reverse) as float64 values that make the comparison exact in real arithmetic.
"""

from __future__ import annotations

import decimal
import math

import numpy as np


def _sigmoid_at_least(x: float, t: float) -> bool:
    """Exactly whether sigmoid(x) >= t, for float x and t in (0, 1).

    sigmoid(x) >= t  <=>  exp(-x) <= (1 - t) / t. Both sides are computed with 60
    significant digits: they are equal only at x = 0, t = 0.5 (exp of a non-zero rational
    is irrational), which is decided separately, and otherwise differ far above 1e-60.
    """
    if t == 0.5:
        return x >= 0.0
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        t_dec = decimal.Decimal(t)
        return decimal.Decimal(-x).exp() <= (1 - t_dec) / t_dec


def logit_threshold(threshold) -> np.ndarray:
    """Probability thresholds -> the logit cut: `sigmoid(x) >= t  <=>  x >= cut`.

    Exact in real arithmetic for every float64 x (the cut is the smallest float64 whose
    exact sigmoid reaches t), not a rounded `log(t / (1 - t))`.

    Args:
      threshold: scalar or [C] probabilities in [0, 1].

    Returns:
      float64 of the same shape; -inf for t = 0 (everything predicted), +inf for t = 1
      (nothing: the sigmoid of a finite logit is below 1).
    """
    t = np.asarray(threshold, np.float64)
    cut = np.empty_like(t)
    for index, value in np.ndenumerate(t):
        value = float(value)
        if value <= 0.0 or value >= 1.0:
            cut[index] = -math.inf if value <= 0.0 else math.inf
            continue
        x = math.log(value) - math.log1p(-value)  # within a few ulps; made exact below
        while not _sigmoid_at_least(x, value):
            x = math.nextafter(x, math.inf)
        while _sigmoid_at_least(math.nextafter(x, -math.inf), value):
            x = math.nextafter(x, -math.inf)
        cut[index] = x
    return cut


def probability_at_most(logit: float) -> float:
    """The largest float64 t <= sigmoid(logit) (exact), so `x >= logit` implies
    `sigmoid(x) >= t`. Probabilities above 1 - 2**-53 are not representable: t is then
    that value (logits above ~36.7 fall in one bucket)."""
    if not math.isfinite(logit):
        return 1.0 if logit > 0 else 0.0
    if logit < 0:  # this form cannot overflow
        t = math.exp(logit) / (1.0 + math.exp(logit))
    else:
        t = min(1.0 / (1.0 + math.exp(-logit)), math.nextafter(1.0, 0.0))
    while t > 0.0 and not _sigmoid_at_least(logit, t):
        t = math.nextafter(t, 0.0)
    return t
