"""The bus's outbox on disk, against a real nats-server stopped and started again: a backlog
larger than the memory bound goes to the outbox instead of being dropped and is published in
order when NATS is back (the part rebuilt from the bus is the local file, byte for byte); a
publisher closed while NATS is away keeps its backlog in the outbox, and the next one
publishes it at its start; a record cut by a crash is cut off, the records before it kept."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from media import Media
from services import NatsServer, nats_server, require_module

from meetstream_live import Disconnected, MediaChunk, StreamEnded, StreamStarted
from meetstream_live.adapters import ConnectionInfo
from meetstream_live.adapters.recording import Recorder
from meetstream_live.adapters.recording.bus import BusConfig, BusSink, Outgoing, Publisher
from meetstream_live.adapters.recording.bus.outbox import SUFFIX, Segment

from .test_bus import LIMITS, rebuilt

CHUNK = 64 * 1024
#: Memory for the bus: a few fragments of the clip (so most of it has to wait on disk).
MEMORY = 96 * 1024


@pytest.fixture
def nats() -> Iterator[NatsServer]:
    require_module("nats")
    with nats_server() as server:
        yield server


def config(url: str, outbox: Path | None) -> BusConfig:
    return BusConfig(url, limits=LIMITS, max_pending_bytes=MEMORY,
                     outbox_dir=str(outbox) if outbox is not None else None,
                     retry_base=0.05, retry_cap=0.2, ack_timeout=1.0)


def stream(recorder: Recorder, data: bytes, bot_id: str) -> Path:
    """``data`` at 6.4 MB/s (a chunk every 10 ms: 13 bots' worth; the outbox's thread moves
    what memory cannot hold as it comes, not a whole file at once)."""
    handler = recorder(ConnectionInfo("127.0.0.1:5000", "/", "", (), False))
    handler.on_start(StreamStarted(bot_id=bot_id,
                                   raw={"type": "video_stream_start", "bot_id": bot_id}))
    for offset in range(0, len(data), CHUNK):
        handler.on_chunk(MediaChunk(data[offset:offset + CHUNK], offset))
        time.sleep(0.01)
    handler.on_end(StreamEnded(6.0))
    handler.on_disconnect(Disconnected(1000, "", True))
    assert recorder.flush(20)
    (media,) = recorder.root.rglob("*.mp4")
    return media


@pytest.mark.parametrize("outbox", [True, False], ids=["outbox", "memory-only"])
def test_a_backlog_beyond_memory_waits_on_disk(nats: NatsServer, tmp_path: Path,
                                               fmp4_medium: Media, outbox: bool) -> None:
    publisher = Publisher(config(nats.url, tmp_path / "outbox" if outbox else None))
    recorder = Recorder(tmp_path / "rec", sinks=[BusSink(publisher, pongs=False)])
    try:
        nats.stop()
        media = stream(recorder, fmp4_medium.data, "spill")
        down = publisher.stats()
        nats.start()
        assert publisher.wait_idle(60)
    finally:
        recorder.close()
    stats = publisher.stats()
    result, data = rebuilt(nats.url, "spill")
    if not outbox:  # the defence off: what did not fit in memory is lost to the bus
        assert down["dropped_messages"] > 0
        assert result is not None and not result.complete
        return
    assert down["outbox_bytes"] > 0 and down["dropped_messages"] == 0
    assert stats["dropped_messages"] == 0 and stats["spilled_messages"] > 0
    assert stats["outbox_bytes"] == 0 and stats["pending_messages"] == 0
    assert result is not None and result.complete
    assert data == media.read_bytes()
    assert not list((tmp_path / "outbox").glob(f"*{SUFFIX}"))  # published: removed


def test_the_next_start_publishes_what_a_stop_left(nats: NatsServer, tmp_path: Path,
                                                  fmp4_medium: Media) -> None:
    outbox = tmp_path / "outbox"
    first = Publisher(config(nats.url, outbox))
    recorder = Recorder(tmp_path / "rec", sinks=[BusSink(first, pongs=False, drain_timeout=0.5)])
    nats.stop()
    try:
        media = stream(recorder, fmp4_medium.data, "restart")
    finally:
        recorder.close()  # NATS still away: the backlog stays in the outbox
    assert first.stats()["dropped_messages"] == 0
    assert list(outbox.glob(f"*{SUFFIX}"))
    nats.start()
    second = Publisher(config(nats.url, outbox))
    second.start()
    try:
        assert second.wait_idle(60)
    finally:
        second.close()
    result, data = rebuilt(nats.url, "restart")
    assert result is not None and result.complete and data == media.read_bytes()
    assert not list(outbox.glob(f"*{SUFFIX}"))


def test_a_record_cut_by_a_crash_is_cut_off(tmp_path: Path) -> None:
    path = tmp_path / f"1-1-1{SUFFIX}"
    segment = Segment(path)
    messages = [Outgoing("meetstream.b._.media", bytes([n]) * (100 + n), {"Nats-Msg-Id": str(n)},
                         "fragment") for n in range(3)]
    segment.append(messages)
    whole = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(whole - 10)  # the last record half-written
    again = Segment(path, existing=True)
    assert again.count == 2 and again.bytes == 100 + 101
    got = again.unpublished()
    assert [m.payload for m in got] == [m.payload for m in messages[:2]]
    assert [m.headers for m in got] == [m.headers for m in messages[:2]]
    assert again.peek() == got[0]
    again.advance()
    again.close()  # one published: the mark says so
    third = Segment(path, existing=True)
    assert [m.payload for m in third.unpublished()] == [messages[1].payload]
