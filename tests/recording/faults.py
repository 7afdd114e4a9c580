"""A :class:`~meetstream_live.adapters.recording.durable.Disk` that fails where it is told to:
the fault injection of the recorder's tests (issue 13: every write can fail).

Each operation is named by its *site* (what the recorder was doing), from the path it is on:

* ``open`` — creating a part's ``.mp4.part``; ``media_write``, ``fsync``, ``truncate`` — on it;
* ``stub`` — the ``.json.part`` written at the start; ``sidecar`` — the final ``<stem>.json``;
* ``rename`` — ``.mp4.part`` to ``.mp4``; ``commit`` — removing the ``.json.part``;
* ``manifest`` — ``<base>.session.json``; ``journal`` — ``<output>/.hooks/``;
* ``retention`` — deleting a finished ``.mp4`` or ``.json``.

``fail(site, errno)`` makes every operation of that site raise ``OSError(errno)`` until
``heal()``; ``crash_after(n)`` raises :class:`Crash` (not an ``Exception``: nothing catches
it) at the ``n``-th mutating operation, to kill a sequence at each of its steps.
"""

from __future__ import annotations

import errno as errnos
import os
import threading
from pathlib import Path

from meetstream_live.adapters.recording.durable import Disk

SITES = ("open", "media_write", "fsync", "truncate", "stub", "sidecar", "rename", "commit",
         "manifest", "journal", "retention")


class Crash(BaseException):
    """The process dies here."""


def site_of(op: str, path: Path) -> str:
    name = path.name
    if ".hooks" in path.parts:
        return "journal"
    if ".session.json" in name:
        return "manifest"
    if name.endswith(".mp4.part"):
        return {"open": "open", "write": "media_write", "fsync": "fsync",
                "truncate": "truncate", "link": "rename", "rename": "rename",
                "unlink": "open"}.get(op, "media")
    if name.endswith(".json.part"):
        return {"unlink": "commit", "open": "open"}.get(op, "stub")
    if name.endswith(".json") or ".json." in name:
        return "retention" if op == "unlink" else "sidecar"
    if name.endswith(".mp4"):
        return "retention" if op == "unlink" else "rename"
    return "other"


class FaultyDisk(Disk):
    def __init__(self) -> None:
        self.paths: dict[int, Path] = {}
        self.faults: dict[str, int] = {}
        #: What free_bytes() answers (None: the truth).
        self.free: int | None = None
        self.failures: dict[str, int] = {}
        self.crash_at: int | None = None
        #: Bytes the media files may still take (None: no limit); then ENOSPC, 0 bytes free.
        self.budget: int | None = None
        #: Faults only on paths that contain this (None: every path).
        self.only: str | None = None
        self.operations = 0  # mutating operations so far
        self.log: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def fail(self, site: str, code: int = errnos.ENOSPC) -> None:
        self.faults[site] = code
        if code in (errnos.ENOSPC, getattr(errnos, "EDQUOT", -1)):
            self.free = 0

    def fail_all(self, code: int) -> None:
        """Every write site fails (a read-only or dead disk)."""
        for site in SITES:
            self.fail(site, code)

    def heal(self) -> None:
        self.faults.clear()
        self.free = None

    def crash_after(self, operations: int) -> None:
        self.operations = 0
        self.crash_at = operations

    def _check(self, op: str, path: Path, mutating: bool = True) -> None:
        site = site_of(op, path)
        with self._lock:
            if mutating:
                self.log.append((op, site))
                self.operations += 1
                if self.crash_at is not None and self.operations >= self.crash_at:
                    self.crash_at = None
                    raise Crash(f"{op} {site}")
            code = self.faults.get(site)
            if self.only is not None and self.only not in str(path):
                code = None
            if code is not None:
                self.failures[site] = self.failures.get(site, 0) + 1
        if code is not None:
            raise OSError(code, os.strerror(code), str(path))

    def _path(self, fd: int) -> Path:
        return self.paths.get(fd, Path("?"))

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        if flags & os.O_CREAT:
            self._check("open", path)
        elif flags & (os.O_WRONLY | os.O_RDWR):
            self._check("reopen", path, mutating=False)
        fd = super().open(path, flags, mode)
        self.paths[fd] = Path(path)
        return fd

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> int:
        path = self._path(fd)
        self._check("write", path)
        if (self.budget is not None and site_of("write", path) == "media_write"
                and (self.only is None or self.only in str(path))):
            with self._lock:
                if self.budget <= 0:
                    self.free = 0
                    raise OSError(errnos.ENOSPC, os.strerror(errnos.ENOSPC), str(path))
                data = memoryview(data)[: self.budget]
                self.budget -= len(data)
        return super().write(fd, data)

    def truncate(self, fd: int, size: int) -> None:
        self._check("truncate", self._path(fd))
        super().truncate(fd, size)

    def fsync(self, fd: int) -> None:
        self._check("fsync", self._path(fd))
        super().fsync(fd)

    def close(self, fd: int) -> None:
        self.paths.pop(fd, None)
        super().close(fd)

    def link(self, source: Path, target: Path) -> None:
        self._check("link", Path(source))
        super().link(source, target)

    def rename(self, source: Path, target: Path) -> None:
        self._check("rename", Path(source))
        super().rename(source, target)

    def replace(self, source: Path, target: Path) -> None:
        self._check("replace", Path(target))
        super().replace(source, target)

    def unlink(self, path: Path) -> None:
        self._check("unlink", Path(path))
        super().unlink(path)

    def free_bytes(self, path: Path) -> int:
        return super().free_bytes(path) if self.free is None else self.free

    def close_all(self) -> None:
        """What a dead process leaves: every descriptor closed."""
        for fd in list(self.paths):
            self.close(fd)
