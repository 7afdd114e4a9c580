"""The parts a crash interrupted, published whole after the restart (``bus.recovered``),
against a real nats-server: a part whose receiver died after the bus had its first fragments
(and never its end), and one the bus never saw, are recovered from their ``.part`` files and
republished: ``rebuild`` gives each recovered file byte for byte, complete; what the bus
already had is stored once (the same message IDs as the live sink's); one verdict each."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from media import Media
from services import NatsServer, nats_server, require_module, stream_messages

from meetstream_live.adapters.recording import Recorder, recover
from meetstream_live.adapters.recording.bus import EVENTS_STREAM, BusConfig, BusSink, Publisher
from meetstream_live.adapters.recording.bus.recovered import Republisher, recovered_part
from meetstream_live.adapters.recording.bus.subjects import H_MSG_ID
from recording.test_recorder import INFO, chunks, crash, fragments, start

from .test_bus import LIMITS, events, rebuilt


@pytest.fixture(scope="module")
def nats() -> Iterator[NatsServer]:
    require_module("nats")
    with nats_server() as server:
        yield server


def crashed(root: Path, data: bytes, bot_id: str, publisher: Publisher | None) -> None:
    """``bot_id`` streams ``data`` up to the middle of its fifth fragment; then the process
    dies (the bus sink, if any, has published what it had)."""
    sinks = [BusSink(publisher)] if publisher is not None else []
    handler = Recorder(root, buffer_size=1, sinks=sinks)(INFO)
    handler.on_start(start(bot_id))
    frags = fragments(data)
    for chunk in chunks(data[: frags[4].offset + frags[4].size // 2], 4096):
        handler.on_chunk(chunk)
    crash(handler)
    if publisher is not None:
        assert publisher.wait_idle(30)
        publisher.close(5)


def bus_ids(url: str, bot_id: str) -> list[str]:
    return [headers[H_MSG_ID] for subject, headers, _ in
            asyncio.run(stream_messages(url, EVENTS_STREAM))
            if subject.startswith(f"meetstream.{bot_id}.")]


def test_recovered_parts_are_republished_whole_and_once(
        nats: NatsServer, tmp_path: Path, fmp4_medium: Media) -> None:
    live = Publisher(BusConfig(nats.url, limits=LIMITS))
    crashed(tmp_path, fmp4_medium.data, "rec-seen", live)  # the bus has its first fragments
    crashed(tmp_path, fmp4_medium.data, "rec-unseen", None)  # the bus has nothing of it
    before, _ = rebuilt(nats.url, "rec-seen")
    assert before is not None and not before.complete and before.fragments == 4
    seen_before = bus_ids(nats.url, "rec-seen")

    done = recover(tmp_path)
    assert sorted(r.sidecar["bot_id"] for r in done) == ["rec-seen", "rec-unseen"]
    assert all(recovered_part(r) is not None for r in done)
    publisher = Publisher(BusConfig(nats.url, limits=LIMITS, max_pending_bytes=64 * 1024))
    publisher.start()
    try:
        republisher = Republisher(publisher, done)
        republisher.start()
        assert republisher.join(60) and republisher.done == 2
        assert publisher.wait_idle(60)
        # What the bus had of rec-seen (its media, and the init's copy on the init stream;
        # not its start event, which is not republished) was stored once.
        media_seen = [i for i in seen_before if not i.rsplit(".", 1)[1].startswith("e")]
        assert publisher.duplicates == len(media_seen) + 1
    finally:
        publisher.close(5)

    for recording in done:
        bot_id = recording.sidecar["bot_id"]
        result, data = rebuilt(nats.url, bot_id)
        assert result is not None and result.complete, (bot_id, result)
        assert data == recording.path.read_bytes() and result.fragments == 4
        assert result.verdict == recording.sidecar["verdict"] == "truncated"
        ids = bus_ids(nats.url, bot_id)
        assert len(ids) == len(set(ids)), ids  # nothing twice
        kinds = [e["type"] for e in events(nats.url, bot_id)]
        assert kinds.count("verdict") == 1 and kinds[-1] == "verdict", kinds
    assert set(seen_before) <= set(bus_ids(nats.url, "rec-seen"))


def test_a_part_without_a_bot_or_a_session_is_not_republished(tmp_path: Path) -> None:
    from meetstream_live.adapters.recording.sidecar import FinishedRecording

    media = tmp_path / "x.mp4"
    media.write_bytes(b"")
    assert recovered_part(FinishedRecording(media, tmp_path / "x.json", {"part": 1})) is None
    assert recovered_part(FinishedRecording(  # no manifest, a later part: no session start
        media, tmp_path / "x.json", {"bot_id": "b", "part": 2, "started_at_ms": 5})) is None
    found = recovered_part(FinishedRecording(
        media, tmp_path / "x.json", {"bot_id": "b", "part": 1, "started_at_ms": 5}))
    assert found is not None and (found.session_ms, found.number) == (5, 1)
