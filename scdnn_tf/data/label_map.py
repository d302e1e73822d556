"""Label maps: a text file with one class name per line; the index is the line number."""

from __future__ import annotations

import os

from scdnn_tf.utils import files


def write_label_map(path: str, names: list[str]) -> None:
    """Writes `names` one per line (index = line number, 0-based), whole (a kill or a full
    disk never leaves half a label map)."""
    for i, n in enumerate(names):
        if not n or "\n" in n:
            raise ValueError(f"label map {path}: class {i} has an invalid name {n!r}")
    files.write_atomically(path, "".join(n + "\n" for n in names))


def read_label_map(path: str) -> list[str]:
    """Reads a label map written by `write_label_map`; blank trailing lines are ignored.

    Errors name the file and the line (wrap in `files.flag_errors` to name the flag too).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"label map not found: {path}")
    text = files.read_text(path).replace("\r\n", "\n").replace("\r", "\n")
    names = text.split("\n")
    while names and not names[-1].strip():
        names.pop()
    if not names:
        raise ValueError(f"label map {path}: no class name (the file is empty)")
    for i, n in enumerate(names):
        if not n.strip():
            raise ValueError(f"label map {path}: line {i + 1} is empty (one class name per line)")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        lines = [i + 1 for i, n in enumerate(names) if n == dup[0]]
        raise ValueError(f"label map {path}: duplicate class names {dup} ({dup[0]!r} on lines "
                         f"{lines})")
    return names


def read_class_id_map(path: str) -> dict[int, int] | None:
    """File of source class ids, one per line in label map order -> {source id: index}.

    Errors name the file and the line."""
    if not path:
        return None
    ids, lines = [], {}
    for number, line in enumerate(files.read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            ids.append(int(line.strip()))
        except ValueError:
            raise ValueError(f"{path}: line {number} {line.strip()!r} is not an integer id "
                             "(one source class id per line)") from None
        if ids[-1] in lines:
            raise ValueError(f"{path}: line {number} repeats id {ids[-1]} of line "
                             f"{lines[ids[-1]]}")
        lines[ids[-1]] = number
    return {source: index for index, source in enumerate(ids)}
