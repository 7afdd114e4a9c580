"""The recorder: files, sidecars, names, rotation and crash recovery, on real fMP4 media.

Most tests drive a :class:`RecordingHandler` directly with core events (what any adapter
does); the first ones go through the asyncio server with a simulated bot, end to end.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from media import Media, decodable_frames, probe
from prometheus_client.parser import text_string_to_metric_families

from meetstream_live import (
    Disconnected,
    Fmp4Scanner,
    FragmentComplete,
    InitSegment,
    LatencyPing,
    MediaChunk,
    ProtocolWarning,
    ServerConfig,
    StreamEnded,
    StreamStarted,
    WarningKind,
)
from meetstream_live.adapters import ConnectionInfo, ServerOptions
from meetstream_live.adapters.asyncio import serve
from meetstream_live.adapters.cli.simulate import plan_media, simulate
from meetstream_live.adapters.recording import (
    FinishedRecording,
    Recorder,
    RecordingHandler,
    recover,
)
from meetstream_live.adapters.recording.metrics import HTTP_PATHS, Metrics
from meetstream_live.adapters.recording.names import MAX_NAME_BYTES, MAX_NAME_CHARS, safe_name
from recording.faults import FaultyDisk

INFO = ConnectionInfo("127.0.0.1:5555", "/", "", (), False)
#: 2026-11-25 14:05:02.123 UTC
T0 = 1_795_615_502_123
STAMP = "20261125T140502Z"


class Clock:
    """A settable wall clock in Unix ms."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def start(bot_id: str | None = "bot-123", **fields: Any) -> StreamStarted:
    raw = {"type": "video_stream_start", "bot_id": bot_id, **fields}
    return StreamStarted(bot_id=bot_id, raw=raw, **fields)


def chunks(data: bytes, size: int = 10_000) -> Iterator[MediaChunk]:
    for offset in range(0, len(data), size):
        yield MediaChunk(data[offset : offset + size], offset)


def record(
    handler: RecordingHandler,
    data: bytes,
    *,
    bot_id: str | None = "bot-123",
    end: float | None = 2.0,
    size: int = 10_000,
    **fields: Any,
) -> None:
    """One whole stream through ``handler``: start, chunks, end (or not), disconnect."""
    handler.on_start(start(bot_id, **fields))
    for chunk in chunks(data, size):
        handler.on_chunk(chunk)
    if end is not None:
        handler.on_end(StreamEnded(end))
    handler.on_disconnect(Disconnected(1000 if end is not None else 1006, "", end is not None))
    assert handler.recorder.flush()  # the file sink writes in its own threads


def crash(handler: RecordingHandler) -> None:
    """The process dies: the file the file sink holds open is closed, nothing else happens
    (the recorder is abandoned as it is)."""
    assert handler.recorder.flush()
    stream = handler.stream
    assert stream is not None and stream.part is not None
    held = handler.recorder.files.part_file(stream.part.part)
    assert held is not None and held.fd is not None
    os.close(held.fd)


def fragments(data: bytes) -> list[FragmentComplete]:
    scanner = Fmp4Scanner()
    return [e for e in [*scanner.feed(data), *scanner.eof()] if isinstance(e, FragmentComplete)]


def init_end(data: bytes) -> int:
    scanner = Fmp4Scanner()
    (init,) = [e for e in scanner.feed(data) if isinstance(e, InitSegment)]
    return init.offset + init.size


def files(root: Path) -> list[str]:
    """Media, sidecars and .part files (not the session manifests, tested on their own)."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.endswith(".session.json")
    )


def sidecar(path: Path) -> dict[str, Any]:
    document = json.loads(path.with_suffix(".json").read_text("utf-8"))
    assert isinstance(document, dict)
    return document


# ------------------------------------------------------------------------ end to end


async def test_recording_through_the_server_is_byte_identical(
    fmp4_medium: Media, tmp_path: Path
) -> None:
    metrics = Metrics()
    finished: list[FinishedRecording] = []
    recorder = Recorder(tmp_path, metrics=metrics, on_finish=finished.append)
    options = ServerOptions(
        config=ServerConfig(http_paths=HTTP_PATHS),
        observer=metrics.observe,
        http_handler=metrics.http_handler,
    )
    plan = plan_media(fmp4_medium.data)
    async with serve(recorder, "127.0.0.1", 0, options) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        result = await asyncio.wait_for(
            simulate(url, plan, bot_id="bot-e2e", chunk_size=7_000, ping_interval=0.0), 20
        )
        assert result.ok, result
        await until(lambda: bool(finished))
        metrics_text = await asyncio.wait_for(http_get(server.port, "/metrics"), 5)
        health = await asyncio.wait_for(http_get(server.port, "/healthz"), 5)

    (recording,) = finished
    assert recording.path.parent == tmp_path / "bot-e2e"
    assert recording.path.name.endswith("Z.mp4")
    assert recording.path.read_bytes() == fmp4_medium.data
    measured = probe(recording.path)
    assert measured.video_frames == fmp4_medium.video_frames
    assert measured.duration_s == pytest.approx(fmp4_medium.duration_s, abs=1e-6)

    doc = sidecar(recording.path)
    assert doc == recording.sidecar
    assert doc["bot_id"] == "bot-e2e"
    assert doc["start_message"]["type"] == "video_stream_start"
    assert doc["start_message"]["codec"] == "h264"
    assert doc["end"] == "stream_end"
    assert doc["clean"] is True
    assert doc["bytes"] == len(fmp4_medium.data)
    assert doc["fragments"] == len(fragments(fmp4_medium.data)) > 5
    assert doc["media_duration_seconds"] == pytest.approx(fmp4_medium.duration_s, abs=0.05)
    assert doc["reported_duration_seconds"] == pytest.approx(plan.duration)
    assert doc["pings"] == result.bots[0].pings >= 2
    latency = doc["latency_ms"]
    assert latency["min"] <= latency["median"] <= latency["max"] < 5_000
    assert doc["warnings"] == []
    assert doc["recovered"] is False
    assert doc["started_at_ms"] <= doc["ended_at_ms"]
    assert not list(tmp_path.rglob("*.part"))

    assert health == (200, b"ok\n")
    status, body = metrics_text
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("meetstream_live_media_received_bytes_total", ())] == len(fmp4_medium.data)
    assert samples[("meetstream_live_recorded_bytes_total", ())] == len(fmp4_medium.data)
    assert samples[("meetstream_live_recordings_finished_total", (("end", "clean"),))] == 1
    assert samples[("meetstream_live_recordings_active", ())] == 0
    assert samples[("meetstream_live_latency_pings_total", ())] == doc["pings"]
    assert samples[("meetstream_live_ping_one_way_latency_seconds_count", ())] == doc["pings"]
    assert samples[("meetstream_live_websocket_connections_total", ())] == 1
    assert samples[("meetstream_live_websocket_disconnects_total", (("code", "1000"),))] == 1


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for the handler threads (the server's shutdown does not wait for them yet)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_unclean_disconnect_through_the_server(fmp4_small: Media, tmp_path: Path) -> None:
    from meetstream_live.adapters.asyncio import AsyncioBot

    finished: list[FinishedRecording] = []
    recorder = Recorder(tmp_path, on_finish=finished.append)
    async with serve(recorder, "127.0.0.1", 0) as server:
        bot = await AsyncioBot.connect(f"ws://127.0.0.1:{server.port}/", timeout=5)
        await bot.send_start("vanishing")
        half = len(fmp4_small.data) // 2
        await bot.send_chunk(fmp4_small.data[:half])
        await bot.send_ping(1)
        await asyncio.wait_for(bot.next_event(), 5)  # the pong: everything before it arrived
        bot.abort()
        await until(lambda: bool(finished))
    (recording,) = finished
    assert recording.path.read_bytes() == fmp4_small.data[:half]
    doc = recording.sidecar
    assert doc["clean"] is False
    assert doc["end"] == "disconnect"
    assert doc["close_code"] == 1006
    assert doc["pings"] == 1


# ------------------------------------------------------------------------ files and sidecars


def test_one_stream_one_file_and_sidecar(fmp4_small: Media, tmp_path: Path) -> None:
    clock = Clock()
    recorder = Recorder(tmp_path / "out", clock=clock)
    handler = recorder(INFO)
    handler.on_start(start("bot-1", speaker_name="Ada", codec="h264"))
    assert recorder.flush()
    assert files(tmp_path / "out") == [
        f"bot-1/Ada/{STAMP}.json.part",
        f"bot-1/Ada/{STAMP}.mp4.part",
    ]
    handler.on_ping(LatencyPing(1, T0 - 30, T0, "bot-1"))
    handler.on_ping(LatencyPing(2, T0 - 10, T0, "bot-1"))
    handler.on_ping(LatencyPing(3, T0 - 20, T0, "bot-1"))
    handler.on_ping(LatencyPing(4, None, T0, "bot-1"))
    for chunk in chunks(fmp4_small.data):
        handler.on_chunk(chunk)
    handler.on_warning(ProtocolWarning(WarningKind.UNKNOWN_TYPE, "unknown message type 'x'"))
    clock.now += 2500
    handler.on_end(StreamEnded(2.5))
    handler.on_disconnect(Disconnected(1000, "", True))
    assert recorder.flush()

    assert files(tmp_path / "out") == [f"bot-1/Ada/{STAMP}.json", f"bot-1/Ada/{STAMP}.mp4"]
    path = tmp_path / "out" / "bot-1" / "Ada" / f"{STAMP}.mp4"
    assert path.read_bytes() == fmp4_small.data
    doc = sidecar(path)
    assert doc["file"] == path.name
    assert doc["speaker_name"] == "Ada"
    assert doc["started_at"] == "2026-11-25T14:05:02.123Z"
    assert doc["ended_at"] == "2026-11-25T14:05:04.623Z"
    assert doc["start_message"] == {
        "type": "video_stream_start", "bot_id": "bot-1", "speaker_name": "Ada", "codec": "h264"
    }
    assert doc["pings"] == 4
    assert doc["latency_ms"] == {"min": 10, "median": 20, "max": 30}
    assert doc["reported_duration_seconds"] == 2.5
    assert doc["media_duration_seconds"] == pytest.approx(fmp4_small.duration_s, abs=0.05)
    assert doc["warnings"] == [
        {"source": "protocol", "kind": "unknown_type", "message": "unknown message type 'x'"}
    ]
    assert doc["close_code"] is None
    assert doc["piece"] is None


def test_writes_are_batched(
    fmp4_small: Media, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: Any) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    handler = Recorder(tmp_path, buffer_size=1 << 30)(INFO)
    handler.on_start(start())
    assert handler.recorder.flush()  # the stub and the manifest are written
    monkeypatch.setattr(os, "write", counting_write)
    for chunk in chunks(fmp4_small.data, 500):  # hundreds of small chunks
        handler.on_chunk(chunk)
    handler.on_end(StreamEnded(None))
    assert handler.recorder.flush()
    monkeypatch.undo()
    # One write per complete fragment (so a crash loses at most one), never one per chunk.
    # (+ the sidecar and the session manifest, written at the end)
    assert len(writes) <= len(fragments(fmp4_small.data)) + 2 + 2
    assert sum(writes) >= len(fmp4_small.data)


def test_collisions_never_overwrite(fmp4_small: Media, tmp_path: Path) -> None:
    clock = Clock()
    recorder = Recorder(tmp_path, clock=clock)
    directory = tmp_path / "bot-123"
    directory.mkdir()
    (directory / f"{STAMP}.mp4").write_bytes(b"precious")
    (directory / f"{STAMP}_1.json").write_bytes(b"{}")
    # Three connections of the same bot in the same second (a reconnect, twice).
    for _ in range(3):
        record(recorder(INFO), fmp4_small.data)
    assert (directory / f"{STAMP}.mp4").read_bytes() == b"precious"
    assert (directory / f"{STAMP}_1.json").read_bytes() == b"{}"
    assert files(tmp_path) == [
        f"bot-123/{STAMP}.mp4",
        f"bot-123/{STAMP}_1.json",
        f"bot-123/{STAMP}_2.json",
        f"bot-123/{STAMP}_2.mp4",
        f"bot-123/{STAMP}_3.json",
        f"bot-123/{STAMP}_3.mp4",
        f"bot-123/{STAMP}_4.json",
        f"bot-123/{STAMP}_4.mp4",
    ]
    for n in (2, 3, 4):
        assert (directory / f"{STAMP}_{n}.mp4").read_bytes() == fmp4_small.data


def test_several_streams_on_one_connection(fmp4_small: Media, tmp_path: Path) -> None:
    clock = Clock()
    handler = Recorder(tmp_path, clock=clock)(INFO)
    for n in range(2):
        handler.on_start(start())
        for chunk in chunks(fmp4_small.data):
            handler.on_chunk(chunk)
        handler.on_end(StreamEnded(1.0 + n))
        clock.now += 1000
    handler.on_disconnect(Disconnected(1000, "", True))
    assert handler.recorder.flush()
    first = tmp_path / "bot-123" / f"{STAMP}.mp4"
    second = tmp_path / "bot-123" / "20261125T140503Z.mp4"
    assert first.read_bytes() == second.read_bytes() == fmp4_small.data
    assert sidecar(second)["reported_duration_seconds"] == 2.0


HOSTILE = [
    "../../etc/passwd",
    "/abs/olute",
    "..",
    ".",
    "...",
    "",
    "a\x00b",
    "\x00",
    "new\nline\ttab\x7f",
    "x" * 10_240,
    "é" * 300,
    "🎥" * 100,
    "e\u0301t\u0301e\u0301",
    "C:\\Windows\\system32",
    "nul",
    "CON.txt",
    "\u202eevil\u200b",
    "\ud800lone surrogate",
    " .hidden. ",
]


@pytest.mark.parametrize("bot_id", HOSTILE)
def test_hostile_bot_ids_stay_under_the_output_dir(
    bot_id: str, fmp4_small: Media, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    finished: list[FinishedRecording] = []
    recorder = Recorder(out, on_finish=finished.append)
    record(recorder(INFO), fmp4_small.data[:5000], bot_id=bot_id, speaker_id=bot_id)
    (recording,) = finished
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    root = out.resolve()
    for path in out.rglob("*"):
        assert root in path.resolve().parents
    relative = recording.path.relative_to(out)
    assert len(relative.parts) == (3 if bot_id else 2)  # bot / speaker (if any) / file
    for part in relative.parts[:-1]:
        assert part not in ("", ".", "..")
        assert "/" not in part and "\\" not in part and "\x00" not in part
        assert len(part) <= MAX_NAME_CHARS
        assert len(part.encode("utf-8")) <= MAX_NAME_BYTES
        assert all(ch.isprintable() for ch in part)
    assert recording.path.read_bytes() == fmp4_small.data[:5000]
    assert recording.sidecar["bot_id"] == bot_id  # the sidecar keeps the real value


def test_safe_name() -> None:
    assert safe_name("bot-123") == "bot-123"
    assert safe_name("../../etc/passwd") == "_.._etc_passwd"
    assert safe_name("/abs") == "_abs"
    assert safe_name("..") == safe_name("") == safe_name(None) == safe_name(42) == "unknown"
    assert safe_name("a\x00b\nc") == "abc"
    assert safe_name("e\u0301") == "\u00e9"  # NFC
    assert safe_name("Zoë Müller") == "Zoë Müller"
    assert safe_name("con") == "_con"
    assert safe_name("x" * 500) == "x" * MAX_NAME_CHARS
    assert len(safe_name("🎥" * 100).encode()) <= MAX_NAME_BYTES


def test_bytes_without_a_stream_go_to_unknown(fmp4_small: Media, tmp_path: Path) -> None:
    handler = Recorder(tmp_path, clock=Clock())(INFO)
    handler.on_warning(ProtocolWarning(WarningKind.BINARY_OUTSIDE_STREAM, "early"))
    for chunk in chunks(fmp4_small.data[:30_000]):
        handler.on_chunk(chunk)
    handler.on_disconnect(Disconnected(1000, "", False))
    assert handler.recorder.flush()
    path = tmp_path / "unknown" / f"{STAMP}.mp4"
    assert path.read_bytes() == fmp4_small.data[:30_000]
    doc = sidecar(path)
    assert doc["bot_id"] is None
    assert doc["start_message"] is None
    assert doc["clean"] is False
    assert doc["end"] == "disconnect"
    assert doc["close_code"] == 1000
    assert "no_stream_start" in [w["kind"] for w in doc["warnings"]]


def test_stream_without_init_segment_is_flagged(
    fmp4_small: Media, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = fmp4_small.data[init_end(fmp4_small.data) :]
    handler = Recorder(tmp_path, clock=Clock())(INFO)
    record(handler, data)
    doc = sidecar(tmp_path / "bot-123" / f"{STAMP}.mp4")
    kinds = [w["kind"] for w in doc["warnings"]]
    assert kinds[0] == "no_init_segment"
    assert "'moof'" in doc["warnings"][0]["message"]
    assert "does not start with ftyp+moov" in caplog.text


def test_garbage_is_recorded_and_flagged(tmp_path: Path) -> None:
    handler = Recorder(tmp_path, clock=Clock())(INFO)
    record(handler, b"\x00\x00\x00\x03junk" * 10)
    doc = sidecar(tmp_path / "bot-123" / f"{STAMP}.mp4")
    assert doc["bytes"] == 80
    assert "malformed_fmp4" in [w["kind"] for w in doc["warnings"]]


def test_warnings_are_bounded(tmp_path: Path) -> None:
    handler = Recorder(tmp_path, clock=Clock())(INFO)
    handler.on_start(start())
    for _ in range(1000):
        handler.on_warning(ProtocolWarning(WarningKind.INVALID_JSON, "not JSON"))
    handler.on_end(StreamEnded(None))
    assert handler.recorder.flush()
    doc = sidecar(tmp_path / "bot-123" / f"{STAMP}.mp4")
    assert len(doc["warnings"]) == 100
    assert doc["warnings_dropped"] == 900


def test_a_full_disk_cuts_the_part_and_the_stream_goes_on(
    fmp4_small: Media, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13: a write meets ENOSPC mid-stream. The handler never raises (the connection
    stays open), the file is cut back to its last complete fragment, and once the disk is
    back the part is finalized with a sidecar saying what was lost."""
    metrics = Metrics()
    disk = FaultyDisk()
    handler = Recorder(tmp_path, clock=Clock(), metrics=metrics, buffer_size=1, disk=disk)(INFO)
    handler.dispatch([start()])
    frags = fragments(fmp4_small.data)
    half = frags[2].offset + frags[2].size // 2  # in the middle of the third fragment
    handler.dispatch(list(chunks(fmp4_small.data[:half])))
    assert handler.recorder.flush()
    disk.fail("media_write", errno.ENOSPC)  # and statvfs says 0 bytes free
    handler.dispatch([MediaChunk(fmp4_small.data[half:], half)])  # does not raise
    handler.dispatch([LatencyPing(1, T0, T0, "bot-123")])
    assert handler.recorder.flush()
    disk.heal()  # the disk is back, but no boundary follows: the rest of the stream is lost
    handler.dispatch([Disconnected(1006, "", False)])
    assert handler.recorder.flush()
    assert metrics.errors.value("disk") >= 1
    assert metrics.disk_errors.value("ENOSPC") >= 1
    assert metrics.streams_active.value() == 0
    assert files(tmp_path) == [f"bot-123/{STAMP}.json", f"bot-123/{STAMP}.mp4"]
    path = tmp_path / "bot-123" / f"{STAMP}.mp4"
    good = frags[1].offset + frags[1].size  # the last fragment complete before the failure
    assert path.read_bytes() == fmp4_small.data[:good]
    doc = sidecar(path)
    assert doc["bytes"] == good and doc["received_bytes"] == len(fmp4_small.data)
    assert doc["lost_bytes"] == len(fmp4_small.data) - good
    assert doc["lost_fragments"] == len(frags) - 2
    (hole,) = doc["holes"]
    assert hole["part_offset"] == good and hole["reason"] == "ENOSPC"
    assert hole["resumed_at"] is None  # the stream ended before the disk took writes again
    assert doc["verdict"] == "truncated" and doc["pings"] == 1
    assert "disk_full" in [w["kind"] for w in doc["warnings"]]
    assert decodable_frames(path.read_bytes()) > 0


def test_a_disk_that_never_comes_back_leaves_what_recover_finishes(
    fmp4_small: Media, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk stays read-only until the recorder closes: the part cannot be finalized, its
    .part files stay, and recover() at the next start finishes them consistently."""
    metrics = Metrics()
    disk = FaultyDisk()
    recorder = Recorder(tmp_path, clock=Clock(), metrics=metrics, buffer_size=1, disk=disk)
    handler = recorder(INFO)
    handler.dispatch([start()])
    half = len(fmp4_small.data) // 2
    handler.dispatch(list(chunks(fmp4_small.data[:half])))
    assert recorder.flush()
    disk.fail_all(errno.EROFS)
    handler.dispatch([MediaChunk(fmp4_small.data[half:], half)])
    handler.dispatch([StreamEnded(2.0), Disconnected(1000, "", True)])
    recorder.close()
    assert metrics.disk_errors.value("EROFS") >= 2
    assert metrics.finalize_pending.value() == 1
    assert files(tmp_path) == [f"bot-123/{STAMP}.json.part", f"bot-123/{STAMP}.mp4.part"]
    (recovered,) = recover(tmp_path)
    assert recovered.sidecar["recovered"] is True
    assert recovered.sidecar["verdict"] == "truncated"
    assert recovered.sidecar["bytes"] == recovered.path.stat().st_size
    assert decodable_frames(recovered.path.read_bytes()) > 0
    assert files(tmp_path) == [f"bot-123/{STAMP}.json", f"bot-123/{STAMP}.mp4"]


# ------------------------------------------------------------------------ rotation


def test_rotation_pieces_play_alone_and_hold_every_frame(
    fmp4_medium: Media, tmp_path: Path
) -> None:
    finished: list[FinishedRecording] = []
    recorder = Recorder(tmp_path, rotate_every=1.0, clock=Clock(), on_finish=finished.append)
    record(recorder(INFO), fmp4_medium.data, end=6.0, size=3000)
    names = [f.path.name for f in finished]
    assert len(names) >= 3
    assert names == [f"{STAMP}_part{n:03d}.mp4" for n in range(1, len(names) + 1)]
    init = fmp4_medium.data[: init_end(fmp4_medium.data)]
    total = 0
    for recording in finished:
        data = recording.path.read_bytes()
        assert data.startswith(init)
        frames = probe(recording.path).video_frames
        assert frames > 0
        total += frames
        doc = sidecar(recording.path)
        assert doc["media_duration_seconds"] >= 1.0 or recording is finished[-1]
    assert total == fmp4_medium.video_frames
    # Without the copies of the init segment, the pieces are the stream, byte for byte.
    body = b"".join(f.path.read_bytes()[len(init) :] for f in finished)
    assert init + body == fmp4_medium.data
    assert [f.sidecar["end"] for f in finished] == ["rotated"] * (len(names) - 1) + [
        "stream_end"
    ]
    assert [f.sidecar["piece"] for f in finished] == list(range(1, len(names) + 1))
    assert finished[-1].sidecar["reported_duration_seconds"] == 6.0
    assert sum(f.sidecar["fragments"] for f in finished) == len(fragments(fmp4_medium.data))


def test_rotation_numbers_the_stream_before_the_piece(fmp4_small: Media, tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, rotate_every=60.0, clock=Clock())
    record(recorder(INFO), fmp4_small.data)
    record(recorder(INFO), fmp4_small.data)
    assert files(tmp_path) == [
        f"bot-123/{STAMP}_1_part001.json",
        f"bot-123/{STAMP}_1_part001.mp4",
        f"bot-123/{STAMP}_part001.json",
        f"bot-123/{STAMP}_part001.mp4",
    ]


# ------------------------------------------------------------------------ recovery


def crash_midway(root: Path, data: bytes, cut: int) -> Path:
    """A stream whose process died after ``cut`` bytes: its .part files stay behind."""
    handler = Recorder(root, clock=Clock(), buffer_size=1)(INFO)
    handler.on_start(start("crashed", codec="h264"))
    for chunk in chunks(data[:cut], 4096):
        handler.on_chunk(chunk)
    crash(handler)  # the process is gone; nothing else happens
    return root / "crashed" / f"{STAMP}.mp4.part"


def test_recover_cuts_back_to_the_last_complete_fragment(
    fmp4_medium: Media, tmp_path: Path
) -> None:
    frags = fragments(fmp4_medium.data)
    middle = frags[4].offset + frags[4].size // 2  # in the middle of the fifth fragment
    part = crash_midway(tmp_path, fmp4_medium.data, middle)
    assert part.stat().st_size == middle

    (recovered,) = recover(tmp_path)
    good_end = frags[3].offset + frags[3].size
    assert recovered.path == part.with_name(f"{STAMP}.mp4")
    assert recovered.path.read_bytes() == fmp4_medium.data[:good_end]
    assert not list(tmp_path.rglob("*.part"))
    assert decodable_frames(recovered.path.read_bytes()) == (
        decodable_frames(fmp4_medium.data[:good_end])
    ) > 0
    doc = sidecar(recovered.path)
    assert doc == recovered.sidecar
    assert doc["recovered"] is True
    assert doc["clean"] is False
    assert doc["end"] == "crash"
    assert doc["fragments"] == 4
    assert doc["bytes"] == good_end
    assert doc["recovered_cut_bytes"] == middle - good_end
    assert doc["start_message"]["codec"] == "h264"  # kept from the .json.part
    assert doc["bot_id"] == "crashed"
    assert recover(tmp_path) == []  # nothing left to do


def test_recover_without_sidecar_or_fragments(fmp4_small: Media, tmp_path: Path) -> None:
    directory = tmp_path / "somebot"
    directory.mkdir()
    (directory / "a.mp4.part").write_bytes(fmp4_small.data[:700])  # not even the moov
    frags = fragments(fmp4_small.data)
    (directory / "b.mp4.part").write_bytes(fmp4_small.data[: frags[1].offset + 10])
    # Crashed after the rename, before the sidecar.
    (directory / "c.mp4").write_bytes(fmp4_small.data)
    (directory / "c.json.part").write_text('{"bot_id": "somebot", "end": "recording"}')
    done = {r.path.name: r for r in recover(tmp_path)}
    assert sorted(done) == ["a.mp4", "b.mp4", "c.mp4"]
    assert (directory / "a.mp4").read_bytes() == fmp4_small.data[:700]  # kept whole
    assert [w["kind"] for w in done["a.mp4"].sidecar["warnings"]] == ["no_complete_fragment"]
    assert (directory / "b.mp4").read_bytes() == fmp4_small.data[: frags[0].offset + frags[0].size]
    assert done["b.mp4"].sidecar["fragments"] == 1
    assert (directory / "c.mp4").read_bytes() == fmp4_small.data
    assert done["c.mp4"].sidecar["bot_id"] == "somebot"
    assert done["c.mp4"].sidecar["fragments"] == len(frags)
    assert files(tmp_path) == [
        f"somebot/{n}.{ext}" for n in "abc" for ext in ("json", "mp4")
    ]
