"""The server side: one TCP connection from a MeetStream bot (or a probe), bytes in, bytes out.

Three machines in a row, each handing its leftover bytes to the next: h11 parses the HTTP
request; wsproto takes over on a WebSocket upgrade; :class:`~meetstream_live.Session` reads the
messages. :class:`ServerConnection` owns the glue, the HTTP answers and the deadlines.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hmac
import http
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import h11
from wsproto import ConnectionType
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState as WSState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    TextMessage,
)
from wsproto.events import Request as WSRequest
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError as WSRemoteProtocolError

from ._errors import LocalProtocolError
from ._events import (
    Accepted,
    CloseCode,
    DisconnectCause,
    Event,
    Headers,
    HTTPRejected,
    HTTPRequest,
)
from ._frames import RUN_BYTES, UNMASK_MODES, FastLane, fast_lane
from ._session import (
    DEFAULT_MAX_EARLY_BYTES,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_TEXT_SIZE,
    Session,
    SessionState,
)

__all__ = [
    "ConnectionState",
    "Reject",
    "Route",
    "ServerConfig",
    "ServerConnection",
    "route_request",
]

class ConnectionState(enum.Enum):
    """Where a connection is. ``CLOSED`` means: send ``data_to_send()``, then close the socket."""

    HANDSHAKE = "handshake"
    HTTP_RESPONSE = "http_response"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True)
class ServerConfig:
    """Everything a server connection may be told. Limits are in bytes, times in milliseconds."""

    #: The WebSocket path (``"/"``, ``"/video"``...). ``None`` accepts the upgrade on any path.
    path: str | None = None
    #: When set, upgrades need ``?token=...`` or ``Authorization: Bearer ...`` with this value.
    token: str | None = None
    #: Paths where a WebSocket upgrade is a *viewer* (``Accepted.viewer``): patterns in which
    #: ``*`` stands for one path segment, e.g. ``"/live/*/ws"``. Not subject to ``path``.
    viewer_paths: tuple[str, ...] = ()
    #: The token viewers must show (``None``: the same as :attr:`token`).
    viewer_token: str | None = None
    #: Paths served as plain HTTP: each request on them comes out as an :class:`HTTPRequest`.
    http_paths: frozenset[str] = field(default_factory=frozenset)
    #: Path prefixes served as plain HTTP likewise (``"/live/"``: every path below it).
    http_prefixes: tuple[str, ...] = ()
    #: Largest HTTP request head; larger ones get 431.
    max_request_head: int = 16 * 1024
    #: Binary data held while waiting for ``video_stream_start``; over it, close 1009.
    max_early_bytes: int = DEFAULT_MAX_EARLY_BYTES
    #: Largest text message; over it, close 1009.
    max_text_size: int = DEFAULT_MAX_TEXT_SIZE
    #: Largest binary message (binary is streamed: this bounds nothing in memory, it refuses
    #: what no bot sends); over it, the bytes up to it are delivered, then close 1009.
    max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE
    #: Time allowed from connect to a complete request head; then 408 and close.
    handshake_timeout_ms: int = 10_000
    #: Time without any byte from the bot before closing with 1001; ``None`` for never.
    idle_timeout_ms: int | None = 300_000
    #: Time allowed for the bot to answer our close frame.
    close_timeout_ms: int = 10_000
    #: Whole binary messages that arrive back to back in one read come out as one
    #: :class:`MediaChunk` of up to this many bytes (0: one chunk per message). The default
    #: keeps each chunk below glibc's ``mmap`` threshold (128 KiB), which costs page faults
    #: per big allocation; with an allocator tuned for big blocks (``serve`` does it, see
    #: the adapters' ``tune_allocator``) 1 MiB makes one chunk per read, faster.
    max_joined_bytes: int = RUN_BYTES
    #: How binary payloads are unmasked: ``"auto"`` (numpy when it imports, else pure
    #: Python), ``"numpy"``, ``"python"``, or ``"off"`` for wsproto's own path (no fast lane).
    unmask: str = "auto"

    def __post_init__(self) -> None:
        if self.unmask not in UNMASK_MODES:
            raise ValueError(f"unmask must be one of {sorted(UNMASK_MODES)}, not {self.unmask!r}")


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes: to the WebSocket session, or (``http=True``) to the caller."""

    path: str
    query: str
    http: bool = False
    #: A viewer upgrade (see ``ServerConfig.viewer_paths``).
    viewer: bool = False


@dataclass(frozen=True, slots=True)
class Reject:
    """The request is refused with this HTTP status.

    Every transport sends the same answer: ``body`` (a fixed phrase: request bytes are never
    reflected; ``reason`` is for the logs) as ``text/plain; charset=utf-8``, with
    ``response_headers``.
    """

    status: int
    reason: str
    path: str | None = None
    headers: Headers = ()

    @property
    def body(self) -> bytes:
        return f"{self.status} {_phrase(self.status)}\n".encode("ascii")

    @property
    def response_headers(self) -> Headers:
        return ((b"X-Content-Type-Options", b"nosniff"), *self.headers)


def _authorized(token: str, query: str, headers: Headers) -> bool:
    expected = token.encode("utf-8")
    offered: list[bytes] = [v.encode("utf-8") for v in parse_qs(query).get("token", [])]
    for name, value in headers:
        if name.lower() == b"authorization" and value[:7].lower() == b"bearer ":
            offered.append(value[7:].strip())
    # Compare every candidate, each in constant time, so timing tells nothing.
    results = [hmac.compare_digest(candidate, expected) for candidate in offered]
    return any(results)


def _valid_key(headers: Headers) -> bool:
    """``Sec-WebSocket-Key``, when present, must be 16 bytes in base64 (RFC 6455 4.1); a missing
    one is the handshake validator's to refuse."""
    for name, value in headers:
        if name == b"sec-websocket-key":
            try:
                return len(base64.b64decode(value.strip(), validate=True)) == 16
            except (ValueError, binascii.Error):
                return False
    return True


def viewer_path(patterns: tuple[str, ...], path: str) -> bool:
    """Whether ``path`` matches one of ``patterns`` (``*``: exactly one non-empty segment)."""
    parts = path.split("/")
    for pattern in patterns:
        expected = pattern.split("/")
        if len(expected) == len(parts) and all(
            want == got or (want == "*" and got) for want, got in zip(expected, parts, strict=True)
        ):
            return True
    return False


def route_request(
    config: ServerConfig,
    method: str,
    target: str,
    headers: Headers,
    *,
    overloaded: bool = False,
    head_size: int | None = None,
) -> Route | Reject:
    """Decide what an HTTP request gets, before any WebSocket handshake validation.

    Shared by :class:`ServerConnection` and by stacks that parse HTTP themselves (ASGI), so that
    every transport answers 400, 401, 404, 405, 426, 431 and 503 the same way. Header names
    must be lower-case, as h11 and ASGI give them. ``head_size``: the request head's size, for
    stacks that do not bound it themselves (431 over ``config.max_request_head``).
    """
    if head_size is not None and head_size > config.max_request_head:
        return Reject(431, f"request head over {config.max_request_head} bytes")
    try:
        parts = urlsplit(target)
    except ValueError as exc:
        return Reject(400, f"bad request target: {exc}")
    path = parts.path or "/"
    upgrade = any(name == b"upgrade" and b"websocket" in value.lower() for name, value in headers)
    if not upgrade and (path in config.http_paths or path.startswith(config.http_prefixes)):
        return Route(path, parts.query, http=True)
    viewer = bool(config.viewer_paths) and viewer_path(config.viewer_paths, path)
    if viewer:
        return _route_viewer(config, method, path, parts.query, headers, upgrade, overloaded)
    if config.path is not None and path != config.path:
        return Reject(404, f"no WebSocket endpoint at {path}", path)
    if method != "GET":
        return Reject(405, f"method {method} not allowed", path, ((b"Allow", b"GET"),))
    if not upgrade:
        return Reject(
            426,
            "this is a WebSocket endpoint: send Upgrade: websocket",
            path,
            ((b"Upgrade", b"websocket"),),
        )
    if not _valid_key(headers):
        return Reject(400, "bad Sec-WebSocket-Key: not 16 bytes in base64", path)
    if config.token is not None and not _authorized(config.token, parts.query, headers):
        return Reject(401, "missing or wrong token", path, ((b"WWW-Authenticate", b"Bearer"),))
    if overloaded:
        return Reject(
            503, "too many connections, try again later", path, ((b"Retry-After", b"5"),)
        )
    return Route(path, parts.query)


def _route_viewer(
    config: ServerConfig,
    method: str,
    path: str,
    query: str,
    headers: Headers,
    upgrade: bool,
    overloaded: bool,
) -> Route | Reject:
    if method != "GET":
        return Reject(405, f"method {method} not allowed", path, ((b"Allow", b"GET"),))
    if not upgrade:
        return Reject(
            426, "this is a WebSocket endpoint: send Upgrade: websocket", path,
            ((b"Upgrade", b"websocket"),),
        )
    if not _valid_key(headers):
        return Reject(400, "bad Sec-WebSocket-Key: not 16 bytes in base64", path)
    token = config.viewer_token if config.viewer_token is not None else config.token
    if token is not None and not _authorized(token, query, headers):
        return Reject(401, "missing or wrong token", path, ((b"WWW-Authenticate", b"Bearer"),))
    if overloaded:
        return Reject(
            503, "too many connections, try again later", path, ((b"Retry-After", b"5"),)
        )
    return Route(path, query, viewer=True)


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _response(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    head = [f"HTTP/1.1 {status} {_phrase(status)}".encode("ascii")]
    head += [name + b": " + value for name, value in headers]
    head += [b"Content-Length: " + str(len(body)).encode("ascii"), b"Connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class ServerConnection:
    """The receiver's side of one TCP connection.

    Drive it like this (the whole contract):

    1. ``events = conn.receive_data(data, now_ms, wall_ms)`` for every read; ``b""`` means
       EOF (the only way to say it).
    2. After **every** call that can send (``receive_data``, ``handle_timeout``, ``close``,
       ``send_response``), write ``conn.data_to_send()`` to the socket, before handling the
       events: pongs must not wait behind slow work.
    3. Call ``handle_timeout(now_ms)`` when ``next_deadline()`` (a ``now_ms`` value) has passed.
    4. When ``conn.state`` is ``CLOSED``, write what is left and close the socket.

    Two clocks, in milliseconds: ``now_ms`` drives the deadlines and should be monotonic (a
    wall clock stepped by NTP would fire or stall timeouts); ``wall_ms``, the Unix time,
    stamps ``server_received_at_ms`` in pongs (``None``: ``now_ms`` is used, for callers whose
    ``now_ms`` is the Unix time). Remote misbehaviour never raises: it comes out as events.
    """

    def __init__(
        self, config: ServerConfig | None = None, *, now_ms: int, overloaded: bool = False
    ) -> None:
        self.config = config or ServerConfig()
        #: When true, upgrades are answered 503 (the server is at its connection limit);
        #: plain HTTP paths are still served.
        self.overloaded = overloaded
        self.state = ConnectionState.HANDSHAKE
        self.session = Session(
            max_early_bytes=self.config.max_early_bytes,
            max_text_size=self.config.max_text_size,
            max_message_size=self.config.max_message_size,
        )
        self._h11 = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.config.max_request_head
        )
        self._ws: WSConnection | None = None
        self._lane: FastLane | None = None
        self._out = bytearray()
        self._started_ms = now_ms
        self._last_activity_ms = now_ms
        self._closing_since_ms = now_ms
        self._wall_ms = now_ms  # the Unix time of the current call, for pong stamps
        self._close_code: tuple[int, str] | None = None
        self._close_cause = DisconnectCause.LOCAL_CLOSE
        self._discard_input = False
        self._http_bytes = 0
        #: An upgrade on one of ``ServerConfig.viewer_paths`` (see ``Accepted.viewer``).
        self.viewer = False

    # ------------------------------------------------------------------ public API

    @property
    def session_state(self) -> SessionState:
        return self.session.state

    def data_to_send(self) -> bytes:
        """Bytes to write to the socket, in order; clears the buffer."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(
        self, data: bytes | bytearray | memoryview, now_ms: int, wall_ms: int | None = None
    ) -> list[Event]:
        """Feed bytes read from the socket (``b""`` for EOF) and return the events they make.

        ``data`` may be the caller's own read buffer (a ``bytearray`` or a ``memoryview`` of
        one, as ``recv_into`` fills it): it is read in place, and nothing keeps a reference to
        it after the call, so the buffer can be reused for the next read at once. ``now_ms``
        and ``wall_ms``: see the class.
        """
        self._last_activity_ms = now_ms
        self._wall_ms = now_ms if wall_ms is None else wall_ms
        if self.state is ConnectionState.HANDSHAKE:
            return self._receive_http(data, now_ms)
        if self.state in (ConnectionState.OPEN, ConnectionState.CLOSING):
            return self._receive_ws(data, now_ms)
        # HTTP_RESPONSE: the request is read, the rest is of no interest; CLOSED: ignored.
        return []

    def send_response(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str = "text/plain; charset=utf-8",
        headers: Headers = (),
    ) -> None:
        """Answer the pending :class:`HTTPRequest`; the connection is then ``CLOSED``."""
        if self.state is not ConnectionState.HTTP_RESPONSE:
            raise LocalProtocolError(f"no HTTP request to answer in state {self.state.name}")
        all_headers = [(b"Content-Type", content_type.encode("latin-1")), *headers]
        self._out += _response(status, all_headers, body)
        self.state = ConnectionState.CLOSED

    def close(
        self,
        code: int = CloseCode.NORMAL,
        reason: str = "",
        *,
        now_ms: int,
        cause: DisconnectCause = DisconnectCause.LOCAL_CLOSE,
    ) -> list[Event]:
        """Close from our side (1001 on shutdown). Before the upgrade the socket just closes.

        Media that arrives until the bot answers our close frame is still delivered; the
        final :class:`Disconnected` has ``cause`` (see :class:`DisconnectCause`).
        """
        if self.state is ConnectionState.OPEN:
            self._start_close(code, reason, now_ms, cause)
        elif self.state in (ConnectionState.HANDSHAKE, ConnectionState.HTTP_RESPONSE):
            self.state = ConnectionState.CLOSED
        return []

    def send_message(self, message: bytes | str) -> bool:
        """Queue a WebSocket message to the peer (binary for ``bytes``, text for ``str``):
        what a viewer connection is for. False (nothing queued) once the connection is not
        open any more; ``LocalProtocolError`` before the upgrade."""
        if self.state in (ConnectionState.CLOSING, ConnectionState.CLOSED):
            return False
        ws = self._ws
        if ws is None or self.state is not ConnectionState.OPEN:
            raise LocalProtocolError(f"no WebSocket to send on in state {self.state.name}")
        if isinstance(message, str):
            self._out += ws.send(TextMessage(data=message))
        else:
            self._out += ws.send(BytesMessage(data=message))
        return True

    def keep_alive(self, now_ms: int) -> None:
        """Restart the idle timer without data: call it when reading resumes after the caller
        stopped reading on purpose (backpressure), so the pause is not taken for the bot's."""
        self._last_activity_ms = max(self._last_activity_ms, now_ms)

    def next_deadline(self) -> int | None:
        """When ``handle_timeout`` must be called next (a ``now_ms`` value), or ``None``."""
        if self.state is ConnectionState.HANDSHAKE:
            return self._started_ms + self.config.handshake_timeout_ms
        if (
            self.state is ConnectionState.OPEN
            and self.config.idle_timeout_ms is not None
            and not self.viewer  # viewers only listen: their silence is normal
        ):
            return self._last_activity_ms + self.config.idle_timeout_ms
        if self.state is ConnectionState.CLOSING:
            return self._closing_since_ms + self.config.close_timeout_ms
        return None

    def handle_timeout(self, now_ms: int) -> list[Event]:
        """Act on an expired deadline (a no-op when none has expired)."""
        deadline = self.next_deadline()
        if deadline is None or now_ms < deadline:
            return []
        if self.state is ConnectionState.HANDSHAKE:
            return self._reject(408, "no complete request before the handshake timeout")
        if self.state is ConnectionState.OPEN:
            self._start_close(
                CloseCode.GOING_AWAY, "idle timeout", now_ms, DisconnectCause.IDLE_TIMEOUT
            )
            return []
        # CLOSING: the bot never answered our close frame.
        self.state = ConnectionState.CLOSED
        return self.session.connection_lost(
            CloseCode.ABNORMAL, "close handshake timed out", self._close_cause
        )

    # ------------------------------------------------------------------ HTTP phase

    def _reject(
        self,
        status: int,
        reason: str,
        path: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> list[Event]:
        refusal = Reject(status, reason, path, tuple(headers or ()))
        all_headers = [(b"Content-Type", b"text/plain; charset=utf-8"), *refusal.response_headers]
        self._out += _response(status, all_headers, refusal.body)
        self.state = ConnectionState.CLOSED
        return [HTTPRejected(status, reason, path)]

    def _receive_http(self, data: bytes | bytearray | memoryview, now_ms: int) -> list[Event]:
        self._http_bytes += len(data)
        try:
            # h11 and wsproto append what they get to a bytearray (annotated ``bytes``): a
            # bytes-like object is copied there, never kept.
            self._h11.receive_data(data)  # type: ignore[arg-type]
            event = self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            return self._reject(exc.error_status_hint, f"bad HTTP request: {exc}")
        if event is h11.NEED_DATA:
            return []
        if not isinstance(event, h11.Request):  # ConnectionClosed: EOF before a request
            self.state = ConnectionState.CLOSED
            return []
        # h11 bounds an incomplete head only; a whole one that came in one read is measured
        # here, in raw bytes as received, so the answer does not depend on the reads.
        head = self._http_bytes - len(self._h11.trailing_data[0])
        if head > self.config.max_request_head:
            return self._reject(431, f"request head over {self.config.max_request_head} bytes")
        return self._route(event, now_ms)

    def _route(self, request: h11.Request, now_ms: int) -> list[Event]:
        target = request.target.decode("ascii", "replace")
        headers: Headers = tuple((bytes(k), bytes(v)) for k, v in request.headers)
        method = request.method.decode("ascii", "replace")
        route = route_request(self.config, method, target, headers, overloaded=self.overloaded)
        if isinstance(route, Reject):
            return self._reject(route.status, route.reason, route.path, list(route.headers))
        if route.http:
            self.state = ConnectionState.HTTP_RESPONSE
            return [HTTPRequest(method, target, route.path, route.query, headers)]
        self.viewer = route.viewer
        return self._upgrade(request, route.path, route.query, headers, now_ms)

    def _upgrade(
        self, request: h11.Request, path: str, query: str, headers: Headers, now_ms: int
    ) -> list[Event]:
        if request.http_version != b"1.1":
            return self._reject(400, "a WebSocket upgrade needs HTTP/1.1", path)
        handshake = H11Handshake(ConnectionType.SERVER)
        try:
            handshake.initiate_upgrade_connection(list(request.headers), request.target)
            ws_request = next(handshake.events())
        except (UnicodeError, h11.LocalProtocolError) as exc:  # wsproto decodes and rebuilds
            return self._reject(400, f"bad WebSocket handshake: undecodable header ({exc})", path)
        except WSRemoteProtocolError as exc:
            hint = exc.event_hint
            status = hint.status_code if isinstance(hint, RejectConnection) else 400
            hint_headers = list(hint.headers) if isinstance(hint, RejectConnection) else []
            return self._reject(status, f"bad WebSocket handshake: {exc}", path, hint_headers)
        assert isinstance(ws_request, WSRequest)
        self._out += handshake.send(AcceptConnection())
        ws = handshake.connection
        assert ws is not None
        self._ws = ws
        config = self.config
        if not self.viewer:  # a viewer sends nothing worth a fast lane
            self._lane = fast_lane(
                ws,
                config.unmask,
                run_limit=config.max_message_size,
                run_bytes=config.max_joined_bytes,
            )
        else:
            self._discard_input = True  # a viewer's messages are read and dropped
        self.state = ConnectionState.OPEN
        events: list[Event] = [Accepted(path, query, headers, self.viewer)]
        trailing, _closed = self._h11.trailing_data
        if trailing:
            events += self._receive_ws(bytes(trailing), now_ms)
        return events

    # ------------------------------------------------------------------ WebSocket phase

    def _receive_ws(self, data: bytes | bytearray | memoryview, now_ms: int) -> list[Event]:
        ws = self._ws
        assert ws is not None
        events: list[Event] = []
        lane = self._lane
        if lane is None or not data:
            ws.receive_data(data if data else None)  # type: ignore[arg-type]  # as h11 above
            self._drain(ws, events, now_ms)
            return events
        # The fast lane (see _frames): binary payloads come straight from it, every other frame
        # goes through wsproto, drained at each None, in wire order.
        session = self.session
        for payload in lane.feed(data):
            if payload is None:
                if self._drain(ws, events, now_ms):
                    break
                continue
            if lane.whole_messages:
                events += session.receive_whole_messages(payload)
            else:
                events += session.receive_binary(payload, finished=lane.message_ended)
            if session.close_request is not None:
                self._close_requested(now_ms)
        return events

    def _drain(self, ws: WSConnection, events: list[Event], now_ms: int) -> bool:
        """Handle wsproto's pending events; true once the connection is closed."""
        session = self.session
        for ev in ws.events():
            if isinstance(ev, BytesMessage):
                if not self._discard_input:
                    data = ev.data if isinstance(ev.data, bytes) else bytes(ev.data)
                    events += session.receive_binary(data, finished=ev.message_finished)
            elif isinstance(ev, TextMessage):
                if not self._discard_input:
                    events += session.receive_text(
                        ev.data, self._wall_ms, finished=ev.message_finished
                    )
                    self._send_replies(ws)
            elif isinstance(ev, Ping):
                if ws.state is WSState.OPEN:
                    self._out += ws.send(ev.response())
            elif isinstance(ev, CloseConnection):
                events += self._on_close(ws, ev)
                return True
            # Pong frames need nothing.
            if session.close_request is not None:
                self._close_requested(now_ms)
        return False

    def _close_requested(self, now_ms: int) -> None:
        """The session asked to close (a policy limit): close, and read no more input."""
        request = self.session.close_request
        if request is not None and self.state is ConnectionState.OPEN:
            self._discard_input = True
            if self._lane is not None:
                self._lane.discard = True
            self._start_close(request.code, request.reason, now_ms, request.cause)

    def _send_replies(self, ws: WSConnection) -> None:
        for text in self.session.messages_to_send():
            if ws.state is WSState.OPEN:
                self._out += ws.send(TextMessage(data=text))

    def _on_close(self, ws: WSConnection, ev: CloseConnection) -> list[Event]:
        code, reason = ev.code, ev.reason or ""
        if self._close_code is not None:
            cause = self._close_cause  # we closed first: the cause stays ours
        elif ws.state is WSState.REMOTE_CLOSING:
            cause = DisconnectCause.REMOTE_CLOSE
        elif ws.state is not WSState.CLOSED:
            cause = DisconnectCause.PROTOCOL_ERROR
        else:
            cause = DisconnectCause.CONNECTION_LOST
        if ws.state is WSState.REMOTE_CLOSING:
            # The bot closed: answer with the same code, and we are done.
            self._out += ws.send(ev.response())
        elif ws.state is not WSState.CLOSED:
            # wsproto found a protocol error (bad frame, bad UTF-8...): send the close frame
            # with its code and drop the connection without waiting for an answer.
            if ws.state is WSState.OPEN:
                self._out += ws.send(CloseConnection(code=code, reason=reason[:100]))
        elif self._close_code is not None and code != CloseCode.ABNORMAL:
            code, reason = self._close_code  # the bot answered our close: report why we closed
        # Otherwise the transport ended (1006).
        self.state = ConnectionState.CLOSED
        return self.session.connection_lost(_code(code), reason, cause)

    def _start_close(
        self, code: int, reason: str, now_ms: int, cause: DisconnectCause
    ) -> None:
        ws = self._ws
        assert ws is not None
        self._out += ws.send(CloseConnection(code=code, reason=reason))
        self._close_code = (code, reason)
        self._close_cause = cause
        self._closing_since_ms = now_ms
        self.state = ConnectionState.CLOSING


def _code(code: int) -> int:
    """A close code as a :class:`CloseCode` when it is one of ours, else the plain number."""
    try:
        return CloseCode(code)
    except ValueError:
        return int(code)

