"""The sync adapter: a receiver on blocking-style sockets with a thread per connection, and a
bot client on a plain socket.

Each connection's thread owns its socket and its :class:`ConnectionDriver` and calls the handler
inline, so the handler may block and backpressure comes for free: the socket is not read while
the handler works. The server's other threads never touch a driver; they only stop accepting
and, on shutdown, raise a level-triggered flag (a byte in a socket pair that every connection
thread watches) that asks each remaining connection to close itself with 1001. A handler's
``ConnectionInfo.close`` works the same way for its own connection: it records the request and
writes a byte to that connection's wake-up socket pair (made once the upgrade is accepted).
"""

from __future__ import annotations

import contextlib
import enum
import selectors
import socket
import ssl as ssl_module
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from meetstream_live import (
    BotClosed,
    BotConnection,
    BotState,
    Event,
    parse_ws_url,
)

from ._bots import client_tls, handshake_outcome
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

__all__ = ["SyncBot", "SyncServer", "run", "serve"]


_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


class _Wake(enum.Enum):
    READY = "ready"
    TIMEOUT = "timeout"
    POSTED = "posted"  # something was posted to the connection (a close, a wake-up)


class _Connection:
    """One accepted socket, driven by its own thread (:meth:`run`); nothing else touches it.
    Other threads :meth:`post` to it: the request is queued and the thread woken (by a byte in
    its wake-up socket pair, made once the upgrade is accepted, or by the server's shutdown
    flag)."""

    def __init__(
        self, server: SyncServer, sock: socket.socket, peer: str, overloaded: bool
    ) -> None:
        self.server = server
        self.options = server.options
        self.sock = sock
        self.peer = peer
        self.overloaded = overloaded
        self.driver: ConnectionDriver | None = None
        self._selector: selectors.BaseSelector | None = None
        self._write_timeout = self.options.config.close_timeout_ms / 1000
        self._posted: deque[Callable[[ConnectionDriver], Step | None]] = deque()
        self._lock = threading.Lock()
        #: Wakes this connection's thread for a post from another thread (made on accept).
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._wake_tried = False
        self._watching_sock = False
        self._paused = False  # the backlog is over its limit: the socket is not read
        self._broken = False  # a write failed: the connection is lost
        self._sizer = ReadSizer(self.options.read_size)  # bytes asked per recv()

    # ------------------------------------------------------------------ thread body

    def run(self) -> None:
        try:
            try:
                selector: selectors.BaseSelector = selectors.DefaultSelector()
            except OSError:  # out of descriptors (epoll needs one): poll needs none
                selector = selectors.PollSelector()
            self._selector = selector
            driver = self.driver = ConnectionDriver(
                self.options,
                self.server.factory,
                peer=self.peer,
                post=self.post,
                overloaded=self.overloaded,
            )
            driver.backlog.on_below = self._below
            self.sock.setblocking(False)
            context = self.options.ssl
            if context is not None:
                try:
                    self.sock = context.wrap_socket(
                        self.sock, server_side=True, do_handshake_on_connect=False
                    )
                except OSError:
                    driver.receive(b"")
                    return
            selector.register(self.sock, _READ)
            self._watching_sock = True
            selector.register(self.server._close_r, _READ)
            if context is not None and not self._tls_handshake(driver):
                driver.receive(b"")  # nothing was said over HTTP yet: just close
                return
            self._read_loop(driver)
        except Exception:
            log.exception("connection from %s failed", self.peer)
        finally:
            self._finish()

    def _finish(self) -> None:
        driver = self.driver
        try:
            if driver is not None and not driver.closed:
                # A bug above: the handler still hears of the end.
                step = driver.receive(b"")
                if step.events and driver.calls is not None:
                    driver.calls.deliver(step.events)
        except Exception:
            log.exception("connection from %s failed while closing", self.peer)
        finally:
            if self._selector is not None:
                self._selector.close()
            with contextlib.suppress(OSError):
                self.sock.close()
            with self._lock:
                wake = (self._wake_r, self._wake_w)
                self._wake_r = self._wake_w = None
            for sock in wake:
                if sock is not None:
                    sock.close()
            self.server._remove(self)

    # ------------------------------------------------------------------ posts

    def post(self, fn: Callable[[ConnectionDriver], Step | None]) -> None:
        """The driver's ``post``, from any thread: ``fn(driver)`` in the connection thread."""
        with self._lock:
            self._posted.append(fn)
            wake = self._wake_w
            if wake is not None:  # not blocking, under the lock: it is never closed meanwhile
                with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
                    wake.send(b"\0")

    def _below(self) -> None:
        """The backlog's wake-up (any thread): read again."""
        self.post(self._resume)

    def _resume(self, driver: ConnectionDriver) -> None:
        if self._paused:
            self._paused = False
            driver.resumed()  # the pause was ours, not the bot's idleness

    def _run_posted(self, driver: ConnectionDriver) -> bool:
        """Run what was posted; True if anything was."""
        ran = False
        while True:
            with self._lock:
                if not self._posted:
                    return ran
                fn = self._posted.popleft()
            ran = True
            if driver.closed:
                continue
            step = fn(driver)
            if step is not None:
                self._process(driver, step)

    def _open_wake(self) -> None:
        """Once the upgrade is accepted (the handler exists): the wake-up socket pair."""
        selector = self._selector
        assert selector is not None
        self._wake_tried = True
        try:
            wake_r, wake_w = socket.socketpair()
        except OSError as exc:  # out of descriptors: a post is seen at the next read
            log.warning("%s: no wake-up socket pair for close requests: %s", self.peer, exc)
            return
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        selector.register(wake_r, _READ)
        with self._lock:
            self._wake_r, self._wake_w = wake_r, wake_w
            pending = bool(self._posted)
        if pending:
            with contextlib.suppress(OSError):
                wake_w.send(b"\0")

    def _read_loop(self, driver: ConnectionDriver) -> None:
        while not driver.closed:
            if not self._wake_tried and driver.accepted:
                self._open_wake()
            if self._run_posted(driver):
                continue
            if self._paused:
                self._wait(None, None)  # until the backlog's wake-up or another post
                continue
            step = self._read(driver)
            if step is not None:
                self._process(driver, step)

    def _read(self, driver: ConnectionDriver) -> Step | None:
        """One read (or timeout) through the driver; ``None`` when there was nothing to do."""
        sock = self.sock
        buffered = isinstance(sock, ssl_module.SSLSocket) and sock.pending() > 0
        if not buffered:
            woken = self._wait(_READ, driver.seconds_to_deadline())
            if woken is _Wake.POSTED:
                return None  # the loop runs what was posted
            if woken is _Wake.TIMEOUT:
                return driver.timeout()  # a no-op when the deadline is not quite due
        sizer = self._sizer
        try:
            data = sock.recv(sizer.size)
        except (BlockingIOError, InterruptedError, ssl_module.SSLWantReadError):
            return None  # e.g. half a TLS record so far
        except ssl_module.SSLWantWriteError:
            self._wait_for_socket(_WRITE, time.monotonic() + self._write_timeout)
            return None
        except OSError:  # reset, TLS error...
            data = b""
        sizer.update(len(data))
        return driver.receive(data)

    def _process(self, driver: ConnectionDriver, step: Step) -> None:
        """Write ``step.out`` first, then hand the events to the handler (inline)."""
        if step.out and not self._broken and not self._send(step.out):
            self._broken = True
        if step.events:
            assert driver.calls is not None
            error = driver.calls.deliver(step.events)
            if error is not None:
                self._process(driver, driver.handler_error(error))
            if not self._paused and driver.backlog.should_pause():
                self._paused = True
        if self._broken and not driver.closed:
            self._process(driver, driver.receive(b""))

    # ------------------------------------------------------------------ socket plumbing

    def _wait(self, events: int | None, timeout: float | None) -> _Wake:
        """Wait until the socket is ready for ``events`` (``None``: do not watch it),
        ``timeout`` passes or something is posted (the handler's wake-up byte, or the server's
        shutdown flag, after which the flag is no longer watched)."""
        selector = self._selector
        assert selector is not None
        if events is None:
            if self._watching_sock:
                selector.unregister(self.sock)
                self._watching_sock = False
        elif self._watching_sock:
            selector.modify(self.sock, events)
        else:
            selector.register(self.sock, events)
            self._watching_sock = True
        woken = _Wake.TIMEOUT
        for key, _mask in selector.select(timeout):
            if key.fileobj is self.sock:
                return _Wake.READY
            wake_r = self._wake_r
            if wake_r is not None and key.fileobj is wake_r:
                with contextlib.suppress(OSError):
                    wake_r.recv(4096)
            else:
                selector.unregister(self.server._close_r)
            woken = _Wake.POSTED
        return woken

    def _wait_for_socket(self, events: int, deadline: float) -> bool:
        """Wait until the socket is ready or ``deadline`` (monotonic) passes."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._wait(events, remaining) is _Wake.READY:
                return True

    def _send(self, data: bytes) -> bool:
        """Write all of ``data``; False when the connection is lost or stalls for
        ``close_timeout`` (a bot that reads nothing is gone)."""
        view = memoryview(data)
        deadline = time.monotonic() + self._write_timeout
        while view:
            try:
                sent = self.sock.send(view)
            except (BlockingIOError, InterruptedError, ssl_module.SSLWantWriteError):
                events = _WRITE
            except ssl_module.SSLWantReadError:
                events = _READ
            except OSError:
                return False
            else:
                view = view[sent:]
                continue
            if not self._wait_for_socket(events, deadline):
                return False
        return True

    def _tls_handshake(self, driver: ConnectionDriver) -> bool:
        """The TLS handshake, within the HTTP handshake deadline; False if it fails, times out
        or the server shuts down meanwhile."""
        sock = self.sock
        assert isinstance(sock, ssl_module.SSLSocket)
        while True:
            try:
                sock.do_handshake()
            except ssl_module.SSLWantReadError:
                events = _READ
            except ssl_module.SSLWantWriteError:
                events = _WRITE
            except OSError as exc:
                log.info("%s: TLS handshake failed: %s", self.peer, exc)
                return False
            else:
                return True
            if self._wait(events, driver.seconds_to_deadline()) is not _Wake.READY:
                return False


class SyncServer:
    """A receiver on sockets and threads. Use ``with serve(...)`` or :meth:`start` and then
    :meth:`serve_forever` (or :meth:`start_background`), and :meth:`shutdown`."""

    def __init__(self, factory: HandlerFactory, options: ServerOptions | None = None) -> None:
        self.factory = factory
        self.options = options or ServerOptions()
        self._listeners: list[socket.socket] = []
        #: The open connections: the limit and the drain (shared policy).
        self.connections = Connections(self.options)
        self._changed = threading.Condition()
        self.connections.on_change(self._notify)
        self._accepting = True
        self._is_shut_down = False
        # A byte in _stop stops the accept loop; a byte in _close (never read: it stays
        # readable) wakes every connection thread to run what the drain posted to it.
        self._stop_r, self._stop_w = socket.socketpair()
        self._close_r, self._close_w = socket.socketpair()
        self._serving = threading.Lock()  # held by the thread running serve_forever
        self._background: threading.Thread | None = None

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._listeners)

    @property
    def port(self) -> int:
        return int(self._listeners[0].getsockname()[1])

    @property
    def active_connections(self) -> int:
        return self.connections.count

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def start(
        self,
        host: str | None = "127.0.0.1",
        port: int = 9876,
        *,
        backlog: int = 128,
        reuse_port: bool = False,
    ) -> None:
        """Bind and listen (``port=0`` picks a free port; see :attr:`port`). ``host=None``
        listens on every interface (IPv6 and IPv4 where the system can). ``reuse_port``
        binds with SO_REUSEPORT (several processes on one port: ``serve --workers``)."""
        warm_up("sync", self.options.config.unmask)
        if host is None and socket.has_dualstack_ipv6():
            sock = socket.create_server(
                ("", port), family=socket.AF_INET6, backlog=backlog, dualstack_ipv6=True,
                reuse_port=reuse_port,
            )
        elif host is None:
            sock = socket.create_server(("", port), backlog=backlog, reuse_port=reuse_port)
        else:
            family, _type, _proto, _name, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.create_server(
                address[:2], family=family, backlog=backlog, reuse_port=reuse_port
            )
        sock.setblocking(False)
        self._listeners.append(sock)

    def serve_forever(self) -> None:
        """Accept connections in the calling thread until :meth:`shutdown`."""
        if not self._listeners:
            raise RuntimeError("call start() before serve_forever()")
        with self._serving, selectors.DefaultSelector() as selector:
            if not self._accepting:  # shut down before we got here
                return
            for listener in self._listeners:
                selector.register(listener, _READ)
            selector.register(self._stop_r, _READ)
            while self._accepting:
                for key, _mask in selector.select():
                    if key.fileobj is self._stop_r:
                        return
                    assert isinstance(key.fileobj, socket.socket)
                    self._accept(key.fileobj)

    def start_background(self) -> threading.Thread:
        """Run :meth:`serve_forever` in a daemon thread (returned)."""
        thread = threading.Thread(
            target=self.serve_forever, name="meetstream-live accept", daemon=True
        )
        self._background = thread
        thread.start()
        return thread

    def shutdown(self, drain_timeout: float | None = None) -> None:
        """Stop accepting; let streams run up to ``drain_timeout``; close the rest with 1001;
        return when every connection thread (and so every handler call) has finished.

        Call it from any thread but the one running :meth:`serve_forever`.
        """
        if self._is_shut_down:
            return
        self._is_shut_down = True
        self._stop_accepting()
        with self._serving:  # the accept loop is over
            pass
        for listener in self._listeners:
            listener.close()
        for timeout in self.connections.drain(drain_timeout):
            if timeout is None:  # closes were posted: wake every connection thread
                with contextlib.suppress(OSError):
                    self._close_w.send(b"\0")
            deadline = None if timeout is None else time.monotonic() + timeout
            with self._changed:
                while self.connections.count:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    self._changed.wait(remaining)
        if self._background is not None:
            self._background.join()
        for sock in (self._stop_r, self._stop_w, self._close_r, self._close_w):
            sock.close()

    def __enter__(self) -> SyncServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ internals

    def _stop_accepting(self) -> None:
        """Make :meth:`serve_forever` return soon; safe in a signal handler."""
        self._accepting = False
        with contextlib.suppress(OSError):
            self._stop_w.send(b"\0")

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, address = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:
            if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                raise
            # Out of descriptors: the reserve is let go and we accept again at once (that
            # upgrade gets 503), or, with none left, the connection waits in the backlog.
            if not self.connections.descriptors.accept_failed(exc):
                time.sleep(ACCEPT_RETRY_DELAY)
            return
        conn = _Connection(self, sock, str(address), self.connections.overloaded())
        thread = threading.Thread(target=conn.run, name=f"meetstream-live {address}", daemon=True)
        self.connections.add(conn, conn.post)
        try:
            thread.start()
        except RuntimeError:  # can't start new thread
            log.exception("no thread for the connection from %s", address)
            sock.close()
            self._remove(conn)

    def _remove(self, conn: _Connection) -> None:
        self.connections.discard(conn)


@contextlib.contextmanager
def serve(
    factory: HandlerFactory,
    host: str | None = "127.0.0.1",
    port: int = 9876,
    options: ServerOptions | None = None,
) -> Iterator[SyncServer]:
    """Run a receiver (accepting in a background thread) for the duration of the ``with``
    block (graceful shutdown at exit)."""
    server = SyncServer(factory, options)
    server.start(host, port)
    server.start_background()
    try:
        yield server
    finally:
        server.shutdown()


class SyncBot:
    """A MeetStream bot on a blocking socket: ``bot = SyncBot.connect(url)``.

    ``send_*`` write at once, waiting at most the ``timeout`` given to :meth:`connect` for the
    socket buffer (``TimeoutError`` after that); :meth:`next_event` returns what the receiver
    sent (pongs, the close).
    """

    def __init__(self, conn: BotConnection, sock: socket.socket, timeout: float | None) -> None:
        self.conn = conn
        self._sock = sock
        self._events: deque[Event] = deque()
        self.clock: Callable[[], int] = now_ms
        #: Longest wait for the socket to take a write (``None``: no limit).
        self.send_timeout = timeout

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        ssl: ssl_module.SSLContext | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        timeout: float = 10.0,
    ) -> SyncBot:
        """Connect and finish the handshake; raises ``HandshakeFailed`` when refused."""
        target = parse_ws_url(url)
        conn = BotConnection(target, headers=headers)
        context = client_tls(target, ssl)
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
        try:
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=target.host)
            bot = cls(conn, sock, timeout)
            bot._flush()
            while True:
                events = bot._read_events(timeout)
                if handshake_outcome(events):
                    bot._events.extend(events[1:])
                    return bot
        except BaseException:
            sock.close()
            raise

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self._sock.settimeout(self.send_timeout)
            self._sock.sendall(data)

    def _read_events(self, timeout: float | None) -> list[Event]:
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(256 * 1024)
        except TimeoutError:
            raise
        except OSError:
            data = b""
        events = self.conn.receive_data(data, self.clock())
        with contextlib.suppress(OSError):
            self._flush()  # answers to WebSocket pings and closes
        return events

    def send_start(self, bot_id: str, **fields: Any) -> None:
        self.conn.send_start(bot_id, **fields)
        self._flush()

    def send_chunk(self, data: bytes, *, final: bool = True) -> None:
        self.conn.send_chunk(data, final=final)
        self._flush()

    def send_ping(self, seq: Any, sent_at_ms: Any | None = None) -> None:
        self.conn.send_ping(seq, self.clock() if sent_at_ms is None else sent_at_ms)
        self._flush()

    def send_end(self, duration_seconds: float) -> None:
        self.conn.send_end(duration_seconds)
        self._flush()

    def send_text(self, text: str) -> None:
        self.conn.send_text(text)
        self._flush()

    def send_ws_ping(self, payload: bytes = b"") -> None:
        self.conn.send_ws_ping(payload)
        self._flush()

    def next_event(self, timeout: float | None = None) -> Event:
        """The next event from the receiver; :class:`BotClosed` once the connection is over.
        Raises ``TimeoutError`` when nothing came within ``timeout`` seconds."""
        while not self._events:
            if self.conn.state is BotState.CLOSED:
                return BotClosed(1006, "connection closed")
            self._events.extend(self._read_events(timeout))
        return self._events.popleft()

    def close(self, code: int = 1000, reason: str = "", timeout: float = 10.0) -> BotClosed:
        """Close handshake; returns the receiver's answer (1006 if it never came)."""
        self.conn.close(code, reason)
        with contextlib.suppress(OSError):
            self._flush()
        try:
            while True:
                event = self.next_event(timeout)
                if isinstance(event, BotClosed):
                    return event
        except TimeoutError:
            return BotClosed(1006, "no close frame from the receiver")
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop the TCP connection at once (a bot that vanishes)."""
        self._sock.close()


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

    server = SyncServer(factory, options)
    server.start(host, port, reuse_port=reuse_port)

    def on_signal(signum: int, frame: object) -> None:
        server._stop_accepting()

    previous = {
        signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        if on_ready is not None:
            on_ready(server.port)
        server.serve_forever()
    finally:
        log.info("shutting down: draining %d connection(s)", server.active_connections)
        try:
            server.shutdown()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
