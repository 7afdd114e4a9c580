"""The trio adapter: a receiver on trio TCP listeners (TLS with :class:`trio.SSLStream`), and a
bot client.

One task per connection owns its stream and its :class:`ConnectionDriver`. The handler runs in a
worker thread (``trio.to_thread.run_sync``, one call at a time per connection, in order), or in
the connection task for the batches it says it takes without blocking
(``Handler.dispatch_inline``, as with asyncio: the recorder's media), and the stream is not
read while more than ``max_pending_bytes`` of media wait for the handler. Reads ask for 64 KiB,
up to ``read_size`` while they come back full (:class:`ReadSizer`).
Other tasks never touch a driver: to close a connection (shutdown, a failed handler, the
handler's ``ConnectionInfo.close``, brought to the trio thread by ``TrioToken.run_sync_soon``)
they set a flag and cancel the connection's read, and the connection task does the rest.
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
    Disconnected,
    Event,
    parse_ws_url,
)

from ._common import (
    GOING_AWAY,
    AsyncBotSends,
    ConnectionDriver,
    Handler,
    HandlerFactory,
    InlineOffer,
    ReadSizer,
    ServerOptions,
    Step,
    client_tls,
    deliver,
    handshake_outcome,
    log,
    media_size,
    now_ms,
    warm_up,
)

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


class _Runner:
    """Calls one connection's handler in a worker thread, in order, and counts the media
    waiting. Handler calls are shielded: once read, every event reaches the handler.

    When nothing of the connection is queued or running in a thread, a batch is first offered
    to :meth:`Handler.dispatch_inline`, right here in the trio thread (:class:`InlineOffer`:
    the asyncio adapter's rule, stall backoff included), which saves a thread hop per read.
    """

    def __init__(
        self,
        handler: Handler,
        nursery: trio.Nursery,
        on_progress: Callable[[], None],
        on_error: Callable[[], None],
        limiter: trio.CapacityLimiter,
    ) -> None:
        self.handler = handler
        self.limiter = limiter
        self.pending = 0
        self.error: Exception | None = None
        self._nursery = nursery
        self._on_progress = on_progress
        self._on_error = on_error
        self._batches: deque[list[Event]] = deque()
        self._running = False
        self._inline = InlineOffer(handler)

    def submit(self, events: list[Event]) -> None:
        if not self._running and self.error is None:  # idle: nothing queued or in a thread
            done = self._inline.offer(events)
            if isinstance(done, Exception):  # a handler error: the connection closes (1011)
                self.error = done
                self._on_error()
                return
            if done:
                return
        self.pending += media_size(events)
        self._batches.append(events)
        if not self._running:
            self._running = True
            self._nursery.start_soon(self._run)

    async def _run(self) -> None:
        try:
            with trio.CancelScope(shield=True):
                while self._batches:
                    batch: list[Event] = []
                    while self._batches:
                        batch += self._batches.popleft()
                    size = media_size(batch)
                    if self.error is not None:
                        # After a failure the handler only hears of the disconnect.
                        batch = [e for e in batch if isinstance(e, Disconnected)]
                    error = await trio.to_thread.run_sync(
                        deliver, self.handler, batch, limiter=self.limiter
                    )
                    self.pending -= size
                    if error is not None and self.error is None:
                        self.error = error
                        self._on_error()
                    else:
                        self._on_progress()
        finally:
            self._running = False


class _Connection:
    """One accepted stream, driven by its own task (:meth:`run`)."""

    def __init__(
        self,
        driver: ConnectionDriver,
        stream: trio.abc.Stream,
        options: ServerOptions,
        nursery: trio.Nursery,
        limiter: trio.CapacityLimiter,
    ) -> None:
        self.driver = driver
        self.stream = stream
        self.options = options
        self.limiter = limiter
        self.runner: _Runner | None = None
        self._nursery = nursery
        self._write_timeout = options.config.close_timeout_ms / 1000
        self._close_request: tuple[int, str] | None = None  # the first request wins
        self._close_sent = False
        self._broken = False
        self._sizer = ReadSizer(options.read_size)  # bytes asked per read
        self._read_scope = trio.CancelScope()
        self._wakeup = trio.Event()

    # ------------------------------------------------------------------ from other tasks

    def request_close(self, code: int = GOING_AWAY, reason: str = "server shutting down") -> None:
        """Ask the connection task to close (1001 by default: shutdown); in the trio thread."""
        if self.driver.closed or self._close_request is not None:
            return
        self._close_request = (code, reason)
        self._interrupt()

    def close_from_anywhere(self, token: trio.lowlevel.TrioToken) -> Callable[[int, str], None]:
        """``ConnectionInfo.close``: :meth:`request_close` from any thread, the trio thread
        included (``run_sync_soon`` neither blocks nor needs a task)."""

        def close(code: int, reason: str) -> None:
            with contextlib.suppress(trio.RunFinishedError):  # the server is gone: so is this
                token.run_sync_soon(self.request_close, code, reason)

        return close

    def _notify(self) -> None:
        """Wake the connection task if it waits for the handler (backpressure)."""
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
        """Close the stream (a TLS close_notify at most ``close_timeout`` long)."""
        with trio.move_on_after(self._write_timeout):
            await self.stream.aclose()

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
        driver, options = self.driver, self.options
        while not driver.closed:
            step = self._requested_step()
            if step is None:
                step = await self._read()
            await self._process(step)  # pongs go out before the handler sees this read's media
            if step.closed or self._broken:  # (the broken case is closed by _process)
                break
            runner = self.runner
            paused = False
            while (
                runner is not None
                and runner.pending > options.max_pending_bytes
                and runner.error is None
                and not self._close_due()
            ):
                paused = True
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            if paused:
                driver.resumed()  # the pause was ours, not the bot's idleness

    def _close_due(self) -> bool:
        return self._close_request is not None and not self._close_sent

    def _requested_step(self) -> Step | None:
        """What other tasks asked for: the 1011 close after a handler error, or a requested one
        (1001 on shutdown, or the handler's)."""
        runner, driver = self.runner, self.driver
        if runner is not None and runner.error is not None and not driver.handler_failed:
            return driver.handler_error(runner.error)
        request = self._close_request
        if request is not None and not self._close_sent:
            self._close_sent = True
            return driver.close(*request)
        return None

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
            # (the loop then does what was asked).
            return driver.timeout()
        return driver.receive(data)

    async def _process(self, step: Step) -> None:
        if step.out and not self._broken and not await self._send(step.out):
            self._broken = True
        if step.events:
            self._submit(step.events)
        if self._broken and not self.driver.closed:
            await self._process(self.driver.receive(b""))

    def _submit(self, events: list[Event]) -> None:
        if self.runner is None:
            assert self.driver.handler is not None
            self.runner = _Runner(
                self.driver.handler, self._nursery, self._notify, self._interrupt, self.limiter
            )
        self.runner.submit(events)

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
        self._connections: set[_Connection] = set()
        self._changed = trio.Event()
        self._accepting = True
        self._serving = False
        self._accept_scope = trio.CancelScope()
        #: The handler threads (``ServerOptions.handler_threads``), shared by all connections.
        self.limiter = trio.CapacityLimiter(self.options.handler_threads)

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
        return len(self._connections)

    async def start(
        self, host: str | None = "127.0.0.1", port: int = 9876, *, backlog: int | None = None
    ) -> None:
        """Bind and listen (``port=0`` picks a free port; see :attr:`port`). Connections wait
        in the backlog until :meth:`serve_forever` runs."""
        warm_up("trio")
        self._listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)

    async def serve_forever(self) -> None:
        """Accept and serve connections; returns after :meth:`shutdown`, once every connection
        is over."""
        if not self._listeners:
            raise RuntimeError("call start() before serve_forever()")
        if not self._accepting:
            return
        self._serving = True
        try:
            async with trio.open_nursery() as handlers:
                with self._accept_scope:
                    await trio.serve_listeners(
                        self._serve, self._listeners, handler_nursery=handlers
                    )
        finally:
            self._serving = False

    async def shutdown(self, drain_timeout: float | None = None) -> None:
        """Stop accepting; let streams run up to ``drain_timeout``; close the rest with 1001;
        return when every handler has finished."""
        self._accepting = False
        self._accept_scope.cancel()  # serve_listeners closes the listeners
        if not self._serving:
            for listener in self._listeners:
                await listener.aclose()
        drain = self.options.drain_timeout if drain_timeout is None else drain_timeout
        with trio.move_on_after(drain):
            await self._wait_idle()
        if self._connections:
            log.info("closing %d connection(s) with 1001", len(self._connections))
        for conn in list(self._connections):
            conn.request_close()
        await self._wait_idle()

    async def __aenter__(self) -> TrioServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    # ------------------------------------------------------------------ internals

    async def _wait_idle(self) -> None:
        while self._connections:
            if self._changed.is_set():
                self._changed = trio.Event()
            await self._changed.wait()

    async def _serve(self, tcp: trio.SocketStream) -> None:
        if not self._accepting:
            await trio.aclose_forcefully(tcp)
            return
        try:
            peer = str(tcp.socket.getpeername())
        except OSError:
            peer = "?"
        driver = ConnectionDriver(
            self.options,
            self.factory,
            peer=peer,
            overloaded=len(self._connections) >= self.options.max_connections,
        )
        context = self.options.ssl
        stream: trio.abc.Stream = (
            tcp if context is None else trio.SSLStream(tcp, context, server_side=True)
        )
        conn: _Connection | None = None
        try:
            async with trio.open_nursery() as nursery:  # for the handler runner
                conn = _Connection(driver, stream, self.options, nursery, self.limiter)
                driver.request_close = conn.close_from_anywhere(
                    trio.lowlevel.current_trio_token()
                )
                self._connections.add(conn)
                await conn.run()
                await conn.aclose()  # close the socket now; the nursery waits for the handler
        except Exception:
            log.exception("connection from %s failed", peer)
        finally:
            if conn is not None:
                self._connections.discard(conn)
            self._changed.set()
            await trio.aclose_forcefully(tcp)  # raises Cancelled when cancelled from outside


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
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully (blocking; main thread only).

    ``on_ready`` is called with the bound port once the server accepts connections.
    """
    import signal

    async def main() -> None:
        server = TrioServer(factory, options)
        await server.start(host, port)
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
