"""Sessions and the recorder: the streams of one ``(bot_id, speaker)`` over reconnects, and
:class:`Recorder`, the handler factory that composes the stream model with its sinks.

A :class:`Session` numbers its parts, keeps the part of a dropped connection dormant for the
reconnect grace window (a timer of the recorder's :class:`Scheduler` closes it when the window
passes), and lets a duplicate connection supersede the older one (closed with 1000 through
``ConnectionInfo.close``). Its states are :data:`~.states.SESSION`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meetstream_live import StreamStarted
from meetstream_live.adapters import ConnectionInfo

from .durable import REAL_DISK, Disk
from .filesink import DEFAULT_BUFFER_SIZE, FileSink
from .hooks import CallbackSink, FinishCallback
from .metrics import Metrics
from .partfiles import Continued, PathTemplate, ResumedSession
from .sidecar import end_reason, peer_text
from .sinks import Part, PartClosed, Sink, SinkSet
from .states import SESSION, PartInput, SessionInput, SessionState, advance
from .stream import PartModel, Stream

if TYPE_CHECKING:
    from .diskguard import DiskGuard
    from .handler import RecordingHandler
    from .hooks import Journal

__all__ = ["Recorder", "Scheduler", "Session"]

log = logging.getLogger("meetstream_live.recorder")

_session_ids = itertools.count(1)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Scheduler:
    """One thread that runs callbacks after a delay (the grace windows of every session)."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._ids = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def call_later(self, delay: float, callback: Callable[[], None]) -> int:
        with self._wake:
            handle = next(self._ids)
            heapq.heappush(self._heap, (self._monotonic() + delay, handle, callback))
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="recorder-timers",
                                                daemon=True)
                self._thread.start()
            self._wake.notify()
            return handle

    def cancel(self, handle: int) -> None:
        with self._wake:
            self._cancelled.add(handle)

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopped:
                    if self._heap:
                        delay = self._heap[0][0] - self._monotonic()
                        if delay <= 0:
                            break
                        self._wake.wait(delay)
                    else:
                        self._wake.wait()
                if self._stopped:
                    return
                _, handle, callback = heapq.heappop(self._heap)
                if handle in self._cancelled:
                    self._cancelled.discard(handle)
                    continue
            try:
                callback()
            except Exception as exc:  # a bug: logged, the other timers go on
                log.error("timer callback failed: %r", exc, exc_info=exc)


class Session:
    """One logical recording: the streams of one key over reconnects. ``lock`` serializes
    every stream of the session, whatever connection (thread) it is on; it guards memory
    only (no I/O is done under it)."""

    def __init__(self, recorder: Recorder, key: tuple[str, str] | None) -> None:
        self.recorder = recorder
        self.key = key
        self.id = next(_session_ids)
        self.lock = threading.RLock()
        self.state = SessionState.ACTIVE
        self.active: Stream | None = None
        self.connections = 0
        self.started_ms: int | None = None
        self.next_number = 1
        # Within the grace window after an unclean disconnect: the dormant part.
        self.dormant: PartModel | None = None
        self.dormant_init: bytes | None = None
        self.dormant_since = 0
        self.dormant_close: tuple[int | None, str | None] = (None, None)
        self._timer: int | None = None

    @property
    def over(self) -> bool:
        return self.state is SessionState.OVER

    def advance(self, event: SessionInput) -> None:
        self.state = advance(SESSION, self.state, event)

    def new_part(self, start: StreamStarted | None, info: ConnectionInfo, why: str) -> PartModel:
        now = self.recorder.clock()
        if self.started_ms is None:
            self.started_ms = now
        speaker = (start.speaker_id or start.speaker_name) if start is not None else None
        part = Part(self.id, self.next_number, self.key,
                    start.bot_id if start is not None else None,
                    speaker if isinstance(speaker, str) else None, now, why, start, info,
                    session_started_ms=self.started_ms)
        self.next_number += 1
        if self.recorder.metrics is not None:
            self.recorder.metrics.streams_active.inc()
        return PartModel(part, start, info)

    def continue_remote(self, continued: Continued) -> None:
        """Continue a session another receiver began (its lease): its start, its next part
        number, one connection more."""
        self.next_number = continued.next_number
        self.started_ms = continued.started_ms
        self.connections = continued.connections
        self.recorder.files.continue_remote(self.id, continued)

    def moved_on(self, continued: Continued) -> None:
        """The session adopted after a crash went on elsewhere meanwhile (another receiver
        continued it, its lease says): number the next part after that receiver's."""
        if continued.started_ms == self.started_ms and continued.next_number > self.next_number:
            self.next_number = continued.next_number
            self.connections = max(self.connections, continued.connections)

    def adopt(self, resumed: ResumedSession) -> None:
        """Continue a session a crash interrupted: its next part number, start, connections."""
        self.next_number = resumed.next_number
        self.started_ms = resumed.started_ms
        self.connections = resumed.connections
        self.recorder.files.adopt(self.id, resumed)

    def part_closed(self, model: PartModel) -> None:
        if self.recorder.metrics is not None:
            self.recorder.metrics.streams_active.dec()

    # ------------------------------------------------------------------ the grace window

    def wait(self, stream: Stream, model: PartModel, init: bytes | None, code: int | None,
             reason: str | None) -> None:
        """Keep ``model`` for a reconnect (its stream's connection dropped)."""
        self.advance(SessionInput.CONNECTION_LOST)
        self.active = None
        self.dormant = model
        self.dormant_init = init
        self.dormant_since = self.recorder.clock()
        self.dormant_close = (code, reason)
        grace = self.recorder.reconnect_grace
        self._timer = self.recorder.timers.call_later(grace, lambda: self.expire(model))
        log.info("bot %s part %d paused: waiting %.0fs for a reconnect", model.part.bot_id,
                 model.part.number, grace,
                 extra={"event": "recording_paused", "bot_id": model.part.bot_id,
                        "speaker": model.part.speaker, "part": model.part.number})

    def resume(self, model: PartModel) -> int:
        """A reconnect continues the dormant part: returns the ms it waited."""
        self._cancel_timer()
        self.dormant = None
        self.advance(SessionInput.DECIDED)
        return self.recorder.clock() - self.dormant_since

    def decided(self) -> None:
        """A reconnect starts a new part (the dormant one, if any, was closed)."""
        if self.state is SessionState.DECIDING:
            self.advance(SessionInput.DECIDED)

    def expire(self, model: PartModel | None = None, *, keep: bool = False) -> None:
        """The grace window is over (or the recorder closes, or a reconnect starts a new
        part: ``keep``): close the dormant part, with its torn tail."""
        with self.lock:
            dormant = self.dormant
            if dormant is None or (model is not None and dormant is not model):
                return
            self._cancel_timer()
            self.dormant = None
            code, reason = self.dormant_close
            over = not keep and self.state is SessionState.WAITING
            dormant.advance(PartInput.ENDED)
            facts = dormant.facts(
                end="disconnect", reason=end_reason(code, reason), clean=False,
                ended_ms=self.recorder.clock(), torn=dormant.size - dormant.boundary,
                session_over=over, session_connections=self.connections, code=code,
                close_reason=reason,
            )
            self.recorder.files.closing(dormant.part)
            self.recorder.sinks.publish(dormant.part, [PartClosed(dormant.part, facts)])
            self.part_closed(dormant)
            if over:
                self.advance(SessionInput.EXPIRED)
                self.recorder.forget(self)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self.recorder.timers.cancel(self._timer)
            self._timer = None

    def stream_ended(self, stream: Stream) -> None:
        if self.active is stream:
            self.active = None
            self.advance(SessionInput.ENDED)
            self.recorder.forget(self)


class Recorder:
    """Handler factory: records every stream under ``output_dir``.

    ``rotate_every`` (seconds of media) cuts streams into parts at fragment boundaries.
    ``on_finish`` is called (in a thread of its own) with each finalized recording;
    ``metrics`` gets the recorder's counters. ``clock`` gives the wall time in Unix ms.

    ``reconnect_grace`` (seconds, 0 for none): after a connection ends with its stream open,
    the part stays open this long for the same ``(bot_id, speaker)`` to come back (see
    docs/recording.md); :meth:`close` finalizes what still waits. ``index``: on finalize, write
    the real duration into the ``moov`` and append an ``mfra`` index (the file then is not
    the stream byte for byte). ``disk_guard``: a :class:`~.diskguard.DiskGuard`. ``journal``:
    the hook journal, written before each part is committed. ``sinks``: more consumers of
    every stream (see :mod:`.sinks`), after the file sink. ``disk``: the file operations
    (tests inject faults). ``path_template``: where recordings go below ``output_dir``
    (:class:`~.partfiles.PathTemplate`; ``ValueError`` if it is wrong). ``resumable``:
    sessions the previous process was recording when it died
    (:func:`~.recovery.resumable_sessions`): a bot reconnecting within ``reconnect_grace`` of
    the recorder's start continues its session as the next part. ``continue_from``: asked
    (in the stream's thread, before any lock) when a stream starts that has no session
    here: a session another receiver of a fleet began, to continue as its next part (see
    ``bus.lease``), or None (also asked for a ``resumable`` session: one that went on
    elsewhere numbers its next part after that receiver's, one that is over there is not
    resumed; see :class:`~.partfiles.Continued`). The recorder does no I/O itself: its
    :class:`~.filesink.FileSink` does, in threads of its own.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        *,
        rotate_every: float | None = None,
        on_finish: FinishCallback | None = None,
        metrics: Metrics | None = None,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        clock: Callable[[], int] = _wall_ms,
        reconnect_grace: float = 0.0,
        index: bool = False,
        disk_guard: DiskGuard | None = None,
        journal: Journal | None = None,
        sinks: Iterable[Sink] = (),
        disk: Disk = REAL_DISK,
        retry_interval: float = 5.0,
        path_template: str | None = None,
        resumable: Mapping[tuple[str, str], ResumedSession] | None = None,
        continue_from: Callable[[tuple[str, str]], Continued | None] | None = None,
    ) -> None:
        if rotate_every is not None and rotate_every <= 0:
            raise ValueError("rotate_every must be positive")
        if reconnect_grace < 0:
            raise ValueError("reconnect_grace must be >= 0")
        self.root = Path(output_dir).resolve()
        self.rotate_every = rotate_every
        self.metrics = metrics
        self.clock = clock
        self.reconnect_grace = reconnect_grace
        self.closing = False
        self.timers = Scheduler()
        self.files = FileSink(
            self.root, rotating=rotate_every is not None, buffer_size=buffer_size,
            index=index, disk_guard=disk_guard, journal=journal, metrics=metrics,
            clock=clock, disk=disk, retry_interval=retry_interval,
            layout=PathTemplate(path_template) if path_template is not None else None,
        )
        extra = list(sinks)
        if on_finish is not None:
            extra.append(CallbackSink(on_finish))
        self.sinks = SinkSet([self.files, *extra])
        if metrics is not None:
            metrics.watch_sinks(self.sinks.stats)
        self.sinks.start()
        self._lock = threading.Lock()
        self._sessions: dict[tuple[str, str], Session] = {}
        self._resumable = dict(resumable or {})
        self._resumable_until = time.monotonic() + reconnect_grace
        self.continue_from = continue_from

    def __call__(self, info: ConnectionInfo) -> RecordingHandler:
        from .handler import RecordingHandler

        return RecordingHandler(self, info)

    # ------------------------------------------------------------------ sessions

    def open_stream(self, info: ConnectionInfo, start: StreamStarted | None) -> Stream:
        """A new stream: a new session, the continuation of a dormant one, or a duplicate
        that supersedes the stream still open for its key."""
        speaker = (start.speaker_id or start.speaker_name) if start is not None else None
        key = None
        if start is not None and isinstance(start.bot_id, str):
            key = (start.bot_id, speaker if isinstance(speaker, str) else "")
        remote = None
        if key is not None and self.continue_from is not None:
            with self._lock:
                known = key in self._sessions
            if not known:  # (a session resumed after a crash asks too: it may have moved on)
                remote = self.continue_from(key)  # may wait on the network: no lock held
        while True:
            with self._lock:
                session = self._sessions.get(key) if key is not None else None
                fresh = session is None
                resumed = continued = None
                if session is None:
                    session = Session(self, key)
                    if key is not None:
                        self._sessions[key] = session
                        resumed = self._resumed(key)
                        if resumed is not None and remote is not None and remote.over:
                            log.info("bot %s speaker %r: the session of %s is over (it ended "
                                     "on another receiver): a new session", key[0], key[1],
                                     resumed.manifest.name)
                            resumed = None
                        if resumed is not None:
                            session.adopt(resumed)
                            if remote is not None:
                                session.moved_on(remote)
                        elif remote is not None and not (remote.over or remote.stale):
                            continued, remote = remote, None
                            session.continue_remote(continued)
            with session.lock:
                if session.over:  # ended while we waited for its lock: take a new one
                    continue
                session.connections += 1
                if continued is not None:
                    assert key is not None
                    log.info("bot %s speaker %r: continuing the session another receiver "
                             "began as part %d", key[0], key[1], continued.next_number,
                             extra={"event": "session_continued", "bot_id": key[0],
                                    "speaker": key[1], "part": continued.next_number})
                    stream = Stream(self, session, info, start, why="reconnect")
                elif resumed is not None:
                    log.info("bot %s speaker %r: continuing the session of %s (interrupted "
                             "by a restart) as part %d", resumed.key[0], resumed.key[1],
                             resumed.manifest.name, resumed.next_number,
                             extra={"event": "session_resumed", "bot_id": resumed.key[0],
                                    "speaker": resumed.key[1], "part": resumed.next_number})
                    stream = Stream(self, session, info, start, why="reconnect")
                elif fresh:
                    stream = Stream(self, session, info, start)
                elif session.active is not None:
                    self._supersede(session, session.active)
                    stream = Stream(self, session, info, start, why="superseded")
                else:
                    session.advance(SessionInput.RECONNECTED)
                    stream = Stream(self, session, info, start, deciding=True)
                session.active = stream
                stream.publish()
                return stream

    def _resumed(self, key: tuple[str, str]) -> ResumedSession | None:
        """The crashed session ``key`` continues, once, within the grace after the start."""
        if not self._resumable:
            return None
        if time.monotonic() >= self._resumable_until:
            self._resumable.clear()
            return None
        return self._resumable.pop(key, None)

    def _supersede(self, session: Session, old: Stream) -> None:
        """A newer connection for the same key: close the old one's part, ignore the rest
        of what it sends, and close it with 1000 (a normal close: the bot does not retry)."""
        log.warning("superseding the stream of %s (bot %s, speaker %s): a newer connection "
                    "took it", peer_text(old.info.peer), *(session.key or (None, None)),
                    extra={"event": "superseded", "peer": peer_text(old.info.peer),
                           "bot_id": session.key[0] if session.key else None,
                           "speaker": session.key[1] if session.key else None})
        if self.metrics is not None:
            self.metrics.recording_lost.inc(label="superseded")
        old.supersede()
        session.advance(SessionInput.DUPLICATE)
        try:  # asks the adapter: never blocks, whatever thread we are in
            old.info.close(1000, "superseded by a newer connection")
        except Exception as exc:
            log.error("could not close the superseded connection of %s: %s",
                      peer_text(old.info.peer), exc, extra={"peer": peer_text(old.info.peer)})

    def forget(self, session: Session) -> None:
        with self._lock:
            if session.key is not None and self._sessions.get(session.key) is session:
                del self._sessions[session.key]

    def sessions(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    # ------------------------------------------------------------------ the end

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every sink has handled what was published so far (files written,
        parts finalized); False on timeout. For tests and tools: the server never waits."""
        return (self.sinks.wait_idle(timeout) and self.files.finalizer.wait_idle(timeout)
                and self.sinks.wait_idle(timeout))

    def close(self, timeout: float = 30.0) -> None:
        """Finalize the parts still waiting for a reconnect, then drain and close every sink
        (call when the server stops)."""
        self.closing = True
        for session in self.sessions():
            session.expire()
        self.timers.stop()
        self.sinks.close(timeout)

    def stats(self) -> dict[str, Any]:
        """What the recorder holds now (for tests and debugging)."""
        return {"sessions": len(self.sessions()), "sinks": self.sinks.stats()}
