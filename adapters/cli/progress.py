"""The simulator's progress on stderr: on a terminal one line redrawn in place, with the share
sent, the rate and the time left; elsewhere (a log file, CI) one plain line every few seconds
and a last one at the end, so that logs stay short and readable."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import IO

__all__ = ["Progress", "duration_text", "size_text"]


def size_text(size: float) -> str:
    """``532 B``, ``12.3 kB``, ``4.5 MB``, ``1.20 GB`` (powers of 1000, like a network)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{size:.0f} B"


def duration_text(seconds: float) -> str:
    """``0:07``, ``12:30``, ``1:02:03``."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Counts the bots update (``sent``, ``pongs``, ``connected``, ``done``); :meth:`show`
    draws them at most every ``tty_every`` seconds on a terminal, every ``log_every``
    seconds elsewhere. The rate is over the last ``window`` seconds."""

    def __init__(
        self,
        stream: IO[str] | None,
        total: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        tty_every: float = 0.2,
        log_every: float = 5.0,
        window: float = 5.0,
    ) -> None:
        self.stream = stream
        self.total = total
        self.sent = 0
        self.pongs = 0
        self.connected = 0
        self.done = 0
        self._clock = clock
        self._tty = bool(stream is not None and stream.isatty())
        self._every = tty_every if self._tty else log_every
        self._window = window
        self._began = clock()
        self._last: float | None = None
        self._samples: deque[tuple[float, int]] = deque([(self._began, 0)])
        self._width = 0

    def line(self, bots: int, now: float) -> str:
        """The progress as text, at ``now``."""
        while len(self._samples) > 1 and now - self._samples[0][0] > self._window:
            self._samples.popleft()
        first_at, first_sent = self._samples[0]
        self._samples.append((now, self.sent))
        elapsed = now - first_at
        rate = (self.sent - first_sent) / elapsed if elapsed > 0 else 0.0
        share = 100.0 * self.sent / self.total if self.total else 100.0
        left = self.total - self.sent
        eta = duration_text(left / rate) if rate > 0 and left > 0 else ("0:00" if left <= 0
                                                                         else "?")
        return (f"{share:5.1f}%  {size_text(self.sent)} / {size_text(self.total)}  "
                f"{size_text(rate)}/s  ETA {eta}  (elapsed {duration_text(now - self._began)}; "
                f"bots {self.connected}/{bots} connected, {self.done} done; {self.pongs} pongs)")

    def show(self, bots: int, *, final: bool = False) -> None:
        if self.stream is None:
            return
        now = self._clock()
        if not final and self._last is not None and now - self._last < self._every:
            return
        if self._last is None and not final and not self._tty:
            self._last = now  # not a terminal: the first line after log_every, not at once
            return
        self._last = now
        text = self.line(bots, now)
        if self._tty:
            padding = " " * max(0, self._width - len(text))
            self._width = len(text)
            self.stream.write("\r" + text + padding + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
