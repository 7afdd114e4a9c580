"""The stream model: what one connection's stream becomes, as events for the sinks.

:class:`Stream` feeds the bytes of one stream through the fMP4 scanner and decides the parts
(see :mod:`.sinks`, :class:`~.sinks.Part`): a part is cut for rotation at a fragment boundary
(the next part starts with a copy of the init segment), a new init segment starts a new part,
a reconnect continues the dormant part or starts a new numbered one, a duplicate connection
supersedes this one. It publishes :class:`~.sinks.PartOpened`, :class:`~.sinks.Chunk`,
:class:`~.sinks.InitSeen`, :class:`~.sinks.FragmentSeen`, :class:`~.sinks.Note`,
:class:`~.sinks.PingSeen`, :class:`~.sinks.StreamPaused`, :class:`~.sinks.StreamResumed`,
:class:`~.sinks.PartClosed` and :class:`~.sinks.PartAmended`, and does no I/O at all: it is
called on the event loop for every chunk.

Every method runs under its session's lock (:class:`~.sessions.Session`); the state changes
are the tables of :mod:`.states`.
"""

from __future__ import annotations

import logging
import reprlib
import statistics
from typing import TYPE_CHECKING, Any

from meetstream_live import (
    BoxSeen,
    Fmp4Event,
    Fmp4Scanner,
    FragmentComplete,
    InitSegment,
    LatencyPing,
    Malformed,
    StreamStarted,
)
from meetstream_live.adapters import ConnectionInfo

from .meter import Completeness, fragment_seconds
from .names import iso, safe_name
from .sidecar import MAX_WARNINGS, StreamFacts, end_reason, peer_text
from .sinks import (
    Chunk,
    FragmentSeen,
    InitSeen,
    Note,
    Part,
    PartAmended,
    PartClosed,
    PartOpened,
    PingSeen,
    SinkEvent,
    StreamPaused,
    StreamResumed,
)
from .states import PART, STREAM, PartInput, PartState, StreamInput, StreamState, advance

if TYPE_CHECKING:
    from .sessions import Recorder, Session

__all__ = ["MAX_DECIDING_BYTES", "PartModel", "Stream"]

log = logging.getLogger("meetstream_live.recorder")

#: Bytes a reconnected stream may hold back while we decide whether it continues.
MAX_DECIDING_BYTES = 32 * 1024 * 1024
#: ``end_reason`` values after which a stream may come back (a reconnect) within the grace.
MAY_RECONNECT = frozenset({"closed", "idle_timeout"})

_Held = tuple[bytes, int, list[Fmp4Event]]
#: The longest top-level box header (``largesize`` and ``uuid``): bytes after a box end that
#: may be the start of a box that starts a part are held back until its header is complete.
HEADER_MAX = 32


class PartModel:
    """The stream model's side of one part: its state, where its bytes are, and the stream
    facts its sidecar will hold."""

    def __init__(self, part: Part, start: StreamStarted | None, info: ConnectionInfo) -> None:
        self.part = part
        self.state = PartState.OPEN
        self.size = 0  # part offset of the next byte
        self.boundary = 0  # part offset after the last complete fragment (or init segment)
        self.fragments = 0
        self.media_seconds = 0.0
        self.completeness = Completeness()  # of what was received: reconnects decide on it
        self.cut: int | None = None  # stream offset where it ends (rotation), once due
        self.pings = 0
        self.latencies: list[float] = []
        self.warnings: list[dict[str, str]] = []
        self.warnings_dropped = 0
        self.connections = 1
        self.reconnects: list[dict[str, Any]] = []
        self.discarded_tail_bytes = 0
        self.ignored_bytes = 0
        self.owner = (start, info)

    def advance(self, event: PartInput) -> None:
        self.state = advance(PART, self.state, event)

    @property
    def torn_tail(self) -> int:
        """Bytes after the last complete fragment, in a box the stream ended inside."""
        return self.size - self.boundary if self.completeness.torn_at is not None else 0

    def facts(
        self,
        *,
        end: str,
        reason: str,
        clean: bool,
        ended_ms: int,
        torn: int,
        session_over: bool,
        session_connections: int,
        reported: float | None = None,
        code: int | None = None,
        close_reason: str | None = None,
    ) -> StreamFacts:
        start, info = self.owner
        latencies = self.latencies
        return {
            "end": end,
            "end_reason": reason,
            "clean": clean,
            "close_code": code,
            "close_reason": close_reason,
            "reported_duration_seconds": reported,
            "ended_at_ms": ended_ms,
            "start_message": dict(start.raw) if start is not None else None,
            "bot_id": start.bot_id if start is not None else None,
            "speaker_id": start.speaker_id if start is not None else None,
            "speaker_name": start.speaker_name if start is not None else None,
            "peer": info.peer,
            "path": info.path,
            "pings": self.pings,
            "latency_ms": {
                "min": min(latencies),
                "median": statistics.median(latencies),
                "max": max(latencies),
            } if latencies else None,
            "warnings": list(self.warnings),
            "warnings_dropped": self.warnings_dropped,
            "connections": self.connections,
            "reconnects": list(self.reconnects),
            "discarded_tail_bytes": self.discarded_tail_bytes,
            "ignored_bytes": self.ignored_bytes,
            "received_bytes": self.size,
            "received_fragments": self.fragments,
            "torn_tail_bytes": torn,
            "fatal": self.completeness.fatal,
            "moofs_without_mdat": self.completeness.orphan_moofs,
            "session_over": session_over,
            "session_connections": session_connections,
        }


class Stream:
    """One stream (from ``video_stream_start``, or orphan bytes) of one connection."""

    def __init__(
        self,
        recorder: Recorder,
        session: Session,
        info: ConnectionInfo,
        start: StreamStarted | None,
        *,
        why: str = "start",
        deciding: bool = False,
    ) -> None:
        self.recorder = recorder
        self.session = session
        self.info = info
        self.start = start
        self.speaker = (start.speaker_id or start.speaker_name) if start is not None else None
        self.scanner = Fmp4Scanner()
        self.init: InitSegment | None = None
        self._video: tuple[int, int] | None = None  # (id of the tracks tuple, video track id)
        self.init_checked = False
        #: The first box was neither ``ftyp``/``moov`` nor media (``free``, ``styp``...): its
        #: type, said (``no_init_segment``) at the next init segment or ``moof`` or at the end,
        #: or folded into the one warning of a stream that goes plain.
        self.odd_first: str | None = None
        #: The scanner gave up (a fatal framing error, too many boxes, garbage): the rest of
        #: the stream is plain bytes, recorded on the cheapest path (no scanning at all).
        self.plain = False
        self.rotation_blocked = False
        self.collecting_init = True  # before the first moof / after a new ftyp or moov
        self.position = 0  # stream offset of the next byte to arrive
        self.delta = 0  # part offset minus stream offset, for the current part
        self.box_end: int | None = 0  # where the latest top-level box ends (None: never)
        self.tail = b""  # held back: the bytes from box_end, a box header not complete yet
        self.held: list[_Held] = []  # a reconnect's bytes until we know where they go
        self.held_bytes = 0
        self._out: list[SinkEvent] = []
        self._out_part: Part | None = None
        self.state = StreamState.DECIDING if deciding else StreamState.RECORDING
        #: The parts this stream closed (the handler waits for their files at the end).
        self.closed: list[Part] = []
        self.part: PartModel | None = None
        if not deciding:
            self._open(why)
            self._warn_unsafe_names()

    # ------------------------------------------------------------------ publishing

    def _emit(self, event: SinkEvent) -> None:
        if event.part is not self._out_part:
            self.publish()
            self._out_part = event.part
        self._out.append(event)

    def publish(self) -> None:
        """Hand what this stream produced to the sinks (one batch per part)."""
        if self._out:
            part, events = self._out_part, self._out
            self._out = []
            assert part is not None
            self.recorder.sinks.publish(part, events)

    # ------------------------------------------------------------------ parts

    def _open(self, why: str) -> PartModel:
        model = self.session.new_part(self.start, self.info, why)
        self.part = model
        self._emit(PartOpened(model.part))
        bot = self.start.bot_id if self.start is not None else None
        log.info(
            "recording start: bot %s, speaker %s, from %s, part %d (%s)", bot,
            self.speaker or "-", peer_text(self.info.peer), model.part.number, why,
            extra={"event": "recording_started", "bot_id": bot, "speaker": self.speaker,
                   "peer": peer_text(self.info.peer), "part": model.part.number,
                   "reason": why},
        )
        return model

    def _close(
        self, model: PartModel, facts: StreamFacts, why: PartInput = PartInput.ENDED
    ) -> None:
        model.advance(why)
        self.recorder.files.closing(model.part)
        self._emit(PartClosed(model.part, facts))
        self.closed.append(model.part)
        self.session.part_closed(model)

    def _facts(self, model: PartModel, **fields: Any) -> StreamFacts:
        return model.facts(ended_ms=self.recorder.clock(),
                           session_connections=self.session.connections, **fields)

    def _switch(self, at: int, *, new_init: bool) -> None:
        """End the current part at stream offset ``at``; the stream goes on in a new one."""
        old = self.part
        assert old is not None
        reason = "new_init" if new_init else "rotated"
        self._close(old, self._facts(old, end="rotated", reason=reason, clean=True, torn=0,
                                     session_over=False),
                    PartInput.NEW_INIT if new_init else PartInput.BOX_AT_CUT)
        model = self._open(reason)
        self.delta = -at
        init = self.init
        if init is not None and not new_init:
            # A copy of the init segment first: the part plays on its own.
            self._emit(Chunk(model.part, 0, init.data, self.info.backlog))
            self._emit(InitSeen(model.part, 0, init))
            model.size = model.boundary = init.size
            model.completeness.set_tracks(init.tracks)
            self.delta = init.size - at

    def _warn_unsafe_names(self) -> None:
        """A bot_id or speaker that had to change to become a file name says so (else the
        directory silently differs from what the bot sent). The original is shown bounded."""
        if self.start is None:
            return
        for what, value in (("bot_id", self.start.bot_id), ("speaker", self.speaker)):
            if isinstance(value, str) and safe_name(value) != value:
                shown = reprlib.repr(value)
                self.warn("unsafe_name", f"{what} {shown} stored as {safe_name(value)!r}")

    # ------------------------------------------------------------------ media

    def feed(self, data: bytes) -> None:
        """The next bytes of the stream."""
        start = self.position
        self.position = start + len(data)
        if self.plain and not self.tail and self.state is StreamState.RECORDING:
            # Plain bytes (the scanner gave up, said once): nothing to look for in them.
            model = self.part
            assert model is not None
            model.size += len(data)
            self._emit(Chunk(model.part, start + self.delta, data, self.info.backlog))
            return
        events = self.scanner.feed(data)
        box_end = self.box_end
        if self.state is StreamState.DECIDING:
            self._hold(data, start, events)
        elif events or self.tail or (
            box_end is not None and 0 < self.position - box_end < HEADER_MAX
        ):
            self._take(data, start, events)
        else:  # inside an mdat: the common case
            model = self.part
            assert model is not None
            model.size += len(data)
            self._emit(Chunk(model.part, start + self.delta, data, self.info.backlog))

    def _take(
        self, data: bytes, start: int, events: list[Fmp4Event], skip: int = 0,
        final: bool = False,
    ) -> None:
        """Publish ``data`` (at stream offset ``start``; bytes before ``skip`` are not) and
        what the scanner found in it: every fragment and init segment after the chunk that
        holds its end, a part switch where a box starts one. The first bytes of a box whose
        header is not complete yet are held back (they may start the next part), unless
        ``final``."""
        if self.tail:  # rare: a box header was cut by the end of the previous chunk
            data = self.tail + data
            start -= len(self.tail)
            self.tail = b""
        cursor = max(start, skip)
        after: list[SinkEvent] = []
        for event in events:
            kind = type(event)
            if kind is FragmentComplete:
                assert isinstance(event, FragmentComplete)
                after.append(self._fragment(event))
            elif kind is BoxSeen:
                assert isinstance(event, BoxSeen)
                new_init = self._box(event)
                if new_init is not None:
                    at = event.offset
                    cursor = self._piece(data, start, cursor, at, after)
                    self._switch(at, new_init=new_init)
            elif kind is InitSegment:
                assert isinstance(event, InitSegment)
                after.append(self._init(event))
            elif kind is Malformed:
                assert isinstance(event, Malformed)
                self._malformed(event)
        end = start + len(data)
        box_end = self.box_end
        if not final and box_end is not None and 0 < end - box_end < HEADER_MAX:
            held = max(box_end, cursor)
            self._piece(data, start, cursor, held, after)
            self.tail = data[held - start :]
        else:
            self._piece(data, start, cursor, end, after)

    def _piece(
        self, data: bytes, start: int, cursor: int, end: int, after: list[SinkEvent]
    ) -> int:
        """Publish ``data`` from stream offset ``cursor`` to ``end``, then ``after``."""
        model = self.part
        assert model is not None
        if end > cursor:
            if cursor == start and end == start + len(data):
                piece = data
            else:
                piece = data[cursor - start : end - start]  # a copy, at part switches only
            model.size += len(piece)
            self._emit(Chunk(model.part, cursor + self.delta, piece, self.info.backlog))
        for event in after:
            self._emit(event)
        after.clear()
        return max(end, cursor)

    def _fragment(self, event: FragmentComplete) -> FragmentSeen:
        model = self.part
        assert model is not None
        tracks = self.scanner.tracks
        seconds = fragment_seconds(tracks, event)
        model.fragments += 1
        model.media_seconds += seconds
        model.completeness.add(event)
        end = event.offset + event.size
        model.boundary = end + self.delta
        self._plan_cut(model, end)
        return FragmentSeen(model.part, event.offset + self.delta, event.size, event,
                            self._keyframe(event), seconds)

    def _keyframe(self, event: FragmentComplete) -> bool | None:
        """Whether the fragment's video starts with a sync sample (``None``: not said)."""
        tracks = self.scanner.tracks
        if not tracks:
            return None
        if self._video is None or self._video[0] != id(tracks):
            video = next((t for t in tracks if t.handler == "vide"), tracks[0])
            self._video = (id(tracks), video.track_id)
        wanted = self._video[1]
        for run in event.tracks:
            if run.track_id == wanted:
                return run.starts_with_sync
        return None

    def _init(self, event: InitSegment) -> InitSeen:
        model = self.part
        assert model is not None
        self.collecting_init = False
        if self.odd_first is not None:
            self._no_init(self.odd_first)
        self.init = event
        model.completeness.add(event)
        model.boundary = event.offset + event.size + self.delta
        return InitSeen(model.part, event.offset + self.delta, event)

    def _malformed(self, event: Malformed) -> None:
        model = self.part
        assert model is not None
        model.completeness.add(event)
        if not event.fatal:
            self.warn("fmp4_problem", f"at byte {event.offset}: {event.reason}")
            return
        message = f"at byte {event.offset}: {event.reason}"
        if not self.scanner.closed:
            # The one warning of a stream that is not (or no longer) fMP4: what follows is
            # recorded as it comes, byte for byte, without a scan or a warning per chunk.
            self.plain = True
            self.init_checked = True
            first, self.odd_first = self.odd_first, None
            if self.init is None:
                message += (" (no init segment before it" + (f"; first box {first!r}" if first
                                                           else "") + ")")
            message += "; the rest of the stream is recorded as plain bytes"
        self.warn("malformed_fmp4", message)

    def _box(self, event: BoxSeen) -> bool | None:
        """A top-level box begins: does a new part start at it? ``None``: no; else whether
        the new part starts with a new init segment (``False``: a rotation)."""
        self.box_end = None if event.size is None else event.offset + event.size
        if not self.init_checked:
            self.init_checked = True
            if event.type in ("moof", "mdat"):
                self._no_init(event.type)
            elif event.type not in ("ftyp", "moov"):
                self.odd_first = event.type  # said at a moof, the end, or the give-up
        elif self.odd_first is not None and event.type == "moof" and self.init is None:
            self._no_init(self.odd_first)
        new_init = event.type in ("ftyp", "moov") and not self.collecting_init
        if event.type == "moof":
            self.collecting_init = False
        elif new_init:
            self.collecting_init = True
        model = self.part
        assert model is not None
        if model.cut is not None and event.offset == model.cut:
            model.cut = None
            return new_init
        if new_init and event.offset > 0:
            # A new init segment mid-stream (encoder restart, new resolution): a new part,
            # which starts with it and so plays on its own.
            return True
        return None

    def _no_init(self, first: str) -> None:
        self.odd_first = None
        self.warn("no_init_segment", f"stream does not start with ftyp+moov (first box: {first!r})")

    def _plan_cut(self, model: PartModel, cut: int) -> None:
        """The part is long enough: it ends at ``cut``, once a next box shows there is more
        (so a stream never ends with an empty part)."""
        every = self.recorder.rotate_every
        if every is None or model.media_seconds < every or model.state is not PartState.OPEN:
            return
        if self.init is None:
            if not self.rotation_blocked:
                self.rotation_blocked = True
                self.warn("rotation_skipped", "no init segment: cannot start a new piece")
            return
        model.cut = cut
        model.advance(PartInput.ROTATION_DUE)

    # ------------------------------------------------------------------ reconnects

    def _hold(self, data: bytes, start: int, events: list[Fmp4Event]) -> None:
        """Deciding: keep the bytes; does this reconnected stream continue the dormant part?"""
        self.held.append((data, start, events))
        self.held_bytes += len(data)
        for event in events:
            if isinstance(event, BoxSeen):
                self.box_end = None if event.size is None else event.offset + event.size
            verdict = self._consider(event)
            if verdict is not None:
                self._decide(append=verdict)
                return
        if self.held_bytes > MAX_DECIDING_BYTES:
            self._decide(append=False)

    def _consider(self, event: Fmp4Event) -> bool | None:
        """True: append to the dormant part, False: a new part, None: not known yet."""
        session = self.session
        dormant = session.dormant
        if dormant is None:
            return False
        if isinstance(event, InitSegment):
            self.init = event
            if event.offset != 0 or event.data != session.dormant_init:
                return False
            self.collecting_init = False
        elif isinstance(event, FragmentComplete):
            return self._continues(dormant, event)
        elif isinstance(event, BoxSeen) and event.type == "moof":
            if self.collecting_init:
                return False  # no init segment first
        elif isinstance(event, Malformed) and event.fatal:
            return False
        return None

    def _continues(self, dormant: PartModel, fragment: FragmentComplete) -> bool:
        done = dormant.completeness
        last = done.last_sequence
        seq = fragment.sequence_number
        if last is not None and seq is not None and seq <= last:
            return False
        grace = self.recorder.reconnect_grace
        for run in fragment.tracks:
            track = done.tracks.get(run.track_id)
            if track is None or track.end is None or run.base_decode_time is None:
                return False
            scale = track.info.timescale
            slack = scale // 100  # 10 ms
            ahead = run.base_decode_time - track.end
            if ahead < -slack or ahead > (grace + 5) * scale:
                return False
        return True

    def _decide(self, *, append: bool) -> None:
        session = self.session
        held, self.held, self.held_bytes = self.held, [], 0
        metrics = self.recorder.metrics
        dormant = session.dormant
        if append and dormant is not None:
            init = self.init
            assert init is not None
            tail = dormant.size - dormant.boundary
            gap = session.resume(dormant)
            self.state = advance(STREAM, self.state, StreamInput.CONTINUES)
            dormant.advance(PartInput.RESUMED)
            dormant.connections += 1
            dormant.discarded_tail_bytes += tail
            dormant.owner = (self.start, self.info)
            if len(dormant.reconnects) < MAX_WARNINGS:
                dormant.reconnects.append({
                    "at": iso(self.recorder.clock()), "after_ms": gap,
                    "discarded_tail_bytes": tail,
                    "previous_close_code": session.dormant_close[0],
                })
            dormant.size = dormant.boundary  # the torn tail is replaced by what follows
            self.part = dormant
            self.delta = dormant.boundary - init.size
            self.init_checked = True
            self.collecting_init = False
            self._emit(StreamResumed(dormant.part, self.info))
            if metrics is not None:
                metrics.reconnects.inc(label="appended")
            log.info("reconnect: part %d of bot %s continues after %d ms",
                     dormant.part.number, dormant.part.bot_id, gap,
                     extra={"event": "reconnect_appended", "bot_id": dormant.part.bot_id,
                            "speaker": dormant.part.speaker, "part": dormant.part.number,
                            "peer": peer_text(self.info.peer)})
            for data, start, events in held:
                kept = [e for e in events if not isinstance(e, (InitSegment, BoxSeen))]
                self._take(data, start, kept, skip=init.size)
            return
        if dormant is not None:
            session.expire(dormant, keep=True)  # finalized; the session goes on
        session.decided()
        self.state = advance(STREAM, self.state, StreamInput.NEW_PART)
        self.collecting_init = True
        self.init = None
        if metrics is not None:
            metrics.reconnects.inc(label="new_part")
        self._open("reconnect")
        self.delta = 0  # what was held starts the stream
        self._warn_unsafe_names()
        for data, start, events in held:
            self._take(data, start, events)

    # ------------------------------------------------------------------ the rest

    def ping(self, event: LatencyPing) -> None:
        model = self.part
        if model is None or self.state is StreamState.SUPERSEDED:
            return
        model.pings += 1
        latency = None
        if event.sent_at_ms is not None:
            latency = float(event.received_at_ms - event.sent_at_ms)
            model.latencies.append(latency)
        self._emit(PingSeen(model.part, event.seq, latency))

    def warn(self, kind: str, message: str, source: str = "recorder") -> None:
        model = self.part
        if model is None or self.state is StreamState.SUPERSEDED:
            return
        if len(model.warnings) < MAX_WARNINGS:
            model.warnings.append({"source": source, "kind": kind, "message": message})
        else:
            model.warnings_dropped += 1
        self._emit(Note(model.part, source, kind, message))
        if source == "recorder":
            log.warning("bot %s part %d: %s (%s)", model.part.bot_id, model.part.number,
                        message, kind,
                        extra={"event": "recording_warning", "bot_id": model.part.bot_id,
                               "speaker": model.part.speaker, "part": model.part.number,
                               "reason": kind})
            if self.recorder.metrics is not None:
                self.recorder.metrics.recording_warnings.inc(label=kind)

    def ignore(self, size: int) -> None:
        """Bytes that arrived after this stream was superseded."""
        model = self.part
        if model is not None:
            model.ignored_bytes += size
        if self.recorder.metrics is not None:
            self.recorder.metrics.recording_lost.inc(size, label="superseded_bytes")

    @property
    def superseded(self) -> bool:
        return self.state is StreamState.SUPERSEDED

    def finish(
        self,
        *,
        clean: bool,
        reported: float | None = None,
        code: int | None = None,
        reason: str | None = None,
    ) -> None:
        """The stream ended (``video_stream_end``) or its connection did: close its part, or
        keep it for a reconnect within the grace window."""
        session = self.session
        if self.state is StreamState.SUPERSEDED:
            self.state = advance(STREAM, self.state, StreamInput.ENDED)
            model = self.part
            if model is not None and model.ignored_bytes:
                self._emit(PartAmended(model.part, {"ignored_bytes": model.ignored_bytes}))
            self.publish()
            return
        ending = "stream_end" if clean else end_reason(code, reason)
        recorder = self.recorder
        wait = (
            not clean
            and ending in MAY_RECONNECT
            and session.key is not None
            and recorder.reconnect_grace > 0
            and not recorder.closing
        )
        events = self.scanner.eof()
        if self.state is StreamState.DECIDING:
            self.held.append((b"", self.position, events))
            self._decide(append=False)
        elif not wait:
            self._take(b"", self.position, events, final=True)
        if self.tail:  # what was held back for a box header that never came
            self._take(b"", self.position, [], final=True)
        if not self.init_checked and self.position > 0:
            self.warn("no_init_segment", "stream ended before a complete first box")
        elif self.odd_first is not None and self.init is None:
            self._no_init(self.odd_first)
        model = self.part
        assert model is not None
        self.state = advance(STREAM, self.state, StreamInput.ENDED)
        if wait:
            # The torn tail (if any) is held back: a reconnect may continue the part.
            model.advance(PartInput.CONNECTION_LOST)
            self._emit(StreamPaused(model.part, model.boundary, recorder.reconnect_grace))
            self.publish()
            init = self.init
            session.wait(self, model, init.data if init is not None else None, code, reason)
            return
        self._close(model, self._facts(
            model, end="stream_end" if clean else "disconnect", reason=ending, clean=clean,
            torn=model.torn_tail, session_over=True, reported=reported, code=code,
            close_reason=reason,
        ))
        self.publish()
        session.stream_ended(self)

    def supersede(self) -> None:
        """A newer connection for the same key took over: close this part now; what this
        connection sends afterwards is ignored (counted)."""
        if self.state is StreamState.DECIDING:
            self._decide(append=False)
        if self.tail:
            self._take(b"", self.position, [], final=True)
        model = self.part
        assert model is not None
        for event in self.scanner.eof():
            model.completeness.add(event)
        self._close(model, self._facts(
            model, end="disconnect", reason="superseded", clean=False, torn=model.torn_tail,
            session_over=False,
        ))
        self.state = advance(STREAM, self.state, StreamInput.SUPERSEDED)
        self.publish()
