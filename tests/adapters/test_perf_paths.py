"""The fast paths: the asyncio protocol server's delivery (inline on the loop or in threads),
the recorder's chunk buffer, batched delivery, and ``serve --workers``."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

from meetstream_live import Disconnected, Event, MediaChunk, StreamEnded, StreamStarted
from meetstream_live.adapters import ConnectionInfo, Handler, ServerOptions
from meetstream_live.adapters.asyncio import AsyncioBot, serve
from meetstream_live.adapters.cli.sample import sample_bytes
from meetstream_live.adapters.recording.durable import Chunks
from meetstream_live.adapters.recording.recorder import Recorder

INFO = ConnectionInfo("127.0.0.1:5555", "/", "", (), False)


# ------------------------------------------------------------------------ pieces


def test_chunks_buffer_behaves_like_the_bytearray_it_replaced() -> None:
    chunks = Chunks()
    reference = bytearray()
    for piece in (b"abc", b"", b"defgh", b"ij", b"klmnop"):
        chunks += piece
        reference += piece
    assert len(chunks) == len(reference) and bytes(chunks) == bytes(reference)
    assert b"".join(bytes(p) for p in chunks.head(6)) == bytes(reference[:6])
    del chunks[:4]
    del reference[:4]
    assert bytes(chunks) == bytes(reference) and len(chunks) == len(reference)
    del chunks[: len(chunks)]
    assert not chunks and bytes(chunks) == b""
    chunks += b"xyz"
    chunks.clear()
    assert len(chunks) == 0 and chunks.parts == []


def test_recorder_takes_everything_inline_but_the_end_of_the_connection(tmp_path: Path) -> None:
    """The recorder's handler does no I/O (its file sink does, in its own threads): starts,
    media and ends are all taken on the event loop; the end of the connection goes to a
    thread, which waits for the files to be final."""
    data = sample_bytes()
    recorder = Recorder(tmp_path)
    handler = recorder(INFO)
    start = StreamStarted(bot_id="inline", raw={"type": "video_stream_start", "bot_id": "inline"})
    assert handler.dispatch_inline([start])
    size = 4096
    chunks: list[Event] = [MediaChunk(data[i : i + size], i) for i in range(0, len(data), size)]
    assert handler.dispatch_inline(chunks)
    assert handler.dispatch_inline([StreamEnded(None)])
    end = Disconnected(1000, "", True)
    assert not handler.dispatch_inline([end])
    handler.dispatch([end])  # returns once the part is final
    assert (next(tmp_path.glob("inline/*.mp4"))).read_bytes() == data
    recorder.close()


class Collect(Handler):
    def __init__(self, done: threading.Event, slow: float = 0.0) -> None:
        self.data = bytearray()
        self.done = done
        self.slow = slow

    def on_chunk(self, event: MediaChunk) -> None:
        assert event.offset == len(self.data)
        self.data += event.data
        if self.slow:
            time.sleep(self.slow)

    def on_disconnect(self, event: Disconnected) -> None:
        self.done.set()


def test_protocol_server_pauses_reading_for_a_slow_handler_and_loses_nothing() -> None:
    payload = os.urandom(3 * 1024 * 1024)
    done = threading.Event()
    handlers: list[Collect] = []

    def factory(info: ConnectionInfo) -> Handler:
        handlers.append(Collect(done, slow=0.002))
        return handlers[-1]

    options = ServerOptions(max_pending_bytes=64 * 1024, read_size=16 * 1024)

    async def main() -> None:
        async with serve(factory, port=0, options=options) as server:
            bot = await AsyncioBot.connect(f"ws://127.0.0.1:{server.port}/")
            await bot.send_start("slow-bot")
            for i in range(0, len(payload), 32 * 1024):
                await bot.send_chunk(payload[i : i + 32 * 1024])
            closed = await bot.close(timeout=30)
            assert closed.code == 1000
            await asyncio.get_running_loop().run_in_executor(None, done.wait, 30)

    asyncio.run(main())
    assert bytes(handlers[0].data) == payload


# ------------------------------------------------------------------------ serve --workers
