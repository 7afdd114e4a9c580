"""A session the receiver was recording when it died goes on after the restart: ``recover``
closes it, :func:`resumable_sessions` finds it, and the bot's reconnect (within the grace
window, counted from the new recorder's start) continues it as the next numbered part, in the
same directory and manifest, instead of starting a new session."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from media import Media, decodable_frames

from meetstream_live.adapters.recording import Recorder, recover
from meetstream_live.adapters.recording.recovery import resumable_sessions
from recording.test_recorder import INFO, Clock, chunks, crash, fragments, record, start

HOUR_MS = 3_600_000


def crashed(root: Path, data: bytes, bot_id: str = "bot-1", speaker: str = "s1") -> int:
    """A stream of ``bot_id`` cut by a crash in the middle of its fifth fragment, recovered;
    returns the bytes recovery kept."""
    handler = Recorder(root, clock=Clock(), buffer_size=1)(INFO)
    handler.on_start(start(bot_id, speaker_id=speaker))
    frags = fragments(data)
    for chunk in chunks(data[: frags[4].offset + frags[4].size // 2], 4096):
        handler.on_chunk(chunk)
    crash(handler)
    (done,) = recover(root)
    return done.sidecar["bytes"]


def manifests(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text("utf-8")) for p in sorted(root.rglob("*.session.json"))]


def test_a_reconnect_after_a_restart_continues_the_session(
    fmp4_medium: Media, tmp_path: Path
) -> None:
    kept = crashed(tmp_path, fmp4_medium.data)
    resumable = resumable_sessions(tmp_path, within=60)
    assert list(resumable) == [("bot-1", "s1")]
    assert resumable[("bot-1", "s1")].next_number == 2

    recorder = Recorder(tmp_path, reconnect_grace=60, resumable=resumable)
    record(recorder(INFO), fmp4_medium.data, bot_id="bot-1", speaker_id="s1")
    recorder.close()

    (manifest,) = manifests(tmp_path)  # one session, not two
    assert [p["part"] for p in manifest["parts"]] == [1, 2]
    first, second = manifest["parts"]
    assert first["state"] == "recovered" and first["end_reason"] == "crash"
    assert second["state"] == "finished" and second["started_by"] == "reconnect"
    assert manifest["state"] == "finished" and manifest["connections"] == 2
    (directory,) = {p.parent for p in tmp_path.rglob("*.mp4")}
    one, two = (directory / first["file"]), (directory / second["file"])
    assert two.name == one.name.replace(".mp4", "_part002.mp4")
    assert one.stat().st_size == kept
    assert two.read_bytes() == fmp4_medium.data
    assert decodable_frames(two.read_bytes()) > 0
    doc = json.loads(two.with_suffix(".json").read_text("utf-8"))
    assert doc["part"] == 2 and doc["started_by"] == "reconnect"
    assert not list(tmp_path.rglob("*.part"))


def test_only_once_and_only_the_bot_it_belongs_to(fmp4_small: Media, tmp_path: Path) -> None:
    crashed(tmp_path, fmp4_small.data * 3)
    recorder = Recorder(tmp_path, reconnect_grace=60,
                        resumable=resumable_sessions(tmp_path, within=60))
    record(recorder(INFO), fmp4_small.data, bot_id="another", speaker_id="s1")
    record(recorder(INFO), fmp4_small.data, bot_id="bot-1", speaker_id="s2")
    record(recorder(INFO), fmp4_small.data, bot_id="bot-1", speaker_id="s1")  # continues
    record(recorder(INFO), fmp4_small.data, bot_id="bot-1", speaker_id="s1")  # a new session
    recorder.close()
    parts = sorted((m["bot_id"], m["speaker"], len(m["parts"])) for m in manifests(tmp_path))
    assert parts == [("another", "s1", 1), ("bot-1", "s1", 1), ("bot-1", "s1", 2),
                     ("bot-1", "s2", 1)]


def test_the_grace_counts_from_the_recorder_start(fmp4_small: Media, tmp_path: Path) -> None:
    crashed(tmp_path, fmp4_small.data * 3)
    recorder = Recorder(tmp_path, reconnect_grace=0.05,
                        resumable=resumable_sessions(tmp_path, within=60))
    time.sleep(0.1)
    record(recorder(INFO), fmp4_small.data, bot_id="bot-1", speaker_id="s1")
    recorder.close()
    assert sorted(len(m["parts"]) for m in manifests(tmp_path)) == [1, 1]


def test_what_is_not_resumable(fmp4_small: Media, tmp_path: Path) -> None:
    recorder = Recorder(tmp_path)
    record(recorder(INFO), fmp4_small.data, bot_id="ended", speaker_id="s1")
    recorder.close()
    crashed(tmp_path, fmp4_small.data * 3)
    assert list(resumable_sessions(tmp_path, within=60)) == [("bot-1", "s1")]
    assert resumable_sessions(tmp_path, within=0) == {}  # no grace: nothing continues
    an_hour_on = time.time_ns() // 1_000_000 + HOUR_MS
    assert resumable_sessions(tmp_path, within=60, clock=lambda: an_hour_on) == {}


def test_a_resumed_session_that_went_on_elsewhere_numbers_after_it(
    fmp4_small: Media, tmp_path: Path
) -> None:
    """A fleet: the receiver died, its bot's reconnect went to another receiver, which
    continued the session as part 2 (its lease says so); the bot now comes back to the
    restarted receiver within the grace: it continues its recovered session as part 3, not
    as a second part 2."""
    from meetstream_live.adapters.recording.partfiles import Continued

    crashed(tmp_path, fmp4_small.data * 3)
    resumable = resumable_sessions(tmp_path, within=60)
    started = resumable[("bot-1", "s1")].started_ms
    asked = []

    def lease(key: tuple[str, str]) -> Continued | None:
        asked.append(key)
        return Continued(started, 3, 2) if key == ("bot-1", "s1") else None

    recorder = Recorder(tmp_path, reconnect_grace=60, resumable=resumable,
                        continue_from=lease)
    record(recorder(INFO), fmp4_small.data, bot_id="bot-1", speaker_id="s1")
    recorder.close()
    assert asked == [("bot-1", "s1")]
    (manifest,) = manifests(tmp_path)
    assert [p["part"] for p in manifest["parts"]] == [1, 3]
    assert manifest["connections"] == 3
    doc = json.loads((tmp_path / "bot-1" / "s1" / manifest["parts"][1]["sidecar"]).read_text())
    assert doc["part"] == 3 and doc["started_by"] == "reconnect"


def test_a_resumed_session_ignores_the_lease_of_another_session(
    fmp4_small: Media, tmp_path: Path
) -> None:
    from meetstream_live.adapters.recording.partfiles import Continued

    crashed(tmp_path, fmp4_small.data * 3)
    resumable = resumable_sessions(tmp_path, within=60)
    recorder = Recorder(tmp_path, reconnect_grace=60, resumable=resumable,
                        continue_from=lambda key: Continued(1, 7, 4))  # an older session's
    record(recorder(INFO), fmp4_small.data, bot_id="bot-1", speaker_id="s1")
    recorder.close()
    (manifest,) = manifests(tmp_path)
    assert [p["part"] for p in manifest["parts"]] == [1, 2]


def test_a_resumed_session_that_ended_elsewhere_is_not_resumed(
    fmp4_small: Media, tmp_path: Path
) -> None:
    """The bus says no receiver has the session (its lease is gone: another receiver
    continued it and ended it): the bot's new connection to the restarted receiver is a new
    session, not a second part 2 of the old one."""
    from meetstream_live.adapters.recording.partfiles import NO_SESSION

    crashed(tmp_path, fmp4_small.data * 3)
    resumable = resumable_sessions(tmp_path, within=60)
    recorder = Recorder(tmp_path, reconnect_grace=60, resumable=resumable,
                        continue_from=lambda key: NO_SESSION)
    record(recorder(INFO), fmp4_small.data, bot_id="bot-1", speaker_id="s1")
    recorder.close()
    assert sorted(len(m["parts"]) for m in manifests(tmp_path)) == [1, 1]  # two sessions
