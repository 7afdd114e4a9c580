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

What waits is bounded: ``max_pending_bytes`` in memory, beyond which the outbox's thread moves
the biggest lanes' messages to the outbox on disk (``outbox_dir``, :mod:`.outbox`, at most
``outbox_max_bytes``), which each lane publishes before its newer messages in memory; beyond
that (or a burst over twice ``max_pending_bytes`` before the thread has moved it, or no outbox),
new media and events are dropped and counted (``bus_dropped_*`` in ``/metrics``). At close,
what is left goes to the outbox, published by the next :meth:`Publisher.start`. The local
recording is never touched.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .message import Outgoing
from .outbox import SUFFIX, Segment
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

T = TypeVar("T")

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
    #: Bytes kept in memory; beyond, the lanes' newest messages go to the outbox on disk
    #: (``outbox_dir``), or, without one, new messages are dropped.
    max_pending_bytes: int = 64 * 1024 * 1024
    #: The outbox: a directory of this publisher's own (None: no outbox), its most bytes.
    outbox_dir: str | None = None
    outbox_max_bytes: int = 1024**3
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


class _Lane:
    """One part's messages, oldest first: ``inflight`` (being published), then ``disk``
    (the outbox's segment), then ``messages`` (memory, where producers append)."""

    __slots__ = ("active", "disk", "ended", "from_disk", "inflight", "init_seq", "messages",
                 "spilling")

    def __init__(self) -> None:
        self.messages: deque[Outgoing] = deque()
        self.inflight: Outgoing | None = None
        self.from_disk = False
        self.disk: Segment | None = None
        self.spilling = False
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
        self._pending_bytes = 0  # not acknowledged yet: memory, disk, in flight
        self._pending_messages = 0
        self._memory_bytes = 0  # of them, in memory
        self._outbox_bytes = 0  # of them, on disk
        self._outbox_messages = 0
        self._replayed = itertools.count(-1, -1)  # lane ids of outbox files of earlier runs
        self._spill_wake = threading.Event()
        self._spiller: threading.Thread | None = None
        self._outbox = Path(config.outbox_dir) if config.outbox_dir else None
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
        self.spilled_messages = 0

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
        if self._outbox is not None:
            self._outbox.mkdir(parents=True, exist_ok=True)
            self._replay()
            self._spiller = threading.Thread(target=self._spill_loop, name="bus-outbox",
                                             daemon=True)
            self._spiller.start()

    def call(self, work: Callable[[Any], Coroutine[Any, Any, T]], timeout: float) -> T:
        """Run ``work(js)`` (a coroutine on the JetStream context) on the publisher's loop
        and wait up to ``timeout`` for its result (from another thread: never the loop's).
        ``BusError`` when the publisher is not connected or on timeout; else what ``work``
        raises."""
        if self._loop is None or self._js is None:
            raise BusError(f"{self.where()}: not connected")
        future = asyncio.run_coroutine_threadsafe(work(self._js), self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:  # TimeoutError itself from 3.11 on
            future.cancel()
            raise BusError(f"{self.where()}: no answer in {timeout:g} s") from None

    def spawn(self, work: Callable[[Any], Coroutine[Any, Any, Any]]) -> None:
        """Run ``work(js)`` on the publisher's loop without waiting (errors are logged)."""
        if self._loop is None or self._js is None:
            return

        async def run() -> None:
            try:
                await work(self._js)
            except Exception as exc:
                log.warning("%s: %s", self.where(), exc or type(exc).__name__)

        with contextlib.suppress(RuntimeError):  # the loop is closed
            asyncio.run_coroutine_threadsafe(run(), self._loop)

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
        """Wait up to ``timeout`` for what is queued to be published, then disconnect. What
        is left goes to the outbox (published at the next start) or, without one, is
        counted as dropped. False if messages were left."""
        if self._loop is None:
            return True
        deadline = self._clock() + timeout
        with self._drained:
            self._closed = True
            while self._pending_messages and self._clock() < deadline:
                self._drained.wait(max(0.0, deadline - self._clock()))
        self._stop_loop()
        if self._spiller is not None:
            self._spill_wake.set()
            self._spiller.join(10.0)
        with self._lock:
            left, left_bytes = self._pending_messages, self._pending_bytes
        if left and self._outbox is not None:
            kept = self._keep_all()
            log.warning("%s: %d message(s) (%d bytes) not published at close: %d kept in the "
                        "outbox %s for the next start", self.where(), left, left_bytes, kept,
                        self._outbox)
            left -= kept
        elif left:
            log.warning("%s: %d message(s) (%d bytes) not published at close", self.where(),
                        left, left_bytes)
        with self._lock:
            if left:
                self.dropped_messages += left
                self.dropped_bytes += left_bytes if self._outbox is None else 0
            for lane in self._lanes.values():
                if lane.disk is not None:
                    lane.disk.close()
                    lane.disk = None
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
        them). Never blocks on the bus or the disk."""
        wake: _Lane | None = None
        spill = False
        now = self._clock()
        with self._lock:
            lane = self._lanes.get(lane_id)
            if lane is None:
                lane = self._lanes[lane_id] = _Lane()
            limit = self.config.max_pending_bytes
            hard = limit * 2 if self._outbox is not None else limit
            for message in messages:
                size = len(message.payload)
                if self._closed or (self._memory_bytes + size > hard
                                    and message.kind != "end"):
                    self.dropped_messages += 1
                    self.dropped_bytes += size
                    continue
                message.queued_at = now
                lane.messages.append(message)
                self._memory_bytes += size
                self._pending_bytes += size
                self._pending_messages += 1
            spill = self._outbox is not None and self._memory_bytes > limit
            lane.ended = lane.ended or last
            if lane.messages and not lane.active:
                lane.active = True
                wake = lane
            elif not lane.messages and not lane.active and lane.ended:
                self._lanes.pop(lane_id, None)
        if spill:
            self._spill_wake.set()
        if wake is not None and self._loop is not None:
            # RuntimeError: the loop is closed; close() counted what is left.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._spawn, lane_id, wake)

    def new_lane(self) -> int:
        """A lane id of no part of this process (for messages of parts it did not record:
        an earlier run's outbox, its recovered parts)."""
        with self._lock:
            return next(self._replayed)

    def memory_bytes(self) -> int:
        """Bytes waiting in memory (not yet in the outbox or published)."""
        with self._lock:
            return self._memory_bytes

    def _spawn(self, lane_id: int, lane: _Lane) -> None:
        task = asyncio.get_running_loop().create_task(self._drain(lane_id, lane))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, lane_id: int, lane: _Lane) -> None:
        delay = self.config.retry_base
        while True:
            read = False
            with self._lock:
                message = lane.inflight
                if message is None:
                    if lane.spilling:  # its messages are on their way to the disk
                        pass
                    elif lane.disk is not None and lane.disk.count:
                        read = True
                    elif lane.messages:
                        message = lane.inflight = lane.messages.popleft()
                        lane.from_disk = False
                    else:
                        self._lane_done(lane_id, lane)
                        return
            if message is None and not read:
                await asyncio.sleep(0.005)
                continue
            if read:
                assert lane.disk is not None
                message = await asyncio.to_thread(lane.disk.peek)
                if message is None:
                    continue
                with self._lock:
                    lane.inflight, lane.from_disk = message, True
            assert message is not None
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
            size = len(message.payload)
            with self._lock:
                lane.inflight = None
                if lane.from_disk:
                    assert lane.disk is not None
                    lane.disk.advance()
                    self._outbox_bytes -= size
                    self._outbox_messages -= 1
                else:
                    self._memory_bytes -= size
                self._pending_bytes -= size
                self._pending_messages -= 1
                self.published_messages += 1
                self.published_bytes += size

    def _lane_done(self, lane_id: int, lane: _Lane) -> None:
        """Under the lock: nothing left to publish in the lane now."""
        lane.active = False
        if lane.disk is not None:
            lane.disk.remove()
            lane.disk = None
        if lane.ended:
            self._lanes.pop(lane_id, None)
        self._drained.notify_all()

    # ------------------------------------------------------------------ the outbox

    def _spill_loop(self) -> None:
        while True:
            self._spill_wake.wait()
            self._spill_wake.clear()
            if self._loop is None:
                return
            try:
                self._spill(self.config.max_pending_bytes // 2)
            except Exception as exc:  # the outbox is best effort: memory and drops remain
                log.error("bus outbox: %r", exc)

    def _spill(self, target: int) -> None:
        """Move the lanes' messages in memory to their segments on disk, the biggest lanes
        first, until memory holds ``target`` bytes or less."""
        assert self._outbox is not None
        with self._lock:
            lanes = sorted(self._lanes.items(), key=lambda item: -len(item[1].messages))
        for lane_id, lane in lanes:
            with self._lock:
                if self._memory_bytes <= target:
                    return
                if not lane.messages or lane.spilling:
                    continue
                moved = list(lane.messages)
                size = sum(len(m.payload) for m in moved)
                if self._outbox_bytes + size > self.config.outbox_max_bytes:
                    continue
                lane.messages.clear()
                lane.spilling = True
                self._memory_bytes -= size
                self._outbox_bytes += size
                self._outbox_messages += len(moved)
            try:
                if lane.disk is None:
                    lane.disk = Segment(self._segment_path(lane_id))
                lane.disk.append(moved)
            except OSError as exc:
                log.error("bus outbox: cannot write %d message(s): %s (they stay in memory)",
                          len(moved), exc)
                with self._lock:
                    lane.messages.extendleft(reversed(moved))
                    self._memory_bytes += size
                    self._outbox_bytes -= size
                    self._outbox_messages -= len(moved)
                    lane.spilling = False
                return
            with self._lock:
                lane.spilling = False
                self.spilled_messages += len(moved)

    def _segment_path(self, lane_id: int) -> Path:
        assert self._outbox is not None
        return self._outbox / f"{time.time_ns():020d}-{os.getpid()}-{abs(lane_id)}{SUFFIX}"

    def _replay(self) -> None:
        """The outbox files of an earlier run: one lane each, published like the others."""
        assert self._outbox is not None
        found = 0
        for path in sorted(self._outbox.glob(f"*{SUFFIX}")):
            try:
                segment = Segment(path, existing=True)
            except OSError as exc:
                log.error("bus outbox: cannot read %s: %s", path, exc)
                continue
            if not segment.count:
                segment.remove()
                continue
            lane = _Lane()
            lane.disk, lane.ended, lane.active = segment, True, True
            lane_id = self.new_lane()
            with self._lock:
                self._lanes[lane_id] = lane
                self._pending_messages += segment.count
                self._pending_bytes += segment.bytes
                self._outbox_messages += segment.count
                self._outbox_bytes += segment.bytes
            found += segment.count
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._spawn, lane_id, lane)
        if found:
            log.info("%s: publishing %d message(s) left in the outbox %s by an earlier run",
                     self.where(), found, self._outbox)

    def _keep_all(self) -> int:
        """At close, with the loop stopped: every lane's unpublished messages into one
        outbox file per lane, in order; the messages kept."""
        with self._lock:
            lanes = list(self._lanes.items())
        for lane_id, lane in lanes:
            older = [lane.inflight] if lane.inflight is not None and not lane.from_disk else []
            rest = list(lane.messages)
            if not older and not rest:
                continue
            try:
                if older and lane.disk is not None and lane.disk.count:
                    fresh = Segment(self._segment_path(lane_id))
                    fresh.append([*older, *lane.disk.unpublished(), *rest])
                    lane.disk.remove()
                    lane.disk = fresh
                else:
                    if lane.disk is None:
                        lane.disk = Segment(self._segment_path(lane_id))
                    lane.disk.append([*older, *rest])
            except OSError as exc:
                log.error("bus outbox: cannot keep %d message(s): %s", len(older) + len(rest),
                          exc)
                continue
            lane.messages.clear()
            lane.inflight = None
        with self._lock:
            return sum(int(lane.disk.count) for lane in self._lanes.values()
                       if lane.disk is not None)

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
                "outbox_messages": self._outbox_messages,
                "outbox_bytes": self._outbox_bytes,
                "spilled_messages": self.spilled_messages,
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
