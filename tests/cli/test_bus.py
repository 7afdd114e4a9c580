"""``serve --nats`` and ``meetstream-live consume`` as operators run them, against a real
nats-server: a bot streams real fMP4 into serve, ``consume`` rebuilds the recording from the
bus byte for byte (PyAV decodes it), ``/metrics`` has the bus's numbers; a wrong URL or no
server stops the start with exit 2 and a clear message."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from media import Media, probe
from services import NatsServer, free_port, nats_server, require_module

from meetstream_live.adapters.asyncio import AsyncioBot
from meetstream_live.adapters.cli import main

from .test_serve import serving

CLI = [sys.executable, "-m", "meetstream_live.adapters.cli"]
#: The test server's JetStream has 4 GB of file store: the 10 GiB default does not fit.
SMALL = ("--nats-max-bytes", "512m")


@pytest.fixture(scope="module")
def nats() -> Iterator[NatsServer]:
    require_module("nats")
    with nats_server(max_payload=128 * 1024) as server:
        yield server


def stream(port: int, bot_id: str, data: bytes, pings: int = 0) -> None:
    async def bot() -> None:
        client = await AsyncioBot.connect(f"ws://127.0.0.1:{port}/")
        await client.send_start(bot_id)
        for n, i in enumerate(range(0, len(data), 32 * 1024)):
            await client.send_chunk(data[i:i + 32 * 1024])
            if n < pings:
                await client.send_ping(n)
        await client.send_end(6.0)
        assert (await client.close()).code == 1000

    asyncio.run(bot())


def consume(url: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "consume", url, *argv], capture_output=True, text=True,
                          timeout=60, check=False)


def test_serve_publishes_and_consume_rebuilds_the_recording(
        nats: NatsServer, tmp_path: Path, fmp4_medium: Media) -> None:
    output = tmp_path / "rec"
    argv = ("--port", "0", "--output", str(output), "--nats", nats.url, *SMALL)
    with serving(tmp_path, *argv) as (port, log):
        stream(port, "cli bot/1", fmp4_medium.data, pings=3)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not list(output.rglob("*.mp4")):
            time.sleep(0.05)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                metrics = r.read().decode()
            if "meetstream_live_bus_pending_messages 0.0" in metrics and \
                    "meetstream_live_bus_published_messages_total 0.0" not in metrics:
                break
            time.sleep(0.05)
    assert "meetstream_live_bus_connected 1.0" in metrics
    assert "meetstream_live_bus_dropped_messages_total 0.0" in metrics
    assert "meetstream_live_bus_split_messages_total" in metrics
    (media,) = output.rglob("*.mp4")
    out = tmp_path / "from-bus.mp4"
    done = consume(nats.url, "--bot", "cli bot/1", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "complete" in done.stdout and "INCOMPLETE" not in done.stdout
    assert out.read_bytes() == media.read_bytes()
    assert probe(out).video_frames == fmp4_medium.video_frames
    assert "publishing every stream to NATS at" in log.read_text()


def test_consume_of_a_stream_the_bus_does_not_have_exits_2(nats: NatsServer,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "none.mp4"
    done = consume(nats.url, "--bot", "never-streamed", "-o", str(out))
    assert done.returncode == 2
    assert "no part of bot 'never-streamed'" in done.stderr
    assert not out.exists()


@pytest.mark.parametrize(("url", "message"), [
    ("http://127.0.0.1:4222", "is not a nats://HOST:PORT (or tls://) URL"),
    ("nats://", "is not a nats://HOST:PORT"),
])
def test_a_wrong_url_exits_2(url: str, message: str, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--output", str(tmp_path), "--nats", url]) == 2
    assert message in capsys.readouterr().err


def test_no_server_stops_the_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_module("nats")
    url = f"nats://me:hunter2@127.0.0.1:{free_port()}"
    assert main(["serve", "--port", "0", "--output", str(tmp_path), "--nats", url]) == 2
    err = capsys.readouterr().err
    assert "--nats: NATS at nats://me:***@127.0.0.1" in err and "cannot connect" in err
    assert "hunter2" not in err and "Traceback" not in err
    done = consume(url, "--bot", "x", "-o", str(tmp_path / "x.mp4"))
    assert done.returncode == 2 and "cannot connect" in done.stderr
