"""Record every stream to disk: one fMP4 file and one JSON sidecar per stream.

``Recorder(output_dir)`` is a handler factory (pass it to any server adapter); each accepted
connection gets a :class:`RecordingHandler`. Files land at::

    <output>/<bot_id>/[<speaker>/]<UTC start>[_<n>].mp4      the stream, byte for byte
    <output>/<bot_id>/[<speaker>/]<UTC start>[_<n>].json     what happened (the sidecar)

While a stream is being written its files are ``.mp4.part`` and ``.json.part``; when the stream
ends (``video_stream_end``) or the bot disconnects, the ``.mp4.part`` is flushed, fsynced and
renamed, and the final sidecar is written. :func:`recover` finishes the ``.part`` files a crash
left behind. With ``rotate_every``, a stream is cut at fragment boundaries into pieces
``<stem>_part001.mp4``, ``<stem>_part002.mp4``... each starting with the init segment.

Nothing is ever opened for writing over an existing file: names are taken with ``O_EXCL`` and
a taken name gets ``_1``, ``_2``... ``bot_id`` and speaker names come from the bot and are
untrusted: :func:`safe_name` makes them into one harmless path component, and every directory
is checked to resolve under the output directory.

The handler methods do blocking file I/O: the server adapters call them off the event loop.
See ``docs/recording.md``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import reprlib
import statistics
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meetstream_live import (
    BoxSeen,
    Disconnected,
    Event,
    Fmp4Event,
    FragmentComplete,
    InitSegment,
    LatencyPing,
    Malformed,
    MediaChunk,
    ProtocolWarning,
    StreamEnded,
    StreamStarted,
)
from meetstream_live.adapters._common import ConnectionInfo, Handler, now_ms

from . import durable
from .durable import (
    Chunks,
    dumps_json,
    fsync_dir,
    numbered,
    rename_noreplace,
    reopen,
    replace_json,
    reserve,
    write_new,
)
from .meter import Completeness, MediaMeter, fragment_entry, fragment_seconds, track_ends, worst
from .metrics import Metrics
from .mp4index import FragmentEntry, finish_index
from .names import inside, iso, safe_name, utc_stamp
from .recovery import load_json, recover
from .sidecar import (
    MAX_WARNINGS,
    SIDECAR_VERSION,
    FinishedRecording,
    build_sidecar,
    end_reason,
)

if TYPE_CHECKING:
    from .diskguard import DiskGuard
    from .hooks import Journal

__all__ = [
    "FinishedRecording",
    "Recorder",
    "RecordingHandler",
    "fragment_seconds",
    "recover",
    "safe_name",
]

log = logging.getLogger("meetstream_live.recorder")

#: Bytes gathered before a ``write`` call (unless a fragment completes first). 128 KiB: a
#: quarter second at 4 Mbit/s, and what a thousand streams hold in memory is bounded.
DEFAULT_BUFFER_SIZE = 128 * 1024

# ---------------------------------------------------------------------------- recordings


FinishCallback = Callable[[FinishedRecording], None]

_NO_INFO = ConnectionInfo("", "", "", (), False)
#: Bytes a reconnected stream may hold back while we decide whether it continues.
MAX_DECIDING_BYTES = 32 * 1024 * 1024

#: ``end_reason`` values after which a stream may come back (a reconnect) within the grace.
_MAY_RECONNECT = frozenset({"closed", "idle_timeout"})


def _is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class _Piece:
    """One output file (a part of a session) being written."""

    def __init__(
        self, directory: Path, stem: str, fd: int, started_ms: int, number: int, why: str
    ) -> None:
        self.directory = directory
        self.stem = stem
        self.fd: int | None = fd
        self.started_ms = started_ms
        self.number = number
        self.why = why  # what started it: start, rotated, new_init, reconnect, superseded
        self.bytes = 0
        self.fragments = 0
        self.media_seconds = 0.0
        self.pings = 0
        self.latencies: list[float] = []
        self.warnings: list[dict[str, str]] = []
        self.warnings_dropped = 0
        self.completeness = Completeness()
        self.connections = 1
        self.reconnects: list[dict[str, Any]] = []
        self.lost_bytes = 0  # not written: disk low (guard) or disk full
        self.lost_fragments = 0
        self.discarded_tail_bytes = 0  # a torn fragment dropped when a reconnect appended
        self.ignored_bytes = 0  # arrived after the stream was superseded
        self.torn_tail_bytes = 0
        self.index: list[FragmentEntry] = []  # where each fragment is in this file
        self.base_offset = 0  # file offset of stream offset 0 (set per connection)
        self.indexed = False
        self.owner: tuple[StreamStarted | None, ConnectionInfo] = (None, _NO_INFO)

    @property
    def part_path(self) -> Path:
        return self.directory / f"{self.stem}.mp4.part"

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self.fd is not None
        try:
            durable.write_all(self.fd, data)
        except OSError:
            # What did land is on disk: count it (the sidecar says how much was kept).
            with contextlib.suppress(OSError):
                self.bytes = os.fstat(self.fd).st_size
            raise
        self.bytes += len(data)

    def write_parts(self, parts: Sequence[bytes | memoryview], size: int) -> None:
        assert self.fd is not None
        try:
            durable.write_parts(self.fd, parts, size)
        except OSError:
            with contextlib.suppress(OSError):
                self.bytes = os.fstat(self.fd).st_size
            raise
        self.bytes += size

    def warn(self, source: str, kind: str, message: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append({"source": source, "kind": kind, "message": message})
        else:
            self.warnings_dropped += 1

    def latency_summary(self) -> dict[str, float] | None:
        if not self.latencies:
            return None
        return {
            "min": min(self.latencies),
            "median": statistics.median(self.latencies),
            "max": max(self.latencies),
        }


class _Session:
    """One logical recording: the streams of one ``(bot_id, speaker)`` key, over reconnects.

    Its parts are numbered files; ``<base>.session.json`` (the manifest) lists them in order.
    ``lock`` serializes every stream of the session, whatever connection (thread) it is on.
    """

    def __init__(self, recorder: Recorder, key: tuple[str, str] | None, directory: Path) -> None:
        self.recorder = recorder
        self.key = key
        self.directory = directory
        self.lock = threading.RLock()
        self.base: str | None = None
        self.started_ms: int | None = None
        self.next_number = 1
        self.parts: list[dict[str, Any]] = []
        self.active: _Stream | None = None
        self.connections = 0
        # After an unclean disconnect, within the grace window: the open part, not finalized.
        self.dormant: _Piece | None = None
        self.dormant_tail = b""
        self.dormant_dirty = False
        self.dormant_since = 0
        self.dormant_init: bytes | None = None
        self.dormant_close: tuple[int | None, str | None] = (None, None)
        self.timer: threading.Timer | None = None
        self.over = False

    @property
    def manifest_path(self) -> Path | None:
        return None if self.base is None else self.directory / f"{self.base}.session.json"

    def stems(self, number: int) -> Callable[[int], str]:
        """Candidate stems for part ``number``."""
        rotating = self.recorder.rotate_every is not None
        if self.base is None:
            first = utc_stamp(self.started_ms or self.recorder.clock())

            def stems(n: int) -> str:
                return f"{numbered(first)(n)}_part001" if rotating else numbered(first)(n)

            return stems
        return numbered(f"{self.base}_part{number:03d}")

    def open_piece(self, why: str) -> _Piece:
        now = self.recorder.clock()
        if self.started_ms is None:
            self.started_ms = now
        number = self.next_number
        stem, fd = reserve(self.directory, self.stems(number))
        if self.base is None:
            self.base = stem.removesuffix("_part001")
        self.next_number += 1
        piece = _Piece(self.directory, stem, fd, now, number, why)
        self.parts.append({"part": number, "file": f"{stem}.mp4", "started_by": why,
                           "state": "recording"})
        return piece

    def write_manifest(self) -> None:
        path = self.manifest_path
        if path is None:
            return
        verdicts = [p.get("verdict") for p in self.parts if p.get("verdict")]
        # A part still "recording": the first manifest is written before ``active`` is set.
        recording = (self.active is not None or self.dormant is not None
                     or any(p.get("state") == "recording" for p in self.parts))
        document = {
            "version": SIDECAR_VERSION,
            "bot_id": self.key[0] if self.key else None,
            "speaker": self.key[1] if self.key else None,
            "started_at": iso(self.started_ms),
            "connections": self.connections,
            "state": "recording" if recording else "finished",
            "verdict": None if recording else worst(v for v in verdicts if isinstance(v, str)),
            "parts": self.parts,
        }
        replace_json(path, document)

    def part_done(self, recording: FinishedRecording) -> None:
        doc = recording.sidecar
        for entry in self.parts:
            if entry["file"] == recording.path.name:
                entry.update(
                    state="finished", sidecar=recording.sidecar_path.name,
                    verdict=doc["verdict"], end_reason=doc["end_reason"], bytes=doc["bytes"],
                    fragments=doc["fragments"],
                    media_duration_seconds=doc["media_duration_seconds"],
                    ended_at=doc["ended_at"],
                )

    # ------------------------------------------------------------------ the grace window

    def go_dormant(self, stream: _Stream, code: int | None, reason: str | None) -> None:
        """Keep the part open for a reconnect: written up to its last complete fragment, the
        torn rest in memory, the file descriptor closed."""
        piece = stream.piece
        assert piece is not None and piece.fd is not None
        stream.flush_complete()
        # Part of a torn fragment already in the file (fragments larger than the write
        # buffer): appending after it would break the file, so a reconnect gets a new part.
        self.dormant_dirty = stream.pending_start > stream.meter.scanner.last_complete_fragment_end
        self.dormant_tail = bytes(stream.pending)
        stream.pending.clear()
        os.fsync(piece.fd)
        os.close(piece.fd)
        piece.fd = None
        self.dormant = piece
        self.dormant_since = self.recorder.clock()
        init = stream.meter.scanner.init_segment
        self.dormant_init = init.data if init is not None else None
        self.dormant_close = (code, reason)
        self.active = None
        self.write_manifest()
        grace = self.recorder.reconnect_grace
        timer = threading.Timer(grace, self.expire, args=(piece,))
        timer.daemon = True
        self.timer = timer
        timer.start()
        log.info("recording paused %s: waiting %.0fs for a reconnect", piece.part_path, grace)

    def expire(self, piece: _Piece | None = None, *, keep: bool = False) -> None:
        """The grace window is over (or the recorder closes): finalize the dormant part."""
        with self.lock:
            dormant = self.dormant
            if dormant is None or (piece is not None and dormant is not piece):
                return
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.dormant = None
            code, reason = self.dormant_close
            try:
                dormant.fd = reopen(dormant.part_path)
                if self.dormant_tail:
                    dormant.write(self.dormant_tail)
                    dormant.torn_tail_bytes = len(self.dormant_tail)
                self.dormant_tail = b""
                self.recorder.finalize(
                    self, dormant, end="disconnect", reason=end_reason(code, reason),
                    clean=False, code=code, close_reason=reason,
                )
            except OSError as exc:
                log.error("could not finalize %s: %r", dormant.part_path, exc)
                if dormant.fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(dormant.fd)
                    dormant.fd = None
            if not keep:
                self.end()

    def end(self) -> None:
        """No more parts: write the final manifest, forget the key."""
        if self.active is not None or self.dormant is not None or self.over:
            return
        self.over = True
        with contextlib.suppress(OSError):
            self.write_manifest()
        self.recorder.forget(self)


class _Stream:
    """One stream (from ``video_stream_start``, or orphan bytes) of one connection."""

    def __init__(
        self,
        recorder: Recorder,
        info: ConnectionInfo,
        start: StreamStarted | None,
        session: _Session,
        *,
        why: str = "start",
        adopt: bool = False,
    ) -> None:
        self.recorder = recorder
        self.info = info
        self.start = start
        self.session = session
        self.speaker = (start.speaker_id or start.speaker_name) if start is not None else None
        self.meter = MediaMeter()
        self.init_checked = False
        self.rotation_blocked = False
        self.collecting_init = True  # before the first moof / after a new ftyp or moov
        self.position = 0  # stream offset of the next byte to arrive
        self.pending = Chunks()
        self.pending_start = 0  # stream offset of pending[0]
        self._cut: int | None = None  # where the current piece ends, once known
        self.superseded = False
        self.disk_full = False
        self.paused = False  # the disk guard stopped writing
        self.finished: list[FinishedRecording] = []
        # A reconnect: bytes and events wait here until we know whether the stream continues
        # the dormant part (append) or starts a new one.
        self.deciding = adopt
        self.held: list[Fmp4Event] = []
        self.piece: _Piece | None = None
        if not adopt:
            self._new_piece(why)
            self._warn_unsafe_names()

    def _warn_unsafe_names(self) -> None:
        """A bot_id or speaker that had to change to become a file name says so (else the
        directory silently differs from what the bot sent). The original is shown bounded."""
        if self.start is None:
            return
        for what, value in (("bot_id", self.start.bot_id), ("speaker", self.speaker)):
            if isinstance(value, str) and safe_name(value) != value:
                shown = reprlib.repr(value)
                self.warn("unsafe_name", f"{what} {shown} stored as {safe_name(value)!r}")

    # ------------------------------------------------------------------ pieces

    def _new_piece(self, why: str) -> None:
        session = self.session
        piece = session.open_piece(why)
        piece.base_offset = -self.pending_start
        piece.owner = (self.start, self.info)
        self.piece = piece
        try:
            stub = self._sidecar(piece, ended_ms=None, end="recording", reason=None, clean=None)
            path = piece.directory / f"{piece.stem}.json.part"
            with open(path, "wb") as f:  # ours: reserve created it empty a moment ago
                f.write(dumps_json(stub))
            session.write_manifest()
        except OSError:
            os.close(piece.fd or -1)
            piece.fd = None
            raise
        if self.recorder.metrics is not None:
            self.recorder.metrics.streams_active.inc()
        log.info(
            "recording start bot=%r speaker=%r file=%s peer=%s part=%d (%s)",
            self.start.bot_id if self.start is not None else None,
            self.speaker, piece.part_path.with_suffix(""), self.info.peer, piece.number, why,
        )

    # ------------------------------------------------------------------ media

    def feed(self, data: bytes) -> None:
        """Buffer ``data``; write when the buffer is full or a fragment is complete (so a
        crash loses at most the fragment in progress), never per chunk."""
        if self.superseded:
            assert self.piece is not None
            self.piece.ignored_bytes += len(data)
            return
        self.pending += data
        self.position += len(data)
        fragment = False
        for event in self.meter.feed(data):
            self._on_media_event(event)
            fragment = fragment or isinstance(event, FragmentComplete)
        if self.deciding and len(self.pending) > MAX_DECIDING_BYTES:
            self._decide(append=False, why="reconnect")
        full = len(self.pending) >= self.recorder.buffer_size
        if self._cut is None and not self.deciding:
            if full:
                self.flush()
            elif fragment:
                # Up to the end of the fragment: the file then ends on a fragment boundary,
                # so a reconnect can append to it.
                end = self.meter.scanner.last_complete_fragment_end
                self._write_upto(max(end, self.pending_start))

    def flush(self) -> None:
        pending = self.pending
        if not pending:
            return
        piece = self.piece
        assert piece is not None
        if self.paused or self.disk_full:
            piece.lost_bytes += len(pending)
            piece.base_offset -= len(pending)
        else:
            try:
                piece.write_parts(pending.parts, len(pending))
            except OSError as exc:
                if _is_disk_full(exc):
                    self._disk_full(exc)
                raise
        self.pending_start += len(pending)
        pending.clear()

    def flush_complete(self) -> None:
        """Write what is pending up to the end of the last complete fragment."""
        end = self.meter.scanner.last_complete_fragment_end
        keep = end - self.pending_start
        if keep > 0:
            self._write_upto(end)

    def _write_upto(self, offset: int) -> None:
        keep = offset - self.pending_start
        piece = self.piece
        assert piece is not None and 0 <= keep <= len(self.pending)
        if self.paused or self.disk_full:
            piece.lost_bytes += keep
            piece.base_offset -= keep
        else:
            try:
                piece.write_parts(self.pending.head(keep), keep)
            except OSError as exc:
                if _is_disk_full(exc):
                    self._disk_full(exc)
                raise
        del self.pending[:keep]
        self.pending_start = offset

    def _disk_full(self, exc: OSError) -> None:
        piece = self.piece
        assert piece is not None
        if not self.disk_full:
            self.disk_full = True
            self.warn("disk_full", f"disk full after {piece.bytes} bytes: {exc.strerror}")
            if self.recorder.metrics is not None:
                self.recorder.metrics.recording_lost.inc(label="disk_full")
        # What could not be written is lost; what is on disk stays as it is.
        piece.lost_bytes += len(self.pending)

    def _on_media_event(self, event: Fmp4Event) -> None:
        if self.deciding:
            self.held.append(event)
            self._consider(event)
            return
        piece = self.piece
        assert piece is not None
        if isinstance(event, BoxSeen):
            self._on_box(event)
            piece = self.piece
            assert piece is not None
        if isinstance(event, FragmentComplete):
            if self.paused or self.disk_full:
                piece.lost_fragments += 1  # not in the file: its timeline shows the hole
                return
            piece.index.append(fragment_entry(piece.base_offset + event.offset, event))
            piece.fragments += 1
            piece.media_seconds += fragment_seconds(self.meter.scanner.tracks, event)
            piece.completeness.add(event)
            self._plan_cut(event.offset + event.size)
        elif isinstance(event, InitSegment):
            self.collecting_init = False
            piece.completeness.add(event)
        elif isinstance(event, Malformed):
            piece.completeness.add(event)
            kind = "malformed_fmp4" if event.fatal else "fmp4_problem"
            self.warn(kind, f"at byte {event.offset}: {event.reason}")

    def _on_box(self, event: BoxSeen) -> None:
        if not self.init_checked:
            self.init_checked = True
            if event.type not in ("ftyp", "moov"):
                self.warn(
                    "no_init_segment",
                    f"stream does not start with ftyp+moov (first box: {event.type!r})",
                )
        new_init = event.type in ("ftyp", "moov") and not self.collecting_init
        if event.type == "moof":
            self.collecting_init = False
            self._guard(event.offset)
        elif new_init:
            self.collecting_init = True
        if self._cut is not None and event.offset == self._cut:
            self._rotate(new_init=new_init)
        elif new_init and event.offset > 0:
            # A new init segment mid-stream (encoder restart, new resolution): a new part,
            # which starts with it and so plays on its own.
            self._write_upto(event.offset)
            self._switch(end="new_init", why="new_init")

    def _guard(self, offset: int) -> None:
        """At a fragment boundary: stop or resume writing as the disk guard says."""
        guard = self.recorder.disk_guard
        if guard is None or self.disk_full:
            return
        low = guard.low()
        if low == self.paused:
            return
        piece = self.piece
        assert piece is not None
        if low:
            self._write_upto(offset)
            self.paused = True
            self.warn("disk_low", f"free space below the low watermark: not writing from "
                      f"byte {offset} of the stream")
        else:
            self._write_upto(offset)  # counted as lost: we are paused
            self.paused = False
            self.warn("disk_resumed", f"free space back above the high watermark: writing "
                      f"again from byte {offset} of the stream")

    def _plan_cut(self, cut: int) -> None:
        """The piece is long enough: it ends at ``cut``, once a next box shows there is more
        (so a stream never ends with an empty piece)."""
        every = self.recorder.rotate_every
        piece = self.piece
        assert piece is not None
        if every is None or piece.media_seconds < every:
            return
        if self.meter.scanner.init_segment is None:
            if not self.rotation_blocked:
                self.rotation_blocked = True
                self.warn("rotation_skipped", "no init segment: cannot start a new piece")
            return
        if cut < self.pending_start:  # pragma: no cover - fragments end inside the last feed
            return
        self._write_upto(cut)
        self._cut = cut

    def _rotate(self, *, new_init: bool) -> None:
        self._cut = None
        self._switch(end="new_init" if new_init else "rotated",
                     why="new_init" if new_init else "rotated")
        init = self.meter.scanner.init_segment
        piece = self.piece
        assert piece is not None
        if init is not None and not new_init:
            piece.write(init.data)
            piece.base_offset = len(init.data) - self.pending_start
            piece.completeness.set_tracks(init.tracks)

    def _switch(self, *, end: str, why: str) -> None:
        piece = self.piece
        assert piece is not None
        self.recorder.finalize(self.session, piece, end="rotated", reason=end, clean=True,
                               finished=self.finished)
        self._new_piece(why)

    # ------------------------------------------------------------------ reconnects

    def _consider(self, event: Fmp4Event) -> None:
        """Deciding: does this reconnected stream continue the dormant part?"""
        session = self.session
        dormant = session.dormant
        if dormant is None or session.dormant_dirty:
            self._decide(append=False, why="reconnect")
        elif isinstance(event, InitSegment):
            if event.offset != 0 or event.data != session.dormant_init:
                self._decide(append=False, why="reconnect")
            else:
                self.collecting_init = False
        elif isinstance(event, FragmentComplete):
            self._decide(append=self._continues(dormant, event), why="reconnect")
        elif isinstance(event, BoxSeen) and event.type == "moof" and self.collecting_init:
            self._decide(append=False, why="reconnect")  # no init segment first
        elif isinstance(event, BoxSeen) and event.type == "moof":
            self.collecting_init = False
        elif isinstance(event, Malformed) and event.fatal:
            self._decide(append=False, why="reconnect")

    def _continues(self, dormant: _Piece, fragment: FragmentComplete) -> bool:
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

    def _decide(self, *, append: bool, why: str) -> None:
        session = self.session
        self.deciding = False
        held, self.held = self.held, []
        dormant = session.dormant
        if append and dormant is not None:
            if session.timer is not None:
                session.timer.cancel()
                session.timer = None
            session.dormant = None
            dormant.fd = reopen(dormant.part_path)
            init = self.meter.scanner.init_segment
            assert init is not None
            dormant.discarded_tail_bytes += len(session.dormant_tail)
            gap = self.recorder.clock() - session.dormant_since
            dormant.connections += 1
            dormant.owner = (self.start, self.info)
            if len(dormant.reconnects) < MAX_WARNINGS:
                dormant.reconnects.append({
                    "at": iso(self.recorder.clock()), "after_ms": gap,
                    "discarded_tail_bytes": len(session.dormant_tail),
                    "previous_close_code": session.dormant_close[0],
                })
            session.dormant_tail = b""
            # The file has this init segment already: the stream goes on after it.
            self.piece = dormant
            del self.pending[: init.size]
            self.pending_start = init.size
            dormant.base_offset = dormant.bytes - init.size
            self.init_checked = True
            self.collecting_init = False
            held = [e for e in held if not isinstance(e, (InitSegment, BoxSeen))]
            if self.recorder.metrics is not None:
                self.recorder.metrics.reconnects.inc(label="appended")
            log.info("reconnect: %s continues after %d ms", dormant.part_path, gap)
        else:
            if dormant is not None:
                session.expire(dormant, keep=True)  # finalized; the session goes on
            self.collecting_init = True
            if self.recorder.metrics is not None:
                self.recorder.metrics.reconnects.inc(label="new_part")
            self._new_piece(why)
        for event in held:
            self._on_media_event(event)

    # ------------------------------------------------------------------ the rest

    def ping(self, event: LatencyPing) -> None:
        piece = self.piece
        if piece is None or self.superseded:
            return
        piece.pings += 1
        if event.sent_at_ms is not None:
            piece.latencies.append(float(event.received_at_ms - event.sent_at_ms))

    def warn(self, kind: str, message: str, source: str = "recorder") -> None:
        piece = self.piece
        if piece is None:
            return
        piece.warn(source, kind, message)
        if source == "recorder":
            log.warning("%s: %s (%s)", piece.stem, message, kind)
            if self.recorder.metrics is not None:
                self.recorder.metrics.recording_warnings.inc(label=kind)

    def finish(
        self,
        *,
        clean: bool,
        reported: float | None = None,
        code: int | None = None,
        reason: str | None = None,
        why: str | None = None,
    ) -> list[FinishedRecording]:
        """Flush everything and finalize the current piece; returns every piece finished."""
        session = self.session
        ending = why or ("stream_end" if clean else end_reason(code, reason))
        if self.disk_full:
            ending = "disk_full"
        wait = (
            not clean
            and ending in _MAY_RECONNECT
            and session.key is not None
            and self.recorder.reconnect_grace > 0
            and not self.recorder.closing
        )
        events = self.meter.eof()
        if self.deciding:
            for event in events:
                self._on_media_event(event)
            self._decide(append=False, why="reconnect")
        elif not wait:
            for event in events:
                self._on_media_event(event)
        if not self.init_checked and self.position > 0:
            self.warn("no_init_segment", "stream ended before a complete first box")
        if wait and self.piece is not None and self.piece.fd is not None:
            # The torn tail (if any) is held back: a reconnect may continue the part.
            session.go_dormant(self, code, reason)
            return self.finished
        if self.disk_full:
            self.pending.clear()
        else:
            self.flush()
        piece = self.piece
        assert piece is not None
        piece.torn_tail_bytes = piece.completeness.torn_bytes(self.position)
        self.recorder.finalize(
            session, piece, end="stream_end" if clean else "disconnect", reason=ending,
            clean=clean, reported=reported, code=code, close_reason=reason,
            finished=self.finished, index=not self.disk_full,
        )
        if session.active is self:
            session.active = None
        session.end()
        return self.finished

    def abandon(self) -> None:
        """Give up on the current piece after an I/O error: close it, leave its ``.part``
        files for :func:`recover`."""
        piece = self.piece
        if piece is None:
            return
        fd, piece.fd = piece.fd, None
        if fd is not None:
            if self.recorder.metrics is not None:
                self.recorder.metrics.streams_active.dec()
            with contextlib.suppress(OSError):
                os.close(fd)
        session = self.session
        if session.active is self:
            session.active = None
        session.end()

    def _sidecar(
        self,
        piece: _Piece,
        *,
        ended_ms: int | None,
        end: str,
        reason: str | None,
        clean: bool | None,
        reported: float | None = None,
        code: int | None = None,
        close_reason: str | None = None,
    ) -> dict[str, Any]:
        return build_sidecar(self.start, self.info, self.session, piece, ended_ms=ended_ms, end=end,
                        reason=reason, clean=clean, reported=reported, code=code,
                        close_reason=close_reason)



class RecordingHandler(Handler):
    """Records the streams of one connection (made by :class:`Recorder`)."""

    def __init__(self, recorder: Recorder, info: ConnectionInfo) -> None:
        self.recorder = recorder
        self.info = info
        self.stream: _Stream | None = None
        self._early_warnings: list[tuple[str, str]] = []

    def dispatch(self, events: Iterable[Event]) -> None:
        try:
            if type(self).on_chunk is RecordingHandler.on_chunk:
                self._dispatch_runs(events)
            else:  # a subclass's on_chunk hears of every chunk
                super().dispatch(events)
        except Exception as exc:
            metrics = self.recorder.metrics
            if metrics is not None:
                metrics.errors.inc(label="disk" if isinstance(exc, OSError) else "handler")
            raise

    #: Media and pings of a stream in full flow may be recorded on the event loop (asyncio and
    #: trio adapters): they only append to a buffer and write it to the page cache. Whatever may
    #: sync or create files (a start, an end, a rotation due, a reconnect being decided) still
    #: goes to a handler thread. False: always in a thread.
    write_on_loop = True
    #: Media seconds before a planned rotation (``rotate_every``) from which chunks go to a
    #: thread again (the rotation finalizes a part, with fsync).
    _ROTATION_MARGIN = 30.0

    def dispatch_inline(self, events: list[Event]) -> bool:
        stream = self.stream
        if stream is None or not self.write_on_loop:
            return False
        for event in events:
            kind = type(event)
            if kind is not MediaChunk and kind is not LatencyPing:
                return False
        lock = stream.session.lock
        if not lock.acquire(blocking=False):
            return False
        try:
            piece = stream.piece
            every = self.recorder.rotate_every
            if (
                piece is None or stream.superseded or stream.deciding
                or stream._cut is not None
                or (every is not None and piece.media_seconds + self._ROTATION_MARGIN >= every)
            ):
                return False
            self.dispatch(events)
            return True
        finally:
            lock.release()

    def on_start(self, event: StreamStarted) -> None:
        if self.stream is not None:  # the core never does this; finish it anyway
            stream = self.stream
            with stream.session.lock:
                stream.finish(clean=False)
        self.stream = self.recorder.open_stream(self.info, event)
        with self.stream.session.lock:
            for kind, message in self._early_warnings:
                self.stream.warn(kind, message, source="protocol")
        self._early_warnings.clear()

    def _dispatch_runs(self, events: Iterable[Event]) -> None:
        """:meth:`dispatch`, with each run of chunks fed under one lock (per-event costs count
        at 4 KiB chunks)."""
        run: list[MediaChunk] = []
        for event in events:
            if type(event) is MediaChunk:
                run.append(event)
                continue
            if run:
                self._on_chunks(run)
                run = []
            super().dispatch((event,))
        if run:
            self._on_chunks(run)

    def _on_chunks(self, run: list[MediaChunk]) -> None:
        stream = self.stream
        if stream is None or len(run) == 1:
            for event in run:
                self.on_chunk(event)
            return
        with stream.session.lock:
            if stream.superseded:
                for event in run:
                    self.on_chunk(event)
                return
            for event in run:
                stream.feed(event.data)

    def on_chunk(self, event: MediaChunk) -> None:
        stream = self.stream
        if stream is None:
            # Bytes with no video_stream_start (the core delivers them just before the
            # disconnect): kept under unknown/, never dropped.
            stream = self.stream = self.recorder.open_stream(self.info, None)
            with stream.session.lock:
                for kind, message in self._early_warnings:
                    stream.warn(kind, message, source="protocol")
                self._early_warnings.clear()
                stream.warn("no_stream_start", "binary data without video_stream_start")
        with stream.session.lock:
            if stream.superseded:
                assert stream.piece is not None
                stream.piece.ignored_bytes += len(event.data)
                if self.recorder.metrics is not None:
                    self.recorder.metrics.recording_lost.inc(
                        len(event.data), label="superseded_bytes"
                    )
                return
            stream.feed(event.data)

    def on_ping(self, event: LatencyPing) -> None:
        if self.stream is not None:
            with self.stream.session.lock:
                self.stream.ping(event)

    def on_end(self, event: StreamEnded) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            with stream.session.lock:
                if stream.superseded:
                    self.recorder.note_ignored(stream)
                    return
                stream.finish(clean=True, reported=event.duration_seconds)

    def on_warning(self, event: ProtocolWarning) -> None:
        if self.stream is not None:
            with self.stream.session.lock:
                self.stream.warn(event.kind.value, event.message, source="protocol")
        elif len(self._early_warnings) < MAX_WARNINGS:
            self._early_warnings.append((event.kind.value, event.message))

    def on_disconnect(self, event: Disconnected) -> None:
        stream, self.stream = self.stream, None
        if stream is None:
            return
        with stream.session.lock:
            if stream.superseded:
                self.recorder.note_ignored(stream)
                return
            try:
                stream.finish(clean=False, code=event.code, reason=event.reason)
            except OSError as exc:
                # The .part files stay where they are; recover() finishes them next start.
                if self.recorder.metrics is not None:
                    self.recorder.metrics.errors.inc(label="disk")
                where = stream.piece.part_path if stream.piece is not None else "?"
                log.error("could not finalize %s: %r", where, exc)
                stream.abandon()


class Recorder:
    """Handler factory: records every stream under ``output_dir``.

    ``rotate_every`` (seconds of media) cuts streams into parts at fragment boundaries.
    ``on_finish`` is called (in the handler's thread) with each finalized recording;
    ``metrics`` gets the recorder's counters. ``clock`` gives the wall time in Unix ms.

    ``reconnect_grace`` (seconds, 0 for none): after a connection ends with its stream open,
    the part stays open this long for the same ``(bot_id, speaker)`` to come back (see
    docs/recording.md); :meth:`close` finalizes what still waits. ``index``: on finalize, write
    the real duration into the ``moov`` and append an ``mfra`` index (the file then is not
    the stream byte for byte). ``disk_guard``: a :class:`~.diskguard.DiskGuard`.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        *,
        rotate_every: float | None = None,
        on_finish: FinishCallback | None = None,
        metrics: Metrics | None = None,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        clock: Callable[[], int] = now_ms,
        reconnect_grace: float = 0.0,
        index: bool = False,
        disk_guard: DiskGuard | None = None,
        journal: Journal | None = None,
    ) -> None:
        if rotate_every is not None and rotate_every <= 0:
            raise ValueError("rotate_every must be positive")
        if reconnect_grace < 0:
            raise ValueError("reconnect_grace must be >= 0")
        self.root = Path(output_dir).resolve()
        self.rotate_every = rotate_every
        self.on_finish = on_finish
        self.metrics = metrics
        self.buffer_size = buffer_size
        self.clock = clock
        self.reconnect_grace = reconnect_grace
        self.index = index
        self.disk_guard = disk_guard
        self.journal = journal
        self.closing = False
        self._lock = threading.Lock()
        self._sessions: dict[tuple[str, str], _Session] = {}

    def __call__(self, info: ConnectionInfo) -> RecordingHandler:
        return RecordingHandler(self, info)

    # ------------------------------------------------------------------ sessions

    def open_stream(self, info: ConnectionInfo, start: StreamStarted | None) -> _Stream:
        """A new stream: a new session, the continuation of a dormant one, or a duplicate
        that supersedes the stream still open for its key."""
        speaker = (start.speaker_id or start.speaker_name) if start is not None else None
        key = None
        if start is not None and isinstance(start.bot_id, str):
            key = (start.bot_id, speaker if isinstance(speaker, str) else "")
        bot = safe_name(start.bot_id) if start is not None else "unknown"
        directory = self.root / bot
        if speaker:
            directory /= safe_name(speaker)
        directory = inside(self.root, directory)
        directory.mkdir(parents=True, exist_ok=True)
        directory = inside(self.root, directory)
        while True:
            with self._lock:
                session = self._sessions.get(key) if key is not None else None
                if session is None:
                    session = _Session(self, key, directory)
                    if key is not None:
                        self._sessions[key] = session
                    fresh = True
                else:
                    fresh = False
            with session.lock:
                if session.over:  # ended while we waited for its lock: take a new one
                    continue
                session.connections += 1
                if fresh:
                    stream = _Stream(self, info, start, session)
                elif session.active is not None:
                    self._supersede(session.active)
                    stream = _Stream(self, info, start, session, why="superseded")
                else:
                    stream = _Stream(self, info, start, session, adopt=True)
                session.active = stream
                return stream

    def _supersede(self, old: _Stream) -> None:
        """A newer connection for the same key: finalize the old one's part, ignore the rest
        of what it sends, and close it with 1000 (a normal close: the bot does not retry)."""
        old.superseded = True
        log.warning("superseding the stream of %s (key %r)", old.info.peer, old.session.key)
        if self.metrics is not None:
            self.metrics.recording_lost.inc(label="superseded")
        try:
            if old.deciding:
                old._decide(append=False, why="reconnect")
            old.flush()
            piece = old.piece
            assert piece is not None
            for event in old.meter.eof():
                piece.completeness.add(event)
            piece.torn_tail_bytes = piece.completeness.torn_bytes(old.position)
            self.finalize(old.session, piece, end="disconnect", reason="superseded",
                          clean=False, finished=old.finished)
        except OSError as exc:
            log.error("could not finalize the superseded %s: %r", old.piece, exc)
            old.abandon()
        old.session.active = None
        try:  # asks the adapter: never blocks, whatever thread we are in
            old.info.close(1000, "superseded by a newer connection")
        except Exception as exc:
            log.error("could not close the superseded connection of %s: %r", old.info.peer, exc)

    def note_ignored(self, stream: _Stream) -> None:
        """A superseded stream's connection is over: its sidecar gets the bytes ignored."""
        piece = stream.piece
        if piece is None or not piece.ignored_bytes:
            return
        path = piece.directory / f"{piece.stem}.json"
        document = load_json(path)
        if document is None:
            return
        document["ignored_bytes"] = piece.ignored_bytes
        with contextlib.suppress(OSError):
            replace_json(path, document)

    def forget(self, session: _Session) -> None:
        with self._lock:
            if session.key is not None and self._sessions.get(session.key) is session:
                del self._sessions[session.key]

    def close(self) -> None:
        """Finalize the parts still waiting for a reconnect (call when the server stops)."""
        self.closing = True
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.expire()

    # ------------------------------------------------------------------ finalizing

    def finalize(
        self,
        session: _Session,
        piece: _Piece,
        *,
        end: str,
        reason: str,
        clean: bool,
        reported: float | None = None,
        code: int | None = None,
        close_reason: str | None = None,
        finished: list[FinishedRecording] | None = None,
        index: bool = True,
    ) -> FinishedRecording | None:
        """fsync, index, rename, sidecar, journal: the part is final."""
        fd = piece.fd
        if fd is None:
            return None
        metrics = self.metrics
        try:
            if index and self.index and not piece.torn_tail_bytes and piece.index:
                try:
                    piece.bytes = finish_index(
                        fd, piece.bytes, piece.index, track_ends(piece.completeness)
                    )
                except (OSError, ValueError) as exc:
                    log.warning("%s: no index written: %r", piece.stem, exc)
                    piece.warn("recorder", "no_index", f"no index written: {exc}")
                else:
                    piece.indexed = True
            os.fsync(fd)
        finally:
            piece.fd = None
            os.close(fd)
            if metrics is not None:
                metrics.streams_active.dec()
        ended_ms = self.clock()
        final = piece.directory / f"{piece.stem}.mp4"
        rename_noreplace(piece.part_path, final)
        start, info = piece.owner
        sidecar = build_sidecar(
            start, info, session, piece, ended_ms=ended_ms, end=end, reason=reason,
            clean=clean, reported=reported, code=code, close_reason=close_reason,
        )
        sidecar["indexed"] = piece.indexed
        sidecar_path = piece.directory / f"{piece.stem}.json"
        write_new(sidecar_path, dumps_json(sidecar))
        recording = FinishedRecording(final, sidecar_path, sidecar)
        if self.journal is not None:
            self.journal.add(recording)
        with contextlib.suppress(FileNotFoundError):
            (piece.directory / f"{piece.stem}.json.part").unlink()
        fsync_dir(piece.directory)
        session.part_done(recording)
        with contextlib.suppress(OSError):
            session.write_manifest()
        if metrics is not None:
            if end != "rotated":
                metrics.streams_finished.inc(label="clean" if clean else "unclean")
            metrics.verdicts.inc(label=sidecar["verdict"])
            done = piece.completeness
            metrics.dropped_fragments.inc(done.missing)
            for track in done.tracks.values():
                metrics.timeline_gaps.inc(track.ms(track.gap_units) / 1000,
                                          label=track.info.handler)
            if piece.lost_bytes:
                metrics.recording_lost.inc(piece.lost_bytes, label="disk_bytes")
        latency = piece.latency_summary()
        log.info(
            "recording end bot=%r file=%s end=%s bytes=%d fragments=%d "
            "duration=%.2fs reported=%s pings=%d latency_ms=%s verdict=%s",
            sidecar["bot_id"], final, reason if code is None else f"{reason}/{code}",
            piece.bytes, piece.fragments, piece.media_seconds,
            "-" if reported is None else f"{reported:.2f}s", piece.pings,
            "-" if latency is None else
            "{min:.0f}/{median:.0f}/{max:.0f}".format(**latency), sidecar["verdict"],
        )
        if finished is not None:
            finished.append(recording)
        self.finished(recording)
        return recording

    def finished(self, recording: FinishedRecording) -> None:
        if self.metrics is not None:
            self.metrics.recorded_bytes.inc(recording.sidecar["bytes"])
        if self.on_finish is not None:
            try:
                self.on_finish(recording)
            except Exception as exc:
                log.error("on_finish failed for %s: %r", recording.path, exc, exc_info=exc)

