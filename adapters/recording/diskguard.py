"""Free-space watermarks for the recorder, and optional retention.

:class:`DiskGuard` answers "is the disk too full to write?" with hysteresis: it turns *low*
when free space falls below ``low_bytes`` and back to normal only above ``high_bytes``, both
raised by ``reserve_bytes`` for every stream being written (so that several streams writing
at once stop before the disk is full, each with room for the fragment it is in). The file
sink asks at every fragment boundary and at every buffer it writes; while low, streams keep
their connections (pings are still answered, so the bot does not declare the receiver dead)
but their fragments are not written, and each stream's sidecar and the metrics say how much
was lost. Free space is measured (``statvfs``) at most every ``interval`` seconds, and again
after every ``check_bytes`` written by all streams together; in between, what was written
since the last measurement is taken off it.

:func:`apply_retention` deletes finished recordings (media + sidecar, oldest first) that are
older than ``keep_days`` or beyond ``max_total_bytes``; ``.part`` files, the hook journal and
session manifests of recordings still present are never touched.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .durable import REAL_DISK, Disk, errno_name
from .metrics import Metrics

__all__ = ["DEFAULT_CHECK_BYTES", "DEFAULT_RESERVE_BYTES", "DiskGuard", "apply_retention",
           "free_bytes"]

log = logging.getLogger("meetstream_live.diskguard")

#: Room kept per stream being written, on top of the watermarks: a large fragment.
DEFAULT_RESERVE_BYTES = 4 * 1024 * 1024
#: Free space is measured again after this many bytes written (all streams together).
DEFAULT_CHECK_BYTES = 4 * 1024 * 1024


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes available to us on the filesystem of ``path``."""
    return REAL_DISK.free_bytes(Path(path))


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
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        check_bytes: int = DEFAULT_CHECK_BYTES,
    ) -> None:
        high = high_bytes if high_bytes is not None else low_bytes * 2
        if low_bytes < 0 or high < low_bytes or reserve_bytes < 0:
            raise ValueError("need 0 <= low_bytes <= high_bytes and reserve_bytes >= 0")
        self.root = Path(root)
        self.low_bytes = low_bytes
        self.high_bytes = high
        self.reserve_bytes = reserve_bytes
        self.check_bytes = check_bytes
        self.interval = interval
        self.metrics = metrics
        self._free = free if free is not None else (lambda: free_bytes(self.root))
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._low = False
        self._checked: float | None = None
        self._written = 0  # since the last measurement
        self.last_free: int | None = None

    def wrote(self, size: int) -> None:
        """``size`` bytes were written under ``root`` (any stream)."""
        with self._lock:
            self._written += size

    def check(self, streams: int = 0) -> bool:
        """Measure now; return whether we are low with ``streams`` streams being written."""
        try:
            free = self._free()
        except OSError as exc:
            log.error("cannot measure free space under %s: %s", self.root, errno_name(exc))
            return self._low
        with self._lock:
            self.last_free = free
            self._written = 0
            self._checked = self._monotonic()
        return self._decide(free, streams)

    def low(self, streams: int = 0) -> bool:
        """Whether writing should stop; measures when due (``interval`` seconds or
        ``check_bytes`` written since the last time), else estimates."""
        now = self._monotonic()
        with self._lock:
            due = (
                self._checked is None
                or now - self._checked >= self.interval
                or self._written >= self.check_bytes
            )
            estimate = None if self.last_free is None else self.last_free - self._written
        if due or estimate is None:
            return self.check(streams)
        return self._decide(estimate, streams)

    def _decide(self, free: int, streams: int) -> bool:
        reserve = self.reserve_bytes * max(0, streams)
        with self._lock:
            was = self._low
            if free < self.low_bytes + reserve:
                self._low = True
            elif free >= self.high_bytes + reserve:
                self._low = False
            low = self._low
        if low != was:
            if low:
                log.error("free space %d bytes < low watermark %d (+%d for %d stream(s)): "
                          "recordings paused", free, self.low_bytes, reserve, streams)
            else:
                log.warning("free space %d bytes >= high watermark %d (+%d): recordings "
                            "resume", free, self.high_bytes, reserve)
            if self.metrics is not None:
                self.metrics.disk_low.inc(1 if low else -1)
        return low


def apply_retention(
    root: str | os.PathLike[str],
    *,
    keep_days: float | None = None,
    max_total_bytes: int | None = None,
    now: float | None = None,
    disk: Disk = REAL_DISK,
    metrics: Metrics | None = None,
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
            disk.unlink(media)
            sidecar = media.with_suffix(".json")
            if disk.exists(sidecar):
                disk.unlink(sidecar)
        except OSError as exc:
            log.error("retention: cannot delete %s: %s", media, errno_name(exc))
            if metrics is not None:
                metrics.disk_error(exc, "retention")
            continue
        total -= size
        deleted.append(media)
        log.info("retention: deleted %s (%s)", media, "older than keep-days" if old
                 else "over max-total-size")
    return deleted
