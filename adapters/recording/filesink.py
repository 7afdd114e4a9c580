"""The file sink: every local file of a recording, written in threads of its own.

:class:`FileSink` receives the stream model's events (:mod:`.sinks`) and owns every file:

* at :class:`~.sinks.PartOpened`: ``<stem>.mp4.part`` and ``<stem>.json.part`` taken with
  ``O_EXCL``, the ``.json.part`` stub (what recovery starts from, padded: the room reserved
  for the final sidecar), the session manifest;
* :class:`~.sinks.Chunk` bytes gathered and written once per fragment (or per
  ``buffer_size``); each fragment written publishes a :class:`~.sinks.FragmentStored` with its
  file offset, for the sinks that follow the file;
* :class:`~.sinks.StreamPaused`: the file is made to end at the last complete fragment (the
  torn rest read back into memory), so that a :class:`~.sinks.StreamResumed` appends cleanly;
  without a reconnect the rest is written back at :class:`~.sinks.PartClosed`;
* :class:`~.sinks.PartClosed`: the part is finalized (:mod:`.finalize`) and a
  :class:`~.sinks.PartFinalized` published.

Disk trouble never reaches the bot (issue 13): ``when_full = "block"`` makes a slow disk slow
the reading of the bot's socket (the connection's :class:`~meetstream_live.adapters.Backlog`),
and a failed write (``ENOSPC``, ``EDQUOT``, ``EIO``, ``EROFS``...) or a disk guard saying *low*
stops the writing of that part only: the file is cut back to its last complete fragment, what
follows is counted as lost (``lost_bytes``, ``lost_fragments``, a hole in ``holes``), and writing
resumes at a later fragment boundary once the disk takes writes again (:data:`~.states.FILE`).
Errors are counted (``meetstream_live_disk_errors_total{errno}``) and logged once per part.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from .durable import JOIN_BELOW, REAL_DISK, Disk, dumps_json, errno_name, reopen
from .finalize import Finalizer
from .meter import fragment_entry
from .metrics import Metrics
from .partfiles import Continued, PartFile, PathTemplate, ResumedSession, SessionFiles
from .sidecar import MAX_HOLES, FileFacts, build_sidecar
from .sinks import (
    Chunk,
    FragmentSeen,
    FragmentStored,
    InitSeen,
    Part,
    PartAmended,
    PartClosed,
    PartOpened,
    Sink,
    SinkEvent,
    SinkSet,
    StreamPaused,
    StreamResumed,
)
from .states import FileInput, FileState

if TYPE_CHECKING:
    from .diskguard import DiskGuard
    from .hooks import Journal

__all__ = ["DEFAULT_BUFFER_SIZE", "SIDECAR_ROOM", "FileSink"]

log = logging.getLogger("meetstream_live.recorder")

#: Bytes gathered before a ``write`` call (unless a fragment completes first). 128 KiB: a
#: quarter second at 4 Mbit/s, and what a thousand streams hold in memory is bounded.
DEFAULT_BUFFER_SIZE = 128 * 1024
#: The ``.json.part`` stub is padded to this size: room kept for the final sidecar, given
#: back (cut) when the disk is too full to write it otherwise.
SIDECAR_ROOM = 64 * 1024
_FULL = frozenset(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class FileSink(Sink):
    """Writes each part to ``<root>/<bot_id>/[<speaker>/]<stem>.mp4`` with its sidecar."""

    name: ClassVar[str] = "file"
    accepts: ClassVar[tuple[type[SinkEvent], ...]] = (
        PartOpened, Chunk, InitSeen, FragmentSeen, StreamPaused, StreamResumed, PartClosed,
        PartAmended,
    )
    when_full: ClassVar[Literal["block", "drop"]] = "block"
    #: One writer for every part: writes to the page cache are quick, and one thread avoids
    #: the GIL ping-pong of several (measured: 300 streams cost 1.4x the CPU with 4).
    #: Finalizing (fsync, renames) runs in the finalizer's own threads.
    threads: ClassVar[int] = 1
    linger: ClassVar[float] = 0.002
    batch_bytes: ClassVar[int] = DEFAULT_BUFFER_SIZE

    def __init__(
        self,
        root: Path,
        *,
        rotating: bool = False,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        index: bool = False,
        disk_guard: DiskGuard | None = None,
        journal: Journal | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], int] = _wall_ms,
        disk: Disk = REAL_DISK,
        retry_interval: float = 5.0,
        resume_free_bytes: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        finalize_threads: int = 2,
        layout: PathTemplate | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.rotating = rotating
        #: Where sessions' files go (``None``: ``<bot_id>/[<speaker>/]<UTC start>``).
        self.layout = layout
        self.buffer_size = buffer_size
        self.index = index
        self.guard = disk_guard
        self.journal = journal
        self.metrics = metrics
        self.clock = clock
        self.disk = disk
        self.retry_interval = retry_interval
        #: After ``ENOSPC``/``EDQUOT``, writing resumes (at a boundary) with this much free.
        self.resume_free_bytes = (
            resume_free_bytes if resume_free_bytes is not None
            else max(4 * 1024 * 1024, 4 * buffer_size)
        )
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._parts: dict[int, PartFile] = {}
        self._sessions: dict[int, SessionFiles] = {}
        self._adopted: dict[int, ResumedSession] = {}  # sessions continuing a crashed one
        self._continued: dict[int, Continued] = {}  # sessions another receiver began
        self._writers = 0
        self._sinks: SinkSet | None = None
        self._unsettled: set[int] = set()  # parts closed, not finalized yet
        self._settle = threading.Condition(self._lock)
        self.finalizer = Finalizer(self, finalize_threads)

    # ------------------------------------------------------------------ the Sink contract

    def start(self, sinks: SinkSet) -> None:
        self._sinks = sinks

    def publish(self, part: Part, events: Sequence[SinkEvent]) -> None:
        if self._sinks is not None:
            self._sinks.publish(part, events)

    def handle(self, part: Part, events: Sequence[SinkEvent]) -> None:
        pf = self._parts.get(part.id)
        after_chunk = False  # the buffer is written once the chunk's fragments are known
        for event in events:
            kind = type(event)
            if kind is Chunk:
                assert pf is not None and isinstance(event, Chunk)
                if after_chunk:
                    self._buffered(pf)
                self._chunk(pf, event)
                after_chunk = True
                continue
            if after_chunk and kind is not FragmentSeen and kind is not InitSeen:
                assert pf is not None
                self._buffered(pf)
                after_chunk = False
            if kind is FragmentSeen:
                assert pf is not None and isinstance(event, FragmentSeen)
                self._fragment(pf, event)
            elif kind is InitSeen:
                assert pf is not None and isinstance(event, InitSeen)
                self._init(pf, event)
            elif kind is PartOpened:
                pf = self._opened(part)
            elif kind is StreamPaused:
                assert pf is not None and isinstance(event, StreamPaused)
                self._paused(pf, event.upto)
            elif kind is StreamResumed:
                assert pf is not None
                self._resumed(pf)
            elif kind is PartClosed:
                assert pf is not None and isinstance(event, PartClosed)
                self._closed(pf, event)
            elif kind is PartAmended:
                assert isinstance(event, PartAmended)
                self.finalizer.amend(part, event.fields)
        if after_chunk:
            assert pf is not None
            self._buffered(pf)

    def abandon(self, part: Part, exc: Exception) -> None:
        """A bug made :meth:`handle` fail again and again: the part's files stay as they are
        (``recover`` finishes them at the next start)."""
        with self._lock:
            pf = self._parts.pop(part.id, None)
        if pf is not None:
            self._set_writing(pf, False)
            if pf.fd is not None:
                self.close_fd(pf)
            self.finalizer.announce(pf.session, part.number, None)
        self.settled(part)

    def close(self) -> None:
        """The last events were handled: one more try for what waits for the disk; parts
        still open (their streams never ended) are left as ``.part`` files for ``recover``."""
        self.finalizer.close()
        with self._lock:
            left = list(self._parts.values())
            self._parts.clear()
        for pf in left:
            if pf.fd is not None:
                log.warning("%s left unfinished (the recorder closed first): recover() "
                            "finishes it", pf.path(".mp4.part"),
                            extra={"event": "left_unfinished",
                                   "file": str(pf.path(".mp4.part"))})
                self.close_fd(pf)

    # ------------------------------------------------------------------ parts

    def adopt(self, session: int, resumed: ResumedSession) -> None:
        """Session ``session`` (:attr:`Part.session`) continues ``resumed``: its parts go on
        in that session's directory and manifest. Called before its first part is opened."""
        with self._lock:
            self._adopted[session] = resumed

    def continue_remote(self, session: int, continued: Continued) -> None:
        """Session ``session`` continues one another receiver began (see :class:`Continued`).
        Called before its first part is opened."""
        with self._lock:
            self._continued[session] = continued

    def _session(self, part: Part) -> SessionFiles:
        with self._lock:
            session = self._sessions.get(part.session)
            if session is None:
                session = self._sessions[part.session] = SessionFiles(
                    self.root, part, rotating=self.rotating, disk=self.disk,
                    layout=self.layout, resumed=self._adopted.pop(part.session, None),
                    continued=self._continued.pop(part.session, None))
            return session

    def forget(self, pf: PartFile) -> None:
        """A part is final: its records go (its session's too, once over)."""
        with self._lock:
            self._parts.pop(pf.part.id, None)
            session = pf.session
            if session.over and not any(p.session is session for p in self._parts.values()):
                self._sessions.pop(session.id, None)

    def _opened(self, part: Part) -> PartFile:
        pf = PartFile(part, self._session(part))
        with self._lock:
            self._parts[part.id] = pf
        pf.hole = self._hole(0, 0, "")  # until the file exists
        if self._open_file(pf):
            pf.hole = None
            self._to(pf, FileInput.OPENED)
        return pf

    def _open_file(self, pf: PartFile) -> bool:
        """Take the part's names, write the stub and the manifest; False on a disk error."""
        session = pf.session
        try:
            pf.stem, pf.fd = session.reserve(pf.part)
        except OSError as exc:
            self._failed(pf, exc, "open")
            return False
        pf.facts.name = f"{pf.stem}.mp4"
        manifest = session.manifest_path
        pf.facts.session = manifest.name if manifest is not None else None
        self._write_stub(pf)
        self.finalizer.write_manifest(session)
        log.info("recording to %s (part %d, %s)", pf.path(".mp4.part"), pf.part.number,
                 pf.part.why,
                 extra={"event": "file_opened", "file": str(pf.path(".mp4.part")),
                        "bot_id": pf.part.bot_id, "speaker": pf.part.speaker,
                        "part": pf.part.number})
        return True

    def _write_stub(self, pf: PartFile) -> None:
        stub = dumps_json(build_sidecar(pf.part, None, pf.facts))
        pf.stub_size = len(stub)
        padded = stub + b" " * max(0, SIDECAR_ROOM - len(stub))
        try:
            fd = self.disk.open(pf.path(".json.part"), os.O_WRONLY)  # ours, created empty
            try:
                view = memoryview(padded)
                while view:
                    view = view[self.disk.write(fd, view):]
            finally:
                self.disk.close(fd)
        except OSError as exc:  # recovery then works from the media alone
            self.count_error(pf, exc, "stub")
            pf.stub_size = 0

    def _to(self, pf: PartFile, event: FileInput) -> None:
        pf.advance(event)
        self._set_writing(pf, pf.writing and not pf.paused)

    def _set_writing(self, pf: PartFile, on: bool) -> None:
        """Count the parts being written (the disk guard keeps room for each)."""
        if pf.counted == on:
            return
        pf.counted = on
        with self._lock:
            self._writers += 1 if on else -1

    def _low(self) -> bool:
        guard = self.guard
        return guard is not None and guard.low(max(1, self._writers))

    # ------------------------------------------------------------------ media

    def _chunk(self, pf: PartFile, event: Chunk) -> None:
        if event.offset != pf.end:  # cannot happen: the model publishes contiguous bytes
            log.error("part %d: chunk at %d, expected %d", pf.part.number, event.offset, pf.end)
            self._lose_upto(pf, pf.end)
            pf.pending_start = event.offset
        if pf.decide_at is not None:
            self._decide(pf, pf.decide_at)
        if pf.state is not FileState.WRITING:
            self._lose_upto(pf, pf.end)
        pf.pending += event.data

    def _buffered(self, pf: PartFile) -> None:
        """After a chunk and the fragments it completed: write the buffer once it is full
        (unless the disk guard says low: then the part stops, inside the fragment)."""
        if pf.state is FileState.WRITING and len(pf.pending) >= self.buffer_size:
            self._write_upto(pf, pf.end)

    def _init(self, pf: PartFile, event: InitSeen) -> None:
        end = event.offset + event.segment.size
        pf.init, pf.init_at = event.segment, event.offset
        if pf.state is FileState.WRITING:
            pf.init_end = end
            self._announce(pf)
        self._at_boundary(pf, end)

    def _fragment(self, pf: PartFile, event: FragmentSeen) -> None:
        end = event.offset + event.size
        if (
            pf.state is FileState.WRITING and self._write_upto(pf, end)
            and event.offset - pf.skew >= pf.good_end
        ):
            facts = pf.facts
            at = event.offset - pf.skew
            facts.fragments += 1
            facts.media_seconds += event.seconds
            facts.completeness.add(event.fragment)
            pf.index.append(fragment_entry(at, event.fragment))
            pf.good_end = end - pf.skew
            self.publish(pf.part, [FragmentStored(pf.part, pf.path(".mp4.part"), at, event.size,
                                                  event.fragment, event.keyframe,
                                                  event.seconds)])
        else:
            self._lose_upto(pf, end)
            pf.facts.lost_fragments += 1
            if pf.hole is not None:
                pf.hole["fragments"] += 1
        self._at_boundary(pf, end)

    def _write_upto(self, pf: PartFile, upto: int) -> bool:
        """Write what is pending before part offset ``upto``; False if it failed (the part
        then stops writing)."""
        keep = upto - pf.pending_start
        if keep <= 0:
            return True
        if self.guard is not None and self._low():  # before every write: several streams
            self._stop(pf, "disk_low", None)  # write at once, each may be in a fragment
            return False
        parts = pf.pending.head(keep)
        if len(parts) > 1 and keep < JOIN_BELOW * len(parts):
            parts = [b"".join(parts)]
        fd = pf.fd
        assert fd is not None
        written = 0
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    n = self.disk.write(fd, view)
                    written += n
                    view = view[n:]
        except OSError as exc:
            pf.file_size += written  # in the file now (and cut by _stop, counted there)
            del pf.pending[:written]
            pf.pending_start += written
            self._failed(pf, exc, "media_write")
            return False
        finally:
            if self.guard is not None and written:
                self.guard.wrote(written)
        pf.file_size += written
        del pf.pending[:keep]
        pf.pending_start = upto
        if pf.resuming is not None:
            self._written_again(pf)
        self._announce(pf)
        return True

    def _announce(self, pf: PartFile) -> None:
        """The init segment is in the file once the bytes after it are written."""
        if pf.init_end is None or pf.pending_start < pf.init_end:
            return
        init, at = pf.init, pf.init_at
        assert init is not None and at is not None
        pf.init_end = None
        pf.facts.completeness.set_tracks(init.tracks)
        pf.good_end = max(pf.good_end, at + init.size - pf.skew)
        self.publish(pf.part, [FragmentStored(pf.part, pf.path(".mp4.part"), at - pf.skew,
                                              init.size, None, None, 0.0)])

    def _lose_upto(self, pf: PartFile, upto: int) -> None:
        keep = min(upto - pf.pending_start, len(pf.pending))
        if keep > 0:
            del pf.pending[:keep]
            pf.pending_start += keep
            pf.facts.lost_bytes += keep
            if pf.hole is not None:
                pf.hole["bytes"] += keep
        if upto > pf.pending_start and not pf.pending:
            pf.pending_start = upto

    # ------------------------------------------------------------------ boundaries

    def _at_boundary(self, pf: PartFile, at: int) -> None:
        """Part offset ``at`` ends a complete box: decide there (the disk guard, resuming)
        once bytes after it are here."""
        if pf.end > at:
            self._decide(pf, at)
        else:
            pf.decide_at = at

    def _decide(self, pf: PartFile, at: int) -> None:
        pf.decide_at = None
        if pf.paused:
            return
        if pf.state is FileState.WRITING:
            if self._low():
                self._stop(pf, "disk_low", None)
        elif pf.state in (FileState.LOST, FileState.OPENING) and self._may_resume(pf):
            self._resume(pf, at)

    def _may_resume(self, pf: PartFile) -> bool:
        if self.guard is not None and self.guard.low(self._writers + 1):
            return False
        exc = pf.error
        if exc is None:
            return True
        if exc.errno in _FULL:
            try:
                return self.disk.free_bytes(pf.directory) >= self.resume_free_bytes
            except OSError:
                return False
        return self.monotonic() >= pf.retry_at

    def _resume(self, pf: PartFile, at: int) -> None:
        """The disk takes writes again: the file goes on with the bytes from ``at`` (a
        boundary), after the init segment if the file lacks it (so it plays)."""
        disk = self.disk
        try:
            if pf.stem is None:
                if not self._open_file(pf):
                    return
            elif pf.fd is None:
                pf.fd = reopen(pf.path(".mp4.part"), disk)
                pf.file_size = disk.size(pf.fd)
            assert pf.fd is not None
            if pf.dirty or pf.file_size > pf.good_end:
                disk.truncate(pf.fd, pf.good_end)
                pf.file_size, pf.dirty = pf.good_end, False
            init = pf.init
            if init is not None and pf.file_size == 0 and not pf.facts.completeness.has_init:
                pf.dirty = True  # until the whole init segment is in
                view = memoryview(init.data)
                while view:
                    view = view[disk.write(pf.fd, view):]
                pf.file_size = pf.good_end = init.size
                pf.dirty = False
                pf.facts.completeness.set_tracks(init.tracks)
                self._init_restored(pf, init.size)
        except OSError as exc:
            self._failed(pf, exc, "media_write")
            return
        # The hole stays open until a write succeeds (the disk may still refuse them).
        pf.resuming, pf.hole = pf.hole, None
        pf.resume_at = at
        pf.skew = at - pf.file_size
        pf.init_end = None
        self._to(pf, FileInput.OPENED if pf.state is FileState.OPENING else FileInput.DISK_BACK)

    @staticmethod
    def _init_restored(pf: PartFile, size: int) -> None:
        """The init segment, lost with the bytes around it, heads the file again: its bytes
        are in the file, not lost (``bytes + lost_bytes == received_bytes`` holds), and the
        hole that began with it begins after it, in the file too."""
        hole, at = pf.hole, pf.init_at
        if hole is None or at is None or hole["part_offset"] > at or hole["bytes"] < size:
            return
        hole["bytes"] -= size
        pf.facts.lost_bytes -= size
        if hole["part_offset"] == at:
            hole["part_offset"] = at + size
        hole["file_offset"] = size

    def _written_again(self, pf: PartFile) -> None:
        """A write succeeded after :meth:`_resume`: the hole is over."""
        hole, pf.resuming = pf.resuming, None
        pf.error = pf.reason = None
        if hole is None or not (hole["bytes"] or hole["fragments"]):
            return
        at = pf.resume_at
        hole["resumed_at"] = at
        self._keep_hole(pf, hole)
        if hole["reason"]:
            pf.facts.warn("disk_resumed", f"writing again from byte {at} of the part "
                          f"(after {hole['bytes']} bytes lost: {hole['reason']})")
            log.warning("%s: writing again from byte %d of the part", pf.path(".mp4.part"), at)

    def _keep_hole(self, pf: PartFile, hole: dict[str, Any]) -> None:
        if len(pf.facts.holes) < MAX_HOLES:
            pf.facts.holes.append(hole)
        else:
            pf.facts.holes_dropped += 1

    @staticmethod
    def _hole(part_offset: int, file_offset: int, reason: str) -> dict[str, Any]:
        return {"part_offset": part_offset, "file_offset": file_offset, "bytes": 0,
                "fragments": 0, "reason": reason, "resumed_at": None}

    def _stop(self, pf: PartFile, reason: str, exc: OSError | None) -> None:
        """Stop writing the part: the file cut back to its last complete box (those bytes
        are lost), what waits in memory lost as it goes, until :meth:`_resume`."""
        start = pf.good_end + pf.skew
        cut = 0
        if pf.writing:
            cut = max(0, pf.file_size - pf.good_end)
            if pf.fd is not None and (cut or pf.dirty):
                try:
                    self.disk.truncate(pf.fd, pf.good_end)
                    pf.file_size, pf.dirty = pf.good_end, False
                except OSError as again:
                    pf.dirty = True
                    self.count_error(pf, again, "truncate")
        pf.init_end = None
        if pf.hole is None:  # a new hole, or the one a resume did not end
            pf.hole = pf.resuming or self._hole(start, pf.good_end, reason)
            pf.resuming = None
        pf.hole["bytes"] += cut
        pf.facts.lost_bytes += cut
        was = pf.reason
        pf.reason = reason
        if pf.state is FileState.WRITING:
            self._to(pf, FileInput.DISK_LOW if exc is None else FileInput.FAILED)
        if reason == "disk_low" and was != reason:
            pf.facts.warn("disk_low", f"free space below the low watermark: not writing from "
                          f"byte {start} of the part")

    def _failed(self, pf: PartFile, exc: OSError, site: str) -> None:
        """A file operation of the part failed: counted, logged once, the part stops
        writing (until a boundary where the disk takes writes again)."""
        self.count_error(pf, exc, site)
        new = pf.reason != errno_name(exc)
        pf.error = exc
        pf.retry_at = self.monotonic() + self.retry_interval
        if new:
            kind = "disk_full" if exc.errno in _FULL else "disk_error"
            pf.facts.warn(kind, f"{site} failed ({errno_name(exc)}: {exc.strerror or exc}) "
                          f"after {pf.file_size} bytes in the file")
            if self.metrics is not None and kind == "disk_full":
                self.metrics.recording_lost.inc(label="disk_full")
        if pf.state is FileState.OPENING:
            pf.reason = errno_name(exc)
            if pf.hole is not None and not pf.hole["reason"]:
                pf.hole["reason"] = pf.reason
            return
        self._stop(pf, errno_name(exc), exc)

    def count_error(self, pf: PartFile, exc: OSError, site: str) -> None:
        pf.facts.disk_errors += 1
        if self.metrics is not None:
            self.metrics.disk_error(exc, site)
        where = pf.path(".mp4.part") if pf.stem is not None else pf.directory
        if not pf.logged:
            pf.logged = True
            log.error("%s: %s failed: %s (%s); %s", where, site, errno_name(exc),
                      exc.strerror or exc,
                      "finalizing is retried" if pf.state is FileState.CLOSED else
                      "the connection goes on, the part stops writing until the disk takes "
                      "writes again",
                      extra={"event": "disk_error", "file": str(where), "site": site,
                             "errno": errno_name(exc), "bot_id": pf.part.bot_id})
        else:
            log.debug("%s: %s failed again: %s", where, site, errno_name(exc))

    # ------------------------------------------------------------------ pauses and the end

    def _paused(self, pf: PartFile, upto: int) -> None:
        """The part waits for a reconnect: its file ends at ``upto`` (a boundary), the rest
        is kept in memory, the file is closed."""
        disk = self.disk
        tail = b""
        if pf.state is FileState.WRITING:
            self._write_upto(pf, upto)
        if pf.state is FileState.WRITING:
            assert pf.fd is not None
            at = upto - pf.skew
            try:
                if pf.file_size > at:
                    tail = disk.pread(pf.fd, pf.file_size - at, at)
                    disk.truncate(pf.fd, at)
                    pf.file_size = at
                disk.fsync(pf.fd)
            except OSError as exc:
                self._failed(pf, exc, "truncate")
        if pf.state is FileState.WRITING:
            pf.tail = tail + bytes(pf.pending)
            self._set_writing(pf, False)
        else:
            self._lose_upto(pf, upto)
            pf.tail = bytes(pf.pending)
        pf.pending.clear()
        pf.pending_start = upto
        pf.paused = True
        pf.decide_at = None
        if pf.fd is not None:
            self.close_fd(pf)

    def _resumed(self, pf: PartFile) -> None:
        """A reconnect continues the part: its tail is dropped, writing goes on at the end."""
        pf.paused = False
        pf.tail = b""
        if pf.state is FileState.WRITING:
            self._set_writing(pf, True)
            try:
                pf.fd = reopen(pf.path(".mp4.part"), self.disk)
                pf.file_size = self.disk.size(pf.fd)
            except OSError as exc:
                self._failed(pf, exc, "open")
        pf.decide_at = pf.pending_start

    def _closed(self, pf: PartFile, event: PartClosed) -> None:
        summary: Any = event.summary
        pf.summary = summary
        pf.session.closed(summary)
        if pf.paused:  # no reconnect came: the held tail goes back into the file
            pf.paused = False
            tail, pf.tail = pf.tail, b""
            if pf.state is FileState.WRITING:
                self._set_writing(pf, True)
                try:
                    pf.fd = reopen(pf.path(".mp4.part"), self.disk)
                    pf.file_size = self.disk.size(pf.fd)
                except OSError as exc:
                    self._failed(pf, exc, "open")
            pf.pending += tail
            if pf.state is not FileState.WRITING:
                self._lose_upto(pf, pf.end)
        if pf.stem is None:  # never opened: one more try, for a sidecar saying what was lost
            self._lose_upto(pf, pf.end)
            self._resume(pf, pf.end)
            if not self._has_file(pf):
                self._gone(pf)
                return
            pf.facts.lost_at_end = pf.facts.lost_bytes > 0
        if pf.state is FileState.WRITING:
            self._write_upto(pf, pf.end)
        if pf.state is not FileState.WRITING:
            self._lose_upto(pf, pf.end)
        if pf.resuming is not None and pf.state is FileState.WRITING:
            self._written_again(pf)  # nothing was left to write after the resume
        hole = pf.hole
        if hole is not None and (hole["bytes"] or hole["fragments"]):
            pf.facts.lost_at_end = True
            self._keep_hole(pf, hole)
        pf.hole = None
        facts = pf.facts
        facts.bytes = pf.file_size
        if pf.dirty:
            facts.torn_tail_bytes = pf.file_size - pf.good_end
        elif pf.state is FileState.WRITING:
            facts.torn_tail_bytes = min(summary["torn_tail_bytes"], pf.file_size - pf.good_end)
        facts.completeness.fatal = summary["fatal"]
        facts.completeness.orphan_moofs = summary["moofs_without_mdat"]
        self._to(pf, FileInput.CLOSED)
        self.finalizer.finalize(pf)

    def _gone(self, pf: PartFile) -> None:
        """The part ended without ever getting a file (the disk refused it throughout)."""
        log.error("bot %s part %d: nothing recorded, the disk refused every write (%s)",
                  pf.part.bot_id, pf.part.number, pf.reason,
                  extra={"event": "nothing_recorded", "bot_id": pf.part.bot_id,
                         "speaker": pf.part.speaker, "part": pf.part.number})
        with pf.session.lock:
            pf.session.gone.add(pf.part.number)
        if self.metrics is not None:
            self.metrics.recording_lost.inc(pf.end, label="disk_bytes")
        self._to(pf, FileInput.CLOSED)
        self.finalizer.announce(pf.session, pf.part.number, None)
        self.forget(pf)
        self.finalizer.write_manifest(pf.session)
        self.settled(pf.part)

    def close_fd(self, pf: PartFile) -> None:
        fd, pf.fd = pf.fd, None
        if fd is not None:
            try:
                self.disk.close(fd)
            except OSError as exc:
                self.count_error(pf, exc, "close")

    def closing(self, part: Part) -> None:
        """The stream model is about to publish ``part``'s :class:`~.sinks.PartClosed`: it
        is unsettled until finalized (see :meth:`wait_settled`)."""
        with self._settle:
            self._unsettled.add(part.id)

    def settled(self, part: Part) -> None:
        """``part`` is finalized, or its finalizing waits for the disk: its waiters go on."""
        with self._settle:
            self._unsettled.discard(part.id)
            self._settle.notify_all()

    def wait_settled(self, parts: Sequence[Part], timeout: float | None) -> bool:
        """Wait until none of ``parts`` is closed and unsettled; False on timeout."""
        deadline = None if timeout is None else self.monotonic() + timeout
        with self._settle:
            while any(part.id in self._unsettled for part in parts):
                remaining = None if deadline is None else deadline - self.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._settle.wait(remaining)
        return True

    @staticmethod
    def _has_file(pf: PartFile) -> bool:
        return pf.stem is not None

    def part_file(self, part: Part) -> PartFile | None:
        """The record of a part not finalized yet."""
        return self._parts.get(part.id)

    def facts(self, part: Part) -> FileFacts | None:
        """The file facts of a part still being written (tests, debugging)."""
        pf = self._parts.get(part.id)
        return pf.facts if pf is not None else None

    @property
    def sinks(self) -> SinkSet | None:
        """The set this sink publishes into (after :meth:`start`)."""
        return self._sinks
