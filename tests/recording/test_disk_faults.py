"""Issue 13, item 1: every write can fail, and the meeting goes on.

Each write site of the file sink (the media, its fsync and truncate, the stub, the sidecar,
the rename, the commit, the manifest, the hook journal) fails with ENOSPC, EDQUOT, EIO and
EROFS in turn, for one of two streams recorded at once (real fMP4). In every case: the
handler never raises (so the adapter never closes the connection with 1011, and it never
waits: pings are answered), the other stream is recorded whole, the error is counted and
logged once, and once the disk is back what is on disk is consistent and final: no ``.part``
left, no file without its sidecar, a sidecar that says what was lost and why.
"""

from __future__ import annotations

import errno
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from media import Media, decodable_frames, fragment_spans, frames_in_fragments

from meetstream_live import Disconnected, LatencyPing, MediaChunk, StreamEnded, StreamStarted
from meetstream_live.adapters import ConnectionInfo
from meetstream_live.adapters.recording import Recorder, RecordingHandler
from meetstream_live.adapters.recording.hooks import Journal
from meetstream_live.adapters.recording.metrics import Metrics

from .faults import FaultyDisk

ERRNOS = {"ENOSPC": errno.ENOSPC, "EDQUOT": errno.EDQUOT, "EIO": errno.EIO,
          "EROFS": errno.EROFS}
#: Where each site is met: while streaming, at the start of a part, or when it is finalized.
SITES = {
    "media_write": "stream",
    "truncate": "stream",
    "open": "start",
    "stub": "start",
    "fsync": "end",
    "sidecar": "end",
    "rename": "end",
    "commit": "end",
    "manifest": "end",
    "journal": "end",
}
INFO = ConnectionInfo("127.0.0.1:5555", "/", "", (), False)
T0 = 1_795_615_502_123


def start(bot_id: str) -> StreamStarted:
    return StreamStarted(bot_id=bot_id, raw={"type": "video_stream_start", "bot_id": bot_id})


def send(handler: RecordingHandler, data: bytes, base: int, size: int = 8_000) -> None:
    for offset in range(0, len(data), size):
        handler.dispatch([MediaChunk(data[offset : offset + size], base + offset)])
        handler.dispatch([LatencyPing(offset, T0, T0, "x")])


def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def sidecar(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.with_suffix(".json").read_text())
    return document


class Run:
    """Two bots, ``faulty`` and ``other``, recorded by one recorder on a :class:`FaultyDisk`
    whose faults hit the ``faulty`` bot's files (the journal is shared)."""

    def __init__(self, root: Path, *, buffer_size: int = 16 * 1024) -> None:
        self.root = root
        self.disk = FaultyDisk()
        self.metrics = Metrics()
        self.journal = Journal(root, ("command",), disk=self.disk)
        self.recorder = Recorder(root, metrics=self.metrics, disk=self.disk,
                                 journal=self.journal, buffer_size=buffer_size,
                                 retry_interval=0.05)
        self.faulty = self.recorder(INFO)
        self.other = self.recorder(INFO)

    def start(self) -> None:
        self.faulty.dispatch([start("faulty")])
        self.other.dispatch([start("other")])

    def send(self, data: bytes, base: int) -> None:
        send(self.faulty, data, base)
        send(self.other, data, base)

    def end(self) -> None:
        for handler in (self.faulty, self.other):
            handler.dispatch([StreamEnded(6.0)])
            handler.dispatch([Disconnected(1000, "", True)])

    def media(self, bot: str) -> Path:
        (path,) = (self.root / bot).glob("*.mp4")
        return path

    def settled(self) -> bool:
        return not list(self.root.rglob("*.part")) and not self.recorder.files.finalizer.pending()


@pytest.mark.parametrize("code", list(ERRNOS), ids=list(ERRNOS))
@pytest.mark.parametrize("site", list(SITES), ids=list(SITES))
def test_a_failing_write_site(
    site: str, code: str, fmp4_medium: Media, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "meetstream_live.recorder")
    data = fmp4_medium.data
    run = Run(tmp_path)
    run.disk.only = None if site == "journal" else f"{tmp_path}/faulty/"
    when = SITES[site]
    if when == "start":
        run.disk.fail(site, ERRNOS[code])
    run.start()
    cut = len(data) * 2 // 5
    run.send(data[:cut], 0)
    assert run.recorder.flush()
    if when == "stream":
        run.disk.fail(site, ERRNOS[code])
    if site == "truncate":  # met when a write fails half way: the cut back fails too
        run.disk.budget = 20_000
    if when == "start":
        run.disk.heal()
        time.sleep(0.1)  # EIO and EROFS are retried after retry_interval (0.05 s)
    run.send(data[cut:], cut)
    if when == "end":
        run.disk.fail(site, ERRNOS[code])
        run.end()  # the end waits for the files: here they wait for the disk
        assert run.recorder.flush()
        if site in ("sidecar", "rename", "commit", "journal"):
            assert run.recorder.files.finalizer.pending()  # not final: waits for the disk
            assert list((tmp_path / "faulty").glob("*.part"))  # what recover() would finish
            assert not list((tmp_path / "faulty").glob("*.mp4")) or site == "commit"
    assert run.recorder.flush()
    run.disk.heal()
    run.disk.budget = None
    if when != "end":
        run.end()
    until(run.settled)
    run.recorder.close()

    # The other bot is untouched (it shares the journal only: finalized once the disk is back).
    other = run.media("other")
    assert other.read_bytes() == data
    assert sidecar(other)["verdict"] == "complete"
    # Counted, by errno and by site; logged once for the stream.
    assert run.metrics.errors.value("disk") >= 1
    assert run.metrics.disk_errors.value(code) >= 1
    assert run.metrics.disk_error_sites.value(site) >= 1
    if site != "journal":
        failures = [r for r in caplog.records if r.levelno >= logging.ERROR
                    and "faulty" in r.getMessage() and "failed" in r.getMessage()]
        assert len(failures) == 1, [r.getMessage() for r in failures]
    # Consistent and final on disk: the media and its sidecar, nothing else.
    faulty = run.media("faulty")
    names = sorted(p.name for p in (tmp_path / "faulty").iterdir())
    assert names == sorted([faulty.name, faulty.with_suffix(".json").name,
                            faulty.name.removesuffix(".mp4") + ".session.json"]), names
    doc = sidecar(faulty)
    body = faulty.read_bytes()
    assert doc["bytes"] == len(body) and doc["received_bytes"] == len(data)
    assert doc["disk_errors"] >= 1 or site in ("manifest", "journal", "rename", "commit")
    init_end, spans = fragment_spans(data)
    assert decodable_frames(body) > 0
    if site in ("media_write", "truncate"):
        # Cut at its last complete fragment before the failure; the rest is lost, and says so.
        ends = [a + b for a, b in spans]
        good = max(end for end in ends if end <= cut + (run.disk.budget is not None) * 20_000)
        assert body == data[:good]
        assert doc["lost_bytes"] == len(data) - good
        assert doc["lost_fragments"] == sum(1 for end in ends if end > good)
        (hole,) = doc["holes"]
        reason = "ENOSPC" if site == "truncate" else code  # the write, then the cut failed
        assert (hole["part_offset"], hole["reason"]) == (good, reason)
        assert doc["verdict"] == "truncated"
    elif site == "open":
        # No file until the disk took writes: then the init segment, and the stream from the
        # next fragment boundary on, so the file plays alone. The init segment is in the file,
        # so the hole (and what is lost) begins after it.
        (hole,) = doc["holes"]
        assert (hole["part_offset"], hole["file_offset"]) == (init_end, init_end)
        assert hole["reason"] == code
        assert doc["bytes"] + doc["lost_bytes"] == doc["received_bytes"]
        resumed = hole["resumed_at"]
        assert resumed in [a for a, _ in spans] or resumed == spans[-1][0] + spans[-1][1]
        assert body == data[:init_end] + data[resumed:]
        kept = [i for i, (a, _) in enumerate(spans) if a >= resumed]
        assert decodable_frames(body) == frames_in_fragments(data, kept)
        assert doc["verdict"] == "gaps"
    else:
        assert body == data  # nothing lost: only the finalizing waited
        assert doc["lost_bytes"] == 0
        kinds = [w["kind"] for w in doc["warnings"]]
        assert ("fsync_failed" in kinds) == (site == "fsync")
        assert doc["verdict"] == "complete"
    manifest = json.loads(next((tmp_path / "faulty").glob("*.session.json")).read_text())
    assert manifest["state"] == "finished" and manifest["parts"][0]["state"] == "finished"
    assert len(run.journal.entries()) == 2  # one per recording, however often retried


@pytest.mark.parametrize("code", list(ERRNOS), ids=list(ERRNOS))
def test_writing_resumes_at_the_next_fragment_once_the_disk_is_back(
    code: str, fmp4_medium: Media, tmp_path: Path
) -> None:
    data = fmp4_medium.data
    run = Run(tmp_path)
    run.disk.only = f"{tmp_path}/faulty/"
    run.start()
    _init_end, spans = fragment_spans(data)
    first, second = spans[3][0] + 1000, spans[7][0] + 500
    run.send(data[:first], 0)
    assert run.recorder.flush()
    run.disk.fail("media_write", ERRNOS[code])
    run.send(data[first:second], first)
    assert run.recorder.flush()
    run.disk.heal()
    time.sleep(0.1)  # EIO and EROFS are retried after retry_interval (0.05 s)
    run.send(data[second:], second)
    run.end()
    until(run.settled)
    run.recorder.close()
    faulty = run.media("faulty")
    doc = sidecar(faulty)
    (hole,) = doc["holes"]
    assert hole["part_offset"] == spans[3][0] and hole["reason"] == code
    assert hole["resumed_at"] == spans[8][0]  # the first boundary after the disk came back
    kept = [0, 1, 2, *range(8, len(spans))]
    tail = data[spans[-1][0] + spans[-1][1] :]
    assert faulty.read_bytes() == data[: spans[3][0]] + data[spans[8][0] :]
    assert decodable_frames(faulty.read_bytes()) == frames_in_fragments(data, kept)
    assert doc["lost_fragments"] == 5 and doc["lost_bytes"] == spans[8][0] - spans[3][0]
    assert doc["verdict"] == "gaps" and doc["completeness"]["dropped_fragments"] == 5
    assert "disk_resumed" in [w["kind"] for w in doc["warnings"]]
    assert tail == faulty.read_bytes()[len(faulty.read_bytes()) - len(tail) :]
    assert run.media("other").read_bytes() == data


def test_retention_failures_are_counted_and_skipped(tmp_path: Path) -> None:
    from meetstream_live.adapters.recording.diskguard import apply_retention

    for n in range(3):
        media = tmp_path / "bot" / f"{n}.mp4"
        media.parent.mkdir(exist_ok=True)
        media.write_bytes(b"x" * 1000)
        media.with_suffix(".json").write_text("{}")
    disk = FaultyDisk()
    disk.fail("retention", errno.EROFS)
    metrics = Metrics()
    assert apply_retention(tmp_path, max_total_bytes=0, disk=disk, metrics=metrics) == []
    assert metrics.disk_error_sites.value("retention") == 3
    assert len(list(tmp_path.rglob("*.mp4"))) == 3  # and every sidecar kept with its media
    disk.heal()
    assert len(apply_retention(tmp_path, max_total_bytes=0, disk=disk, metrics=metrics)) == 3
