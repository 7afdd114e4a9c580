"""The receiver a Python user would write on picows (Cython frame parser, frames handed to a
callback as views of its read buffer), the plain way its documentation shows: a
:class:`picows.WSListener` whose ``on_ws_frame`` writes each binary frame to the stream's
file and answers each ``video_latency_ping`` (picows answers WebSocket pings itself). A peer
for the benchmarks only: ``pip install 'meetstream-live[bench]'`` brings picows.

    WS_HOST=127.0.0.1 WS_PORT=9876 OUTPUT_DIR=/tmp/rec python picows_receiver.py
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import IO

from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

HOST = os.environ.get("WS_HOST", "127.0.0.1")
PORT = int(os.environ.get("WS_PORT", "9876"))
OUTPUT_DIR = Path(os.environ.get("OUTPUT_DIR", "recordings"))


class Receiver(WSListener):
    """One connection: one file per stream, chunks appended as they come."""

    def __init__(self) -> None:
        self.output: IO[bytes] | None = None
        self.bot_id = "bot"

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.BINARY:
            if self.output is not None:
                self.output.write(frame.get_payload_as_memoryview())
            return
        if kind == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
            return
        if kind != WSMsgType.TEXT:
            return
        try:
            document = json.loads(frame.get_payload_as_bytes())
        except ValueError:
            return
        message = document.get("type") if isinstance(document, dict) else None
        if message == "video_stream_start":
            self.close()
            self.bot_id = str(document.get("bot_id", "unknown"))
            path = OUTPUT_DIR / f"{self.bot_id}_{int(time.time() * 1000)}.mp4"
            self.output = open(path, "wb")  # noqa: SIM115 - closed at the end of the stream
        elif message == "video_latency_ping":
            transport.send(WSMsgType.TEXT, json.dumps({
                "type": "video_latency_pong",
                "seq": document.get("seq"),
                "sent_at_ms": document.get("sent_at_ms"),
                "server_received_at_ms": int(time.time() * 1000),
                "bot_id": document.get("bot_id", self.bot_id),
            }).encode())
        elif message == "video_stream_end":
            self.close()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.close()

    def close(self) -> None:
        if self.output is not None:
            self.output.close()
            self.output = None


def listener(request: WSUpgradeRequest) -> Receiver:
    return Receiver()


async def main() -> None:
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set_result, None)
    server = await ws_create_server(listener, HOST, PORT)
    print(f"listening on ws://{HOST}:{PORT}/", flush=True)
    await stop
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
