"""Free-space watermarks for the recorder, and retention that keeps running.

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

:func:`apply_retention` deletes finished recordings, oldest first, that are older than
``keep_days``, beyond ``max_total_bytes`` all together, or while the filesystem has less than
``keep_free_bytes`` free: each with every file derived from it (``<stem>.json``,
``<stem>.remux.mp4``, ``<stem>.upload.jsonl``, any ``<stem>.*``), then a session's manifest
(``<base>.session.json``) once none of its parts is left, then the directories left empty
(an empty directory it did not empty itself only once it is an hour old: one the recorder
has just made for a new session is not in the way).
A recording still being written (its ``.json.part``), one whose hooks are pending in the
journal, and one a ``protect`` callable claims are never touched. :class:`Retention` runs it
at start and then every ``interval`` seconds in a thread of its own, and at once when the
:class:`DiskGuard` goes low (:attr:`DiskGuard.on_low`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .durable import REAL_DISK, Disk, errno_name
from .metrics import Metrics

__all__ = ["DEFAULT_CHECK_BYTES", "DEFAULT_RESERVE_BYTES", "DiskGuard", "Retention",
           "apply_retention", "free_bytes"]

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
        #: Called (from the thread that noticed) when free space falls below the low
        #: watermark: serve wakes the retention then.
        self.on_low: Callable[[], None] | None = None

    @property
    def is_low(self) -> bool:
        """Whether writing is stopped now (for ``/readyz``), without measuring."""
        with self._lock:
            return self._low

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
                          "recordings paused", free, self.low_bytes, reserve, streams,
                          extra={"event": "disk_low", "bytes": free})
                if self.on_low is not None:
                    try:
                        self.on_low()
                    except Exception as exc:
                        log.error("disk guard: on_low failed: %r", exc)
            else:
                log.warning("free space %d bytes >= high watermark %d (+%d): recordings "
                            "resume", free, self.high_bytes, reserve,
                            extra={"event": "disk_resumed", "bytes": free})
            if self.metrics is not None:
                self.metrics.disk_low.inc(1 if low else -1)
        return low


#: A directory left empty is removed only once it is this old (seconds since its last change).
EMPTY_DIR_AGE = 3600.0
_PART = re.compile(r"^(?P<base>.+?)(?:_part\d{3,})?$")


@dataclass
class _Recording:
    media: Path
    mtime: float
    size: int  # the media and every derivative
    files: list[Path]


def _recordings(base: Path, skip: set[str]) -> list[_Recording]:
    """Every finished recording under ``base`` with its derivatives, oldest first."""
    found: list[_Recording] = []
    for directory, subdirs, names in os.walk(base):
        if Path(directory) == base:
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]  # .hooks, .metrics
        present = set(names)
        for name in names:
            if not name.endswith(".mp4") or name.endswith(".remux.mp4"):
                continue
            stem = name[: -len(".mp4")]
            if f"{stem}.json" not in present or f"{stem}.json.part" in present:
                continue  # not finished (or being recovered)
            media = Path(directory) / name
            if str(media) in skip:
                continue
            files = [media] + [Path(directory) / other for other in sorted(present)
                               if other.startswith(stem + ".") and other != name
                               and not other.endswith((".session.json", ".part"))]
            try:
                mtime = media.stat().st_mtime
                size = sum(f.stat().st_size for f in files)
            except OSError:
                continue
            found.append(_Recording(media, mtime, size, files))
    found.sort(key=lambda r: (r.mtime, str(r.media)))
    return found


def _remove(recording: _Recording, disk: Disk) -> None:
    """The media first: a recording half-deleted by an error is no longer a recording (what
    is left of it, an orphan sidecar or derivative, goes at the next run)."""
    disk.unlink(recording.media)
    for path in recording.files[1:]:
        with contextlib.suppress(FileNotFoundError):
            disk.unlink(path)


def _orphans(base: Path, disk: Disk) -> None:
    """Session manifests none of whose parts is left (as ``.mp4`` or ``.mp4.part``)."""
    for directory, subdirs, names in os.walk(base):
        if Path(directory) == base:
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        stems = {n[: -len(".mp4")] for n in names if n.endswith(".mp4")}
        stems |= {n[: -len(".mp4.part")] for n in names if n.endswith(".mp4.part")}
        bases = {_PART.match(stem).group("base") for stem in stems}  # type: ignore[union-attr]
        for name in names:
            if name.endswith(".session.json") and name[: -len(".session.json")] not in bases:
                with contextlib.suppress(OSError):
                    disk.unlink(Path(directory) / name)


def _prune(base: Path, directories: Iterable[Path], now: float, age: float) -> None:
    """Remove empty directories below ``base`` (from the deepest, and their parents left
    empty), unchanged for ``age`` seconds."""
    for directory in sorted(set(directories), key=lambda d: -len(d.parts)):
        current = directory
        while current != base and base in current.parents:
            try:
                if (age and now - current.stat().st_mtime < age) or any(current.iterdir()):
                    break
                os.rmdir(current)
            except OSError:
                break
            current = current.parent


def apply_retention(
    root: str | os.PathLike[str],
    *,
    keep_days: float | None = None,
    max_total_bytes: int | None = None,
    keep_free_bytes: int | None = None,
    now: float | None = None,
    disk: Disk = REAL_DISK,
    metrics: Metrics | None = None,
    protected: Iterable[str] = (),
    protect: Callable[[Path], bool] | None = None,
    free: Callable[[], int] | None = None,
) -> list[Path]:
    """Delete finished recordings beyond the limits (see the module); returns the media
    files deleted. ``protected``: media paths never deleted (pending hooks); ``free``: the
    free bytes now (default: measured)."""
    base = Path(root).resolve()
    moment = time.time() if now is None else now
    found = _recordings(base, set(protected))
    total = sum(r.size for r in found)
    room: int | None = None
    if keep_free_bytes is not None:
        try:
            room = free() if free is not None else disk.free_bytes(base)
        except OSError as exc:
            log.error("retention: cannot measure free space under %s: %s", base,
                      errno_name(exc))
    deleted: list[Path] = []
    for recording in found:
        if keep_days is not None and moment - recording.mtime > keep_days * 86400:
            reason = "age"
        elif max_total_bytes is not None and total > max_total_bytes:
            reason = "total_size"
        elif keep_free_bytes is not None and room is not None and room < keep_free_bytes:
            reason = "free_space"
        else:
            continue
        if protect is not None and protect(recording.media):
            continue
        try:
            _remove(recording, disk)
        except OSError as exc:
            log.error("retention: cannot delete %s: %s", recording.media, errno_name(exc),
                      extra={"event": "retention_failed", "file": str(recording.media)})
            if metrics is not None:
                metrics.disk_error(exc, "retention")
            continue
        total -= recording.size
        if room is not None:
            room += recording.size
        deleted.append(recording.media)
        if metrics is not None:
            metrics.retention_deleted.inc(label=reason)
            metrics.retention_deleted_bytes.inc(recording.size)
        log.info("retention: deleted %s and %d derived file(s) (%s)", recording.media,
                 len(recording.files) - 1, reason,
                 extra={"event": "retention_deleted", "file": str(recording.media),
                        "bytes": recording.size, "reason": reason})
    if deleted:
        _orphans(base, disk)
    # What this run emptied goes now; an empty directory found goes once it is an hour old
    # (one the recorder has just made for a new session is not in its way).
    _prune(base, [m.parent for m in deleted], moment, 0.0)
    _prune(base, _empty_dirs(base), moment, EMPTY_DIR_AGE)
    return deleted


def _empty_dirs(base: Path) -> list[Path]:
    empty: list[Path] = []
    for directory, subdirs, names in os.walk(base):
        if Path(directory) == base:
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        elif not subdirs and not names:
            empty.append(Path(directory))
    return empty


class Retention:
    """:func:`apply_retention` at start, every ``interval`` seconds and when :meth:`wake`
    is called (the disk guard went low), in a thread of its own. ``journal``: recordings
    with pending hooks are kept; ``protect``: more of them (a feature's uploads)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        keep_days: float | None = None,
        max_total_bytes: int | None = None,
        keep_free_bytes: int | None = None,
        interval: float = 300.0,
        metrics: Metrics | None = None,
        journal: Any = None,
        disk: Disk = REAL_DISK,
    ) -> None:
        self.root = Path(root)
        self.keep_days = keep_days
        self.max_total_bytes = max_total_bytes
        self.keep_free_bytes = keep_free_bytes
        self.interval = interval
        self.metrics = metrics
        self.journal = journal
        self.disk = disk
        #: Callables that return True for a media path to keep now.
        self.protect: list[Callable[[Path], bool]] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.keep_days, self.max_total_bytes,
                                           self.keep_free_bytes))

    def run_once(self) -> list[Path]:
        protected: set[str] = set()
        if self.journal is not None:
            protected = self.journal.references()
        try:
            return apply_retention(
                self.root, keep_days=self.keep_days, max_total_bytes=self.max_total_bytes,
                keep_free_bytes=self.keep_free_bytes, disk=self.disk, metrics=self.metrics,
                protected=protected,
                protect=(lambda media: any(p(media) for p in self.protect)),
            )
        finally:
            self.runs += 1

    def start(self, *, run_now: bool = True) -> None:
        """One run now (before serving), then the thread."""
        if run_now:
            self.run_once()
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.run_once()
            except Exception as exc:  # never the end of the thread
                log.error("retention failed: %r", exc, exc_info=exc)
