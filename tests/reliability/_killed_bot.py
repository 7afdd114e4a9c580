"""A bot process for ``test_kill.py``: ``python _killed_bot.py URL MEDIA BOTS TAG``.

Connects BOTS bots, prints ``ready``, then streams MEDIA from each (4 KiB every 20 ms, a ping
now and then) until the test kills the process with SIGKILL.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from meetstream_live.adapters.asyncio import AsyncioBot


async def one(bot: AsyncioBot, bot_id: str, media: bytes) -> None:
    await bot.send_start(bot_id)
    for i in range(0, len(media), 4096):
        await bot.send_chunk(media[i : i + 4096])
        if i % (10 * 4096) == 0:
            await bot.send_ping(i)
        await asyncio.sleep(0.02)
    await bot.send_end(1.0)
    await asyncio.sleep(3600)  # killed before this ends


async def main() -> None:
    url, media_path, count, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    media = Path(media_path).read_bytes()
    bots = [await AsyncioBot.connect(url) for _ in range(count)]
    print("ready", flush=True)
    await asyncio.gather(*(one(bot, f"{tag}-{n}", media) for n, bot in enumerate(bots)))


if __name__ == "__main__":
    asyncio.run(main())
