"""The file sink's records: one :class:`PartFile` per part (its file, what is written, what
was lost), one :class:`SessionFiles` per session (its directory and names, its manifest, the
order its parts are announced in).

Names: a session's first part is ``<UTC start>[_<n>]`` (``_part001`` appended with rotation),
its later parts ``<base>_partNNN``; every name is taken with ``O_EXCL`` (:func:`.reserve`).
The parts of a session may be handled by different threads of the file sink, so the session's
base name is taken by whichever part comes first, on behalf of part 1.

The directory and the base name come from the default layout (``<bot_id>/[<speaker>/]<UTC
start>``) or from a :class:`PathTemplate` (``serve --path-template``), rendered once per
session: the bot's strings made safe (:func:`.names.safe_name`), the result checked to stay
inside the output directory. Collisions, rotation and later parts are numbered as above.
"""

from __future__ import annotations

import contextlib
import logging
import string
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from meetstream_live import InitSegment

from .durable import Chunks, Disk, numbered, replace_json, reserve
from .meter import worst
from .mp4index import FragmentEntry
from .names import inside, iso, safe_name, utc_stamp
from .sidecar import SIDECAR_VERSION, FileFacts, FinishedRecording, StreamFacts
from .sinks import Part
from .states import FILE, FileInput, FileState, advance

__all__ = ["NO_SESSION", "TEMPLATE_FIELDS", "Announced", "Continued", "PartFile", "PathTemplate",
           "ResumedSession", "SessionFiles", "part_directory"]

log = logging.getLogger("meetstream_live.recorder")

#: A finished part and its recording, to publish as ``PartFinalized``.
Announced = tuple[Part, FinishedRecording]


def part_directory(root: Path, part: Part) -> Path:
    """``<root>/<bot_id>/[<speaker>/]`` of a part (names made safe, checked to stay below)."""
    bot = safe_name(part.start.bot_id) if part.start is not None else "unknown"
    directory = root / bot
    if part.speaker:
        directory /= safe_name(part.speaker)
    return inside(root, directory)


#: The fields of a path template, and what each holds.
TEMPLATE_FIELDS = {
    "bot_id": "the bot_id (made safe as a file name; 'unknown' without one)",
    "speaker": "the speaker's id, else its name (empty without one: its folder is left out)",
    "speaker_id": "speaker_id (empty without one)",
    "speaker_name": "speaker_name (empty without one)",
    "start": "the session's start, UTC: a datetime, formatted with strftime codes "
             "({start:%Y/%m/%d}); alone, 20250102T100000Z",
}
_SAMPLE_START = datetime(2025, 1, 2, 10, 0, 0, tzinfo=timezone.utc)
_SAMPLE: dict[str, Any] = {"bot_id": "../bot", "speaker": "a/b", "speaker_id": "s",
                           "speaker_name": "Ann", "start": _SAMPLE_START}


class PathTemplate:
    """Where a session's recordings go, below the output directory: ``{bot_id}/{speaker}/
    {start:%Y/%m/%d}/{start:%H%M%S}.mp4``. Checked when made (``ValueError`` says what is
    wrong): known fields only, a relative path ending in ``.mp4``, no ``.`` or ``..``
    component. Each field's value is one safe path component (a ``bot_id`` of ``../x`` is
    ``x``); components that come out empty are left out."""

    def __init__(self, text: str) -> None:
        self.text = text
        try:
            pieces = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None
        self._pieces: list[tuple[str, str | None, str]] = []
        for literal, field, spec, conversion in pieces:
            if field is not None and field not in TEMPLATE_FIELDS:
                raise ValueError(f"{text!r}: unknown field {{{field}}} (fields: "
                                 f"{', '.join(TEMPLATE_FIELDS)})")
            if conversion:
                raise ValueError(f"{text!r}: no !{conversion} conversions")
            if field is not None and field != "start" and spec:
                raise ValueError(f"{text!r}: only {{start}} takes a format ({{{field}:{spec}}})")
            if "{" in (spec or "") or ".." in literal.split("/"):
                raise ValueError(f"{text!r}: nested fields or '..' are not allowed")
            self._pieces.append((literal, field, spec or ""))
        if text.startswith("/") or PurePosixPath(text).is_absolute():
            raise ValueError(f"{text!r} must be relative (it goes below --output)")
        if not text.endswith(".mp4"):
            raise ValueError(f"{text!r} must end in .mp4")
        _directory, stem = self.render(_SAMPLE)
        if not stem:
            raise ValueError(f"{text!r} gives an empty file name")

    def render(self, values: dict[str, Any]) -> tuple[PurePosixPath, str]:
        """``(directory below the output, base name without .mp4)`` for these values."""
        out: list[str] = []
        for literal, field, spec in self._pieces:
            out.append(literal)
            if field is None:
                continue
            value = values.get(field)
            if field == "start":
                moment = value if isinstance(value, datetime) else _SAMPLE_START
                out.append(moment.strftime(spec or "%Y%m%dT%H%M%SZ"))
            elif value:
                out.append(safe_name(value))
        parts = [p for p in "".join(out).split("/") if p]
        for part in parts:
            if part in (".", ".."):
                raise ValueError(f"{self.text!r}: a path component is {part!r}")
        if not parts:
            return PurePosixPath(), ""
        return PurePosixPath(*parts[:-1]), parts[-1].removesuffix(".mp4").rstrip(" .")

    def for_part(self, part: Part) -> tuple[PurePosixPath, str]:
        start = part.start
        started = part.session_started_ms or part.started_ms
        return self.render({
            "bot_id": (start.bot_id if start is not None else None) or "unknown",
            "speaker": part.speaker,
            "speaker_id": start.speaker_id if start is not None else None,
            "speaker_name": start.speaker_name if start is not None else None,
            "start": datetime.fromtimestamp(started / 1000, tz=timezone.utc),
        })


class PartFile:
    """The file sink's side of one part. Only its part's lane (one thread at a time) touches
    it, then the finalize retries."""

    def __init__(self, part: Part, session: SessionFiles) -> None:
        self.part = part
        self.session = session
        self.lock = threading.Lock()  # its finalizing, against a late PartAmended
        self.state = FileState.OPENING
        self.stem: str | None = None
        self.fd: int | None = None
        self.facts = FileFacts(name="", session=None, rotating=session.rotating)
        self.pending = Chunks()
        self.pending_start = 0  # part offset of pending[0]
        self.file_size = 0  # bytes in the file
        self.skew = 0  # part offset minus file offset, for what is written from now on
        self.good_end = 0  # file offset after the last complete box in the file
        self.dirty = False  # bytes after good_end to cut (a failed write, a failed truncate)
        self.init: InitSegment | None = None  # to write first into a file opened late
        self.init_at: int | None = None  # part offset of the init segment
        self.init_end: int | None = None  # part offset after it, until it is in the file
        self.decide_at: int | None = None  # a boundary to decide at (guard, retry)
        self.hole: dict[str, Any] | None = None
        self.resuming: dict[str, Any] | None = None  # the hole, until a write succeeds
        self.resume_at = 0
        self.error: OSError | None = None
        self.reason: str | None = None  # why not writing: ENOSPC, EIO..., disk_low
        self.logged = False
        self.counted = False  # among the parts being written (FileSink._writers)
        self.retry_at = 0.0
        self.paused = False
        self.tail = b""
        self.index: list[FragmentEntry] = []
        self.stub_size = 0  # the stub's JSON in the .json.part (the rest is reserved room)
        # Finalizing.
        self.summary: StreamFacts | None = None
        self.step = 0
        self.document: dict[str, Any] | None = None
        self.recording: FinishedRecording | None = None

    @property
    def writing(self) -> bool:
        return self.state is FileState.WRITING

    def advance(self, event: FileInput) -> None:
        self.state = advance(FILE, self.state, event)

    @property
    def end(self) -> int:
        """Part offset after the last byte received."""
        return self.pending_start + len(self.pending)

    @property
    def directory(self) -> Path:
        return self.session.directory

    def path(self, suffix: str) -> Path:
        assert self.stem is not None
        return self.session.directory / f"{self.stem}{suffix}"


@dataclass(frozen=True)
class ResumedSession:
    """A session the process before this one was recording when it died, as its manifest says
    once :func:`~.recovery.recover` closed it: a reconnect of its bot continues it in the same
    directory as the next numbered part (see :func:`~.recovery.resumable_sessions`)."""

    key: tuple[str, str]
    manifest: Path
    started_ms: int
    connections: int
    #: The manifest's parts by number (their entries, as written).
    entries: dict[int, dict[str, Any]]

    @property
    def base(self) -> str:
        return self.manifest.name.removesuffix(".session.json")

    @property
    def next_number(self) -> int:
        return max(self.entries, default=0) + 1


@dataclass(frozen=True)
class Continued:
    """A session another receiver of the fleet began, continued here (its lease, see
    ``bus.lease``): its start (the files' names), the next part number, connections so far."""

    started_ms: int
    next_number: int
    connections: int
    #: The lease is older than the grace (its node stopped): a new stream does not continue
    #: it, but a session this receiver resumes after a crash numbers its parts after it.
    stale: bool = False
    #: The bus answered that no receiver has the stream's session (no lease: it ended
    #: elsewhere, or is long forgotten): a session this receiver would resume is over.
    over: bool = False


#: :class:`Continued` saying that no receiver has the stream's session.
NO_SESSION = Continued(0, 0, 0, over=True)


class SessionFiles:
    """The files of one session: its names, its manifest, its parts' announcement order.
    ``resumed``: the session continues one a crash interrupted (its directory, names and
    parts so far)."""

    def __init__(self, root: Path, part: Part, *, rotating: bool, disk: Disk,
                 layout: PathTemplate | None = None,
                 resumed: ResumedSession | None = None,
                 continued: Continued | None = None) -> None:
        self.id = part.session
        self.key = part.key
        self.root = root
        self._stem: str | None = None  # the layout's base name (None: the UTC start)
        if layout is None:
            self.directory = part_directory(root, part)
        else:
            below, self._stem = layout.for_part(part)
            self.directory = inside(root, root.joinpath(below))
        self.rotating = rotating
        self.disk = disk
        self.started_ms = part.session_started_ms or part.started_ms
        self.lock = threading.Lock()
        self.base: str | None = None
        self.made = False  # the directory exists
        self._reserved: tuple[str, int] | None = None  # part 1's name, taken by another part
        self.entries: dict[int, dict[str, Any]] = {}  # the manifest's parts
        self.connections = 1
        self.over = False
        self.manifest_dirty = False
        self._next = 1  # the part whose PartFinalized goes out next
        self._ready: dict[int, Announced | None] = {}
        self.logged = False  # a manifest error was logged
        self.gone: set[int] = set()  # parts that ended without a file
        if resumed is not None:
            self.directory = inside(root, resumed.manifest.parent)
            self.made = True
            self.base = resumed.base
            self.started_ms = resumed.started_ms
            self.connections = resumed.connections
            self.entries = {n: dict(e) for n, e in resumed.entries.items()}
            self._next = resumed.next_number
        elif continued is not None:  # parts 1.. are another receiver's: the names only
            self.started_ms = continued.started_ms
            self.connections = continued.connections
            self._next = continued.next_number
            self.gone = set(range(1, continued.next_number))

    @property
    def manifest_path(self) -> Path | None:
        return None if self.base is None else self.directory / f"{self.base}.session.json"

    def reserve(self, part: Part) -> tuple[str, int]:
        """Take the part's name: its ``.mp4.part`` (open) and ``.json.part``."""
        disk = self.disk
        with self.lock:
            if not self.made:
                disk.mkdir(self.directory)
                self.directory = inside(self.root, self.directory)
                self.made = True
            if self.base is None:
                stamp = numbered(self._stem or utc_stamp(self.started_ms))
                suffix = "_part001" if self.rotating else ""
                stem, fd = reserve(self.directory, lambda n: stamp(n) + suffix, disk)
                self.base = stem.removesuffix("_part001") if self.rotating else stem
                self.entries[1] = self._entry(1, stem, "start" if part.number != 1 else part.why)
                if part.number == 1:
                    return stem, fd
                if 1 in self.gone:  # part 1 ended without a file: the name only
                    disk.close(fd)
                    for name in (f"{stem}.mp4.part", f"{stem}.json.part"):
                        with contextlib.suppress(OSError):
                            disk.unlink(self.directory / name)
                    self.entries.pop(1, None)
                else:
                    self._reserved = (stem, fd)
            if part.number == 1 and self._reserved is not None:
                taken, self._reserved = self._reserved, None
                return taken
            stem, fd = reserve(self.directory, numbered(f"{self.base}_part{part.number:03d}"),
                               disk)
            self.entries[part.number] = self._entry(part.number, stem, part.why)
            return stem, fd

    @staticmethod
    def _entry(number: int, stem: str, why: str) -> dict[str, Any]:
        return {"part": number, "file": f"{stem}.mp4", "started_by": why, "state": "recording"}

    def part_done(self, recording: FinishedRecording, number: int) -> None:
        doc = recording.sidecar
        with self.lock:
            entry = self.entries.setdefault(
                number, self._entry(number, recording.path.stem, doc.get("started_by", ""))
            )
            entry.update(
                state="finished", sidecar=recording.sidecar_path.name,
                verdict=doc["verdict"], end_reason=doc["end_reason"], bytes=doc["bytes"],
                fragments=doc["fragments"],
                media_duration_seconds=doc["media_duration_seconds"],
                ended_at=doc["ended_at"],
            )

    def closed(self, facts: StreamFacts) -> None:
        with self.lock:
            self.connections = max(self.connections, facts["session_connections"])
            if facts["session_over"]:
                self.over = True

    def write_manifest(self) -> None:
        """``<base>.session.json`` anew; raises ``OSError`` (then it is retried later)."""
        with self.lock:
            path = self.manifest_path
            if path is None:
                return
            parts = [self.entries[n] for n in sorted(self.entries)]
            recording = not self.over or any(p.get("state") == "recording" for p in parts)
            verdicts = [p["verdict"] for p in parts if isinstance(p.get("verdict"), str)]
            document = {
                "version": SIDECAR_VERSION,
                "bot_id": self.key[0] if self.key else None,
                "speaker": self.key[1] if self.key else None,
                "started_at": iso(self.started_ms),
                "connections": self.connections,
                "state": "recording" if recording else "finished",
                "verdict": None if recording else worst(verdicts),
                "parts": [dict(p) for p in parts],
            }
            self.manifest_dirty = True
            replace_json(path, document, self.disk)
            self.manifest_dirty = False

    def ready(self, number: int, recording: Announced | None) -> list[Announced]:
        """Part ``number`` is finalized (``None``: it has no file, or its finalizing waits
        for the disk): the recordings to announce now, in part order."""
        out: list[Announced] = []
        with self.lock:
            if number < self._next:  # finalized late, after a retry: announced now
                return [recording] if recording is not None else []
            self._ready[number] = recording
            while self._next in self._ready:
                done = self._ready.pop(self._next)
                if done is not None:
                    out.append(done)
                self._next += 1
        return out
