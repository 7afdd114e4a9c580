"""A receiver as an ASGI application under uvicorn, with a custom handler: each stream's media
goes to a file of its own, and each latency ping's one-way latency is printed.

Usage: python handler_asgi.py PORT OUTDIR  (port 0 picks a free port; the first line printed
is the port). Serves until SIGINT or SIGTERM, then shuts down gracefully.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from media_to_files import MediaToFilesFactory

from meetstream_live.adapters import ServerOptions
from meetstream_live.adapters.asgi import RECOMMENDED_MAX_MESSAGE_SIZE, ASGIApp


class ReceiverServer(uvicorn.Server):
    """uvicorn, plus three things a receiver wants: print the port once listening; drain the
    streams before uvicorn closes the WebSockets itself (at once, with 1012); and, after SIGINT
    or SIGTERM, return normally instead of re-raising the signal once shut down."""

    def __init__(self, config: uvicorn.Config, receiver: ASGIApp) -> None:
        super().__init__(config)
        self.receiver = receiver

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(self.servers[0].sockets[0].getsockname()[1], flush=True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # New upgrades get 503; streams run on up to drain_timeout, the rest are closed with
        # 1001; returns once every handler has finished.
        await self.receiver.shutdown()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {signum: signal.signal(signum, self.handle_exit) for signum in signals}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} PORT OUTDIR")
    port, out_dir = int(sys.argv[1]), Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    # Handlers run in the app's handler threads, as with the asyncio adapter.
    receiver = ASGIApp(MediaToFilesFactory(out_dir), ServerOptions(drain_timeout=10.0))
    config = uvicorn.Config(
        receiver,
        host="127.0.0.1",
        port=port,
        # The WebSocket is uvicorn's: framing, message size, pings, TLS. wsproto, because the
        # default implementation logs a spurious error after each refused upgrade.
        ws="wsproto",
        ws_max_size=RECOMMENDED_MAX_MESSAGE_SIZE,  # 64 MiB: a keyframe can be over 16 MiB
        ws_per_message_deflate=False,  # video does not compress
        ws_ping_interval=20.0,  # no idle timeout here: pings find the dead bots
        ws_ping_timeout=20.0,
        lifespan="on",
        timeout_graceful_shutdown=5,
        log_level="warning",
    )
    ReceiverServer(config, receiver).run()


if __name__ == "__main__":
    main()
