"""One training run per model_dir: a lock file naming its holder.

`model_dir/train.lock` holds `host pid` of the training process that owns the directory.
It is created atomically (O_EXCL) and removed when training ends. A lock whose holder is
a dead process on this host is stale and taken over with a note; any other existing lock
stops the new run with an error naming the holder. Under multi-worker training the chief
holds it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket

from absl import logging

from scdnn_tf.utils.cli import UserError

LOCK_NAME = "train.lock"


class LockedError(UserError):
    """model_dir is in use by another training process."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read(path: str) -> tuple[str, int] | None:
    try:
        with open(path, encoding="utf-8") as f:
            host, pid = f.read().split()
        return host, int(pid)
    except (OSError, ValueError):
        return None


def acquire(model_dir: str) -> str:
    """Creates the lock for this process; returns its path. Raises LockedError."""
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, LOCK_NAME)
    me = (socket.gethostname(), os.getpid())
    for _ in range(3):  # a stale lock removed by us, or a race with another starter
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:
                raise LockedError(f"{path} exists but is unreadable: another run may be "
                                  "starting; remove the file if no training uses this "
                                  "--model_dir") from None
            host, pid = holder
            if (host, pid) == me:
                return path
            if host == me[0] and not _alive(pid):
                logging.warning("taking over the stale lock %s of process %d (no longer "
                                "running on %s)", path, pid, host)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                continue
            raise LockedError(f"--model_dir={model_dir!r} is in use by the training process "
                              f"{pid} on {host} ({path}); wait for it to end or use another "
                              "--model_dir (if that process is gone, remove the file)") from None
        except OSError as e:
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise PermissionError(f"cannot create {path}: {e.strerror}") from None
            raise
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(f"{me[0]} {me[1]}\n")
        except OSError:  # e.g. a full disk: an empty lock would block the next run
            with contextlib.suppress(OSError):
                os.remove(path)
            raise
        return path
    raise LockedError(f"could not take {path}: other runs keep creating it")


def release(path: str) -> None:
    """Removes the lock if this process holds it."""
    if _read(path) == (socket.gethostname(), os.getpid()):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@contextlib.contextmanager
def locked(model_dir: str, enabled: bool = True):
    """Holds the model_dir lock for the duration (a no-op when not `enabled`)."""
    if not enabled:
        yield None
        return
    if "://" in model_dir:  # object stores have no atomic create-if-absent here
        logging.warning("no lock on %s: make sure one training at a time uses it", model_dir)
        yield None
        return
    path = acquire(model_dir)
    try:
        yield path
    finally:
        release(path)
