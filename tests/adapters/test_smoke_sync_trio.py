"""Smoke tests of the sync and trio adapters: our bots and the ``websockets`` client against
real sockets on 127.0.0.1. The conformance suite over every adapter lives elsewhere; these only
show that each adapter moves bytes, keeps order, and shuts down as promised."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trustme
from websockets.sync.client import connect as ws_connect

from meetstream_live import (
    BotClosed,
    Disconnected,
    Event,
    LatencyPing,
    MediaChunk,
    PongReceived,
    ServerConfig,
    StreamEnded,
    StreamStarted,
)
from meetstream_live.adapters import ConnectionInfo, Handler, HandshakeFailed, ServerOptions
from meetstream_live.adapters.sync import SyncBot, SyncServer
from meetstream_live.adapters.sync import serve as sync_serve
from meetstream_live.adapters.trio import TrioBot, TrioServer
from meetstream_live.adapters.trio import serve as trio_serve

TIMEOUT = 5.0


class Recorder(Handler):
    """Records every call; optionally blocks or fails in ``on_chunk``."""

    def __init__(self, *, gate: threading.Event | None = None, fail_on_chunk: bool = False) -> None:
        self.events: list[Event] = []
        self.disconnected = threading.Event()
        self.gate = gate
        self.fail_on_chunk = fail_on_chunk

    @property
    def data(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, MediaChunk))

    def on_start(self, event: StreamStarted) -> None:
        self.events.append(event)

    def on_chunk(self, event: MediaChunk) -> None:
        if self.gate is not None:
            assert self.gate.wait(TIMEOUT)
        self.events.append(event)
        if self.fail_on_chunk:
            raise RuntimeError("boom")

    def on_ping(self, event: LatencyPing) -> None:
        self.events.append(event)

    def on_end(self, event: StreamEnded) -> None:
        self.events.append(event)

    def on_disconnect(self, event: Disconnected) -> None:
        self.events.append(event)
        self.disconnected.set()

    @property
    def last(self) -> Disconnected:
        event = self.events[-1]
        assert isinstance(event, Disconnected)
        return event


def recording(**kwargs: Any) -> tuple[list[Recorder], Callable[[ConnectionInfo], Handler]]:
    handlers: list[Recorder] = []

    def factory(info: ConnectionInfo) -> Handler:
        handler = Recorder(**kwargs)
        handlers.append(handler)
        return handler

    return handlers, factory


def options(**config: Any) -> ServerOptions:
    return ServerOptions(config=ServerConfig(**config), drain_timeout=TIMEOUT)


def wait_until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


async def trio_wait_until(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(TIMEOUT):
        while not predicate():
            await trio.sleep(0.01)


def kinds(handler: Recorder) -> list[str]:
    return [type(e).__name__ for e in handler.events]


EXPECTED_KINDS = [
    "StreamStarted",
    "MediaChunk",  # the early bytes, released by the start
    "MediaChunk",
    "MediaChunk",
    "MediaChunk",
    "LatencyPing",
    "StreamEnded",
    "Disconnected",
]


def raw_handshake_timeout(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        return received


def websockets_session(url: str, ssl_context: ssl.SSLContext | None = None) -> dict[str, Any]:
    with ws_connect(url, ssl=ssl_context, open_timeout=TIMEOUT, close_timeout=TIMEOUT) as ws:
        ws.send(json.dumps({"type": "video_stream_start", "bot_id": "ws-bot"}))
        ws.send(b"\x00\x01\x02")
        ping = {"type": "video_latency_ping", "bot_id": "ws-bot", "seq": 1, "sent_at_ms": 5}
        ws.send(json.dumps(ping))
        pong: dict[str, Any] = json.loads(ws.recv(timeout=TIMEOUT))
        ws.send(json.dumps({"type": "video_stream_end", "bot_id": "ws-bot"}))
        return pong


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    # No TLS 1.3 session tickets: see conformance.servers.tls_contexts (websockets' sync
    # client reads them in its own thread while the caller writes; now and then that loses
    # the upgrade request).
    server_context.num_tickets = 0
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_context, client_context


# ---------------------------------------------------------------------------- sync


def test_sync_stream_round_trip() -> None:
    handlers, factory = recording()
    with sync_serve(factory, port=0, options=options()) as server:
        bot = SyncBot.connect(f"ws://127.0.0.1:{server.port}/", timeout=TIMEOUT)
        bot.send_chunk(b"early")
        bot.send_start("bot-1", codec="h264")
        bot.send_chunk(b"abc")
        bot.send_chunk(b"de", final=False)
        bot.send_chunk(b"f")
        bot.send_ping(7, 123)
        pong = bot.next_event(TIMEOUT)
        assert isinstance(pong, PongReceived)
        assert (pong.seq, pong.sent_at_ms, pong.bot_id, pong.matched) == (7, 123, "bot-1", True)
        bot.send_ws_ping(b"hi")
        bot.send_end(1.5)
        assert bot.close(timeout=TIMEOUT) == BotClosed(1000, "")
        assert handlers[0].disconnected.wait(TIMEOUT)
    (handler,) = handlers
    assert handler.data == b"earlyabcdef"
    assert kinds(handler) == EXPECTED_KINDS
    assert handler.last == Disconnected(1000, "", clean=True)


def test_sync_websockets_client_and_tls(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = tls
    handlers, factory = recording()
    opts = options()
    opts.ssl = server_context
    with sync_serve(factory, port=0, options=opts) as server:
        pong = websockets_session(f"wss://localhost:{server.port}/", client_context)
        assert pong["type"] == "video_latency_pong"
        assert (pong["seq"], pong["sent_at_ms"], pong["bot_id"]) == (1, 5, "ws-bot")
        assert handlers[0].disconnected.wait(TIMEOUT)
        bot = SyncBot.connect(
            f"wss://localhost:{server.port}/", ssl=client_context, timeout=TIMEOUT
        )
        assert bot.close(timeout=TIMEOUT).code == 1000
    assert handlers[0].data == b"\x00\x01\x02"
    assert handlers[0].last == Disconnected(1000, "", clean=True)


def test_sync_limits_and_timeouts() -> None:
    _handlers, factory = recording()
    opts = options(handshake_timeout_ms=200)
    opts.max_connections = 1
    with sync_serve(factory, port=0, options=opts) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        first = SyncBot.connect(url, timeout=TIMEOUT)
        with pytest.raises(HandshakeFailed) as info:
            SyncBot.connect(url, timeout=TIMEOUT)
        assert info.value.status == 503
        assert first.close(timeout=TIMEOUT).code == 1000
        wait_until(lambda: server.active_connections == 0)
        started = time.monotonic()
        assert raw_handshake_timeout(server.port).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 2


def test_sync_handler_error_closes_with_1011() -> None:
    handlers, factory = recording(fail_on_chunk=True)
    with sync_serve(factory, port=0, options=options()) as server:
        bot = SyncBot.connect(f"ws://127.0.0.1:{server.port}/", timeout=TIMEOUT)
        bot.send_start("bot-1")
        bot.send_chunk(b"x")
        assert bot.next_event(TIMEOUT) == BotClosed(1011, "handler error")
        bot.abort()
        assert handlers[0].disconnected.wait(TIMEOUT)
    assert kinds(handlers[0]) == ["StreamStarted", "MediaChunk", "Disconnected"]


def test_sync_shutdown_closes_streams_in_flight_with_1001() -> None:
    handlers, factory = recording()
    server = SyncServer(factory, options())
    server.start("127.0.0.1", 0)
    server.start_background()
    url = f"ws://127.0.0.1:{server.port}/"
    bot = SyncBot.connect(url, timeout=TIMEOUT)
    bot.send_start("bot-1")
    bot.send_chunk(b"in flight")
    wait_until(lambda: bool(handlers) and handlers[0].data == b"in flight")
    stopper = threading.Thread(target=server.shutdown, kwargs={"drain_timeout": 0.2})
    stopper.start()
    assert bot.next_event(TIMEOUT) == BotClosed(1001, "server shutting down")
    bot.abort()
    stopper.join(TIMEOUT)
    assert not stopper.is_alive()
    assert handlers[0].last == Disconnected(1001, "server shutting down", clean=False)
    assert server.active_connections == 0
    with pytest.raises(ConnectionRefusedError):
        SyncBot.connect(url, timeout=TIMEOUT)


# ---------------------------------------------------------------------------- trio


def run_trio(main: Callable[[], Any]) -> None:
    async def with_timeout() -> None:
        with trio.fail_after(3 * TIMEOUT):
            await main()

    trio.run(with_timeout)


def test_trio_stream_round_trip() -> None:
    handlers, factory = recording()

    async def main() -> None:
        async with trio_serve(factory, port=0, options=options()) as server:
            bot = await TrioBot.connect(f"ws://127.0.0.1:{server.port}/", timeout=TIMEOUT)
            await bot.send_chunk(b"early")
            await bot.send_start("bot-1", codec="h264")
            await bot.send_chunk(b"abc")
            await bot.send_chunk(b"de", final=False)
            await bot.send_chunk(b"f")
            await bot.send_ping(7, 123)
            pong = await bot.next_event(TIMEOUT)
            assert isinstance(pong, PongReceived)
            assert (pong.seq, pong.sent_at_ms, pong.matched) == (7, 123, True)
            await bot.send_ws_ping(b"hi")
            await bot.send_end(1.5)
            assert await bot.close(timeout=TIMEOUT) == BotClosed(1000, "")
            await trio_wait_until(handlers[0].disconnected.is_set)

    run_trio(main)
    (handler,) = handlers
    assert handler.data == b"earlyabcdef"
    assert kinds(handler) == EXPECTED_KINDS
    assert handler.last == Disconnected(1000, "", clean=True)


def test_trio_websockets_client_and_tls(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = tls
    handlers, factory = recording()
    opts = options()
    opts.ssl = server_context

    async def main() -> None:
        async with trio_serve(factory, port=0, options=opts) as server:
            url = f"wss://localhost:{server.port}/"
            pong = await trio.to_thread.run_sync(websockets_session, url, client_context)
            assert pong["type"] == "video_latency_pong"
            assert (pong["seq"], pong["bot_id"]) == (1, "ws-bot")
            await trio_wait_until(handlers[0].disconnected.is_set)
            bot = await TrioBot.connect(url, ssl=client_context, timeout=TIMEOUT)
            assert (await bot.close(timeout=TIMEOUT)).code == 1000

    run_trio(main)
    assert handlers[0].data == b"\x00\x01\x02"
    assert handlers[0].last == Disconnected(1000, "", clean=True)


def test_trio_limits_and_timeouts() -> None:
    _handlers, factory = recording()
    opts = options(handshake_timeout_ms=200)
    opts.max_connections = 1

    async def main() -> None:
        async with trio_serve(factory, port=0, options=opts) as server:
            url = f"ws://127.0.0.1:{server.port}/"
            first = await TrioBot.connect(url, timeout=TIMEOUT)
            with pytest.raises(HandshakeFailed) as info:
                await TrioBot.connect(url, timeout=TIMEOUT)
            assert info.value.status == 503
            assert (await first.close(timeout=TIMEOUT)).code == 1000
            await trio_wait_until(lambda: server.active_connections == 0)
            started = time.monotonic()
            answer = await trio.to_thread.run_sync(raw_handshake_timeout, server.port)
            assert answer.startswith(b"HTTP/1.1 408 ")
            assert time.monotonic() - started < 2

    run_trio(main)


def test_trio_handler_error_closes_with_1011() -> None:
    handlers, factory = recording(fail_on_chunk=True)

    async def main() -> None:
        async with trio_serve(factory, port=0, options=options()) as server:
            bot = await TrioBot.connect(f"ws://127.0.0.1:{server.port}/", timeout=TIMEOUT)
            await bot.send_start("bot-1")
            await bot.send_chunk(b"x")
            # The close comes without the bot sending more: the handler error interrupts the read.
            assert await bot.next_event(TIMEOUT) == BotClosed(1011, "handler error")
            bot.abort()
            await trio_wait_until(handlers[0].disconnected.is_set)

    run_trio(main)
    assert kinds(handlers[0]) == ["StreamStarted", "MediaChunk", "Disconnected"]


def test_trio_backpressure_stops_reading() -> None:
    gate = threading.Event()
    handlers, factory = recording(gate=gate)
    seen = 0

    def observer(event: Event) -> None:
        nonlocal seen
        if isinstance(event, MediaChunk):
            seen += len(event.data)

    opts = options()
    opts.max_pending_bytes = 32 * 1024
    opts.read_size = 16 * 1024
    opts.observer = observer
    payload = bytes(range(256)) * 4 * 1024  # 1 MiB

    async def main() -> None:
        async with trio_serve(factory, port=0, options=opts) as server:
            bot = await TrioBot.connect(f"ws://127.0.0.1:{server.port}/", timeout=TIMEOUT)
            await bot.send_start("bot-1")
            async with trio.open_nursery() as nursery:

                async def send_all() -> None:
                    for i in range(0, len(payload), 8192):
                        await bot.send_chunk(payload[i : i + 8192])
                    await bot.send_end(1.0)

                nursery.start_soon(send_all)
                await trio.sleep(0.3)
                # The handler is stuck on the first chunk: reading stopped near the limit.
                assert seen <= opts.max_pending_bytes + 2 * opts.read_size
                gate.set()
            assert await bot.close(timeout=TIMEOUT) == BotClosed(1000, "")
            await trio_wait_until(handlers[0].disconnected.is_set)

    run_trio(main)
    assert handlers[0].data == payload
    assert handlers[0].last.clean


def test_trio_shutdown_closes_streams_in_flight_with_1001() -> None:
    handlers, factory = recording()

    async def main() -> None:
        server = TrioServer(factory, options())
        await server.start("127.0.0.1", 0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve_forever)
            url = f"ws://127.0.0.1:{server.port}/"
            bot = await TrioBot.connect(url, timeout=TIMEOUT)
            await bot.send_start("bot-1")
            await bot.send_chunk(b"in flight")
            await trio_wait_until(lambda: bool(handlers) and handlers[0].data == b"in flight")
            nursery.start_soon(server.shutdown, 0.2)
            assert await bot.next_event(TIMEOUT) == BotClosed(1001, "server shutting down")
            bot.abort()
        # serve_forever and shutdown both returned.
        assert handlers[0].last == Disconnected(1001, "server shutting down", clean=False)
        assert server.active_connections == 0
        with pytest.raises(OSError, match="all attempts to connect"):
            await TrioBot.connect(url, timeout=TIMEOUT)

    run_trio(main)


def test_trio_cancelled_serve_block_still_shuts_down_gracefully() -> None:
    handlers, factory = recording()
    opts = options(close_timeout_ms=300)
    opts.drain_timeout = 0.1

    async def main() -> None:
        bot: TrioBot | None = None
        with trio.move_on_after(0.5):
            async with trio_serve(factory, port=0, options=opts) as server:
                bot = await TrioBot.connect(f"ws://127.0.0.1:{server.port}/", timeout=TIMEOUT)
                await bot.send_start("bot-1")
                await trio.sleep_forever()
        assert bot is not None
        # The bot could not answer (this task was busy shutting down): the server gave up.
        assert handlers[0].last.code == 1006
        assert await bot.next_event(TIMEOUT) == BotClosed(1001, "server shutting down")
        bot.abort()

    run_trio(main)


def test_trio_cancelled_server_still_tells_the_handler() -> None:
    handlers, factory = recording()

    async def main() -> None:
        server = TrioServer(factory, options())
        await server.start("127.0.0.1", 0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve_forever)
            bot = await TrioBot.connect(f"ws://127.0.0.1:{server.port}/", timeout=TIMEOUT)
            await bot.send_start("bot-1")
            await bot.send_chunk(b"abc")
            await trio_wait_until(lambda: bool(handlers) and handlers[0].data == b"abc")
            nursery.cancel_scope.cancel()  # no graceful shutdown: connections are dropped
        bot.abort()
        assert server.active_connections == 0

    run_trio(main)
    assert handlers[0].last == Disconnected(1006, "", clean=False)
