"""The asyncio adapter: a receiver on an ``asyncio.BufferedProtocol`` (sockets bound by
``loop.create_server``, accepted by the server itself: out of file descriptors, see
:class:`~._driver.Descriptors`), and a bot client on asyncio streams.

The loop only moves bytes: the transport reads straight into a buffer of the server's (one per
server, so per event loop: ``read_size`` bytes, made once and shared by all its connections,
see :class:`_Connection`), and ``buffer_updated`` hands what was read to the core, which
decides and copies what it keeps; no ``bytes`` object is made per read. The size asked of the
socket follows each connection's pace (:class:`ReadSizer`: 64 KiB, up to ``read_size`` while
reads come back full), on asyncio's own loop and on uvloop alike. The handler runs in the
server's handler threads (one call at a time per connection, in order), or on the loop for the
batches it says it takes without blocking (``Handler.dispatch_inline``: the recorder's media);
the transport stops reading (``pause_reading``) while more than ``max_pending_bytes`` of media
wait for the handler or while the bot does not take what we write; the core's deadlines are
timers on the loop (``call_at``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl as ssl_module
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

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

__all__ = ["AsyncioBot", "AsyncioServer", "run", "serve"]

T = TypeVar("T")


async def _with_deadline(awaitable: Awaitable[T], seconds: float | None) -> T:
    """Await with a timeout (``TimeoutError``), without a task per call where possible."""
    if seconds is None:
        return await awaitable
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)  # pragma: no cover - Python 3.10


class _Connection(asyncio.BaseProtocol):
    """One connection, driven by the transport's callbacks: each read goes through the core
    as it arrives (no stream buffer, no task per connection), the handler's events go to
    :class:`~._delivery.Delivery`, and reading pauses while the connection's backlog is over
    its limit or while the bot does not take what we write.

    How reads arrive depends on the loop, the faster way for each (measured with one bot flat
    out at 64 KiB messages, same run, median of 5: on asyncio's own selector loop
    ``data_received`` read 1.17x faster than ``recv_into`` a shared buffer, 1,279 vs 1,091
    MB/s; on uvloop the shared buffer read 1.14x faster, 1,111 vs 971 MB/s, as uvloop's own
    reads stop at 256 KiB and are copied once more into a new ``bytes``):
    :class:`_ReceivingConnection` on a selector loop, :class:`_BufferedConnection` elsewhere.
    """

    def __init__(self, server: AsyncioServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.driver: ConnectionDriver | None = None
        self.delivery: Delivery | None = None
        #: The bytes asked per read.
        self._sizer = ReadSizer(server.options.read_size)
        self.done: asyncio.Future[None] = self.loop.create_future()
        self._lost: asyncio.Future[None] = self.loop.create_future()
        self._ending = False
        self._write_paused = False
        self._backpressure = False
        self._reading = True
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # ------------------------------------------------------------------ transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        server = self.server
        connections = server.connections
        if not connections.accepting:
            transport.abort()
            return
        driver = self.driver = ConnectionDriver(
            server.options,
            server.factory,
            peer=str(transport.get_extra_info("peername")),
            post=self._post,
            overloaded=connections.overloaded(),
        )
        driver.backlog.on_below = self._below_soon
        connections.add(self, self._post)
        self._arm()

    def eof_received(self) -> bool:
        driver = self.driver
        if driver is not None and not driver.closed:
            self.apply(driver.receive(b""))
        # Keep the transport: we close it once the handler is done (TLS transports close
        # anyway, whatever we answer).
        return self.server.options.ssl is None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.server._read_owner is self:  # a read that never came: hold no dead connection
            self.server._read_owner = None
        driver = self.driver
        if driver is not None and not driver.closed:
            self.apply(driver.receive(b""))
        if not self._lost.done():
            self._lost.set_result(None)
        if driver is None:
            self.done.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.driver is not None:
            self.driver.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        driver = self.driver
        if driver is not None:
            driver.write_paused = False
            if driver.pull_due and not driver.closed:  # a viewer waits for room
                self.apply(driver.pull())
        self._update_reading()

    # ------------------------------------------------------------------ driving

    def _post(self, fn: Callable[[ConnectionDriver], Step]) -> None:
        """The driver's ``post``: from any thread, ``fn(driver)`` on the loop."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: so is the connection
            self.loop.call_soon_threadsafe(self._run_posted, fn)

    def _run_posted(self, fn: Callable[[ConnectionDriver], Step]) -> None:
        driver = self.driver
        if driver is None or driver.closed or self.transport is None:
            return
        self.apply(fn(driver))

    def apply(self, step: Step) -> None:
        """Write ``step.out`` (pongs go out before the handler sees this read's media), queue
        ``step.events``, and end or re-arm the deadline."""
        transport = self.transport
        driver = self.driver
        assert transport is not None and driver is not None
        if step.out and not transport.is_closing():
            transport.write(step.out)
        events = step.events
        if events:
            delivery = self.delivery
            if delivery is None:
                assert driver.calls is not None
                delivery = self.delivery = Delivery(
                    driver.calls, self.server._executor, self._post, driver.backlog
                )
            delivery.submit(events)
            if not self._backpressure and driver.backlog.should_pause():
                self._backpressure = True
                self._update_reading()
        if step.closed:
            if not self._ending:
                self._ending = True
                self._cancel_timer()
                self._update_reading()
                self.loop.create_task(self._end())
        else:
            self._arm()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        # Once closed, what still comes is read and dropped (a TLS transport must see the
        # bot's close_notify and EOF to finish closing).
        want = self._ending or not (self._write_paused or self._backpressure)
        if want != self._reading:
            self._reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def _below_soon(self) -> None:
        """The backlog's wake-up, from whatever thread brought it down."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._below)

    def _below(self) -> None:
        """The handler caught up: read again (the bot was not idle meanwhile, we were)."""
        if self._backpressure:
            self._backpressure = False
            driver = self.driver
            assert driver is not None
            if not driver.closed:
                driver.resumed()
                self._arm()
            self._update_reading()

    async def _end(self) -> None:
        # Leave the registry last: shutdown() waits for the handler to finish too.
        transport = self.transport
        assert transport is not None
        try:
            delivery = self.delivery
            if delivery is not None:
                idle: asyncio.Future[None] = self.loop.create_future()

                def wake() -> None:
                    with contextlib.suppress(RuntimeError):
                        self.loop.call_soon_threadsafe(_set, idle)

                if not delivery.when_idle(wake):
                    await idle
            transport.close()
            with contextlib.suppress(Exception):
                await self._lost
        finally:
            self.server.connections.discard(self)
            if not self.done.done():
                self.done.set_result(None)

    # ------------------------------------------------------------------ deadlines

    def _arm(self) -> None:
        """Keep one timer at (or before) the core's next deadline: moved earlier when the
        deadline comes closer, checked again (not moved) when it went further away."""
        driver = self.driver
        assert driver is not None
        seconds = driver.seconds_to_deadline()
        if seconds is None:
            return
        when = self.loop.time() + seconds
        timer = self._timer
        if timer is not None:
            if self._timer_at <= when + 0.001:
                return
            timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._deadline)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _deadline(self) -> None:
        self._timer = None
        driver = self.driver
        assert driver is not None
        if driver.closed or self._ending:
            return
        if self._backpressure:
            return  # not read while paused: _below() re-arms once the handler caught up
        seconds = driver.seconds_to_deadline()
        if seconds is not None and seconds > 0:
            self._arm()
            return
        self.apply(driver.timeout())


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _ReceivingConnection(_Connection, asyncio.Protocol):
    """A :class:`_Connection` given each read as a new ``bytes`` (``data_received``): the
    transport's ``max_size`` (the bytes asked of ``recv``) follows the connection's
    :class:`ReadSizer`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if hasattr(transport, "max_size"):  # asyncio's selector transports (not TLS)
            cast(Any, transport).max_size = self._sizer.size

    def data_received(self, data: bytes) -> None:
        if self._sizer.update(len(data)) and hasattr(self.transport, "max_size"):
            cast(Any, self.transport).max_size = self._sizer.size
        driver = self.driver
        if driver is None or driver.closed:
            return
        self.apply(driver.receive(data))


class _BufferedConnection(_Connection, asyncio.BufferedProtocol):
    """A :class:`_Connection` whose reads land in the server's one read buffer
    (:meth:`AsyncioServer._read_buffer`), shared by all its connections: :meth:`get_buffer`
    hands out its first ``self._sizer.size`` bytes, and :meth:`buffer_updated` passes the
    ``nbytes`` read to the core, which copies whatever it keeps before it returns (it unmasks
    every payload into a buffer of its own). Sharing is
    safe because every transport calls ``get_buffer``, fills the buffer and calls
    ``buffer_updated`` in one go, with no other callback in between, so no other connection
    can read into the buffer before this read is consumed:

    - asyncio's selector transport: ``_read_ready__get_buffer`` does ``get_buffer(-1)``,
      ``sock.recv_into(buf)`` and ``buffer_updated(nbytes)`` in one call.
    - asyncio's TLS (``sslproto``, Python 3.11+): ``_do_read__buffered`` does ``get_buffer``,
      ``SSLObject.read`` into it (decrypting what the socket read into the TLS layer's own
      256 KiB buffer) and ``buffer_updated`` in one call; on 3.10,
      ``protocols._feed_data_to_buffered_proto`` copies each decrypted chunk in with
      ``get_buffer`` and ``buffer_updated`` back to back. The proactor loop (Windows) feeds
      its own read buffer the same way.
    - uvloop (``handles/stream.pyx``): libuv calls the alloc callback (our ``get_buffer``),
      ``read()``s into the buffer and calls the read callback (our ``buffer_updated``) at
      once; uvloop holds the buffer (``PyObject_GetBuffer``) only in between. uvloop's TLS
      (``sslproto.pyx``, ``_do_read__buffered``) also fills and hands over in one call.

    No transport keeps a buffer from one callback to a later one, so no connection needs a
    buffer of its own (TLS included). A tripwire stays (:attr:`AsyncioServer._read_owner`):
    ``buffer_updated`` fails its connection (the transport closes it) when another connection
    was handed the buffer since this one's ``get_buffer``, what a transport that kept buffers
    across callbacks would do.
    """

    def get_buffer(self, sizehint: int) -> memoryview:
        # The hint is the transport's guess (-1 on asyncio's loop, 64 KiB on uvloop, the TLS
        # bytes pending): the size is ours.
        server = self.server
        server._read_owner = self
        return server._read_buffer()[: self._sizer.size]

    def buffer_updated(self, nbytes: int) -> None:
        server = self.server
        if server._read_owner is not self:
            raise RuntimeError("the shared read buffer was handed to another connection")
        server._read_owner = None
        if not nbytes:  # no transport reports an empty read; an empty one would mean EOF
            return
        self._sizer.update(nbytes)
        driver = self.driver
        if driver is None or driver.closed:
            return
        # The slice is released before anything else runs: the core kept nothing of it.
        with server._read_buffer()[:nbytes] as data:
            step = driver.receive(data)
        self.apply(step)


def _connection_class(loop: asyncio.AbstractEventLoop) -> type[_Connection]:
    """See :class:`_Connection`: ``data_received`` on asyncio's selector loop, the shared
    buffer on any other (uvloop)."""
    if isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        return _ReceivingConnection
    return _BufferedConnection


class AsyncioServer:
    """A receiver on an asyncio protocol. Use ``async with serve(...)`` or :meth:`start`."""

    def __init__(self, factory: HandlerFactory, options: ServerOptions | None = None) -> None:
        self.factory = factory
        self.options = options or ServerOptions()
        #: The listening sockets (bound by ``loop.create_server``, accepted by us).
        self._listeners: list[socket.socket] = []
        self._stopped: asyncio.Future[None] | None = None
        self._accepts: set[asyncio.Task[None]] = set()
        #: The open connections: the limit and the drain (shared policy).
        self.connections = Connections(self.options)
        self._executor = handler_pool(self.options.handler_threads)
        self._changed: asyncio.Event | None = None
        #: The read buffer every connection reads into (``read_size`` bytes, made at the first
        #: read and never resized: transports hold slices of it during a read).
        self._read_view: memoryview | None = None
        #: The connection that was last handed the read buffer and has not consumed it yet.
        self._read_owner: _Connection | None = None

    def _read_buffer(self) -> memoryview:
        """The connections' shared read buffer (see :class:`_Connection`)."""
        view = self._read_view
        if view is None:
            view = self._read_view = memoryview(bytearray(self.options.read_size))
        return view

    @property
    def sockets(self) -> list[Any]:
        return list(self._listeners)

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    @property
    def active_connections(self) -> int:
        return self.connections.count

    async def start(self, host: str | None = "127.0.0.1", port: int = 9876, **kwargs: Any) -> None:
        """Bind and start accepting (``port=0`` picks a free port; see :attr:`port`). Extra
        keyword arguments go to ``loop.create_server`` (e.g. ``reuse_port=True``)."""
        warm_up("asyncio", self.options.config.unmask)
        loop = asyncio.get_running_loop()
        changed = self._changed = asyncio.Event()

        def on_change() -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(changed.set)

        self.connections.on_change(on_change)
        kind = _connection_class(loop)
        # create_server binds (every address of host, the kwargs); we accept, so that running
        # out of descriptors answers 503 (asyncio's own accept only logs and waits 1 s).
        bound = await loop.create_server(
            lambda: kind(self), host, port, start_serving=False, **kwargs
        )
        self._listeners = [s.dup() for s in bound.sockets]
        bound.close()
        self._stopped = loop.create_future()
        for listener in self._listeners:
            listener.setblocking(False)
            listener.listen(kwargs.get("backlog", 100))  # start_serving would have
            loop.add_reader(listener.fileno(), self._accept, listener, kind)

    def _accept(self, listener: socket.socket, kind: type[_Connection]) -> None:
        """The listener is readable: take what waits (at most 100 per turn of the loop)."""
        loop = asyncio.get_running_loop()
        for _ in range(100):
            try:
                sock, _address = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                capacity = exc.errno in ACCEPT_CAPACITY_ERRNOS
                if capacity and self.connections.descriptors.accept_failed(exc):
                    continue  # the reserve was let go: that upgrade gets 503
                # Nothing left to let go (the connection waits in the backlog), or an error
                # we do not know: try again a little later.
                if not capacity:
                    log.error("accept failed: %r", exc)
                fd = listener.fileno()
                loop.remove_reader(fd)
                loop.call_later(ACCEPT_RETRY_DELAY, self._listen_again, listener, kind)
                return
            sock.setblocking(False)
            task = loop.create_task(self._connect(sock, kind))
            self._accepts.add(task)
            task.add_done_callback(self._accepts.discard)

    def _listen_again(self, listener: socket.socket, kind: type[_Connection]) -> None:
        if self._stopped is not None and not self._stopped.done():
            asyncio.get_running_loop().add_reader(listener.fileno(), self._accept, listener, kind)

    async def _connect(self, sock: socket.socket, kind: type[_Connection]) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(lambda: kind(self), sock, ssl=self.options.ssl)
        except Exception as exc:  # a TLS handshake that failed, a peer gone already
            log.debug("connection not set up: %r", exc)
            sock.close()

    async def serve_forever(self) -> None:
        assert self._stopped is not None, "call start() first"
        await asyncio.shield(self._stopped)

    async def shutdown(self, drain_timeout: float | None = None) -> None:
        """Stop accepting; let streams run up to ``drain_timeout``; close the rest with 1001;
        return when every handler has finished."""
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)
            loop = asyncio.get_running_loop()
            for listener in self._listeners:
                loop.remove_reader(listener.fileno())
                listener.close()
        for timeout in self.connections.drain(drain_timeout):
            await self._wait_empty(timeout)
        self._executor.shutdown(wait=False)  # every handler has finished

    async def _wait_empty(self, timeout: float | None) -> None:
        changed = self._changed
        if changed is None:  # never started
            return

        async def until_empty() -> None:
            while self.connections.count:
                changed.clear()
                if self.connections.count:
                    await changed.wait()

        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await _with_deadline(until_empty(), timeout)

    async def __aenter__(self) -> AsyncioServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()


@contextlib.asynccontextmanager
async def serve(
    factory: HandlerFactory,
    host: str | None = "127.0.0.1",
    port: int = 9876,
    options: ServerOptions | None = None,
) -> AsyncIterator[AsyncioServer]:
    """Run a receiver for the duration of the ``async with`` block (graceful shutdown at exit)."""
    server = AsyncioServer(factory, options)
    await server.start(host, port)
    try:
        yield server
    finally:
        await server.shutdown()


class AsyncioBot(AsyncBotSends):
    """A MeetStream bot on asyncio streams: ``bot = await AsyncioBot.connect(url)``.

    ``send_*`` write at once (and wait for the socket buffer to drain); :meth:`next_event`
    returns what the receiver sent (pongs, the close). :meth:`close` does the whole close
    handshake; with a reader task of your own, :meth:`start_close` only sends the close frame.
    """

    def __init__(
        self, conn: BotConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.conn = conn
        self._reader = reader
        self._writer = writer
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
    ) -> AsyncioBot:
        """Connect and finish the handshake; raises ``HandshakeFailed`` when refused."""
        target = parse_ws_url(url)
        conn = BotConnection(target, headers=headers)
        context = client_tls(target, ssl)
        reader, writer = await _with_deadline(
            asyncio.open_connection(
                target.host, target.port, ssl=context,
                server_hostname=target.host if context is not None else None,
            ),
            timeout,
        )
        bot = cls(conn, reader, writer)
        await bot._flush()
        try:
            while True:
                events = await _with_deadline(bot._read_events(), timeout)
                if handshake_outcome(events):
                    bot._events.extend(events[1:])
                    return bot
        except BaseException:
            writer.close()
            raise

    async def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self._writer.write(data)
            await self._writer.drain()

    async def _read_events(self) -> list[Event]:
        try:
            data = await self._reader.read(256 * 1024)
        except OSError:
            data = b""
        events = self.conn.receive_data(data, self.clock())
        # Answers to WebSocket pings and closes. The receiver may have reset the connection
        # already: the events still count (a close read before the reset is a BotClosed).
        with contextlib.suppress(OSError):
            await self._flush()
        return events

    async def next_event(self, timeout: float | None = None) -> Event:
        """The next event from the receiver; :class:`BotClosed` once the connection is over."""
        while not self._events:
            if self.conn.state is BotState.CLOSED:
                return BotClosed(1006, "connection closed")
            self._events.extend(await _with_deadline(self._read_events(), timeout))
        return self._events.popleft()

    def abort(self) -> None:
        """Drop the TCP connection at once (a bot that vanishes)."""
        self._writer.transport.abort()


def run(
    factory: HandlerFactory,
    host: str | None = "127.0.0.1",
    port: int = 9876,
    options: ServerOptions | None = None,
    *,
    on_ready: Callable[[int], None] | None = None,
    use_uvloop: bool = False,
    reuse_port: bool = False,
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully (the CLI's entry point).

    ``on_ready`` is called with the bound port once the server accepts connections.
    ``reuse_port`` binds with SO_REUSEPORT (several processes on one port: ``--workers``).
    """
    import signal

    async def main() -> None:
        server = AsyncioServer(factory, options)
        if reuse_port:
            await server.start(host, port, reuse_port=True)
        else:
            await server.start(host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if on_ready is not None:
            on_ready(server.port)
        try:
            await stop.wait()
        finally:
            log.info("shutting down: draining %d connection(s)", server.active_connections)
            await server.shutdown()

    if use_uvloop:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
