"""The receiver a Python user would write on the ``websockets`` library, the plain way the
MeetStream protocol document describes: one file per stream, chunks appended in order, every
``video_latency_ping`` answered with a ``video_latency_pong``. A peer for the benchmarks only.

    WS_HOST=127.0.0.1 WS_PORT=9876 OUTPUT_DIR=/tmp/rec python websockets_receiver.py
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import IO

from websockets.asyncio.server import ServerConnection, serve

HOST = os.environ.get("WS_HOST", "127.0.0.1")
PORT = int(os.environ.get("WS_PORT", "9876"))
OUTPUT_DIR = Path(os.environ.get("OUTPUT_DIR", "recordings"))


async def receive(websocket: ServerConnection) -> None:
    output: IO[bytes] | None = None
    bot_id = "bot"
    try:
        async for message in websocket:
            if isinstance(message, bytes):
                if output is not None:
                    output.write(message)
                continue
            try:
                document = json.loads(message)
            except ValueError:
                continue
            kind = document.get("type") if isinstance(document, dict) else None
            if kind == "video_stream_start":
                if output is not None:
                    output.close()
                bot_id = str(document.get("bot_id", "unknown"))
                output = open(OUTPUT_DIR / f"{bot_id}_{int(time.time() * 1000)}.mp4", "wb")  # noqa: SIM115
            elif kind == "video_latency_ping":
                await websocket.send(json.dumps({
                    "type": "video_latency_pong",
                    "seq": document.get("seq"),
                    "sent_at_ms": document.get("sent_at_ms"),
                    "server_received_at_ms": int(time.time() * 1000),
                    "bot_id": document.get("bot_id", bot_id),
                }))
            elif kind == "video_stream_end" and output is not None:
                output.close()
                output = None
    finally:
        if output is not None:
            output.close()


async def main() -> None:
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set_result, None)
    async with serve(receive, HOST, PORT):
        print(f"listening on ws://{HOST}:{PORT}/", flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main())
