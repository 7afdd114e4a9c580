"""A stream the fMP4 scanner gives up on (random bytes, a flood of small boxes, garbage after
real media) is recorded byte for byte as plain bytes, with one warning: one log record, one
:class:`~.sinks.Note` to the sinks, one entry in the sidecar; never one per chunk, and the
chunks after the give-up are not scanned at all."""

from __future__ import annotations

import json
import logging
import random
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from media import Media

from meetstream_live import (
    Disconnected,
    Fmp4Scanner,
    FragmentComplete,
    MediaChunk,
    StreamEnded,
    StreamStarted,
)
from meetstream_live.adapters import ConnectionInfo
from meetstream_live.adapters.recording import Recorder
from meetstream_live.adapters.recording.sinks import Note, Part, Sink, SinkEvent
from meetstream_live.fmp4 import DEFAULT_MAX_BOXES

INFO = ConnectionInfo("127.0.0.1:5555", "/", "", (), False)
CHUNK = 4_096


class Notes(Sink):
    name: ClassVar[str] = "notes"
    runs: ClassVar[Literal["thread", "inline"]] = "inline"
    accepts: ClassVar[tuple[type[SinkEvent], ...]] = (Note,)

    def __init__(self) -> None:
        self.notes: list[Note] = []
        self.lock = threading.Lock()

    def handle(self, part: Part, events: Sequence[SinkEvent]) -> None:
        with self.lock:
            self.notes += [e for e in events if isinstance(e, Note)]


def flood(size: int) -> bytes:
    return struct.pack(">I4s", 8, b"free") * (size // 8)


def random_bytes(size: int) -> bytes:
    return random.Random(7).randbytes(size)


def record(tmp_path: Path, data: bytes) -> tuple[
    dict[str, Any], bytes, list[Note], int
]:
    """The stream through a recorder in 4 KiB chunks; (sidecar, file bytes, notes, the bytes
    the scanner was fed)."""
    notes = Notes()
    recorder = Recorder(tmp_path, sinks=[notes])
    handler = recorder(INFO)
    handler.on_start(StreamStarted(bot_id="bot-1", raw={"type": "video_stream_start",
                                                          "bot_id": "bot-1"}))
    stream = handler.stream
    assert stream is not None
    for offset in range(0, len(data), CHUNK):
        handler.on_chunk(MediaChunk(data[offset : offset + CHUNK], offset))
    handler.on_end(StreamEnded(1.0))
    handler.on_disconnect(Disconnected(1000, "", True))
    assert recorder.flush()
    (media,) = tmp_path.rglob("*.mp4")
    doc = json.loads(media.with_suffix(".json").read_text("utf-8"))
    return doc, media.read_bytes(), notes.notes, stream.scanner.offset


def given_up_at(warning: dict[str, str]) -> int:
    """The stream offset a ``malformed_fmp4`` warning names (``at byte N: ...``)."""
    return int(warning["message"].split(":", 1)[0].removeprefix("at byte "))


@pytest.mark.parametrize("make", [random_bytes, flood], ids=["random", "flood"])
def test_not_fmp4_is_recorded_as_plain_bytes_with_one_warning(
    make: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = make(2 * 1024 * 1024)  # 512 chunks
    with caplog.at_level(logging.WARNING, logger="meetstream_live.recorder"):
        doc, recorded, notes, scanned = record(tmp_path, data)
    assert recorded == data
    assert doc["bytes"] == len(data)
    (warning,) = doc["warnings"]
    assert warning["kind"] == "malformed_fmp4"
    assert "recorded as plain bytes" in warning["message"]
    assert "no init segment" in warning["message"]
    assert [(n.kind, n.message) for n in notes] == [(warning["kind"], warning["message"])]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "recorded as plain bytes" in warnings[0].getMessage()
    assert doc["completeness"]["verdict"] == "truncated"
    assert scanned - given_up_at(warning) <= CHUNK  # no chunk after the give-up was scanned


def test_garbage_after_real_media_keeps_the_media_and_goes_plain(
    fmp4_small: Media, tmp_path: Path
) -> None:
    data = fmp4_small.data + flood(DEFAULT_MAX_BOXES * 8 * 4) + random_bytes(300_000)
    doc, recorded, notes, scanned = record(tmp_path, data)
    assert recorded == data
    (warning,) = doc["warnings"]
    assert warning["kind"] == "malformed_fmp4" and "too many boxes" in warning["message"]
    assert "no init segment" not in warning["message"]
    assert len(notes) == 1
    assert scanned - given_up_at(warning) <= CHUNK < len(data) - scanned
    scanner = Fmp4Scanner()
    fragments = [e for e in scanner.feed(fmp4_small.data) if isinstance(e, FragmentComplete)]
    assert doc["completeness"]["fragments"] == len(fragments) > 0
