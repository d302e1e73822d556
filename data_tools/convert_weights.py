r"""Converts timm / torchvision ImageNet ResNet(X) checkpoints into our Keras backbones.

    python -m data_tools.convert_weights --source=resnext101_32x8d.safetensors \
        --arch=resnext101_32x8d --output=resnext101_32x8d.weights.h5

`--source` is a timm ``model.safetensors`` (read with the `safetensors` numpy API, extra
``weights``) or a torchvision ``.pth`` state dict (needs torch). The output is a by-name
weights file (scdnn_tf/modeling/weights_by_name.py) holding the backbone and the ImageNet
``fc``; pass it as ``build_backbone(arch, weights=PATH)`` (``fc`` is skipped there).
The conversion itself (key mapping, checks) is `scdnn_tf.modeling.timm_weights`.
"""

from scdnn_tf.utils import tf_start  # noqa: F401,I001  first: TensorFlow's start-up notes filtered
from scdnn_tf.utils import cli  # noqa: E402

from absl import flags  # noqa: E402

from scdnn_tf.utils import files  # noqa: E402

from scdnn_tf.modeling.timm_weights import (  # noqa: F401, E402 (re-exported for scripts)
    ARCHS, convert_checkpoint, load_torch_state_dict, torch_to_keras_arrays)

FLAGS = flags.FLAGS
flags.DEFINE_string("source", None, "timm .safetensors or torchvision .pth checkpoint.")
flags.DEFINE_enum("arch", None, list(ARCHS) + ["resnet50"], "Backbone architecture.")
flags.DEFINE_string("output", None, "Output by-name weights file (.weights.h5).")


def main(argv):
    del argv
    files.check_writable(FLAGS.output, "output")  # before the conversion
    convert_checkpoint(FLAGS.source, FLAGS.arch, FLAGS.output)
    print(f"wrote {FLAGS.output}")


def run() -> None:
    """Console-script entry point (`scdnn-convert-weights`)."""
    flags.mark_flags_as_required(["source", "arch", "output"])
    cli.run(main)


if __name__ == "__main__":
    run()
