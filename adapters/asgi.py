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
    CloseCode,
    DisconnectCause,
    HTTPRejected,
    HTTPRequest,
    Reject,
    route_request,
)

from ._delivery import Delivery, handler_pool
from ._driver import Connections, MessageDriver, MessageStep, answer_http, log, observe
from ._handler import HandlerFactory, ServerOptions

__all__ = ["RECOMMENDED_MAX_MESSAGE_SIZE", "ASGIApp", "Receive", "Scope", "Send"]

#: ASGI types, loose enough that uvicorn's and hypercorn's ``TypedDict`` messages fit.
Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Any], Awaitable[None]]

#: The WebSocket message size limit to give the ASGI server (uvicorn ``ws_max_size``,
#: hypercorn ``websocket_max_message_size``); both default to 16 MiB.
RECOMMENDED_MAX_MESSAGE_SIZE = 64 * 1024 * 1024

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
        #: The open connections: the limit and the drain (shared policy).
        self.connections = Connections(self.options)
        self._changed: asyncio.Event | None = None
        self.executor = handler_pool(self.options.handler_threads)

    @property
    def active_connections(self) -> int:
        return self.connections.count

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
        changed = self._watch()
        for timeout in self.connections.drain(drain_timeout):

            async def until_empty() -> None:
                while self.connections.count:
                    changed.clear()
                    if self.connections.count:
                        await changed.wait()

            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(until_empty(), timeout)

    def _watch(self) -> asyncio.Event:
        """An event set whenever a connection ends (made on the app's loop, once)."""
        if self._changed is None:
            loop = asyncio.get_running_loop()
            changed = self._changed = asyncio.Event()

            def on_change() -> None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(changed.set)

            self.connections.on_change(on_change)
        return self._changed

    # ------------------------------------------------------------------ scopes

    def _observe(self, event: Any) -> None:
        if self.options.observer is not None:
            observe(self.options.observer, event)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.connections.accepting = True
                self._watch()
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
            overloaded=self.connections.overloaded(),
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
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(self.executor, answer_http, self.options, request)
        await _respond(
            send, answer.status, answer.body, content_type=answer.content_type,
            extra=answer.headers,
        )

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
            overloaded=self.connections.overloaded(),
            head_size=_head_size("GET", target, headers),
        )
        if isinstance(decision, Reject):
            self._rejected(scope, decision)
            await _reject_websocket(scope, send, decision)
            return
        self._watch()
        conn = _WebSocket(self, receive, send, _peer(scope))
        self.connections.add(conn, conn.post)
        try:
            await conn.run(
                decision.path, decision.query, headers, scope.get("scheme") in ("wss", "https"),
                decision.viewer,
            )
        finally:
            self.connections.discard(conn)

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
        await send(
            {"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION, "reason": reason}
        )


class _WebSocket:
    """One accepted WebSocket: ASGI messages in, the :class:`MessageDriver` in the middle, the
    handler out (through :class:`~._delivery.Delivery`)."""

    def __init__(self, app: ASGIApp, receive: Receive, send: Send, peer: str) -> None:
        self.app = app
        self.options = app.options
        self.receive = receive
        self.send = send
        self.peer = peer
        self.driver = MessageDriver(app.options, app.factory, peer=peer, post=self.post)
        self.delivery: Delivery | None = None
        self._loop = asyncio.get_running_loop()
        self._send_lock = asyncio.Lock()
        self._task: asyncio.Task[Any] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._reading = False
        self._aborted = False
        self._abort_timer: asyncio.TimerHandle | None = None
        self._below = asyncio.Event()
        self.driver.backlog.on_below = self._below_soon

    # ------------------------------------------------------------------ from anywhere

    def post(self, fn: Callable[[MessageDriver], MessageStep | None]) -> None:
        """The driver's ``post``: from any thread, ``fn(driver)`` on the app's loop."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: so is the connection
            self._loop.call_soon_threadsafe(self._run_posted, fn)

    def _run_posted(self, fn: Callable[[MessageDriver], MessageStep | None]) -> None:
        if self.driver.lost:
            return
        step = fn(self.driver)
        if step is not None:
            task = self._loop.create_task(self._apply(step))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _below_soon(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._below.set)

    # ------------------------------------------------------------------ the connection

    async def run(
        self, path: str, query: str, headers: Headers, secure: bool, viewer: bool = False
    ) -> None:
        self._task = asyncio.current_task()
        try:
            await self.send({"type": "websocket.accept"})
        except _SEND_ERRORS as exc:
            log.debug("%s: gone before the accept: %r", self.peer, exc)
            return
        lost = ("connection ended without a disconnect message", DisconnectCause.CONNECTION_LOST)
        self._reading = True
        try:
            await self._apply(self.driver.accept(path, query, headers, secure, viewer))
            await self._read_loop()
        except asyncio.CancelledError:
            if not self._aborted:
                lost = ("cancelled by the ASGI server", DisconnectCause.CONNECTION_LOST)
                raise
            # Our own cancellation: the bot never answered our close frame.
            lost = ("close handshake timed out", DisconnectCause.CONNECTION_LOST)
            task = self._task
            if sys.version_info >= (3, 11) and task is not None:
                task.uncancel()
        finally:
            self._reading = False
            if self._abort_timer is not None:
                self._abort_timer.cancel()
            step = self.driver.disconnected(CloseCode.ABNORMAL, *lost)
            if step.events:
                self._submit(step.events)
            with contextlib.suppress(Exception):
                await self._finish()

    async def _finish(self) -> None:
        """Wait for what was posted and for the handler to have every event."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        delivery = self.delivery
        if delivery is not None:
            idle: asyncio.Future[None] = self._loop.create_future()

            def done() -> None:
                if not idle.done():
                    idle.set_result(None)

            def wake() -> None:
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(done)

            if not delivery.when_idle(wake):
                await asyncio.shield(idle)

    async def _read_loop(self) -> None:
        driver = self.driver
        while True:
            message = await self.receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                code = message.get("code")
                code = CloseCode.NO_STATUS if code is None else int(code)
                reason = str(message.get("reason") or "")
                cause = (
                    DisconnectCause.CONNECTION_LOST
                    if code in (CloseCode.NO_STATUS, CloseCode.ABNORMAL)
                    else DisconnectCause.REMOTE_CLOSE
                )
                await self._apply(driver.disconnected(code, reason, cause))
                return
            if kind != "websocket.receive":
                continue
            data, text = message.get("bytes"), message.get("text")
            if data is None and text is None:
                continue
            await self._apply(driver.receive(None if data is None else bytes(data), text))
            while driver.backlog.should_pause():
                self._below.clear()
                if driver.backlog.over:
                    await self._below.wait()

    async def _apply(self, step: MessageStep) -> None:
        """Send the pongs, then the close if one is due, then hand the events over."""
        for message in step.texts:  # pongs before the handler sees media
            if isinstance(message, str):
                await self._send({"type": "websocket.send", "text": message})
            else:
                await self._send({"type": "websocket.send", "bytes": message})
        if step.close is not None:
            await self._close(*step.close)
        if step.events:
            self._submit(step.events)

    def _submit(self, events: list[Any]) -> None:
        delivery = self.delivery
        if delivery is None:
            calls = self.driver.calls
            if calls is None:
                return
            delivery = self.delivery = Delivery(
                calls, self.app.executor, self.post, self.driver.backlog
            )
        delivery.submit(events)

    async def _send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            if self.driver.lost:
                return
            try:
                await self.send(message)
            except _SEND_ERRORS as exc:  # the disconnect message follows
                log.debug("send failed: %r", exc)

    async def _close(self, code: int, reason: str) -> None:
        """Send ``websocket.close``; give the bot ``close_timeout_ms`` to answer."""
        async with self._send_lock:
            if self.driver.lost:
                return
            try:
                await self.send({"type": "websocket.close", "code": code, "reason": reason})
            except _SEND_ERRORS as exc:
                log.debug("close failed: %r", exc)
        if self._reading:
            delay = self.options.config.close_timeout_ms / 1000
            self._abort_timer = self._loop.call_later(delay, self._abort)

    def _abort(self) -> None:
        # Only a read loop still waiting for the disconnect is cancelled, never the final
        # wait for the handler.
        if self._reading and self._task is not None and not self._task.done():
            self._aborted = True
            self._task.cancel()
