"""The bus sink against a real nats-server with JetStream: real fMP4 recorded through the
recorder with a :class:`BusSink`, read back with the consumer helpers: the rebuilt part is
the local recording byte for byte and decodes; split messages (a small ``max_payload``) are
joined; a late joiner gets the init by its sequence; a republish is stored once; events
carry start, pongs, end and the verdict; the streams are created with their limits."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from media import Media, decodable_frames, probe
from services import NatsServer, nats_server, require_module

from meetstream_live import Disconnected, LatencyPing, MediaChunk, StreamEnded, StreamStarted
from meetstream_live.adapters import ConnectionInfo
from meetstream_live.adapters.recording import Recorder
from meetstream_live.adapters.recording.bus import (
    EVENTS_STREAM,
    INIT_STREAM,
    BusConfig,
    BusSink,
    Outgoing,
    Publisher,
    StreamKey,
    StreamLimits,
    follow,
    rebuild,
)
from meetstream_live.adapters.recording.bus.subjects import H_MSG_ID

CHUNK = 64 * 1024
#: The test server's JetStream has 4 GB of file store: the 10 GiB default does not fit.
LIMITS = StreamLimits(max_bytes=512 * 1024**2)


@pytest.fixture(scope="module")
def nats() -> Iterator[NatsServer]:
    require_module("nats")
    with nats_server() as server:
        yield server


def record(root: Path, url: str, data: bytes, bot_id: str, *, speaker: str | None = None,
           pings: int = 0, **config: Any) -> tuple[Path, Publisher]:
    """``data`` recorded under ``root`` with a bus sink publishing to ``url``; the local
    recording and the (closed) publisher."""
    config.setdefault("limits", LIMITS)
    publisher = Publisher(BusConfig(url, **config))
    recorder = Recorder(root, sinks=[BusSink(publisher)])
    handler = recorder(ConnectionInfo("127.0.0.1:5000", "/", "", (), False))
    raw: dict[str, Any] = {"type": "video_stream_start", "bot_id": bot_id}
    if speaker is not None:
        raw["speaker_id"] = speaker
    handler.on_start(StreamStarted(bot_id=bot_id, raw=raw, speaker_id=speaker))
    for offset in range(0, len(data), CHUNK):
        handler.on_chunk(MediaChunk(data[offset:offset + CHUNK], offset))
        if offset // CHUNK < pings:
            handler.on_ping(LatencyPing(offset // CHUNK, None, 0, bot_id))
    handler.on_end(StreamEnded(6.0))
    handler.on_disconnect(Disconnected(1000, "", True))
    recorder.close()
    (media,) = root.rglob("*.mp4")
    return media, publisher


async def connect(url: str) -> Any:
    import nats

    return await nats.connect(url)


def rebuilt(url: str, bot_id: str, speaker: str | None = None, **kw: Any) -> tuple[Any, bytes]:
    async def run() -> tuple[Any, bytes]:
        nc = await connect(url)
        try:
            out = io.BytesIO()
            result = await rebuild(nc.jetstream(), bot_id, speaker, out, **kw)
            return result, out.getvalue()
        finally:
            await nc.close()

    return asyncio.run(run())


def events(url: str, bot_id: str, speaker: str | None = None) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        nc = await connect(url)
        try:
            js = nc.jetstream()
            sub = await js.subscribe(StreamKey(bot_id, speaker).subject("events"),
                                     ordered_consumer=True)
            found = []
            while True:
                msg = await sub.next_msg(timeout=2.0)
                found.append(json.loads(msg.data))
                if msg.metadata.num_pending == 0:
                    return found
        finally:
            await nc.close()

    return asyncio.run(run())


def test_a_recording_rebuilt_from_the_bus_is_the_local_file(
        nats: NatsServer, tmp_path: Path, fmp4_medium: Media) -> None:
    media, publisher = record(tmp_path, nats.url, fmp4_medium.data, "bot.one*>", pings=3)
    result, data = rebuilt(nats.url, "bot.one*>")
    assert result is not None and result.complete and result.verdict == "complete"
    local = media.read_bytes()
    assert data == local and result.size == len(local)
    assert result.fragments >= 10
    out = tmp_path / "bus.mp4"
    out.write_bytes(data)
    assert probe(out).video_frames == fmp4_medium.video_frames
    stats = publisher.stats()
    assert stats["dropped_messages"] == 0 and stats["pending_messages"] == 0
    assert stats["split_messages"] == 0
    kinds = [e["type"] for e in events(nats.url, "bot.one*>")]
    assert kinds[0] == "start" and kinds.count("pong") == 3
    assert kinds[-2:] == ["end", "verdict"] or kinds[-2:] == ["verdict", "end"]
    assert all(e["bot_id"] == "bot.one*>" for e in events(nats.url, "bot.one*>"))


def test_streams_are_created_with_their_limits(nats: NatsServer, tmp_path: Path,
                                               fmp4_small: Media) -> None:
    record(tmp_path, nats.url, fmp4_small.data, "limits",
           limits=StreamLimits(max_age=3600.0, max_bytes=1 << 30))

    async def run() -> tuple[Any, Any]:
        nc = await connect(nats.url)
        try:
            js = nc.jetstream()
            return await js.stream_info(EVENTS_STREAM), await js.stream_info(INIT_STREAM)
        finally:
            await nc.close()

    events_info, init_info = asyncio.run(run())
    # The first test of the module created them (24 h default): existing streams are kept.
    assert set(events_info.config.subjects) == {"meetstream.*.*.events", "meetstream.*.*.media"}
    assert events_info.config.duplicate_window == 120.0
    assert init_info.config.subjects == ["meetstream.*.*.init"]
    assert init_info.config.max_msgs_per_subject == 1


def test_per_speaker_streams_have_their_own_subjects(nats: NatsServer, tmp_path: Path,
                                                     fmp4_small: Media) -> None:
    media, _ = record(tmp_path, nats.url, fmp4_small.data, "spk-bot", speaker="alice smith")
    assert rebuilt(nats.url, "spk-bot")[0] is None  # the stream without a speaker: none
    result, data = rebuilt(nats.url, "spk-bot", "alice smith")
    assert result is not None and result.complete and data == media.read_bytes()


def test_fragments_over_max_payload_are_split_and_joined(tmp_path: Path,
                                                         fmp4_medium: Media) -> None:
    require_module("nats")
    with nats_server(max_payload=16 * 1024) as small:
        media, publisher = record(tmp_path, small.url, fmp4_medium.data, "split-bot")
        assert publisher.stats()["split_messages"] >= 10
        result, data = rebuilt(small.url, "split-bot")
    assert result is not None and result.complete
    assert data == media.read_bytes()


def test_a_late_joiner_gets_the_init_and_decodes_from_a_keyframe(
        nats: NatsServer, tmp_path: Path, fmp4_medium: Media) -> None:
    record(tmp_path, nats.url, fmp4_medium.data, "late-bot")

    async def run() -> list[tuple[Any, Any]]:
        nc = await connect(nats.url)
        try:
            js = nc.jetstream()
            subject = StreamKey("late-bot").subject("media")
            first = (await js.get_msg(EVENTS_STREAM, subject=subject, next=True, seq=1)).seq
            pairs = []
            async for init, message in follow(js, "late-bot", start=first + 5,
                                              until_caught_up=True):
                pairs.append((init, message))
            return pairs
        finally:
            await nc.close()

    pairs = asyncio.run(run())
    init, first = pairs[0]
    assert first is init and init.kind == "init" and init.offset == 0
    fragments = [m for _, m in pairs if m.kind == "fragment"]
    assert fragments[0].seq >= 5 and fragments[0].keyframe is not False
    assert pairs[-1][1].kind == "end"
    assert decodable_frames(init.data + fragments[0].data) > 0
    assert all(i is init for i, _ in pairs)


def test_a_republished_message_is_stored_once(nats: NatsServer) -> None:
    publisher = Publisher(BusConfig(nats.url, limits=LIMITS))
    publisher.start()
    subject = StreamKey("dedup-bot").subject("events")
    try:
        for _ in range(2):
            publisher.submit(1, [Outgoing(subject, b'{"type":"x"}',
                                          {H_MSG_ID: "dedup-bot._.1.1.e1"}, "event")])
            assert publisher.wait_idle(10)
    finally:
        publisher.close()
    assert publisher.stats()["duplicates"] == 1

    async def count() -> int:
        nc = await connect(nats.url)
        try:
            info = await nc.jetstream().stream_info(EVENTS_STREAM, subjects_filter=subject)
            return int(info.state.subjects[subject])
        finally:
            await nc.close()

    assert asyncio.run(count()) == 1


def test_no_server_is_a_clear_error(tmp_path: Path) -> None:
    require_module("nats")
    from services import free_port

    from meetstream_live.adapters.recording.bus import BusError

    publisher = Publisher(BusConfig(f"nats://user:secret@127.0.0.1:{free_port()}",
                                    connect_timeout=1.0))
    with pytest.raises(BusError, match=r"cannot connect") as info:
        publisher.start()
    assert "secret" not in str(info.value)
