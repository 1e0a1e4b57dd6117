"""Progress of long work: a tqdm bar on a terminal, plain timed lines anywhere else.

tqdm redraws its bar with carriage returns many times a second; written to a log file or a pipe
(a CI job, `nohup`, a stage log of `metatokens reproduce`), every redraw stays, hundreds of
kilobytes per run. `progress_bar` returns tqdm only when stderr is a terminal; otherwise a
`LineProgress` that writes one ordinary line at most every `interval` seconds, and one at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm.auto import tqdm

LINE_INTERVAL_S = 30.0


class LineProgress:
    """The part of tqdm's interface that metatokens uses, as newline-terminated lines."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, initial: int = 0,
                 desc: str = "", unit: str = "it", interval: float = LINE_INTERVAL_S, file: TextIO | None = None,
                 disable: bool = False, **_: Any):
        self.iterable, self.total, self.n, self.desc, self.unit = iterable, total, initial, desc, unit
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            self.total = len(iterable)
        self.interval, self.file, self.disable = interval, file, disable
        self.postfix = ""
        self._start = self._last = time.monotonic()
        self._initial = initial
        self._closed = False

    def _out(self) -> TextIO:
        return self.file if self.file is not None else sys.stderr

    def _line(self) -> str:
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        elapsed = time.monotonic() - self._start
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        extra = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {done} {self.unit}{pct}, {elapsed:.0f} s, {rate:.3g} {self.unit}/s{extra}"

    def _maybe_print(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.disable and (force or now - self._last >= self.interval):
            print(self._line(), file=self._out(), flush=True)
            self._last = now

    def update(self, n: int = 1) -> None:
        self.n += n
        self._maybe_print()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def write(self, text: str) -> None:
        """As tqdm.write: a message line on stdout."""
        if not self.disable:
            print(text, flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n != self._initial:
                self._maybe_print(force=True)

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(iterable: Iterable | None = None, **kwargs: Any):
    """tqdm on a terminal (stderr), else `LineProgress`; same keyword arguments (total, initial,
    desc, unit, disable, ...)."""
    stream = kwargs.get("file") or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(iterable, dynamic_ncols=True, **kwargs)
    return LineProgress(iterable, **kwargs)
