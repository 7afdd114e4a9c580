"""The fan-out point: every live stream's events go to any number of independent sinks.

The recorder (:class:`~.recorder.Recorder`) turns each connection's core events into the events
of a *part* (one output of a stream: see :class:`Part`) and publishes them here, to a
:class:`SinkSet`. Each :class:`Sink` receives the event types it :attr:`~Sink.accepts`, through
its own :class:`SinkRunner`: its own bounded queue per part, its own threads, its own failure
domain. The shapes are GStreamer's ``tee`` + ``queue`` and Vector's sink buffers:

* **Ordering.** A sink sees the events of one part in the order they were published, one batch
  at a time; batches of different parts may run at once on the sink's threads.
* **Never in a pong's way.** :meth:`SinkSet.publish` only appends to queues (no I/O, no wait);
  a sink's work runs in its threads (``runs = "thread"``) or, for work that cannot block (an
  index in memory), in the publisher's thread (``runs = "inline"``, thread-safe).
* **When a queue is full**, the sink's :attr:`~Sink.when_full` decides, written next to it:

  - ``"block"``: durable in memory (the local file): the media bytes queued count in the
    connection's :class:`~meetstream_live.adapters.Backlog`, so that the adapter stops reading
    the bot's socket while the sink is behind; nothing is dropped. (The bot's pings wait in
    the kernel then: use it only for the sink that must have every byte.)
  - ``"drop"``: live sinks (viewers, a bus with an outbox of its own): events over the limit
    are not queued; the sink gets one :class:`Dropped` in their place, in order, and resyncs
    (the next keyframe, its outbox on disk).

* **Failures stay in the sink.** An exception from :meth:`Sink.handle` is counted and logged
  (once per part, then every :data:`LOG_EVERY`), :meth:`Sink.recover` is asked whether to go
  on; after :attr:`SinkRunner.max_failures` failures in a row on one part the part is marked
  *failed* for that sink: its later events are dropped and counted, never silently. The stream,
  the other sinks and the other parts go on.
* **Visible.** :meth:`SinkSet.stats` (backlog bytes and events, lag, errors, drops, failed
  parts, per sink) feeds ``/metrics``; :meth:`SinkSet.part_report` what one part's sidecar says
  about each sink.

Two kinds of producers publish: the recorder (the stream model: :class:`PartOpened`,
:class:`Chunk`, :class:`InitSeen`, :class:`FragmentSeen`, :class:`Note`, :class:`PingSeen`,
:class:`StreamPaused`, :class:`StreamResumed`, :class:`PartClosed`) and the file sink, whose
events say what is on disk (:class:`FragmentStored`, :class:`PartFinalized`) for the sinks that
follow the file (object storage, HLS, hooks). See ``docs/architecture.md`` ("How to write a new
sink").
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from meetstream_live import FragmentComplete, InitSegment, StreamStarted
from meetstream_live.adapters import Backlog, ConnectionInfo

if TYPE_CHECKING:
    from .sidecar import FinishedRecording

__all__ = [
    "LOG_EVERY",
    "Chunk",
    "Dropped",
    "FragmentSeen",
    "FragmentStored",
    "InitSeen",
    "Note",
    "Part",
    "PartAmended",
    "PartClosed",
    "PartFinalized",
    "PartOpened",
    "PingSeen",
    "Sink",
    "SinkEvent",
    "SinkRunner",
    "SinkSet",
    "SinkStats",
    "StreamPaused",
    "StreamResumed",
]

log = logging.getLogger("meetstream_live.sinks")

#: After the first failure of a sink on a part, one log line per this many failures.
LOG_EVERY = 100

_ids = itertools.count(1)


@dataclass(frozen=True, slots=True, eq=False)
class Part:
    """One output of a stream: what a sidecar describes. A stream starts with part 1; it goes on
    in the next part when it is rotated (``rotate_every``), when a new init segment arrives, and
    when a reconnect cannot continue the part it left. ``key`` (``(bot_id, speaker)``) is the
    same for every part of a session. Parts compare by identity."""

    session: int
    number: int
    key: tuple[str, str] | None
    bot_id: str | None
    speaker: str | None
    started_ms: int
    #: What started it: ``start``, ``rotated``, ``new_init``, ``reconnect``, ``superseded``.
    why: str
    start: StreamStarted | None
    info: ConnectionInfo
    #: When the session's first part started (``None``: this part's ``started_ms``); the
    #: session's files are named after it.
    session_started_ms: int | None = None
    #: Unique in this process (for logs and maps).
    id: int = field(default_factory=lambda: next(_ids))


# ------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class SinkEvent:
    """Base of every event a sink gets; ``part`` says which output it belongs to."""

    part: Part


@dataclass(frozen=True, slots=True)
class PartOpened(SinkEvent):
    """A part begins (its first event). Earlier parts of the same session have had their
    :class:`PartClosed`."""


@dataclass(frozen=True, slots=True)
class Chunk(SinkEvent):
    """Bytes of the part, in order: ``offset`` is where ``data[0]`` goes in the part (0 for
    its first byte; a part that starts with a copy of the init segment gets it as its first
    chunk). ``backlog`` is the producing connection's, for ``"block"`` sinks."""

    offset: int
    data: bytes
    backlog: Backlog | None = None


@dataclass(frozen=True, slots=True)
class InitSeen(SinkEvent):
    """An init segment (``ftyp`` + ``moov``) is complete at part offset ``offset``."""

    offset: int
    segment: InitSegment


@dataclass(frozen=True, slots=True)
class FragmentSeen(SinkEvent):
    """A complete fragment (``moof`` + ``mdat``) spans ``size`` bytes from part offset
    ``offset``; published after the :class:`Chunk` holding its last byte. ``keyframe`` is whether
    its video starts with a sync sample (``None``: the fMP4 does not say); ``seconds`` its media
    time."""

    offset: int
    size: int
    fragment: FragmentComplete
    keyframe: bool | None
    seconds: float


@dataclass(frozen=True, slots=True)
class Note(SinkEvent):
    """A warning about the stream (``source``: ``protocol`` or ``recorder``; ``kind`` as in
    the sidecar's ``warnings``)."""

    source: str
    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class PingSeen(SinkEvent):
    """A latency ping was answered; ``latency_ms`` is our receive time minus its
    ``sent_at_ms`` (``None`` without one)."""

    seq: int | None
    latency_ms: float | None


@dataclass(frozen=True, slots=True)
class StreamPaused(SinkEvent):
    """The part's connection dropped with the stream open: the part waits ``grace`` seconds
    for a reconnect; its bytes end at part offset ``upto`` (a fragment boundary) unless the
    part is finalized without one."""

    upto: int
    grace: float


@dataclass(frozen=True, slots=True)
class StreamResumed(SinkEvent):
    """A reconnect continues the paused part (``info``: the new connection); chunks go on
    after ``upto`` of the :class:`StreamPaused`."""

    info: ConnectionInfo


@dataclass(frozen=True, slots=True)
class PartClosed(SinkEvent):
    """No more bytes for this part. ``summary`` holds the stream's facts for the sidecar (see
    :func:`~.sidecar.build_sidecar`): fragments, completeness, pings, warnings, end reason."""

    summary: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PartAmended(SinkEvent):
    """After :class:`PartClosed`: stream facts about the part learned later, for the sinks
    that keep a record of it (the sidecar): ``fields`` replace those of the summary (today
    ``ignored_bytes``, what a superseded connection sent after it was superseded). It ends
    the part's queue again, like a terminal event."""

    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Dropped(SinkEvent):
    """In place of events a ``"drop"`` sink's queue had no room for: ``events`` events and
    ``bytes`` bytes of media of this part are missing before the next event."""

    events: int
    bytes: int


# Published by the file sink: what is on disk.


@dataclass(frozen=True, slots=True)
class FragmentStored(SinkEvent):
    """A fragment (or the init segment, ``fragment`` ``None``) is written to the part's file
    ``path``: ``size`` bytes at file offset ``file_offset`` (the file may lack bytes the disk
    had no room for, so file offsets are not always part offsets)."""

    path: Path
    file_offset: int
    size: int
    fragment: FragmentComplete | None
    keyframe: bool | None
    seconds: float


@dataclass(frozen=True, slots=True)
class PartFinalized(SinkEvent):
    """The part's file is final (fsynced, renamed) and its sidecar written."""

    recording: FinishedRecording


#: The event that ends a part's queue, for a sink that accepts it.
_TERMINAL: tuple[type[SinkEvent], ...] = (PartFinalized, PartClosed)
#: Published after the terminal event: it ends the queue it reopened.
_AFTERWARDS: tuple[type[SinkEvent], ...] = (PartAmended,)


# --------------------------------------------------------------------------------- sinks


class Sink:
    """A consumer of stream events. Subclass it; the class attributes are its contract.

    ``handle`` is called with one part's events, in order, in the sink's threads (or inline,
    see :attr:`runs`); it may block (a write, an upload). Raising is a failure of this sink on
    this part only (see the module).
    """

    #: The name in metrics, logs and sidecars.
    name: ClassVar[str] = "sink"
    #: Event types this sink receives; the others are never queued for it.
    accepts: ClassVar[tuple[type[SinkEvent], ...]] = (SinkEvent,)
    #: What happens when its queue is full: see the module.
    when_full: ClassVar[Literal["block", "drop"]] = "drop"
    #: ``"thread"``: :meth:`handle` runs in the sink's own threads; ``"inline"``: in the
    #: publisher's thread (the event loop, a handler thread, the file sink's thread), so only
    #: for work that never blocks, and thread-safe.
    runs: ClassVar[Literal["thread", "inline"]] = "thread"
    #: Threads for ``runs = "thread"`` (each part is handled by one at a time).
    threads: ClassVar[int] = 2
    #: The queue of one part: media bytes and events (whichever is reached first).
    max_queue_bytes: ClassVar[int] = 8 * 1024 * 1024
    max_queue_events: ClassVar[int] = 10_000
    #: Seconds a thread that emptied a part's queue waits before it looks again and gives
    #: the thread back if nothing came, when no other part waits for a thread (a stream flat
    #: out then costs one thread wake-up per this, not one per read). 0: never waits.
    linger: ClassVar[float] = 0.0
    #: Media bytes a part's queue gathers before a thread is woken for it, unless an event
    #: other than a :class:`Chunk` comes (a fragment, a pause, the end) or someone waits
    #: (:meth:`SinkRunner.wait_idle`). 0: a thread for every call. For a sink whose work per
    #: chunk is small next to a thread's wake-up (the file sink: one write per fragment or
    #: per buffer anyway): many streams then cost a wake-up per buffer, not per read.
    batch_bytes: ClassVar[int] = 0

    def start(self, sinks: SinkSet) -> None:
        """Called once before any event, with the set the sink belongs to (to publish events
        of its own, e.g. the file sink). Raise here for what must stop ``serve`` at start
        (wrong credentials, a missing bucket)."""

    def handle(self, part: Part, events: Sequence[SinkEvent]) -> None:
        """Consume events of ``part``, in order."""
        raise NotImplementedError

    def recover(self, part: Part, exc: Exception) -> bool:
        """:meth:`handle` raised ``exc`` on ``part``: return True to hear of the part's next
        events (the default), False to give the part up at once (it is then failed)."""
        return True

    def abandon(self, part: Part, exc: Exception) -> None:
        """The part is failed for this sink (no more events of it will come): clean up."""

    def close(self) -> None:
        """Every queued event was handled (or the wait timed out): release resources."""

    def report(self, part: Part) -> dict[str, Any]:
        """What this sink adds about ``part`` to its sidecar (under ``sinks.<name>``)."""
        return {}


@dataclass
class SinkStats:
    """One sink's numbers, for ``/metrics`` (all counters since start, gauges now)."""

    name: str
    when_full: str
    #: Queued or being handled.
    backlog_bytes: int = 0
    backlog_events: int = 0
    lag_seconds: float = 0.0
    handled_events: int = 0
    errors: int = 0
    dropped_events: int = 0
    dropped_bytes: int = 0
    failed_parts: int = 0
    parts: int = 0


class _Lane:
    """One part's queue for one sink."""

    __slots__ = (
        "bytes",
        "dropped_bytes",
        "dropped_events",
        "errors",
        "events",
        "failed",
        "failures_in_row",
        "max_lag",
        "part",
        "running",
        "since",
    )

    def __init__(self, part: Part) -> None:
        self.part = part
        self.events: deque[tuple[SinkEvent, int, float]] = deque()  # (event, media bytes, at)
        self.bytes = 0
        self.running = False
        self.since = 0.0  # when the oldest queued event was queued (monotonic)
        self.failed = False
        self.failures_in_row = 0
        self.errors = 0
        self.dropped_events = 0
        self.dropped_bytes = 0
        self.max_lag = 0.0


def _media(event: SinkEvent) -> int:
    return len(event.data) if type(event) is Chunk else 0


class SinkRunner:
    """Runs one :class:`Sink`: per-part queues, the sink's threads, its failure policy.

    Thread-safe. :meth:`submit` never blocks and never raises for the sink's sake.
    """

    #: Failures in a row on one part after which the part is failed for this sink.
    max_failures = 3
    #: Batches one thread handles for a part before it gives the thread back to other parts.
    max_rounds = 16

    def __init__(self, sink: Sink, clock: Any = time.monotonic) -> None:
        self.sink = sink
        self.name = sink.name
        self._accepts = sink.accepts
        #: The event types queued for the sink (:attr:`Sink.accepts`).
        self.accepted_types = sink.accepts
        terminal = next((t for t in _TERMINAL if issubclass(t, sink.accepts)), None)
        self._terminal: tuple[type[SinkEvent], ...] | None = (
            None if terminal is None else (terminal, *_AFTERWARDS)
        )
        self._clock = clock
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._lanes: dict[int, _Lane] = {}
        self._inline = sink.runs == "inline"
        self._executor: ThreadPoolExecutor | None = None
        if not self._inline:
            self._executor = ThreadPoolExecutor(
                max(1, sink.threads), thread_name_prefix=f"sink-{sink.name}"
            )
        self._closed = False
        self._waiting = 0  # drains submitted to the executor, not started yet
        self.stats = SinkStats(sink.name, sink.when_full)
        #: Reports of parts whose queue ended, kept until :meth:`report` takes them (bounded).
        self._ended: dict[int, dict[str, Any]] = {}

    def accepts(self, event: SinkEvent) -> bool:
        return isinstance(event, self._accepts)

    # ------------------------------------------------------------------ queueing

    def submit(self, part: Part, events: Sequence[SinkEvent]) -> None:
        """Queue ``events`` (of ``part``, already filtered to what the sink accepts)."""
        if self._inline:
            self._handle_inline(part, events)
            return
        block = self.sink.when_full == "block"
        start = False
        now = self._clock()
        with self._lock:
            lane = self._lanes.get(part.id)
            if lane is None:
                lane = self._lanes[part.id] = _Lane(part)
                if part.id not in self._ended:  # not reopened by a PartAmended
                    self.stats.parts += 1
            if lane.failed or self._closed:
                self._drop(lane, events)
                return
            stats = self.stats
            counted: Backlog | None = None  # one add() per connection and call, not per chunk
            uncounted = 0
            for event in events:
                size = _media(event)
                if not block and (
                    lane.bytes + size > self.sink.max_queue_bytes
                    or len(lane.events) >= self.sink.max_queue_events
                ):
                    self._mark_dropped(lane, size)
                    continue
                if not lane.events and not lane.running:
                    lane.since = now  # the age of what waits or is being handled
                lane.events.append((event, size, now))
                lane.bytes += size
                stats.backlog_bytes += size
                stats.backlog_events += 1
                if block and size:
                    backlog = event.backlog  # type: ignore[attr-defined]
                    if backlog is not counted:
                        if counted is not None:
                            counted.add(uncounted)
                        counted, uncounted = backlog, 0
                    uncounted += size
            if counted is not None and uncounted:
                counted.add(uncounted)
            due = (
                lane.bytes >= self.sink.batch_bytes
                or any(type(event) is not Chunk for event in events)
                or (counted is not None and counted.over)  # the reader waits for it
            )
            if not lane.running and lane.events and due:
                lane.running = start = True
            elif lane.running and due and self.sink.linger:
                self._idle.notify_all()  # a lingering thread takes them now
        if start:
            self._start(lane)

    def _mark_dropped(self, lane: _Lane, size: int) -> None:
        """Under the lock: one more event dropped for lack of room; a :class:`Dropped` stands
        in for the run of them, in order."""
        lane.dropped_events += 1
        lane.dropped_bytes += size
        self.stats.dropped_events += 1
        self.stats.dropped_bytes += size
        last = lane.events[-1][0] if lane.events else None
        if isinstance(last, Dropped):
            merged = Dropped(lane.part, last.events + 1, last.bytes + size)
            lane.events[-1] = (merged, 0, lane.events[-1][2])
        elif len(lane.events) < self.sink.max_queue_events + 1:
            if not lane.events:
                lane.since = self._clock()
            lane.events.append((Dropped(lane.part, 1, size), 0, self._clock()))
            self.stats.backlog_events += 1

    def _drop(self, lane: _Lane, events: Iterable[SinkEvent]) -> None:
        """Under the lock: events of a failed part (or after close), counted."""
        for event in events:
            size = _media(event)
            lane.dropped_events += 1
            lane.dropped_bytes += size
            self.stats.dropped_events += 1
            self.stats.dropped_bytes += size
            if self._terminal is not None and isinstance(event, self._terminal):
                self._end(lane)

    def _start(self, lane: _Lane) -> None:
        assert self._executor is not None
        with self._lock:
            self._waiting += 1
            if self.sink.linger:
                self._idle.notify_all()  # a lingering thread gives its place
        try:
            self._executor.submit(self._drain, lane)
        except RuntimeError:  # shut down (close timed out): finish here
            self._drain(lane)

    # ------------------------------------------------------------------ handling

    def _drain(self, lane: _Lane) -> None:
        linger = self.sink.linger
        with self._lock:
            self._waiting -= 1
        for _ in range(self.max_rounds):
            with self._lock:
                if (linger and not lane.events and not lane.failed and not self._closed
                        and not self._waiting):
                    self._idle.wait(linger)
                if not lane.events or lane.failed:
                    lane.running = False
                    if lane.failed:
                        self._discard(lane)
                    self._idle.notify_all()
                    return
                queued = list(lane.events)
                lane.events.clear()
                size = lane.bytes
                lane.bytes = 0
                now = self._clock()
                lag = now - lane.since
                if lag > lane.max_lag:
                    lane.max_lag = lag
            batch = [event for event, _, _ in queued]
            self._call(lane, batch)
            with self._lock:
                self.stats.backlog_bytes -= size
                self.stats.backlog_events -= len(batch)
                self.stats.handled_events += len(batch)
                if lane.events:
                    lane.since = lane.events[0][2]
                ended = self._terminal is not None and isinstance(batch[-1], self._terminal)
                if ended and not lane.events:
                    self._end(lane)
            if self.sink.when_full == "block":
                self._release(queued)
        # More rounds than allowed: give the thread back, go on at the queue's end.
        self._start(lane)

    def _call(self, lane: _Lane, batch: list[SinkEvent]) -> None:
        """``sink.handle``, with the failure policy."""
        part = lane.part
        try:
            self.sink.handle(part, batch)
        except Exception as exc:
            with self._lock:
                lane.errors += 1
                lane.failures_in_row += 1
                self.stats.errors += 1
                first = lane.errors == 1
                count = lane.errors
            if first or count % LOG_EVERY == 0:
                log.error("sink %s failed on bot %s part %d (%d failure(s)): %s", self.name,
                          part.bot_id, part.number, count, exc, exc_info=first,
                          extra={"event": "sink_failed", "sink": self.name,
                                 "bot_id": part.bot_id, "speaker": part.speaker,
                                 "part": part.number})
            go_on = False
            try:
                go_on = self.sink.recover(part, exc)
            except Exception as again:
                log.error("sink %s: recover failed: %r", self.name, again)
            if not go_on or lane.failures_in_row >= self.max_failures:
                self._fail(lane, exc)
        else:
            lane.failures_in_row = 0

    def _fail(self, lane: _Lane, exc: Exception) -> None:
        with self._lock:
            if lane.failed:
                return
            lane.failed = True
            self.stats.failed_parts += 1
        log.error("sink %s gave up bot %s part %d: its later events are dropped and counted",
                  self.name, lane.part.bot_id, lane.part.number,
                  extra={"event": "sink_gave_up", "sink": self.name,
                         "bot_id": lane.part.bot_id, "speaker": lane.part.speaker,
                         "part": lane.part.number})
        try:
            self.sink.abandon(lane.part, exc)
        except Exception as again:
            log.error("sink %s: abandon failed: %r", self.name, again)

    def _discard(self, lane: _Lane) -> None:
        """Under the lock: a failed lane's queued events, dropped and counted."""
        queued = list(lane.events)
        lane.events.clear()
        self.stats.backlog_bytes -= lane.bytes
        self.stats.backlog_events -= len(queued)
        lane.bytes = 0
        self._drop(lane, [event for event, _, _ in queued])
        if self.sink.when_full == "block":
            # Released outside the lock would be nicer; done() only calls a thread-safe hook.
            self._release(queued)

    @staticmethod
    def _release(queued: list[tuple[SinkEvent, int, float]]) -> None:
        """The media of handled (or dropped) events leaves their connections' backlogs (one
        ``done()`` per connection and batch)."""
        counted: Backlog | None = None
        uncounted = 0
        for event, size, _ in queued:
            if size:
                backlog = event.backlog  # type: ignore[attr-defined]
                if backlog is not counted:
                    if counted is not None:
                        counted.done(uncounted)
                    counted, uncounted = backlog, 0
                uncounted += size
        if counted is not None and uncounted:
            counted.done(uncounted)

    def _end(self, lane: _Lane) -> None:
        """Under the lock: the part's queue is over (its terminal event was handled)."""
        self._lanes.pop(lane.part.id, None)
        self._ended[lane.part.id] = self._lane_report(lane)
        while len(self._ended) > 1000:
            self._ended.pop(next(iter(self._ended)))

    def _handle_inline(self, part: Part, events: Sequence[SinkEvent]) -> None:
        with self._lock:
            lane = self._lanes.get(part.id)
            if lane is None:
                lane = self._lanes[part.id] = _Lane(part)
                self.stats.parts += 1
            if lane.failed:
                self._drop(lane, events)
                return
            self.stats.handled_events += len(events)
        self._call(lane, list(events))
        if self._terminal is not None and events and isinstance(events[-1], self._terminal):
            with self._lock:
                self._end(lane)

    # ------------------------------------------------------------------ reading

    def _lane_report(self, lane: _Lane) -> dict[str, Any]:
        return {
            "state": "failed" if lane.failed else "ok",
            "errors": lane.errors,
            "dropped_events": lane.dropped_events,
            "dropped_bytes": lane.dropped_bytes,
            "max_lag_seconds": round(lane.max_lag, 3),
            "backlog_events": len(lane.events),
        }

    def report(self, part: Part) -> dict[str, Any]:
        """This sink's state for ``part`` (its sidecar's ``sinks.<name>``)."""
        with self._lock:
            lane = self._lanes.get(part.id)
            doc = self._lane_report(lane) if lane is not None else self._ended.get(part.id)
        doc = dict(doc) if doc is not None else {"state": "ok", "errors": 0}
        try:
            doc.update(self.sink.report(part))
        except Exception as exc:
            log.error("sink %s: report failed: %r", self.name, exc)
        return doc

    def snapshot(self) -> SinkStats:
        now = self._clock()
        with self._lock:
            stats = SinkStats(**vars(self.stats))
            stats.lag_seconds = max(
                (now - lane.since for lane in self._lanes.values() if lane.events or lane.running),
                default=0.0,
            )
        return stats

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait until every queue is empty and no batch runs; False on timeout."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._lock:  # what gathers for a batch (batch_bytes) goes now
            gathering = [lane for lane in self._lanes.values()
                         if lane.events and not lane.running]
            for lane in gathering:
                lane.running = True
        for lane in gathering:
            self._start(lane)
        with self._idle:
            while any(lane.events or lane.running for lane in self._lanes.values()):
                remaining = None if deadline is None else deadline - self._clock()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def close(self, timeout: float | None = 30.0) -> bool:
        """Let the queues drain (up to ``timeout``), then close the sink; False if events
        were left (they are counted as dropped)."""
        drained = self.wait_idle(timeout)
        with self._lock:
            self._closed = True
            if not drained:
                for lane in list(self._lanes.values()):
                    self._discard(lane)
        if self._executor is not None:
            self._executor.shutdown(wait=drained)
        try:
            self.sink.close()
        except Exception as exc:
            log.error("sink %s: close failed: %r", self.name, exc)
        return drained


class SinkSet:
    """The fan-out point: :meth:`publish` gives each sink the events it accepts."""

    def __init__(self, sinks: Iterable[Sink] = ()) -> None:
        self.runners: list[SinkRunner] = []
        self._started = False
        for sink in sinks:
            self.add(sink)

    def add(self, sink: Sink) -> None:
        if self._started:
            raise RuntimeError("add sinks before start()")
        if any(runner.name == sink.name for runner in self.runners):
            raise ValueError(f"two sinks named {sink.name!r}")
        self.runners.append(SinkRunner(sink))

    def __iter__(self) -> Any:
        return (runner.sink for runner in self.runners)

    def find(self, kind: type[Sink]) -> Sink | None:
        """The first sink of that class, if any."""
        return next((sink for sink in self if isinstance(sink, kind)), None)

    def start(self) -> None:
        """Start every sink (once); an error here is the caller's to report."""
        if self._started:
            return
        self._started = True
        for runner in self.runners:
            runner.sink.start(self)

    def publish(self, part: Part, events: Sequence[SinkEvent]) -> None:
        """Queue ``events`` of ``part`` for every sink that accepts them. Never blocks."""
        for runner in self.runners:
            accepts = runner.accepted_types
            accepted = [event for event in events if isinstance(event, accepts)]
            if accepted:
                runner.submit(part, accepted)

    def part_report(self, part: Part, *, exclude: Sink | None = None) -> dict[str, Any]:
        """What each sink says about ``part``, for its sidecar."""
        return {
            runner.name: runner.report(part)
            for runner in self.runners
            if runner.sink is not exclude
        }

    def stats(self) -> list[SinkStats]:
        return [runner.snapshot() for runner in self.runners]

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every sink has handled everything queued so far (tests, shutdown)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for runner in self.runners:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not runner.wait_idle(remaining):
                return False
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Drain and close every sink, in the order they were added (the file sink first, so
        that the sinks following it get its last events)."""
        deadline = time.monotonic() + timeout
        for runner in self.runners:
            runner.close(max(0.0, deadline - time.monotonic()))
