"""Run any of our server adapters in a background thread, the same way for every adapter.

``running_server(name, factory, options)`` yields the bound port; on exit it shuts the server
down gracefully and waits for every handler. Tests stay synchronous, so the same scenario drives
every adapter with every client.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from meetstream_live import Disconnected, Event, MediaChunk, StreamStarted
from meetstream_live.adapters import ConnectionInfo, Handler, HandlerFactory, ServerOptions

START_TIMEOUT = 10.0


@dataclass
class Stream:
    """What one handler saw, stream by stream."""

    started: StreamStarted | None = None
    data: bytearray = field(default_factory=bytearray)
    offsets_ok: bool = True


class CollectingHandler(Handler):
    def __init__(self, collector: Collector, info: ConnectionInfo) -> None:
        self.collector = collector
        self.info = info
        self.events: list[Event] = []
        self.streams: list[Stream] = []

    def dispatch(self, events: Iterable[Event]) -> None:
        done = False
        for event in events:
            self.events.append(event)
            if isinstance(event, StreamStarted):
                self.streams.append(Stream(started=event))
            elif isinstance(event, MediaChunk):
                if not self.streams or (event.offset == 0 and self.streams[-1].data):
                    self.streams.append(Stream())  # bytes that never had a start
                stream = self.streams[-1]
                if event.offset != len(stream.data):
                    stream.offsets_ok = False
                stream.data += event.data
            elif isinstance(event, Disconnected):
                done = True
            if self.collector.slow is not None:
                self.collector.slow()
        if done:
            with self.collector.cond:
                self.collector.finished.append(self)
                self.collector.cond.notify_all()

    @property
    def disconnected(self) -> Disconnected:
        last = self.events[-1]
        assert isinstance(last, Disconnected), self.events[-3:]
        return last

    @property
    def data(self) -> bytes:
        return b"".join(bytes(s.data) for s in self.streams)


class Collector:
    """A handler factory that keeps every handler, and lets a test wait for disconnects."""

    def __init__(self, slow: Callable[[], None] | None = None) -> None:
        self.handlers: list[CollectingHandler] = []
        self.finished: list[CollectingHandler] = []
        self.cond = threading.Condition()
        self.slow = slow

    def __call__(self, info: ConnectionInfo) -> Handler:
        handler = CollectingHandler(self, info)
        with self.cond:
            self.handlers.append(handler)
        return handler

    def wait_finished(self, count: int = 1, timeout: float = 20.0) -> list[CollectingHandler]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.finished) >= count, timeout)
            assert ok, f"{len(self.finished)}/{count} connections finished in {timeout}s"
            return list(self.finished)


# ------------------------------------------------------------------------- per adapter


@contextlib.contextmanager
def _asyncio_server(
    factory: HandlerFactory, options: ServerOptions, drain_timeout: float | None
) -> Iterator[int]:
    from meetstream_live.adapters.asyncio import AsyncioServer

    ready = threading.Event()
    port: list[int] = []
    loop = asyncio.new_event_loop()
    stop: asyncio.Event | None = None

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        server = AsyncioServer(factory, options)
        await server.start("127.0.0.1", 0)
        port.append(server.port)
        ready.set()
        await stop.wait()
        await server.shutdown(drain_timeout)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(START_TIMEOUT), "asyncio server did not start"
    try:
        yield port[0]
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
        assert not thread.is_alive(), "asyncio server did not shut down"
        loop.close()


@contextlib.contextmanager
def _sync_server(
    factory: HandlerFactory, options: ServerOptions, drain_timeout: float | None
) -> Iterator[int]:
    from meetstream_live.adapters.sync import SyncServer

    server = SyncServer(factory, options)
    server.start("127.0.0.1", 0)
    thread = server.start_background()
    try:
        yield server.port
    finally:
        server.shutdown(drain_timeout)
        thread.join(60)
        assert not thread.is_alive(), "sync server did not shut down"


@contextlib.contextmanager
def _trio_server(
    factory: HandlerFactory, options: ServerOptions, drain_timeout: float | None
) -> Iterator[int]:
    import trio

    from meetstream_live.adapters.trio import TrioServer

    ready = threading.Event()
    state: dict[str, object] = {}

    async def main() -> None:
        stop = trio.Event()
        server = TrioServer(factory, options)
        await server.start("127.0.0.1", 0)
        state["port"] = server.port
        state["stop"] = stop
        state["token"] = trio.lowlevel.current_trio_token()
        ready.set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve_forever)
            await stop.wait()
            await server.shutdown(drain_timeout)
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert ready.wait(START_TIMEOUT), "trio server did not start"
    try:
        yield int(state["port"])  # type: ignore[call-overload]
    finally:
        stop = state["stop"]
        trio.from_thread.run_sync(stop.set, trio_token=state["token"])  # type: ignore[attr-defined,arg-type]
        thread.join(60)
        assert not thread.is_alive(), "trio server did not shut down"


SERVERS: dict[str, Callable[..., contextlib.AbstractContextManager[int]]] = {
    "asyncio": _asyncio_server,
    "sync": _sync_server,
    "trio": _trio_server,
}


@contextlib.contextmanager
def running_server(
    name: str,
    factory: HandlerFactory,
    options: ServerOptions | None = None,
    *,
    drain_timeout: float | None = 5.0,
) -> Iterator[int]:
    with SERVERS[name](factory, options or ServerOptions(), drain_timeout) as port:
        yield port
