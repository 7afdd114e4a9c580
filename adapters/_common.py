"""Where the adapters' shared names used to live, kept for the application modules that still
import them from here while the tree settles. New code imports from :mod:`._handler`,
:mod:`._driver`, :mod:`._bots` or :mod:`._system` (or the public :mod:`meetstream_live.adapters`).
"""

from __future__ import annotations

from ._bots import AsyncBotSends, HandshakeFailed, client_tls, handshake_outcome
from ._driver import (
    INLINE_BACKOFF,
    INLINE_STALL,
    READ_SIZE_SHRINK_AFTER,
    READ_SIZE_START,
    ConnectionDriver,
    HandlerCalls,
    ReadSizer,
    Step,
    deliver,
    log,
    media_size,
    mono_ms,
    now_ms,
    observe,
    wall_ms,
)
from ._handler import (
    Backlog,
    ConnectionInfo,
    Handler,
    HandlerFactory,
    HTTPAnswer,
    HTTPHandler,
    ServerOptions,
)
from ._system import JOINED_BYTES_TUNED, tune_allocator, warm_up

__all__ = [
    "INLINE_BACKOFF",
    "INLINE_STALL",
    "JOINED_BYTES_TUNED",
    "READ_SIZE_SHRINK_AFTER",
    "READ_SIZE_START",
    "AsyncBotSends",
    "Backlog",
    "ConnectionDriver",
    "ConnectionInfo",
    "HTTPAnswer",
    "HTTPHandler",
    "Handler",
    "HandlerCalls",
    "HandlerFactory",
    "HandshakeFailed",
    "ReadSizer",
    "ServerOptions",
    "Step",
    "client_tls",
    "deliver",
    "handshake_outcome",
    "log",
    "media_size",
    "mono_ms",
    "now_ms",
    "observe",
    "tune_allocator",
    "wall_ms",
    "warm_up",
]
