"""The asyncio adapter: a receiver on ``asyncio.start_server`` streams, and a bot client.

The loop only moves bytes: the core decides, the handler runs in the server's handler threads
(one call at a time per connection, in order), and the socket is not read while more than
``max_pending_bytes`` of media wait for the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from meetstream_live import (
    BotClosed,
    BotConnection,
    BotState,
    Event,
    parse_ws_url,
)

from ._aio import HandlerRunner, handler_pool
from ._common import (
    ConnectionDriver,
    HandlerFactory,
    ServerOptions,
    Step,
    handshake_outcome,
    log,
    now_ms,
)

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


class _Connection:
    def __init__(
        self, driver: ConnectionDriver, writer: asyncio.StreamWriter, executor: Executor
    ) -> None:
        self.driver = driver
        self.writer = writer
        self.executor = executor
        self.runner: HandlerRunner | None = None

    def write(self, step: Step) -> None:
        if step.out and not self.writer.is_closing():
            self.writer.write(step.out)
        if step.events:
            if self.runner is None:
                assert self.driver.handler is not None
                self.runner = HandlerRunner(
                    self.driver.handler, self.handler_failed, self.executor
                )
            self.runner.submit(step.events)

    def handler_failed(self, exc: Exception) -> None:
        """Close with 1011 at once (on the loop, like every use of the driver)."""
        if not self.driver.closed and not self.driver.handler_failed:
            self.write(self.driver.handler_error(exc))

    def shut_down(self, close_timeout: float) -> None:
        """Close with 1001 from outside the read loop; abort if the bot never answers."""
        if self.driver.closed:
            return
        self.write(self.driver.close())
        loop = asyncio.get_running_loop()
        loop.call_later(close_timeout, self.writer.transport.abort)


class AsyncioServer:
    """A receiver on asyncio streams. Use ``async with serve(...)`` or :meth:`start`."""

    def __init__(self, factory: HandlerFactory, options: ServerOptions | None = None) -> None:
        self.factory = factory
        self.options = options or ServerOptions()
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self._accepting = True
        self._executor = handler_pool(self.options.handler_threads)

    @property
    def sockets(self) -> list[Any]:
        return list(self._server.sockets) if self._server is not None else []

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    async def start(self, host: str | None = "127.0.0.1", port: int = 9876, **kwargs: Any) -> None:
        """Bind and start accepting (``port=0`` picks a free port; see :attr:`port`)."""
        self._server = await asyncio.start_server(
            self._serve, host, port, ssl=self.options.ssl, limit=self.options.read_size, **kwargs
        )

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def shutdown(self, drain_timeout: float | None = None) -> None:
        """Stop accepting; let streams run up to ``drain_timeout``; close the rest with 1001;
        return when every handler has finished."""
        self._accepting = False
        if self._server is not None:
            self._server.close()
        drain = self.options.drain_timeout if drain_timeout is None else drain_timeout
        tasks = set(self._connections)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=drain)
            close_timeout = self.options.config.close_timeout_ms / 1000
            for task in pending:
                self._connections[task].shut_down(close_timeout)
            if pending:
                await asyncio.wait(pending)
        self._executor.shutdown(wait=False)  # every handler has finished

    async def __aenter__(self) -> AsyncioServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if not self._accepting:
            writer.transport.abort()
            return
        peer = writer.get_extra_info("peername")
        driver = ConnectionDriver(
            self.options,
            self.factory,
            peer=str(peer),
            overloaded=len(self._connections) >= self.options.max_connections,
        )
        conn = _Connection(driver, writer, self._executor)
        self._connections[task] = conn
        try:
            await self._read_loop(conn, reader)
        finally:
            # Leave the registry last: shutdown() waits for the handler to finish too.
            try:
                if conn.runner is not None:
                    await conn.runner.finish()
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            finally:
                del self._connections[task]

    async def _read_loop(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        driver, writer, options = conn.driver, conn.writer, self.options
        while not driver.closed:
            try:
                deadline = driver.seconds_to_deadline()
                data = await _with_deadline(reader.read(options.read_size), deadline)
            except TimeoutError:
                step = driver.timeout()
            except (OSError, ssl_module.SSLError):
                step = driver.receive(b"")
            else:
                step = driver.receive(data)
            conn.write(step)  # pongs go out before the handler sees this read's media
            if step.closed:
                break
            try:
                await writer.drain()
            except OSError:
                conn.write(driver.receive(b""))
                break
            runner = conn.runner
            if runner is not None and await runner.wait_below(options.max_pending_bytes):
                driver.resumed()
        with contextlib.suppress(OSError):
            await writer.drain()


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


class AsyncioBot:
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
        context = ssl if ssl is not None else (
            ssl_module.create_default_context() if target.secure else None
        )
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

    async def send_start(self, bot_id: str, **fields: Any) -> None:
        self.conn.send_start(bot_id, **fields)
        await self._flush()

    async def send_chunk(self, data: bytes, *, final: bool = True) -> None:
        self.conn.send_chunk(data, final=final)
        await self._flush()

    async def send_ping(self, seq: Any, sent_at_ms: Any | None = None) -> None:
        self.conn.send_ping(seq, self.clock() if sent_at_ms is None else sent_at_ms)
        await self._flush()

    async def send_end(self, duration_seconds: float) -> None:
        self.conn.send_end(duration_seconds)
        await self._flush()

    async def send_text(self, text: str) -> None:
        self.conn.send_text(text)
        await self._flush()

    async def send_ws_ping(self, payload: bytes = b"") -> None:
        self.conn.send_ws_ping(payload)
        await self._flush()

    async def next_event(self, timeout: float | None = None) -> Event:
        """The next event from the receiver; :class:`BotClosed` once the connection is over."""
        while not self._events:
            if self.conn.state is BotState.CLOSED:
                return BotClosed(1006, "connection closed")
            self._events.extend(await _with_deadline(self._read_events(), timeout))
        return self._events.popleft()

    async def start_close(self, code: int = 1000, reason: str = "") -> None:
        """Send the close frame, without reading: for a caller whose own reader task
        (:meth:`next_event`) gets the receiver's answer as :class:`BotClosed`. Does nothing
        once the handshake is under way or over; a broken connection is not an error here
        (the reader sees it)."""
        self.conn.close(code, reason)
        with contextlib.suppress(OSError):
            await self._flush()

    async def close(self, code: int = 1000, reason: str = "", timeout: float = 10.0) -> BotClosed:
        """Close handshake; returns the receiver's answer (1006 if it never came)."""
        await self.start_close(code, reason)
        try:
            while True:
                event = await self.next_event(timeout)
                if isinstance(event, BotClosed):
                    return event
        except TimeoutError:
            return BotClosed(1006, "no close frame from the receiver")
        finally:
            self.abort()

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
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully (the CLI's entry point).

    ``on_ready`` is called with the bound port once the server accepts connections.
    """
    import signal

    async def main() -> None:
        server = AsyncioServer(factory, options)
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
