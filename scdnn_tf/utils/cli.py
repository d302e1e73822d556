"""What every command-line tool shares: quiet TensorFlow start-up and one-line user errors.

Importing this module imports no TensorFlow (the converters never need it); it sets
`TF_CPP_MIN_LOG_LEVEL=2` unless the environment already sets it, hiding TF's C++
INFO/WARNING start-up notes (set it to 0 to see them). Tools that use TensorFlow import
`scdnn_tf.utils.tf_start` first, which imports it through `import_tensorflow_quietly`.
`run(main)` is `absl.app.run(main)` where an expected user error (a bad flag value, a
missing or unreadable file, a damaged checkpoint, a model_dir in use) prints one line
`<tool>: error: <message>` and exits with status 2 (75 for a full disk: free space and
run the same command again; see `files.DiskFullError`), and a graceful stop on SIGTERM /
SIGINT exits with 143 / 130 after its checkpoint. `--traceback` shows the Python
traceback of such errors too; unexpected exceptions always show it. `--config=NAME` reads
the packaged flagfile `scdnn_tf/configs/NAME.flags` (demo, coco, voc, ...).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import logging as std_logging  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402

from absl import app, flags, logging  # noqa: E402

from scdnn_tf.utils import files  # noqa: E402

# TensorFlow's C++ start-up notes that TF_CPP_MIN_LOG_LEVEL cannot hide (they are written
# before its logging is configured).
_STARTUP_NOISE = ("WARNING: All log messages before absl::InitializeLog() is called",
                  "oneDNN custom operations are on")


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with its start-up notes filtered out of stderr (other lines of
    its stderr pass through). A no-op when TF_CPP_MIN_LOG_LEVEL=0 asks to see them."""
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow as tf  # noqa: PLC0415
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True):
                if not any(noise in line for noise in _STARTUP_NOISE):
                    sys.stderr.write(line)
    # TF's Python-side INFO/WARNING notes (strategy devices, saver timings, retracing of
    # eagerly built grouped convolutions) are not the run's output.
    tf.get_logger().setLevel("ERROR")
    # Some TF modules log through absl directly (e.g. the checkpoint saver's timings).
    logging.get_absl_handler().python_handler.addFilter(_library_info_filter)


def _library_info_filter(record) -> bool:
    """Drops INFO records that TensorFlow / Keras code logs through absl."""
    library = os.sep + "tensorflow" + os.sep in record.pathname or (
        os.sep + "keras" + os.sep in record.pathname)
    return record.levelno >= std_logging.WARNING or not library


USER_ERROR_EXIT = 2


class UserError(Exception):
    """An error the user fixes from its one-line message (a model_dir in use, ...)."""


class GracefulStop(Exception):
    """A requested stop after the state was saved; the process exits with `exit_code`."""

    exit_code = 1


def packaged_configs() -> dict[str, str]:
    """{name: path} of the flagfiles shipped in the package (`scdnn_tf/configs/*.flags`)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    folder = os.path.join(package, "configs")
    return {name[:-len(".flags")]: os.path.join(folder, name)
            for name in sorted(os.listdir(folder)) if name.endswith(".flags")}


def expand_config_args(argv: list[str]) -> list[str]:
    """Replaces `--config=NAME` (or `--config NAME`) by `--flagfile=` the packaged NAME.flags,
    so an installed package runs its recipes from any folder (`scdnn-train --config=demo`)."""
    out, args = [], iter(argv)
    for arg in args:
        if arg == "--config" or arg.startswith("--config="):
            name = arg.partition("=")[2] if "=" in arg else next(args, "")
            configs = packaged_configs()
            if name not in configs:
                sys.exit(f"error: --config={name!r}: no such packaged config; one of "
                         f"{', '.join(configs)} (or pass --flagfile=PATH)")
            arg = f"--flagfile={configs[name]}"
        out.append(arg)
    return out


def _expected_errors() -> tuple[type[BaseException], ...]:
    errors = (ValueError, OSError, FloatingPointError, UserError)
    if "tensorflow" not in sys.modules:  # a tool that never imported it raises none of its errors
        return errors
    import tensorflow as tf  # noqa: PLC0415

    return errors + (tf.errors.NotFoundError, tf.errors.PermissionDeniedError,
                     tf.errors.DataLossError)


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
        prog = os.path.splitext(os.path.basename(argv[0]))[0] if argv else "scdnn"
        try:
            return main(argv)
        except Exception as e:
            if isinstance(e, GracefulStop):
                logging.warning("%s", e)
                sys.exit(e.exit_code)
            if not isinstance(e, _expected_errors()) and not files.is_disk_full(e):
                raise
            if flags.FLAGS.traceback:
                raise
            sys.stderr.write(f"{prog}: error: {error_message(e)}\n")
            sys.exit(files.DISK_FULL_EXIT if files.is_disk_full(e) else USER_ERROR_EXIT)

    app.run(guarded, argv=expand_config_args(sys.argv), flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, a bad flag (or flagfile line) reported as one line, exit 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        prog = os.path.splitext(os.path.basename(argv[0]))[0] if argv else "scdnn"
        message = " ".join(str(e).split())
        unopened = re.search(r"Unable to open flagfile: \[Errno \d+\] ([^:]*): '(.*)'", message)
        if unopened:
            message = f"--flagfile={unopened.group(2)}: {unopened.group(1).lower()}"
        if "Unknown command line flag" in message:
            message += " (--helpfull lists the flags)"
        sys.stderr.write(f"{prog}: error: {_flagfile_position(message, argv)}{message}\n")
        sys.exit(USER_ERROR_EXIT)


def _flagfile_position(message: str, argv: list[str]) -> str:
    """`--flagfile=PATH line N: ` for the flagfile line holding the flag named in
    `message`, or "" when it came from the command line (or cannot be found)."""
    name = re.search(r"flag '?-*([A-Za-z_][\w-]*)", message)
    if name is None:
        return ""
    pattern = re.compile(rf"^\s*--?(no)?{re.escape(name.group(1))}(=|\s*$)")
    for arg in argv[1:]:
        if not arg.startswith("--flagfile="):
            continue
        path = arg.split("=", 1)[1]
        try:
            lines = files.read_text(path).splitlines()
        except (OSError, ValueError):
            continue
        for number, line in enumerate(lines, 1):
            if pattern.match(line):
                return f"--flagfile={path} line {number}: "
    return ""


def define_model_dir_flag() -> None:
    """`--model_dir`, as export and predict take it (training defines it in TrainConfig)."""
    flags.DEFINE_string("model_dir", None, "Training model_dir (config.json, label map, "
                        "checkpoints).")


def define_thresholds_flag() -> None:
    """`--thresholds`: per-class thresholds json (export and predict)."""
    flags.DEFINE_string("thresholds", "", "Per-class thresholds json from `evaluate "
                        "--thresholds_out` (default 0.5 for every class).")
