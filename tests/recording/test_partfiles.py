"""``--path-template``: checked at start, rendered per session with the bot's strings made safe,
never outside the output directory; O_EXCL naming, rotation pieces and the default layout as
before."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from media import Media

from meetstream_live import Disconnected, MediaChunk, StreamEnded, StreamStarted
from meetstream_live.adapters import ConnectionInfo
from meetstream_live.adapters.recording import Recorder
from meetstream_live.adapters.recording.partfiles import PathTemplate

INFO = ConnectionInfo("('127.0.0.1', 5555)", "/", "", (), False)
DATED = "{bot_id}/{speaker}/{start:%Y/%m/%d}/{start:%H%M%S}.mp4"
NOW_MS = 1_735_812_000_000  # 2025-01-02T10:00:00Z


def record(recorder: Recorder, data: bytes, bot_id: str, speaker: str | None = None) -> None:
    handler = recorder(INFO)
    raw = {"type": "video_stream_start", "bot_id": bot_id}
    handler.on_start(StreamStarted(bot_id=bot_id, speaker_id=speaker, raw=raw))
    handler.on_chunk(MediaChunk(data, 0))
    handler.on_end(StreamEnded(2.0))
    handler.on_disconnect(Disconnected(1000, "", True))
    assert recorder.flush()


def test_the_template_places_each_recording(fmp4_small: Media, tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, path_template=DATED, clock=lambda: NOW_MS)
    record(recorder, fmp4_small.data, "bot-1", "alice")
    record(recorder, fmp4_small.data, "bot-1", "alice")  # the same second: numbered
    record(recorder, fmp4_small.data, "bot-2")  # no speaker: its folder is left out
    recorder.close()
    found = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.mp4"))
    assert found == ["bot-1/alice/2025/01/02/100000.mp4", "bot-1/alice/2025/01/02/100000_1.mp4",
                     "bot-2/2025/01/02/100000.mp4"]
    for media in tmp_path.rglob("*.mp4"):
        assert media.read_bytes() == fmp4_small.data
        assert json.loads(media.with_suffix(".json").read_text())["file"] == media.name


def test_hostile_values_stay_inside(fmp4_small: Media, tmp_path: Path) -> None:
    out = tmp_path / "out"
    recorder = Recorder(out, path_template="{bot_id}/{speaker_name}/{start}.mp4",
                        clock=lambda: NOW_MS)
    handler = recorder(INFO)
    handler.on_start(StreamStarted(bot_id="../../etc", speaker_name="/root/.ssh",
                                   raw={"type": "video_stream_start"}))
    handler.on_chunk(MediaChunk(fmp4_small.data, 0))
    handler.on_disconnect(Disconnected(1000, "", False))
    recorder.close()
    (media,) = out.rglob("*.mp4")
    assert media.relative_to(out).parts == ("_.._etc", "_root_.ssh", "20250102T100000Z.mp4")
    assert not list(tmp_path.glob("etc*"))


def test_rotation_numbers_the_pieces_of_a_templated_session(
    fmp4_small: Media, tmp_path: Path
) -> None:
    recorder = Recorder(tmp_path, path_template="{bot_id}/{start:%Y-%m-%d}/meeting.mp4",
                        rotate_every=0.5, clock=lambda: NOW_MS)
    record(recorder, fmp4_small.data, "bot")
    recorder.close()
    names = sorted(p.name for p in (tmp_path / "bot" / "2025-01-02").glob("*.mp4"))
    assert names[0] == "meeting_part001.mp4" and len(names) > 1
    assert (tmp_path / "bot" / "2025-01-02" / "meeting.session.json").is_file()


@pytest.mark.parametrize(("template", "message"), [
    ("/abs/{bot_id}.mp4", "must be relative"),
    ("../{bot_id}.mp4", "'..' are not allowed"),
    ("{bot_id}/../../x.mp4", "'..' are not allowed"),
    ("{bot_id}.mkv", "must end in .mp4"),
    ("{room}.mp4", "unknown field {room}"),
    ("{bot_id!r}.mp4", "no !r conversions"),
    ("{bot_id:>20}.mp4", "only {start} takes a format"),
    ("{bot_id}/{", "Single '{'"),
])
def test_a_wrong_template_is_refused(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("{", "\\{").replace("(", "\\(")):
        PathTemplate(template)


def test_serve_refuses_a_wrong_template_at_start_in_one_line(tmp_path: Path) -> None:
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "meetstream_live.adapters.cli", "serve", "--path-template",
         "../{bot_id}.mp4", "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2 and time.monotonic() - began < 30
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("meetstream-live: error: --path-template "
                           "($MEETSTREAM_LIVE_PATH_TEMPLATE): '../{bot_id}.mp4'")
