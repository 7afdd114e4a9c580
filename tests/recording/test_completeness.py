"""Issue 7: completeness from the media itself, parts, reconnects, duration and seeking, the
disk guard, durable hooks, and the verify/recover commands. Real H.264 + AAC from ffmpeg;
every verdict is checked by decoding the files with PyAV.
"""

from __future__ import annotations

import dataclasses
import errno
import http.server
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import av
import pytest
from media import (
    Media,
    decodable_frames,
    fragment_spans,
    frames_in_fragments,
    make_fmp4,
    make_resolution_change,
    probe,
    rebuild,
)

from meetstream_live import Disconnected, LatencyPing, MediaChunk, StreamEnded, StreamStarted
from meetstream_live.adapters import ConnectionInfo
from meetstream_live.adapters.cli import main
from meetstream_live.adapters.recording.diskguard import DiskGuard, apply_retention
from meetstream_live.adapters.recording.hooks import HookRunner, Journal
from meetstream_live.adapters.recording.metrics import Metrics
from meetstream_live.adapters.recording.mp4index import FragmentEntry, build_mfra
from meetstream_live.adapters.recording.recorder import (
    FinishedRecording,
    Recorder,
    RecordingHandler,
    recover,
)
from meetstream_live.adapters.recording.verify import verify_file
from recording.faults import FaultyDisk

INFO = ConnectionInfo("127.0.0.1:5555", "/", "", (), False)
T0 = 1_795_615_502_123


class Clock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def start(bot_id: str = "bot-7", speaker: str | None = "spk-1") -> StreamStarted:
    raw: dict[str, Any] = {"type": "video_stream_start", "bot_id": bot_id}
    if speaker is not None:
        raw["speakerId"] = speaker
    return StreamStarted(bot_id=bot_id, raw=raw, speaker_id=speaker)


def send(handler: RecordingHandler, data: bytes, size: int = 7_000) -> None:
    for offset in range(0, len(data), size):
        handler.on_chunk(MediaChunk(data[offset : offset + size], offset))


def stream(
    recorder: Recorder, data: bytes, *, end: float | None = 2.0, code: int = 1006,
    reason: str = "", bot_id: str = "bot-7",
) -> RecordingHandler:
    handler = recorder(INFO)
    handler.on_start(start(bot_id))
    send(handler, data)
    if end is not None:
        handler.on_end(StreamEnded(end))
        handler.on_disconnect(Disconnected(1000, "", True))
    else:
        handler.on_disconnect(Disconnected(code, reason, False))
    assert recorder.flush()  # the file sink writes in its own threads
    return handler


def crash(handler: RecordingHandler) -> None:
    """The process dies: the file the file sink holds open is closed, nothing else happens."""
    assert handler.recorder.flush()
    stream = handler.stream
    assert stream is not None and stream.part is not None
    held = handler.recorder.files.part_file(stream.part.part)
    assert held is not None and held.fd is not None
    os.close(held.fd)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Media:
    """4 s, a fragment every 0.48 s: 9 fragments."""
    return make_fmp4(tmp_path_factory.mktemp("clip") / "clip.mp4", duration_s=4.0)


def only(finished: list[FinishedRecording]) -> FinishedRecording:
    (recording,) = finished
    return recording


# ------------------------------------------------------------------ 1. completeness


def test_complete_stream(clip: Media, tmp_path: Path) -> None:
    finished: list[FinishedRecording] = []
    metrics = Metrics()
    stream(Recorder(tmp_path, on_finish=finished.append, metrics=metrics), clip.data,
           end=clip.duration_s)
    doc = only(finished).sidecar
    count = len(fragment_spans(clip.data)[1])
    assert doc["verdict"] == "complete", doc["verdict_reasons"]
    assert doc["end_reason"] == "stream_end"
    done = doc["completeness"]
    assert done["fragments"] == count
    assert (done["first_sequence_number"], done["last_sequence_number"]) == (1, count)
    assert done["dropped_fragments"] == done["out_of_order_fragments"] == 0
    assert all(gap == 0 for gap in done["timeline_gap_ms"].values())
    assert done["media_duration_seconds"] == pytest.approx(clip.duration_s, abs=0.05)
    assert probe(only(finished).path).video_frames == clip.video_frames
    assert metrics.verdicts.value("complete") == 1
    manifest = json.loads((only(finished).path.with_suffix("").with_suffix(".session.json")
                           if False else next(tmp_path.rglob("*.session.json"))).read_text())
    assert manifest["state"] == "finished" and manifest["verdict"] == "complete"
    assert [p["file"] for p in manifest["parts"]] == [only(finished).path.name]


def test_removed_fragment_is_a_gap(clip: Media, tmp_path: Path) -> None:
    count = len(fragment_spans(clip.data)[1])
    kept = [i for i in range(count) if i != 3]
    finished: list[FinishedRecording] = []
    metrics = Metrics()
    stream(Recorder(tmp_path, on_finish=finished.append, metrics=metrics),
           rebuild(clip.data, kept), end=clip.duration_s)
    doc = only(finished).sidecar
    assert doc["verdict"] == "gaps"
    done = doc["completeness"]
    assert done["dropped_fragments"] == 1
    video = next(t for t in done["tracks"] if t["handler"] == "vide")
    audio = next(t for t in done["tracks"] if t["handler"] == "soun")
    assert video["gaps"] == 1 and video["gap_ms"] == pytest.approx(480, abs=1)
    assert audio["gaps"] == 1 and audio["gap_ms"] == pytest.approx(480, abs=30)
    assert done["gaps"][0]["at_seconds"] == pytest.approx(4 * 0.48, abs=0.05)
    assert metrics.dropped_fragments.value() == 1
    assert metrics.timeline_gaps.value("vide") == pytest.approx(0.48, abs=0.001)
    # PyAV: exactly the frames of the fragments that are there.
    assert probe(only(finished).path).video_frames == frames_in_fragments(clip.data, kept)
    assert frames_in_fragments(clip.data, kept) == clip.video_frames - 12


def test_reordered_fragments(clip: Media, tmp_path: Path) -> None:
    count = len(fragment_spans(clip.data)[1])
    order = [0, 1, 3, 2, *range(4, count)]
    report = _record_and_verify(tmp_path, rebuild(clip.data, order))
    assert report["verdict"] == "gaps"
    assert report["completeness"]["out_of_order_fragments"] == 1
    assert report["completeness"]["dropped_fragments"] == 0


def test_cut_stream_is_truncated(clip: Media, tmp_path: Path) -> None:
    _, spans = fragment_spans(clip.data)
    cut = spans[5][0] + spans[5][1] // 2
    finished: list[FinishedRecording] = []
    stream(Recorder(tmp_path, on_finish=finished.append), clip.data[:cut], end=None)
    recording = only(finished)
    doc = recording.sidecar
    assert doc["verdict"] == "truncated"
    assert doc["end_reason"] == "closed" and doc["close_code"] == 1006
    assert doc["completeness"]["torn_tail_bytes"] == spans[5][1] // 2
    assert recording.path.read_bytes() == clip.data[:cut]  # every byte received is kept
    assert doc["completeness"]["fragments"] == 5
    assert decodable_frames(clip.data[: spans[5][0]]) == 5 * 12


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (1001, "idle timeout", "idle_timeout"),
        (1001, "server shutting down", "server_shutdown"),
        (1000, "", "closed"),
    ],
)
def test_end_reasons(clip: Media, tmp_path: Path, code: int, reason: str, expected: str) -> None:
    finished: list[FinishedRecording] = []
    stream(Recorder(tmp_path, on_finish=finished.append), clip.data, end=None, code=code,
           reason=reason)
    doc = only(finished).sidecar
    assert doc["end_reason"] == expected
    assert doc["verdict"] == "truncated"  # no video_stream_end: the stream did not end
    assert "did not end" in doc["verdict_reasons"][0]


def test_reported_duration_longer_than_the_media(clip: Media, tmp_path: Path) -> None:
    finished: list[FinishedRecording] = []
    stream(Recorder(tmp_path, on_finish=finished.append), clip.data, end=30.0)
    doc = only(finished).sidecar
    assert doc["verdict"] == "gaps"
    assert doc["completeness"]["duration_difference_seconds"] == pytest.approx(
        30.0 - clip.duration_s, abs=0.05
    )


def _record_and_verify(tmp_path: Path, data: bytes) -> dict[str, Any]:
    finished: list[FinishedRecording] = []
    stream(Recorder(tmp_path, on_finish=finished.append), data, end=4.0)
    file_report = verify_file(only(finished).path)
    assert file_report.verdict == only(finished).sidecar["completeness"]["verdict"]
    return only(finished).sidecar


# ------------------------------------------------------------------ 2. new init segment


def test_resolution_change_starts_a_new_part(tmp_path: Path) -> None:
    a, b, joined = make_resolution_change(tmp_path / "media")
    finished: list[FinishedRecording] = []
    stream(Recorder(tmp_path / "out", on_finish=finished.append), joined, end=2.0)
    first, second = finished
    assert first.sidecar["end_reason"] == "new_init" and first.sidecar["end"] == "rotated"
    assert second.sidecar["started_by"] == "new_init"
    assert second.path.name == first.path.stem + "_part002.mp4"
    for recording, media in ((first, a), (second, b)):
        measured = probe(recording.path)
        assert (measured.width, measured.height) == (media.width, media.height)
        assert measured.video_frames == media.video_frames
        assert recording.sidecar["verdict"] == "complete", recording.sidecar["verdict_reasons"]
    manifest = json.loads(next((tmp_path / "out").rglob("*.session.json")).read_text())
    assert [p["file"] for p in manifest["parts"]] == [first.path.name, second.path.name]
    assert verify_file(tmp_path / "media" / "res-320x240.mp4").verdict == "complete"


# ------------------------------------------------------------------ 3. reconnects


def test_reconnect_within_grace_appends(clip: Media, tmp_path: Path) -> None:
    init_end, spans = fragment_spans(clip.data)
    split = spans[4][0]
    finished: list[FinishedRecording] = []
    metrics = Metrics()
    recorder = Recorder(tmp_path, on_finish=finished.append, reconnect_grace=30,
                        metrics=metrics, clock=Clock())
    # The first connection drops in the middle of fragment 4.
    stream(recorder, clip.data[: split + 5000], end=None)
    assert finished == []  # waiting for a reconnect
    assert list(tmp_path.rglob("*.mp4.part"))
    # The bot comes back: the same init segment, the timeline goes on from fragment 4.
    handler = recorder(INFO)
    handler.on_start(start())
    send(handler, clip.data[:init_end] + rebuild(clip.data, list(range(4, len(spans))))[init_end:])
    handler.on_end(StreamEnded(clip.duration_s))
    handler.on_disconnect(Disconnected(1000, "", True))
    assert recorder.flush()
    recording = only(finished)
    doc = recording.sidecar
    assert doc["connections"] == 2
    assert doc["reconnects"][0]["discarded_tail_bytes"] == 5000
    assert doc["verdict"] == "complete", doc["verdict_reasons"]
    assert recording.path.read_bytes() == rebuild(clip.data, list(range(len(spans))))
    assert probe(recording.path).video_frames == clip.video_frames
    assert metrics.reconnects.value("appended") == 1
    assert metrics.streams_active.value() == 0


def test_reconnect_with_a_restarted_encoder_is_a_new_part(clip: Media, tmp_path: Path) -> None:
    _, spans = fragment_spans(clip.data)
    finished: list[FinishedRecording] = []
    recorder = Recorder(tmp_path, on_finish=finished.append, reconnect_grace=30, clock=Clock())
    stream(recorder, clip.data[: spans[3][0]], end=None)
    stream(recorder, clip.data, end=4.0)  # the timeline starts again at 0
    first, second = finished
    assert first.sidecar["end_reason"] == "closed"
    assert second.sidecar["started_by"] == "reconnect"
    assert second.path.name == first.path.stem + "_part002.mp4"
    assert probe(first.path).video_frames == 36
    assert probe(second.path).video_frames == clip.video_frames


def test_reconnect_after_the_grace_window_is_a_new_recording(
    clip: Media, tmp_path: Path
) -> None:
    _, spans = fragment_spans(clip.data)
    finished: list[FinishedRecording] = []
    clock = Clock()
    recorder = Recorder(tmp_path, on_finish=finished.append, reconnect_grace=0.2, clock=clock)
    stream(recorder, clip.data[: spans[3][0]], end=None)
    deadline = time.monotonic() + 5
    while not finished:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert finished[0].sidecar["verdict"] == "truncated"
    clock.now += 60_000
    stream(recorder, clip.data, end=4.0)
    first, second = finished
    assert second.sidecar["part"] == 1 and second.sidecar["session"] != first.sidecar["session"]
    assert len(list(tmp_path.rglob("*.session.json"))) == 2


def test_duplicate_connection_supersedes_the_older(clip: Media, tmp_path: Path) -> None:
    _, spans = fragment_spans(clip.data)
    finished: list[FinishedRecording] = []
    metrics = Metrics()
    recorder = Recorder(tmp_path, on_finish=finished.append, metrics=metrics, clock=Clock())
    closes: list[tuple[int, str]] = []
    info = dataclasses.replace(INFO, close=lambda code, reason: closes.append((code, reason)))
    old = recorder(info)
    old.on_start(start())
    send(old, clip.data[: spans[2][0]])
    new = recorder(INFO)
    new.on_start(start())  # the same bot_id + speaker while the old one is open
    assert recorder.flush()
    assert len(finished) == 1 and finished[0].sidecar["end_reason"] == "superseded"
    # The older connection is asked to close, normally (a bot does not retry after 1000).
    assert closes == [(1000, "superseded by a newer connection")]
    send(old, clip.data[spans[2][0] :])  # ignored, never written
    send(new, clip.data)
    new.on_end(StreamEnded(4.0))
    new.on_disconnect(Disconnected(1000, "", True))
    old.on_disconnect(Disconnected(1006, "", False))
    assert recorder.flush()
    first, second = finished
    assert first.path.read_bytes() == clip.data[: spans[2][0]]
    assert json.loads(first.sidecar_path.read_text())["ignored_bytes"] == (
        len(clip.data) - spans[2][0]
    )
    assert second.sidecar["started_by"] == "superseded"
    assert second.path.read_bytes() == clip.data
    assert metrics.recording_lost.value("superseded") == 1
    assert probe(second.path).video_frames == clip.video_frames
    assert len(closes) == 1  # the newer connection was never asked to close


@pytest.mark.parametrize("adapter", ["asyncio", "sync", "trio", "asgi-uvicorn", "asgi-hypercorn"])
def test_duplicate_connection_closes_the_older_bot(
    clip: Media, tmp_path: Path, adapter: str
) -> None:
    """Over a real server: the older bot gets a close frame with 1000 (sent for it from the
    newer connection's handler thread), the newer one streams on."""
    import asyncio

    from conformance.servers import running_server

    from meetstream_live import BotClosed
    from meetstream_live.adapters.asyncio import AsyncioBot

    _, spans = fragment_spans(clip.data)
    finished: list[FinishedRecording] = []
    metrics = Metrics()
    recorder = Recorder(tmp_path, on_finish=finished.append, metrics=metrics)

    def older_started() -> None:  # its handler has had the start (they run in other threads)
        deadline = time.monotonic() + 10
        while metrics.streams_active.value() < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)

    async def bots(address: str) -> BotClosed:
        older = await AsyncioBot.connect(address)
        await older.send_start("bot-7", speakerId="spk-1")
        await older.send_chunk(clip.data[: spans[2][0]])
        await asyncio.to_thread(older_started)
        newer = await AsyncioBot.connect(address)
        await newer.send_start("bot-7", speakerId="spk-1")
        while not isinstance(event := await older.next_event(10), BotClosed):
            pass
        await newer.send_chunk(clip.data)
        await newer.send_end(4.0)
        assert (await newer.close()).code == 1000
        older.abort()
        return event

    with running_server(adapter, recorder) as port:
        closed = asyncio.run(asyncio.wait_for(bots(f"ws://127.0.0.1:{port}/"), 30))
        deadline = time.monotonic() + 10
        while len(finished) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    recorder.close()
    assert (closed.code, closed.reason) == (1000, "superseded by a newer connection")
    first, second = finished
    assert first.sidecar["end_reason"] == "superseded"
    # What the older handler had got when the newer start came (the pong says the receiver
    # read it, not that the handler has it yet: the test above checks the bytes).
    assert clip.data[: spans[2][0]].startswith(first.path.read_bytes())
    assert second.sidecar["started_by"] == "superseded"
    assert second.path.read_bytes() == clip.data


# ------------------------------------------------------------------ 4. duration and seeking


def test_index_gives_duration_and_seeking(tmp_path: Path) -> None:
    media = make_fmp4(tmp_path / "long.mp4", duration_s=8.0, keyframe_interval_s=1.0)
    data = rebuild(media.data, list(range(len(fragment_spans(media.data)[1]))))  # no mfra
    finished: list[FinishedRecording] = []
    stream(Recorder(tmp_path / "out", on_finish=finished.append, index=True), data, end=8.0)
    recording = only(finished)
    assert recording.sidecar["indexed"] is True
    raw = recording.path.read_bytes()
    assert raw[-16:-12] == b"\x00\x00\x00\x10" and raw[-12:-8] == b"mfro"
    with av.open(str(recording.path)) as container:
        assert container.duration is not None
        assert container.duration / 1e6 == pytest.approx(media.duration_s, abs=1.0)
        video = container.streams.video[0]
        assert video.time_base is not None
        container.seek(int(4.0 / video.time_base), stream=video)
        frame = next(container.decode(video))
        assert frame.pts is not None
        assert 3.0 <= float(frame.pts * video.time_base) <= 4.0  # the keyframe at or before
    assert probe(recording.path).video_frames == media.video_frames
    assert verify_file(recording.path).verdict == "complete"


def test_mfra_offsets_over_4_gib() -> None:
    far = 5 * 1024**3
    box = build_mfra([FragmentEntry(far, ((1, 1, 10**10),))])
    assert box[4:8] == b"mfra" and far.to_bytes(8, "big") in box


# ------------------------------------------------------------------ 5. disk


def test_disk_full_keeps_what_was_written(clip: Media, tmp_path: Path) -> None:
    """The disk fills up in the middle of a fragment: the handler does not raise (the
    connection stays open), the file is cut back to its last complete fragment, the part is
    finalized with what was lost and why (it was: end_reason disk_full and a 1011 close)."""
    disk = FaultyDisk()
    disk.budget = 60_000
    finished: list[FinishedRecording] = []
    metrics = Metrics()
    recorder = Recorder(tmp_path, on_finish=finished.append, metrics=metrics, disk=disk)
    handler = recorder(INFO)
    handler.dispatch([start()])
    handler.dispatch([MediaChunk(clip.data[i : i + 7000], i)
                      for i in range(0, len(clip.data), 7000)])
    handler.dispatch([LatencyPing(1, T0, T0, "bot-7")])
    assert recorder.flush()
    disk.budget = None
    disk.heal()  # space again, after the stream's last fragment: nothing more is written
    handler.dispatch([StreamEnded(4.0), Disconnected(1000, "", True)])
    assert recorder.flush()
    doc = only(finished).sidecar
    _, spans = fragment_spans(clip.data)
    good = max(start + size for start, size in spans if start + size <= 60_000)
    assert doc["end_reason"] == "stream_end" and doc["verdict"] == "truncated"
    assert doc["bytes"] == good == only(finished).path.stat().st_size
    assert only(finished).path.read_bytes() == clip.data[:good]
    assert doc["lost_bytes"] == len(clip.data) - good
    assert doc["holes"][0]["part_offset"] == good and doc["holes"][0]["reason"] == "ENOSPC"
    assert doc["completeness"]["torn_tail_bytes"] == 0 and doc["pings"] == 1
    assert "disk_full" in [w["kind"] for w in doc["warnings"]]
    assert metrics.recording_lost.value("disk_full") == 1
    assert metrics.disk_errors.value("ENOSPC") >= 1
    assert not list(tmp_path.rglob("*.part"))
    assert decodable_frames(only(finished).path.read_bytes()) == decodable_frames(clip.data[:good])


def test_disk_guard_pauses_and_resumes(clip: Media, tmp_path: Path) -> None:
    free = {"bytes": 10**9}
    metrics = Metrics()
    guard = DiskGuard(tmp_path, low_bytes=100, high_bytes=200, interval=0,
                      free=lambda: free["bytes"], metrics=metrics)
    finished: list[FinishedRecording] = []
    handler = Recorder(tmp_path, on_finish=finished.append, disk_guard=guard,
                       metrics=metrics)(INFO)
    handler.on_start(start())
    _, spans = fragment_spans(clip.data)
    recorder = handler.recorder
    send(handler, clip.data[: spans[2][0]])
    assert recorder.flush()  # the file sink asks the guard: wait for it between the steps
    free["bytes"] = 50  # below the low watermark: fragments 2, 3 are not written
    send(handler, clip.data[spans[2][0] : spans[4][0]], size=1_000_000)
    assert recorder.flush()
    assert metrics.disk_low.value() == 1
    handler.on_ping(LatencyPing(1, T0, T0, "bot-7"))  # pings go on
    free["bytes"] = 150  # between the watermarks: still paused
    send(handler, clip.data[spans[4][0] : spans[5][0]], size=1_000_000)
    assert recorder.flush()
    free["bytes"] = 10**9
    send(handler, clip.data[spans[5][0] :], size=1_000_000)
    handler.on_end(StreamEnded(4.0))
    handler.on_disconnect(Disconnected(1000, "", True))
    assert recorder.flush()
    doc = only(finished).sidecar
    assert doc["verdict"] == "gaps"
    assert doc["lost_fragments"] == 3
    assert doc["lost_bytes"] == spans[5][0] - spans[2][0]
    assert doc["completeness"]["dropped_fragments"] == 3
    kept = [0, 1, *range(5, len(spans))]
    assert only(finished).path.read_bytes() == rebuild(clip.data, kept) + clip.data[
        spans[-1][0] + spans[-1][1] :
    ]
    assert probe(only(finished).path).video_frames == frames_in_fragments(clip.data, kept)
    assert metrics.disk_low.value() == 0


def test_retention(tmp_path: Path) -> None:
    for n, age in enumerate((10, 5, 1)):
        media = tmp_path / "bot" / f"{n}.mp4"
        media.parent.mkdir(exist_ok=True)
        media.write_bytes(b"x" * 1000)
        media.with_suffix(".json").write_text("{}")
        moment = time.time() - age * 86400
        os.utime(media, (moment, moment))
    (tmp_path / "bot" / "open.mp4.part").write_bytes(b"y")
    deleted = apply_retention(tmp_path, keep_days=7)
    assert [p.name for p in deleted] == ["0.mp4"]
    deleted = apply_retention(tmp_path, max_total_bytes=1100)
    assert [p.name for p in deleted] == ["1.mp4"]
    assert sorted(p.name for p in (tmp_path / "bot").iterdir()) == [
        "2.json", "2.mp4", "open.mp4.part"
    ]


# ------------------------------------------------------------------ 6. hooks


@pytest.fixture
def flaky_hook(tmp_path: Path) -> tuple[str, Path]:
    """A command that fails the first time and succeeds after; logs its arguments."""
    script = tmp_path / "hook.py"
    log = tmp_path / "hook.log"
    script.write_text(
        "import sys, pathlib\n"
        f"log = pathlib.Path({str(log)!r})\n"
        "runs = log.read_text().count('run') if log.exists() else 0\n"
        "log.write_text(log.read_text() + 'run ' + ' '.join(sys.argv[1:]) + '\\n' "
        "if log.exists() else 'run ' + ' '.join(sys.argv[1:]) + '\\n')\n"
        "sys.exit(1 if runs == 0 else 0)\n"
    )
    return f"'{sys.executable}' '{script}'", log


def test_hook_fails_then_succeeds(clip: Media, tmp_path: Path, flaky_hook: tuple[str, Path]
                                  ) -> None:
    command, log = flaky_hook
    out = tmp_path / "out"
    journal = Journal(out, ("command",))
    metrics = Metrics()
    runner = HookRunner(journal, command=command, backoff=0.05, metrics=metrics)
    runner.start()
    finished: list[FinishedRecording] = []
    stream(Recorder(out, on_finish=finished.append, journal=journal), clip.data, end=4.0)
    deadline = time.monotonic() + 10
    while journal.entries():
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no run"
        time.sleep(0.02)
    runner.close()
    runs = log.read_text().splitlines()
    assert len(runs) == 2
    assert runs[1] == f"run {only(finished).path} {only(finished).sidecar_path}"
    assert metrics.hooks.value(outcome="failed") == 1 and metrics.hooks.value(outcome="ok") == 1


def test_crash_between_finalize_and_hook(
    clip: Media, tmp_path: Path, flaky_hook: tuple[str, Path]
) -> None:
    command, log = flaky_hook
    out = tmp_path / "out"
    finished: list[FinishedRecording] = []
    # The process "dies" right after finalizing: the journal has the entry, no hook ran.
    stream(Recorder(out, on_finish=finished.append, journal=Journal(out, ("command",))),
           clip.data, end=4.0)
    assert not log.exists()
    (entry,) = Journal(out, ("command",)).entries()
    # The restart: a new runner picks it up (and retries the first failure).
    journal = Journal(out, ("command",))
    runner = HookRunner(journal, command=command, backoff=0.01)
    for _ in range(100):
        runner.run_due()
        if not journal.entries():
            break
        time.sleep(0.02)
    assert not entry.exists()
    assert log.read_text().count("run") == 2


def test_crash_before_the_journal_is_written_recovers_the_hook(
    clip: Media, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    journal = Journal(out, ("command",))

    def die(recording: FinishedRecording) -> None:
        raise OSError(errno.EIO, "the journal cannot be written")

    # The journal step fails until the process stops (it used to be a KeyboardInterrupt in
    # the handler; the file sink's finalizing now runs in its own thread and retries).
    monkeypatch.setattr(journal, "add", die)
    recorder = Recorder(out, journal=journal)
    stream(recorder, clip.data, end=4.0)
    recorder.close()
    monkeypatch.undo()
    assert list(out.rglob("*.json.part"))  # the commit point was not passed
    assert list(out.rglob("*.mp4.part"))
    (recording,) = recover(out, journal=journal)
    assert recording.sidecar["end_reason"] == "stream_end"  # the sidecar is kept as it was
    assert len(journal.entries()) == 1
    assert not list(out.rglob("*.json.part"))


# ------------------------------------------------------------------ 7. verify and recover


def test_verify_command(clip: Media, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    whole = tmp_path / "whole.mp4"
    whole.write_bytes(clip.data)
    holed = tmp_path / "holed.mp4"
    count = len(fragment_spans(clip.data)[1])
    holed.write_bytes(rebuild(clip.data, [i for i in range(count) if i != 2]))
    torn = tmp_path / "torn.mp4"
    torn.write_bytes(clip.data[: len(clip.data) // 2])
    assert main(["verify", str(whole)]) == 0
    assert "COMPLETE" in capsys.readouterr().out
    assert main(["verify", "--json", str(whole), str(holed), str(torn)]) == 1
    reports = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["verdict"] for r in reports] == ["complete", "gaps", "truncated"]
    assert reports[1]["parts"][0]["dropped_fragments"] == 1
    assert main(["verify", str(tmp_path / "missing.mp4")]) == 2


def test_verify_plain_mp4(tmp_path: Path) -> None:
    plain = tmp_path / "plain.mp4"
    import subprocess

    from media import ffmpeg_exe

    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc2=size=160x120:rate=10:duration=1", "-c:v", "libx264", "-preset",
         "ultrafast", "-movflags", "+faststart", str(plain)],
        check=True,
    )
    report = verify_file(plain)
    assert report.plain_mp4 and report.verdict == "complete"


def test_recover_command(clip: Media, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                         ) -> None:
    _, spans = fragment_spans(clip.data)
    handler = Recorder(tmp_path, buffer_size=1)(INFO)
    handler.on_start(start())
    send(handler, clip.data[: spans[4][0] + 1000])
    crash(handler)
    assert main(["recover", str(tmp_path), "--index"]) == 0
    assert "1 recording(s) recovered" in capsys.readouterr().out
    (media,) = tmp_path.rglob("*.mp4")
    doc = json.loads(media.with_suffix(".json").read_text())
    assert doc["verdict"] == "truncated" and doc["end_reason"] == "crash"
    assert doc["indexed"] is True
    assert probe(media).video_frames == 4 * 12
    assert verify_file(media).verdict == "complete"  # the media itself is whole now


# ------------------------------------------------------------------ 8. webhook, remux, manifests


class _Hook(http.server.BaseHTTPRequestHandler):
    """Answers 500 to the first POST, 200 after; keeps what it got on the server."""

    def do_POST(self) -> None:
        server = self.server
        assert isinstance(server, _HookServer)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        server.posts.append((time.monotonic(), self.headers.get("Content-Type"), body))
        status = 500 if len(server.posts) == 1 else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HookServer(http.server.ThreadingHTTPServer):
    posts: list[tuple[float, str | None, bytes]]


def test_webhook_retries_until_2xx(clip: Media, tmp_path: Path) -> None:
    server = _HookServer(("127.0.0.1", 0), _Hook)
    server.posts = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        out = tmp_path / "out"
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        journal = Journal(out, HookRunner.hooks_for(None, url))
        metrics = Metrics()
        runner = HookRunner(journal, webhook=url, backoff=0.1, max_backoff=0.2, timeout=2.0,
                            metrics=metrics)
        runner.start()
        began = time.monotonic()
        finished: list[FinishedRecording] = []
        stream(Recorder(out, on_finish=finished.append, journal=journal), clip.data, end=4.0)
        deadline = time.monotonic() + 3
        while journal.entries():
            assert time.monotonic() < deadline, server.posts
            time.sleep(0.01)
        runner.close()
        assert time.monotonic() - began < 3
    finally:
        server.shutdown()
        server.server_close()
    assert len(server.posts) == 2
    (first_at, _, _), (second_at, content_type, body) = server.posts
    assert second_at - first_at >= 0.09  # the backoff
    assert content_type == "application/json"
    assert body == only(finished).sidecar_path.read_bytes()
    assert json.loads(body)["file"] == only(finished).path.name
    assert metrics.hooks.value(outcome="failed") == 1 and metrics.hooks.value(outcome="ok") == 1
    assert not journal.entries()


def _top_level_boxes(data: bytes) -> list[str]:
    boxes: list[str] = []
    offset = 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8].decode("latin-1")
        if size == 1:
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
        elif size == 0:
            size = len(data) - offset
        boxes.append(kind)
        offset += size
    return boxes


def test_remux_mp4_is_a_plain_faststart_copy(clip: Media, tmp_path: Path) -> None:
    out = tmp_path / "out"
    names = HookRunner.hooks_for(None, None, "mp4")
    assert names == ("remux",)
    journal = Journal(out, names)
    finished: list[FinishedRecording] = []
    stream(Recorder(out, on_finish=finished.append, journal=journal), clip.data, end=4.0)
    runner = HookRunner(journal, remux="mp4", backoff=0.01)
    runner.run_due()
    assert not journal.entries()
    source = only(finished).path
    remuxed = source.with_name(source.stem + ".remux.mp4")
    assert remuxed.is_file() and not list(out.rglob("*.tmp"))
    boxes = _top_level_boxes(remuxed.read_bytes())
    assert "moof" not in boxes and "mfra" not in boxes
    assert boxes.index("moov") < boxes.index("mdat")
    before, after = probe(source), probe(remuxed)
    assert abs(after.video_frames - before.video_frames) <= 1
    assert after.video_frames == clip.video_frames
    assert abs(after.duration_s - before.duration_s) <= 1 / before.fps + 1e-6
    assert after.audio_frames == before.audio_frames
    # Idempotent: a second run (a crash before the entry was removed) keeps the file.
    stamp = remuxed.stat().st_mtime_ns
    from meetstream_live.adapters.recording.remux import remux_mp4

    assert remux_mp4(source) == remuxed and remuxed.stat().st_mtime_ns == stamp


def test_remux_runs_before_the_command_and_holds_it_back(
    clip: Media, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    seen = tmp_path / "seen.txt"
    script = tmp_path / "hook.py"
    script.write_text(
        "import sys, pathlib\n"
        "media = pathlib.Path(sys.argv[1])\n"
        f"pathlib.Path({str(seen)!r}).write_text("
        "str(media.with_name(media.stem + '.remux.mp4').is_file()))\n"
    )
    journal = Journal(out, HookRunner.hooks_for("x", None, "mp4"))
    stream(Recorder(out, journal=journal), clip.data, end=4.0)
    from meetstream_live.adapters.recording import remux as remux_module

    real = remux_module.remux_mp4
    calls: list[str] = []

    def flaky(source: str) -> Path:
        calls.append(source)
        if len(calls) == 1:
            raise ValueError("first attempt fails")
        return real(source)

    monkeypatch.setattr(remux_module, "remux_mp4", flaky)
    runner = HookRunner(journal, command=f"'{sys.executable}' '{script}'", remux="mp4",
                        backoff=0.01)
    runner.run_due()
    assert not seen.exists()  # the command waits for the remux
    (entry,) = journal.entries()
    assert json.loads(entry.read_text())["pending"] == ["remux", "command"]
    time.sleep(0.02)
    runner.run_due()
    assert not journal.entries()
    assert seen.read_text() == "True"  # the command saw the remuxed file
    assert len(calls) == 2


def test_remux_needs_pyav_at_serve_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    code = main(["serve", "--output", str(tmp_path / "out"), "--port", "0", "--remux", "mp4",
                 "--disk-low", "0"])
    assert code == 2
    assert "PyAV" in capsys.readouterr().err


def test_recover_closes_a_session_manifest(clip: Media, tmp_path: Path) -> None:
    _, spans = fragment_spans(clip.data)
    handler = Recorder(tmp_path, buffer_size=1)(INFO)
    handler.on_start(start())
    send(handler, clip.data[: spans[4][0] + 1000])
    crash(handler)
    (manifest,) = tmp_path.rglob("*.session.json")
    assert json.loads(manifest.read_text())["state"] == "recording"
    (recording,) = recover(tmp_path)
    doc = json.loads(manifest.read_text())
    assert doc["state"] == "recovered"
    assert doc["recovered_parts"] == [recording.path.name]
    assert doc["verdict"] == "truncated"
    (part,) = doc["parts"]
    assert part["state"] == "recovered" and part["verdict"] == "truncated"
    assert part["end_reason"] == "crash" and part["fragments"] == recording.sidecar["fragments"]
    assert part["sidecar"] == recording.sidecar_path.name
    # A second run leaves it alone.
    assert recover(tmp_path) == []
    assert json.loads(manifest.read_text()) == doc
