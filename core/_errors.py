"""The error contract of the core, as a tree.

::

    MeetStreamError
    └── LocalProtocolError   you called the API in a way the current state forbids

Remote misbehaviour never raises. Whatever a peer sends (bad HTTP, bad frames, bad JSON, too much
data) comes out of ``receive_data`` as events: a ``ProtocolWarning`` when the stream can go on, an
HTTP rejection or a WebSocket close (with its RFC 6455 code) when it cannot. So an adapter needs one
``try`` at most: around its own calls, for its own bugs.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "MeetStreamError"]


class MeetStreamError(Exception):
    """Base class of every exception the core raises."""


class LocalProtocolError(MeetStreamError):
    """The caller asked for something the connection's current state does not allow.

    Examples: answering an HTTP request that was never received, sending media before the
    WebSocket handshake completed, sending anything after close. It is always a bug in the
    calling code, never something a peer can provoke.
    """
