"""Evaluation CLI: `python -m scdnn_tf.evaluate --model_dir=RUN [--eval_pattern=...]`.

Loads the newest intact checkpoint of a training model_dir (the network is rebuilt from its
`config.json`, EMA weights swapped in), scores `--eval_pattern`, prints the metrics and a
per-class AP table, writes `metrics.json` into model_dir and, with `--thresholds_out=FILE`,
per-class F1-best thresholds. The work is `scdnn_tf.evaluation.evaluator.run_evaluation`.
"""

from __future__ import annotations

from scdnn_tf.utils import tf_start  # noqa: F401,I001  first: TensorFlow's start-up notes filtered
from scdnn_tf.utils import cli  # noqa: E402

from absl import app, flags  # noqa: E402

from scdnn_tf.evaluation.evaluator import EVAL_OVERRIDES, run_evaluation  # noqa: E402
from scdnn_tf.core.config import config_from_flags, define_flags  # noqa: E402


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    overrides = {k: v for k, v in config_from_flags(only_present=True).items()
                 if k in EVAL_OVERRIDES}
    run_evaluation(flags.FLAGS.model_dir, overrides, flags.FLAGS.thresholds_out or None)


def run() -> None:
    """Console-script entry point (`scdnn-evaluate`)."""
    define_flags()
    flags.DEFINE_string("thresholds_out", "", "Write per-class F1-best thresholds (json) here.")
    cli.run(main)


if __name__ == "__main__":
    run()
