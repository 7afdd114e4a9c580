"""The ASGI adapter: the receiver as an ASGI 3 application, for uvicorn, hypercorn, Starlette...

Here the ASGI server parses HTTP and does the WebSocket framing, so this adapter drives the core's
message layer, :class:`~meetstream_live.Session`, alone. What a request gets is still decided by
:func:`~meetstream_live.route_request`, as in every other adapter: the same 401, 404, 405, 426
and 503. Handlers run as in the asyncio adapter: in the app's handler threads, one call at a
time per connection, in order, and ``receive()`` is not called while more than
``options.max_pending_bytes`` of media wait for the handler (the ASGI server then stops reading
the socket: uvicorn holds one message, hypercorn ``max_app_queue_size`` messages).

Use it as the whole application::

    receiver = ASGIApp(RecordingHandler, ServerOptions(config=ServerConfig(path="/")))
    # uvicorn mymodule:receiver --ws-max-size 67108864 --ws-per-message-deflate false

or mount it in an application you already run (Starlette, FastAPI)::

    app = Starlette(routes=[Mount("/meetstream", app=receiver)], lifespan=lifespan)
    # the bot's URL is then wss://host/meetstream/ and config.path is "/" (the path inside the
    # mount: ``root_path`` is stripped), or None for any path under the mount.

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await receiver.shutdown()    # mounted apps get no lifespan events of their own

``WebSocketRoute("/video", receiver)`` works too (then ``config.path = "/video"``). It needs an
asyncio event loop (uvicorn, hypercorn's asyncio or uvloop worker), not trio.

**Rejections.** When the server supports the ``websocket.http.response`` extension (uvicorn and
hypercorn do), a refused upgrade gets the same HTTP status, headers and body as from the other
adapters. Without it, ASGI has no way to send a status: the app sends ``websocket.close`` with
code 1008 (policy violation) before accepting, which servers turn into HTTP 403. (uvicorn's
default ``websockets-sansio`` implementation logs a spurious "ASGI callable returned without
completing handshake" error after each HTTP rejection, Kludex/uvicorn#3138; ``--ws wsproto``
does not.)

**What the ASGI server does, not this app.** Configure it there:

* Message size. uvicorn ``--ws-max-size`` and hypercorn ``websocket_max_message_size`` (config
  file only) both default to 16 MiB, and a MeetStream fragment holding a keyframe can be larger:
  over the limit, the server closes with 1009 and the stream is lost (uvicorn also drops the
  messages it read along with the oversized frame's header). Use
  :data:`RECOMMENDED_MAX_MESSAGE_SIZE` (64 MiB). Also turn compression off for video
  (uvicorn ``--ws-per-message-deflate false``; hypercorn accepts it whenever the bot offers it).
* Dead peers and idle connections. uvicorn pings every ``--ws-ping-interval`` (20 s) and
  drops the connection after ``--ws-ping-timeout`` (20 s) without a pong. hypercorn's
  ``websocket_ping_interval`` (default off) sends pings but never checks the pongs; its
  ``read_timeout`` (default off, ``--read-timeout``) closes a connection silent for that long:
  set it well above the longest gap expected between the bot's messages (60 s, say).
  ``ServerConfig.idle_timeout_ms``, ``handshake_timeout_ms`` and ``max_request_head`` are not
  used here. uvicorn has no request-head timeout (put a proxy in front); hypercorn closes a
  connection whose request head is still incomplete after ``keep_alive_timeout`` (5 s; also
  ``read_timeout`` of silence, if set), without a response (the socket adapters answer 408).
* Shutdown. Both servers deal with open WebSockets *before* sending ``lifespan.shutdown``:
  uvicorn closes them at once with 1012; hypercorn lets them run for ``graceful_timeout`` (3 s)
  and then cancels the app (the bot gets 1011, the handler ``Disconnected(1006)``). To drain
  first, call :meth:`ASGIApp.shutdown` before the server stops: from hypercorn's
  ``shutdown_trigger``, or
  from a ``uvicorn.Server`` subclass whose ``shutdown`` awaits it first. The lifespan handler
  calls it too (for whatever is still open).
* Close codes in ``Disconnected``. When this app closed (1001, 1009, 1011), it reports its own
  code and reason, as the core does; it waits ``close_timeout_ms`` for the
  ``websocket.disconnect`` (uvicorn sends it at once, hypercorn after the bot's answer), then
  gives up with 1006. When the bot closed, uvicorn reports the bot's code, but hypercorn
  reports 1006 whatever the code on the wire. When the connection dropped without a close
  frame, uvicorn reports 1005 (hypercorn and the core: 1006). ``Disconnected.clean`` does not
  depend on codes.
* Whole messages only. ASGI servers deliver complete messages: when a bot vanishes in the
  middle of one, its received part is lost (the socket adapters deliver it).
* The bot's close frame is answered by the server as soon as it parses it, ahead of the app:
  a pong for a latency ping that arrived together with the close is not sent (the handler
  still gets the ping). The socket adapters handle a read in order, pong first.
* TLS is the server's (uvicorn ``--ssl-certfile``/``--ssl-keyfile``, hypercorn
  ``--certfile``/``--keyfile``): ``ServerOptions.ssl`` is ignored, with a warning, and
  ``ConnectionInfo.secure`` comes from the scope's scheme. So are ``read_size`` and the
  listening socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

from meetstream_live import (
    Accepted,
    Disconnected,
    Event,
    HTTPRejected,
    HTTPRequest,
    Reject,
    Session,
    route_request,
)

from ._aio import HandlerRunner, handler_pool
from ._common import (
    GOING_AWAY,
    INTERNAL_ERROR,
    ConnectionInfo,
    Handler,
    HandlerFactory,
    HTTPAnswer,
    ServerOptions,
    log,
    now_ms,
    observe,
)

__all__ = ["RECOMMENDED_MAX_MESSAGE_SIZE", "ASGIApp", "Receive", "Scope", "Send"]

#: ASGI types, loose enough that uvicorn's and hypercorn's ``TypedDict`` messages fit.
Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Any], Awaitable[None]]

#: The WebSocket message size limit to give the ASGI server (uvicorn ``ws_max_size``,
#: hypercorn ``websocket_max_message_size``); both default to 16 MiB.
RECOMMENDED_MAX_MESSAGE_SIZE = 64 * 1024 * 1024

POLICY_VIOLATION = 1008
NO_STATUS_RECEIVED = 1005
ABNORMAL_CLOSURE = 1006
HTTP_EXTENSION = "websocket.http.response"

Headers = tuple[tuple[bytes, bytes], ...]

#: What ``send`` raises once the connection is going away: uvicorn's ``ClientDisconnected`` is
#: an ``OSError``; uvicorn raises ``RuntimeError`` for a message sent after it closed the
#: connection itself (oversized message). The ``websocket.disconnect`` message follows.
_SEND_ERRORS = (OSError, RuntimeError)


def _request_parts(scope: Scope) -> tuple[str, str, Headers]:
    """Path (as sent, percent-encoded, relative to the mount point), query and headers."""
    raw = scope.get("raw_path")
    path = bytes(raw).decode("latin-1") if raw else quote(str(scope.get("path") or "/"))
    root = quote(str(scope.get("root_path") or ""))
    # The path the bot sent, less where the app is mounted: uvicorn puts its root_path in front
    # of raw_path, Starlette's Mount leaves raw_path whole, hypercorn leaves its root_path out.
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :] or "/"
    query = bytes(scope.get("query_string") or b"").decode("latin-1")
    # ASGI wants lower-case names; uvicorn's websockets implementations pass them as sent.
    headers = tuple((bytes(name).lower(), bytes(value)) for name, value in scope.get("headers", ()))
    return path, query, headers


def _target(path: str, query: str) -> str:
    return path + "?" + query if query else path


def _head_size(method: str, target: str, headers: Headers) -> int:
    """The request head's size as it was on the wire, near enough (ASGI servers do not all
    bound it: uvicorn's httptools and hypercorn's h11 accept a large head read at once)."""
    line = len(method) + len(target) + len(" HTTP/1.1\r\n") + 1
    return line + sum(len(name) + len(value) + 4 for name, value in headers) + 2


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return str(tuple(client)) if client else "unknown"


def _refusal(decision: Reject) -> tuple[bytes, Headers]:
    """Body and headers of a refusal, as :class:`~meetstream_live.ServerConnection` sends them:
    a fixed phrase (request bytes are never reflected; the reason goes to the logs)."""
    return decision.body, decision.response_headers


def _response_headers(
    content_type: str, body: bytes, extra: Headers = ()
) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(len(body)).encode("ascii")),
        *((name.lower(), value) for name, value in extra),
    ]


class ASGIApp:
    """The receiver as an ASGI 3 application (``websocket``, ``http`` and ``lifespan`` scopes).

    ``factory`` makes one :class:`~meetstream_live.adapters.Handler` per accepted connection;
    ``options`` are those of every adapter (``ssl`` and ``read_size`` belong to the ASGI server
    here). Mount it at a path, or serve it as the whole application.
    """

    def __init__(self, factory: HandlerFactory, options: ServerOptions | None = None) -> None:
        self.factory = factory
        self.options = options or ServerOptions()
        if self.options.ssl is not None:
            log.warning("ServerOptions.ssl is ignored by ASGIApp: configure TLS on the server")
        self._connections: set[_WebSocket] = set()
        self._accepting = True
        self.executor = handler_pool(self.options.handler_threads)

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "http":
            await self._http(scope, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            raise ValueError(f"unsupported ASGI scope type {kind!r}")

    async def shutdown(self, drain_timeout: float | None = None) -> None:
        """Refuse new upgrades (503); let streams run up to ``drain_timeout`` (default
        ``options.drain_timeout``); close the rest with 1001; return when every handler has
        finished."""
        self._accepting = False
        drain = self.options.drain_timeout if drain_timeout is None else drain_timeout
        waiters = {asyncio.ensure_future(conn.done.wait()): conn for conn in self._connections}
        if not waiters:
            return
        try:
            _done, pending = await asyncio.wait(waiters, timeout=drain)
            for waiter in pending:
                await waiters[waiter].close(GOING_AWAY, "server shutting down")
            if pending:
                await asyncio.wait(pending)
        finally:
            for waiter in waiters:
                waiter.cancel()

    # ------------------------------------------------------------------ scopes

    def _observe(self, event: Event) -> None:
        if self.options.observer is not None:
            observe(self.options.observer, event)

    def _overloaded(self) -> bool:
        return not self._accepting or len(self._connections) >= self.options.max_connections

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._accepting = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                except Exception as exc:
                    await send({"type": "lifespan.shutdown.failed", "message": repr(exc)})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, send: Send) -> None:
        method = str(scope.get("method") or "GET")
        path, query, headers = _request_parts(scope)
        target = _target(path, query)
        decision = route_request(
            self.options.config,
            method,
            target,
            headers,
            overloaded=self._overloaded(),
            head_size=_head_size(method, target, headers),
        )
        if isinstance(decision, Reject):
            self._rejected(scope, decision)
            body, extra = _refusal(decision)
            await _respond(send, decision.status, body, extra=extra)
            return
        if not decision.http:
            # "Upgrade: websocket" arrived as plain HTTP: the server does not do WebSocket
            # (uvicorn --ws none, or no websockets/wsproto installed).
            body = b"this ASGI server does not accept WebSocket upgrades\n"
            await _respond(send, 501, body)
            return
        request = HTTPRequest(method, target, decision.path, decision.query, headers)
        self._observe(request)
        handler = self.options.http_handler
        answer = handler(request) if handler is not None else HTTPAnswer(404, b"not found\n")
        await _respond(send, answer.status, answer.body, content_type=answer.content_type)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return  # gone before the handshake
        path, query, headers = _request_parts(scope)
        if not any(name == b"upgrade" and b"websocket" in value.lower() for name, value in headers):
            # The scope type is the upgrade (HTTP/2 and HTTP/3 WebSockets have no such header).
            headers += ((b"upgrade", b"websocket"),)
        target = _target(path, query)
        decision = route_request(
            self.options.config,
            "GET",
            target,
            headers,
            overloaded=self._overloaded(),
            head_size=_head_size("GET", target, headers),
        )
        if isinstance(decision, Reject):
            self._rejected(scope, decision)
            await _reject_websocket(scope, send, decision)
            return
        conn = _WebSocket(self, receive, send)
        info = ConnectionInfo(
            _peer(scope),
            decision.path,
            decision.query,
            headers,
            scope.get("scheme") in ("wss", "https"),
            close=conn.close_soon,
        )
        self._connections.add(conn)
        try:
            await conn.run(info)
        finally:
            self._connections.discard(conn)
            conn.done.set()

    def _rejected(self, scope: Scope, decision: Reject) -> None:
        self._observe(HTTPRejected(decision.status, decision.reason, decision.path))
        log.info("%s: HTTP %d: %s", _peer(scope), decision.status, decision.reason)


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    extra: Headers = (),
) -> None:
    headers = _response_headers(content_type, body, extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _reject_websocket(scope: Scope, send: Send, decision: Reject) -> None:
    body, extra = _refusal(decision)
    if HTTP_EXTENSION in (scope.get("extensions") or {}):
        headers = _response_headers("text/plain; charset=utf-8", body, extra)
        await send(
            {"type": "websocket.http.response.start", "status": decision.status, "headers": headers}
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        # No way to send a status: a close before the accept, which servers answer with 403.
        reason = body.decode("ascii").strip()
        await send({"type": "websocket.close", "code": POLICY_VIOLATION, "reason": reason})


class _WebSocket:
    """One accepted WebSocket: ASGI messages in, the session in the middle, a handler out."""

    def __init__(self, app: ASGIApp, receive: Receive, send: Send) -> None:
        self.app = app
        self.options = app.options
        config = app.options.config
        self.session = Session(
            max_early_bytes=config.max_early_bytes, max_text_size=config.max_text_size
        )
        self.receive = receive
        self.send = send
        self.peer = "unknown"
        self.runner: HandlerRunner | None = None
        self.handler_failed = False
        #: The close code and reason this app sent, if it did.
        self.close_sent: tuple[int, str] | None = None
        self.lost = False
        #: Set once the connection is over and its handler has finished.
        self.done = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._task: asyncio.Task[Any] | None = None
        self._reading = False
        self._aborted = False
        self._abort_timer: asyncio.TimerHandle | None = None
        self._error_close: asyncio.Task[None] | None = None
        self._requested_close: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()

    async def run(self, info: ConnectionInfo) -> None:
        self._task = asyncio.current_task()
        self.peer = info.peer
        try:
            await self.send({"type": "websocket.accept"})
        except _SEND_ERRORS as exc:
            log.debug("%s: gone before the accept: %r", info.peer, exc)
            return
        self.app._observe(Accepted(info.path, info.query, info.headers))
        try:
            handler = self.app.factory(info)
        except Exception as exc:
            log.error("handler factory failed for %s: %r", info.peer, exc, exc_info=exc)
            handler = Handler()  # a no-op one, so that the close below completes normally
            self.handler_failed = True
        runner = self.runner = HandlerRunner(handler, self._handler_error, self.app.executor)
        lost_reason = "connection ended without a disconnect message"
        self._reading = True
        try:
            if self.handler_failed:
                await self.close(INTERNAL_ERROR, "handler error")
            await self._read_loop(runner)
        except asyncio.CancelledError:
            if not self._aborted:
                lost_reason = "cancelled by the ASGI server"
                raise
            # Our own cancellation: the bot never answered our close frame.
            lost_reason = "close handshake timed out"
            task = self._task
            if sys.version_info >= (3, 11) and task is not None:
                task.uncancel()
        finally:
            self._reading = False
            if self._abort_timer is not None:
                self._abort_timer.cancel()
            if not self.lost:
                self.lost = True
                self._deliver(self.session.connection_lost(ABNORMAL_CLOSURE, lost_reason))
            with contextlib.suppress(Exception):
                await runner.finish()
                if self._error_close is not None:
                    await self._error_close
                if self._requested_close is not None:
                    await self._requested_close

    async def _read_loop(self, runner: HandlerRunner) -> None:
        session, limit = self.session, self.options.max_pending_bytes
        while True:
            message = await self.receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                self.lost = True
                code = message.get("code")
                code = NO_STATUS_RECEIVED if code is None else int(code)
                reason = str(message.get("reason") or "")
                if self.close_sent is not None and code != ABNORMAL_CLOSURE:
                    # We closed: report why, as the core does (hypercorn says 1000 here).
                    code, reason = self.close_sent
                self._deliver(session.connection_lost(code, reason))
                return
            if kind != "websocket.receive":
                continue
            data, text = message.get("bytes"), message.get("text")
            if data is not None:
                events = session.receive_binary(bytes(data))
            elif text is not None:
                events = session.receive_text(str(text), now_ms())
            else:
                continue
            for reply in session.messages_to_send():  # pongs before the handler sees media
                await self._send({"type": "websocket.send", "text": reply})
            self._deliver(events)
            request = session.close_request
            if request is not None:
                await self.close(request.code, request.reason)
            await runner.wait_below(limit)

    def _handler_error(self, exc: Exception) -> None:
        """The handler raised (called on the loop, at once): close with 1011."""
        if self.handler_failed:
            return
        log.error("handler failed for %s: %r", self.peer, exc, exc_info=exc)
        self.handler_failed = True
        self._error_close = asyncio.get_running_loop().create_task(
            self.close(INTERNAL_ERROR, "handler error")
        )

    def close_soon(self, code: int, reason: str) -> None:
        """``ConnectionInfo.close``: from any thread, :meth:`close` on the loop."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: so is the connection
            self._loop.call_soon_threadsafe(self._close_requested, code, reason)

    def _close_requested(self, code: int, reason: str) -> None:
        if self.close_sent is not None or self.lost or self._requested_close is not None:
            return
        self._requested_close = self._loop.create_task(self.close(code, reason))

    def _deliver(self, events: list[Event]) -> None:
        for event in events:
            self.app._observe(event)
        if self.handler_failed:
            events = [e for e in events if isinstance(e, Disconnected)]
        if events and self.runner is not None:
            self.runner.submit(events)

    async def _send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            if self.close_sent is not None or self.lost:
                return
            try:
                await self.send(message)
            except _SEND_ERRORS as exc:  # the disconnect message follows
                log.debug("send failed: %r", exc)

    async def close(self, code: int, reason: str) -> None:
        """Send ``websocket.close`` once; give the bot ``close_timeout_ms`` to answer."""
        async with self._send_lock:
            if self.close_sent is not None or self.lost:
                return
            self.close_sent = (code, reason)
            try:
                await self.send({"type": "websocket.close", "code": code, "reason": reason})
            except _SEND_ERRORS as exc:
                log.debug("close failed: %r", exc)
        if self._reading:
            delay = self.options.config.close_timeout_ms / 1000
            self._abort_timer = asyncio.get_running_loop().call_later(delay, self._abort)

    def _abort(self) -> None:
        # Only a read loop still waiting for the disconnect is cancelled, never the final
        # wait for the handler.
        if self._reading and self._task is not None and not self._task.done():
            self._aborted = True
            self._task.cancel()
