"""Durable file I/O: new files taken with ``O_EXCL`` (never over an existing one), writes that
finish, ``fsync`` of files and directories, renames that never replace, JSON documents replaced
atomically. Everything the file sink, recovery, the hook journal and retention write goes
through here, and through one :class:`Disk`: the operating system's file operations as an
object, so that tests can make any of them fail (``ENOSPC``, ``EIO``...) at any write site.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DISK_ERRNOS",
    "JOIN_BELOW",
    "REAL_DISK",
    "Chunks",
    "Disk",
    "create_new",
    "dumps_json",
    "errno_name",
    "fsync_dir",
    "numbered",
    "rename_noreplace",
    "reopen",
    "replace_json",
    "reserve",
    "write_all",
    "write_new",
    "write_parts",
]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

#: The errors of a disk that is full or failing: the recorder goes on without writing (see
#: ``docs/recording.md``, "Disk errors"), it never closes a bot's connection for them.
DISK_ERRNOS = frozenset(
    code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EIO, errno.EROFS)
    if code is not None
)


def errno_name(exc: BaseException) -> str:
    """``ENOSPC``, ``EIO``... (``OSError`` without an errno: its class name)."""
    code = getattr(exc, "errno", None)
    if isinstance(code, int):
        return errno.errorcode.get(code, str(code))
    return type(exc).__name__


class Disk:
    """The file operations the recorder uses, one method each; the default object is the
    real one (:data:`REAL_DISK`). Subclass it to inject faults: every write site of the file
    sink, recovery, the hook journal and retention calls one of these."""

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags | _CLOEXEC, mode)

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> int:
        return os.write(fd, data)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return os.pread(fd, size, offset)

    def truncate(self, fd: int, size: int) -> None:
        """Cut the file to ``size`` bytes and put the write position there: the next
        :meth:`write` goes on from the cut (``ftruncate`` alone leaves the position where it
        was, and a write past the end would leave a run of zeros in the file)."""
        os.ftruncate(fd, size)
        os.lseek(fd, size, os.SEEK_SET)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def seek_end(self, fd: int) -> int:
        return os.lseek(fd, 0, os.SEEK_END)

    def link(self, source: Path, target: Path) -> None:
        os.link(source, target)

    def rename(self, source: Path, target: Path) -> None:
        os.rename(source, target)

    def replace(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def exists(self, path: Path) -> bool:
        return os.path.lexists(path)

    def mkdir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)

    def free_bytes(self, path: Path) -> int:
        """Bytes available to an unprivileged writer on the filesystem of ``path``."""
        stat = os.statvfs(path)
        return stat.f_bavail * stat.f_frsize


#: The operating system's files.
REAL_DISK = Disk()


def write_all(
    fd: int, data: bytes | bytearray | memoryview, disk: Disk = REAL_DISK
) -> None:
    view = memoryview(data)
    while view:
        written = disk.write(fd, view)
        view = view[written:]


#: Chunks at least this large (on average) are written one by one rather than joined first:
#: a system call costs less than copying them.
JOIN_BELOW = 32 * 1024


def write_parts(
    fd: int, parts: Sequence[bytes | memoryview], size: int, disk: Disk = REAL_DISK
) -> None:
    """Write ``parts`` (``size`` bytes) in order: small chunks joined into one ``write`` (one
    copy, where appending them to a growing ``bytearray`` reallocated and copied it again and
    again), large ones as they are."""
    if len(parts) == 1 or size >= JOIN_BELOW * len(parts):
        for part in parts:
            write_all(fd, part, disk)
    elif parts:
        write_all(fd, b"".join(parts), disk)


class Chunks:
    """The bytes a stream holds before writing: the chunks themselves (no copy into a growing
    buffer), written with one ``write``. Supports what a ``bytearray`` was used for here:
    ``+=``, ``len``, truth, ``clear()``, ``del c[:n]``, ``bytes(c)``."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes | memoryview] = []
        self.size = 0

    def __iadd__(self, data: bytes | memoryview) -> Chunks:
        if data:
            self.parts.append(data if isinstance(data, (bytes, memoryview)) else bytes(data))
            self.size += len(data)
        return self

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)

    def clear(self) -> None:
        self.parts = []
        self.size = 0

    def head(self, count: int) -> list[bytes | memoryview]:
        """The buffers of the first ``count`` bytes."""
        out: list[bytes | memoryview] = []
        for part in self.parts:
            if count <= 0:
                break
            if len(part) > count:
                out.append(memoryview(part)[:count])
                break
            out.append(part)
            count -= len(part)
        return out

    def __delitem__(self, key: slice) -> None:
        assert key.start is None and key.step is None and key.stop is not None
        count = min(key.stop, self.size)
        self.size -= count
        parts = self.parts
        i = 0
        while count and i < len(parts):
            size = len(parts[i])
            if size <= count:
                count -= size
                i += 1
            else:
                parts[i] = memoryview(parts[i])[count:]
                count = 0
        del parts[:i]


def fsync_dir(directory: Path, disk: Disk = REAL_DISK) -> None:
    with contextlib.suppress(OSError):  # not every platform / filesystem allows it
        fd = disk.open(directory, os.O_RDONLY)
        try:
            disk.fsync(fd)
        finally:
            disk.close(fd)


def create_new(path: Path, disk: Disk = REAL_DISK) -> int:
    """Open a new file for writing; ``FileExistsError`` if anything is there already."""
    return disk.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)


def reopen(path: Path, disk: Disk = REAL_DISK) -> int:
    """Open one of our ``.part`` files again, positioned at its end."""
    fd = disk.open(path, os.O_RDWR)
    try:
        disk.seek_end(fd)
    except BaseException:
        disk.close(fd)
        raise
    return fd


def write_new(path: Path, data: bytes, disk: Disk = REAL_DISK) -> None:
    """A new file with ``data``, fsynced; nothing is left behind when it fails."""
    fd = create_new(path, disk)
    try:
        write_all(fd, data, disk)
        disk.fsync(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            disk.close(fd)
        with contextlib.suppress(OSError):
            disk.unlink(path)  # never leave a half-written file behind
        raise
    disk.close(fd)


def rename_noreplace(source: Path, target: Path, disk: Disk = REAL_DISK) -> None:
    """Rename without ever replacing ``target`` (``FileExistsError`` if it exists). A rename
    interrupted between its link and its unlink (both names on one file) is finished."""
    try:
        disk.link(source, target)
    except FileExistsError:
        with contextlib.suppress(OSError):
            if os.path.samefile(source, target):
                disk.unlink(source)
                return
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP,
                             errno.EMLINK):
            raise  # a disk error, not a filesystem without hard links
        # No hard links here (some network and FAT filesystems): check, then rename.
        if disk.exists(target):
            raise FileExistsError(target) from None
        disk.rename(source, target)
    else:
        disk.unlink(source)


def replace_json(path: Path, document: dict[str, Any], disk: Disk = REAL_DISK) -> None:
    """Write our own document anew (a manifest, a sidecar recovery updates): a temporary
    file, then a rename over the old one."""
    temporary = path.with_name(path.name + f".{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        disk.unlink(temporary)
    write_new(temporary, dumps_json(document), disk)
    try:
        disk.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            disk.unlink(temporary)
        raise


def dumps_json(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n").encode(
        "utf-8", "backslashreplace"
    )


def reserve(
    directory: Path, stems: Callable[[int], str], disk: Disk = REAL_DISK
) -> tuple[str, int]:
    """Take the first stem ``stems(0), stems(1)...`` with none of its four files existing.

    Returns the stem and an open descriptor of its new, empty ``.mp4.part``; its
    ``.json.part`` is created too (empty), so the stem is ours until we rename them.
    """
    for n in range(100_000):
        stem = stems(n)
        part = directory / f"{stem}.mp4.part"
        try:
            fd = create_new(part, disk)
        except FileExistsError:
            continue
        try:
            if not any(disk.exists(directory / f"{stem}{s}") for s in (".mp4", ".json")):
                disk.close(create_new(directory / f"{stem}.json.part", disk))
                return stem, fd
        except FileExistsError:
            pass
        except BaseException:
            disk.close(fd)
            with contextlib.suppress(OSError):
                disk.unlink(part)
            raise
        disk.close(fd)
        disk.unlink(part)
    raise FileExistsError(f"no free file name in {directory} for {stems(0)!r}")


def numbered(base: str) -> Callable[[int], str]:
    return lambda n: base if n == 0 else f"{base}_{n}"
