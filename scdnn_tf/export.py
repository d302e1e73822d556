"""Export CLI: `python -m scdnn_tf.export --model_dir=RUN --export_dir=DIR`.

Writes `DIR/<version>/`, a SavedModel for TF Serving (see `scdnn_tf.serving.exporter`).
"""

from __future__ import annotations

from scdnn_tf.utils import tf_start  # noqa: F401,I001  first: TensorFlow's start-up notes filtered
from scdnn_tf.utils import cli  # noqa: E402

from absl import app, flags  # noqa: E402

from scdnn_tf.core.precision import PRECISIONS  # noqa: E402
from scdnn_tf.data.image_headers import DEFAULT_MAX_PIXELS  # noqa: E402
from scdnn_tf.serving.exporter import (  # noqa: E402
    export_saved_model, load_from_model_dir, read_thresholds)
from scdnn_tf.utils import files  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    cli.define_model_dir_flag()
    flags.DEFINE_string("export_dir", None, "Base directory; the SavedModel goes to "
                        "EXPORT_DIR/<version>.")
    flags.DEFINE_integer("version", None, "Version directory (default: next integer).")
    cli.define_thresholds_flag()
    flags.DEFINE_integer("top_k", 5, "Classes in the top_* outputs.")
    flags.DEFINE_enum("weights", "auto", ["auto", "raw", "ema"], "Runs with --ema_decay: "
                      "export the raw or the averaged weights; auto = the better of the "
                      "run's last evaluation (weights_choice.json; EMA without one).")
    flags.DEFINE_integer("max_image_pixels", DEFAULT_MAX_PIXELS, "Images with more pixels "
                         "(height * width) are refused with an error.")
    flags.DEFINE_enum("precision", "float32", list(PRECISIONS), "Compute precision of the "
                      "SavedModel (float32 inputs and outputs either way); float32 whatever "
                      "the run trained in unless given. mixed_bfloat16 serves fastest on CPUs "
                      "with AMX / AVX512-BF16.")
    flags.mark_flags_as_required(["model_dir", "export_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    files.check_writable(FLAGS.export_dir, "export_dir", folder=True)  # before the work
    model, class_names, checkpoint = load_from_model_dir(FLAGS.model_dir, FLAGS.precision,
                                                         FLAGS.weights)
    thresholds = read_thresholds(FLAGS.thresholds, class_names) if FLAGS.thresholds else None
    path = export_saved_model(model, class_names, FLAGS.export_dir, thresholds, FLAGS.top_k,
                              FLAGS.version, FLAGS.max_image_pixels, source=checkpoint)
    print(f"exported {checkpoint} to {path} ({model.dtype_policy.name})")


def run() -> None:
    """Console-script entry point (`scdnn-export`)."""
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    run()
