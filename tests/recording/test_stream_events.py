"""The stream model's events, as a sink sees them (real fMP4 from ffmpeg): what is published,
in which order, with which offsets; and what the file sink publishes after it."""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from media import Media, fragment_spans, rebuild

from meetstream_live import (
    BoxSeen,
    Disconnected,
    Fmp4Scanner,
    FragmentComplete,
    LatencyPing,
    MediaChunk,
    ProtocolWarning,
    StreamEnded,
    StreamStarted,
    WarningKind,
)
from meetstream_live.adapters import Backlog, ConnectionInfo
from meetstream_live.adapters.recording import Recorder
from meetstream_live.adapters.recording.sinks import (
    Chunk,
    FragmentSeen,
    FragmentStored,
    InitSeen,
    Note,
    Part,
    PartAmended,
    PartClosed,
    PartFinalized,
    PartOpened,
    PingSeen,
    Sink,
    SinkEvent,
    StreamPaused,
    StreamResumed,
)

T0 = 1_795_615_502_123


class Collect(Sink):
    """Every event, in the order it was handled (inline: in the publisher's thread)."""

    name: ClassVar[str] = "collect"
    runs: ClassVar[Literal["thread", "inline"]] = "inline"

    def __init__(self) -> None:
        self.events: list[SinkEvent] = []
        self.lock = threading.Lock()

    def handle(self, part: Part, events: Sequence[SinkEvent]) -> None:
        with self.lock:
            self.events.extend(events)

    def of(self, part: Part) -> list[SinkEvent]:
        return [e for e in self.events if e.part is part]

    def parts(self) -> list[Part]:
        return [e.part for e in self.events if isinstance(e, PartOpened)]


def start(bot_id: str = "bot-1") -> StreamStarted:
    return StreamStarted(bot_id=bot_id, raw={"type": "video_stream_start", "bot_id": bot_id})


def send(handler: Any, data: bytes, size: int = 6_000, base: int = 0) -> None:
    for offset in range(0, len(data), size):
        handler.on_chunk(MediaChunk(data[offset : offset + size], base + offset))


def check_offsets(events: list[SinkEvent]) -> bytes:
    """Chunks are contiguous from 0 (after a resume: from the pause's ``upto``); every
    fragment and init segment is published after the chunk that holds its end."""
    data = bytearray()
    for event in events:
        if isinstance(event, Chunk):
            assert event.offset == len(data), (event.offset, len(data))
            data += event.data
        elif isinstance(event, StreamPaused):
            del data[event.upto :]
        elif isinstance(event, FragmentSeen):
            assert event.offset + event.size <= len(data)
        elif isinstance(event, InitSeen):
            assert event.offset + event.segment.size <= len(data)
    return bytes(data)


def test_one_stream(fmp4_small: Media, tmp_path: Path) -> None:
    sink = Collect()
    backlog = Backlog()
    info = ConnectionInfo("peer", "/", "", (), False, backlog=backlog)
    recorder = Recorder(tmp_path, sinks=[sink])
    handler = recorder(info)
    handler.on_start(start())
    handler.on_warning(ProtocolWarning(WarningKind.UNKNOWN_TYPE, "x"))
    send(handler, fmp4_small.data)
    handler.on_ping(LatencyPing(7, T0 - 25, T0, "bot-1"))
    handler.on_end(StreamEnded(2.0))
    handler.on_disconnect(Disconnected(1000, "", True))
    assert recorder.flush()
    (part,) = sink.parts()
    events = sink.of(part)
    kinds = [type(e) for e in events]
    assert kinds[0] is PartOpened and kinds[-1] is PartFinalized
    assert kinds.index(PartClosed) < kinds.index(PartFinalized)
    model = [e for e in events if not isinstance(e, (FragmentStored, PartFinalized))]
    assert check_offsets(model) == fmp4_small.data
    assert all(e.backlog is backlog for e in events if isinstance(e, Chunk))
    assert backlog.bytes == 0  # the file sink has written them all
    (init,) = [e for e in events if isinstance(e, InitSeen)]
    assert init.offset == 0
    fragments = [e for e in events if isinstance(e, FragmentSeen)]
    _, spans = fragment_spans(fmp4_small.data)
    assert [(e.offset, e.size) for e in fragments] == spans
    assert all(e.keyframe is True for e in fragments)  # a fragment per keyframe
    assert sum(e.seconds for e in fragments) == pytest.approx(fmp4_small.duration_s, abs=0.05)
    (ping,) = [e for e in events if isinstance(e, PingSeen)]
    assert (ping.seq, ping.latency_ms) == (7, 25.0)
    notes = [e for e in events if isinstance(e, Note)]
    assert [(n.source, n.kind) for n in notes] == [("protocol", "unknown_type")]
    (closed,) = [e for e in events if isinstance(e, PartClosed)]
    assert closed.summary["end_reason"] == "stream_end" and closed.summary["pings"] == 1
    assert closed.summary["received_bytes"] == len(fmp4_small.data)
    # The file sink's events: where each box is in the file (here: the part, byte for byte).
    stored = [e for e in events if isinstance(e, FragmentStored)]
    assert [(e.file_offset, e.size) for e in stored] == [(0, spans[0][0]), *spans]
    assert stored[0].fragment is None and all(e.fragment is not None for e in stored[1:])
    (final,) = [e for e in events if isinstance(e, PartFinalized)]
    assert final.recording.path.read_bytes() == fmp4_small.data
    assert final.recording.sidecar["sinks"]["collect"]["state"] == "ok"
    recorder.close()


def test_rotation_parts_start_with_the_init_segment(fmp4_medium: Media, tmp_path: Path) -> None:
    sink = Collect()
    recorder = Recorder(tmp_path, sinks=[sink], rotate_every=1.0)
    handler = recorder(ConnectionInfo("peer", "/", "", (), False))
    handler.on_start(start())
    send(handler, fmp4_medium.data, size=2_500)
    handler.on_end(StreamEnded(6.0))
    handler.on_disconnect(Disconnected(1000, "", True))
    assert recorder.flush()
    parts = sink.parts()
    assert len(parts) >= 3 and [p.number for p in parts] == list(range(1, len(parts) + 1))
    assert [p.why for p in parts] == ["start"] + ["rotated"] * (len(parts) - 1)
    init_size = fragment_spans(fmp4_medium.data)[0]
    init = fmp4_medium.data[:init_size]
    body = b""
    for number, part in enumerate(parts):
        events = [e for e in sink.of(part) if not isinstance(e, (FragmentStored, PartFinalized))]
        data = check_offsets(events)
        assert data.startswith(init)
        body += data if number == 0 else data[init_size:]
        closed = events[-1]
        assert isinstance(closed, PartClosed)
        assert closed.summary["end_reason"] == ("rotated" if part is not parts[-1] else
                                                "stream_end")
    assert body == fmp4_medium.data
    for before, after in itertools.pairwise(parts):  # closed before the next opens
        closed_at = next(i for i, e in enumerate(sink.events)
                         if isinstance(e, PartClosed) and e.part is before)
        opened_at = next(i for i, e in enumerate(sink.events)
                         if isinstance(e, PartOpened) and e.part is after)
        assert closed_at < opened_at
    recorder.close()


def test_a_reconnect_pauses_and_resumes_the_part(fmp4_small: Media, tmp_path: Path) -> None:
    sink = Collect()
    recorder = Recorder(tmp_path, sinks=[sink], reconnect_grace=30)
    init_end, spans = fragment_spans(fmp4_small.data)
    first = recorder(ConnectionInfo("a", "/", "", (), False))
    first.on_start(start())
    send(first, fmp4_small.data[: spans[2][0] + 3000])  # dropped in fragment 2
    first.on_disconnect(Disconnected(1006, "", False))
    assert recorder.flush()
    (part,) = sink.parts()
    (paused,) = [e for e in sink.of(part) if isinstance(e, StreamPaused)]
    assert paused.upto == spans[2][0] and paused.grace == 30
    # The file ends at the last complete fragment while the part waits.
    (waiting,) = tmp_path.rglob("*.mp4.part")
    assert waiting.read_bytes() == fmp4_small.data[: spans[2][0]]
    info = ConnectionInfo("b", "/", "", (), False)
    second = recorder(info)
    second.on_start(start())
    rest = rebuild(fmp4_small.data, list(range(2, len(spans))))
    send(second, fmp4_small.data[:init_end] + rest[init_end:])
    second.on_end(StreamEnded(2.0))
    second.on_disconnect(Disconnected(1000, "", True))
    assert recorder.flush()
    assert sink.parts() == [part]  # the same part goes on
    events = [e for e in sink.of(part) if not isinstance(e, (FragmentStored, PartFinalized))]
    (resumed,) = [e for e in events if isinstance(e, StreamResumed)]
    assert resumed.info is info
    after = events[events.index(resumed) + 1]
    assert isinstance(after, Chunk) and after.offset == paused.upto
    assert check_offsets(events) == rebuild(fmp4_small.data, list(range(len(spans))))
    (closed,) = [e for e in events if isinstance(e, PartClosed)]
    assert closed.summary["connections"] == 2
    assert closed.summary["discarded_tail_bytes"] == 3000
    recorder.close()


def test_a_superseded_part_is_amended_with_what_came_after(
    fmp4_small: Media, tmp_path: Path
) -> None:
    sink = Collect()
    recorder = Recorder(tmp_path, sinks=[sink])
    closes: list[tuple[int, str]] = []
    old_info = dataclasses.replace(ConnectionInfo("a", "/", "", (), False),
                                   close=lambda code, reason: closes.append((code, reason)))
    old = recorder(old_info)
    old.on_start(start())
    send(old, fmp4_small.data[:50_000])
    new = recorder(ConnectionInfo("b", "/", "", (), False))
    new.on_start(start())
    assert closes == [(1000, "superseded by a newer connection")]
    send(old, fmp4_small.data[50_000:], base=50_000)
    old.on_disconnect(Disconnected(1006, "", False))
    new.on_end(StreamEnded(None))
    new.on_disconnect(Disconnected(1000, "", True))
    assert recorder.flush()
    first, second = sink.parts()
    assert second.why == "superseded"
    kinds = [type(e) for e in sink.of(first)]
    assert kinds.index(PartClosed) < kinds.index(PartAmended)
    (amended,) = [e for e in sink.of(first) if isinstance(e, PartAmended)]
    assert amended.fields == {"ignored_bytes": len(fmp4_small.data) - 50_000}
    recorder.close()


def test_keyframes_come_from_the_video_track(fmp4_small: Media, tmp_path: Path) -> None:
    """``FragmentSeen.keyframe`` is the video track's ``starts_with_sync``: checked against
    the scanner's own reading of the stream."""
    sink = Collect()
    recorder = Recorder(tmp_path, sinks=[sink])
    handler = recorder(ConnectionInfo("peer", "/", "", (), False))
    handler.on_start(start())
    send(handler, fmp4_small.data)
    handler.on_end(StreamEnded(None))
    assert recorder.flush()
    scanner = Fmp4Scanner()
    frags = [e for e in scanner.feed(fmp4_small.data) if isinstance(e, FragmentComplete)]
    video = next(t.track_id for t in scanner.tracks if t.handler == "vide")
    expected = [next(r.starts_with_sync for r in f.tracks if r.track_id == video) for f in frags]
    seen = [e.keyframe for e in sink.events if isinstance(e, FragmentSeen)]
    assert seen == expected and expected[0] is True
    recorder.close()


@pytest.mark.parametrize("into", [1, 6, 8, 15, 31])
def test_a_box_header_cut_by_a_chunk_goes_to_the_part_it_starts(
    tmp_path: Path, into: int
) -> None:
    """A new init segment (or a rotation cut) whose box header is split between two chunks:
    the first bytes of the header must not stay in the previous part."""
    from media import make_resolution_change

    _, _, joined = make_resolution_change(tmp_path / "media")
    scanner = Fmp4Scanner()
    at = [e.offset for e in scanner.feed(joined)
          if isinstance(e, BoxSeen) and e.type == "ftyp"][1]  # the second init segment
    recorder = Recorder(tmp_path / "out")
    handler = recorder(ConnectionInfo("peer", "/", "", (), False))
    handler.on_start(start())
    handler.on_chunk(MediaChunk(joined[: at + into], 0))
    handler.on_chunk(MediaChunk(joined[at + into :], at + into))
    handler.on_end(StreamEnded(2.0))
    handler.on_disconnect(Disconnected(1000, "", True))
    recorder.close()
    first, second = sorted((tmp_path / "out").rglob("*.mp4"))
    assert first.read_bytes() == joined[:at] and second.read_bytes() == joined[at:]


@pytest.mark.parametrize("into", [3, 8, 20])
def test_a_rotation_cut_inside_a_moof_header(fmp4_medium: Media, tmp_path: Path,
                                             into: int) -> None:
    _, spans = fragment_spans(fmp4_medium.data)
    data = fmp4_medium.data
    recorder = Recorder(tmp_path, rotate_every=1.0)
    handler = recorder(ConnectionInfo("peer", "/", "", (), False))
    handler.on_start(start())
    cuts = sorted({0, *(a + into for a, _ in spans[1:]), len(data)})
    for lo, hi in itertools.pairwise(cuts):
        handler.on_chunk(MediaChunk(data[lo:hi], lo))
    handler.on_end(StreamEnded(6.0))
    handler.on_disconnect(Disconnected(1000, "", True))
    recorder.close()
    parts = sorted(tmp_path.rglob("*.mp4"))
    init = data[: spans[0][0]]
    assert len(parts) >= 3
    body = b"".join(p.read_bytes()[len(init) :] for p in parts[1:])
    assert parts[0].read_bytes() + body == data
    for part in parts:
        assert part.read_bytes().startswith(init)
        assert part.read_bytes()[len(init) + 4 : len(init) + 8] in (b"moof", b"")


def _record_cut(root: Path, data: bytes, cuts: list[int], **options: Any) -> list[bytes]:
    recorder = Recorder(root, **options)
    handler = recorder(ConnectionInfo("peer", "/", "", (), False))
    handler.on_start(start())
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for lo, hi in itertools.pairwise(points):
        handler.on_chunk(MediaChunk(data[lo:hi], lo))
    handler.on_end(StreamEnded(6.0))
    handler.on_disconnect(Disconnected(1000, "", True))
    recorder.close()
    return [p.read_bytes() for p in sorted(root.rglob("*.mp4"))]


@given(cuts=st.lists(st.integers(0, 10**7), max_size=40))
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_files_do_not_depend_on_where_chunks_are_cut(
    fmp4_medium: Media, tmp_path_factory: pytest.TempPathFactory, cuts: list[int]
) -> None:
    """Split invariance: whatever the chunking, rotation makes the same parts, byte for
    byte (each after the first starting with the init segment)."""
    data = fmp4_medium.data
    whole = _record_cut(tmp_path_factory.mktemp("whole"), data, [], rotate_every=1.0)
    cut = _record_cut(tmp_path_factory.mktemp("cut"), data, cuts, rotate_every=1.0)
    assert cut == whole and len(whole) >= 3
