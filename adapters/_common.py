"""What every adapter shares: the handler concept, the clock, options, and the one step that
moves a read (or a timeout) through the core and sorts what comes out.

An adapter is a loop: read -> :meth:`ConnectionDriver.receive` -> write ``step.out`` -> hand
``step.events`` to the handler (off the event loop, in order) -> stop when ``step.closed``.
Everything protocol-shaped happens in the core or here, once, for all adapters.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from meetstream_live import (
    Accepted,
    BotAccepted,
    BotClosed,
    BotConnection,
    BotRejected,
    ConnectionState,
    Disconnected,
    Event,
    HTTPRejected,
    HTTPRequest,
    LatencyPing,
    MediaChunk,
    ProtocolWarning,
    ServerConfig,
    ServerConnection,
    StreamEnded,
    StreamStarted,
    WebSocketURL,
    unmask_backend,
)

__all__ = [
    "INLINE_BACKOFF",
    "INLINE_STALL",
    "READ_SIZE_SHRINK_AFTER",
    "READ_SIZE_START",
    "AsyncBotSends",
    "Backlog",
    "ConnectionDriver",
    "ConnectionInfo",
    "HTTPAnswer",
    "HTTPHandler",
    "Handler",
    "HandlerFactory",
    "HandshakeFailed",
    "InlineOffer",
    "ReadSizer",
    "ServerOptions",
    "Step",
    "client_tls",
    "deliver",
    "handshake_outcome",
    "media_size",
    "now_ms",
    "observe",
    "tune_allocator",
    "warm_up",
]

log = logging.getLogger("meetstream_live")

INTERNAL_ERROR = 1011
GOING_AWAY = 1001


def now_ms() -> int:
    """The clock every adapter passes to the core: Unix time in milliseconds."""
    return time.time_ns() // 1_000_000


class Backlog:
    """The bytes of one connection's media that its handler holds and has not finished with
    (queued for a thread, for a sink, for a disk): while they are over :attr:`limit`, the
    adapter stops reading the bot's socket (backpressure), and reads again once they are
    back at or below it. Thread-safe: :meth:`add` and :meth:`done` may be called from any
    thread; the adapter's wake-up (:attr:`on_below`) is called from the thread whose
    :meth:`done` brought the backlog down, and must itself be thread-safe.

    A handler that hands media to other threads (the recorder's sinks) calls :meth:`add`
    when it queues bytes and :meth:`done` when they are written; the adapter asks
    :meth:`should_pause` after each batch it delivered.
    """

    __slots__ = ("_lock", "_paused", "bytes", "limit", "on_below")

    def __init__(self, limit: int | None = None) -> None:
        #: Above this many bytes the connection is not read (``None``: never paused).
        self.limit = limit
        self.bytes = 0
        #: Called once the backlog is back at or below the limit after :meth:`should_pause`
        #: said True (set by the adapter).
        self.on_below: Callable[[], None] | None = None
        self._paused = False
        self._lock = threading.Lock()

    def add(self, size: int) -> None:
        with self._lock:
            self.bytes += size

    def done(self, size: int) -> None:
        with self._lock:
            self.bytes -= size
            wake = self._paused and (self.limit is None or self.bytes <= self.limit)
            if wake:
                self._paused = False
        if wake and self.on_below is not None:
            self.on_below()

    @property
    def over(self) -> bool:
        limit = self.limit
        return limit is not None and self.bytes > limit

    def should_pause(self) -> bool:
        """True if reading must stop now; :attr:`on_below` is then called once it may go
        on."""
        with self._lock:
            limit = self.limit
            if limit is None or self.bytes <= limit:
                return False
            self._paused = True
            return True

    def release(self) -> None:
        """Stop pausing for good (the connection is closing: what is queued is not waited
        for); wakes a paused reader."""
        with self._lock:
            self.limit = None
            wake, self._paused = self._paused, False
        if wake and self.on_below is not None:
            self.on_below()


def _no_close(code: int, reason: str) -> None:
    """The default :attr:`ConnectionInfo.close`: nothing to close (an info made by hand)."""


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """Who connected, and to what. Given to the handler factory on each accepted upgrade."""

    peer: str
    path: str
    query: str
    headers: tuple[tuple[bytes, bytes], ...]
    secure: bool
    #: Ask the adapter to close this connection with ``(code, reason)``; safe from any thread;
    #: no-op once closed. It returns at once: the close frame goes out from the adapter's own
    #: loop (or connection thread), and the handler still gets ``on_disconnect``.
    close: Callable[[int, str], None] = field(default=_no_close, compare=False, repr=False)
    #: The connection's :class:`Backlog`: a handler that queues media elsewhere counts it
    #: there, so that the bot's socket is not read while too much waits (see :class:`Backlog`).
    backlog: Backlog = field(default_factory=Backlog, compare=False, repr=False)


class Handler:
    """What happens to the streams of one connection. Subclass it and override what you need.

    One handler object per accepted connection, made by the server's handler factory. Its
    methods are called one at a time, in wire order. They may block (write files, call
    services): the asyncio and trio adapters call them in a worker thread, never on the event
    loop (unless :meth:`dispatch_inline` takes a batch there), and stop reading the bot's
    socket while too much is waiting for them (backpressure).
    A method that raises closes that connection with 1011; :meth:`on_disconnect` is still
    called, so the handler can finish what it has.
    """

    def on_start(self, event: StreamStarted) -> None:
        """``video_stream_start``: a stream begins (there may be several per connection)."""

    def on_chunk(self, event: MediaChunk) -> None:
        """Media bytes in order; ``event.offset`` counts from 0 in each stream."""

    def on_ping(self, event: LatencyPing) -> None:
        """A latency ping; its pong has already been sent."""

    def on_end(self, event: StreamEnded) -> None:
        """``video_stream_end``: the stream ended cleanly."""

    def on_warning(self, event: ProtocolWarning) -> None:
        """Tolerable bad input: the stream goes on."""

    def on_disconnect(self, event: Disconnected) -> None:
        """The connection is over (always the last call)."""

    def dispatch_inline(self, events: list[Event]) -> bool:
        """Offered each batch, on the event loop, by the asyncio and trio adapters when nothing
        of this connection waits for a handler thread: handle ``events`` now and return True,
        or return False (the default) to have them delivered in a handler thread as usual.

        Only for work that cannot block (no fsync, no network, no lock another thread may
        hold for long): it saves a thread hop per read. An exception here is a handler error,
        as in any method."""
        return False

    def dispatch(self, events: Iterable[Event]) -> None:
        """Call the method for each event, in order."""
        for event in events:
            if isinstance(event, MediaChunk):
                self.on_chunk(event)
            elif isinstance(event, LatencyPing):
                self.on_ping(event)
            elif isinstance(event, StreamStarted):
                self.on_start(event)
            elif isinstance(event, StreamEnded):
                self.on_end(event)
            elif isinstance(event, ProtocolWarning):
                self.on_warning(event)
            elif isinstance(event, Disconnected):
                self.on_disconnect(event)


HandlerFactory = Callable[[ConnectionInfo], Handler]


class HTTPAnswer(NamedTuple):
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


#: Answers plain HTTP requests on ``ServerConfig.http_paths`` (``/healthz``, ``/metrics``).
HTTPHandler = Callable[[HTTPRequest], HTTPAnswer]


@dataclass
class ServerOptions:
    """Options common to every server adapter. Times in seconds, sizes in bytes."""

    config: ServerConfig = field(default_factory=ServerConfig)
    #: Over this many open connections, new upgrades get HTTP 503.
    max_connections: int = 2000
    #: A server-side TLS context serves ``wss://``.
    ssl: ssl.SSLContext | None = None
    #: On shutdown, how long active streams may run on before they are closed with 1001.
    drain_timeout: float = 30.0
    #: Media waiting for a handler, per connection, above which the socket is not read
    #: (1 MiB: two seconds at 4 Mbit/s; with a thousand bots, what a lagging handler lets
    #: pile up stays bounded).
    max_pending_bytes: int = 1024 * 1024
    #: Threads that run handler calls (asyncio, ASGI, trio), shared by all connections: a
    #: connection uses one at a time. Enough that blocking handlers (fsync at a stream's end,
    #: hooks) do not hold up the other streams.
    handler_threads: int = 64
    #: The most bytes asked of the socket in one read. Each connection starts at
    #: :data:`READ_SIZE_START` (64 KiB, or this if smaller), doubles the size while reads come
    #: back full (a bot sending flat out) up to this, and halves it again (not below the start)
    #: when reads stay under a quarter of it: big buffers only for the streams that fill them
    #: (:class:`ReadSizer`). The asyncio adapter reads every connection, on asyncio's event
    #: loop and on uvloop's alike, into one buffer of this size per server (made at the first
    #: read), a connection's read size of it at a time; the sync and trio adapters ask their
    #: sockets for that many bytes. With TLS, what one read hands over is decrypted bytes: at
    #: most this on asyncio and uvloop (whose TLS layers read the socket themselves, 256 KiB at
    #: a time), one TLS record (16 KiB) on sync and trio.
    read_size: int = 1024 * 1024
    #: Answers ``http_paths`` requests; without it they get 404.
    http_handler: HTTPHandler | None = None
    #: Called with every event of every connection (metrics, logs): on the event loop, or in
    #: the connection's thread with the sync adapter (so: cheap, and thread-safe). Errors in it
    #: are logged, never fatal.
    observer: Callable[[Event], None] | None = None


#: The size of a connection's first reads (or ``ServerOptions.read_size``, if smaller).
READ_SIZE_START = 64 * 1024
#: Reads in a row that fill less than a quarter of the size asked, after which it is halved.
READ_SIZE_SHRINK_AFTER = 8


class ReadSizer:
    """How many bytes to ask of one connection's socket per read: :attr:`size`.

    It starts at :data:`READ_SIZE_START` (at most ``maximum``), doubles after a read that
    came back full (the socket had more: a bot sending flat out), up to ``maximum``
    (``ServerOptions.read_size``), and halves, down to the start, after
    :data:`READ_SIZE_SHRINK_AFTER` reads in a row that filled less than a quarter of it. A
    steady stream read often in small pieces (many bots at a few Mbit/s) so keeps small reads,
    and one bot flat out gets big ones within a few reads. Pure logic: call :meth:`update`
    with each read's length (an adapter changes its read size only when it returns True).
    """

    __slots__ = ("_floor", "_maximum", "_small", "size")

    def __init__(self, maximum: int) -> None:
        if maximum <= 0:
            raise ValueError(f"read size must be positive: {maximum}")
        self._maximum = maximum
        self._floor = min(READ_SIZE_START, maximum)
        self._small = 0  # reads in a row under a quarter of the size
        #: Bytes to ask for in the next read.
        self.size = self._floor

    def update(self, received: int) -> bool:
        """Account for a read that returned ``received`` bytes; True if :attr:`size` changed."""
        size = self.size
        if received >= size:
            self._small = 0
            if size < self._maximum:
                self.size = min(size * 2, self._maximum)
                return True
            return False
        if received * 4 >= size or size <= self._floor:
            self._small = 0
            return False
        self._small += 1
        if self._small < READ_SIZE_SHRINK_AFTER:
            return False
        self._small = 0
        self.size = max(size // 2, self._floor)
        return True


#: An inline handler call (:meth:`Handler.dispatch_inline`) longer than this, in seconds, sends
#: the connection's next batches to the threads for :data:`INLINE_BACKOFF` seconds.
INLINE_STALL = 0.005
INLINE_BACKOFF = 2.0


class InlineOffer:
    """The inline decision of the asyncio and trio adapters for one connection: offer a batch
    to :meth:`Handler.dispatch_inline`, on the event loop, unless a recent inline call
    stalled the loop.

    The caller offers only when nothing of the connection is queued for or running in a
    handler thread (so the order holds) and the handler has not failed. A call that took
    longer than :data:`INLINE_STALL` all the same (a write stalled by the kernel's dirty page
    throttling, say) sends the next batches to the threads for :data:`INLINE_BACKOFF`.
    """

    __slots__ = ("_threads_until", "handler")

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self._threads_until = 0.0  # no inline delivery before (time.monotonic())

    def offer(self, events: list[Event]) -> bool | Exception:
        """True: the handler took ``events``. False: deliver them in a thread. An exception:
        ``dispatch_inline`` raised it (the batch is consumed): a handler error, for the
        caller to close the connection with 1011."""
        now = time.monotonic()
        if now < self._threads_until:
            return False
        try:
            done = self.handler.dispatch_inline(events)
        except Exception as exc:
            return exc
        if done and time.monotonic() - now > INLINE_STALL:
            self._threads_until = now + INLINE_BACKOFF
        return done


#: glibc's ``mallopt`` parameters (``malloc.h``) and what :func:`tune_allocator` sets them to.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 16 * 1024 * 1024
#: ``ServerConfig.max_joined_bytes`` once the allocator is tuned: one chunk per read.
JOINED_BYTES_TUNED = 1024 * 1024


def tune_allocator() -> bool:
    """Make glibc's ``malloc`` keep blocks of up to 4 MiB in its heap (``M_MMAP_THRESHOLD``)
    and up to 16 MiB free at the heap's top (``M_TRIM_THRESHOLD``); True if it did (Linux with
    glibc), False elsewhere (nothing changed).

    For the process that owns ``main`` (``meetstream-live serve`` calls it), not for a
    library's importer: it changes the whole process's allocator. Why: by default glibc
    serves each block over 128 KiB with a fresh ``mmap`` and hands heap memory back soon, so a
    receiver that makes a 1 MiB object per read (``ServerConfig.max_joined_bytes`` at 1 MiB)
    pays page faults on every one; tuned, one bot flat out at 64 KiB messages ran 1.4x faster
    (``docs/benchmarks.md``). The cost: up to 16 MiB of freed memory per malloc arena stays
    with the process.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only (musl has no mallopt)  # noqa: B018
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def warm_up(adapter: str) -> str:
    """At a server's start: load the core's unmasker now (numpy, if installed), not in the
    middle of the first stream, and log which one it is (debug level). Returns its name."""
    backend = unmask_backend()
    log.debug("%s server: unmasking with %s", adapter, backend)
    return backend


class Step(NamedTuple):
    """What one read or timeout produced: bytes to write first, then events for the handler."""

    out: bytes
    events: list[Event]
    closed: bool


class ConnectionDriver:
    """One server connection between a transport and a handler; no I/O of its own.

    It owns the :class:`~meetstream_live.ServerConnection`, answers plain HTTP requests through
    ``options.http_handler``, makes the handler when the upgrade is accepted, and filters the
    events the handler gets. Adapters call :meth:`receive`, :meth:`timeout` and :meth:`close`,
    write ``step.out`` first, then pass ``step.events`` to :attr:`handler`.
    """

    def __init__(
        self,
        options: ServerOptions,
        factory: HandlerFactory,
        *,
        peer: str,
        overloaded: bool = False,
        clock: Callable[[], int] = now_ms,
        request_close: Callable[[int, str], None] | None = None,
    ) -> None:
        self.options = options
        #: What ``ConnectionInfo.close`` calls: the adapter's thread-safe way to close this
        #: connection (set it before the upgrade is accepted).
        self.request_close = request_close
        self.factory = factory
        self.peer = peer
        self.clock = clock
        self.conn = ServerConnection(options.config, now_ms=clock(), overloaded=overloaded)
        self.handler: Handler | None = None
        self.handler_failed = False

    @property
    def closed(self) -> bool:
        return self.conn.state is ConnectionState.CLOSED

    @property
    def accepted(self) -> bool:
        return self.handler is not None

    def receive(self, data: bytes | bytearray | memoryview) -> Step:
        """A read from the socket (``b""`` for EOF or a broken connection). A ``bytearray`` or
        ``memoryview`` is read during the call only (the core copies what it keeps): the
        caller may reuse its buffer once this returns."""
        return self._step(self.conn.receive_data(data, self.clock()))

    def timeout(self) -> Step:
        """Call when :meth:`seconds_to_deadline` has run out."""
        return self._step(self.conn.handle_timeout(self.clock()))

    def close(self, code: int = GOING_AWAY, reason: str = "server shutting down") -> Step:
        return self._step(self.conn.close(code, reason, now_ms=self.clock()))

    def resumed(self) -> None:
        """Reading resumes after a backpressure pause: the bot was not idle, we were."""
        self.conn.keep_alive(self.clock())

    def handler_error(self, exc: BaseException) -> Step:
        """The handler raised: close this connection with 1011 (others are not affected)."""
        log.error("handler failed for %s: %r", self.peer, exc, exc_info=exc)
        self.handler_failed = True
        return self.close(INTERNAL_ERROR, "handler error")

    def seconds_to_deadline(self) -> float | None:
        deadline = self.conn.next_deadline()
        if deadline is None:
            return None
        return max(0.0, (deadline - self.clock()) / 1000)

    def _step(self, events: list[Event]) -> Step:
        observer = self.options.observer
        for_handler: list[Event] = []
        for event in events:
            if observer is not None:
                observe(observer, event)
            if isinstance(event, HTTPRequest):
                self._answer(event)
            elif isinstance(event, Accepted):
                self._accept(event)
            elif isinstance(event, HTTPRejected):
                log.info("%s: HTTP %d: %s", self.peer, event.status, event.reason)
            else:
                for_handler.append(event)
        if self.handler is None:
            for_handler = []
        elif self.handler_failed:
            for_handler = [e for e in for_handler if isinstance(e, Disconnected)]
        conn = self.conn
        return Step(conn.data_to_send(), for_handler, conn.state is ConnectionState.CLOSED)

    def _answer(self, request: HTTPRequest) -> None:
        http = self.options.http_handler
        answer = http(request) if http is not None else HTTPAnswer(404, b"not found\n")
        self.conn.send_response(answer.status, answer.body, content_type=answer.content_type)

    def _accept(self, event: Accepted) -> None:
        info = ConnectionInfo(
            self.peer,
            event.path,
            event.query,
            event.headers,
            self.options.ssl is not None,
            close=self.request_close or _no_close,
        )
        try:
            self.handler = self.factory(info)
        except Exception as exc:
            log.error("handler factory failed for %s: %r", self.peer, exc, exc_info=exc)
            self.handler = Handler()  # a no-op one, so the close below completes normally
            self.handler_failed = True
            self.conn.close(INTERNAL_ERROR, "handler error", now_ms=self.clock())


class HandshakeFailed(ConnectionError):
    """The receiver did not accept the bot's WebSocket handshake."""

    def __init__(self, status: int | None, reason: str, body: bytes = b"") -> None:
        super().__init__(f"handshake failed ({status or 'no HTTP status'}): {reason}")
        self.status = status
        self.reason = reason
        self.body = body


def client_tls(url: WebSocketURL, context: ssl.SSLContext | None) -> ssl.SSLContext | None:
    """The TLS context a bot client connects with: the caller's, else the system's default
    (certificates verified) for ``wss://``, else none."""
    if context is not None:
        return context
    return ssl.create_default_context() if url.secure else None


class AsyncBotSends:
    """What the async bot clients (asyncio, trio) share: the ``send_*`` methods (queue with the
    core's :class:`~meetstream_live.BotConnection`, then write with the client's ``_flush()``)
    and the close handshake. Each client supplies ``_flush``, ``next_event`` and ``abort``."""

    conn: BotConnection
    clock: Callable[[], int]

    async def _flush(self) -> None:
        raise NotImplementedError

    async def next_event(self, timeout: float | None = None) -> Event:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

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


def handshake_outcome(events: Iterable[Event]) -> bool | None:
    """For a bot client waiting for the handshake: True once accepted, None while waiting;
    raises :class:`HandshakeFailed` on a rejection or a close."""
    for event in events:
        if isinstance(event, BotAccepted):
            return True
        if isinstance(event, BotRejected):
            raise HandshakeFailed(
                event.status, event.body.decode("utf-8", "replace").strip(), event.body
            )
        if isinstance(event, BotClosed):
            raise HandshakeFailed(None, event.reason or f"closed ({event.code})")
    return None


def observe(observer: Callable[[Event], None], event: Event) -> None:
    """Give an event to ``ServerOptions.observer``: its errors are logged, never fatal
    (metrics must not take a stream down)."""
    try:
        observer(event)
    except Exception as exc:
        log.error("observer failed on %s: %r", type(event).__name__, exc)


def deliver(handler: Handler, events: Iterable[Event]) -> Exception | None:
    """Call the handler for each event, in order. After a method raises, only
    :class:`Disconnected` is still delivered (the handler must hear of the end). Returns the
    first exception, for the adapter to close the connection with 1011."""
    batch = events if isinstance(events, list) else list(events)
    # One dispatch for the batch (the handler may merge work across events); the
    # Disconnected, always last, on its own: it is delivered even after a failure.
    last = len(batch)
    while last and isinstance(batch[last - 1], Disconnected):
        last -= 1
    error: Exception | None = None
    if last:
        try:
            handler.dispatch(batch[:last] if last < len(batch) else batch)
        except Exception as exc:
            error = exc
    for event in batch[last:]:
        try:
            handler.dispatch((event,))
        except Exception as exc:
            if error is None:
                error = exc
            else:
                log.error("handler failed again: %r", exc, exc_info=exc)
    return error


def media_size(events: Iterable[Event]) -> int:
    """Bytes of media in a batch of events (what backpressure counts)."""
    return sum(len(e.data) for e in events if isinstance(e, MediaChunk))
