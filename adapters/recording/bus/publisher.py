"""The bus's publisher: a thread of its own running an asyncio loop with one ``nats-py``
connection, that publishes what the bus sink hands it to JetStream (``docs/bus.md``).

Producers (the bus sink, in the recorder's and the file sink's threads) call
:meth:`Publisher.submit`: a lock, an append, at most one wake-up of the publisher's loop; no
I/O, no wait, whatever NATS does. Messages are kept per *lane* (one part of one stream) and
each lane is published in order, one message at a time, each waiting for its JetStream
acknowledgement (so a retry can never overtake what it retries); lanes run concurrently, so
one slow stream does not hold back the others. A message that fails (no answer in
``ack_timeout``, NATS down, a refusal) stays at the head of its lane and is retried with the
same ``Nats-Msg-Id``: JetStream stores it once. A message larger than what the server takes
(``max_payload``) is published as pieces (header ``Meetstream-Chunk: i/n``) that
:mod:`.consumer` joins again.

What waits is bounded by ``max_pending_bytes`` (memory): beyond it, new media and events are
dropped and counted (``bus_dropped_*`` in ``/metrics``); the local recording is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .subjects import (
    EVENTS_STREAM,
    H_CHUNK,
    H_INIT_SEQ,
    H_MSG_ID,
    H_SIZE,
    INIT_STREAM,
    PREFIX,
    StreamLimits,
)

__all__ = ["BusConfig", "BusError", "Outgoing", "Publisher", "connect_once"]

log = logging.getLogger("meetstream_live.bus")

#: Room kept for the headers below ``max_payload`` when a message is split.
HEADER_ROOM = 1024


class BusError(Exception):
    """The bus cannot be used (no server, refused credentials, a stream it cannot create)."""


@dataclass(frozen=True)
class BusConfig:
    """Where and how to publish. ``url``: ``nats://[user:password@]HOST:4222`` (or
    ``tls://``; several, comma-separated, for a cluster). ``creds``: a ``.creds`` file
    (NATS JWT + nkey); ``ca_file``: trust these CAs for TLS. ``limits``: for the streams
    created when absent."""

    url: str
    creds: str | None = None
    ca_file: str | None = None
    limits: StreamLimits = field(default_factory=StreamLimits)
    connect_timeout: float = 5.0
    ack_timeout: float = 5.0
    max_pending_bytes: int = 64 * 1024 * 1024
    #: Seconds between retries of a lane whose head failed (doubling up to ``retry_cap``).
    retry_base: float = 0.1
    retry_cap: float = 2.0

    def connect_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "servers": [u.strip() for u in self.url.split(",") if u.strip()],
            "name": "meetstream-live",
            "connect_timeout": self.connect_timeout,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
        }
        if self.creds:
            options["user_credentials"] = self.creds
        if self.ca_file:
            options["tls"] = ssl.create_default_context(cafile=self.ca_file)
        return options


@dataclass(slots=True)
class Outgoing:
    """One message for the bus. ``kind``: ``init``, ``fragment``, ``end`` or ``event``.
    ``also``: another subject that gets the same payload once this one is stored (the init
    subject, kept one per subject). ``headers`` carry ``Nats-Msg-Id``."""

    subject: str
    payload: bytes
    headers: dict[str, str]
    kind: str
    also: str | None = None
    queued_at: float = 0.0


class _Lane:
    __slots__ = ("active", "ended", "init_seq", "messages")

    def __init__(self) -> None:
        self.messages: deque[Outgoing] = deque()
        self.active = False
        self.ended = False
        self.init_seq: int | None = None


class Publisher:
    """See the module. :meth:`start` connects (raising :class:`BusError` when it cannot) and
    creates the streams if absent; :meth:`close` lets the lanes drain, then disconnects."""

    def __init__(self, config: BusConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._lanes: dict[int, _Lane] = {}
        self._pending_bytes = 0
        self._pending_messages = 0
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._nc: Any = None
        self._js: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connected = False
        #: Counters since start (``/metrics``).
        self.published_messages = 0
        self.published_bytes = 0
        self.duplicates = 0
        self.failures = 0
        self.dropped_messages = 0
        self.dropped_bytes = 0
        self.split_messages = 0

    # ------------------------------------------------------------------ life

    def start(self) -> None:
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="bus-publisher", daemon=True)
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._connect(), loop)
        try:
            future.result(self.config.connect_timeout * 2 + 10)
        except BaseException as exc:
            self._stop_loop()
            if isinstance(exc, BusError):
                raise
            raise BusError(f"{self.where()}: {exc or type(exc).__name__}") from exc

    def where(self) -> str:
        """``NATS at URL`` (the password masked), for messages."""
        return f"NATS at {_masked(self.config.url)}"

    def _run(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def _connect(self) -> None:
        import nats
        import nats.errors

        async def disconnected() -> None:
            self.connected = False
            if self._closed:
                return
            log.warning("%s: disconnected; publishing waits (reconnecting)", self.where())

        async def reconnected() -> None:
            self.connected = True
            log.warning("%s: reconnected", self.where())

        async def error(exc: Exception) -> None:
            log.debug("nats: %r", exc)

        try:
            # Once without retrying, to fail fast with the reason (nats-py's first connect
            # retries as often as it reconnects: forever here); then the connection that stays.
            probe = await connect_once(self.config)
            await probe.close()
            self._nc = await nats.connect(
                **self.config.connect_options(), disconnected_cb=disconnected,
                reconnected_cb=reconnected, error_cb=error)
        except (OSError, nats.errors.Error, asyncio.TimeoutError) as exc:
            raise BusError(f"{self.where()}: cannot connect: {exc or type(exc).__name__}") \
                from None
        self.connected = True
        self._js = self._nc.jetstream(timeout=self.config.ack_timeout)
        try:
            await self._ensure_streams()
        except Exception as exc:
            await self._nc.close()
            raise BusError(f"{self.where()}: JetStream: {exc}") from None

    async def _ensure_streams(self) -> None:
        from nats.js.api import DiscardPolicy, StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        limits = self.config.limits
        wanted = [
            StreamConfig(
                name=EVENTS_STREAM, subjects=[f"{PREFIX}.*.*.events", f"{PREFIX}.*.*.media"],
                max_age=limits.max_age, max_bytes=limits.max_bytes, storage=StorageType.FILE,
                discard=DiscardPolicy.OLD, duplicate_window=limits.duplicate_window,
                num_replicas=limits.replicas,
                description="meetstream-live: events (JSON) and fMP4 fragments per stream"),
            StreamConfig(
                name=INIT_STREAM, subjects=[f"{PREFIX}.*.*.init"], max_age=limits.max_age,
                max_msgs_per_subject=1, storage=StorageType.FILE, discard=DiscardPolicy.OLD,
                duplicate_window=limits.duplicate_window, num_replicas=limits.replicas,
                description="meetstream-live: the latest init segment per stream"),
        ]
        for config in wanted:
            try:
                info = await self._js.stream_info(config.name)
            except NotFoundError:
                await self._js.add_stream(config)
                log.info("created the JetStream stream %s (%s)", config.name,
                         ", ".join(config.subjects or ()))
            else:
                log.info("using the existing JetStream stream %s (subjects %s)", config.name,
                         ", ".join(info.config.subjects or ()))

    def close(self, timeout: float = 10.0) -> bool:
        """Wait up to ``timeout`` for what is queued to be published, then disconnect;
        False if messages were left (counted as dropped)."""
        if self._loop is None:
            return True
        deadline = self._clock() + timeout
        with self._drained:
            self._closed = True
            while self._pending_messages and self._clock() < deadline:
                self._drained.wait(max(0.0, deadline - self._clock()))
            left, left_bytes = self._pending_messages, self._pending_bytes
            self.dropped_messages += left
            self.dropped_bytes += left_bytes
        if left:
            log.warning("%s: %d message(s) (%d bytes) not published at close", self.where(),
                        left, left_bytes)
        self._stop_loop()
        return left == 0

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def stop() -> None:
            for task in list(self._tasks):
                task.cancel()
            if self._nc is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._nc.close(), 5.0)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), loop).result(10.0)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10.0)
        if not thread.is_alive():
            loop.close()
        self._loop = None
        self.connected = False

    # ------------------------------------------------------------------ producers

    def submit(self, lane_id: int, messages: Sequence[Outgoing], *, last: bool = False) -> None:
        """Queue ``messages`` at the end of lane ``lane_id`` (``last``: the lane ends after
        them). Never blocks on the bus."""
        wake: _Lane | None = None
        now = self._clock()
        with self._lock:
            lane = self._lanes.get(lane_id)
            if lane is None:
                lane = self._lanes[lane_id] = _Lane()
            limit = self.config.max_pending_bytes
            for message in messages:
                size = len(message.payload)
                if self._closed or (self._pending_bytes + size > limit
                                    and message.kind != "end"):
                    self.dropped_messages += 1
                    self.dropped_bytes += size
                    continue
                message.queued_at = now
                lane.messages.append(message)
                self._pending_bytes += size
                self._pending_messages += 1
            lane.ended = lane.ended or last
            if lane.messages and not lane.active:
                lane.active = True
                wake = lane
            elif not lane.messages and not lane.active and lane.ended:
                self._lanes.pop(lane_id, None)
        if wake is not None and self._loop is not None:
            # RuntimeError: the loop is closed; close() counted what is left.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._spawn, lane_id, wake)

    def _spawn(self, lane_id: int, lane: _Lane) -> None:
        task = asyncio.get_running_loop().create_task(self._drain(lane_id, lane))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, lane_id: int, lane: _Lane) -> None:
        delay = self.config.retry_base
        while True:
            with self._lock:
                if not lane.messages:
                    lane.active = False
                    if lane.ended:
                        self._lanes.pop(lane_id, None)
                    self._drained.notify_all()
                    return
                message = lane.messages[0]
            try:
                await self._send(lane, message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                if self.failures == 1 or self.failures % 100 == 0:
                    log.warning("%s: publishing %s failed (%d failure(s) so far), retrying: "
                                "%r", self.where(), message.subject, self.failures, exc)
                await asyncio.sleep(delay)
                delay = min(self.config.retry_cap, delay * 2)
                continue
            delay = self.config.retry_base
            with self._lock:
                lane.messages.popleft()
                self._pending_bytes -= len(message.payload)
                self._pending_messages -= 1
                self.published_messages += 1
                self.published_bytes += len(message.payload)

    async def _send(self, lane: _Lane, message: Outgoing) -> None:
        headers = dict(message.headers)
        if message.kind in ("fragment", "end") and lane.init_seq is not None:
            headers[H_INIT_SEQ] = str(lane.init_seq)
        seq = await self._publish(message.subject, message.payload, headers)
        if message.kind == "init":
            lane.init_seq = seq
            if message.also is not None:
                headers[H_INIT_SEQ] = str(seq)
                headers[H_MSG_ID] += ".last"
                if len(message.payload) + HEADER_ROOM <= self._nc.max_payload:
                    await self._publish(message.also, message.payload, headers)
                else:
                    log.warning("an init segment of %d bytes is over the server's max_payload:"
                                " %s only has it in %s", len(message.payload), message.also,
                                message.subject)

    async def _publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> int:
        """Publish and wait for the acknowledgement (split when too large); the stream
        sequence of the (first) message."""
        room = self._nc.max_payload - HEADER_ROOM
        if len(payload) <= room:
            return await self._one(subject, payload, headers)
        pieces = list(_split(payload, room))
        first = 0
        msg_id = headers[H_MSG_ID]
        for number, piece in enumerate(pieces, 1):
            piece_headers = {**headers, H_CHUNK: f"{number}/{len(pieces)}",
                             H_SIZE: str(len(payload)), H_MSG_ID: f"{msg_id}.c{number}"}
            seq = await self._one(subject, piece, piece_headers)
            first = first or seq
        self.split_messages += 1
        return first

    async def _one(self, subject: str, payload: bytes, headers: dict[str, str]) -> int:
        ack = await self._js.publish(subject, payload, headers=headers,
                                     timeout=self.config.ack_timeout)
        if ack.duplicate:
            self.duplicates += 1
        return int(ack.seq)

    # ------------------------------------------------------------------ reading

    def stats(self) -> dict[str, float]:
        now = self._clock()
        with self._lock:
            oldest = min((lane.messages[0].queued_at for lane in self._lanes.values()
                          if lane.messages), default=None)
            return {
                "connected": 1.0 if self.connected else 0.0,
                "pending_messages": self._pending_messages,
                "pending_bytes": self._pending_bytes,
                "lag_seconds": 0.0 if oldest is None else max(0.0, now - oldest),
                "published_messages": self.published_messages,
                "published_bytes": self.published_bytes,
                "duplicates": self.duplicates,
                "failures": self.failures,
                "dropped_messages": self.dropped_messages,
                "dropped_bytes": self.dropped_bytes,
                "split_messages": self.split_messages,
            }

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued (tests); False on timeout."""
        deadline = self._clock() + timeout
        with self._drained:
            while self._pending_messages:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return False
                self._drained.wait(remaining)
        return True


async def connect_once(config: BusConfig) -> Any:
    """A ``nats-py`` connection that tries each server twice at most (then raises
    :class:`BusError` with the reason) and does not reconnect: for commands."""
    import nats

    errors: list[Exception] = []

    async def failed(exc: Exception) -> None:
        errors.append(exc)

    options = {**config.connect_options(), "max_reconnect_attempts": 1,
               "reconnect_time_wait": 0.2, "allow_reconnect": False}
    try:
        return await nats.connect(**options, error_cb=failed)
    except Exception as exc:
        why = errors[-1] if errors else exc
        raise BusError(f"NATS at {_masked(config.url)}: cannot connect: "
                       f"{why or type(why).__name__}") from None


def _split(payload: bytes, room: int) -> Iterator[bytes]:
    view = memoryview(payload)
    for start in range(0, len(payload), room):
        yield bytes(view[start:start + room])


def _masked(url: str) -> str:
    """The URL without its password."""
    out = []
    for one in url.split(","):
        scheme, sep, rest = one.strip().rpartition("://")
        userinfo, at, host = rest.rpartition("@")
        if at and ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        out.append(f"{scheme}{sep}{userinfo}{at}{host}")
    return ",".join(out)
