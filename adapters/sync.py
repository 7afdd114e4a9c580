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
import errno
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

from ._common import (
    GOING_AWAY,
    ConnectionDriver,
    HandlerFactory,
    ReadSizer,
    ServerOptions,
    Step,
    client_tls,
    deliver,
    handshake_outcome,
    log,
    now_ms,
    warm_up,
)

__all__ = ["SyncBot", "SyncServer", "run", "serve"]

#: accept(2) errors that mean "out of resources for now": log, wait a little, go on.
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_RETRY_DELAY = 0.1

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


class _Wake(enum.Enum):
    READY = "ready"
    TIMEOUT = "timeout"
    CLOSE = "close"  # a close was asked for: by the server (shutdown) or by the handler


class _Connection:
    """One accepted socket, driven by its own thread (:meth:`run`); nothing else touches it."""

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
        #: The close asked for (code, reason): by the server (shutdown) or the handler. The
        #: first request wins; set from any thread under ``_lock``.
        self._close_request: tuple[int, str] | None = None
        self._close_sent = False
        self._lock = threading.Lock()
        #: Wakes this connection's thread for a handler's close request (made on accept).
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._wake_tried = False
        self._broken = False  # a write failed: the connection is lost
        self._sizer = ReadSizer(self.options.read_size)  # bytes asked per recv()

    # ------------------------------------------------------------------ thread body

    def run(self) -> None:
        try:
            selector = self._selector = selectors.DefaultSelector()
            driver = self.driver = ConnectionDriver(
                self.options,
                self.server.factory,
                peer=self.peer,
                overloaded=self.overloaded,
                request_close=self.request_close,
            )
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
                if step.events and driver.handler is not None:
                    deliver(driver.handler, step.events)
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

    # ------------------------------------------------------------------ close requests

    def request_close(self, code: int, reason: str) -> None:
        """``ConnectionInfo.close``, from any thread: the connection thread sends the close
        (the first request wins; nothing happens once the connection is closed)."""
        with self._lock:
            if self._close_request is None:
                self._close_request = (code, reason)
            wake = self._wake_w
            if wake is not None:  # not blocking, under the lock: it is never closed meanwhile
                with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
                    wake.send(b"\0")

    def _open_wake(self) -> None:
        """Once the upgrade is accepted (the handler exists): the wake-up socket pair."""
        selector = self._selector
        assert selector is not None
        self._wake_tried = True
        try:
            wake_r, wake_w = socket.socketpair()
        except OSError as exc:  # out of descriptors: a request is seen at the next read
            log.warning("%s: no wake-up socket pair for close requests: %s", self.peer, exc)
            return
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        selector.register(wake_r, _READ)
        with self._lock:
            self._wake_r, self._wake_w = wake_r, wake_w

    def _read_loop(self, driver: ConnectionDriver) -> None:
        while not driver.closed:
            if not self._wake_tried and driver.accepted:
                self._open_wake()
            request = self._close_request
            if request is not None and not self._close_sent:
                self._close_sent = True
                self._process(driver, driver.close(*request))
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
            if woken is _Wake.CLOSE:
                return None  # the loop sends the close
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
            assert driver.handler is not None
            error = deliver(driver.handler, step.events)
            if error is not None and not driver.handler_failed:
                self._process(driver, driver.handler_error(error))
        if self._broken and not driver.closed:
            self._process(driver, driver.receive(b""))

    # ------------------------------------------------------------------ socket plumbing

    def _wait(self, events: int, timeout: float | None) -> _Wake:
        """Wait until the socket is ready for ``events``, ``timeout`` passes or a close is asked
        for: by the server (which records a 1001 request and stops watching the server's
        flag) or by the handler (its wake-up byte is read)."""
        selector = self._selector
        assert selector is not None
        selector.modify(self.sock, events)
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
                with self._lock:
                    if self._close_request is None:
                        self._close_request = (GOING_AWAY, "server shutting down")
            woken = _Wake.CLOSE
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
        self._connections: dict[_Connection, threading.Thread] = {}
        self._changed = threading.Condition()
        self._accepting = True
        self._is_shut_down = False
        # A byte in _stop stops the accept loop; a byte in _close (never read: it stays
        # readable) asks every connection thread to close with 1001.
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
        with self._changed:
            return len(self._connections)

    def start(
        self, host: str | None = "127.0.0.1", port: int = 9876, *, backlog: int = 128
    ) -> None:
        """Bind and listen (``port=0`` picks a free port; see :attr:`port`). ``host=None``
        listens on every interface (IPv6 and IPv4 where the system can)."""
        warm_up("sync")
        if host is None and socket.has_dualstack_ipv6():
            sock = socket.create_server(
                ("", port), family=socket.AF_INET6, backlog=backlog, dualstack_ipv6=True
            )
        elif host is None:
            sock = socket.create_server(("", port), backlog=backlog)
        else:
            family, _type, _proto, _name, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.create_server(address[:2], family=family, backlog=backlog)
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
        drain = self.options.drain_timeout if drain_timeout is None else drain_timeout
        deadline = time.monotonic() + drain
        with self._changed:
            while self._connections and (remaining := deadline - time.monotonic()) > 0:
                self._changed.wait(remaining)
            remaining_count = len(self._connections)
        if remaining_count:
            log.info("closing %d connection(s) with 1001", remaining_count)
        with contextlib.suppress(OSError):
            self._close_w.send(b"\0")  # every connection thread sees it and closes
        with self._changed:
            while self._connections:
                self._changed.wait()
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
            if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                raise
            log.error("accept failed (%s); retrying in %ss", exc, _ACCEPT_RETRY_DELAY)
            time.sleep(_ACCEPT_RETRY_DELAY)
            return
        with self._changed:
            overloaded = len(self._connections) >= self.options.max_connections
            conn = _Connection(self, sock, str(address), overloaded)
            thread = threading.Thread(
                target=conn.run, name=f"meetstream-live {address}", daemon=True
            )
            self._connections[conn] = thread
        try:
            thread.start()
        except RuntimeError:  # can't start new thread
            log.exception("no thread for the connection from %s", address)
            sock.close()
            self._remove(conn)

    def _remove(self, conn: _Connection) -> None:
        with self._changed:
            self._connections.pop(conn, None)
            self._changed.notify_all()


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
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully (blocking; main thread only).

    ``on_ready`` is called with the bound port once the server accepts connections.
    """
    import signal

    server = SyncServer(factory, options)
    server.start(host, port)

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
