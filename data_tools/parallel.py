"""Bounded, order-preserving worker pool for the converters.

`ordered_map` runs a function over a (possibly huge, lazily generated) iterable in
several worker processes, keeps at most `max_in_flight` items submitted at any time (so
memory does not grow with the dataset) and yields results in input order (so sharded
output is deterministic whatever the scheduling).

Workers are forked: the functions they run (`data_tools.image_checks`) use only
Pillow and the filesystem, never TensorFlow, which is what makes forking a process
that has TensorFlow loaded safe; forking also avoids re-importing TensorFlow in each
worker (several seconds each with spawn).
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _mp_context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def ordered_map(fn: Callable, items: Iterable[T], num_workers: int = 1,
                arg: Callable[[T], object] = lambda x: x,
                max_in_flight: int | None = None) -> Iterator[tuple[T, R]]:
    """Yields `(item, fn(arg(item)))` in the order of `items`.

    Args:
      fn: a picklable top-level function (runs in a worker process).
      items: any iterable; consumed lazily.
      num_workers: worker processes; 1 (or 0) runs `fn` in this process.
      arg: maps an item to the argument sent to the worker (the item itself stays here,
        so it needs not be picklable).
      max_in_flight: most items submitted and not yet yielded (default 4 * workers).

    Exceptions raised by `fn` propagate to the caller (remaining work is cancelled).
    """
    if num_workers is None or num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers!r}")
    if num_workers <= 1:
        for item in items:
            yield item, fn(arg(item))
        return
    limit = max_in_flight or 4 * num_workers
    if limit < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight!r}")
    pending: collections.deque = collections.deque()
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=_mp_context()) as ex:
        try:
            for item in items:
                if len(pending) >= limit:
                    head_item, head = pending.popleft()
                    yield head_item, head.result()
                pending.append((item, ex.submit(fn, arg(item))))
            while pending:
                head_item, head = pending.popleft()
                yield head_item, head.result()
        finally:
            for _, fut in pending:
                fut.cancel()
