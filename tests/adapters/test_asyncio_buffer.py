"""The asyncio adapter's shared read buffer: every connection of a server reads into the same
buffer (``asyncio.BufferedProtocol``), with and without TLS. The adapter uses it on uvloop (on
asyncio's own loop ``data_received`` measured faster); these tests force it on asyncio's loop
too (the :func:`buffered` fixture), so that both loops' transports are checked with it.
Bots sending flat out at the same time must each get exactly their own bytes: the buffer never
mixes streams, and nothing the handler gets is a view of it (media is checked after the buffer
was overwritten by every later read)."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import ssl
import threading
from collections.abc import Iterable

import pytest
from conformance.servers import running_server, tls_contexts
from websockets.sync.client import connect

from meetstream_live import Disconnected, Event, MediaChunk, StreamStarted
from meetstream_live.adapters import ConnectionInfo, Handler, ServerOptions
from meetstream_live.adapters import asyncio as asyncio_adapter
from meetstream_live.adapters._driver import READ_SIZE_START
from meetstream_live.adapters.asyncio import AsyncioServer, _BufferedConnection

KIB = 1024
MIB = 1024 * KIB
BOTS = 4


#: The adapter's own choice, kept before the fixture below replaces it.
CHOOSE = asyncio_adapter._connection_class


@pytest.fixture(autouse=True)
def buffered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared buffer on every loop (the adapter picks it on uvloop only)."""
    monkeypatch.setattr(asyncio_adapter, "_connection_class", lambda loop: _BufferedConnection)


def test_the_adapter_reads_by_data_received_on_asyncio_and_into_the_buffer_on_uvloop() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert CHOOSE(loop) is asyncio_adapter._ReceivingConnection
    finally:
        loop.close()
    uvloop = pytest.importorskip("uvloop")
    loop = uvloop.new_event_loop()
    try:
        assert CHOOSE(loop) is _BufferedConnection
    finally:
        loop.close()


class Bots:
    """A handler factory. Each handler keeps its events, untouched, to be checked at the end;
    on the loop (``dispatch_inline``) it also notes which connection each batch came from."""

    def __init__(self, inline: bool) -> None:
        self.inline = inline
        self.order: list[int] = []  # connection of each batch offered on the loop, in order
        self.handlers: list[Kept] = []
        self.cond = threading.Condition()

    def __call__(self, info: ConnectionInfo) -> Handler:
        with self.cond:
            handler = Kept(self, len(self.handlers))
            self.handlers.append(handler)
        return handler

    def wait_disconnected(self, count: int, timeout: float = 60.0) -> list[Kept]:
        with self.cond:
            done = self.cond.wait_for(
                lambda: sum(h.disconnected for h in self.handlers) >= count, timeout
            )
            assert done, "not every connection finished"
            return list(self.handlers)


class Kept(Handler):
    def __init__(self, bots: Bots, index: int) -> None:
        self.bots = bots
        self.index = index
        self.events: list[Event] = []
        self.disconnected = False

    def dispatch_inline(self, events: list[Event]) -> bool:
        self.bots.order.append(self.index)
        if not self.bots.inline:
            return False
        self.dispatch(events)
        return True

    def dispatch(self, events: Iterable[Event]) -> None:
        for event in events:
            self.events.append(event)
            if isinstance(event, Disconnected):
                with self.bots.cond:
                    self.disconnected = True
                    self.bots.cond.notify_all()

    def stream(self) -> tuple[str, bytes, bool]:
        """(bot_id, the media as received, offsets contiguous)."""
        [start] = [e for e in self.events if isinstance(e, StreamStarted)]
        chunks = [e for e in self.events if isinstance(e, MediaChunk)]
        offset, contiguous = 0, True
        for chunk in chunks:
            contiguous = contiguous and chunk.offset == offset
            offset += len(chunk.data)
        return str(start.bot_id), b"".join(bytes(c.data) for c in chunks), contiguous


def payloads(count: int, size: int) -> dict[str, bytes]:
    return {f"bot-{n}": os.urandom(size) for n in range(count)}


def send_flat_out(
    port: int, bots: dict[str, bytes], client_ssl: ssl.SSLContext | None = None
) -> None:
    """Every bot at once, each in its own thread: a start, then its payload as fast as the
    socket takes it, in messages of assorted sizes (4 KiB to 1 MiB), then a clean close."""
    scheme = "ws" if client_ssl is None else "wss"
    barrier = threading.Barrier(len(bots))
    errors: list[BaseException] = []

    def bot(bot_id: str, payload: bytes) -> None:
        try:
            rng = random.Random(bot_id)
            with connect(f"{scheme}://127.0.0.1:{port}/", ssl=client_ssl, max_size=None) as ws:
                ws.send(f'{{"type":"video_stream_start","bot_id":"{bot_id}"}}')
                barrier.wait(10)
                at = 0
                while at < len(payload):
                    size = rng.choice((4 * KIB, 64 * KIB, 300 * KIB, MIB))
                    ws.send(payload[at : at + size])
                    at += size
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=bot, args=item) for item in bots.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)


def switches(order: list[int]) -> int:
    return sum(a != b for a, b in itertools.pairwise(order))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("inline", [True, False], ids=["inline", "threads"])
@pytest.mark.parametrize("loop", ["asyncio", "asyncio-uvloop"])
def test_bots_flat_out_at_once_each_get_their_own_bytes(
    loop: str, inline: bool, tls: bool
) -> None:
    if loop == "asyncio-uvloop":
        pytest.importorskip("uvloop")
    options, client_ssl = ServerOptions(), None
    if tls:
        import trustme

        options.ssl, client_ssl = tls_contexts(trustme.CA())
    bots = payloads(BOTS, (4 if tls else 8) * MIB)
    factory = Bots(inline)
    with running_server(loop, factory, options) as port:
        send_flat_out(port, bots, client_ssl)
        handlers = factory.wait_disconnected(BOTS)
    got = {}
    for handler in handlers:
        bot_id, data, contiguous = handler.stream()
        assert contiguous, bot_id
        got[bot_id] = data
    assert got.keys() == bots.keys()
    for bot_id, payload in bots.items():
        assert got[bot_id] == payload, f"{bot_id}: the stream differs from what it sent"
    # The streams' reads really were interleaved: each bot alone in turn would switch BOTS - 1
    # times (seen: about 60 switches on asyncio's loop, 15 on uvloop's, which reads a socket
    # up to 32 times in a row).
    assert switches(factory.order) > BOTS, factory.order


@pytest.mark.parametrize("loop", ["asyncio", "asyncio-uvloop"])
def test_one_buffer_per_server_sliced_at_each_connections_read_size(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``get_buffer`` hands out slices of one ``read_size`` buffer, made at the first read and
    never replaced, whatever the connection; each slice is that connection's read size: from
    64 KiB, growing while a bot sends flat out, never over ``read_size``."""
    if loop == "asyncio-uvloop":
        pytest.importorskip("uvloop")
    handed: list[tuple[int, int, int]] = []  # (connection, buffer, size)
    original = _BufferedConnection.get_buffer

    def get_buffer(self: _BufferedConnection, sizehint: int) -> memoryview:
        view = original(self, sizehint)
        handed.append((id(self), id(view.obj), view.nbytes))
        return view

    monkeypatch.setattr(_BufferedConnection, "get_buffer", get_buffer)
    bots = payloads(2, 4 * MIB)
    factory = Bots(inline=False)
    with running_server(loop, factory, ServerOptions(read_size=256 * KIB)) as port:
        send_flat_out(port, bots)
        handlers = factory.wait_disconnected(2)
    assert {h.stream()[0]: h.stream()[1] for h in handlers} == bots
    assert len({conn for conn, _, _ in handed}) == 2
    assert len({buffer for _, buffer, _ in handed}) == 1
    sizes = {size for _, _, size in handed}
    assert min(sizes) == READ_SIZE_START and max(sizes) == 256 * KIB


class FakeTransport:
    """Just enough of a transport to drive a connection's callbacks by hand."""

    def __init__(self) -> None:
        self.written = bytearray()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.written += data

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def test_a_read_consumed_after_another_connection_got_the_buffer_fails_that_connection() -> None:
    """No transport does it (see ``_BufferedConnection``), but should one hand the shared buffer to
    another connection between a connection's ``get_buffer`` and its ``buffer_updated``, that
    read fails (the transport then closes that connection) instead of going to the core."""
    request = (
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )

    async def main() -> None:
        server = AsyncioServer(Bots(inline=True))
        try:
            a, b = _BufferedConnection(server), _BufferedConnection(server)
            ta, tb = FakeTransport(), FakeTransport()
            a.connection_made(ta)  # type: ignore[arg-type]
            b.connection_made(tb)  # type: ignore[arg-type]
            buffer = a.get_buffer(-1)
            assert b.get_buffer(-1).obj is buffer.obj  # one buffer for both
            buffer[: len(request)] = request
            with pytest.raises(RuntimeError, match="another connection"):
                a.buffer_updated(len(request))
            assert not ta.written  # the core never saw it
            # In turn (what every transport does), each read reaches its own connection.
            for conn, transport in ((a, ta), (b, tb)):
                conn.get_buffer(-1)[: len(request)] = request
                conn.buffer_updated(len(request))
                assert transport.written.startswith(b"HTTP/1.1 101 ")
            # A buffer_updated with no get_buffer before it fails too.
            with pytest.raises(RuntimeError):
                a.buffer_updated(1)
        finally:
            for conn in list(server.connections):
                conn._cancel_timer()
            server._executor.shutdown(wait=False)

    asyncio.run(main())
