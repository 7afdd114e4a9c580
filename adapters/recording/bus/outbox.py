"""The bus's outbox on disk: what NATS could not take in time, one file per lane (one part of
one stream), in order, until it is published (``docs/bus.md``, "NATS slow or down").

A file is a run of records, each ``>II`` (the length of its JSON meta, of its payload), the
meta (subject, headers with the ``Nats-Msg-Id``, kind, the init subject) and the payload.
Records are appended by the publisher's spill thread and read back, in order, by the lane
that publishes them; a file whose records are all published is removed. Files left by a stop
(or a crash) are published at the next start, with the IDs they were stored with: JetStream
drops what it already has (within its duplicate window). After a clean stop, ``<file>.read``
says where the published records end.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
from collections.abc import Iterable
from pathlib import Path

from .message import Outgoing

__all__ = ["SUFFIX", "Segment"]

SUFFIX = ".outbox"
_HEAD = struct.Struct(">II")


def _encode(message: Outgoing) -> bytes:
    meta = json.dumps({"s": message.subject, "h": message.headers, "k": message.kind,
                       "a": message.also}, separators=(",", ":")).encode()
    return _HEAD.pack(len(meta), len(message.payload)) + meta + message.payload


class Segment:
    """One lane's records on disk. :meth:`append` (one writer thread) and :meth:`peek` /
    :meth:`advance` (the lane's publisher) may run at once."""

    def __init__(self, path: Path, *, existing: bool = False) -> None:
        self.path = path
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0) | (0 if existing else os.O_CREAT)
        self._fd = os.open(path, flags, 0o600)
        self._lock = threading.Lock()
        self._read = 0  # offset of the next record to publish
        self._write = 0  # end of the complete records
        self.count = 0  # records not published yet
        self.bytes = 0  # their payload bytes
        self._next: tuple[Outgoing, int] | None = None  # peeked: message, its record's size
        #: Where the published records end, written at close (the file is not rewritten).
        self._mark = path.with_name(path.name + ".read")
        if existing:
            self._scan()
            with contextlib.suppress(OSError, ValueError):
                read = int(self._mark.read_text())
                self._skip(read)

    def _scan(self) -> None:
        """Count the complete records of a file left by an earlier run (a record cut by a
        crash, and what follows it, is cut off)."""
        size = os.fstat(self._fd).st_size
        at = 0
        while at + _HEAD.size <= size:
            meta_len, payload_len = _HEAD.unpack(os.pread(self._fd, _HEAD.size, at))
            end = at + _HEAD.size + meta_len + payload_len
            if end > size:
                break
            self.count += 1
            self.bytes += payload_len
            at = end
        if at < size:
            os.ftruncate(self._fd, at)
        self._write = at

    def _skip(self, read: int) -> None:
        """Skip the records before file offset ``read`` (published by an earlier run)."""
        at = 0
        while at < read and self.count:
            meta_len, payload_len = _HEAD.unpack(os.pread(self._fd, _HEAD.size, at))
            at += _HEAD.size + meta_len + payload_len
            self.count -= 1
            self.bytes -= payload_len
        self._read = at

    def append(self, messages: Iterable[Outgoing]) -> int:
        """Write ``messages`` after the others; the payload bytes written."""
        data = bytearray()
        count = payload = 0
        for message in messages:
            data += _encode(message)
            count += 1
            payload += len(message.payload)
        if not count:
            return 0
        view = memoryview(data)
        at = self._write
        while view:
            n = os.pwrite(self._fd, view, at)
            view = view[n:]
            at += n
        with self._lock:
            self._write = at
            self.count += count
            self.bytes += payload
        return payload

    def peek(self) -> Outgoing | None:
        """The oldest record not published (read from the file), or None."""
        with self._lock:
            if self._next is not None:
                return self._next[0]
            if self.count == 0:
                return None
            at = self._read
        meta_len, payload_len = _HEAD.unpack(os.pread(self._fd, _HEAD.size, at))
        body = os.pread(self._fd, meta_len + payload_len, at + _HEAD.size)
        meta = json.loads(body[:meta_len])
        message = Outgoing(meta["s"], bytes(body[meta_len:]), dict(meta["h"]), meta["k"],
                           meta.get("a"))
        with self._lock:
            self._next = (message, _HEAD.size + meta_len + payload_len)
        return message

    def advance(self) -> None:
        """The peeked record is published."""
        with self._lock:
            assert self._next is not None
            message, size = self._next
            self._next = None
            self._read += size
            self.count -= 1
            self.bytes -= len(message.payload)

    def unpublished(self) -> list[Outgoing]:
        """Every record not published yet, in order (at close)."""
        out: list[Outgoing] = []
        at = self._read
        while at < self._write:
            meta_len, payload_len = _HEAD.unpack(os.pread(self._fd, _HEAD.size, at))
            body = os.pread(self._fd, meta_len + payload_len, at + _HEAD.size)
            meta = json.loads(body[:meta_len])
            out.append(Outgoing(meta["s"], bytes(body[meta_len:]), dict(meta["h"]), meta["k"],
                                meta.get("a")))
            at += _HEAD.size + meta_len + payload_len
        return out

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        for path in (self.path, self._mark):
            with contextlib.suppress(OSError):
                path.unlink()

    def close(self) -> None:
        """Keep the file for the next start, with the offset of what is published beside it
        (removed when all of it is published)."""
        if self.count == 0:
            self.remove()
            return
        with contextlib.suppress(OSError):
            self._mark.write_text(str(self._read))
            os.fsync(self._fd)
        with contextlib.suppress(OSError):
            os.close(self._fd)
