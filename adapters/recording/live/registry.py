"""The live streams known to this process, from what the file sink says is on disk.

:class:`LiveRegistry` is a sink (``runs = "inline"``: it only appends to lists under a lock, in
the publisher's thread). For each stream key (``bot_id``, ``speaker``) it keeps the session's
parts (:class:`LivePart`): each part's file, its init segment's byte range and its media
segments, each a run of contiguous fragments that starts on a keyframe fragment and lasts at
least :data:`TARGET_SECONDS` (the last one of a part may be shorter). A segment is listed only
once it is closed (the next keyframe fragment came, or the part ended), so every byte a playlist
names is in the file already.

Only files the file sink reported are ever served: a URL names a stream by its key, never a
file, so no path parameter can reach the disk.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Literal

from meetstream_live.adapters.recording.sinks import (
    Dropped,
    FragmentStored,
    Part,
    PartClosed,
    PartFinalized,
    PartOpened,
    Sink,
    SinkEvent,
)

__all__ = ["TARGET_SECONDS", "LivePart", "LiveRegistry", "LiveStream", "Segment"]

#: A segment is closed at the first keyframe fragment after it holds this many seconds.
TARGET_SECONDS = 2.0
#: Parts of one stream kept in its playlist (a session rotated every minute for 4 hours: 240).
MAX_PARTS = 500


@dataclass(frozen=True, slots=True)
class Segment:
    """Bytes ``offset`` .. ``offset + size`` of the part's file: fragments from a keyframe one,
    ``seconds`` of media; ``gap``: media is missing before it (a hole or dropped events)."""

    offset: int
    size: int
    seconds: float
    gap: bool = False


@dataclass
class LivePart:
    """One part of a stream, as far as its file holds it."""

    number: int
    path: Path
    #: Wall clock (Unix ms) of the part's start: the playlist's ``PROGRAM-DATE-TIME``.
    started_ms: int
    init: tuple[int, int] | None = None
    segments: list[Segment] = field(default_factory=list)
    #: The segment being filled (listed once the next keyframe fragment closes it).
    open: Segment | None = None
    #: The next segment starts after a gap (set by a hole or :class:`Dropped`).
    gap: bool = False
    #: Fragments in the file, and the media bytes they hold (init excluded).
    fragments: int = 0
    bytes: int = 0
    #: File offset where the last stored fragment (or the init segment) ends.
    end: int = 0
    closed: bool = False
    finalized: bool = False

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.segments) + (self.open.seconds if self.open else 0.0)

    def add(self, offset: int, size: int, seconds: float, keyframe: bool | None) -> None:
        self.fragments += 1
        self.bytes += size
        self.end = max(self.end, offset + size)
        current = self.open
        contiguous = current is not None and current.offset + current.size == offset
        if current is not None and contiguous and (
            keyframe is False or current.seconds < TARGET_SECONDS
        ):
            self.open = replace(current, size=current.size + size,
                                seconds=current.seconds + seconds)
            return
        if current is not None:
            self.segments.append(current)
            self.open = None
            if not contiguous:
                self.gap = True
        if keyframe is False:
            self.gap = True  # not decodable before the next keyframe: skipped
            return
        self.open = Segment(offset, size, seconds, self.gap)
        self.gap = False

    def cut(self) -> None:
        """Close the open segment; what comes next follows a gap."""
        if self.open is not None:
            self.segments.append(self.open)
            self.open = None
        self.gap = True

    def close(self) -> None:
        if self.open is not None:
            self.segments.append(self.open)
            self.open = None
        self.closed = True


@dataclass
class LiveStream:
    """One stream (a bot's, or a bot's speaker's) and its parts so far."""

    bot_id: str
    speaker: str
    parts: list[LivePart] = field(default_factory=list)
    #: Wall clock (Unix ms) of its first part's start.
    started_ms: int = 0
    #: Events this registry missed for it (never happens inline; counted if it does).
    dropped: int = 0
    #: Monotonic time its last part was finalized (``None`` while live).
    ended_at: float | None = None
    opened_at: float = field(default_factory=time.monotonic)

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.parts)

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.parts)

    @property
    def gaps(self) -> int:
        return sum(1 for p in self.parts for s in p.segments if s.gap)

    def bitrate(self) -> float:
        """Bits per second of media stored so far (0 before a second of it)."""
        seconds = self.seconds
        return self.bytes * 8 / seconds if seconds >= 1.0 else 0.0

    def part(self, number: int) -> LivePart | None:
        return next((p for p in self.parts if p.number == number), None)


class LiveRegistry(Sink):
    """The index of live streams (see the module)."""

    name: ClassVar[str] = "live"
    accepts: ClassVar[tuple[type[SinkEvent], ...]] = (
        PartOpened, FragmentStored, PartFinalized, PartClosed, Dropped)
    when_full: ClassVar[Literal["block", "drop"]] = "drop"
    runs: ClassVar[Literal["thread", "inline"]] = "inline"

    def __init__(self, keep_ended: float = 600.0, max_ended: int = 200) -> None:
        #: Seconds an ended stream stays listed (and its playlist served as a recording).
        self.keep_ended = keep_ended
        self.max_ended = max_ended
        self._lock = threading.Lock()
        self._streams: dict[tuple[str, str], LiveStream] = {}
        self._by_part: dict[int, tuple[LiveStream, LivePart]] = {}

    @staticmethod
    def key(part: Part) -> tuple[str, str]:
        return (part.bot_id or "unknown", part.speaker or "")

    def handle(self, part: Part, events: Sequence[SinkEvent]) -> None:
        with self._lock:
            for event in events:
                self._handle(part, event)

    def _handle(self, part: Part, event: SinkEvent) -> None:
        found = self._by_part.get(part.id)
        if isinstance(event, PartOpened):
            if found is None:
                self._open(part, None)
            return
        if isinstance(event, FragmentStored):
            stream, live = found if found is not None else self._open(part, event.path)
            live.path = event.path
            if event.fragment is None:
                live.init = (event.file_offset, event.size)
                live.end = max(live.end, event.file_offset + event.size)
            elif live.init is not None:
                live.add(event.file_offset, event.size, event.seconds, event.keyframe)
            return
        if found is None:
            return
        stream, live = found
        if isinstance(event, Dropped):
            stream.dropped += event.events
            live.cut()
        elif isinstance(event, PartClosed):
            # From the recorder: the file sink may still store fragments of the part (its
            # FragmentStored come later); PartFinalized ends it.
            live.closed = True
        elif isinstance(event, PartFinalized):
            del self._by_part[part.id]
            live.close()
            live.path = event.recording.path
            live.finalized = True
            if stream.parts and stream.parts[-1] is live:
                stream.ended_at = time.monotonic()

    def _open(self, part: Part, path: Path | None) -> tuple[LiveStream, LivePart]:
        key = self.key(part)
        stream = self._streams.get(key)
        if stream is None or (stream.ended and part.number == 1):  # a new session
            stream = LiveStream(key[0], key[1],
                                started_ms=part.session_started_ms or part.started_ms)
            self._streams[key] = stream
            self._expire()
        live = LivePart(part.number, path or Path(), part.started_ms)
        stream.parts.append(live)
        del stream.parts[:-MAX_PARTS]
        stream.ended_at = None
        self._by_part[part.id] = (stream, live)
        return stream, live

    def _expire(self) -> None:
        now = time.monotonic()
        ended = sorted((s for s in self._streams.values() if s.ended_at is not None),
                       key=lambda s: s.ended_at or 0.0)
        for i, stream in enumerate(ended):
            old = stream.ended_at is not None and now - stream.ended_at > self.keep_ended
            if old or len(ended) - i > self.max_ended:
                self._streams.pop((stream.bot_id, stream.speaker), None)

    def get(self, bot_id: str, speaker: str | None) -> LiveStream | None:
        """The stream of ``bot_id`` (and ``speaker``; ``None``: the bot's latest stream), as a
        snapshot safe to read without the lock."""
        with self._lock:
            if speaker is not None:
                stream = self._streams.get((bot_id, speaker))
            else:
                found = [s for (b, _), s in self._streams.items() if b == bot_id]
                stream = max(found, key=lambda s: s.opened_at, default=None)
            return None if stream is None else _copy(stream)

    def streams(self) -> list[LiveStream]:
        """Every stream listed now (live first, then the most recently ended), snapshots."""
        with self._lock:
            self._expire()
            found = [_copy(s) for s in self._streams.values()]
        return sorted(found, key=lambda s: (s.ended, -s.opened_at))


def _copy(stream: LiveStream) -> LiveStream:
    parts = [replace(p, segments=list(p.segments)) for p in stream.parts if p.init is not None]
    return replace(stream, parts=parts)
