"""``serve --nats`` when NATS goes away in the middle of a meeting, against a real nats-server
stopped and started again (same port, same store): the bot's pings are all answered and its
recording is whole while the bus is down; what waited is published when it is back, in
order, and ``consume`` rebuilds the recording byte for byte; ``/metrics`` shows the backlog
while it lasts."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from media import Media, probe
from services import NatsServer, nats_server, require_module

from meetstream_live import PongReceived
from meetstream_live.adapters.asyncio import AsyncioBot

from .test_bus import SMALL, consume
from .test_serve import serving

CHUNK = 32 * 1024


@pytest.fixture
def nats() -> Iterator[NatsServer]:
    require_module("nats")
    with nats_server() as server:
        yield server


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        lines = r.read().decode().splitlines()
    return {name: float(value) for name, _, value in
            (line.partition(" ") for line in lines if line.startswith("meetstream_live_bus_"))}


def test_the_meeting_goes_on_while_nats_is_down(nats: NatsServer, tmp_path: Path,
                                                 fmp4_medium: Media) -> None:
    data = fmp4_medium.data
    output = tmp_path / "rec"
    argv = ("--port", "0", "--output", str(output), "--nats", nats.url, *SMALL)
    with serving(tmp_path, *argv) as (port, _log):

        async def bot() -> tuple[int, int, dict[str, float]]:
            client = await AsyncioBot.connect(f"ws://127.0.0.1:{port}/")
            await client.send_start("bus-down")
            chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
            third = len(chunks) // 3
            pongs = 0
            down: dict[str, float] = {}
            for n, chunk in enumerate(chunks):
                if n == third:
                    await asyncio.to_thread(nats.stop)
                await client.send_chunk(chunk)
                await client.send_ping(n)
                event = await client.next_event(timeout=5)
                assert isinstance(event, PongReceived) and event.seq == n
                pongs += 1
            await client.send_end(6.0)
            assert (await client.close()).code == 1000
            # The recording finishes while NATS is still down; its messages wait.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not list(output.rglob("*.mp4")):
                await asyncio.sleep(0.05)
            down = await asyncio.to_thread(scrape, port)
            return pongs, len(chunks), down

        pongs, chunks, down = asyncio.run(bot())
        assert pongs == chunks  # every ping answered, the bus down or not
        (media,) = output.rglob("*.mp4")
        assert media.read_bytes() == data  # the local recording is whole
        assert down["meetstream_live_bus_connected"] == 0.0
        assert down["meetstream_live_bus_pending_messages"] > 0
        assert down["meetstream_live_bus_lag_seconds"] > 0
        nats.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            up = scrape(port)
            if up["meetstream_live_bus_pending_messages"] == 0:
                break
            time.sleep(0.1)
        assert up["meetstream_live_bus_pending_messages"] == 0
        assert up["meetstream_live_bus_dropped_messages_total"] == 0
        assert up["meetstream_live_bus_connected"] == 1.0
    out = tmp_path / "from-bus.mp4"
    done = consume(nats.url, "--bot", "bus-down", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == data
    assert probe(out).video_frames == fmp4_medium.video_frames
