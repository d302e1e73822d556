"""Imported first by the command-line tools that use TensorFlow.

Importing it imports TensorFlow with its C++ start-up notes filtered out of stderr
(`cli.import_tensorflow_quietly`), before any module that imports TensorFlow itself.
"""

from scdnn_tf.utils.cli import import_tensorflow_quietly

import_tensorflow_quietly()
