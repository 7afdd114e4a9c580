"""The bot side: what a MeetStream bot does, for simulators, load generators, checks and tests.

:class:`BotConnection` speaks the same contract as the server connection: bytes in with
``receive_data(data, now_ms)``, bytes out with ``data_to_send()``. The WebSocket masking keys
and the handshake nonce come from wsproto, which draws them from the OS (RFC 6455 requires them
unpredictable); nothing else here is random.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState as WSState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError as WSRemoteProtocolError

from ._errors import LocalProtocolError
from ._events import (
    BotAccepted,
    BotClosed,
    BotRejected,
    Event,
    Headers,
    PongReceived,
    ProtocolWarning,
    WarningKind,
)

__all__ = ["BotConnection", "BotState", "WebSocketURL", "parse_ws_url"]

PROTOCOL_ERROR = 1002
ABNORMAL_CLOSURE = 1006


class BotState(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class WebSocketURL:
    """A parsed ``ws://`` or ``wss://`` URL: where to connect and what to ask for."""

    secure: bool
    host: str
    port: int
    target: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_ws_url(url: str) -> WebSocketURL:
    """Parse a WebSocket URL; raises ``ValueError`` with a clear message when it is not one."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"not a WebSocket URL (ws:// or wss://): {url!r}")
    if not parts.hostname:
        raise ValueError(f"WebSocket URL without a host: {url!r}")
    secure = parts.scheme == "wss"
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError as exc:
        raise ValueError(f"bad port in WebSocket URL {url!r}: {exc}") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return WebSocketURL(secure, parts.hostname, port, target)


class BotConnection:
    """The bot's side of one connection to a receiver.

    The handshake request is queued at construction: connect to ``url.host``/``url.port``
    (with TLS when ``url.secure``), write ``data_to_send()``, then feed every read to
    ``receive_data``. ``send_*`` methods queue frames; they raise :class:`LocalProtocolError`
    unless the connection is ``OPEN``.
    """

    def __init__(self, url: str | WebSocketURL, *, headers: Headers = ()) -> None:
        self.url = url if isinstance(url, WebSocketURL) else parse_ws_url(url)
        self.state = BotState.CONNECTING
        self.bot_id: str | None = None
        #: ``seq -> sent_at_ms`` of pings not yet answered.
        self.outstanding_pings: dict[Any, Any] = {}
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._out = bytearray()
        self._text: list[str] = []
        self._reject: tuple[int, Headers] | None = None
        self._reject_body = bytearray()
        self._out += self._ws.send(
            Request(host=self.url.host_header, target=self.url.target, extra_headers=list(headers))
        )

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    # ------------------------------------------------------------------ sending

    def _require_open(self) -> None:
        if self.state is not BotState.OPEN:
            raise LocalProtocolError(f"cannot send in state {self.state.name}")

    def send_json(self, message: Mapping[str, Any]) -> None:
        try:
            text = json.dumps(message, separators=(",", ":"), allow_nan=False)
        except ValueError as exc:  # NaN or infinity: not JSON, a receiver would refuse it
            raise LocalProtocolError(f"cannot send as JSON: {exc}") from None
        self.send_text(text)

    def send_text(self, text: str, *, final: bool = True) -> None:
        self._require_open()
        self._out += self._ws.send(TextMessage(data=text, message_finished=final))

    def send_start(self, bot_id: str, **fields: Any) -> None:
        """``video_stream_start`` with ``bot_id`` and any other fields (codec, width...)."""
        self.send_json({"type": "video_stream_start", "bot_id": bot_id, **fields})
        self.bot_id = bot_id

    def send_chunk(self, data: bytes, *, final: bool = True) -> None:
        """A binary message, or with ``final=False`` one fragment of it (continue with more
        ``send_chunk`` calls; the one with ``final=True`` ends the message)."""
        self._require_open()
        self._out += self._ws.send(BytesMessage(data=data, message_finished=final))

    def send_ping(self, seq: Any, sent_at_ms: Any) -> None:
        """``video_latency_ping``; the pong comes back as :class:`PongReceived`."""
        message: dict[str, Any] = {
            "type": "video_latency_ping",
            "seq": seq,
            "sent_at_ms": sent_at_ms,
        }
        if self.bot_id is not None:
            message["bot_id"] = self.bot_id
        self.send_json(message)
        self.outstanding_pings[seq] = sent_at_ms

    def send_end(self, duration_seconds: float) -> None:
        message: dict[str, Any] = {"type": "video_stream_end", "duration_seconds": duration_seconds}
        if self.bot_id is not None:
            message["bot_id"] = self.bot_id
        self.send_json(message)

    def send_ws_ping(self, payload: bytes = b"") -> None:
        """A WebSocket-level ping frame (answered by the receiver's WebSocket layer)."""
        self._require_open()
        self._out += self._ws.send(Ping(payload=payload))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the close handshake; :class:`BotClosed` comes when the receiver answers."""
        if self.state is BotState.OPEN:
            self._out += self._ws.send(CloseConnection(code=code, reason=reason))
            self.state = BotState.CLOSING
        elif self.state is BotState.CONNECTING:
            self.state = BotState.CLOSED

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes, now_ms: int) -> list[Event]:
        """Feed bytes read from the socket (``b""`` for EOF); returns the events they make."""
        if self.state is BotState.CLOSED:
            return []
        if not data and self.state is BotState.CONNECTING:
            self.state = BotState.CLOSED
            if self._reject is not None:  # a rejection whose body ran to EOF
                return [self._rejected()]
            return [BotClosed(ABNORMAL_CLOSURE, "connection lost during the handshake")]
        try:
            self._ws.receive_data(data if data else None)
        except (WSRemoteProtocolError, UnicodeError) as exc:  # not HTTP, or a bad 101
            self.state = BotState.CLOSED
            return [BotClosed(PROTOCOL_ERROR, f"bad handshake response: {exc}")]
        events: list[Event] = []
        for ev in self._ws.events():
            if isinstance(ev, AcceptConnection):
                self.state = BotState.OPEN
                events.append(BotAccepted(tuple(ev.extra_headers)))
            elif isinstance(ev, RejectConnection):
                self._reject = (ev.status_code, tuple(ev.headers))
                if not ev.has_body:
                    events.append(self._rejected())
            elif isinstance(ev, RejectData):
                self._reject_body += ev.data
                if ev.body_finished:
                    events.append(self._rejected())
            elif isinstance(ev, TextMessage):
                self._text.append(ev.data)
                if ev.message_finished:
                    text, self._text = "".join(self._text), []
                    events.append(self._on_text(text, now_ms))
            elif isinstance(ev, BytesMessage):
                if ev.message_finished:
                    events.append(
                        ProtocolWarning(WarningKind.UNEXPECTED_MESSAGE, "binary from the receiver")
                    )
            elif isinstance(ev, Ping):
                if self._ws.state is WSState.OPEN:
                    self._out += self._ws.send(ev.response())
            elif isinstance(ev, CloseConnection):
                events.append(self._on_close(ev))
                break
        return events

    def _rejected(self) -> BotRejected:
        assert self._reject is not None
        status, headers = self._reject
        self.state = BotState.CLOSED
        self._reject = None
        return BotRejected(status, headers, bytes(self._reject_body))

    def _on_close(self, ev: CloseConnection) -> BotClosed:
        ws = self._ws
        if ws.state is WSState.REMOTE_CLOSING:
            self._out += ws.send(ev.response())
        elif ws.state is WSState.OPEN:  # a protocol error found by wsproto
            self._out += ws.send(CloseConnection(code=ev.code, reason=(ev.reason or "")[:100]))
        self.state = BotState.CLOSED
        return BotClosed(int(ev.code), ev.reason or "")

    def _on_text(self, text: str, now_ms: int) -> Event:
        try:
            message = json.loads(text)
        except (ValueError, RecursionError) as exc:
            return ProtocolWarning(WarningKind.INVALID_JSON, f"receiver sent non-JSON text: {exc}")
        if not isinstance(message, dict):
            return ProtocolWarning(WarningKind.NOT_AN_OBJECT, "receiver sent a non-object")
        if message.get("type") != "video_latency_pong":
            return ProtocolWarning(
                WarningKind.UNKNOWN_TYPE, f"receiver sent type {message.get('type')!r}"
            )
        seq = message.get("seq")
        sent_at_ms = message.get("sent_at_ms")
        try:
            matched = seq in self.outstanding_pings and self.outstanding_pings[seq] == sent_at_ms
        except TypeError:  # an unhashable seq
            matched = False
        if matched:
            del self.outstanding_pings[seq]
        rtt: float | None = None
        if isinstance(sent_at_ms, (int, float)) and not isinstance(sent_at_ms, bool):
            try:
                rtt = float(now_ms - sent_at_ms)
            except OverflowError:  # not a time any clock could have sent
                rtt = None
        return PongReceived(
            seq=seq,
            sent_at_ms=sent_at_ms,
            server_received_at_ms=message.get("server_received_at_ms"),
            bot_id=message.get("bot_id"),
            round_trip_ms=rtt,
            matched=matched,
            raw=message,
        )
