"""Predict CLI: `python -m scdnn_tf.predict --saved_model=DIR/1 IMAGE_OR_FOLDER...`.

Prints one line per image with the labels at or above their threshold, best first
(`photo.jpg: person 0.999, car 0.989, backpack 0.604`); `--json` prints one JSON object per
line; `--draw=OUTDIR` writes each image with its patches drawn. Exit status 1 when any file
failed (the summary counts them). The work is `scdnn_tf.serving.predictor.run_prediction`.
"""

from __future__ import annotations

from scdnn_tf.utils import tf_start  # noqa: F401,I001  first: TensorFlow's start-up notes filtered
from scdnn_tf.utils import cli  # noqa: E402

from absl import app, flags  # noqa: E402

from scdnn_tf.core.precision import PRECISIONS  # noqa: E402
from scdnn_tf.serving.predictor import UsageError, run_prediction  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("saved_model", "", "Exported SavedModel version directory (DIR/1).")
    cli.define_model_dir_flag()
    cli.define_thresholds_flag()
    flags.DEFINE_integer("batch_size", 32, "Images per model call.")
    flags.DEFINE_bool("json", False, "One JSON object per image instead of text lines.")
    flags.DEFINE_string("draw", "", "Write each image with its patches drawn to this folder.")
    flags.DEFINE_enum("precision", None, list(PRECISIONS), "Compute precision with "
                      "--model_dir (default float32, whatever the run trained in); a "
                      "--saved_model keeps the precision it was exported with.")


def main(argv):
    try:
        return run_prediction(argv[1:], FLAGS.saved_model, FLAGS.model_dir or "",
                              FLAGS.thresholds, FLAGS.batch_size, FLAGS.json, FLAGS.draw,
                              precision=FLAGS.precision or "")
    except UsageError as e:  # only a wrong command line shows the usage; a bad file is one line
        raise app.UsageError(str(e)) from e


def run() -> None:
    """Console-script entry point (`scdnn-predict`)."""
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    run()
