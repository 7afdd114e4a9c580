"""The one policy every adapter follows, written once: a connection between a transport and a
handler, with no I/O of its own.

An adapter is a loop: read -> :meth:`ConnectionDriver.receive` -> write ``step.out`` -> hand
``step.events`` to the connection's :class:`HandlerCalls` (inline, or through
:class:`~._delivery.Delivery` off the event loop) -> pause reading while
``driver.backlog.should_pause()`` -> stop when ``step.closed``. Everything else lives here:

* the clocks given to the core (a monotonic one for the deadlines, the wall clock for the
  pongs' ``server_received_at_ms``);
* answering plain HTTP requests through ``ServerOptions.http_handler`` (delivered like events,
  so off the event loop), making the handler on ``Accepted``, observing every event;
* *after a handler failure only* :class:`~meetstream_live.Disconnected` *is delivered*
  (:class:`HandlerCalls`), and the failure closes the connection with 1011, once;
* *the first close request wins*: every close (shutdown, handler error, the handler's
  ``ConnectionInfo.close``) reaches the core through the adapter's ``post``, on the
  connection's own thread, and the core ignores a close once one is under way;
* once closing, the :class:`~meetstream_live.adapters.Backlog` stops pausing the bot's
  socket (its close answer must get through);
* the connection limit and the graceful drain of the server (:class:`Connections`);
* running out of file descriptors (:class:`Descriptors`): a few are held in reserve, so
  that when ``accept(2)`` fails with ``EMFILE``/``ENFILE`` the reserve is let go, the waiting
  connection is accepted and its upgrade answered 503, and upgrades keep getting 503 until
  the reserve is whole again; streams in flight go on.

``post`` is the one primitive an adapter supplies per connection: a thread-safe way to run
``fn(driver)`` on the connection's loop (or thread) and apply the :class:`Step` it returns.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from meetstream_live import (
    Accepted,
    CloseCode,
    ConnectionState,
    DisconnectCause,
    Disconnected,
    Event,
    HTTPRejected,
    HTTPRequest,
    MediaChunk,
    ServerConnection,
    Session,
)

from ._handler import (
    Backlog,
    ConnectionInfo,
    Handler,
    HandlerFactory,
    HTTPAnswer,
    ServerOptions,
    Viewer,
)

__all__ = [
    "ACCEPT_CAPACITY_ERRNOS",
    "ACCEPT_RETRY_DELAY",
    "DESCRIPTOR_RESERVE",
    "INLINE_BACKOFF",
    "INLINE_STALL",
    "READ_SIZE_SHRINK_AFTER",
    "READ_SIZE_START",
    "ConnectionDriver",
    "Connections",
    "Descriptors",
    "HandlerCalls",
    "MessageDriver",
    "MessageStep",
    "Post",
    "ReadSizer",
    "Step",
    "answer_http",
    "deliver",
    "media_size",
    "mono_ms",
    "now_ms",
    "observe",
    "wall_ms",
]

log = logging.getLogger("meetstream_live")


def wall_ms() -> int:
    """Unix time in milliseconds: what stamps ``server_received_at_ms``."""
    return time.time_ns() // 1_000_000


def mono_ms() -> int:
    """A monotonic clock in milliseconds: what drives the core's deadlines (an NTP step of the
    wall clock neither fires nor stalls a timeout)."""
    return time.monotonic_ns() // 1_000_000


#: The wall clock (the name every adapter used before the clocks were split).
now_ms = wall_ms


class Step(NamedTuple):
    """What one read or timeout produced: bytes to write first, then events for the handler."""

    out: bytes
    events: list[Event]
    closed: bool


#: ``post(fn)``: run ``fn(driver)`` on the connection's own loop or thread, soon, and apply the
#: step it returns; thread-safe; a no-op once the connection is over.
Post = Callable[[Callable[[Any], Any]], None]


def observe(observer: Callable[[Event], None], event: Event) -> None:
    """Give an event to ``ServerOptions.observer``: its errors are logged, never fatal
    (metrics must not take a stream down)."""
    try:
        observer(event)
    except Exception as exc:
        log.error("observer failed on %s: %r", type(event).__name__, exc)


def media_size(events: Iterable[Event]) -> int:
    """Bytes of media in a batch of events (what backpressure counts)."""
    size = 0
    for event in events:
        if type(event) is MediaChunk:
            size += len(event.data)
    return size


def deliver(handler: Handler, events: Iterable[Event]) -> Exception | None:
    """Call the handler for each event, in order. After a method raises, only
    :class:`Disconnected` is still delivered (the handler must hear of the end). Returns the
    first exception."""
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


#: An inline handler call (:meth:`Handler.dispatch_inline`) longer than this, in seconds, sends
#: the connection's next batches to the threads for :data:`INLINE_BACKOFF` seconds.
INLINE_STALL = 0.005
INLINE_BACKOFF = 2.0


class HandlerCalls:
    """One connection's handler, called in order, with the failure rule: after a method raised
    (:meth:`deliver` returned the exception), only :class:`Disconnected` reaches it.

    :meth:`offer` is the inline decision of the event-loop adapters: a batch goes to
    :meth:`Handler.dispatch_inline`, on the loop, unless a recent inline call stalled the loop
    (one longer than :data:`INLINE_STALL` sends the next batches to the threads for
    :data:`INLINE_BACKOFF`: a write stalled by the kernel's dirty page throttling, say).
    Deliveries of one connection never overlap (the adapters serialize them)."""

    __slots__ = ("_threads_until", "failed", "handler", "peer")

    def __init__(self, handler: Handler, peer: str = "?") -> None:
        self.handler = handler
        self.peer = peer
        self.failed = False
        self._threads_until = 0.0

    def deliver(self, events: list[Event]) -> Exception | None:
        if self.failed:
            events = [e for e in events if isinstance(e, Disconnected)]
            if not events:
                return None
        error = deliver(self.handler, events)
        if error is not None:
            self._failed(error)
        return error

    def _failed(self, error: Exception) -> None:
        """The first failure is logged here, where it happens, whatever the connection's
        state (a handler that fails after the bot closed is logged too); later ones are
        counted by the caller's metrics only."""
        if not self.failed:
            log.error("handler failed for %s: %r", self.peer, error, exc_info=error,
                      extra={"event": "handler_failed", "peer": self.peer})
        self.failed = True

    def offer(self, events: list[Event]) -> bool | Exception:
        """True: the handler took ``events`` on the caller's thread. False: deliver them in a
        thread. An exception: ``dispatch_inline`` raised it (the batch is consumed)."""
        if self.failed:
            return False
        now = time.monotonic()
        if now < self._threads_until:
            return False
        try:
            done = self.handler.dispatch_inline(events)
        except Exception as exc:
            self._failed(exc)
            return exc
        if done and time.monotonic() - now > INLINE_STALL:
            self._threads_until = now + INLINE_BACKOFF
        return done


class _Responder(Handler):
    """The 'handler' of a plain HTTP request: asks ``ServerOptions.http_handler`` (in a handler
    thread, like any handler call) and posts the answer back to the connection."""

    def __init__(self, options: ServerOptions, post: Post) -> None:
        self.options = options
        self.post = post

    def dispatch(self, events: Iterable[Event]) -> None:
        for event in events:
            if isinstance(event, HTTPRequest):
                self.post(functools.partial(_respond, self._answer(event)))

    def _answer(self, request: HTTPRequest) -> HTTPAnswer:
        return answer_http(self.options, request)


def _respond(answer: HTTPAnswer, driver: Any) -> Any:
    return driver.respond(answer)


def _pull(driver: Any) -> Any:
    return driver.pull()


def _no_wake() -> None:
    """``ConnectionInfo.wake`` of a bot's connection: nothing to pull."""


def _no_viewers(info: ConnectionInfo) -> Handler:
    raise LookupError("no viewer_factory in ServerOptions")


def answer_http(options: ServerOptions, request: HTTPRequest) -> HTTPAnswer:
    """``options.http_handler``'s answer to ``request`` (404 without one; 500, logged, when it
    raises). Blocking: call it off the event loop."""
    http = options.http_handler
    if http is None:
        return HTTPAnswer(404, b"not found\n")
    try:
        return http(request)
    except Exception as exc:
        log.error("HTTP handler failed on %s: %r", request.path, exc, exc_info=exc)
        return HTTPAnswer(500, b"internal server error\n")


class _Policy:
    """What :class:`ConnectionDriver` and :class:`MessageDriver` share: the handler, its
    failure, the backlog, the observer."""

    def __init__(
        self, options: ServerOptions, factory: HandlerFactory, *, peer: str, post: Post
    ) -> None:
        self.options = options
        self.factory = factory
        self.peer = peer
        self.post = post
        #: The connection's backlog (``ConnectionInfo.backlog``): see :class:`Backlog`.
        self.backlog = Backlog(options.max_pending_bytes)
        #: The handler of the connection (or of its HTTP request), once there is one.
        self.calls: HandlerCalls | None = None
        self.info: ConnectionInfo | None = None
        self._error_seen = False

    @property
    def accepted(self) -> bool:
        return self.info is not None

    @property
    def handler(self) -> Handler | None:
        return None if self.calls is None else self.calls.handler

    @property
    def handler_failed(self) -> bool:
        return self.calls is not None and self.calls.failed

    def _close_requested(self, code: int, reason: str) -> None:
        """``ConnectionInfo.close``: from any thread, through the adapter's ``post``."""
        self.post(lambda driver: driver.close(code, reason, DisconnectCause.LOCAL_CLOSE))

    def _wake(self) -> None:
        """``ConnectionInfo.wake`` of a viewer: pull on the connection's thread."""
        self.post(_pull)

    def _make_handler(
        self, path: str, query: str, headers: Any, secure: bool, viewer: bool = False
    ) -> bool:
        """On an accepted upgrade: the handler; False if the factory raised (a no-op handler
        then hears of the end, and the caller closes with 1011)."""
        info = ConnectionInfo(
            self.peer,
            path,
            query,
            headers,
            secure,
            close=self._close_requested,
            backlog=self.backlog,
            wake=self._wake if viewer else _no_wake,
        )
        self.info = info
        factory: Any = self.factory
        if viewer:
            factory = self.options.viewer_factory
            if factory is None:
                log.info("%s: a viewer, and no viewer_factory: closing", self.peer)
                factory = _no_viewers
        try:
            handler = factory(info)
        except Exception as exc:
            log.error("handler factory failed for %s: %r", self.peer, exc, exc_info=exc,
                      extra={"event": "handler_failed", "peer": self.peer})
            self.calls = HandlerCalls(Handler(), self.peer)
            self.calls.failed = True
            self._error_seen = True
            return False
        self.calls = HandlerCalls(handler, self.peer)
        return True

    def _observe(self, events: list[Event]) -> None:
        observer = self.options.observer
        if observer is not None:
            for event in events:
                observe(observer, event)

    def _first_error(self, exc: BaseException) -> bool:
        """True the first time a handler error is reported (it closes the connection; the
        error itself was logged where it happened, by :class:`HandlerCalls`)."""
        if self._error_seen:
            return False
        self._error_seen = True
        if self.calls is not None and not self.calls.failed:
            log.error("handler failed for %s: %r", self.peer, exc, exc_info=exc,
                      extra={"event": "handler_failed", "peer": self.peer})
            self.calls.failed = True
        return True


class ConnectionDriver(_Policy):
    """One server connection over a byte transport (asyncio, sync, trio): it owns the
    :class:`~meetstream_live.ServerConnection`. See the module."""

    def __init__(
        self,
        options: ServerOptions,
        factory: HandlerFactory,
        *,
        peer: str,
        post: Post,
        overloaded: bool = False,
        wall: Callable[[], int] = wall_ms,
        monotonic: Callable[[], int] = mono_ms,
    ) -> None:
        super().__init__(options, factory, peer=peer, post=post)
        self.wall = wall
        self.monotonic = monotonic
        self.conn = ServerConnection(options.config, now_ms=monotonic(), overloaded=overloaded)
        #: Set by an adapter whose transport buffers writes (asyncio) while it asks us to stop
        #: writing: :meth:`pull` then waits, and :attr:`pull_due` says a pull is owed.
        self.write_paused = False
        self.pull_due = False

    @property
    def closed(self) -> bool:
        return self.conn.state is ConnectionState.CLOSED

    def receive(self, data: bytes | bytearray | memoryview) -> Step:
        """A read from the socket (``b""`` for EOF or a broken connection). A ``bytearray`` or
        ``memoryview`` is read during the call only (the core copies what it keeps): the
        caller may reuse its buffer once this returns."""
        return self._step(self.conn.receive_data(data, self.monotonic(), self.wall()))

    def timeout(self) -> Step:
        """Call when :meth:`seconds_to_deadline` has run out (early is harmless)."""
        return self._step(self.conn.handle_timeout(self.monotonic()))

    def close(
        self,
        code: int = CloseCode.GOING_AWAY,
        reason: str = "server shutting down",
        cause: DisconnectCause = DisconnectCause.SHUTDOWN,
    ) -> Step:
        """Close from our side; a no-op once a close is under way (the first one wins)."""
        return self._step(self.conn.close(code, reason, now_ms=self.monotonic(), cause=cause))

    def handler_error(self, exc: BaseException) -> Step:
        """The handler raised: close this connection with 1011 (others are not affected)."""
        if not self._first_error(exc):
            return self._step([])
        return self.close(CloseCode.INTERNAL_ERROR, "handler error", DisconnectCause.HANDLER_ERROR)

    def respond(self, answer: HTTPAnswer) -> Step:
        """The answer to the connection's :class:`HTTPRequest` (posted by the responder)."""
        if self.conn.state is ConnectionState.HTTP_RESPONSE:
            self.conn.send_response(
                answer.status, answer.body, content_type=answer.content_type,
                headers=answer.headers,
            )
        return self._step([])

    def pull(self) -> Step:
        """A viewer's messages, framed: what its :meth:`Viewer.pull` has now. The adapter
        calls it (through ``post``, after ``ConnectionInfo.wake``) when the socket can take
        more; a write-paused adapter calls it again once the socket drained."""
        handler = self.handler
        if self.write_paused:
            self.pull_due = True  # the adapter pulls again once the socket drained
            return self._step([])
        self.pull_due = False
        if isinstance(handler, Viewer) and not self.handler_failed:
            try:
                messages = handler.pull()
            except Exception as exc:
                return self.handler_error(exc)
            for message in messages:
                if not self.conn.send_message(message):
                    break
        return self._step([])

    def resumed(self) -> None:
        """Reading resumes after a backpressure pause: the bot was not idle, we were."""
        self.conn.keep_alive(self.monotonic())

    def seconds_to_deadline(self) -> float | None:
        deadline = self.conn.next_deadline()
        if deadline is None:
            return None
        return max(0.0, (deadline - self.monotonic()) / 1000)

    def _step(self, events: list[Event]) -> Step:
        if events:
            self._observe(events)
            for_handler: list[Event] = []
            for event in events:
                kind = type(event)
                if kind is Accepted:
                    self._accept(event)  # type: ignore[arg-type]
                elif kind is HTTPRequest:
                    self.calls = HandlerCalls(_Responder(self.options, self.post), self.peer)
                    for_handler.append(event)
                elif kind is HTTPRejected:
                    rejected: Any = event
                    log.info("%s: HTTP %d: %s", self.peer, rejected.status, rejected.reason,
                             extra={"event": "http_rejected", "peer": self.peer,
                                    "status": rejected.status})
                else:
                    for_handler.append(event)
            events = for_handler if self.calls is not None else []
        state = self.conn.state
        if state is ConnectionState.CLOSING or state is ConnectionState.CLOSED:
            self.backlog.release()
        return Step(self.conn.data_to_send(), events, state is ConnectionState.CLOSED)

    def _accept(self, event: Accepted) -> None:
        secure = self.options.ssl is not None
        if not self._make_handler(event.path, event.query, event.headers, secure, event.viewer):
            self.conn.close(
                CloseCode.INTERNAL_ERROR, "handler error", now_ms=self.monotonic(),
                cause=DisconnectCause.HANDLER_ERROR,
            )


class MessageStep(NamedTuple):
    """What a message-level step produced: messages to send first (pongs; a viewer's media),
    the close to send if one is due (``(code, reason)``), then events for the handler."""

    texts: list[bytes | str]
    close: tuple[int, str] | None
    events: list[Event]


class MessageDriver(_Policy):
    """The same policy over a stack that does the WebSocket framing itself (ASGI): it owns a
    :class:`~meetstream_live.Session`, configured from the whole ``ServerConfig`` (message,
    text and early-byte limits included). The adapter sends ``step.texts``, then the close
    (``step.close``), then hands ``step.events`` to the handler."""

    def __init__(
        self,
        options: ServerOptions,
        factory: HandlerFactory,
        *,
        peer: str,
        post: Post,
        wall: Callable[[], int] = wall_ms,
    ) -> None:
        super().__init__(options, factory, peer=peer, post=post)
        config = options.config
        self.session = Session(
            max_early_bytes=config.max_early_bytes,
            max_text_size=config.max_text_size,
            max_message_size=config.max_message_size,
        )
        self.wall = wall
        #: The close this side sent, once it did (the first one wins).
        self.close_sent: tuple[int, str] | None = None
        self._cause = DisconnectCause.LOCAL_CLOSE
        self.lost = False
        self.viewer = False

    def pull(self) -> MessageStep:
        """A viewer's messages to send now (see :meth:`ConnectionDriver.pull`)."""
        handler = self.handler
        if self.close_sent is not None or self.lost or not isinstance(handler, Viewer):
            return MessageStep([], None, [])
        try:
            messages = handler.pull()
        except Exception as exc:
            return self.handler_error(exc)
        return MessageStep(list(messages), None, [])

    def accept(
        self, path: str, query: str, headers: Any, secure: bool, viewer: bool = False
    ) -> MessageStep:
        """The upgrade was accepted (``websocket.accept`` sent): make the handler."""
        self.viewer = viewer
        self._observe([Accepted(path, query, headers, viewer)])
        if self._make_handler(path, query, headers, secure, viewer):
            return MessageStep([], None, [])
        return self.close(CloseCode.INTERNAL_ERROR, "handler error", DisconnectCause.HANDLER_ERROR)

    def receive(self, data: bytes | None, text: str | None) -> MessageStep:
        """One ASGI ``websocket.receive``."""
        session = self.session
        if self.viewer:
            return MessageStep([], None, [])  # a viewer's messages are read and dropped
        if data is not None:
            events = session.receive_binary(data)
        elif text is not None:
            events = session.receive_text(text, self.wall())
        else:
            events = []
        return self._after(events)

    def disconnected(self, code: int, reason: str, cause: DisconnectCause) -> MessageStep:
        """The ASGI ``websocket.disconnect`` (or the connection given up)."""
        if self.lost:
            return MessageStep([], None, [])
        self.lost = True
        if self.close_sent is not None:
            cause = self._cause
            if code != CloseCode.ABNORMAL:
                code, reason = self.close_sent  # we closed: report why, as the core does
        self.backlog.release()
        events = self.session.connection_lost(code, reason, cause)
        self._observe(events)
        return MessageStep([], None, events if self.calls is not None else [])

    def close(
        self,
        code: int = CloseCode.GOING_AWAY,
        reason: str = "server shutting down",
        cause: DisconnectCause = DisconnectCause.SHUTDOWN,
    ) -> MessageStep:
        """Close from our side: the ``websocket.close`` to send, once (the first one wins)."""
        if self.close_sent is not None or self.lost:
            return MessageStep([], None, [])
        self.close_sent = (code, reason)
        self._cause = cause
        self.backlog.release()
        return MessageStep([], (code, reason), [])

    def handler_error(self, exc: BaseException) -> MessageStep:
        if not self._first_error(exc):
            return MessageStep([], None, [])
        return self.close(CloseCode.INTERNAL_ERROR, "handler error", DisconnectCause.HANDLER_ERROR)

    def _after(self, events: list[Event]) -> MessageStep:
        session = self.session
        texts: list[bytes | str] = []
        if self.close_sent is None:
            texts.extend(session.messages_to_send())
        self._observe(events)
        close = None
        request = session.close_request
        if request is not None:
            close = self.close(request.code, request.reason, request.cause).close
        return MessageStep(texts, close, events if self.calls is not None else [])


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


#: ``accept(2)`` errors that mean "out of resources for now" (the connection waits in the
#: listen backlog): see :class:`Descriptors`.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: Seconds an adapter waits before trying ``accept(2)`` again when nothing is left to free.
ACCEPT_RETRY_DELAY = 0.1
#: File descriptors a server holds in reserve (see :class:`Descriptors`): one for the socket
#: of the connection told 503, the others for what a stream needs (its recording's files, a
#: wake-up socket pair) once the reserve is back.
DESCRIPTOR_RESERVE = 4


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


class Descriptors:
    """Running out of file descriptors (``EMFILE``, ``ENFILE``), the same for every adapter.

    ``reserve`` descriptors (``/dev/null``, close-on-exec) are held from the start. Then:

    * ``accept(2)`` fails for lack of descriptors (:meth:`accept_failed`): the reserve is let
      go and the adapter accepts again at once, so the connection that waits is taken, and
      its upgrade answered 503 (the core's ``overloaded``); once the reserve is gone, the
      adapter waits :data:`ACCEPT_RETRY_DELAY` and tries again (the connections wait in the
      kernel's listen backlog; nothing is refused);
    * every new connection asks :meth:`headroom` (through :meth:`Connections.overloaded`):
      the reserve is taken back when it can be, and a stream may start only when it is whole
      and one descriptor more can be had; otherwise the upgrade gets 503;
    * one error line when descriptors run out, one warning line when they are back (with
      how many upgrades got 503 and how many accepts had to wait): once per burst.

    Streams in flight are not touched: they hold their descriptors. Thread-safe.
    """

    def __init__(self, reserve: int = DESCRIPTOR_RESERVE) -> None:
        self.reserve = reserve
        self._held: list[int] = []
        self._lock = threading.Lock()
        #: Out of descriptors now (between the two log lines).
        self.short = False
        #: Upgrades refused for lack of descriptors, and accepts that had to wait, in all.
        self.refused = 0
        self.waited = 0
        self._burst = (0, 0)
        self._refill()
        weakref.finalize(self, _close_all, self._held)

    def _refill(self) -> bool:
        """(Lock held, or in ``__init__``.) Take the reserve back; True once it is whole."""
        try:
            while len(self._held) < self.reserve:
                self._held.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            return False
        return True

    def _probe(self) -> bool:
        """(Lock held.) Whether one descriptor more than the reserve can be had."""
        try:
            fd = os.dup(self._held[0]) if self._held else os.open(os.devnull, os.O_RDONLY)
        except OSError:
            return False
        os.close(fd)
        return True

    def headroom(self) -> bool:
        """Whether a new stream may start (else its upgrade gets 503); takes the reserve back
        when it can. Called once per accepted connection."""
        with self._lock:
            ok = self._refill() and self._probe()
            if not ok:
                self._short("no file descriptor to spare")
                self.refused += 1
            elif self.short:
                self.short = False
                refused, waited = self.refused - self._burst[0], self.waited - self._burst[1]
                log.warning("file descriptors are available again: accepting upgrades (%d "
                            "got 503, %d accept(s) waited)", refused, waited)
            return ok

    def accept_failed(self, exc: OSError) -> bool:
        """``accept(2)`` failed with ``exc`` (an errno of :data:`ACCEPT_CAPACITY_ERRNOS`):
        True to accept again at once (the reserve was let go: that connection's upgrade gets
        503), False to wait :data:`ACCEPT_RETRY_DELAY` first."""
        with self._lock:
            self._short(os.strerror(exc.errno) if exc.errno else str(exc))
            if self._held:
                _close_all(self._held)
                return True
            self.waited += 1
            return False

    def _short(self, why: str) -> None:
        if not self.short:
            self.short = True
            self._burst = (self.refused, self.waited)
            log.error("out of file descriptors (%s): new upgrades get 503 until some are "
                      "free; streams in flight go on (raise the limit: ulimit -n)", why)


class Connections:
    """A server's open connections: the connection limit and the graceful drain, the same for
    every adapter. Thread-safe.

    The drain, as an adapter runs it::

        for timeout in connections.drain(drain_timeout):
            wait until connections.count == 0, or timeout seconds (None: no limit)

    :meth:`drain` stops admitting (new upgrades get 503), yields the drain timeout (streams
    may finish), then asks every connection still open to close with 1001 through its
    ``post``, and yields ``None`` (wait for the rest: each one's close timeout bounds it).
    """

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.accepting = True
        #: Running out of file descriptors: see :class:`Descriptors`.
        self.descriptors = Descriptors()
        self._open: dict[object, Post] = {}
        self._lock = threading.Lock()
        self._on_change: list[Callable[[], None]] = []

    @property
    def count(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[object]:
        """The open connections (the adapter's objects), as a snapshot."""
        with self._lock:
            return iter(list(self._open))

    def overloaded(self) -> bool:
        """Whether a new upgrade is refused (503): at the limit, draining, or out of file
        descriptors (:meth:`Descriptors.headroom`)."""
        return (not self.accepting or len(self._open) >= self.options.max_connections
                or not self.descriptors.headroom())

    def add(self, key: object, post: Post) -> None:
        with self._lock:
            self._open[key] = post

    def discard(self, key: object) -> None:
        with self._lock:
            self._open.pop(key, None)
            callbacks = list(self._on_change)
        for callback in callbacks:
            callback()

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the thread that removed it) whenever a connection goes."""
        with self._lock:
            self._on_change.append(callback)

    def drain(self, timeout: float | None = None) -> Iterator[float | None]:
        """The drain policy (see the class); ``timeout`` defaults to the options'."""
        self.accepting = False
        yield self.options.drain_timeout if timeout is None else timeout
        with self._lock:
            remaining = list(self._open.values())
        if remaining:
            log.info("closing %d connection(s) with 1001", len(remaining))
        for post in remaining:
            with contextlib.suppress(Exception):  # a connection that just went
                post(lambda driver: driver.close())
        yield None
