"""Parsing of a `python -m scdnn_tf.train` log (shared by the accuracy benchmarks)."""

from __future__ import annotations

import json
import re
import statistics

_METRICS = re.compile(r"final validation metrics: (\{.*\})")
_RATE = re.compile(r"step (\d+)/\d+ .* ([0-9.]+) img/s")


def parse_log(text: str) -> dict:
    """Final metrics and the median logged images/s (first progress line excluded: it
    includes tracing) from a training log."""
    found = _METRICS.findall(text)
    if not found:
        raise RuntimeError("the run logged no final validation metrics:\n" + text[-2000:])
    rates = [float(r) for _, r in _RATE.findall(text)][1:]
    return {"metrics": json.loads(found[-1]),
            "train_images_per_s": statistics.median(rates) if rates else None}
