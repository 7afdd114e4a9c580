"""docs/examples/bus_worker.py, the transcription-style worker of docs/bus.md, run against a
real nats-server: each part recorded through a bus sink is rebuilt and measured once, and a
worker started again goes on where its durable consumer was (the parts it did are not done
again)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from media import Media
from services import NatsServer, nats_server, require_module

from meetstream_live import Disconnected, MediaChunk, StreamEnded, StreamStarted
from meetstream_live.adapters import ConnectionInfo
from meetstream_live.adapters.recording import Recorder
from meetstream_live.adapters.recording.bus import BusConfig, BusSink, Publisher, StreamLimits

WORKER = Path(__file__).resolve().parents[2] / "docs" / "examples" / "bus_worker.py"
CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def nats() -> Iterator[NatsServer]:
    require_module("nats")
    with nats_server() as server:
        yield server


def record(root: Path, url: str, data: bytes, bot_ids: list[str]) -> None:
    publisher = Publisher(BusConfig(url, limits=StreamLimits(max_bytes=256 * 1024**2)))
    recorder = Recorder(root, sinks=[BusSink(publisher, pongs=False)])
    for bot_id in bot_ids:
        handler = recorder(ConnectionInfo("127.0.0.1:5000", "/", "", (), False))
        handler.on_start(StreamStarted(bot_id=bot_id,
                                       raw={"type": "video_stream_start", "bot_id": bot_id}))
        for offset in range(0, len(data), CHUNK):
            handler.on_chunk(MediaChunk(data[offset:offset + CHUNK], offset))
        handler.on_end(StreamEnded(1.0))
        handler.on_disconnect(Disconnected(1000, "", True))
    recorder.close()
    assert publisher.stats()["pending_messages"] == 0


def worker(url: str, parts: int) -> list[str]:
    done = subprocess.run([sys.executable, str(WORKER), url, "--once", str(parts)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return sorted(done.stdout.splitlines())


def test_the_worker_does_each_part_once(nats: NatsServer, tmp_path: Path,
                                        fmp4_small: Media) -> None:
    assert fmp4_small.audio_frames and fmp4_small.audio_sample_rate
    seconds = fmp4_small.audio_frames * 1024 / fmp4_small.audio_sample_rate
    line = f"part 1: {seconds:.2f} s of audio, complete"
    record(tmp_path / "a", nats.url, fmp4_small.data, ["bot-a", "bot-b"])
    assert worker(nats.url, 2) == [f"bot-a {line}", f"bot-b {line}"]
    record(tmp_path / "c", nats.url, fmp4_small.data, ["bot-c"])
    assert worker(nats.url, 1) == [f"bot-c {line}"]


def test_the_doc_shows_the_file() -> None:
    text = (WORKER.parents[1] / "bus.md").read_text()
    match = re.search(r"<!-- the block below is docs/examples/bus_worker\.py[^>]*-->\n"
                      r"```python\n(.*?)```\n", text, re.S)
    assert match, "docs/bus.md has no block for bus_worker.py"
    assert match.group(1) == WORKER.read_text()
