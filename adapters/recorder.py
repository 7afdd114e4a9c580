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
import json
import logging
import os
import statistics
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from meetstream_live import (
    BoxSeen,
    Disconnected,
    Event,
    Fmp4Event,
    Fmp4Scanner,
    FragmentComplete,
    LatencyPing,
    Malformed,
    MediaChunk,
    ProtocolWarning,
    StreamEnded,
    StreamStarted,
    TrackInfo,
)

from ._common import ConnectionInfo, Handler, now_ms
from .metrics import Metrics

__all__ = [
    "FinishedRecording",
    "Recorder",
    "RecordingHandler",
    "fragment_seconds",
    "recover",
    "safe_name",
]

log = logging.getLogger("meetstream_live.recorder")

#: Sidecar format version; bumped when a field changes meaning.
SIDECAR_VERSION = 1
#: Longest path component made from a bot's strings, in characters and in UTF-8 bytes.
MAX_NAME_CHARS = 100
MAX_NAME_BYTES = 200
#: Warnings kept in one sidecar; more are only counted.
MAX_WARNINGS = 100
#: Bytes gathered before a ``write`` call.
DEFAULT_BUFFER_SIZE = 256 * 1024
#: Read size when scanning a file during recovery.
_SCAN_READ = 1024 * 1024

_WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"}
    | {f"com{i}" for i in range(1, 10)}
    | {f"lpt{i}" for i in range(1, 10)}
)
_FORBIDDEN = frozenset('/\\<>:"|?*')


# ---------------------------------------------------------------------------- names


def safe_name(value: object, *, default: str = "unknown") -> str:
    """One path component made from an untrusted string (a ``bot_id``, a speaker name).

    NFC-normalized; control, format and surrogate characters dropped; path separators and
    characters Windows forbids replaced by ``_``; leading dots and spaces stripped (no ``..``,
    no hidden files); at most :data:`MAX_NAME_CHARS` characters and :data:`MAX_NAME_BYTES`
    UTF-8 bytes. Empty results, and anything that is not a string, give ``default``.
    """
    if not isinstance(value, str):
        return default
    text = unicodedata.normalize("NFC", value)
    kept: list[str] = []
    for char in text:
        category = unicodedata.category(char)
        if category in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            continue
        kept.append("_" if char in _FORBIDDEN else (" " if category == "Zs" else char))
    name = "".join(kept).strip(" .")
    if len(name) > MAX_NAME_CHARS:
        name = name[:MAX_NAME_CHARS]
    while len(name.encode("utf-8")) > MAX_NAME_BYTES:
        name = name[:-1]
    name = name.rstrip(" .")
    if not name:
        return default
    if name.split(".")[0].lower() in _WINDOWS_RESERVED:
        name = "_" + name
    return name


def _utc_stamp(ms: int) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ms / 1000))


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _inside(root: Path, directory: Path) -> Path:
    """``directory`` resolved, after checking it is ``root`` or below it."""
    resolved = directory.resolve()
    if resolved != root and root not in resolved.parents:
        raise RuntimeError(f"refusing to write outside the output directory: {resolved}")
    return resolved


# ---------------------------------------------------------------------------- files


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform / filesystem allows it
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _create(path: Path) -> int:
    """Open a new file for writing; ``FileExistsError`` if anything is there already."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    return os.open(path, flags, 0o644)


def _write_new(path: Path, data: bytes) -> None:
    """A new file with ``data``, fsynced."""
    fd = _create(path)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _rename_noreplace(source: Path, target: Path) -> None:
    """Rename without ever replacing ``target`` (``FileExistsError`` if it exists)."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:
        # No hard links here (some network and FAT filesystems): check, then rename.
        if os.path.lexists(target):
            raise FileExistsError(target) from None
        os.rename(source, target)
    else:
        os.unlink(source)


def _replace_json(path: Path, document: dict[str, Any]) -> None:
    """Write our own sidecar anew (recovery updates it): a temporary file, then a rename."""
    temporary = path.with_name(path.name + f".{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    _write_new(temporary, _dumps(document))
    os.replace(temporary, path)


def _dumps(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n").encode(
        "utf-8", "backslashreplace"
    )


def _reserve(directory: Path, stems: Callable[[int], str]) -> tuple[str, int]:
    """Take the first stem ``stems(0), stems(1)...`` with none of its four files existing.

    Returns the stem and an open descriptor of its new, empty ``.mp4.part``; its
    ``.json.part`` is created too (empty), so the stem is ours until we rename them.
    """
    for n in range(100_000):
        stem = stems(n)
        part = directory / f"{stem}.mp4.part"
        try:
            fd = _create(part)
        except FileExistsError:
            continue
        try:
            if not any(os.path.lexists(directory / f"{stem}{s}") for s in (".mp4", ".json")):
                os.close(_create(directory / f"{stem}.json.part"))
                return stem, fd
        except FileExistsError:
            pass
        except BaseException:
            os.close(fd)
            os.unlink(part)
            raise
        os.close(fd)
        os.unlink(part)
    raise FileExistsError(f"no free file name in {directory} for {stems(0)!r}")


def _numbered(base: str) -> Callable[[int], str]:
    return lambda n: base if n == 0 else f"{base}_{n}"


# ---------------------------------------------------------------------------- measuring


class _MediaMeter:
    """Feeds a stream through :class:`Fmp4Scanner` and turns fragments into media seconds."""

    def __init__(self) -> None:
        self.scanner = Fmp4Scanner()
        self.fragments = 0
        self.seconds = 0.0

    def feed(self, data: bytes | bytearray | memoryview) -> list[Fmp4Event]:
        return self._count(self.scanner.feed(data))

    def eof(self) -> list[Fmp4Event]:
        return self._count(self.scanner.eof())

    def _count(self, events: list[Fmp4Event]) -> list[Fmp4Event]:
        for event in events:
            if isinstance(event, FragmentComplete):
                self.fragments += 1
                self.seconds += fragment_seconds(self.scanner.tracks, event)
        return events


def fragment_seconds(tracks: Sequence[TrackInfo], fragment: FragmentComplete) -> float:
    """Media time in a fragment: its video track's sample durations over the track's
    timescale (the first track's when there is no video; 0 when unknown)."""
    if not tracks:
        return 0.0
    track = next((t for t in tracks if t.handler == "vide"), tracks[0])
    for run in fragment.tracks:
        if run.track_id == track.track_id:
            if run.duration is None or not track.timescale:
                return 0.0
            return run.duration / track.timescale
    return 0.0


# ---------------------------------------------------------------------------- recordings


@dataclass(frozen=True)
class FinishedRecording:
    """A recording on disk, final: its media file, its sidecar, and the sidecar's content."""

    path: Path
    sidecar_path: Path
    sidecar: dict[str, Any]


FinishCallback = Callable[[FinishedRecording], None]


class _Piece:
    """One output file being written (a whole stream, or one piece of a rotated stream)."""

    def __init__(
        self, directory: Path, stem: str, fd: int, started_ms: int, number: int | None
    ) -> None:
        self.directory = directory
        self.stem = stem
        self.fd: int | None = fd
        self.started_ms = started_ms
        self.number = number
        self.bytes = 0
        self.fragments = 0
        self.media_seconds = 0.0
        self.pings = 0
        self.latencies: list[float] = []
        self.warnings: list[dict[str, str]] = []
        self.warnings_dropped = 0

    @property
    def part_path(self) -> Path:
        return self.directory / f"{self.stem}.mp4.part"

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self.fd is not None
        _write_all(self.fd, data)
        self.bytes += len(data)

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


class _Stream:
    """One stream (from ``video_stream_start``, or orphan bytes) being recorded."""

    def __init__(
        self,
        recorder: Recorder,
        info: ConnectionInfo,
        start: StreamStarted | None,
        started_ms: int,
    ) -> None:
        self.recorder = recorder
        self.info = info
        self.start = start
        self.speaker = (start.speaker_id or start.speaker_name) if start is not None else None
        self.meter = _MediaMeter()
        self.init_checked = False
        self.rotation_blocked = False
        self.position = 0  # stream offset of the next byte to arrive
        self._pending = bytearray()
        self._pending_start = 0  # stream offset of _pending[0]
        self._cut: int | None = None  # where the current piece ends, once known
        bot = safe_name(start.bot_id) if start is not None else "unknown"
        directory = recorder.root / bot
        if self.speaker:
            directory /= safe_name(self.speaker)
        self.directory = _inside(recorder.root, directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory = _inside(recorder.root, self.directory)
        self.finished: list[FinishedRecording] = []
        self.base = _utc_stamp(started_ms)
        rotating = recorder.rotate_every is not None
        self.piece = self._open(1 if rotating else None, started_ms)
        if rotating:
            self.base = self.piece.stem.removesuffix("_part001")

    # ------------------------------------------------------------------ pieces

    def _open(self, number: int | None, started_ms: int) -> _Piece:
        base = self.base
        if number is None:
            stems = _numbered(base)
        elif number == 1:
            # The collision number belongs to the stream, before the piece number.
            def stems(n: int) -> str:
                return f"{_numbered(base)(n)}_part001"
        else:
            stems = _numbered(f"{base}_part{number:03d}")
        stem, fd = _reserve(self.directory, stems)
        piece = _Piece(self.directory, stem, fd, started_ms, number)
        try:
            stub = self._sidecar(piece, ended_ms=None, end="recording", clean=None)
            path = self.directory / f"{stem}.json.part"
            with open(path, "wb") as f:  # ours: _reserve created it empty a moment ago
                f.write(_dumps(stub))
        except OSError:
            os.close(fd)
            raise
        if self.recorder.metrics is not None:
            self.recorder.metrics.streams_active.inc()
        log.info(
            "recording start bot=%r speaker=%r file=%s peer=%s",
            self.start.bot_id if self.start is not None else None,
            self.speaker,
            piece.part_path.with_suffix(""),
            self.info.peer,
        )
        return piece

    # ------------------------------------------------------------------ media

    def feed(self, data: bytes) -> None:
        """Buffer ``data``; write when the buffer is full or a fragment is complete (so a
        crash loses at most the fragment in progress), never per chunk."""
        self._pending += data
        self.position += len(data)
        fragment = False
        for event in self.meter.feed(data):
            self._on_media_event(event)
            fragment = fragment or isinstance(event, FragmentComplete)
        full = len(self._pending) >= self.recorder.buffer_size
        if (full or fragment) and self._cut is None:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self.piece.write(self._pending)
            self._pending_start += len(self._pending)
            self._pending.clear()

    def _on_media_event(self, event: Fmp4Event) -> None:
        piece = self.piece
        if isinstance(event, FragmentComplete):
            piece.fragments += 1
            piece.media_seconds += fragment_seconds(self.meter.scanner.tracks, event)
            self._plan_cut(event.offset + event.size)
        elif isinstance(event, BoxSeen):
            if not self.init_checked:
                self.init_checked = True
                if event.type not in ("ftyp", "moov"):
                    self.warn(
                        "no_init_segment",
                        f"stream does not start with ftyp+moov (first box: {event.type!r})",
                    )
            if self._cut is not None and event.offset == self._cut:
                self._rotate(new_init=event.type in ("ftyp", "moov"))
        elif isinstance(event, Malformed):
            kind = "malformed_fmp4" if event.fatal else "fmp4_problem"
            self.warn(kind, f"at byte {event.offset}: {event.reason}")

    def _plan_cut(self, cut: int) -> None:
        """The piece is long enough: it ends at ``cut``, once a next box shows there is more
        (so a stream never ends with an empty piece)."""
        every = self.recorder.rotate_every
        if every is None or self.piece.media_seconds < every:
            return
        if self.meter.scanner.init_segment is None:
            if not self.rotation_blocked:
                self.rotation_blocked = True
                self.warn("rotation_skipped", "no init segment: cannot start a new piece")
            return
        if cut < self._pending_start:  # pragma: no cover - fragments end inside the last feed
            return
        keep = cut - self._pending_start
        self.piece.write(memoryview(self._pending)[:keep])
        del self._pending[:keep]
        self._pending_start = cut
        self._cut = cut

    def _rotate(self, *, new_init: bool) -> None:
        self._cut = None
        number = (self.piece.number or 1) + 1
        self._finish_piece(end="rotated", clean=True)
        self.piece = self._open(number, self.recorder.clock())
        init = self.meter.scanner.init_segment
        if init is not None and not new_init:
            self.piece.write(init.data)

    # ------------------------------------------------------------------ the rest

    def ping(self, event: LatencyPing) -> None:
        self.piece.pings += 1
        if event.sent_at_ms is not None:
            self.piece.latencies.append(float(event.received_at_ms - event.sent_at_ms))

    def warn(self, kind: str, message: str, source: str = "recorder") -> None:
        self.piece.warn(source, kind, message)
        if source == "recorder":
            log.warning("%s: %s (%s)", self.piece.stem, message, kind)
            if self.recorder.metrics is not None:
                self.recorder.metrics.recording_warnings.inc(label=kind)

    def finish(
        self,
        *,
        clean: bool,
        reported: float | None = None,
        code: int | None = None,
        reason: str | None = None,
    ) -> list[FinishedRecording]:
        """Flush everything and finalize the current piece; returns every piece finished."""
        for event in self.meter.eof():
            self._on_media_event(event)
        if not self.init_checked and self.position > 0:
            self.warn("no_init_segment", "stream ended before a complete first box")
        self._flush()
        end = "stream_end" if clean else "disconnect"
        self._finish_piece(end=end, clean=clean, reported=reported, code=code, reason=reason)
        return self.finished

    def abandon(self) -> None:
        """Give up on the current piece after an I/O error: close it, leave its ``.part``
        files for :func:`recover`."""
        fd, self.piece.fd = self.piece.fd, None
        if fd is not None:
            if self.recorder.metrics is not None:
                self.recorder.metrics.streams_active.dec()
            with contextlib.suppress(OSError):
                os.close(fd)

    def _finish_piece(
        self,
        *,
        end: str,
        clean: bool,
        reported: float | None = None,
        code: int | None = None,
        reason: str | None = None,
    ) -> None:
        piece = self.piece
        recorder = self.recorder
        fd = piece.fd
        if fd is None:
            return
        piece.fd = None
        metrics = recorder.metrics
        if metrics is not None:
            metrics.streams_active.dec()
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        ended_ms = recorder.clock()
        final = self.directory / f"{piece.stem}.mp4"
        _rename_noreplace(piece.part_path, final)
        sidecar = self._sidecar(
            piece, ended_ms=ended_ms, end=end, clean=clean, reported=reported, code=code,
            reason=reason,
        )
        sidecar_path = self.directory / f"{piece.stem}.json"
        _write_new(sidecar_path, _dumps(sidecar))
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"{piece.stem}.json.part").unlink()
        _fsync_dir(self.directory)
        if metrics is not None and end != "rotated":
            metrics.streams_finished.inc(label="clean" if clean else "unclean")
        latency = piece.latency_summary()
        log.info(
            "recording end bot=%r file=%s end=%s bytes=%d fragments=%d duration=%.2fs "
            "reported=%s pings=%d latency_ms=%s",
            sidecar["bot_id"], final, end if clean or end == "rotated" else f"{end}/{code}",
            piece.bytes, piece.fragments, piece.media_seconds,
            "-" if reported is None else f"{reported:.2f}s", piece.pings,
            "-" if latency is None else
            "{min:.0f}/{median:.0f}/{max:.0f}".format(**latency),
        )
        finished = FinishedRecording(final, sidecar_path, sidecar)
        self.finished.append(finished)
        recorder.finished(finished)

    def _sidecar(
        self,
        piece: _Piece,
        *,
        ended_ms: int | None,
        end: str,
        clean: bool | None,
        reported: float | None = None,
        code: int | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        start = self.start
        document: dict[str, Any] = {
            "version": SIDECAR_VERSION,
            "file": f"{piece.stem}.mp4",
            "bot_id": start.bot_id if start is not None else None,
            "speaker_id": start.speaker_id if start is not None else None,
            "speaker_name": start.speaker_name if start is not None else None,
            "start_message": dict(start.raw) if start is not None else None,
            "peer": self.info.peer,
            "path": self.info.path,
            "started_at": _iso(piece.started_ms),
            "started_at_ms": piece.started_ms,
            "ended_at": _iso(ended_ms),
            "ended_at_ms": ended_ms,
            "end": end,
            "clean": clean,
            "close_code": code,
            "close_reason": reason,
            "bytes": piece.bytes,
            "fragments": piece.fragments,
            "media_duration_seconds": round(piece.media_seconds, 6),
            "reported_duration_seconds": reported,
            "pings": piece.pings,
            "latency_ms": piece.latency_summary(),
            "warnings": list(piece.warnings),
            "warnings_dropped": piece.warnings_dropped,
            "piece": piece.number,
            "recovered": False,
        }
        return document


class RecordingHandler(Handler):
    """Records the streams of one connection (made by :class:`Recorder`)."""

    def __init__(self, recorder: Recorder, info: ConnectionInfo) -> None:
        self.recorder = recorder
        self.info = info
        self.stream: _Stream | None = None
        self._early_warnings: list[tuple[str, str]] = []

    def dispatch(self, events: Iterable[Event]) -> None:
        try:
            super().dispatch(events)
        except Exception as exc:
            metrics = self.recorder.metrics
            if metrics is not None:
                metrics.errors.inc(label="disk" if isinstance(exc, OSError) else "handler")
            raise

    def on_start(self, event: StreamStarted) -> None:
        if self.stream is not None:  # the core never does this; finish it anyway
            self.stream.finish(clean=False)
        self.stream = _Stream(self.recorder, self.info, event, self.recorder.clock())
        for kind, message in self._early_warnings:
            self.stream.warn(kind, message, source="protocol")
        self._early_warnings.clear()

    def on_chunk(self, event: MediaChunk) -> None:
        stream = self.stream
        if stream is None:
            # Bytes with no video_stream_start (the core delivers them just before the
            # disconnect): kept under unknown/, never dropped.
            stream = self.stream = _Stream(self.recorder, self.info, None, self.recorder.clock())
            stream.warn("no_stream_start", "binary data without video_stream_start")
        stream.feed(event.data)

    def on_ping(self, event: LatencyPing) -> None:
        if self.stream is not None:
            self.stream.ping(event)

    def on_end(self, event: StreamEnded) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.finish(clean=True, reported=event.duration_seconds)

    def on_warning(self, event: ProtocolWarning) -> None:
        if self.stream is not None:
            self.stream.warn(event.kind.value, event.message, source="protocol")
        elif len(self._early_warnings) < MAX_WARNINGS:
            self._early_warnings.append((event.kind.value, event.message))

    def on_disconnect(self, event: Disconnected) -> None:
        stream, self.stream = self.stream, None
        if stream is None:
            return
        try:
            stream.finish(clean=False, code=event.code, reason=event.reason)
        except OSError as exc:
            # The .part files stay where they are; recover() finishes them on the next start.
            if self.recorder.metrics is not None:
                self.recorder.metrics.errors.inc(label="disk")
            log.error("could not finalize %s: %r", stream.piece.part_path, exc)
            stream.abandon()


class Recorder:
    """Handler factory: records every stream under ``output_dir``.

    ``rotate_every`` (seconds of media) cuts streams into pieces at fragment boundaries.
    ``on_finish`` is called (in the handler's thread) with each finalized recording;
    ``metrics`` gets the recorder's counters. ``clock`` gives the wall time in Unix ms.
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
    ) -> None:
        if rotate_every is not None and rotate_every <= 0:
            raise ValueError("rotate_every must be positive")
        self.root = Path(output_dir).resolve()
        self.rotate_every = rotate_every
        self.on_finish = on_finish
        self.metrics = metrics
        self.buffer_size = buffer_size
        self.clock = clock

    def __call__(self, info: ConnectionInfo) -> RecordingHandler:
        return RecordingHandler(self, info)

    def finished(self, recording: FinishedRecording) -> None:
        if self.metrics is not None:
            self.metrics.recorded_bytes.inc(recording.sidecar["bytes"])
        if self.on_finish is not None:
            try:
                self.on_finish(recording)
            except Exception as exc:
                log.error("on_finish failed for %s: %r", recording.path, exc, exc_info=exc)


# ---------------------------------------------------------------------------- recovery


def _leftovers(root: Path) -> Iterator[tuple[Path, str, bool]]:
    """``(directory, stem, media_renamed)`` for each unfinished recording under ``root``."""
    seen: set[tuple[Path, str]] = set()
    for part in sorted(root.rglob("*.mp4.part")):
        key = (part.parent, part.name.removesuffix(".mp4.part"))
        seen.add(key)
        yield key[0], key[1], False
    for part in sorted(root.rglob("*.json.part")):
        key = (part.parent, part.name.removesuffix(".json.part"))
        if key not in seen and (key[0] / f"{key[1]}.mp4").is_file():
            yield key[0], key[1], True


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _scan_file(path: Path) -> _MediaMeter:
    """A file fed through the scanner."""
    meter = _MediaMeter()
    with open(path, "rb") as f:
        while chunk := f.read(_SCAN_READ):
            meter.feed(chunk)
    meter.eof()
    return meter


def recover(
    output_dir: str | os.PathLike[str],
    *,
    clock: Callable[[], int] = now_ms,
    metrics: Metrics | None = None,
) -> list[FinishedRecording]:
    """Finish the recordings a crash left as ``.part`` files under ``output_dir``.

    Each ``.mp4.part`` is cut back to the end of its last complete fragment (found by feeding
    it through :class:`Fmp4Scanner`), fsynced and renamed to ``.mp4``; its sidecar is written
    from the ``.json.part`` left at the start of the stream, with ``"recovered": true``. A
    file with no complete fragment is kept whole. Run it before the server starts: it assumes
    nothing else is writing under ``output_dir``.
    """
    root = Path(output_dir).resolve()
    done: list[FinishedRecording] = []
    for directory, stem, renamed in _leftovers(root):
        try:
            done.append(_recover_one(directory, stem, renamed, clock()))
        except OSError as exc:
            if metrics is not None:
                metrics.errors.inc(label="disk")
            log.error("could not recover %s/%s: %r", directory, stem, exc)
    return done


def _recover_one(directory: Path, stem: str, renamed: bool, now: int) -> FinishedRecording:
    part = directory / f"{stem}.mp4.part"
    media = directory / f"{stem}.mp4" if renamed else part
    size = media.stat().st_size
    modified_ms = media.stat().st_mtime_ns // 1_000_000
    meter = _scan_file(media)
    fragments, seconds = meter.fragments, meter.seconds
    end = meter.scanner.last_complete_fragment_end
    warnings: list[dict[str, str]] = []
    cut = 0
    if not renamed and end > 0:
        cut = size - end
        if cut:
            os.truncate(media, end)
    elif not renamed:
        warnings.append(
            {
                "source": "recorder",
                "kind": "no_complete_fragment",
                "message": "no complete fragment found: the file was kept whole",
            }
        )
    fd = os.open(media, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if not renamed:
        final = directory / f"{stem}.mp4"
        _rename_noreplace(part, final)
    else:
        final = media
    sidecar_path = directory / f"{stem}.json"
    document = _load_json(sidecar_path) or _load_json(directory / f"{stem}.json.part") or {}
    previous = document.get("warnings")
    document.update(
        {
            "version": SIDECAR_VERSION,
            "file": final.name,
            "ended_at": document.get("ended_at") or _iso(modified_ms),
            "ended_at_ms": document.get("ended_at_ms") or modified_ms,
            "end": "crash",
            "clean": False,
            "bytes": final.stat().st_size,
            "fragments": fragments,
            "media_duration_seconds": round(seconds, 6),
            "recovered": True,
            "recovered_at": _iso(now),
            "recovered_cut_bytes": cut,
            "warnings": (previous if isinstance(previous, list) else []) + warnings,
        }
    )
    _replace_json(sidecar_path, document)
    with contextlib.suppress(FileNotFoundError):
        (directory / f"{stem}.json.part").unlink()
    _fsync_dir(directory)
    log.warning(
        "recovered %s: %d bytes, %d fragments, cut %d bytes", final, document["bytes"],
        fragments, cut,
    )
    return FinishedRecording(final, sidecar_path, document)
