"""Issue 11 item 3 / issue 13: the finalize sequence killed at each of its steps, then
``recover()`` run as at the next start: every crash point ends as one media file and its
sidecar, consistent (the sidecar's ``bytes`` are the file's, the file ends on a box
boundary), the hook journaled exactly once, the manifest closed, nothing ``.part`` left."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import pytest
from media import Media, decodable_frames, fragment_spans

from meetstream_live import Disconnected, MediaChunk, StreamEnded, StreamStarted
from meetstream_live.adapters import ConnectionInfo
from meetstream_live.adapters.recording import FileSink, Recorder, recover
from meetstream_live.adapters.recording.hooks import Journal
from meetstream_live.adapters.recording.sinks import (
    FragmentStored,
    Part,
    PartClosed,
    PartFinalized,
    Sink,
    SinkEvent,
    SinkSet,
)

from .faults import Crash, FaultyDisk


class Tape(Sink):
    """What the stream model published, to play it again into a file sink."""

    name: ClassVar[str] = "tape"
    runs: ClassVar[Literal["thread", "inline"]] = "inline"
    accepts: ClassVar[tuple[type[SinkEvent], ...]] = tuple(FileSink.accepts)

    def __init__(self) -> None:
        self.events: list[SinkEvent] = []
        self.lock = threading.Lock()

    def handle(self, part: Part, events: Sequence[SinkEvent]) -> None:
        with self.lock:
            self.events.extend(events)


@pytest.fixture(scope="module")
def tape(fmp4_small: Media, tmp_path_factory: pytest.TempPathFactory) -> list[SinkEvent]:
    tape = Tape()
    recorder = Recorder(tmp_path_factory.mktemp("tape"), sinks=[tape])
    handler = recorder(ConnectionInfo("peer", "/", "", (), False))
    handler.on_start(StreamStarted(bot_id="bot", raw={"type": "video_stream_start",
                                                      "bot_id": "bot"}))
    data = fmp4_small.data
    for offset in range(0, len(data), 5000):
        handler.on_chunk(MediaChunk(data[offset : offset + 5000], offset))
    handler.on_end(StreamEnded(2.0))
    handler.on_disconnect(Disconnected(1000, "", True))
    recorder.close()
    return tape.events


def play(root: Path, events: list[SinkEvent], disk: FaultyDisk, journal: Journal) -> FileSink:
    sink = FileSink(root, disk=disk, journal=journal, buffer_size=4096, finalize_threads=0)
    sink.start(SinkSet())
    for event in events:
        sink.handle(event.part, [event])
    return sink


def operations_of_the_end(tmp_path: Path, tape: list[SinkEvent]) -> int:
    """How many mutating file operations the finalizing does (the crash points)."""
    closed = next(i for i, e in enumerate(tape) if isinstance(e, PartClosed))
    root = tmp_path / "count"
    disk = FaultyDisk()
    sink = play(root, tape[:closed], disk, Journal(root, ("command",), disk=disk))
    before = disk.operations
    sink.handle(tape[closed].part, [tape[closed]])
    return disk.operations - before


def test_every_crash_point_of_the_finalizing_is_recovered(
    fmp4_small: Media, tmp_path: Path, tape: list[SinkEvent]
) -> None:
    data = fmp4_small.data
    init_end, spans = fragment_spans(data)
    boundaries = {init_end, *(a + b for a, b in spans), len(data)}
    closed = next(i for i, e in enumerate(tape) if isinstance(e, PartClosed))
    steps = operations_of_the_end(tmp_path, tape)
    assert steps >= 10  # fsync, sidecar, journal, rename, commit, manifest...
    outcomes: set[str] = set()
    for step in range(1, steps + 1):
        root = tmp_path / f"crash-{step}"
        disk = FaultyDisk()
        journal = Journal(root, ("command",), disk=disk)
        sink = play(root, tape[:closed], disk, journal)
        disk.crash_after(step)
        with pytest.raises(Crash):
            sink.handle(tape[closed].part, [tape[closed]])
        crashed_at = disk.log[-1]
        disk.close_all()  # the process is gone
        journal = Journal(root, ("command",))
        recover(root, journal=journal)
        where = f"crash at operation {step} ({crashed_at})"
        files = sorted(p.name for p in (root / "bot").iterdir())
        assert not [f for f in files if f.endswith((".part", ".tmp"))], (where, files)
        (media,) = (root / "bot").glob("*.mp4")
        doc = json.loads(media.with_suffix(".json").read_text())
        assert doc["bytes"] == media.stat().st_size, where
        assert media.stat().st_size in boundaries, where
        assert data.startswith(media.read_bytes()), where
        assert decodable_frames(media.read_bytes()) > 0, where
        entries = journal.entries()
        assert len(entries) == 1, (where, entries)
        entry = json.loads(entries[0].read_text())
        assert entry["path"] == str(media) and entry["sidecar_path"] == str(
            media.with_suffix(".json")), where
        manifest = json.loads(next((root / "bot").glob("*.session.json")).read_text())
        assert manifest["state"] in ("finished", "recovered"), where
        outcomes.add("final" if doc["recovered"] is False else "recovered")
        if doc["recovered"] is False:  # the sidecar was written: kept as the stream ended
            assert doc["end_reason"] == "stream_end" and doc["verdict"] == "complete", where
        # Recovering again changes nothing.
        snapshot = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
        assert recover(root, journal=journal) == []
        assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == snapshot, where
    assert outcomes == {"final", "recovered"}  # both halves of the sequence were crashed in


def test_without_a_crash_the_replayed_part_is_final(
    fmp4_small: Media, tmp_path: Path, tape: list[SinkEvent]
) -> None:
    """The tape itself is sound: played into a file sink, it makes the recording."""
    published: list[SinkEvent] = []

    class Follow(Sink):
        name: ClassVar[str] = "follow"
        runs: ClassVar[Literal["thread", "inline"]] = "inline"

        def handle(self, part: Part, events: Sequence[SinkEvent]) -> None:
            published.extend(events)

    disk = FaultyDisk()
    sink = FileSink(tmp_path, disk=disk, finalize_threads=0)
    follow = SinkSet([Follow()])
    sink.start(follow)
    for event in tape:
        sink.handle(event.part, [event])
    (media,) = tmp_path.rglob("*.mp4")
    assert media.read_bytes() == fmp4_small.data
    assert [type(e) for e in published].count(FragmentStored) == len(
        fragment_spans(fmp4_small.data)[1]) + 1
    assert isinstance(published[-1], PartFinalized)
    assert not disk.paths, "every descriptor closed"
    assert not any(name.endswith(".part") for name in os.listdir(media.parent))
