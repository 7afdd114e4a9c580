"""The ASGI adapter under real ASGI servers (uvicorn and hypercorn, in-process), with two real
clients: the ``websockets`` library and our own :class:`AsyncioBot`.

Most tests share one server per kind for the whole module (an app switch picks the
:class:`ASGIApp` under test); shutdown and size-limit tests start their own. Every network wait
has a timeout, so nothing here can hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypercorn.asyncio
import hypercorn.config
import pytest
import pytest_asyncio
import trustme
import uvicorn
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from meetstream_live import (
    Accepted,
    BotClosed,
    Disconnected,
    Event,
    HTTPRejected,
    HTTPRequest,
    LatencyPing,
    MediaChunk,
    PongReceived,
    ServerConfig,
    StreamEnded,
    StreamStarted,
)
from meetstream_live.adapters import (
    ConnectionInfo,
    Handler,
    HandshakeFailed,
    HTTPAnswer,
    ServerOptions,
)
from meetstream_live.adapters.asgi import (
    RECOMMENDED_MAX_MESSAGE_SIZE,
    ASGIApp,
    Receive,
    Scope,
    Send,
)
from meetstream_live.adapters.asyncio import AsyncioBot

pytestmark = pytest.mark.asyncio(loop_scope="module")

KINDS = ["uvicorn", "uvicorn-wsproto", "hypercorn"]
TIMEOUT = 5.0
#: Over both servers' default 16 MiB message limit.
BIG = bytes(range(256)) * (17 * 4096)
ASGIApplication = Callable[[Scope, Receive, Send], Awaitable[None]]


# ---------------------------------------------------------------- handlers


class Recording(Handler):
    def __init__(self, info: ConnectionInfo) -> None:
        self.info = info
        self.events: list[Event] = []
        self.finished = threading.Event()

    def on_start(self, event: StreamStarted) -> None:
        self.events.append(event)

    def on_chunk(self, event: MediaChunk) -> None:
        self.events.append(event)

    def on_ping(self, event: LatencyPing) -> None:
        self.events.append(event)

    def on_end(self, event: StreamEnded) -> None:
        self.events.append(event)

    def on_disconnect(self, event: Disconnected) -> None:
        self.events.append(event)
        self.finished.set()

    @property
    def media(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, MediaChunk))

    @property
    def disconnected(self) -> Disconnected:
        last = self.events[-1]
        assert isinstance(last, Disconnected)
        assert sum(isinstance(e, Disconnected) for e in self.events) == 1
        return last


class Recorder:
    """A handler factory that keeps every handler it made."""

    def __init__(self, handler: type[Recording] = Recording) -> None:
        self.handler = handler
        self.handlers: list[Recording] = []

    def __call__(self, info: ConnectionInfo) -> Handler:
        handler = self.handler(info)
        self.handlers.append(handler)
        return handler

    async def finished(self, count: int = 1) -> list[Recording]:
        await until(
            lambda: len(self.handlers) >= count and all(h.finished.is_set() for h in self.handlers)
        )
        return self.handlers


async def until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


def receiver(recorder: Recorder, **config: Any) -> ASGIApp:
    options = config.pop("options", {})
    return ASGIApp(recorder, ServerOptions(config=ServerConfig(**config), **options))


# ---------------------------------------------------------------- servers


@dataclass
class Running:
    kind: str
    port: int

    def url(self, target: str = "/") -> str:
        return f"ws://127.0.0.1:{self.port}{target}"


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


@contextlib.asynccontextmanager
async def serving(
    kind: str,
    app: ASGIApplication,
    *,
    max_size: int = RECOMMENDED_MAX_MESSAGE_SIZE,
    server_class: type[uvicorn.Server] = uvicorn.Server,
    before_stop: Callable[[], Awaitable[None]] | None = None,
    graceful_timeout: float = 1.0,
    pem: str | None = None,
) -> AsyncIterator[Running]:
    """Run ``app`` under ``kind`` on a free port for the block; stop (gracefully) at exit."""
    sock = _listening_socket()
    port = sock.getsockname()[1]
    if kind.startswith("uvicorn"):
        config = uvicorn.Config(
            app,
            ws="wsproto" if kind == "uvicorn-wsproto" else "auto",
            lifespan="on",
            ws_max_size=max_size,
            ws_per_message_deflate=False,
            log_config=None,
            log_level="warning",
            ssl_certfile=pem,
            ssl_keyfile=pem,
        )
        server = server_class(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        await until(lambda: server.started or task.done())

        def stop() -> None:
            server.should_exit = True

    else:
        hconfig = hypercorn.config.Config()
        hconfig.bind = [f"fd://{sock.detach()}"]  # hypercorn owns the socket from here
        hconfig.websocket_max_message_size = max_size
        hconfig.graceful_timeout = graceful_timeout
        hconfig.loglevel = "WARNING"
        hconfig.certfile = hconfig.keyfile = pem
        stop_event = asyncio.Event()

        async def trigger() -> None:
            await stop_event.wait()
            if before_stop is not None:
                await before_stop()

        task = asyncio.create_task(hypercorn.asyncio.serve(app, hconfig, shutdown_trigger=trigger))
        stop = stop_event.set
    try:
        yield Running(kind, port)
    finally:
        stop()
        await asyncio.wait_for(task, 10)


class Switch:
    """The app a shared server runs: each test plugs in its own :class:`ASGIApp`."""

    def __init__(self) -> None:
        self.app: ASGIApplication | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert self.app is not None
        await self.app(scope, receive, send)


@dataclass
class Shared(Running):
    switch: Switch

    def use(self, app: ASGIApplication) -> None:
        self.switch.app = app


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=KINDS)
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Shared]:
    switch = Switch()
    async with serving(request.param, switch) as running:
        yield Shared(running.kind, running.port, switch)


async def http_get(
    port: int, target: str, method: str = "GET", headers: tuple[str, ...] = ()
) -> tuple[int, dict[str, str], bytes]:
    """A one-shot HTTP/1.1 request; returns status, headers (lower-case names) and body."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    try:
        head = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
        writer.write(("\r\n".join([*head, *headers]) + "\r\n\r\n").encode("latin-1"))
        raw = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    head_bytes, _, body = raw.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    fields = dict(line.split(":", 1) for line in lines[1:])
    return (
        int(lines[0].split()[1]),
        {k.strip().lower(): v.strip() for k, v in fields.items()},
        body,
    )


# ---------------------------------------------------------------- streaming


async def test_stream_with_asyncio_bot(server: Shared) -> None:
    recorder = Recorder()
    server.use(receiver(recorder, path="/video"))
    bot = await AsyncioBot.connect(server.url("/video?src=test"), timeout=TIMEOUT)
    await bot.send_chunk(b"early")  # before video_stream_start: held, then released
    await bot.send_start("bot-1", codec="h264", width=1920)
    await bot.send_chunk(b"ab", final=False)  # one message in three frames
    await bot.send_chunk(b"cd", final=False)
    await bot.send_chunk(b"ef")
    await bot.send_ping(7, 1743500000123)
    pong = await bot.next_event(TIMEOUT)
    assert isinstance(pong, PongReceived)
    assert (pong.seq, pong.sent_at_ms, pong.bot_id, pong.matched) == (
        7,
        1743500000123,
        "bot-1",
        True,
    )
    assert isinstance(pong.server_received_at_ms, int)
    await bot.send_chunk(BIG)
    await bot.send_end(12.5)
    closed = await bot.close(timeout=TIMEOUT)
    assert closed.code == 1000

    (handler,) = await recorder.finished()
    assert (handler.info.path, handler.info.query, handler.info.secure) == (
        "/video",
        "src=test",
        False,
    )
    assert handler.info.peer.startswith("('127.0.0.1', ")
    kinds = [type(e) for e in handler.events]
    assert kinds == [
        StreamStarted,
        MediaChunk,
        MediaChunk,
        LatencyPing,
        MediaChunk,
        StreamEnded,
        Disconnected,
    ]
    started = handler.events[0]
    assert isinstance(started, StreamStarted)
    assert (started.bot_id, started.codec, started.width) == ("bot-1", "h264", 1920)
    assert handler.media == b"early" + b"abcdef" + BIG
    assert [e.offset for e in handler.events if isinstance(e, MediaChunk)] == [0, 5, 11]
    ping = handler.events[3]
    assert isinstance(ping, LatencyPing)
    assert (ping.seq, ping.received_at_ms) == (7, pong.server_received_at_ms)
    end = handler.events[5]
    assert isinstance(end, StreamEnded)
    assert end.duration_seconds == 12.5
    # uvicorn reports the bot's close code; hypercorn reports 1006 whenever the bot closed.
    expected = {"uvicorn": 1000, "uvicorn-wsproto": 1000, "hypercorn": 1006}[server.kind]
    assert handler.disconnected.code == expected
    assert handler.disconnected.clean


async def test_stream_with_websockets_client(server: Shared) -> None:
    recorder = Recorder()
    server.use(receiver(recorder, path="/"))
    start = json.dumps({"type": "video_stream_start", "bot_id": "bot-2", "framerate": 25})
    ping = {"type": "video_latency_ping", "bot_id": "bot-2", "seq": "s-1", "sent_at_ms": 17.25}
    async with ws_connect(
        server.url("/"),
        max_size=None,
        compression=None,
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
    ) as ws:
        await ws.send(b"early")
        await ws.send([start[:10], start[10:]])  # a fragmented text message
        await ws.send([b"ab", b"cd", b"ef"])  # a fragmented binary message
        await ws.send(json.dumps(ping))
        pong = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert pong.pop("server_received_at_ms") > 0
        # Fields echoed exactly, even a string seq and a float timestamp.
        assert pong == {
            "type": "video_latency_pong",
            "seq": "s-1",
            "sent_at_ms": 17.25,
            "bot_id": "bot-2",
        }
        await ws.send(BIG)
        await ws.send(json.dumps({"type": "video_stream_end", "duration_seconds": 3}))
    assert ws.close_code == 1000

    (handler,) = await recorder.finished()
    assert handler.media == b"early" + b"abcdef" + BIG
    assert [type(e) for e in handler.events][-2:] == [StreamEnded, Disconnected]
    assert handler.disconnected.clean


async def test_many_pings_answered_in_order(server: Shared) -> None:
    recorder = Recorder()
    server.use(receiver(recorder))
    bot = await AsyncioBot.connect(server.url("/"), timeout=TIMEOUT)
    await bot.send_start("bot-3")
    for seq in range(20):
        await bot.send_ping(seq, 1000 + seq)
        await bot.send_chunk(b"x" * 1000)
    pongs = [await bot.next_event(TIMEOUT) for _ in range(20)]
    assert [(p.seq, p.sent_at_ms, p.matched) for p in pongs if isinstance(p, PongReceived)] == [
        (seq, 1000 + seq, True) for seq in range(20)
    ]
    await bot.close(timeout=TIMEOUT)
    (handler,) = await recorder.finished()
    assert handler.media == b"x" * 20_000


async def test_observer_sees_every_event(server: Shared) -> None:
    seen: list[Event] = []
    recorder = Recorder()
    server.use(
        receiver(
            recorder,
            path="/",
            http_paths=frozenset({"/healthz"}),
            options={"observer": seen.append},
        )
    )
    assert (await http_get(server.port, "/healthz"))[0] == 404  # no http_handler: 404
    with pytest.raises(HandshakeFailed):
        await AsyncioBot.connect(server.url("/elsewhere"), timeout=TIMEOUT)
    bot = await AsyncioBot.connect(server.url("/"), timeout=TIMEOUT)
    await bot.send_start("bot-4")
    await bot.close(timeout=TIMEOUT)
    await recorder.finished()
    kinds = [type(e) for e in seen]
    assert kinds == [HTTPRequest, HTTPRejected, Accepted, StreamStarted, Disconnected]


# ---------------------------------------------------------------- refusals


async def test_token_required(server: Shared) -> None:
    recorder = Recorder()
    server.use(receiver(recorder, token="s3cret"))
    # Both servers support the websocket.http.response extension: a real 401 with our body.
    with pytest.raises(HandshakeFailed) as refused:
        await AsyncioBot.connect(server.url("/"), timeout=TIMEOUT)
    assert refused.value.status == 401
    assert refused.value.reason == "401 Unauthorized"  # a fixed phrase, as from every adapter
    with pytest.raises(InvalidStatus) as invalid:
        async with ws_connect(server.url("/?token=wrong"), open_timeout=TIMEOUT):
            pass
    assert invalid.value.response.status_code == 401
    assert invalid.value.response.headers["WWW-Authenticate"] == "Bearer"
    assert invalid.value.response.body == b"401 Unauthorized\n"
    assert invalid.value.response.headers["X-Content-Type-Options"] == "nosniff"

    bot = await AsyncioBot.connect(server.url("/?token=s3cret"), timeout=TIMEOUT)
    await bot.close(timeout=TIMEOUT)
    async with ws_connect(
        server.url("/"),
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
        additional_headers={"Authorization": "Bearer s3cret"},
    ):
        pass
    handlers = await recorder.finished(2)
    assert [h.info.query for h in handlers] == ["token=s3cret", ""]


async def test_refusal_without_http_response_extension(server: Shared) -> None:
    """Without the extension the app can only close before accepting: servers answer 403."""
    app = receiver(Recorder(), token="s3cret")

    async def no_extensions(scope: Scope, receive: Receive, send: Send) -> None:
        await app({**scope, "extensions": {}}, receive, send)

    server.use(no_extensions)
    with pytest.raises(HandshakeFailed) as refused:
        await AsyncioBot.connect(server.url("/"), timeout=TIMEOUT)
    assert refused.value.status == 403
    with pytest.raises(InvalidStatus) as invalid:
        async with ws_connect(server.url("/"), open_timeout=TIMEOUT):
            pass
    assert invalid.value.response.status_code == 403


async def test_wrong_path_and_overload(server: Shared) -> None:
    recorder = Recorder()
    server.use(receiver(recorder, path="/video", options={"max_connections": 1}))
    with pytest.raises(HandshakeFailed) as refused:
        await AsyncioBot.connect(server.url("/other"), timeout=TIMEOUT)
    assert refused.value.status == 404
    first = await AsyncioBot.connect(server.url("/video"), timeout=TIMEOUT)
    with pytest.raises(InvalidStatus) as invalid:
        async with ws_connect(server.url("/video"), open_timeout=TIMEOUT):
            pass
    assert invalid.value.response.status_code == 503
    assert invalid.value.response.headers["Retry-After"] == "5"
    await first.close(timeout=TIMEOUT)
    await recorder.finished()


# ---------------------------------------------------------------- plain HTTP


async def test_http_paths(server: Shared) -> None:
    requests: list[HTTPRequest] = []

    def health(request: HTTPRequest) -> HTTPAnswer:
        requests.append(request)
        return HTTPAnswer(200, b'{"ok":true}', "application/json")

    server.use(
        receiver(
            Recorder(),
            path="/video",
            http_paths=frozenset({"/healthz"}),
            options={"http_handler": health},
        )
    )
    status, headers, body = await http_get(server.port, "/healthz?verbose=1")
    assert (status, headers["content-type"], body) == (200, "application/json", b'{"ok":true}')
    assert (requests[0].method, requests[0].path, requests[0].query) == (
        "GET",
        "/healthz",
        "verbose=1",
    )
    # The rest is answered as by every other adapter (route_request).
    status, headers, body = await http_get(server.port, "/video")
    assert (status, headers["upgrade"], body) == (426, "websocket", b"426 Upgrade Required\n")
    status, headers, body = await http_get(server.port, "/nothing/<script>")
    assert (status, headers["x-content-type-options"], body) == (404, "nosniff", b"404 Not Found\n")
    status, headers, _ = await http_get(server.port, "/video", method="POST")
    assert (status, headers["allow"]) == (405, "GET")


# ---------------------------------------------------------------- failures and closes


class Failing(Recording):
    def on_chunk(self, event: MediaChunk) -> None:
        raise RuntimeError("disk full")


async def test_handler_error_closes_1011(server: Shared) -> None:
    recorder = Recorder(Failing)
    server.use(receiver(recorder))
    bot = await AsyncioBot.connect(server.url("/"), timeout=TIMEOUT)
    await bot.send_start("bot-5")
    await bot.send_chunk(b"boom")
    # The close comes at once, while the app waits in receive() for more.
    closed = await bot.next_event(TIMEOUT)
    assert isinstance(closed, BotClosed)
    assert (closed.code, closed.reason) == (1011, "handler error")
    bot.abort()
    (handler,) = await recorder.finished()
    # The handler hears of nothing after its failure but the disconnect.
    assert [type(e) for e in handler.events] == [StreamStarted, Disconnected]
    disconnected = handler.disconnected
    assert (disconnected.code, disconnected.reason, disconnected.clean) == (
        1011,
        "handler error",
        False,
    )


async def test_factory_error_closes_1011(server: Shared) -> None:
    def factory(info: ConnectionInfo) -> Handler:
        raise RuntimeError("no handler today")

    server.use(ASGIApp(factory))
    bot = await AsyncioBot.connect(server.url("/"), timeout=TIMEOUT)
    closed = await bot.next_event(TIMEOUT)
    assert isinstance(closed, BotClosed)
    assert closed.code == 1011
    bot.abort()


async def test_session_close_request(server: Shared) -> None:
    """A text message over max_text_size: the session asks for 1009."""
    recorder = Recorder()
    server.use(receiver(recorder, max_text_size=100))
    bot = await AsyncioBot.connect(server.url("/"), timeout=TIMEOUT)
    await bot.send_start("bot-6")
    await bot.send_chunk(b"kept")
    await bot.send_text("x" * 200)
    closed = await bot.next_event(TIMEOUT)
    assert isinstance(closed, BotClosed)
    assert closed.code == 1009
    bot.abort()
    (handler,) = await recorder.finished()
    assert handler.media == b"kept"
    disconnected = handler.disconnected
    assert (disconnected.code, disconnected.reason) == (1009, "text message over 100 bytes")
    assert not disconnected.clean


async def test_close_timeout_when_bot_never_answers(server: Shared) -> None:
    """We close (1009) and the bot never reads: uvicorn ends the connection itself (and
    reports our code); under hypercorn our close_timeout_ms gives up with 1006."""
    recorder = Recorder()
    server.use(receiver(recorder, max_text_size=100, close_timeout_ms=200))
    bot = await AsyncioBot.connect(server.url("/"), timeout=TIMEOUT)
    await bot.send_start("bot-7")
    await bot.send_text("x" * 200)
    (handler,) = await recorder.finished()  # without reading from the bot's socket
    expected = {
        "uvicorn": (1009, "text message over 100 bytes"),
        "uvicorn-wsproto": (1009, "text message over 100 bytes"),
        "hypercorn": (1006, "close handshake timed out"),
    }
    disconnected = handler.disconnected
    assert (disconnected.code, disconnected.reason) == expected[server.kind]
    bot.abort()


async def test_bot_vanishes(server: Shared) -> None:
    recorder = Recorder()
    server.use(receiver(recorder))
    bot = await AsyncioBot.connect(server.url("/"), timeout=TIMEOUT)
    await bot.send_start("bot-8")
    await bot.send_chunk(b"partial")
    await until(lambda: bool(recorder.handlers) and len(recorder.handlers[0].events) == 2)
    bot.abort()
    (handler,) = await recorder.finished()
    assert handler.media == b"partial"
    assert handler.disconnected.code in (1005, 1006)  # uvicorn: 1005, hypercorn: 1006
    assert not handler.disconnected.clean


class Blocking(Recording):
    release = threading.Event()

    def on_chunk(self, event: MediaChunk) -> None:
        assert self.release.wait(TIMEOUT)
        super().on_chunk(event)


async def test_backpressure_stops_receiving(server: Shared) -> None:
    """While media waits for the handler over max_pending_bytes, receive() is not called."""
    recorder = Recorder(Blocking)
    app = receiver(recorder, options={"max_pending_bytes": 10})
    received: list[str] = []

    async def counting(scope: Scope, receive: Receive, send: Send) -> None:
        async def counted() -> Any:
            message = await receive()
            received.append(message["type"])
            return message

        await app(scope, counted, send)

    server.use(counting)
    Blocking.release.clear()
    bot = await AsyncioBot.connect(server.url("/"), timeout=TIMEOUT)
    await bot.send_start("bot-9")
    for _ in range(5):
        await bot.send_chunk(b"y" * 100)
    await until(lambda: received.count("websocket.receive") >= 2)
    await asyncio.sleep(0.2)
    assert received.count("websocket.receive") == 2  # the start and the first chunk only
    Blocking.release.set()
    await until(lambda: received.count("websocket.receive") == 6)
    await bot.close(timeout=TIMEOUT)
    (handler,) = await recorder.finished()
    assert handler.media == b"y" * 500


# ---------------------------------------------------------------- composition


async def test_mounted_under_a_prefix(server: Shared) -> None:
    """As Starlette's Mount("/live", app) does: root_path set, path kept whole."""
    recorder = Recorder()
    app = receiver(recorder, path="/")

    async def router(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path.startswith("/live/"):
            await app({**scope, "root_path": scope.get("root_path", "") + "/live"}, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    server.use(router)
    bot = await AsyncioBot.connect(server.url("/live/?token=none"), timeout=TIMEOUT)
    await bot.send_start("bot-10")
    await bot.close(timeout=TIMEOUT)
    (handler,) = await recorder.finished()
    assert (handler.info.path, handler.info.query) == ("/", "token=none")
    with pytest.raises(HandshakeFailed) as refused:
        await AsyncioBot.connect(server.url("/live/deeper"), timeout=TIMEOUT)
    assert refused.value.status == 404


# ---------------------------------------------------------------- limits and shutdown


@pytest.mark.parametrize("kind", KINDS)
async def test_default_16_mib_limit_loses_big_messages(kind: str) -> None:
    recorder = Recorder()
    async with serving(kind, receiver(recorder), max_size=16 * 1024 * 1024) as running:
        bot = await AsyncioBot.connect(running.url(), timeout=TIMEOUT)
        await bot.send_start("bot-11")
        await bot.send_chunk(b"small")
        # (uvicorn drops the messages it read along with an oversized frame's header.)
        await until(lambda: len(recorder.handlers) == 1 and len(recorder.handlers[0].events) == 2)
        with contextlib.suppress(OSError):
            await bot.send_chunk(BIG)
        try:
            closed = await bot.next_event(TIMEOUT)
        except OSError:  # the reset hit AsyncioBot while it answered the close frame
            closed = BotClosed(1006, "connection reset")
        bot.abort()
        (handler,) = await recorder.finished()
    assert isinstance(closed, BotClosed)
    # hypercorn sends 1009 and waits for the bot's answer (then reports 1006). uvicorn sends
    # 1009 and drops the TCP connection at once with the rest of the message unread: the reset
    # can beat the close frame to the bot, which then sees 1006.
    if kind == "hypercorn":
        assert (closed.code, handler.disconnected.code) == (1009, 1006)
    else:
        assert closed.code in (1009, 1006)
        assert handler.disconnected.code == 1009
    assert handler.media == b"small"
    assert not handler.disconnected.clean


@pytest.mark.parametrize("kind", KINDS)
async def test_shutdown_drains_then_closes_1001(kind: str) -> None:
    recorder = Recorder()
    app = receiver(recorder)
    async with serving(kind, app) as running:
        staying = await AsyncioBot.connect(running.url(), timeout=TIMEOUT)
        leaving = await AsyncioBot.connect(running.url(), timeout=TIMEOUT)
        await staying.send_start("stays")
        await leaving.send_start("leaves")
        await until(lambda: len(recorder.handlers) == 2)
        shutdown = asyncio.create_task(app.shutdown(drain_timeout=0.5))
        await asyncio.sleep(0.1)
        with pytest.raises(HandshakeFailed) as refused:  # no new streams while draining
            await AsyncioBot.connect(running.url(), timeout=TIMEOUT)
        assert refused.value.status == 503
        await leaving.send_end(1.0)  # this one finishes within the drain time
        assert (await leaving.close(timeout=TIMEOUT)).code == 1000
        closed = await staying.next_event(TIMEOUT)  # this one is closed at its end
        assert isinstance(closed, BotClosed)
        assert (closed.code, closed.reason) == (1001, "server shutting down")
        await asyncio.wait_for(shutdown, TIMEOUT)
        assert app.active_connections == 0
        handlers = {
            h.events[0].bot_id: h
            for h in recorder.handlers
            if isinstance(h.events[0], StreamStarted)
        }
        assert handlers["leaves"].disconnected.clean
        assert not handlers["stays"].disconnected.clean
        assert handlers["stays"].disconnected.code == 1001
        staying.abort()


@pytest.mark.parametrize("kind", KINDS)
async def test_server_shutdown_without_drain(kind: str) -> None:
    """Stopping the server: uvicorn closes WebSockets itself with 1012; hypercorn waits
    graceful_timeout, then cancels the app and closes with 1011 (the handler still gets
    Disconnected)."""
    recorder = Recorder()
    app = receiver(recorder)
    async with serving(kind, app, graceful_timeout=0.3) as running:
        bot = await AsyncioBot.connect(running.url(), timeout=TIMEOUT)
        await bot.send_start("bot-12")
        await until(lambda: len(recorder.handlers) == 1)
        closing = asyncio.create_task(bot.next_event(TIMEOUT))  # the bot answers a close
    closed = await closing
    bot.abort()
    (handler,) = await recorder.finished()
    expected = {
        "uvicorn": (1012, 1012),
        "uvicorn-wsproto": (1012, 1012),
        "hypercorn": (1011, 1006),
    }[kind]
    assert isinstance(closed, BotClosed)
    assert (closed.code, handler.disconnected.code) == expected
    assert not app.connections.accepting  # lifespan.shutdown reached the app


@pytest.mark.parametrize("kind", KINDS)
async def test_server_shutdown_with_drain(kind: str) -> None:
    """The documented recipes: drain before the server closes anything."""
    recorder = Recorder()
    app = receiver(recorder, options={"drain_timeout": 0.2})

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            await app.shutdown()
            await super().shutdown(sockets)

    async with serving(kind, app, server_class=DrainingServer, before_stop=app.shutdown) as running:
        bot = await AsyncioBot.connect(running.url(), timeout=TIMEOUT)
        await bot.send_start("bot-13")
        await until(lambda: len(recorder.handlers) == 1)
        closing = asyncio.create_task(bot.next_event(TIMEOUT))  # the bot answers a close
    closed = await closing
    bot.abort()
    assert isinstance(closed, BotClosed)
    assert closed.code == 1001
    (handler,) = await recorder.finished()
    disconnected = handler.disconnected
    assert (disconnected.code, disconnected.reason) == (1001, "server shutting down")


@pytest.mark.parametrize("kind", KINDS)
async def test_wss(kind: str, tmp_path: Path) -> None:
    """TLS is the ASGI server's; ConnectionInfo.secure comes from the scope's scheme."""
    ca = trustme.CA()
    pem = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    recorder = Recorder()
    async with serving(kind, receiver(recorder), pem=str(pem)) as running:
        bot = await AsyncioBot.connect(
            f"wss://127.0.0.1:{running.port}/", ssl=client, timeout=TIMEOUT
        )
        await bot.send_start("bot-14")
        await bot.send_chunk(b"secret")
        assert (await bot.close(timeout=TIMEOUT)).code == 1000
        (handler,) = await recorder.finished()
    assert handler.info.secure
    assert handler.media == b"secret"


# ---------------------------------------------------------------- without a server


async def test_lifespan_protocol() -> None:
    app = ASGIApp(Recorder())
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Any] = []

    async def receive() -> Any:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    await asyncio.wait_for(app({"type": "lifespan"}, receive, send), TIMEOUT)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_unknown_scope_type() -> None:
    async def receive() -> Any:
        raise AssertionError

    async def send(message: Any) -> None:
        raise AssertionError

    with pytest.raises(ValueError, match="unsupported ASGI scope type 'webtransport'"):
        await ASGIApp(Recorder())({"type": "webtransport"}, receive, send)


async def test_disconnect_before_accept() -> None:
    recorder = Recorder()
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "websocket.disconnect", "code": 1006}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/", "query_string": b"", "headers": []}
    await asyncio.wait_for(ASGIApp(recorder)(scope, receive, send), TIMEOUT)
    assert sent == []
    assert recorder.handlers == []


async def test_an_observer_that_raises_does_not_break_the_stream() -> None:
    """ServerOptions promises observer errors are logged, never fatal: ASGI too."""
    from meetstream_live.adapters import ServerOptions
    from meetstream_live.adapters.asgi import ASGIApp

    def broken(event: object) -> None:
        raise RuntimeError("metrics are down")

    received: list[bytes] = []

    class Keep(Handler):
        def on_chunk(self, event: Any) -> None:
            received.append(event.data)

    app = ASGIApp(lambda info: Keep(), ServerOptions(observer=broken))
    messages = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": '{"type":"video_stream_start","bot_id":"b"}'},
        {"type": "websocket.receive", "bytes": b"media"},
        {"type": "websocket.disconnect", "code": 1000},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(dict(message))

    scope = {"type": "websocket", "path": "/", "query_string": b"", "headers": [], "root_path": ""}
    await asyncio.wait_for(app(scope, receive, send), 10)
    assert sent[0]["type"] == "websocket.accept"
    assert received == [b"media"]
