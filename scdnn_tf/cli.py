"""What every command-line tool shares: quiet TensorFlow start-up and one-line user errors.

Import this module before TensorFlow (it sets `TF_CPP_MIN_LOG_LEVEL=2` unless the
environment already sets it, hiding TF's C++ INFO/WARNING start-up notes; set it to 0 to
see them). `run(main)` is `absl.app.run(main)` where an expected user error (a bad flag
value, a missing or unreadable file, a damaged checkpoint, a model_dir in use) prints one
line `<tool>: error: <message>` and exits with status 2, and a graceful stop on SIGTERM /
SIGINT exits with 143 / 130 after its checkpoint. `--traceback` shows the Python
traceback of such errors too; unexpected exceptions always show it.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

USER_ERROR_EXIT = 2


def _expected_errors() -> tuple[type[BaseException], ...]:
    import tensorflow as tf  # noqa: PLC0415 (only once a tool runs)

    from scdnn_tf.run_lock import LockedError  # noqa: PLC0415

    return (ValueError, OSError, FloatingPointError, LockedError, tf.errors.NotFoundError,
            tf.errors.PermissionDeniedError, tf.errors.DataLossError)


def error_message(error: BaseException) -> str:
    """One line for an exception: TF errors without their op/node trailers."""
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    if isinstance(error, OSError) and error.filename and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    return " ".join(text.split())


def run(main) -> None:
    """Runs `main(argv)` as an absl program with the error handling described above."""
    if "traceback" not in flags.FLAGS:
        flags.DEFINE_bool("traceback", False, "Show the Python traceback of expected errors.")

    def guarded(argv):
        from scdnn_tf.preemption import Preempted  # noqa: PLC0415

        prog = os.path.splitext(os.path.basename(argv[0]))[0] if argv else "scdnn"
        try:
            return main(argv)
        except Preempted as e:
            logging.warning("%s", e)
            sys.exit(e.exit_code)
        except _expected_errors() as e:
            if flags.FLAGS.traceback:
                raise
            sys.stderr.write(f"{prog}: error: {error_message(e)}\n")
            sys.exit(USER_ERROR_EXIT)

    app.run(guarded)
