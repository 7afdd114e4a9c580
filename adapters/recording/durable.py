"""Durable file I/O: new files taken with ``O_EXCL`` (never over an existing one), writes that
finish, ``fsync`` of files and directories, renames that never replace, JSON documents replaced
atomically. Everything the recorder, recovery and the hook journal write goes through here."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "JOIN_BELOW",
    "Chunks",
    "create_new",
    "dumps_json",
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

def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


#: Chunks at least this large (on average) are written one by one rather than joined first:
#: a system call costs less than copying them.
JOIN_BELOW = 32 * 1024


def write_parts(fd: int, parts: Sequence[bytes | memoryview], size: int) -> None:
    """Write ``parts`` (``size`` bytes) in order: small chunks joined into one ``write`` (one
    copy, where appending them to a growing ``bytearray`` reallocated and copied it again and
    again), large ones as they are."""
    if len(parts) == 1 or size >= JOIN_BELOW * len(parts):
        for part in parts:
            write_all(fd, part)
    elif parts:
        write_all(fd, b"".join(parts))


class Chunks:
    """The bytes a stream holds before writing: the chunks themselves (no copy into a growing
    buffer), written with one ``write``. Supports what a ``bytearray`` was used for here:
    ``+=``, ``len``, truth, ``clear()``, ``del c[:n]``, ``bytes(c)``."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes | memoryview] = []
        self.size = 0

    def __iadd__(self, data: bytes) -> Chunks:
        if data:
            self.parts.append(data if isinstance(data, bytes) else bytes(data))
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


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform / filesystem allows it
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def create_new(path: Path) -> int:
    """Open a new file for writing; ``FileExistsError`` if anything is there already."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    return os.open(path, flags, 0o644)


def reopen(path: Path) -> int:
    """Open one of our ``.part`` files again, positioned at its end."""
    fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    os.lseek(fd, 0, os.SEEK_END)
    return fd


def write_new(path: Path, data: bytes) -> None:
    """A new file with ``data``, fsynced."""
    fd = create_new(path)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)  # never leave a half-written file behind
        raise
    os.close(fd)


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename without ever replacing ``target`` (``FileExistsError`` if it exists)."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:
        # No hard links here (some network and FAT filesystems): check, then rename.
        if os.path.lexists(target):
            raise FileExistsError(target) from None
        os.rename(source, target)
    else:
        os.unlink(source)


def replace_json(path: Path, document: dict[str, Any]) -> None:
    """Write our own sidecar anew (recovery updates it): a temporary file, then a rename."""
    temporary = path.with_name(path.name + f".{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    write_new(temporary, dumps_json(document))
    os.replace(temporary, path)


def dumps_json(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n").encode(
        "utf-8", "backslashreplace"
    )


def reserve(directory: Path, stems: Callable[[int], str]) -> tuple[str, int]:
    """Take the first stem ``stems(0), stems(1)...`` with none of its four files existing.

    Returns the stem and an open descriptor of its new, empty ``.mp4.part``; its
    ``.json.part`` is created too (empty), so the stem is ours until we rename them.
    """
    for n in range(100_000):
        stem = stems(n)
        part = directory / f"{stem}.mp4.part"
        try:
            fd = create_new(part)
        except FileExistsError:
            continue
        try:
            if not any(os.path.lexists(directory / f"{stem}{s}") for s in (".mp4", ".json")):
                os.close(create_new(directory / f"{stem}.json.part"))
                return stem, fd
        except FileExistsError:
            pass
        except BaseException:
            os.close(fd)
            os.unlink(part)
            raise
        os.close(fd)
        os.unlink(part)
    raise FileExistsError(f"no free file name in {directory} for {stems(0)!r}")


def numbered(base: str) -> Callable[[int], str]:
    return lambda n: base if n == 0 else f"{base}_{n}"

