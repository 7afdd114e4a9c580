"""meetstream-live: receive MeetStream's live meeting video over WebSocket.

This package is the sans-IO core: no sockets, threads, event loops, clocks, files or
randomness. Bytes and the current time go in; events and bytes to send come out. The I/O
lives in the ``adapters`` subpackage, which imports this one (never the reverse).

* :class:`ServerConnection` — the receiver's side of one TCP connection (HTTP upgrade with h11,
  WebSocket with wsproto, then the MeetStream :class:`Session`).
* :class:`Session` — the message layer alone (for stacks that do their own WebSocket framing).
* :class:`BotConnection` — the MeetStream bot's side, for simulators and tests.
* :mod:`meetstream_live.fmp4` — the fragmented MP4 library: :class:`Fmp4Scanner`, an
  incremental scanner of the byte stream, and its events (re-exported here as well).
* :class:`CloseCode` and :class:`DisconnectCause` — close codes, and why a connection ended.
"""

from __future__ import annotations

from ._client import BotConnection, BotState, WebSocketURL, parse_ws_url
from ._errors import LocalProtocolError, MeetStreamError
from ._events import (
    Accepted,
    BotAccepted,
    BotClosed,
    BotRejected,
    CloseCode,
    DisconnectCause,
    Disconnected,
    Event,
    HTTPRejected,
    HTTPRequest,
    LatencyPing,
    MediaChunk,
    PongReceived,
    ProtocolWarning,
    StreamEnded,
    StreamStarted,
    WarningKind,
)
from ._mask import unmask_backend
from ._server import (
    ConnectionState,
    Reject,
    Route,
    ServerConfig,
    ServerConnection,
    route_request,
)
from ._session import TRANSITIONS, CloseRequest, Session, SessionInput, SessionState
from .fmp4 import (
    BoxSeen,
    Fmp4Event,
    Fmp4Scanner,
    FragmentComplete,
    InitSegment,
    Malformed,
    TrackInfo,
    TrackRun,
)

__version__ = "0.1.0"

__all__ = [
    "TRANSITIONS",
    "Accepted",
    "BotAccepted",
    "BotClosed",
    "BotConnection",
    "BotRejected",
    "BotState",
    "BoxSeen",
    "CloseCode",
    "CloseRequest",
    "ConnectionState",
    "DisconnectCause",
    "Disconnected",
    "Event",
    "Fmp4Event",
    "Fmp4Scanner",
    "FragmentComplete",
    "HTTPRejected",
    "HTTPRequest",
    "InitSegment",
    "LatencyPing",
    "LocalProtocolError",
    "Malformed",
    "MediaChunk",
    "MeetStreamError",
    "PongReceived",
    "ProtocolWarning",
    "Reject",
    "Route",
    "ServerConfig",
    "ServerConnection",
    "Session",
    "SessionInput",
    "SessionState",
    "StreamEnded",
    "StreamStarted",
    "TrackInfo",
    "TrackRun",
    "WarningKind",
    "WebSocketURL",
    "__version__",
    "parse_ws_url",
    "route_request",
    "unmask_backend",
]
