"""The trio adapter: a receiver on trio TCP listeners (TLS with :class:`trio.SSLStream`), and a
bot client.

One task per connection owns its stream and its :class:`ConnectionDriver`. The handler runs in
the server's handler threads (:class:`~._delivery.Delivery`, one call at a time per connection,
in order), or in the connection task for the batches it says it takes without blocking
(``Handler.dispatch_inline``, as with asyncio: the recorder's media), and the stream is not read
while the connection's backlog is over ``max_pending_bytes``. Reads ask for 64 KiB, up to
``read_size`` while they come back full (:class:`ReadSizer`). Other tasks and threads never
touch a driver: they ``post`` to the connection (a close on shutdown, after a handler error,
from the handler's ``ConnectionInfo.close``; an HTTP answer), which ``TrioToken.run_sync_soon``
brings to the trio thread; the connection's read is interrupted and its task does the rest.
"""

from __future__ import annotations

import contextlib
import math
import ssl as ssl_module
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator

import trio

from meetstream_live import (
    BotClosed,
    BotConnection,
    BotState,
    Event,
    parse_ws_url,
)

from ._bots import AsyncBotSends, client_tls, handshake_outcome
from ._delivery import Delivery, handler_pool
from ._driver import (
    ACCEPT_CAPACITY_ERRNOS,
    ACCEPT_RETRY_DELAY,
    ConnectionDriver,
    Connections,
    ReadSizer,
    Step,
    log,
    now_ms,
)
from ._handler import HandlerFactory, ServerOptions
from ._system import warm_up

__all__ = ["TrioBot", "TrioServer", "run", "serve"]

#: The shortest wait given to a read. A read whose deadline has already passed (after a long
#: backpressure pause, say) still takes the bytes that are waiting before the deadline counts.
_MIN_READ_WAIT = 0.005

_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@contextlib.contextmanager
def _fail_after(seconds: float | None) -> Iterator[None]:
    """``trio.fail_after`` that raises the builtin ``TimeoutError`` (as the other adapters do)."""
    if seconds is None:
        yield
        return
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        raise TimeoutError(f"timed out after {seconds} s") from None


class _Connection:
    """One accepted stream, driven by its own task (:meth:`run`). Other threads and tasks
    :meth:`post` to it (brought to the trio thread by ``TrioToken.run_sync_soon``): the request
    is queued, the connection's read interrupted, and the connection task runs it."""

    def __init__(
        self,
        server: TrioServer,
        stream: trio.abc.Stream,
        peer: str,
        token: trio.lowlevel.TrioToken,
    ) -> None:
        options = server.options
        self.stream = stream
        self.options = options
        self._server = server
        self._token = token
        self.driver = ConnectionDriver(
            options,
            server.factory,
            peer=peer,
            post=self.post,
            overloaded=server.connections.overloaded(),
        )
        self.driver.backlog.on_below = self._below
        self.delivery: Delivery | None = None
        self._write_timeout = options.config.close_timeout_ms / 1000
        self._posted: deque[Callable[[ConnectionDriver], Step | None]] = deque()
        self._broken = False
        self._paused = False
        self._sizer = ReadSizer(options.read_size)  # bytes asked per read
        self._read_scope = trio.CancelScope()
        self._wakeup = trio.Event()

    # ------------------------------------------------------------------ from anywhere

    def post(self, fn: Callable[[ConnectionDriver], Step | None]) -> None:
        """The driver's ``post``, from any thread, the trio thread included (``run_sync_soon``
        neither blocks nor needs a task)."""
        with contextlib.suppress(trio.RunFinishedError):  # the server is gone: so is this
            self._token.run_sync_soon(self._enqueue, fn)

    def _enqueue(self, fn: Callable[[ConnectionDriver], Step | None]) -> None:
        self._posted.append(fn)
        self._interrupt()

    def _below(self) -> None:
        """The backlog's wake-up (any thread): read again."""
        self._soon(self._wake)

    def _wake(self) -> None:
        self._wakeup.set()

    def _interrupt(self) -> None:
        """Wake the connection task wherever it waits, its read included."""
        self._wakeup.set()
        self._read_scope.cancel()

    # ------------------------------------------------------------------ the connection task

    async def run(self) -> None:
        driver = self.driver
        try:
            if isinstance(self.stream, trio.SSLStream) and not await self._tls_handshake():
                driver.receive(b"")  # nothing was said over HTTP yet: just close
                return
            await self._read_loop()
        finally:
            if not driver.closed:
                # Cancelled (or a bug): the handler still hears of the end.
                step = driver.receive(b"")
                if step.events:
                    self._submit(step.events)

    async def aclose(self) -> None:
        """Close the stream (a TLS close_notify at most ``close_timeout`` long), once the
        handler has had every event."""
        delivery = self.delivery
        if delivery is not None:
            idle = trio.Event()
            if not delivery.when_idle(lambda: self._soon(idle.set)):
                with trio.CancelScope(shield=True):
                    await idle.wait()
        with trio.move_on_after(self._write_timeout):
            await self.stream.aclose()

    def _soon(self, fn: Callable[[], None]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn)

    async def _tls_handshake(self) -> bool:
        stream = self.stream
        assert isinstance(stream, trio.SSLStream)
        with self._scope(self.driver.seconds_to_deadline()):
            try:
                await stream.do_handshake()
            except _STREAM_ERRORS as exc:
                log.info("%s: TLS handshake failed: %s", self.driver.peer, exc)
                return False
            return True
        return False  # timed out, or the server is shutting down

    async def _read_loop(self) -> None:
        driver = self.driver
        while not driver.closed:
            if self._posted:
                fn = self._posted.popleft()
                step = fn(driver)
                if step is not None:
                    await self._process(step)
                continue
            if self._paused:
                if driver.backlog.over:
                    self._wakeup = trio.Event()
                    if driver.backlog.over:
                        await self._wakeup.wait()  # the backlog's wake-up, or a post
                    continue
                self._paused = False
                driver.resumed()  # the pause was ours, not the bot's idleness
                continue
            step = await self._read()
            await self._process(step)  # pongs go out before the handler sees this read's media
            if step.closed or self._broken:  # (the broken case is closed by _process)
                break

    def _scope(self, timeout: float | None) -> trio.CancelScope:
        """A cancel scope with ``timeout`` that :meth:`_interrupt` cancels too (cancelling it
        once it is over does nothing, so it is never unset)."""
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        self._read_scope = scope = trio.CancelScope(deadline=deadline)
        return scope

    async def _read(self) -> Step:
        driver = self.driver
        timeout = driver.seconds_to_deadline()
        data: bytes | None = None
        sizer = self._sizer
        with self._scope(None if timeout is None else max(timeout, _MIN_READ_WAIT)):
            try:
                received = await self.stream.receive_some(sizer.size)
            except _STREAM_ERRORS:
                data = b""
            else:
                data = received if isinstance(received, bytes) else bytes(received)
                sizer.update(len(data))
        if data is None:
            # The deadline passed (a no-op if not quite due), or another task interrupted us
            # (the loop then runs what was posted).
            return driver.timeout()
        return driver.receive(data)

    async def _process(self, step: Step) -> None:
        if step.out and not self._broken and not await self._send(step.out):
            self._broken = True
        if step.events:
            self._submit(step.events)
            if not self._paused and self.driver.backlog.should_pause():
                self._paused = True
        if self._broken and not self.driver.closed:
            await self._process(self.driver.receive(b""))

    def _submit(self, events: list[Event]) -> None:
        delivery = self.delivery
        if delivery is None:
            calls = self.driver.calls
            assert calls is not None
            delivery = self.delivery = Delivery(
                calls, self._server._executor, self.post, self.driver.backlog
            )
        delivery.submit(events)

    async def _send(self, data: bytes) -> bool:
        """Write ``data``; False when the connection is lost or stalls for ``close_timeout``
        (a bot that reads nothing is gone)."""
        with trio.move_on_after(self._write_timeout):
            try:
                await self.stream.send_all(data)
            except _STREAM_ERRORS:
                return False
            return True
        return False


class TrioServer:
    """A receiver on trio. Use ``async with serve(...)``, or :meth:`start`, then
    :meth:`serve_forever` in a nursery and :meth:`shutdown` from another task."""

    def __init__(self, factory: HandlerFactory, options: ServerOptions | None = None) -> None:
        self.factory = factory
        self.options = options or ServerOptions()
        self._listeners: list[trio.SocketListener] = []
        #: The open connections: the limit and the drain (shared policy).
        self.connections = Connections(self.options)
        self._changed = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._serving = False
        self._accept_scope = trio.CancelScope()
        #: The handler threads (``ServerOptions.handler_threads``), shared by all connections.
        self._executor = handler_pool(self.options.handler_threads)

    @property
    def listeners(self) -> list[trio.SocketListener]:
        return list(self._listeners)

    @property
    def sockets(self) -> list[trio.socket.SocketType]:
        return [listener.socket for listener in self._listeners]

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    @property
    def active_connections(self) -> int:
        return self.connections.count

    async def start(
        self,
        host: str | None = "127.0.0.1",
        port: int = 9876,
        *,
        backlog: int | None = None,
        reuse_port: bool = False,
    ) -> None:
        """Bind and listen (``port=0`` picks a free port; see :attr:`port`). Connections wait
        in the backlog until :meth:`serve_forever` runs. ``reuse_port`` binds with
        SO_REUSEPORT (several processes on one port: ``serve --workers``)."""
        warm_up("trio", self.options.config.unmask)
        self._token = token = trio.lowlevel.current_trio_token()

        def changed() -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._changed.set)

        self.connections.on_change(changed)
        if reuse_port:
            self._listeners = await _reuse_port_listeners(host, port, backlog)
        else:
            self._listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)

    async def serve_forever(self) -> None:
        """Accept and serve connections; returns after :meth:`shutdown`, once every connection
        is over."""
        if not self._listeners:
            raise RuntimeError("call start() before serve_forever()")
        if not self.connections.accepting:
            return
        self._serving = True
        try:
            async with trio.open_nursery() as handlers:
                with self._accept_scope:
                    async with trio.open_nursery() as accepting:
                        for listener in self._listeners:
                            accepting.start_soon(self._accept, listener, handlers)
        finally:
            self._serving = False

    async def shutdown(self, drain_timeout: float | None = None) -> None:
        """Stop accepting; let streams run up to ``drain_timeout``; close the rest with 1001;
        return when every handler has finished."""
        self._accept_scope.cancel()  # each _accept closes its listener
        if not self._serving:
            for listener in self._listeners:
                await listener.aclose()
        for timeout in self.connections.drain(drain_timeout):
            with trio.move_on_after(math.inf if timeout is None else timeout):
                await self._wait_idle()
        self._executor.shutdown(wait=False)

    async def __aenter__(self) -> TrioServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    # ------------------------------------------------------------------ internals

    async def _wait_idle(self) -> None:
        while self.connections.count:
            if self._changed.is_set():
                self._changed = trio.Event()
                continue
            await self._changed.wait()

    async def _accept(self, listener: trio.SocketListener, handlers: trio.Nursery) -> None:
        """``trio.serve_listeners`` for one listener, but out of descriptors (``EMFILE``),
        the reserve is let go and we accept again at once (that upgrade gets 503), or, with
        none left, wait a little (the connection waits in the backlog), logged once per
        burst (:class:`~._driver.Descriptors`). Closes the listener when cancelled."""
        descriptors = self.connections.descriptors
        async with listener:
            while True:
                try:
                    tcp = await listener.accept()
                except OSError as exc:
                    if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                        raise
                    if not descriptors.accept_failed(exc):
                        await trio.sleep(ACCEPT_RETRY_DELAY)
                    continue
                handlers.start_soon(self._serve, tcp)

    async def _serve(self, tcp: trio.SocketStream) -> None:
        if not self.connections.accepting:
            await trio.aclose_forcefully(tcp)
            return
        try:
            peer = str(tcp.socket.getpeername())
        except OSError:
            peer = "?"
        context = self.options.ssl
        stream: trio.abc.Stream = (
            tcp if context is None else trio.SSLStream(tcp, context, server_side=True)
        )
        conn = _Connection(self, stream, peer, trio.lowlevel.current_trio_token())
        self.connections.add(conn, conn.post)
        try:
            await conn.run()
        except Exception:
            log.exception("connection from %s failed", peer)
        finally:
            with trio.CancelScope(shield=True):  # cancelled or not, the handler hears the end
                await conn.aclose()  # the socket closes once the handler has every event
            self.connections.discard(conn)
            await trio.aclose_forcefully(tcp)  # raises Cancelled when cancelled from outside


async def _reuse_port_listeners(
    host: str | None, port: int, backlog: int | None
) -> list[trio.SocketListener]:
    """Listeners bound with SO_REUSEPORT, one per address of ``host`` (every interface when
    ``None``), as ``trio.open_tcp_listeners`` would make them otherwise."""
    infos = await trio.socket.getaddrinfo(
        host, port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE
    )
    listeners: list[trio.SocketListener] = []
    for family, kind, proto, _name, address in infos:
        sock = trio.socket.socket(family, kind, proto)
        try:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
            if family == trio.socket.AF_INET6:
                sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
            await sock.bind(address)
            sock.listen(backlog or 0xFFFF)
        except BaseException:
            sock.close()
            for listener in listeners:
                listener.socket.close()
            raise
        listeners.append(trio.SocketListener(sock))
    return listeners


@contextlib.asynccontextmanager
async def serve(
    factory: HandlerFactory,
    host: str | None = "127.0.0.1",
    port: int = 9876,
    options: ServerOptions | None = None,
) -> AsyncIterator[TrioServer]:
    """Run a receiver for the duration of the ``async with`` block (graceful shutdown at exit,
    even when the block is cancelled)."""
    server = TrioServer(factory, options)
    await server.start(host, port)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve_shielded, server)
        try:
            yield server
        finally:
            with trio.CancelScope(shield=True):
                await server.shutdown()


async def _serve_shielded(server: TrioServer) -> None:
    """``serve_forever`` out of reach of the caller's cancellation: the connections must hear
    of a cancelled ``async with serve(...)`` from :meth:`TrioServer.shutdown` (1001), not from
    a cancellation (which drops them)."""
    with trio.CancelScope(shield=True):
        await server.serve_forever()


class TrioBot(AsyncBotSends):
    """A MeetStream bot on trio streams: ``bot = await TrioBot.connect(url)``.

    ``send_*`` write at once (``ConnectionError`` when the connection is gone);
    :meth:`next_event` returns what the receiver sent (pongs, the close).
    """

    def __init__(
        self, conn: BotConnection, stream: trio.abc.Stream, tcp: trio.SocketStream
    ) -> None:
        self.conn = conn
        self._stream = stream
        self._tcp = tcp
        self._events: deque[Event] = deque()
        self.clock: Callable[[], int] = now_ms

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        ssl: ssl_module.SSLContext | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        timeout: float = 10.0,
    ) -> TrioBot:
        """Connect and finish the handshake; raises ``HandshakeFailed`` when refused."""
        target = parse_ws_url(url)
        conn = BotConnection(target, headers=headers)
        context = client_tls(target, ssl)
        with _fail_after(timeout):
            tcp = await trio.open_tcp_stream(target.host, target.port)
            try:
                stream: trio.abc.Stream = tcp
                if context is not None:
                    ssl_stream = trio.SSLStream(tcp, context, server_hostname=target.host)
                    await ssl_stream.do_handshake()
                    stream = ssl_stream
            except BaseException:
                tcp.socket.close()
                raise
        bot = cls(conn, stream, tcp)
        try:
            await bot._flush()
            while True:
                with _fail_after(timeout):
                    events = await bot._read_events()
                if handshake_outcome(events):
                    bot._events.extend(events[1:])
                    return bot
        except BaseException:
            bot.abort()
            raise

    async def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionError(f"connection lost: {exc}") from exc

    async def _read_events(self) -> list[Event]:
        try:
            received = await self._stream.receive_some(256 * 1024)
        except _STREAM_ERRORS:
            received = b""
        data = received if isinstance(received, bytes) else bytes(received)
        events = self.conn.receive_data(data, self.clock())
        with contextlib.suppress(OSError):
            await self._flush()  # answers to WebSocket pings and closes
        return events

    async def next_event(self, timeout: float | None = None) -> Event:
        """The next event from the receiver; :class:`BotClosed` once the connection is over.
        Raises ``TimeoutError`` when nothing came within ``timeout`` seconds."""
        while not self._events:
            if self.conn.state is BotState.CLOSED:
                return BotClosed(1006, "connection closed")
            with _fail_after(timeout):
                events = await self._read_events()
            self._events.extend(events)
        return self._events.popleft()

    def abort(self) -> None:
        """Drop the TCP connection at once (a bot that vanishes)."""
        self._tcp.socket.close()


def run(
    factory: HandlerFactory,
    host: str | None = "127.0.0.1",
    port: int = 9876,
    options: ServerOptions | None = None,
    *,
    on_ready: Callable[[int], None] | None = None,
    reuse_port: bool = False,
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully (blocking; main thread only).

    ``on_ready`` is called with the bound port once the server accepts connections.
    ``reuse_port`` binds with SO_REUSEPORT (several processes on one port: ``--workers``).
    """
    import signal

    async def main() -> None:
        server = TrioServer(factory, options)
        await server.start(host, port, reuse_port=reuse_port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve_forever)
            # Kept open during the shutdown: a second signal does not interrupt it.
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                if on_ready is not None:
                    on_ready(server.port)
                async for _signum in signals:
                    break
                log.info("shutting down: draining %d connection(s)", server.active_connections)
                await server.shutdown()

    trio.run(main)
