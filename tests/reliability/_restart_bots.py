"""Bots for ``test_restart.py``: ``python _restart_bots.py URL MEDIA BOTS TAG SECONDS``.

Connects BOTS bots and prints ``streaming`` once all of them stream MEDIA (paced over
SECONDS, a ping every 8 chunks, each pong checked). When the receiver goes away (it is killed)
each bot reconnects with the same ``bot_id`` as a MeetStream bot does, retrying for 60 s,
and streams MEDIA again from its start, whole, then ends the stream and closes. Prints one JSON
line per bot: its connections, and the pings and pongs of the connection that finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

from meetstream_live import BotClosed, PongReceived
from meetstream_live.adapters import HandshakeFailed
from meetstream_live.adapters.asyncio import AsyncioBot

CHUNK = 16 * 1024


class Gone(Exception):
    """The receiver closed or dropped the connection."""


async def stop(reader: asyncio.Future[None]) -> None:
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError, Gone, OSError, ConnectionError):
        await reader


async def stream(bot: AsyncioBot, bot_id: str, media: bytes, seconds: float,
                 started: asyncio.Event | None) -> tuple[int, int]:
    """One connection: start, MEDIA paced over ``seconds``, end, close; (pings, pongs)."""
    pings = pongs = 0
    pause = seconds / max(1, len(media) // CHUNK)

    async def read() -> None:
        nonlocal pongs
        while True:
            event = await bot.next_event()
            if isinstance(event, BotClosed):
                raise Gone(event.code)
            if isinstance(event, PongReceived) and event.matched:
                pongs += 1

    reader = asyncio.ensure_future(read())
    try:
        await bot.send_start(bot_id)
        for n, i in enumerate(range(0, len(media), CHUNK)):
            if reader.done():
                reader.result()  # raises Gone
            await bot.send_chunk(media[i : i + CHUNK])
            if n % 8 == 0:
                await bot.send_ping(pings)
                pings += 1
            if started is not None and n == 1:
                started.set()
            await asyncio.sleep(pause)
        deadline = time.monotonic() + 10
        while pongs < pings and time.monotonic() < deadline and not reader.done():
            await asyncio.sleep(0.01)
        await stop(reader)
        await bot.send_end(1.0)
        closed = await bot.close()
        if closed.code != 1000:
            raise Gone(closed.code)
        return pings, pongs
    except (OSError, ConnectionError) as exc:
        raise Gone(repr(exc)) from exc
    finally:
        await stop(reader)


async def one(url: str, bot_id: str, media: bytes, seconds: float,
              started: asyncio.Event) -> dict[str, object]:
    connections = 0
    event: asyncio.Event | None = started
    give_up = None
    while True:
        try:
            bot = await AsyncioBot.connect(url, timeout=5)
        except (OSError, ConnectionError, TimeoutError, HandshakeFailed):
            give_up = give_up or time.monotonic() + 60
            if time.monotonic() > give_up:
                return {"bot_id": bot_id, "connections": connections, "error": "no reconnect"}
            await asyncio.sleep(0.2)
            continue
        connections += 1
        try:
            pings, pongs = await stream(bot, bot_id, media, seconds, event)
        except Gone:
            bot.abort()
            event = None
            give_up = time.monotonic() + 60
            await asyncio.sleep(0.1)
            continue
        return {"bot_id": bot_id, "connections": connections, "pings": pings, "pongs": pongs}


async def main() -> None:
    url, media_path, count, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    seconds = float(sys.argv[5])
    media = Path(media_path).read_bytes()
    starts = [asyncio.Event() for _ in range(count)]
    tasks = [asyncio.ensure_future(one(url, f"{tag}-{n}", media, seconds, starts[n]))
             for n in range(count)]
    await asyncio.gather(*(e.wait() for e in starts))
    print("streaming", flush=True)
    for result in await asyncio.gather(*tasks):
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
