"""Training CLI: `python -m scdnn_tf.train --flagfile=configs/demo.flags [--flag=value ...]`.

Every flag mirrors a `TrainConfig` field (see `scdnn_tf/core/config.py` or `--helpfull`);
the work is done by `scdnn_tf.engine.trainer.run_training`. Rerunning with the same
`--model_dir` resumes from its newest intact checkpoint. Exit status: 0 done, 2 a user
error (one line on stderr), 75 a full disk (one line naming the checkpoint to resume from),
143 / 130 stopped by SIGTERM / SIGINT after checkpointing.
"""

from __future__ import annotations

from scdnn_tf.utils import tf_start  # noqa: F401,I001  first: TensorFlow's start-up notes filtered
from scdnn_tf.utils import cli  # noqa: E402

import json  # noqa: E402

from absl import app, logging  # noqa: E402

from scdnn_tf.core.config import TrainConfig, config_from_flags, define_flags  # noqa: E402
from scdnn_tf.engine.trainer import metrics_summary, run_training  # noqa: E402


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    metrics = run_training(TrainConfig(**config_from_flags()))
    logging.info("final validation metrics: %s", json.dumps(metrics_summary(metrics)))


def run() -> None:
    """Console-script entry point (`scdnn-train`)."""
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    run()
