"""Side files given by flag and files a run writes: one-line errors, written whole.

Readers (`read_json`, `read_text`) name the file and the position of a problem
(`/p/t.json: not valid JSON at line 1 column 44: Expecting value`); `flag_errors` puts
the flag in front (`--thresholds=/p/t.json: not valid JSON at ...`), so every
file-valued flag of every tool reports a bad file the same way. Outputs are checked for
writability before any work (`check_writable`) and written whole (`write_atomically`:
a temporary file in the same folder, then a rename; the temporary file is removed on any
error). A full disk is a `DiskFullError`, which the tools report as one line and exit
with `DISK_FULL_EXIT`. Imports no TensorFlow.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile

# Exit status of a tool stopped by a full disk (sysexits' EX_TEMPFAIL: free space and run
# the same command again).
DISK_FULL_EXIT = 75
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded")


class DiskFullError(OSError):
    """A write failed for lack of space; the message says what was lost and how to resume."""

    exit_code = DISK_FULL_EXIT


def is_disk_full(error: BaseException | None) -> bool:
    """True if `error` (or an exception it was raised from) is a full disk or quota:
    an OSError with ENOSPC/EDQUOT or a TensorFlow error saying so."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DiskFullError):
            return True
        if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
            return True
        text = getattr(error, "message", None) or str(error)
        if any(t in text for t in _DISK_FULL_TEXTS):
            return True
        error = error.__cause__ or error.__context__
    return False


def read_text(path: str) -> str:
    """The UTF-8 text of `path` (a BOM stripped); errors name the file and the byte."""
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a folder, not a file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "not found", path) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}: not UTF-8 text at line {line} (byte {e.start}: "
                         f"{e.reason})") from None


def read_json(path: str):
    """The JSON value in `path`; a malformed file names the line and column."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON at line {e.lineno} column {e.colno}: "
                         f"{e.msg}") from None


@contextlib.contextmanager
def flag_errors(flag: str, path: str):
    """Re-raises a ValueError / OSError about the file `path` given by `--flag` as one
    ValueError `--flag=path: <problem>` (a full disk passes through unchanged)."""
    try:
        yield
    except (ValueError, OSError) as e:
        if isinstance(e, DiskFullError) or is_disk_full(e):
            raise
        raise ValueError(f"--{flag}={path}: {_problem(e, path)}") from None


def _problem(error: BaseException, path: str) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = " ".join(str(error).split())
    for prefix in (f"{path}: ", f"{path!r}: ", f"label map {path}: "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def _existing_ancestor(path: str) -> str:
    folder = os.path.abspath(path)
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


def check_writable(path: str, flag: str, folder: bool = False) -> None:
    """Raises ValueError `--flag=path: ...` unless `path` can be written.

    `folder=False`: `path` is a file to (over)write: not a folder, and its folder (or the
    nearest existing parent, where the missing folders will be made) takes a new file.
    `folder=True`: `path` is a folder that exists or can be made, and takes new files.
    Checked by creating and removing a file, so read-only mounts and permissions count
    as they will for the real write. Nothing is left behind. Remote paths (`gs://...`)
    are not checked here.
    """
    if not path:
        raise ValueError(f"--{flag} is empty: it needs a {'folder' if folder else 'file'} path")
    if "://" in path:
        return
    if not folder and (os.path.isdir(path) or path.endswith(("/", os.sep))):
        raise ValueError(f"--{flag}={path}: is a folder; give a file path")
    if folder and os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--{flag}={path}: is a file; give a folder")
    if not folder and os.path.exists(path) and not os.path.isfile(path):
        raise ValueError(f"--{flag}={path}: not a regular file")
    target = os.path.abspath(path) if folder else os.path.dirname(os.path.abspath(path))
    parent = _existing_ancestor(target)
    if not os.path.isdir(parent):
        raise ValueError(f"--{flag}={path}: {parent} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=parent)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"--{flag}={path}: cannot write in {parent} "
                         f"({e.strerror or e})") from None
    if not folder and os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"--{flag}={path}: the file is not writable")


def write_atomically(path: str, text: str) -> None:
    """Writes `text` to `path` whole: a temporary file in the same folder, then a rename.

    On any error the temporary file is removed and `path` keeps its old content; a full
    disk raises `DiskFullError` naming `path`.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if is_disk_full(e):
            raise DiskFullError(f"no space left on device writing {path}") from e
        raise


def write_json(path: str, value) -> None:
    """`write_atomically` of `value` as indented JSON."""
    write_atomically(path, json.dumps(value, indent=2) + "\n")
