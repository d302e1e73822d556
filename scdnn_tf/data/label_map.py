"""Label maps: a text file with one class name per line; the index is the line number."""

from __future__ import annotations

import os


def write_label_map(path: str, names: list[str]) -> None:
    """Writes `names` one per line (index = line number, 0-based)."""
    for i, n in enumerate(names):
        if not n or "\n" in n:
            raise ValueError(f"label map {path}: class {i} has an invalid name {n!r}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"  # written whole, then renamed: a kill never leaves half a label map
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(n + "\n" for n in names))
    os.replace(tmp, path)


def read_label_map(path: str) -> list[str]:
    """Reads a label map written by `write_label_map`; blank trailing lines are ignored."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"label map not found: {path}")
    with open(path, encoding="utf-8") as f:
        names = [line.rstrip("\n").rstrip("\r") for line in f]
    while names and not names[-1].strip():
        names.pop()
    for i, n in enumerate(names):
        if not n.strip():
            raise ValueError(f"label map {path}: line {i + 1} is empty")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"label map {path}: duplicate class names {dup}")
    return names


def read_class_id_map(path: str) -> dict[int, int] | None:
    """File of source class ids, one per line in label map order -> {source id: index}."""
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    try:
        ids = [int(v) for v in lines]
    except ValueError as e:
        raise ValueError(f"--class_id_map={path!r}: every line must be an integer id ({e})") from e
    if len(set(ids)) != len(ids):
        raise ValueError(f"--class_id_map={path!r} repeats ids")
    return {source: index for index, source in enumerate(ids)}
