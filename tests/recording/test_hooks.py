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
    StartHookSink,
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
    assert metrics.hooks.value(outcome="failed") == 2


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


def _failing_entry(tmp_path: Path) -> tuple[Journal, Path]:
    journal = Journal(tmp_path, ("command",))
    journal.directory.mkdir()
    entry = journal.directory / "1-x.json"
    entry.write_text(json.dumps({"path": str(tmp_path / "r.mp4"),
                                 "sidecar_path": str(tmp_path / "r.json"),
                                 "pending": ["command"], "attempts": 0, "next_at": 0,
                                 "last_error": None}))
    return journal, entry


def test_a_hook_that_keeps_failing_goes_to_the_dead_letter_folder(tmp_path: Path) -> None:
    journal, entry = _failing_entry(tmp_path)
    metrics = Metrics()
    config = HookConfig(command=f"'{sys.executable}' -c 'raise SystemExit(3)'")
    runner = HookRunner(journal, config, metrics=metrics, backoff=0.0, max_attempts=3)
    for attempt in (1, 2):
        runner.run_due()
        assert json.loads(entry.read_text())["attempts"] == attempt
    runner.run_due()  # the third and last
    assert journal.entries() == []
    (dead,) = journal.dead_entries()
    document = json.loads(dead.read_text())
    assert document["dead_attempts"] == 3 and document["attempts"] == 0
    assert document["last_error"] == "command: exit status 3" and document["dead_at"]
    assert metrics.hooks_dead.value("command") == 1
    assert metrics.hooks.value(("command", "failed")) == 3
    assert 'meetstream_live_hooks_dead_letter 1.0' in metrics.render()
    # Moved back by hand, it gets fresh attempts (and goes through once the cause is fixed).
    dead.rename(entry)
    HookRunner(journal, HookConfig(command=f"'{sys.executable}' -c pass")).run_due()
    assert journal.entries() == [] and journal.dead_entries() == []


def test_retries_back_off_with_jitter(tmp_path: Path) -> None:
    journal, _ = _failing_entry(tmp_path)
    low = HookRunner(journal, HookConfig(), backoff=1.0, max_backoff=600, jitter=lambda: 0.0)
    high = HookRunner(journal, HookConfig(), backoff=1.0, max_backoff=600, jitter=lambda: 1.0)
    assert [low.delay(n) for n in (1, 2, 3, 11)] == [1.0, 2.0, 4.0, 600.0]
    assert [high.delay(n) for n in (1, 2, 3, 11)] == [1.5, 3.0, 6.0, 900.0]
    spread = {HookRunner(journal, HookConfig()).delay(4) for _ in range(50)}
    assert len(spread) > 40 and all(8.0 <= d <= 12.0 for d in spread)


def test_on_finish_gets_the_recording_in_its_environment(
    fmp4_small: Media, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    seen = tmp_path / "env.json"
    script = tmp_path / "hook.py"
    script.write_text("import json, os, pathlib, sys\n"
                      f"pathlib.Path({str(seen)!r}).write_text(json.dumps("
                      "{k: v for k, v in os.environ.items() if k.startswith('MEETSTREAM_')}))\n")
    config = HookConfig(command=f"'{sys.executable}' '{script}'", command_timeout=30)
    journal = Journal(out, config.names())
    recorder = Recorder(out, journal=journal)
    record(recorder, fmp4_small.data, "env-bot")
    recorder.close()
    HookRunner(journal, config).run_due()
    env = json.loads(seen.read_text())
    (media,) = out.rglob("*.mp4")
    sidecar = json.loads(media.with_suffix(".json").read_text())
    assert env["MEETSTREAM_EVENT"] == "finish"
    assert env["MEETSTREAM_BOT_ID"] == "env-bot"
    assert env["MEETSTREAM_FILE"] == str(media)
    assert env["MEETSTREAM_SIDECAR"] == str(media.with_suffix(".json"))
    assert float(env["MEETSTREAM_DURATION"]) == sidecar["media_duration_seconds"] > 0
    assert int(env["MEETSTREAM_BYTES"]) == len(fmp4_small.data)
    assert env["MEETSTREAM_VERDICT"] == "complete"
    assert (env["MEETSTREAM_PEER_HOST"], env["MEETSTREAM_PEER_PORT"]) == ("127.0.0.1", "5555")


def test_on_finish_timeout_is_a_failure(tmp_path: Path) -> None:
    journal, entry = _failing_entry(tmp_path)
    config = HookConfig(command=f"'{sys.executable}' -c 'import time; time.sleep(30)'",
                        command_timeout=0.2)
    began = time.monotonic()
    HookRunner(journal, config).run_due()
    assert time.monotonic() - began < 10
    assert "timed out after 0.2 s" in json.loads(entry.read_text())["last_error"]


def test_on_start_runs_once_per_part_with_its_file(fmp4_small: Media, tmp_path: Path) -> None:
    """(The file is there, as ``.mp4.part`` or, a stream this short being over already, as
    ``.mp4``.)"""
    out = tmp_path / "out"
    seen = tmp_path / "starts"
    script = tmp_path / "start.py"
    script.write_text("import os\n"
                      f"with open({str(seen)!r}, 'a') as f:\n"
                      "    f.write(os.environ['MEETSTREAM_BOT_ID'] + ' ' "
                      "+ os.environ['MEETSTREAM_FILE'] + ' '"
                      " + str(os.path.exists(os.environ['MEETSTREAM_PART_FILE'])"
                      " or os.path.exists(os.environ['MEETSTREAM_FILE'])) + '\\n')\n")
    metrics = Metrics()
    config = HookConfig(on_start=f"'{sys.executable}' '{script}'")
    recorder = Recorder(out, sinks=[StartHookSink(config, metrics)])
    record(recorder, fmp4_small.data, "first")
    record(recorder, fmp4_small.data, "second")
    recorder.close()
    lines = seen.read_text().splitlines()
    files = {p.parent.name: p for p in out.rglob("*.mp4")}
    assert sorted(lines) == sorted(f"{bot} {files[bot]} True" for bot in ("first", "second"))
    assert metrics.hooks.value(("on_start", "ok")) == 2


def test_a_failing_on_start_is_counted_and_the_recording_goes_on(
    fmp4_small: Media, tmp_path: Path
) -> None:
    metrics = Metrics()
    config = HookConfig(on_start=f"'{sys.executable}' -c 'raise SystemExit(1)'")
    recorder = Recorder(tmp_path, sinks=[StartHookSink(config, metrics)])
    record(recorder, fmp4_small.data)
    recorder.close()
    assert metrics.hooks.value(("on_start", "failed")) == 1
    (media,) = tmp_path.rglob("*.mp4")
    assert media.read_bytes() == fmp4_small.data
