"""Hooks as sinks: one registry of hook kinds, a journal entry per recording, entries that
wait for their recording to be committed, and ``on_finish`` in its own failure domain."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from media import Media

from meetstream_live import Disconnected, MediaChunk, StreamEnded, StreamStarted
from meetstream_live.adapters import ConnectionInfo
from meetstream_live.adapters.recording import FinishedRecording, Recorder
from meetstream_live.adapters.recording.hooks import (
    HOOK_KINDS,
    HookConfig,
    HookRunner,
    HookSink,
    Journal,
)
from meetstream_live.adapters.recording.metrics import Metrics

INFO = ConnectionInfo("127.0.0.1:5555", "/", "", (), False)


def record(recorder: Recorder, data: bytes, bot_id: str = "bot") -> None:
    handler = recorder(INFO)
    handler.on_start(StreamStarted(bot_id=bot_id, raw={"type": "video_stream_start",
                                                       "bot_id": bot_id}))
    for offset in range(0, len(data), 10_000):
        handler.on_chunk(MediaChunk(data[offset : offset + 10_000], offset))
    handler.on_end(StreamEnded(2.0))
    handler.on_disconnect(Disconnected(1000, "", True))


def test_one_registry_of_hook_kinds() -> None:
    assert list(HOOK_KINDS) == ["remux", "command", "webhook"]  # the order they run in
    assert [k.option for k in HOOK_KINDS.values()] == ["--remux", "--on-finish", "--webhook"]
    assert [k.name for k in HOOK_KINDS.values() if k.gate] == ["remux"]
    assert HookConfig().names() == ()
    assert HookConfig(webhook="http://x", remux="mp4").names() == ("remux", "webhook")
    assert HookRunner.hooks_for("cmd", None, "mp4") == ("remux", "command")
    with pytest.raises(ValueError, match="remux"):
        HookRunner(Journal("/tmp", ()), HookConfig(remux="mkv"))


def test_an_unknown_or_unconfigured_hook_is_a_failure_kept_for_later(tmp_path: Path) -> None:
    journal = Journal(tmp_path, ("command",))
    journal.directory.mkdir()
    entry = journal.directory / "1-x.json"
    entry.write_text(json.dumps({"path": "/nope.mp4", "sidecar_path": "/nope.json",
                                 "pending": ["teleport", "webhook"], "attempts": 0,
                                 "next_at": 0, "last_error": None}))
    metrics = Metrics()
    HookRunner(journal, HookConfig(), metrics=metrics, backoff=0.01).run_due()
    kept = json.loads(entry.read_text())
    assert kept["pending"] == ["teleport", "webhook"] and kept["attempts"] == 1
    assert "unknown hook" in kept["last_error"] or "no --webhook" in kept["last_error"]
    assert metrics.hooks.value("failed") == 2


def test_a_recording_is_journaled_once_and_run_only_once_committed(
    fmp4_small: Media, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    journal = Journal(out, ("command",))
    recorder = Recorder(out, journal=journal)
    record(recorder, fmp4_small.data)
    recorder.close()
    (entry,) = journal.entries()
    document = json.loads(entry.read_text())
    (media,) = out.rglob("*.mp4")
    recording = FinishedRecording(media, media.with_suffix(".json"),
                                  json.loads(media.with_suffix(".json").read_text()))
    assert journal.add(recording) == entry  # again (a retry, a recovery): the same entry
    assert journal.entries() == [entry] and document["path"] == str(media)
    # An entry whose recording still has its .json.part is not run.
    log = tmp_path / "ran"
    script = tmp_path / "hook.py"
    script.write_text(f"import pathlib; pathlib.Path({str(log)!r}).write_text('ran')\n")
    stub = Path(str(media.with_suffix(".json")) + ".part")
    stub.write_text("{}")
    runner = HookRunner(journal, HookConfig(command=f"'{sys.executable}' '{script}'"))
    assert runner.run_due() <= HookRunner.UNCOMMITTED_WAIT
    assert not log.exists() and journal.entries() == [entry]
    stub.unlink()
    runner.run_due()
    assert log.read_text() == "ran" and journal.entries() == []


def test_the_hook_sink_wakes_the_runner(fmp4_small: Media, tmp_path: Path) -> None:
    out = tmp_path / "out"
    log = tmp_path / "ran"
    script = tmp_path / "hook.py"
    script.write_text(f"import pathlib, sys; pathlib.Path({str(log)!r}).write_text(sys.argv[1])\n")
    config = HookConfig(command=f"'{sys.executable}' '{script}'")
    journal = Journal(out, config.names())
    runner = HookRunner(journal, config)
    runner.start()
    try:
        recorder = Recorder(out, journal=journal, sinks=[HookSink(runner)])
        record(recorder, fmp4_small.data)
        recorder.close()
        deadline = time.monotonic() + 10
        while not log.exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        runner.close()
    (media,) = out.rglob("*.mp4")
    assert log.read_text() == str(media)
    report = json.loads(media.with_suffix(".json").read_text())["sinks"]
    assert report["hooks"]["state"] == "ok"


def test_a_failing_on_finish_is_its_own_failure(fmp4_small: Media, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    def on_finish(recording: FinishedRecording) -> Any:
        seen.append(recording.sidecar["bot_id"])
        if len(seen) == 1:
            raise RuntimeError("the callback broke")

    recorder = Recorder(tmp_path, on_finish=on_finish)
    record(recorder, fmp4_small.data, "first")
    record(recorder, fmp4_small.data, "second")
    recorder.close()
    assert seen == ["first", "second"]  # the second one came all the same
    (stats,) = [s for s in recorder.sinks.stats() if s.name == "on_finish"]
    assert stats.errors == 1
    assert "the callback broke" in caplog.text
    assert len(list(tmp_path.rglob("*.mp4"))) == 2  # the files do not care
