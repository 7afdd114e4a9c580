"""``docs/sidecar.schema.json`` (JSON Schema 2020-12) holds for the sidecars the recorder
really writes: every kind of part (complete, rotated, reconnected, superseded, cut by a full
disk, paused by the guard, indexed, without a stream start) and every kind recovery writes."""

from __future__ import annotations

import dataclasses
import errno
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from media import Media, fragment_spans, rebuild

from meetstream_live import (
    Disconnected,
    LatencyPing,
    MediaChunk,
    ProtocolWarning,
    StreamEnded,
    StreamStarted,
    WarningKind,
)
from meetstream_live.adapters import ConnectionInfo
from meetstream_live.adapters.recording import Recorder, RecordingHandler, recover
from meetstream_live.adapters.recording.diskguard import DiskGuard
from meetstream_live.adapters.recording.sidecar import SIDECAR_VERSION

from .faults import FaultyDisk

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "sidecar.schema.json"
INFO = ConnectionInfo("127.0.0.1:5555", "/", "", (), False)
T0 = 1_795_615_502_123


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def start(bot_id: Any = "bot-1", **fields: Any) -> StreamStarted:
    raw = {"type": "video_stream_start", "bot_id": bot_id, **fields}
    return StreamStarted(bot_id=bot_id if isinstance(bot_id, str) else None, raw=raw, **fields)


def send(handler: RecordingHandler, data: bytes, base: int = 0) -> None:
    for offset in range(0, len(data), 9_000):
        handler.on_chunk(MediaChunk(data[offset : offset + 9_000], base + offset))


def sidecars(root: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(root.rglob("*.json")):
        if not path.name.endswith(".session.json") and ".hooks" not in path.parts:
            yield json.loads(path.read_text())


def test_every_kind_of_sidecar_matches_the_schema(
    fmp4_medium: Media, tmp_path: Path, validator: jsonschema.Draft202012Validator
) -> None:
    data = fmp4_medium.data
    init_end, spans = fragment_spans(data)
    kinds: set[str] = set()

    # Complete, with pings and warnings; rotated and indexed.
    for name, options in (("plain", {}), ("rotated", {"rotate_every": 1.0}),
                          ("indexed", {"index": True})):
        recorder = Recorder(tmp_path / name, **options)  # type: ignore[arg-type]
        handler = recorder(INFO)
        handler.on_start(start(speaker_name="Zoë", codec="h264"))
        handler.on_warning(ProtocolWarning(WarningKind.UNKNOWN_TYPE, "x"))
        send(handler, data)
        handler.on_ping(LatencyPing(1, T0 - 5, T0, "bot-1"))
        handler.on_end(StreamEnded(6.0))
        handler.on_disconnect(Disconnected(1000, "", True))
        recorder.close()
    # A reconnect that appends; a duplicate that supersedes.
    recorder = Recorder(tmp_path / "reconnect", reconnect_grace=30)
    first = recorder(INFO)
    first.on_start(start())
    send(first, data[: spans[4][0] + 700])
    first.on_disconnect(Disconnected(1006, "", False))
    second = recorder(INFO)
    second.on_start(start())
    send(second, data[:init_end] + rebuild(data, list(range(4, len(spans))))[init_end:])
    second.on_end(StreamEnded(6.0))
    second.on_disconnect(Disconnected(1000, "", True))
    old = recorder(dataclasses.replace(INFO, close=lambda code, reason: None))
    old.on_start(start("dup"))
    send(old, data[:40_000])
    new = recorder(INFO)
    new.on_start(start("dup"))
    send(old, data[40_000:60_000], base=40_000)
    old.on_disconnect(Disconnected(1006, "", False))
    new.on_disconnect(Disconnected(1001, "idle timeout", False))
    recorder.close()
    # Bytes without a stream start; a full disk; the guard pausing and resuming.
    disk = FaultyDisk()
    free = {"bytes": 10**9}
    guard = DiskGuard(tmp_path, low_bytes=100, high_bytes=200, interval=0,
                      free=lambda: free["bytes"], reserve_bytes=0)
    recorder = Recorder(tmp_path / "faults", disk=disk, disk_guard=guard)
    orphan = recorder(INFO)
    send(orphan, data[:30_000])
    orphan.on_disconnect(Disconnected(1000, "", False))
    full = recorder(INFO)
    full.on_start(start("full"))
    send(full, data[:100_000])
    assert recorder.flush()
    disk.fail("media_write", errno.ENOSPC)
    send(full, data[100_000:], base=100_000)
    full.on_end(StreamEnded(6.0))
    assert recorder.flush()
    disk.heal()
    full.on_disconnect(Disconnected(1000, "", True))
    paused = recorder(INFO)
    paused.on_start(start("paused"))
    send(paused, data[: spans[3][0]])
    assert recorder.flush()
    free["bytes"] = 50
    send(paused, data[spans[3][0] : spans[6][0]], base=spans[3][0])
    assert recorder.flush()
    free["bytes"] = 10**9
    send(paused, data[spans[6][0] :], base=spans[6][0])
    paused.on_end(StreamEnded(6.0))
    paused.on_disconnect(Disconnected(1000, "", True))
    recorder.close()
    # Recovered: a crash mid-stream, and one whose stub was never written.
    crashed = tmp_path / "crashed" / "bot"
    crashed.mkdir(parents=True)
    (crashed / "a.mp4.part").write_bytes(data[: spans[2][0] + 99])
    (crashed / "a.json.part").write_text(json.dumps({"version": 2, "bot_id": "bot"}))
    (crashed / "b.mp4.part").write_bytes(data[: spans[5][0] + 1])
    (crashed / "b.json.part").write_bytes(b"")
    assert len(recover(tmp_path / "crashed")) == 2

    documents = list(sidecars(tmp_path))
    assert len(documents) >= 12
    for document in documents:
        errors = sorted(validator.iter_errors(document), key=str)
        assert not errors, (document["file"], [e.message for e in errors])
        assert document["version"] == SIDECAR_VERSION
        kinds.add(document["started_by"])
        kinds.add(document["end_reason"])
        kinds.update(h["reason"] for h in document["holes"])
        if document["recovered"]:
            kinds.add("recovered")
        if document["reconnects"]:
            kinds.add("appended")
        if document["indexed"]:
            kinds.add("indexed")
        if document["bot_id"] is None:
            kinds.add("no start")
        if document["ignored_bytes"]:
            kinds.add("ignored")
    assert kinds >= {"start", "rotated", "superseded", "stream_end", "closed", "crash",
                     "idle_timeout", "ENOSPC", "disk_low", "recovered", "appended", "indexed",
                     "no start", "ignored"}, kinds


def test_the_schema_rejects_what_is_not_a_sidecar(
    fmp4_small: Media, tmp_path: Path, validator: jsonschema.Draft202012Validator
) -> None:
    recorder = Recorder(tmp_path)
    handler = recorder(INFO)
    handler.on_start(start())
    send(handler, fmp4_small.data)
    handler.on_end(StreamEnded(2.0))
    handler.on_disconnect(Disconnected(1000, "", True))
    recorder.close()
    (document,) = sidecars(tmp_path)
    assert validator.is_valid(document)
    for broken in (
        {**document, "version": 2},
        {key: value for key, value in document.items() if key != "holes"},
        {**document, "verdict": "fine"},
        {**document, "holes": [{"part_offset": -1}]},
        {**document, "unknown_field": 1},
        {**document, "recovered": True},  # recovered sidecars say when and how much was cut
    ):
        assert not validator.is_valid(broken), broken
