"""CLI: write the synthetic shapes scenes (see `scdnn_tf.data.shapes`) as TFRecords.

    python -m data_tools.make_shapes --output_dir=/tmp/shapes --num_train=2000 --num_val=500 --seed=0
"""

from __future__ import annotations

from scdnn_tf.utils import cli  # noqa: I001  (imports no TensorFlow: a conversion never needs it)

import json  # noqa: E402

from absl import flags  # noqa: E402

from scdnn_tf.data.shapes import LAYOUTS, make_shapes  # noqa: E402
from scdnn_tf.utils import files  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("output_dir", None, "Folder for the TFRecords and label_map.txt.")
    flags.DEFINE_integer("num_train", 2000, "Training images.")
    flags.DEFINE_integer("num_val", 500, "Validation images.")
    flags.DEFINE_integer("seed", 0, "Random seed (same seed -> identical files).")
    flags.DEFINE_integer("image_size", 128, "Image side in pixels (32..256).")
    flags.DEFINE_enum("layout", "tiles", list(LAYOUTS), "tiles: local surfaces (an "
                      "irregular grid); bands: one sky band over one ground band; relations: "
                      "classes decided by a far object in the same row; mixed_context: classes "
                      "decided by a near outline or a far frame.")
    flags.mark_flag_as_required("output_dir")


def main(argv):
    del argv
    files.check_writable(FLAGS.output_dir, "output_dir", folder=True)  # before the work
    out = make_shapes(FLAGS.output_dir, FLAGS.num_train, FLAGS.num_val, FLAGS.seed,
                      FLAGS.image_size, FLAGS.layout)
    print(json.dumps(out, indent=1))


def run() -> None:
    """Console-script entry point (`scdnn-make-shapes`)."""
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    run()
