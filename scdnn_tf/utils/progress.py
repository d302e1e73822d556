"""Progress of long loops (conversions, evaluations, predictions): one implementation.

On a terminal, a tqdm bar with count, rate and ETA (on stderr). Elsewhere (a log file, CI),
a plain line with the same figures at most every `interval` seconds, and one at the end, so
logs stay short and readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import tqdm


class Progress:
    """Context manager: `with Progress(total, "converting") as bar: ... bar.update()`.

    Args:
      total: expected count, or None when unknown.
      desc: what is being counted, printed first.
      unit: the counted unit ("images", "records", ...).
      stream: where to write (default stderr).
      interval: seconds between plain lines when `stream` is not a terminal.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it",
                 stream: TextIO | None = None, interval: float = 30.0):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.done = 0
        self._start = self._last = time.monotonic()
        self._bar = (tqdm.tqdm(total=total, desc=desc, unit=f" {unit}", file=self.stream,
                               dynamic_ncols=True) if self.tty else None)

    def line(self) -> str:
        """The current count, rate and ETA as one line (tqdm's own format)."""
        return tqdm.tqdm.format_meter(self.done, self.total, time.monotonic() - self._start,
                                      prefix=self.desc, unit=f" {self.unit}")

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False
