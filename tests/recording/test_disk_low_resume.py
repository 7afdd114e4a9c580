"""Writing stops when the disk is low and resumes when space is back, at any point of a
fragment: what the file holds afterwards is exactly the init segment and the bytes from the
resume on (no run of zeros where the cut was: the write position follows the cut), and the
sidecar's accounts add up (``bytes + lost_bytes == received_bytes``, the init segment that
heads the file again is not counted lost). Found by the production soak
(``tests/reliability/test_soak_serve.py``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from media import decodable_frames, ffmpeg_exe

from meetstream_live import Disconnected, MediaChunk, StreamEnded
from meetstream_live.adapters.recording import Recorder
from recording.test_recorder import INFO, fragments, start


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """6 s at 4 Mbit/s, a fragment a second (about 500 KB each: written in several pieces)."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=6",
         "-vf", "noise=alls=40:allf=t", "-c:v", "libx264", "-preset", "ultrafast",
         "-pix_fmt", "yuv420p", "-g", "25", "-keyint_min", "25", "-sc_threshold", "0",
         "-bf", "0", "-b:v", "4M", "-maxrate", "4M", "-bufsize", "4M",
         "-movflags", "frag_keyframe+empty_moov+default_base_moof", "-f", "mp4", str(path)],
        check=True)
    return path.read_bytes()


class Guard:
    """A free-space guard the test switches."""

    low_now = False

    def low(self, writers: int) -> bool:
        return self.low_now

    def wrote(self, size: int) -> None:
        pass


@pytest.mark.parametrize("low_at", ["in the init", "early in fragment 1", "late in fragment 2"])
def test_writing_resumes_cleanly(clip: bytes, tmp_path: Path, low_at: str) -> None:
    frags = fragments(clip)
    cut = {"in the init": 100, "early in fragment 1": frags[0].offset + 300_000,
           "late in fragment 2": frags[1].offset + frags[1].size - 40_000}[low_at]
    back = frags[2].offset + 100_000  # the space comes back inside fragment 3
    end = frags[4].offset + frags[4].size // 2  # and the stream ends inside fragment 5
    guard = Guard()
    recorder = Recorder(tmp_path, disk_guard=guard)  # type: ignore[arg-type]
    handler = recorder(INFO)
    handler.on_start(start("bot"))
    for offset in range(0, end, 32 * 1024):
        if offset >= cut:
            guard.low_now = offset < back
        handler.on_chunk(MediaChunk(clip[offset : min(end, offset + 32 * 1024)], offset))
        assert recorder.flush()
    handler.on_end(StreamEnded(1.0))
    handler.on_disconnect(Disconnected(1000, "", True))
    recorder.close()

    (media,) = tmp_path.rglob("*.mp4")
    doc = json.loads(media.with_suffix(".json").read_text())
    body = media.read_bytes()
    (hole,) = doc["holes"]
    init = frags[0].offset
    resumed = hole["resumed_at"]
    assert resumed == frags[3].offset  # the first boundary after the space came back
    kept = clip[: max(init, hole["part_offset"])]
    assert body == kept + clip[resumed:end]  # the torn tail of fragment 5 stays, as always
    assert doc["bytes"] == len(body)
    assert doc["bytes"] + doc["lost_bytes"] == doc["received_bytes"] == end
    assert hole["part_offset"] >= init and hole["file_offset"] == len(kept)
    assert hole["bytes"] == resumed - hole["part_offset"] == doc["lost_bytes"]
    assert decodable_frames(body[: len(kept) + frags[3].size]) > 0  # up to the torn tail
