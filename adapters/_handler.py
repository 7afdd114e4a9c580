"""The contract between a server and the application: the :class:`Handler` of a connection,
what it is told (:class:`ConnectionInfo`), the :class:`Backlog` that paces the bot's socket, the
answers to plain HTTP requests, and the :class:`ServerOptions` every adapter takes."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from meetstream_live import (
    Disconnected,
    Event,
    HTTPRequest,
    LatencyPing,
    MediaChunk,
    ProtocolWarning,
    ServerConfig,
    StreamEnded,
    StreamStarted,
)

__all__ = [
    "Backlog",
    "ConnectionInfo",
    "HTTPAnswer",
    "HTTPHandler",
    "Handler",
    "HandlerFactory",
    "ServerOptions",
    "Viewer",
    "ViewerFactory",
]


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
    #: Viewer connections: tell the adapter that :meth:`Viewer.pull` has something; safe from
    #: any thread, returns at once (the adapter pulls when the socket can take more).
    wake: Callable[[], None] = field(default=lambda: None, compare=False, repr=False)


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


class Viewer(Handler):
    """The handler of a viewer connection (``ServerConfig.viewer_paths``): it sends, the
    peer listens. The adapter calls :meth:`pull` on its own loop (or connection thread)
    whenever the socket can take more, after the viewer called ``ConnectionInfo.wake`` (so
    what waits is the viewer's to bound: a live relay skips a slow viewer to the next
    keyframe). ``on_disconnect`` says the viewer left."""

    def pull(self) -> list[bytes | str]:
        """The messages to send now (binary for ``bytes``, text for ``str``); never blocks."""
        return []


#: Makes the :class:`Viewer` of an accepted viewer upgrade (``ServerOptions.viewer_factory``).
ViewerFactory = Callable[[ConnectionInfo], Viewer]


class HTTPAnswer(NamedTuple):
    """The answer to a plain HTTP request (the connection closes after it)."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    #: More response headers (``Content-Range``, ``Cache-Control``, CORS...).
    headers: tuple[tuple[bytes, bytes], ...] = ()


#: Answers plain HTTP requests on ``ServerConfig.http_paths`` and ``http_prefixes``
#: (``/healthz``, ``/metrics``, ``/live/...``). Called in a handler thread (in the connection's
#: thread with the sync adapter), never on an event loop: it may read files.
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
    #: Makes the handler of each viewer connection (``ServerConfig.viewer_paths``); without
    #: one, viewer upgrades are closed at once with 1011.
    viewer_factory: ViewerFactory | None = None
    #: Called with every event of every connection (metrics, logs): on the event loop, or in
    #: the connection's thread with the sync adapter (so: cheap, and thread-safe). Errors in it
    #: are logged, never fatal.
    observer: Callable[[Event], None] | None = None
