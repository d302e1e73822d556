"""Errors raised inside the input pipeline, as one line naming the record and its shard.

The pipeline's checks (class range, class-id map, stored class names, per-object list
lengths, image bytes; see `pipeline`, `record_checks`, `preprocess`) run inside the
tf.data graph, so they reach Python as a `tf.errors.InvalidArgumentError` from the
iterator, wrapped in TensorFlow's node and stack trailers. Each check names the record
and the shard it came from ("... in record a.jpg (source_id 7) at index 3 of shard
/data/train-00000-of-00008.tfrecord"); `input_errors()` turns such an error into an
`InputDataError` (a ValueError) holding just that sentence, which the command-line
tools print as `<tool>: error: ...` with exit status 2.
"""

from __future__ import annotations

import contextlib
import re

import tensorflow as tf

_ASSERTION = "assertion failed: "
_EAGER_ASSERTION = "Summarized data: "
_EAGER_BYTES = re.compile(r"b'(.*)'")
# TensorFlow's wrappers around the message of an op that failed inside a dataset.
_PREFIXES = (re.compile(r"\{\{function_node [^}]*\}\}\s*"),
             re.compile(r"Error in user-defined function passed to \S+ transformation with "
                        r"iterator: \S+: "))
_MAX_DETAIL = 200
_SUFFIX = re.compile(r"\s*\[Op:[^\]]*\]( name: \S*)?\s*$")
_NOISE = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "[[")


class InputDataError(ValueError):
    """A record of the input data failed a check (or could not be read) while iterating.

    Attributes:
      record_message: the one-line description (also `str(error)`).
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.record_message = message


def _is_input_error(text: str) -> bool:
    return "IteratorGetNext" in text or "transformation with iterator" in text


def assertion_text(text: str) -> str | None:
    """The data of a `tf.debugging.Assert` message as one sentence, or None.

    TensorFlow prints the data list as `assertion failed: [a] [b c] [d]` in a graph (the
    brackets are dropped: `a b c d`) and as `Summarized data: b'a'` then one line per
    item when run eagerly.
    """
    if _EAGER_ASSERTION in text:
        items = []
        for item in text.split(_EAGER_ASSERTION, 1)[1].splitlines():
            match = _EAGER_BYTES.fullmatch(item.strip())  # a string item; else numbers
            items.append(match.group(1) if match else " ".join(item.replace(",", " ").split()))
        return " ".join(items)
    if _ASSERTION not in text:
        return None
    body = text.rsplit(_ASSERTION, 1)[1].split("\n", 1)[0].strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    return " ".join(body.replace("] [", " ").split())


def op_error_text(text: str) -> str:
    """The first meaningful line of a TensorFlow op error, without its wrappers."""
    lines = [line for line in text.splitlines()
             if line.strip() and not line.lstrip().startswith(_NOISE)]
    line = lines[0] if lines else text
    for prefix in _PREFIXES:
        line = prefix.sub("", line)
    line = " ".join(_SUFFIX.sub("", line).split())
    # TensorFlow quotes a record it cannot parse whole: keep the start of it.
    return line if len(line) <= _MAX_DETAIL else line[:_MAX_DETAIL] + "..."


def input_error_message(error: BaseException, source: str = "") -> str | None:
    """One line for an error raised by the input pipeline while iterating, else None.

    Args:
      error: the exception (an `InvalidArgumentError` from the iterator is rewritten;
        any other error, or one raised by the model rather than the data, gives None).
      source: what was being read (e.g. "--train_pattern=/data/train-*"), named when a
        TensorFlow op failed on a record before any check could name it.
    """
    if not isinstance(error, tf.errors.InvalidArgumentError):
        return None
    text = getattr(error, "message", None) or str(error)
    if not _is_input_error(text):
        return None
    checked = assertion_text(text)
    if checked is not None:
        return checked
    return _unreadable(source, op_error_text(text))


def _unreadable(source: str, detail: str) -> str:
    where = f" of {source}" if source else ""
    return (f"a record{where} cannot be read: {detail} (scdnn-inspect-tfrecord names the "
            "shard and the record)")


@contextlib.contextmanager
def input_errors(source: str = ""):
    """Re-raises an input pipeline error met inside the block as `InputDataError`.

    Errors that do not come from the input pipeline pass through unchanged. TensorFlow
    fails to convert an error message quoting undecodable bytes (a record that is not an
    Example) and raises UnicodeDecodeError instead; its raw message is read here.
    """
    try:
        yield
    except tf.errors.InvalidArgumentError as e:
        message = input_error_message(e, source)
        if message is None:
            raise
        raise InputDataError(message) from e
    except UnicodeDecodeError as e:
        text = e.object.decode("utf-8", "replace") if isinstance(e.object, bytes) else ""
        if not _is_input_error(text):
            raise
        raise InputDataError(_unreadable(source, op_error_text(text))) from e
