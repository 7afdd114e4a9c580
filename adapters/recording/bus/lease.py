"""Sessions that move between the receivers of a fleet: a lease per stream (bot and speaker)
in JetStream's key-value store (``docs/bus.md``, "A fleet").

Each receiver started with ``--nats`` writes, for every stream it records, the lease
``meetstream.{bot}.{speaker}`` in the bucket :data:`BUCKET`: which node has it, the session's
start (its files are named after it), its last part number and connections, and whether it is
``live`` or ``paused`` (the bot's connection dropped: the node waits ``--reconnect-grace``).
A live stream's lease is rewritten every third of the grace (at most every 20 s: a
heartbeat), so a lease older than the grace is one whose node stopped (killed, cut off from
NATS). When a bot's reconnect lands on another node (its node went down, the balancer
rebalanced), that node finds the lease (written within the grace) and continues the session
as its next numbered part: the same session start, the next part number, on its own disk and
the bus. The lease is written with a compare-and-set (the revision it read): a node never
overwrites a lease another node took (the heartbeat rewrites only the node's own lease of
that very part), and it deletes the lease at the session's end only if it is still its own.
The bucket's TTL (twice the grace, at least a minute) forgets leases of nodes that died.

:class:`LeaseSink` keeps the leases (inline, writes in the publisher's loop, never waits);
:class:`Leases.lookup` is what the recorder asks when a stream starts that it has no session
for (it waits up to ``timeout`` for NATS, then starts a new session).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from meetstream_live.adapters.recording.sinks import (
    Part,
    PartClosed,
    PartOpened,
    Sink,
    SinkEvent,
    SinkSet,
    StreamPaused,
    StreamResumed,
)

from .publisher import BusError, Publisher
from .subjects import StreamKey

__all__ = ["BUCKET", "Lease", "LeaseSink", "Leases", "node_name"]

log = logging.getLogger("meetstream_live.bus")

#: The key-value bucket of the leases.
BUCKET = "MEETSTREAM_SESSIONS"


def node_name() -> str:
    """This receiver in a lease: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Lease:
    """One stream's lease (see the module). ``at_ms``: when it was written (wall clock)."""

    node: str
    session_ms: int
    part: int
    connections: int
    state: str
    at_ms: int

    def encode(self) -> bytes:
        return json.dumps({"node": self.node, "session_ms": self.session_ms, "part": self.part,
                           "connections": self.connections, "state": self.state,
                           "at_ms": self.at_ms}, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Lease:
        doc = json.loads(data)
        return cls(str(doc["node"]), int(doc["session_ms"]), int(doc["part"]),
                   int(doc["connections"]), str(doc["state"]), int(doc["at_ms"]))


def _key(bot_id: str, speaker: str) -> str:
    return StreamKey(bot_id, speaker or None).subject("lease")


class Leases:
    """The leases of one bucket, through ``publisher``'s connection. ``grace``: how long a
    lease stays good after it was written while its stream is paused (the receivers'
    ``--reconnect-grace``); ``node``: this receiver's name."""

    def __init__(self, publisher: Publisher, *, grace: float, node: str | None = None,
                 timeout: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.publisher = publisher
        self.grace = grace
        self.node = node or node_name()
        self.timeout = timeout
        self.clock = clock
        self._kv: Any = None

    def start(self) -> None:
        """Create the bucket if absent (TTL: twice the grace, at least a minute); once."""
        if self._kv is not None:
            return

        async def ensure(js: Any) -> Any:
            from nats.js.api import KeyValueConfig, StorageType
            from nats.js.errors import BucketNotFoundError

            try:
                return await js.key_value(BUCKET)
            except BucketNotFoundError:
                return await js.create_key_value(KeyValueConfig(
                    bucket=BUCKET, ttl=max(60.0, 2 * self.grace), storage=StorageType.FILE,
                    replicas=self.publisher.config.limits.replicas,
                    description="meetstream-live: which receiver has each stream's session"))

        self._kv = self.publisher.call(ensure, self.publisher.config.connect_timeout * 2)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def lookup(self, bot_id: str, speaker: str) -> Lease | None:
        """The lease of another node this stream may continue (within the grace), or None
        (none, ours, too old, or NATS did not answer within ``timeout``: logged)."""
        _, lease = self.read(bot_id, speaker)
        if lease is None or lease.node == self.node or self.stale(lease):
            return None
        return lease

    def stale(self, lease: Lease) -> bool:
        """Written more than the grace ago: its node stopped (a live lease has a heartbeat)."""
        return self._now_ms() - lease.at_ms > self.grace * 1000

    def read(self, bot_id: str, speaker: str) -> tuple[bool, Lease | None]:
        """``(answered, lease)``: whether the bucket answered within ``timeout`` (False:
        logged), and the stream's lease as it is there (None: there is none)."""
        if self._kv is None:
            return False, None
        kv, key = self._kv, _key(bot_id, speaker)

        async def get(js: Any) -> bytes | None:
            from nats.js.errors import KeyNotFoundError

            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                return None
            value: bytes | None = entry.value
            return value

        try:
            data = self.publisher.call(get, self.timeout)
        except (BusError, OSError) as exc:
            log.warning("session lease of bot %s: %s; starting a new session", bot_id, exc)
            return False, None
        if not data:
            return True, None
        try:
            return True, Lease.decode(data)
        except (ValueError, KeyError, TypeError):
            return True, None

    def write(self, bot_id: str, speaker: str, make: Callable[[Lease | None], Lease | None],
              *, delete: bool = False) -> None:
        """Compare-and-set, in the background: ``make(current)`` gives the new lease (None:
        leave it); with ``delete``, the lease is deleted if it is still this node's."""
        if self._kv is None:
            return
        kv, key, node = self._kv, _key(bot_id, speaker), self.node

        async def update(js: Any) -> None:
            from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

            try:
                entry = await kv.get(key)
                current, revision = Lease.decode(entry.value or b"{}"), entry.revision
            except (KeyNotFoundError, ValueError, KeyError):
                current, revision = None, 0
            if delete:
                if current is not None and current.node == node:
                    await kv.delete(key, last=revision)
                return
            lease = make(current)
            if lease is None:
                return
            try:
                await kv.update(key, lease.encode(), last=revision)
            except KeyWrongLastSequenceError:  # another node wrote it meanwhile: theirs
                log.info("session lease of bot %s: taken by another receiver", bot_id)

        self.publisher.spawn(update)


class LeaseSink(Sink):
    """Writes this node's lease of every stream it records (see the module), and rewrites
    the lease of each stream still live every ``refresh`` seconds (a heartbeat: default a
    third of the grace, at most 20 s), so that a lease older than the grace is one whose node
    stopped (killed, cut off from NATS): its stream may be continued elsewhere."""

    name: ClassVar[str] = "lease"
    accepts: ClassVar[tuple[type[SinkEvent], ...]] = (
        PartOpened, StreamPaused, StreamResumed, PartClosed)
    when_full: ClassVar[Literal["block", "drop"]] = "drop"
    runs: ClassVar[Literal["thread", "inline"]] = "inline"

    def __init__(self, leases: Leases, *, refresh: float | None = None) -> None:
        self.leases = leases
        self.refresh = refresh if refresh is not None else max(
            0.2, min(leases.grace / 3, 20.0))
        self._lock = threading.Lock()
        self._live: dict[tuple[str, str], Part] = {}  # the streams live here, their parts
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def start(self, sinks: SinkSet) -> None:
        self.leases.start()

    def close(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(5.0)

    def handle(self, part: Part, events: Sequence[SinkEvent]) -> None:
        if part.bot_id is None:
            return
        speaker = part.speaker or ""
        key = (part.bot_id, speaker)
        for event in events:
            if isinstance(event, PartClosed):
                self._not_live(key, part)
                if event.summary.get("session_over"):
                    self.leases.write(part.bot_id, speaker, lambda _: None, delete=True)
            elif isinstance(event, StreamPaused):
                self._not_live(key, part)  # the grace counts from the pause: no heartbeat
                self._put(part, speaker, "paused", 0)
            else:  # a part opened (by a reconnect: one connection more), or a part resumed
                more = 1 if isinstance(event, StreamResumed) or part.why == "reconnect" else 0
                self._put(part, speaker, "live", more)
                with self._lock:
                    self._live[key] = part
                    if self._beat is None and not self._stop.is_set():
                        self._beat = threading.Thread(target=self._heartbeat,
                                                      name="bus-leases", daemon=True)
                        self._beat.start()

    def _not_live(self, key: tuple[str, str], part: Part) -> None:
        with self._lock:
            if self._live.get(key) is part:
                del self._live[key]

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.refresh):
            with self._lock:
                live = list(self._live.items())
            for (_, speaker), part in live:
                self._put(part, speaker, "live", 0, refresh=True)

    def _put(self, part: Part, speaker: str, state: str, more: int, *,
             refresh: bool = False) -> None:
        leases = self.leases
        session = part.session_started_ms or part.started_ms

        def make(current: Lease | None) -> Lease | None:
            now = leases._now_ms()
            if refresh:  # only this node's lease of this very part: never one taken over
                if current is None or (current.node, current.session_ms, current.part) != (
                        leases.node, session, part.number):
                    return None
                return Lease(leases.node, session, part.number, current.connections, state,
                             now)
            connections = 1
            if current is not None and current.session_ms == session:
                connections = current.connections + more
            if current is not None and current.node != leases.node:
                stale = now - current.at_ms > leases.grace * 1000
                if not stale and (current.session_ms != session or current.part > part.number):
                    return None  # another node's session: not ours to overwrite
            return Lease(leases.node, session, part.number, connections, state, now)

        assert part.bot_id is not None
        leases.write(part.bot_id, speaker, make)
