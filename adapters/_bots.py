"""What the bot clients (asyncio, sync, trio) share: the handshake outcome, the TLS context,
the async ``send_*`` methods and the close handshake."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable, Iterable
from typing import Any

from meetstream_live import (
    BotAccepted,
    BotClosed,
    BotConnection,
    BotRejected,
    Event,
    WebSocketURL,
)

__all__ = ["AsyncBotSends", "HandshakeFailed", "client_tls", "handshake_outcome"]


class HandshakeFailed(ConnectionError):
    """The receiver did not accept the bot's WebSocket handshake."""

    def __init__(self, status: int | None, reason: str, body: bytes = b"") -> None:
        super().__init__(f"handshake failed ({status or 'no HTTP status'}): {reason}")
        self.status = status
        self.reason = reason
        self.body = body


def client_tls(url: WebSocketURL, context: ssl.SSLContext | None) -> ssl.SSLContext | None:
    """The TLS context a bot client connects with: the caller's, else the system's default
    (certificates verified) for ``wss://``, else none."""
    if context is not None:
        return context
    return ssl.create_default_context() if url.secure else None


class AsyncBotSends:
    """What the async bot clients (asyncio, trio) share: the ``send_*`` methods (queue with the
    core's :class:`~meetstream_live.BotConnection`, then write with the client's ``_flush()``)
    and the close handshake. Each client supplies ``_flush``, ``next_event`` and ``abort``."""

    conn: BotConnection
    clock: Callable[[], int]

    async def _flush(self) -> None:
        raise NotImplementedError

    async def next_event(self, timeout: float | None = None) -> Event:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    async def start_close(self, code: int = 1000, reason: str = "") -> None:
        """Send the close frame, without reading: for a caller whose own reader task
        (:meth:`next_event`) gets the receiver's answer as :class:`BotClosed`. Does nothing
        once the handshake is under way or over; a broken connection is not an error here
        (the reader sees it)."""
        self.conn.close(code, reason)
        with contextlib.suppress(OSError):
            await self._flush()

    async def close(self, code: int = 1000, reason: str = "", timeout: float = 10.0) -> BotClosed:
        """Close handshake; returns the receiver's answer (1006 if it never came)."""
        await self.start_close(code, reason)
        try:
            while True:
                event = await self.next_event(timeout)
                if isinstance(event, BotClosed):
                    return event
        except TimeoutError:
            return BotClosed(1006, "no close frame from the receiver")
        finally:
            self.abort()

    async def send_start(self, bot_id: str, **fields: Any) -> None:
        self.conn.send_start(bot_id, **fields)
        await self._flush()

    async def send_chunk(self, data: bytes, *, final: bool = True) -> None:
        self.conn.send_chunk(data, final=final)
        await self._flush()

    async def send_ping(self, seq: Any, sent_at_ms: Any | None = None) -> None:
        self.conn.send_ping(seq, self.clock() if sent_at_ms is None else sent_at_ms)
        await self._flush()

    async def send_end(self, duration_seconds: float) -> None:
        self.conn.send_end(duration_seconds)
        await self._flush()

    async def send_text(self, text: str) -> None:
        self.conn.send_text(text)
        await self._flush()

    async def send_ws_ping(self, payload: bytes = b"") -> None:
        self.conn.send_ws_ping(payload)
        await self._flush()


def handshake_outcome(events: Iterable[Event]) -> bool | None:
    """For a bot client waiting for the handshake: True once accepted, None while waiting;
    raises :class:`HandshakeFailed` on a rejection or a close."""
    for event in events:
        if isinstance(event, BotAccepted):
            return True
        if isinstance(event, BotRejected):
            raise HandshakeFailed(
                event.status, event.body.decode("utf-8", "replace").strip(), event.body
            )
        if isinstance(event, BotClosed):
            raise HandshakeFailed(None, event.reason or f"closed ({event.code})")
    return None
