"""The upload journal: what the bucket has of one recording, on local disk beside it.

``<stem>.upload.jsonl`` holds one JSON record per line, appended and fsynced (through
:mod:`..durable`'s :class:`~..durable.Disk`) *after* the storage confirmed the step and before
the next one starts, so that after a crash or a restart the upload goes on where it was:

========== ==============================================================================
``begin``   the target (``s3://...``), bucket and key; the part size
``create``  the multipart upload's ``upload_id``
``part``    one part: number, byte range ``[start, end)`` of the file, ETag, CRC32 (base64,
            as S3 says it), when its bytes were all on disk (``ready_ms``) and in the bucket
            (``at_ms``); a later record for the same number replaces an earlier one
``keep``    parts after ``upto`` are forgotten (a resume found them missing or different)
``complete`` the object is whole: ETag, size, checksum
``sidecar`` / ``manifest`` the sidecar / the session manifest is beside it
``abandon`` an upload given up (a fallback took over, the file is gone...), to abort
``aborted`` that upload is aborted
``restart`` the upload starts again from byte 0 on the same target (it vanished)
``switch``  the recording goes to another target (after ``abandon``): a new ``begin`` follows
``gave_up`` no more tries here (``meetstream-live upload`` may try again)
``removed`` the local copy was removed (``--keep-local false``)
========== ==============================================================================

A torn last line (a crash in the middle of an append) is ignored when read, and cut before
the next append.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meetstream_live.adapters.recording.durable import (
    REAL_DISK,
    Disk,
    create_new,
    fsync_dir,
    reopen,
    write_all,
)

__all__ = [
    "JOURNAL_SUFFIX",
    "Abandoned",
    "JournalState",
    "PartRecord",
    "UploadJournal",
    "journal_path",
    "media_path",
]

log = logging.getLogger("meetstream_live.upload")

JOURNAL_SUFFIX = ".upload.jsonl"


def journal_path(media: Path) -> Path:
    """The journal of ``<stem>.mp4`` (or ``<stem>.mp4.part``): ``<stem>.upload.jsonl``."""
    name = media.name
    for suffix in (".mp4.part", ".mp4"):
        if name.endswith(suffix):
            return media.with_name(name[: -len(suffix)] + JOURNAL_SUFFIX)
    return media.with_name(name + JOURNAL_SUFFIX)


def media_path(journal: Path) -> Path:
    """The final media file a journal belongs to."""
    return journal.with_name(journal.name[: -len(JOURNAL_SUFFIX)] + ".mp4")


@dataclass(frozen=True)
class PartRecord:
    """One uploaded part."""

    number: int
    start: int
    end: int
    etag: str
    crc32: str
    ready_ms: int = 0
    at_ms: int = 0

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Abandoned:
    """A multipart upload given up, to abort."""

    target: str
    bucket: str
    key: str
    upload_id: str
    reason: str


@dataclass
class JournalState:
    """The journal folded: where the upload is."""

    target: str | None = None
    bucket: str | None = None
    key: str | None = None
    part_size: int = 0
    upload_id: str | None = None
    parts: dict[int, PartRecord] = field(default_factory=dict)
    complete: dict[str, Any] | None = None
    sidecar: bool = False
    manifest: bool = False
    abandoned: dict[str, Abandoned] = field(default_factory=dict)
    gave_up: str | None = None
    removed: bool = False
    restarts: int = 0
    switches: int = 0

    @property
    def uploaded_end(self) -> int:
        """The end of the parts uploaded from byte 0 without a gap."""
        end = 0
        for number in sorted(self.parts):
            part = self.parts[number]
            if part.start != end:
                break
            end = part.end
        return end

    def apply(self, record: Mapping[str, Any]) -> None:
        op = record.get("op")
        if op == "begin":
            self.target = str(record["target"])
            self.bucket = str(record["bucket"])
            self.key = str(record["key"])
            self.part_size = int(record.get("part_size", 0))
            self.upload_id = None
            self.parts.clear()
            self.complete = None
            self.sidecar = self.manifest = False
            self.gave_up = None
        elif op == "create":
            self.upload_id = str(record["upload_id"])
        elif op == "part":
            part = PartRecord(int(record["n"]), int(record["start"]), int(record["end"]),
                              str(record["etag"]), str(record["crc32"]),
                              int(record.get("ready_ms", 0)), int(record.get("at_ms", 0)))
            self.parts[part.number] = part
        elif op == "keep":
            upto = int(record["upto"])
            for number in [n for n in self.parts if n > upto]:
                del self.parts[number]
        elif op == "complete":
            self.complete = {k: v for k, v in record.items() if k != "op"}
        elif op == "sidecar":
            self.sidecar = True
        elif op == "manifest":
            self.manifest = True
        elif op == "abandon":
            item = Abandoned(str(record["target"]), str(record["bucket"]), str(record["key"]),
                             str(record["upload_id"]), str(record.get("reason", "")))
            self.abandoned[item.upload_id] = item
            if item.upload_id == self.upload_id:
                self.upload_id = None
                self.parts.clear()
        elif op == "aborted":
            self.abandoned.pop(str(record["upload_id"]), None)
        elif op == "restart":
            self.restarts += 1
            self.upload_id = None
            self.parts.clear()
        elif op == "switch":
            self.switches += 1
        elif op == "gave_up":
            self.gave_up = str(record.get("reason", ""))
        elif op == "removed":
            self.removed = True


class UploadJournal:
    """One recording's journal file (see the module). Not thread-safe: one job owns it."""

    def __init__(self, path: Path, disk: Disk = REAL_DISK) -> None:
        self.path = path
        self.disk = disk
        self.state = JournalState()
        self._fd: int | None = None
        self._good_end: int | None = None  # where the intact records end (after load)
        self.records = 0

    @classmethod
    def load(cls, path: Path, disk: Disk = REAL_DISK) -> UploadJournal:
        """The journal at ``path`` (``FileNotFoundError`` if there is none)."""
        journal = cls(path, disk)
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        for number, line in enumerate(data[:end].splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                journal.state.apply(record)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("%s: record %d unreadable (%r): skipped", path, number, exc)
                continue
            journal.records += 1
        if end != len(data):
            log.warning("%s: torn last record (%d bytes) ignored", path, len(data) - end)
        journal._good_end = end
        return journal

    @property
    def exists(self) -> bool:
        return self._fd is not None or self._good_end is not None

    def append(self, op: str, **fields: Any) -> None:
        """Write one record durably (``OSError`` when the disk refuses: nothing is applied)."""
        record = {"op": op, **fields}
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
        disk = self.disk
        if self._fd is None:
            if self._good_end is None:
                self._fd = create_new(self.path, disk)
                fsync_dir(self.path.parent, disk)
            else:
                self._fd = reopen(self.path, disk)
                if disk.size(self._fd) != self._good_end:  # a torn record: cut it
                    disk.truncate(self._fd, self._good_end)
                    disk.seek_end(self._fd)
            self._good_end = None
        fd = self._fd
        try:
            write_all(fd, line, disk)
            disk.fsync(fd)
        except OSError:
            # What was written may be torn: start again from the intact records next time.
            self.close()
            with contextlib.suppress(OSError):
                self._good_end = self._intact_end()
            raise
        self.state.apply(record)
        self.records += 1

    def _intact_end(self) -> int:
        data = self.path.read_bytes()
        return data.rfind(b"\n") + 1

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                self.disk.close(fd)
            if self._good_end is None:
                with contextlib.suppress(OSError):
                    self._good_end = self._intact_end()

    def remove(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.disk.unlink(self.path)
        self._good_end = None
