"""Progress output: tqdm on a terminal, plain lines elsewhere. A real run and its resume are in
tests/integration/test_progress_resume.py."""

from __future__ import annotations

import io

from metatokens import progress
from metatokens.progress import LineProgress, progress_bar


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_line_progress_writes_whole_lines_at_most_once_per_interval(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    out = io.StringIO()
    bar = LineProgress(total=1000, initial=100, desc="run", unit="step", interval=30, file=out)
    for _ in range(900):  # 900 steps over 90 s: one line per 30 s, then the closing one
        clock.now += 0.1
        bar.update(1)
        bar.set_postfix(loss="1.000")
    bar.close()
    bar.close()  # a second close prints nothing
    text = out.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 3, lines  # at 30 s, at 60 s, and the closing line at 90 s
    assert lines[-1].startswith("run: 1000/1000 step (100%), 90 s, 10 step/s, loss=1.000")


def test_progress_bar_is_tqdm_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    from tqdm.auto import tqdm

    pipe_bar = progress_bar(total=3, desc="x", file=io.StringIO())
    tty_bar = progress_bar(total=3, desc="x", file=Tty())
    assert isinstance(pipe_bar, LineProgress) and not isinstance(pipe_bar, tqdm)
    assert isinstance(tty_bar, tqdm)
    tty_bar.close()
    assert list(progress_bar(range(3), desc="x", file=io.StringIO())) == [0, 1, 2]


