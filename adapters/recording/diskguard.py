"""Free-space watermarks for the recorder, and optional retention.

:class:`DiskGuard` answers "is the disk too full to write?" with hysteresis: it turns *low*
when free space falls below ``low_bytes`` and back to normal only above ``high_bytes``. The
recorder asks at every fragment boundary; while low, streams keep their connections (pings are
still answered, so the bot does not declare the receiver dead) but their fragments are not
written, and each stream's sidecar and the metrics say how much was lost. The check itself
(``statvfs``) runs at most every ``interval`` seconds.

:func:`apply_retention` deletes finished recordings (media + sidecar, oldest first) that are
older than ``keep_days`` or beyond ``max_total_bytes``; ``.part`` files, the hook journal and
session manifests of recordings still present are never touched.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .metrics import Metrics

__all__ = ["DiskGuard", "apply_retention", "free_bytes"]

log = logging.getLogger("meetstream_live.diskguard")


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes available to us on the filesystem of ``path``."""
    return shutil.disk_usage(path).free


class DiskGuard:
    """Low/high free-space watermarks (bytes) on the filesystem of ``root``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        low_bytes: int,
        high_bytes: int | None = None,
        interval: float = 1.0,
        metrics: Metrics | None = None,
        free: Callable[[], int] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        high = high_bytes if high_bytes is not None else low_bytes * 2
        if low_bytes < 0 or high < low_bytes:
            raise ValueError("need 0 <= low_bytes <= high_bytes")
        self.root = Path(root)
        self.low_bytes = low_bytes
        self.high_bytes = high
        self.interval = interval
        self.metrics = metrics
        self._free = free if free is not None else (lambda: free_bytes(self.root))
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._low = False
        self._checked: float | None = None
        self.last_free: int | None = None

    def check(self) -> bool:
        """Measure now; return whether we are low."""
        try:
            free = self._free()
        except OSError as exc:
            log.error("cannot measure free space under %s: %r", self.root, exc)
            return self._low
        with self._lock:
            self.last_free = free
            was = self._low
            if free < self.low_bytes:
                self._low = True
            elif free >= self.high_bytes:
                self._low = False
            low = self._low
        if low != was:
            if low:
                log.error("free space %d bytes < low watermark %d: recordings paused",
                          free, self.low_bytes)
            else:
                log.warning("free space %d bytes >= high watermark %d: recordings resume",
                            free, self.high_bytes)
            if self.metrics is not None:
                self.metrics.disk_low.inc(1 if low else -1)
        return low

    def low(self) -> bool:
        """Whether writing should stop; measures at most every ``interval`` seconds."""
        now = self._monotonic()
        with self._lock:
            due = self._checked is None or now - self._checked >= self.interval
            if due:
                self._checked = now
            else:
                return self._low
        return self.check()


def apply_retention(
    root: str | os.PathLike[str],
    *,
    keep_days: float | None = None,
    max_total_bytes: int | None = None,
    now: float | None = None,
) -> list[Path]:
    """Delete finished recordings beyond the limits; returns the media files deleted."""
    base = Path(root)
    moment = time.time() if now is None else now
    found: list[tuple[float, int, Path]] = []
    for media in base.rglob("*.mp4"):
        sidecar = media.with_suffix(".json")
        if not sidecar.is_file() or media.with_name(media.stem + ".json.part").exists():
            continue  # not finished (or being recovered)
        try:
            stat = media.stat()
            size = stat.st_size + sidecar.stat().st_size
        except OSError:
            continue
        found.append((stat.st_mtime, size, media))
    found.sort()
    total = sum(size for _, size, _ in found)
    deleted: list[Path] = []
    for mtime, size, media in found:
        old = keep_days is not None and moment - mtime > keep_days * 86400
        big = max_total_bytes is not None and total > max_total_bytes
        if not (old or big):
            continue
        try:
            media.unlink()
            media.with_suffix(".json").unlink(missing_ok=True)
        except OSError as exc:
            log.error("retention: cannot delete %s: %r", media, exc)
            continue
        total -= size
        deleted.append(media)
        log.info("retention: deleted %s (%s)", media, "older than keep-days" if old
                 else "over max-total-size")
    return deleted
