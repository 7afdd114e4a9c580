"""Bots for ``test_soak_serve.py``, in a process of their own, as production's are:
``python _soak_bots.py URL CLIP BIG FIRST COUNT SECONDS SEED OUT``.

Bots ``FIRST`` .. ``FIRST+COUNT-1`` (``soak-N``) stream for SECONDS, connection after
connection: each connection sends CLIP (real fMP4) from its start at 4 Mbit/s in 32 KiB
messages with a ping every 0.5 s, for 2-8 s (then ends the stream and closes: a prefix of the
clip), or vanishes now and then (a TCP reset, in the middle of a message, too) and reconnects
at once with the same ``bot_id``. One connection in twenty (bot FIRST's first, always) sends
BIG instead: its init segment, then its 16 MiB keyframe fragment as one message. Prints
``streaming`` when every bot has connected once; at the end writes one JSON object per
connection to OUT.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from meetstream_live import BotClosed, PongReceived
from meetstream_live.adapters import HandshakeFailed
from meetstream_live.adapters.asyncio import AsyncioBot
from meetstream_live.fmp4 import Fmp4Scanner, InitSegment

RATE = 4_000_000 // 8
CHUNK = 32 * 1024


def init_end(data: bytes) -> int:
    for event in Fmp4Scanner().feed(data):
        if isinstance(event, InitSegment):
            return event.offset + event.size
    raise ValueError("no init segment")


async def connection(url: str, bot_id: str, clip: bytes, big: bytes | None,
                     rng: random.Random, until: float, record: dict[str, Any]) -> None:
    try:
        bot = await AsyncioBot.connect(url, timeout=30)
    except (OSError, TimeoutError, ConnectionError, HandshakeFailed) as exc:
        record["error"] = f"connect: {exc!r}"
        return
    sent = pings = pongs = 0
    closed: list[int] = []

    async def read() -> None:
        nonlocal pongs
        while True:
            event = await bot.next_event()
            if isinstance(event, PongReceived) and event.matched:
                pongs += 1
            elif isinstance(event, BotClosed):
                closed.append(event.code)
                return

    reader = asyncio.ensure_future(read())
    began = time.monotonic()
    stop = min(until, began + rng.uniform(2.0, 8.0))
    vanish = began + rng.uniform(0.2, 6.0) if rng.random() < 0.3 else None
    messages: list[bytes]
    if big is not None:
        cut = init_end(big)
        messages = [big[:cut], big[cut:]]
        record["big"] = True
    else:
        messages = [clip[i : i + CHUNK] for i in range(0, len(clip), CHUNK)]
    next_ping = began
    try:
        await bot.send_start(bot_id, codec="h264", container="fmp4")
        for message in messages:
            now = time.monotonic()
            if now >= stop:
                break
            if vanish is not None and now >= vanish:
                record["cut"] = True
                if rng.random() < 0.5:  # in the middle of a message
                    await bot.send_chunk(message[:1000], final=False)
                    sent += min(1000, len(message))
                bot.abort()
                return
            await bot.send_chunk(message)
            sent += len(message)
            if time.monotonic() >= next_ping:
                await bot.send_ping(pings)
                pings += 1
                next_ping += 0.5
            if big is None:  # paced at RATE; the big one is a burst
                await asyncio.sleep(max(0.0, began + sent / RATE - time.monotonic()))
        deadline = time.monotonic() + 20
        while pongs < pings and time.monotonic() < deadline and not reader.done():
            await asyncio.sleep(0.01)
        await bot.send_end(1.0)
        await bot.start_close(1000)
        await asyncio.wait_for(reader, 20)
        record["close"] = closed[0] if closed else None
    except (OSError, TimeoutError, ConnectionError) as exc:
        record["error"] = repr(exc)
    finally:
        record.update(bytes=sent, pings=pings, pongs=pongs)
        bot.abort()
        reader.cancel()


async def one(url: str, n: int, first: bool, clip: bytes, big: bytes, until: float,
              seed: int, records: list[dict[str, Any]], started: asyncio.Event) -> None:
    rng = random.Random(f"{seed}:{n}")
    await asyncio.sleep(rng.uniform(0, 1.0))  # not all at once
    attempt = 0
    while time.monotonic() < until:
        record: dict[str, Any] = {"bot_id": f"soak-{n}", "attempt": attempt, "cut": False,
                                  "big": False}
        records.append(record)
        heavy = (attempt == 0 and first) or (attempt > 0 and rng.random() < 0.05)
        task = asyncio.ensure_future(connection(url, f"soak-{n}", clip, big if heavy else None,
                                                rng, until, record))
        if attempt == 0:
            await asyncio.sleep(0.3)
            started.set()
        await task
        attempt += 1


async def main() -> None:
    url, clip_path, big_path = sys.argv[1], sys.argv[2], sys.argv[3]
    first, count, seconds = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
    seed, out = int(sys.argv[7]), Path(sys.argv[8])
    clip, big = Path(clip_path).read_bytes(), Path(big_path).read_bytes()
    until = time.monotonic() + seconds
    records: list[dict[str, Any]] = []
    events = [asyncio.Event() for _ in range(count)]
    tasks = [asyncio.ensure_future(one(url, first + i, i == 0, clip, big, until, seed, records,
                                       events[i])) for i in range(count)]
    await asyncio.gather(*(e.wait() for e in events))
    print("streaming", flush=True)
    await asyncio.gather(*tasks)
    out.write_text("\n".join(json.dumps(r) for r in records) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
