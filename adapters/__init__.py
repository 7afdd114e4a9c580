"""Drivers of the sans-IO core over real I/O, one module per stack.

* :mod:`meetstream_live.adapters.asyncio` — asyncio streams (server and bot client)
* :mod:`meetstream_live.adapters.sync` — blocking sockets, a thread per connection
* :mod:`meetstream_live.adapters.trio` — trio (``pip install meetstream-live[trio]``)
* :mod:`meetstream_live.adapters.asgi` — an ASGI application (uvicorn, hypercorn, Starlette...)

All of them take the same :class:`Handler` (what happens to a stream) and
:class:`ServerOptions`. Nothing here imports more than the stack it drives.
"""

from __future__ import annotations

from ._bots import HandshakeFailed
from ._driver import (
    ConnectionDriver,
    Connections,
    MessageDriver,
    MessageStep,
    Step,
    mono_ms,
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
    Viewer,
    ViewerFactory,
)
from ._system import tune_allocator

__all__ = [
    "Backlog",
    "ConnectionDriver",
    "ConnectionInfo",
    "Connections",
    "HTTPAnswer",
    "HTTPHandler",
    "Handler",
    "HandlerFactory",
    "HandshakeFailed",
    "MessageDriver",
    "MessageStep",
    "ServerOptions",
    "Step",
    "Viewer",
    "ViewerFactory",
    "mono_ms",
    "tune_allocator",
    "wall_ms",
]
