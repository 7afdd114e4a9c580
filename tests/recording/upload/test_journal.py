"""The upload journal: durable records, folded into where the upload is; a torn last record
ignored and cut; a disk that refuses a record leaves the state as it was."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from meetstream_live.adapters.recording.durable import Disk
from meetstream_live.adapters.recording.upload.journal import (
    UploadJournal,
    journal_path,
    media_path,
)


def part(n: int, start: int, end: int) -> dict[str, object]:
    return {"n": n, "start": start, "end": end, "etag": f'"e{n}"', "crc32": "AAAAAA=="}


def test_names(tmp_path: Path) -> None:
    media = tmp_path / "20250102T030405Z.mp4"
    assert journal_path(media) == journal_path(media.with_name(media.name + ".part"))
    assert journal_path(media).name == "20250102T030405Z.upload.jsonl"
    assert media_path(journal_path(media)) == media


def test_records_fold_into_the_state(tmp_path: Path) -> None:
    path = tmp_path / "x.upload.jsonl"
    journal = UploadJournal(path)
    journal.append("begin", target="s3://a/p", bucket="a", key="p/x.mp4", part_size=5)
    journal.append("create", upload_id="u1")
    journal.append("part", **part(1, 0, 10))
    journal.append("part", **part(2, 10, 20))
    journal.append("part", **part(1, 0, 10) | {"etag": '"again"'})  # replaces
    journal.close()
    state = UploadJournal.load(path).state
    assert (state.target, state.key, state.upload_id) == ("s3://a/p", "p/x.mp4", "u1")
    assert state.uploaded_end == 20 and state.parts[1].etag == '"again"'

    journal = UploadJournal.load(path)
    journal.append("keep", upto=1)
    assert journal.state.uploaded_end == 10
    journal.append("abandon", target="s3://a/p", bucket="a", key="p/x.mp4", upload_id="u1",
                   reason="failover")
    assert journal.state.upload_id is None and not journal.state.parts
    assert list(journal.state.abandoned) == ["u1"]
    journal.append("switch", target="s3://b")
    journal.append("begin", target="s3://b", bucket="b", key="x.mp4", part_size=5)
    journal.append("complete", etag='"x"', size=20, crc32="c-2", parts=2)
    journal.append("aborted", upload_id="u1")
    journal.close()
    state = UploadJournal.load(path).state
    assert state.bucket == "b" and state.complete == {"etag": '"x"', "size": 20,
                                                      "crc32": "c-2", "parts": 2}
    assert state.abandoned == {} and state.switches == 1


def test_a_gap_ends_what_is_uploaded(tmp_path: Path) -> None:
    journal = UploadJournal(tmp_path / "x.upload.jsonl")
    journal.append("part", **part(1, 0, 10))
    journal.append("part", **part(3, 20, 30))
    assert journal.state.uploaded_end == 10


def test_a_torn_last_record_is_ignored_and_cut(tmp_path: Path) -> None:
    path = tmp_path / "x.upload.jsonl"
    journal = UploadJournal(path)
    journal.append("create", upload_id="u1")
    journal.close()
    with open(path, "ab") as f:
        f.write(b'{"op":"create","upload_id":"u2"')  # no end: a crash mid-append
    journal = UploadJournal.load(path)
    assert journal.state.upload_id == "u1"
    journal.append("part", **part(1, 0, 10))
    journal.close()
    assert path.read_bytes().count(b"\n") == 2
    assert UploadJournal.load(path).state.parts[1].end == 10


class RefusingDisk(Disk):
    def __init__(self) -> None:
        self.refuse = False

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> int:
        if self.refuse:
            os.write(fd, bytes(data[:7]))  # a part of it made it
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(fd, data)


def test_a_refused_record_changes_nothing(tmp_path: Path) -> None:
    disk = RefusingDisk()
    path = tmp_path / "x.upload.jsonl"
    journal = UploadJournal(path, disk)
    journal.append("create", upload_id="u1")
    disk.refuse = True
    with pytest.raises(OSError, match="No space"):
        journal.append("part", **part(1, 0, 10))
    assert journal.state.parts == {}
    disk.refuse = False
    journal.append("part", **part(1, 0, 10))  # the torn bytes are cut first
    journal.close()
    state = UploadJournal.load(path).state
    assert state.parts[1].end == 10 and path.read_bytes().count(b"\n") == 2
