"""Run any of our server adapters in a background thread, the same way for every adapter.

``running_server(name, factory, options, tls=ca)`` yields the bound port; on exit it shuts the
server down gracefully and waits for every handler. Tests stay synchronous, so the same scenario
drives every adapter with every client.

The servers: the socket adapters (``asyncio``, ``sync``, ``trio``), whose bytes all go through
the core, and :class:`~meetstream_live.adapters.asgi.ASGIApp` under uvicorn (``asgi-uvicorn``)
and under hypercorn (``asgi-hypercorn``), which parse HTTP and frame WebSockets themselves.
``running_server`` also runs the asyncio adapter on uvloop's event loop (``asyncio-uvloop``,
:data:`VARIANTS`: not in the conformance matrix; it needs uvloop installed).
Where they legitimately differ (documented in ``adapters/asgi.py``), each server's
:class:`Capabilities` says how, and the scenarios assert exactly that.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from meetstream_live import Disconnected, Event, MediaChunk, StreamStarted
from meetstream_live.adapters import ConnectionInfo, Handler, HandlerFactory, ServerOptions
from meetstream_live.adapters.asgi import RECOMMENDED_MAX_MESSAGE_SIZE, ASGIApp

if TYPE_CHECKING:
    import trustme

START_TIMEOUT = 10.0
STOP_TIMEOUT = 60.0


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


# ------------------------------------------------------------------------ capabilities


@dataclass(frozen=True)
class Capabilities:
    """Where a server legitimately differs from the core's behaviour (see ``adapters/asgi.py``).

    Every scenario asserts exactly what these promise: nothing is skipped, nothing is loose.
    """

    #: ``Disconnected.code`` after the bot's close handshake is the bot's code (``True``), or
    #: 1006 whatever the code on the wire (hypercorn).
    reports_peer_close_code: bool
    #: ``Disconnected.code`` when the connection ended without a close frame: 1006 (the core,
    #: hypercorn) or 1005, "no status" (uvicorn).
    dropped_close_code: int
    #: When a bot vanishes in the middle of a frame, the handler still gets the part of it that
    #: arrived (the socket adapters), or only the complete messages (ASGI servers deliver whole
    #: messages; the torn one is lost).
    delivers_partial_frames: bool
    #: A request head that never completes: ``"408"``, answered after
    #: ``ServerConfig.handshake_timeout_ms`` (the core's timer); ``"close"``, the connection is
    #: closed without a response after the server's own timeout, configured to the same time
    #: (hypercorn's ``keep_alive_timeout``, which runs until a request head is complete);
    #: ``"none"``, it stays open until shutdown (uvicorn has no request-head timeout).
    request_head_timeout: Literal["408", "close", "none"]
    #: Replies (pongs) to messages read together with the bot's close frame go out before the
    #: close answer (the core handles a read in order). ASGI servers answer the close frame as
    #: they parse it, before the app has read the messages ahead of it, then drop its replies.
    answers_before_peer_close: bool


#: The socket adapters: every byte goes through the core.
CORE = Capabilities(
    reports_peer_close_code=True,
    dropped_close_code=1006,
    delivers_partial_frames=True,
    request_head_timeout="408",
    answers_before_peer_close=True,
)
UVICORN = Capabilities(
    reports_peer_close_code=True,
    dropped_close_code=1005,
    delivers_partial_frames=False,
    request_head_timeout="none",
    answers_before_peer_close=False,
)
HYPERCORN = Capabilities(
    reports_peer_close_code=False,
    dropped_close_code=1006,
    delivers_partial_frames=False,
    request_head_timeout="close",
    answers_before_peer_close=False,
)


# ------------------------------------------------------------------------- per adapter


def _socket_options(options: ServerOptions, tls: trustme.CA | None) -> ServerOptions:
    """The socket adapters take TLS as a server-side context in ``ServerOptions.ssl``."""
    if tls is None:
        return options
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    context.num_tickets = 0  # see tls_contexts: websockets' sync client and TLS 1.3 tickets
    return dataclasses.replace(options, ssl=context)


def tls_contexts(ca: trustme.CA) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context (for ``ServerOptions.ssl``) with a certificate for 127.0.0.1 and
    localhost, and a client context that trusts ``ca``; the server sends no TLS 1.3 session
    tickets. For tests that open several ``wss://`` connections with websockets' sync client at
    once: that client reads in a thread of its own while the caller's thread writes, so
    OpenSSL runs SSL_read (taking in the tickets the server sends after the handshake) and
    SSL_write (the upgrade request) on one SSL object at the same time, which it does not
    allow; now and then the request is lost (about one connection in 300 here, whatever the
    server: the server then answers 408). Without tickets nothing arrives during that write."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    server.num_tickets = 0
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


@contextlib.contextmanager
def _loop_in_thread(
    name: str,
    main: Callable[[asyncio.Event, Callable[[int], None]], Coroutine[None, None, None]],
    new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
) -> Iterator[int]:
    """Run ``main(stop, ready)`` on a new event loop (``new_loop()``) in a thread; yield the
    port it reports through ``ready(port)``; set ``stop`` at exit and wait for ``main`` to
    return."""
    ready = threading.Event()
    port: list[int] = []
    stops: list[asyncio.Event] = []
    errors: list[BaseException] = []
    loop = new_loop()

    def started(bound: int) -> None:
        port.append(bound)
        ready.set()

    async def run() -> None:
        stop = asyncio.Event()
        stops.append(stop)
        await main(stop, started)

    def target() -> None:
        try:
            loop.run_until_complete(run())
        except BaseException as exc:
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=target, name=f"{name}-server", daemon=True)
    thread.start()
    assert ready.wait(START_TIMEOUT), f"{name} server did not start"
    if errors:
        raise errors[0]
    try:
        yield port[0]
    finally:
        loop.call_soon_threadsafe(stops[0].set)
        thread.join(STOP_TIMEOUT)
        assert not thread.is_alive(), f"{name} server did not shut down"
        loop.close()
        if errors:
            raise errors[0]


@contextlib.contextmanager
def _asyncio_server(
    factory: HandlerFactory,
    options: ServerOptions,
    drain_timeout: float | None,
    tls: trustme.CA | None,
    new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
) -> Iterator[int]:
    from meetstream_live.adapters.asyncio import AsyncioServer

    async def main(stop: asyncio.Event, ready: Callable[[int], None]) -> None:
        server = AsyncioServer(factory, _socket_options(options, tls))
        await server.start("127.0.0.1", 0)
        ready(server.port)
        await stop.wait()
        await server.shutdown(drain_timeout)

    with _loop_in_thread("asyncio", main, new_loop) as port:
        yield port


def _asyncio_uvloop_server(
    factory: HandlerFactory,
    options: ServerOptions,
    drain_timeout: float | None,
    tls: trustme.CA | None,
) -> contextlib.AbstractContextManager[int]:
    """The asyncio adapter on uvloop's event loop (what ``serve --adapter uvloop`` runs)."""
    import uvloop

    return _asyncio_server(factory, options, drain_timeout, tls, uvloop.new_event_loop)


@contextlib.contextmanager
def _sync_server(
    factory: HandlerFactory,
    options: ServerOptions,
    drain_timeout: float | None,
    tls: trustme.CA | None,
) -> Iterator[int]:
    from meetstream_live.adapters.sync import SyncServer

    server = SyncServer(factory, _socket_options(options, tls))
    server.start("127.0.0.1", 0)
    thread = server.start_background()
    try:
        yield server.port
    finally:
        server.shutdown(drain_timeout)
        thread.join(STOP_TIMEOUT)
        assert not thread.is_alive(), "sync server did not shut down"


@contextlib.contextmanager
def _trio_server(
    factory: HandlerFactory,
    options: ServerOptions,
    drain_timeout: float | None,
    tls: trustme.CA | None,
) -> Iterator[int]:
    import trio

    from meetstream_live.adapters.trio import TrioServer

    ready = threading.Event()
    state: dict[str, object] = {}

    async def main() -> None:
        stop = trio.Event()
        server = TrioServer(factory, _socket_options(options, tls))
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
        thread.join(STOP_TIMEOUT)
        assert not thread.is_alive(), "trio server did not shut down"


# ------------------------------------------------------------------- ASGI servers


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # fifty bots connect at once
    return sock


@contextlib.contextmanager
def _asgi_server(
    kind: Literal["uvicorn", "hypercorn"],
    factory: HandlerFactory,
    options: ServerOptions,
    drain_timeout: float | None,
    tls: trustme.CA | None,
) -> Iterator[int]:
    """:class:`ASGIApp` under a real ASGI server, with the settings ``adapters/asgi.py``
    recommends. TLS is the server's: the certificate goes to it as a PEM file. Shutdown is the
    documented recipe: ``app.shutdown(drain_timeout)`` first, then the server stops."""
    app = ASGIApp(factory, options)
    with contextlib.ExitStack() as stack:
        pem: str | None = None
        if tls is not None:
            directory = stack.enter_context(tempfile.TemporaryDirectory())
            pem = str(Path(directory) / "server.pem")
            cert = tls.issue_cert("127.0.0.1", "localhost")
            cert.private_key_and_cert_chain_pem.write_to_path(pem)
        sock = stack.enter_context(_listening_socket())
        serve = _uvicorn if kind == "uvicorn" else _hypercorn

        async def main(stop: asyncio.Event, ready: Callable[[int], None]) -> None:
            await serve(app, sock, drain_timeout, pem, stop, ready)

        with _loop_in_thread(f"asgi-{kind}", main) as port:
            yield port


async def _uvicorn(
    app: ASGIApp,
    sock: socket.socket,
    drain_timeout: float | None,
    pem: str | None,
    stop: asyncio.Event,
    ready: Callable[[int], None],
) -> None:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            await app.shutdown(drain_timeout)
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app,
        lifespan="on",
        ws_max_size=RECOMMENDED_MAX_MESSAGE_SIZE,
        ws_per_message_deflate=False,
        log_config=None,
        log_level="warning",
        ssl_certfile=pem,
        ssl_keyfile=pem,
    )
    server = DrainingServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task
            raise RuntimeError("uvicorn exited before it started")
        await asyncio.sleep(0.01)
    ready(sock.getsockname()[1])
    await stop.wait()
    server.should_exit = True
    await task


async def _hypercorn(
    app: ASGIApp,
    sock: socket.socket,
    drain_timeout: float | None,
    pem: str | None,
    stop: asyncio.Event,
    ready: Callable[[int], None],
) -> None:
    import hypercorn.asyncio
    import hypercorn.config

    port = sock.getsockname()[1]
    config = hypercorn.config.Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns the socket from here
    config.websocket_max_message_size = RECOMMENDED_MAX_MESSAGE_SIZE
    # hypercorn's request-head timeout: the idle timer runs from the accept until a request
    # head is complete. ServerConfig.handshake_timeout_ms is what the app cannot apply itself.
    config.keep_alive_timeout = app.options.config.handshake_timeout_ms / 1000
    config.loglevel = "WARNING"
    if pem is not None:
        config.certfile = config.keyfile = pem

    async def trigger() -> None:
        await stop.wait()
        await app.shutdown(drain_timeout)

    task = asyncio.create_task(hypercorn.asyncio.serve(app, config, shutdown_trigger=trigger))
    await asyncio.sleep(0)  # the socket is listening already: connections wait in its backlog
    ready(port)
    await task


# ------------------------------------------------------------------------ registry


class ServerRunner(Protocol):
    def __call__(
        self,
        factory: HandlerFactory,
        options: ServerOptions,
        drain_timeout: float | None,
        tls: trustme.CA | None,
    ) -> contextlib.AbstractContextManager[int]: ...


@dataclass(frozen=True)
class Server:
    run: ServerRunner
    capabilities: Capabilities


def _asgi(kind: Literal["uvicorn", "hypercorn"]) -> ServerRunner:
    def run(
        factory: HandlerFactory,
        options: ServerOptions,
        drain_timeout: float | None,
        tls: trustme.CA | None,
    ) -> contextlib.AbstractContextManager[int]:
        return _asgi_server(kind, factory, options, drain_timeout, tls)

    return run


SERVERS: dict[str, Server] = {
    "asyncio": Server(_asyncio_server, CORE),
    "sync": Server(_sync_server, CORE),
    "trio": Server(_trio_server, CORE),
    "asgi-uvicorn": Server(_asgi("uvicorn"), UVICORN),
    "asgi-hypercorn": Server(_asgi("hypercorn"), HYPERCORN),
}


#: Servers that :func:`running_server` runs too, outside the conformance matrix: the asyncio
#: adapter on uvloop (for the tests of what differs there: its transports' reads).
VARIANTS: dict[str, Server] = {
    "asyncio-uvloop": Server(_asyncio_uvloop_server, CORE),
}


def _server(name: str) -> Server:
    return SERVERS[name] if name in SERVERS else VARIANTS[name]


def capabilities(name: str) -> Capabilities:
    return _server(name).capabilities


@contextlib.contextmanager
def running_server(
    name: str,
    factory: HandlerFactory,
    options: ServerOptions | None = None,
    *,
    drain_timeout: float | None = 5.0,
    tls: trustme.CA | None = None,
) -> Iterator[int]:
    """Run server ``name`` for the block; yield its port. With ``tls``, it serves ``wss://``
    with a certificate for 127.0.0.1 and localhost issued by that CA (each server takes it its
    own way: an ``ssl.SSLContext`` in ``ServerOptions.ssl``, or certificate files)."""
    with _server(name).run(factory, options or ServerOptions(), drain_timeout, tls) as port:
        yield port
