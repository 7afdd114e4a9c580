"""Events: what the core tells its caller.

Every event is a small frozen dataclass deriving from :class:`Event`. The server side and the bot
side share the base class; each names its own events below. Events carry plain data only: the
bytes to send in reply are already queued on the connection when an event comes out (see
``data_to_send()``), so an event never needs a reply from the caller except
:class:`HTTPRequest`, which the caller answers with ``ServerConnection.send_response``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Accepted",
    "BotAccepted",
    "BotClosed",
    "BotRejected",
    "CloseCode",
    "DisconnectCause",
    "Disconnected",
    "Event",
    "HTTPRejected",
    "HTTPRequest",
    "LatencyPing",
    "MediaChunk",
    "PongReceived",
    "ProtocolWarning",
    "StreamEnded",
    "StreamStarted",
    "WarningKind",
]

Headers = tuple[tuple[bytes, bytes], ...]


class Event:
    """Base class of every event the core emits."""

    __slots__ = ()


class CloseCode(enum.IntEnum):
    """The WebSocket close codes this library sends or reports (RFC 6455 section 7.4.1).

    An ``IntEnum``: a code compares equal to its number, and a code a peer sends that is not
    listed here is reported as a plain ``int``.
    """

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    ABNORMAL = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012


class DisconnectCause(str, enum.Enum):
    """Why a connection ended, for callers that must not parse reason strings."""

    #: The bot sent a close frame (``code`` is its code).
    REMOTE_CLOSE = "remote_close"
    #: The transport ended without a close handshake (EOF, reset): ``code`` 1006.
    CONNECTION_LOST = "connection_lost"
    #: The bot broke the WebSocket protocol (bad frame, bad UTF-8...): we closed with its code.
    PROTOCOL_ERROR = "protocol_error"
    #: A limit of ``ServerConfig`` was exceeded (1009).
    MESSAGE_TOO_BIG = "message_too_big"
    #: The bot sent nothing for ``idle_timeout_ms``: we closed with 1001.
    IDLE_TIMEOUT = "idle_timeout"
    #: We closed on request of the caller (``ServerConnection.close``); the next two are the
    #: same, with the reason the caller gave. Once we start a close, the cause stays ours,
    #: whether the bot answers, drops the connection or never answers.
    LOCAL_CLOSE = "local_close"
    #: We closed because the server shuts down (1001).
    SHUTDOWN = "shutdown"
    #: We closed because the application's handler failed (1011).
    HANDLER_ERROR = "handler_error"


# ---------------------------------------------------------------- HTTP phase (server side)


@dataclass(frozen=True, slots=True)
class HTTPRequest(Event):
    """A plain HTTP request on one of ``ServerConfig.http_paths`` (``/healthz``, ``/metrics``...).

    The caller must answer it with ``ServerConnection.send_response``; the connection is closed
    after the response (no keep-alive: these are probes, not traffic).
    """

    method: str
    target: str
    path: str
    query: str
    headers: Headers


@dataclass(frozen=True, slots=True)
class HTTPRejected(Event):
    """The core refused the request and queued the HTTP response (400, 401, 404, 405, 408, 426,
    431 or 503). Send ``data_to_send()`` and close the socket."""

    status: int
    reason: str
    path: str | None = None


@dataclass(frozen=True, slots=True)
class Accepted(Event):
    """The WebSocket handshake succeeded; the ``101`` response is queued. ``viewer`` is true
    for an upgrade on one of ``ServerConfig.viewer_paths``: a program or a page that watches
    a stream (the server sends, with ``ServerConnection.send_message``; what it sends is not
    a MeetStream session and is not delivered)."""

    path: str
    query: str
    headers: Headers
    viewer: bool = False


# ---------------------------------------------------------------- MeetStream session (server side)


@dataclass(frozen=True, slots=True)
class StreamStarted(Event):
    """``video_stream_start``: a stream begins. Typed fields are ``None`` when absent or of the
    wrong type (a :class:`ProtocolWarning` says which); ``raw`` keeps the whole message,
    unknown fields included."""

    bot_id: str | None
    codec: str | None = None
    audio_codec: str | None = None
    container: str | None = None
    width: int | None = None
    height: int | None = None
    framerate: float | None = None
    audio_sample_rate: int | None = None
    audio_bitrate: str | None = None
    speaker_id: str | None = None
    speaker_name: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class MediaChunk(Event):
    """Bytes of the fMP4 stream, in wire order, as they arrive (not aligned to messages).

    ``offset`` is the position of ``data[0]`` in the current stream: chunks of one stream are
    contiguous from 0. Chunks that come out before any :class:`StreamStarted` (bytes received on
    a connection that never sent ``video_stream_start``) are delivered just before
    :class:`Disconnected`, so that nothing received is lost.
    """

    data: bytes
    offset: int


@dataclass(frozen=True, slots=True)
class LatencyPing(Event):
    """``video_latency_ping``. The matching ``video_latency_pong`` is already queued, unless
    the connection is closing (RFC 6455 allows no data frame after a close frame)."""

    seq: int | None
    sent_at_ms: int | float | None
    received_at_ms: int
    bot_id: str | None


@dataclass(frozen=True, slots=True)
class StreamEnded(Event):
    """``video_stream_end``: the bot ended the stream cleanly."""

    duration_seconds: float | None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


class WarningKind(str, enum.Enum):
    """Why a :class:`ProtocolWarning` was emitted. The stream goes on in every case."""

    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_FIELD = "missing_field"
    BAD_FIELD = "bad_field"
    UNEXPECTED_MESSAGE = "unexpected_message"
    BINARY_OUTSIDE_STREAM = "binary_outside_stream"


@dataclass(frozen=True, slots=True)
class ProtocolWarning(Event):
    """Tolerable bad input: logged and counted, never fatal."""

    kind: WarningKind
    message: str


@dataclass(frozen=True, slots=True)
class Disconnected(Event):
    """The WebSocket connection is over; always the last event of an accepted connection.

    ``code`` is the close code: the bot's when it closed, ours when we did (1009, 1001...),
    1006 when the transport ended without a close handshake. ``clean``
    is true when no stream was left open: every started stream ended with
    ``video_stream_end`` and no bytes were left without a stream. ``cause`` says why, in a
    form made for programs (``reason`` is for people).
    """

    code: int
    reason: str
    clean: bool
    cause: DisconnectCause = field(default=DisconnectCause.CONNECTION_LOST, compare=False)


# ---------------------------------------------------------------- bot (client) side


@dataclass(frozen=True, slots=True)
class BotAccepted(Event):
    """The receiver accepted the WebSocket handshake."""

    headers: Headers


@dataclass(frozen=True, slots=True)
class BotRejected(Event):
    """The receiver answered the handshake with an HTTP status other than 101."""

    status: int
    headers: Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class PongReceived(Event):
    """A ``video_latency_pong``. ``matched`` is true when it answers a ping this connection sent
    (same ``seq`` and ``sent_at_ms``) that had not been answered yet; ``round_trip_ms`` is
    ``now_ms - sent_at_ms`` when ``sent_at_ms`` is a number."""

    seq: Any
    sent_at_ms: Any
    server_received_at_ms: Any
    bot_id: Any
    round_trip_ms: float | None
    matched: bool
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class BotClosed(Event):
    """The bot's WebSocket connection is over (1006 when it ended without a close frame)."""

    code: int
    reason: str
