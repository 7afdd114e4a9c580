"""The free-space guard acts before the disk is full, even with several streams writing at
once: it measures on bytes written (not only on time), estimates in between, keeps room per
stream being written, and stops a stream inside a fragment when the limit is met there."""

from __future__ import annotations

import json
from pathlib import Path

from media import Media, fragment_spans

from meetstream_live import Disconnected, MediaChunk, StreamEnded, StreamStarted
from meetstream_live.adapters import ConnectionInfo
from meetstream_live.adapters.recording import Recorder
from meetstream_live.adapters.recording.diskguard import DiskGuard
from meetstream_live.adapters.recording.metrics import Metrics

MIB = 1024 * 1024
INFO = ConnectionInfo("127.0.0.1:5555", "/", "", (), False)


class FakeDisk:
    """Free space that goes down with what the guard is told was written."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.measured = 0

    def __call__(self) -> int:
        self.measured += 1
        return self.free


def test_it_measures_after_enough_bytes_and_estimates_in_between() -> None:
    disk = FakeDisk(100 * MIB)
    now = [0.0]
    guard = DiskGuard("/", low_bytes=10 * MIB, interval=3600, free=disk,
                      monotonic=lambda: now[0], check_bytes=4 * MIB, reserve_bytes=0)
    assert not guard.low() and disk.measured == 1
    for _ in range(3):
        guard.wrote(MIB)
        assert not guard.low()
    assert disk.measured == 1  # 3 MiB written: an estimate (100 - 3 MiB) is enough
    disk.free = 5 * MIB  # the disk filled up (other writers): the next measurement sees it
    guard.wrote(MIB)
    assert guard.low() and disk.measured == 2


def test_the_estimate_alone_turns_it_low() -> None:
    disk = FakeDisk(12 * MIB)
    guard = DiskGuard("/", low_bytes=10 * MIB, interval=3600, free=disk,
                      monotonic=lambda: 0.0, check_bytes=64 * MIB, reserve_bytes=0)
    assert not guard.low()
    guard.wrote(3 * MIB)  # 12 - 3 < 10: low, without measuring again
    assert guard.low() and disk.measured == 1


def test_each_stream_being_written_keeps_room() -> None:
    disk = FakeDisk(20 * MIB)
    guard = DiskGuard("/", low_bytes=4 * MIB, high_bytes=8 * MIB, interval=0, free=disk,
                      reserve_bytes=4 * MIB)
    assert not guard.low(1)  # 20 >= 4 + 4
    assert not guard.low(3)  # 20 >= 4 + 12
    assert guard.low(5)  # 20 < 4 + 20
    assert guard.low(4)  # hysteresis: 20 >= 4 + 16, but back only at 8 + 16
    disk.free = 24 * MIB
    assert not guard.low(4)


def start(bot_id: str) -> StreamStarted:
    return StreamStarted(bot_id=bot_id, raw={"type": "video_stream_start", "bot_id": bot_id})


def test_several_streams_stop_before_the_disk_is_full(fmp4_medium: Media, tmp_path: Path) -> None:
    """Four streams at once onto a disk with room for about two: the guard, fed what they
    write, stops them all with the low watermark kept; no write ever fails."""
    data = fmp4_medium.data
    free = {"bytes": 2 * len(data) + 300_000}
    guard = DiskGuard(tmp_path, low_bytes=200_000, interval=3600, check_bytes=64 * 1024,
                      reserve_bytes=50_000, free=lambda: free["bytes"] - written(),
                      metrics=Metrics())

    def written() -> int:
        return sum(p.stat().st_size for p in tmp_path.rglob("*.mp4*"))

    recorder = Recorder(tmp_path / "out", disk_guard=guard, buffer_size=16 * 1024)
    handlers = [recorder(INFO) for _ in range(4)]
    for n, handler in enumerate(handlers):
        handler.on_start(start(f"bot-{n}"))
    for offset in range(0, len(data), 4_000):
        for handler in handlers:
            handler.on_chunk(MediaChunk(data[offset : offset + 4_000], offset))
    for handler in handlers:
        handler.on_end(StreamEnded(6.0))
        handler.on_disconnect(Disconnected(1000, "", True))
    recorder.close()
    assert free["bytes"] - written() >= 200_000 - 1  # the low watermark was never crossed
    docs = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("bot-*/*.json")
            if not p.name.endswith(".session.json")]
    assert len(docs) == 4
    assert sum(d["lost_bytes"] for d in docs) > 0
    assert all(d["disk_errors"] == 0 for d in docs)
    _, spans = fragment_spans(data)
    boundaries = {a + b for a, b in spans} | {spans[0][0]}
    for doc in docs:
        # Whole, or cut at a fragment boundary; a stream may resume when another one's cut
        # gives space back, then its file goes on from a boundary.
        if all(hole["resumed_at"] is None for hole in doc["holes"]):
            assert doc["bytes"] in boundaries | {0, len(data)}, doc["bytes"]
        else:
            assert all(hole["resumed_at"] in boundaries | {None} for hole in doc["holes"])
        assert doc["bytes"] + doc["lost_bytes"] == doc["received_bytes"]


def test_a_stream_is_stopped_inside_a_fragment(fmp4_medium: Media, tmp_path: Path) -> None:
    """The limit met in the middle of a (big) fragment: the file is cut back to the fragment
    before it at once, rather than written on until the fragment ends."""
    data = fmp4_medium.data
    _, spans = fragment_spans(data)
    free = {"bytes": 10**9}
    guard = DiskGuard(tmp_path, low_bytes=100, interval=0, free=lambda: free["bytes"],
                      reserve_bytes=0)
    recorder = Recorder(tmp_path / "out", disk_guard=guard, buffer_size=4096)
    handler = recorder(INFO)
    handler.on_start(start("bot"))
    middle = spans[2][0] + spans[2][1] // 2
    handler.on_chunk(MediaChunk(data[:middle], 0))
    assert recorder.flush()
    (part,) = (tmp_path / "out").rglob("*.mp4.part")
    assert part.stat().st_size == middle  # buffers of 4 KiB written as they come
    free["bytes"] = 10
    handler.on_chunk(MediaChunk(data[middle : middle + 5000], middle))
    assert recorder.flush()
    assert part.stat().st_size == spans[2][0]  # cut back: fragment 2 will not be complete
    handler.on_chunk(MediaChunk(data[middle + 5000 :], middle + 5000))
    handler.on_end(StreamEnded(6.0))
    handler.on_disconnect(Disconnected(1000, "", True))
    recorder.close()
    (media,) = (tmp_path / "out").rglob("*.mp4")
    assert media.read_bytes() == data[: spans[2][0]]
    doc = json.loads(media.with_suffix(".json").read_text())
    assert doc["holes"][0]["part_offset"] == spans[2][0]
    assert doc["holes"][0]["reason"] == "disk_low"
