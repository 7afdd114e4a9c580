"""The custom handler that every adapter example in ``docs/adapters.md`` serves: each
stream's media goes to a file of its own, and each latency ping's one-way latency is printed.

The handler is the same whatever the adapter: only the few lines that start a server differ
(``handler_asyncio.py``, ``handler_sync.py``, ``handler_trio.py``, ``handler_asgi.py``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import BinaryIO

from meetstream_live import Disconnected, LatencyPing, MediaChunk, StreamEnded, StreamStarted
from meetstream_live.adapters import ConnectionInfo, Handler


class MediaToFiles(Handler):
    """One connection: each stream to a file of its own, each ping's latency to stdout.

    The adapter calls these methods one at a time, in wire order, in a thread where blocking is
    allowed (never on an event loop): plain file I/O is fine here.
    """

    def __init__(self, out_dir: Path, name: str, peer: str) -> None:
        self.out_dir = out_dir
        self.name = name  # unique per connection (bot_id comes from the bot: no file names)
        self.peer = peer
        self.streams = 0
        self.file: BinaryIO | None = None

    def on_start(self, event: StreamStarted) -> None:
        file = self._open()
        print(f"{self.name}: {event.bot_id!r} from {self.peer} -> {file.name}", flush=True)

    def on_chunk(self, event: MediaChunk) -> None:
        # No file: bytes that never had a video_stream_start, released as the connection ends.
        file = self.file if self.file is not None else self._open()
        file.write(event.data)

    def on_ping(self, event: LatencyPing) -> None:
        # The pong has already gone out. sent_at_ms is the bot's clock, received_at_ms ours:
        # the difference is only as good as the two clocks' synchronisation.
        if event.sent_at_ms is None:
            print(f"{self.name}: ping {event.seq} without sent_at_ms", flush=True)
            return
        latency = event.received_at_ms - event.sent_at_ms
        print(f"{self.name}: ping {event.seq}: one-way latency {latency:.0f} ms", flush=True)

    def on_end(self, event: StreamEnded) -> None:
        self._close()

    def on_disconnect(self, event: Disconnected) -> None:
        self._close()  # always called last: after a stream left open, after a handler error
        print(f"{self.name}: disconnected, code {event.code}, clean {event.clean}", flush=True)

    def _open(self) -> BinaryIO:
        self.streams += 1
        path = self.out_dir / f"{self.name}-{self.streams}.mp4"
        self.file = path.open("xb")  # "x": never over an existing file
        return self.file

    def _close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class MediaToFilesFactory:
    """The handler factory: a numbered :class:`MediaToFiles` per accepted connection.

    It runs on the event loop (or, with the sync adapter, in the connection's thread): keep it
    quick, and thread-safe.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.prefix = time.strftime("%Y%m%d-%H%M%S")
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self, info: ConnectionInfo) -> Handler:
        with self.lock:
            self.count += 1
            name = f"{self.prefix}-{self.count}"
        return MediaToFiles(self.out_dir, name, info.peer)
