"""The simulator's progress: %, rate and ETA redrawn on a terminal; one line every few
seconds in a log."""

from __future__ import annotations

import io

from meetstream_live.adapters.cli.progress import Progress, duration_text, size_text


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_one_line_redrawn_with_share_rate_and_eta() -> None:
    clock, out = Clock(), Terminal()
    progress = Progress(out, 10_000_000, clock=clock)
    for _ in range(4):
        clock.now += 1.0
        progress.sent += 1_000_000
        progress.show(2)
    text = out.getvalue()
    assert text.count("\r") == 4 and "\n" not in text
    last = text.split("\r")[-1]
    assert last.startswith(" 40.0%  4.0 MB / 10.0 MB  1.0 MB/s  ETA 0:06")
    progress.sent = 10_000_000
    progress.show(2, final=True)
    assert out.getvalue().endswith("\n") and "100.0%" in out.getvalue().split("\r")[-1]


def test_in_a_log_a_line_every_few_seconds() -> None:
    clock, out = Clock(), io.StringIO()
    progress = Progress(out, 1000, clock=clock, log_every=5.0)
    for _ in range(120):  # 12 s of updates, ten a second
        clock.now += 0.1
        progress.sent += 5
        progress.show(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # at 5 s and 10 s, not 120
    assert all("\r" not in line for line in lines)
    progress.show(1, final=True)
    assert len(out.getvalue().splitlines()) == 3


def test_texts() -> None:
    assert [size_text(n) for n in (12, 12_300, 4_500_000, 1_200_000_000)] == [
        "12 B", "12.3 kB", "4.5 MB", "1.20 GB"]
    assert [duration_text(s) for s in (7, 750, 3723)] == ["0:07", "12:30", "1:02:03"]
