"""Soak: many bots at 4 Mbit/s for a long time, with random disconnects and reconnects.

Each bot streams the test clip over and over (so the receiver can check every byte against it
without keeping any), pings twice a second, and now and then vanishes (a TCP reset or a plain
close, in the middle of anything) and reconnects with the same bot_id. At the end:

* zero bytes lost: for every connection that was not cut, bytes received == bytes sent, and
  they are the right bytes; for every cut one, what was received is a prefix of what was sent;
* memory flat: the process RSS at the end is within 10 % of the RSS after warm-up;
* every ping answered on every connection that was not cut.

``test_soak_short`` runs in CI (20 bots, a few seconds per adapter). ``test_soak`` is the real
one (``make soak``: 200 bots for 10 minutes per adapter; ``SOAK_BOTS``, ``SOAK_SECONDS`` and
``-k`` to change that).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from conformance.servers import running_server

from meetstream_live import BotClosed, Disconnected, MediaChunk, PongReceived
from meetstream_live.adapters import ConnectionInfo, Handler, ServerOptions
from meetstream_live.adapters.asyncio import AsyncioBot

from ._wire import rss_bytes

RATE = 4_000_000 // 8  # 4 Mbit/s in bytes per second
CHUNK = 16 * 1024


@dataclass
class Received:
    """What the receiver saw on one connection (checked against the clip as it came)."""

    bytes: int = 0
    wrong: int = 0
    done: bool = False


class Checking(Handler):
    def __init__(self, media: bytes, record: Received) -> None:
        self.media = media
        self.record = record

    def on_chunk(self, event: MediaChunk) -> None:
        media, n = self.media, len(self.media)
        start = event.offset % n
        expected = (media[start:] + media * (1 + len(event.data) // n))[: len(event.data)]
        if event.offset != self.record.bytes or event.data != expected:
            self.record.wrong += 1
        self.record.bytes += len(event.data)

    def on_disconnect(self, event: Disconnected) -> None:
        self.record.done = True


@dataclass
class Sent:
    bytes: int = 0
    cut: bool = False
    pings: int = 0
    pongs: int = 0
    error: str | None = None


@dataclass
class Soak:
    media: bytes
    received: dict[str, Received] = field(default_factory=dict)
    sent: dict[str, Sent] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def factory(self, info: ConnectionInfo) -> Handler:
        record = Received()
        with self.lock:
            self.received[info.query] = record
        return Checking(self.media, record)


async def _connection(url: str, soak: Soak, tag: str, bot_id: str, rng: random.Random,
                      until: float) -> None:
    sent = soak.sent[tag] = Sent()
    try:
        bot = await AsyncioBot.connect(f"{url}?{tag}", timeout=30)
    except (OSError, TimeoutError, ConnectionError) as exc:
        sent.error = f"connect: {exc!r}"
        return

    async def read() -> None:
        while True:
            event = await bot.next_event()
            if isinstance(event, PongReceived) and event.matched:
                sent.pongs += 1
            elif isinstance(event, BotClosed):
                return

    reader = asyncio.create_task(read())
    media, n = soak.media, len(soak.media)
    session = min(until, time.monotonic() + rng.uniform(2.0, 8.0))
    vanish_at = time.monotonic() + rng.uniform(0.2, 6.0) if rng.random() < 0.3 else None
    began = time.monotonic()
    next_ping = began
    try:
        await bot.send_start(bot_id, codec="h264", container="fmp4")
        while time.monotonic() < session:
            if vanish_at is not None and time.monotonic() >= vanish_at:
                sent.cut = True
                if rng.random() < 0.5:  # mid-message, too: the first frame of a message
                    start = sent.bytes % n
                    piece = (media[start:] + media)[:1000]
                    await bot.send_chunk(piece, final=False)
                    sent.bytes += len(piece)
                bot.abort()
                return
            start = sent.bytes % n
            chunk = (media[start:] + media)[:CHUNK]
            await bot.send_chunk(chunk)
            sent.bytes += len(chunk)
            if time.monotonic() >= next_ping:
                await bot.send_ping(sent.pings)
                sent.pings += 1
                next_ping += 0.5
            # Pace at RATE, whatever the scheduling jitter.
            await asyncio.sleep(max(0.0, began + sent.bytes / RATE - time.monotonic()))
        deadline = time.monotonic() + 10
        while sent.pongs < sent.pings and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await bot.send_end(1.0)
        await bot.start_close(1000)
        await asyncio.wait_for(reader, 10)
    except (OSError, TimeoutError, ConnectionError) as exc:
        sent.error = repr(exc)
    finally:
        bot.abort()
        reader.cancel()


async def _bot(url: str, soak: Soak, n: int, until: float, seed: int) -> None:
    rng = random.Random(f"{seed}:{n}")
    await asyncio.sleep(rng.uniform(0, 1.0))  # not all at once
    attempt = 0
    while time.monotonic() < until:
        tag = f"bot={n}&attempt={attempt}"
        await _connection(url, soak, tag, f"soak-{n}", rng, until)
        attempt += 1


def run_soak(adapter: str, media: bytes, bots: int, seconds: float, tolerance: float) -> None:
    soak = Soak(media)
    options = ServerOptions(max_connections=bots * 2 + 10)
    samples: list[tuple[float, int]] = []
    with running_server(adapter, soak.factory, options, drain_timeout=30) as port:
        url = f"ws://127.0.0.1:{port}/"
        began = time.monotonic()
        until = began + seconds

        async def sample() -> None:
            while time.monotonic() < until:
                samples.append((time.monotonic() - began, rss_bytes()))
                await asyncio.sleep(min(1.0, seconds / 20))

        async def main() -> None:
            await asyncio.gather(sample(), *(_bot(url, soak, n, until, 1) for n in range(bots)))

        asyncio.run(main())
        deadline = time.monotonic() + 30
        while not all(r.done for r in soak.received.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        end_rss = rss_bytes()

    sent_total = sum(s.bytes for s in soak.sent.values())
    warm = [rss for at, rss in samples if at >= seconds / 4]
    warm_rss = warm[0] if warm else end_rss
    cut = [t for t, s in soak.sent.items() if s.cut]
    report = (f"{adapter}: {bots} bots x {seconds:.0f} s: {len(soak.sent)} connections "
              f"({len(cut)} cut), {sent_total / 1e6:.1f} MB sent "
              f"({sent_total * 8 / seconds / bots / 1e6:.2f} Mbit/s per bot), "
              f"{sum(s.pings for s in soak.sent.values())} pings; RSS after warm-up "
              f"{warm_rss / 2**20:.1f} MiB, at the end {end_rss / 2**20:.1f} MiB")
    print(report, file=sys.stderr)

    errors = {t: s.error for t, s in soak.sent.items() if s.error}
    assert not errors, errors
    for tag, sent in soak.sent.items():
        received = soak.received.get(tag)
        if received is None:  # cut before the handshake finished on the server side
            assert sent.cut and sent.bytes == 0, tag
            continue
        assert received.done, tag
        assert received.wrong == 0, (tag, received)
        if sent.cut:
            assert received.bytes <= sent.bytes, (tag, received, sent)
        else:
            assert received.bytes == sent.bytes, (tag, received, sent)
            assert sent.pongs == sent.pings, (tag, sent)
    assert len(cut) > 0 and len(soak.sent) > bots  # the faults happened
    assert abs(end_rss - warm_rss) <= max(tolerance * warm_rss, 0), report


def test_soak_short(adapter: str, fmp4_small: Any) -> None:
    """20 bots at 4 Mbit/s, with disconnects and reconnects; RSS within 10 % (plus 16 MiB of
    slack: a few seconds are too short for allocator noise to settle)."""
    media = bytes(fmp4_small.data)
    seconds = 5.0
    soak_tolerance = 0.10 + 16 * 2**20 / max(rss_bytes(), 1)
    run_soak(adapter, media, 20, seconds, soak_tolerance)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_soak(adapter: str, fmp4_small: Any) -> None:
    """``make soak``: 200 bots at 4 Mbit/s for 10 minutes (per adapter)."""
    bots = int(os.environ.get("SOAK_BOTS", "200"))
    seconds = float(os.environ.get("SOAK_SECONDS", "600"))
    run_soak(adapter, bytes(fmp4_small.data), bots, seconds, 0.10)
