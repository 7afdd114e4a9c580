"""The media meter: what the fMP4 of a stream says about itself, from the scanner's events.

:class:`MediaMeter` feeds a stream through :class:`~meetstream_live.fmp4.Fmp4Scanner` and counts
fragments and media seconds; :class:`Completeness` is fed the scanner's events (no I/O, bounded
memory: a few numbers per track and at most :data:`MAX_GAP_DETAILS` gap records) and says:

* how many fragments there are, how many are missing (forward jumps of the ``mfhd`` sequence
  number not filled later) and how many arrived out of order;
* per track, how much media there is, and where its timeline jumps (a ``tfdt`` later than the
  end of the previous fragment of that track: a gap; earlier: an overlap);
* whether the bytes end with a torn box (a crash, a cut upload);
* a verdict: ``complete``, ``gaps`` or ``truncated``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from meetstream_live import (
    Fmp4Event,
    Fmp4Scanner,
    FragmentComplete,
    InitSegment,
    Malformed,
    TrackInfo,
)

from .mp4index import FragmentEntry

__all__ = [
    "COMPLETE",
    "GAPS",
    "MAX_GAP_DETAILS",
    "MIN_GAP_MS",
    "TRUNCATED",
    "Completeness",
    "MediaMeter",
    "fragment_entry",
    "fragment_seconds",
    "track_ends",
    "worst",
]

COMPLETE = "complete"
GAPS = "gaps"
TRUNCATED = "truncated"
_RANK = {COMPLETE: 0, GAPS: 1, TRUNCATED: 2}

#: Gap records kept per part (more are only counted).
MAX_GAP_DETAILS = 20
#: A timeline jump smaller than this many milliseconds is rounding, not a gap.
MIN_GAP_MS = 1.0
_READ = 1024 * 1024


def worst(verdicts: Iterable[str]) -> str:
    """The worst of some verdicts (``complete`` for none)."""
    return max(verdicts, key=_RANK.__getitem__, default=COMPLETE)


@dataclass
class _Track:
    info: TrackInfo
    samples: int = 0
    duration: int = 0  # sum of sample durations, in the track's timescale
    first: int | None = None  # first tfdt
    end: int | None = None  # tfdt + duration of the latest fragment, the furthest seen
    gaps: int = 0
    gap_units: int = 0
    overlaps: int = 0
    overlap_units: int = 0
    unknown: int = 0  # fragments of this track without a tfdt or a known duration

    def ms(self, units: int) -> float:
        return units * 1000 / self.info.timescale if self.info.timescale else 0.0

    def report(self) -> dict[str, Any]:
        scale = self.info.timescale or 1
        return {
            "track_id": self.info.track_id,
            "handler": self.info.handler,
            "timescale": self.info.timescale,
            "samples": self.samples,
            "duration_seconds": round(self.duration / scale, 6),
            "first_decode_seconds": None if self.first is None else round(self.first / scale, 6),
            "end_decode_seconds": None if self.end is None else round(self.end / scale, 6),
            "gaps": self.gaps,
            "gap_ms": round(self.ms(self.gap_units), 3),
            "overlaps": self.overlaps,
            "overlap_ms": round(self.ms(self.overlap_units), 3),
            "fragments_without_timing": self.unknown,
        }


@dataclass
class Completeness:
    """What the fragments of one part (one init segment and what follows it) say about
    their completeness. Feed it scanner events with :meth:`add`; read :meth:`report`."""

    tracks: dict[int, _Track] = field(default_factory=dict)
    fragments: int = 0
    first_sequence: int | None = None
    last_sequence: int | None = None
    expected_sequence: int | None = None  # one past the highest sequence number seen
    missing: int = 0  # forward jumps of the sequence number, minus late arrivals
    out_of_order: int = 0
    duplicates: int = 0
    no_sequence: int = 0
    gap_details: list[dict[str, Any]] = field(default_factory=list)
    gap_details_dropped: int = 0
    has_init: bool = False
    fatal: str | None = None  # reason of a fatal Malformed
    torn_at: int | None = None  # stream offset of a box the stream ends inside
    orphan_moofs: int = 0  # moof boxes never followed by an mdat
    end: int = 0  # stream offset after the last complete fragment or init segment
    max_fragment_seconds: float = 0.0

    def set_tracks(self, tracks: Sequence[TrackInfo]) -> None:
        """The tracks of the init segment this part starts with (timescales, handlers)."""
        self.has_init = True
        self.tracks = {t.track_id: _Track(t) for t in tracks}

    def add(self, event: Fmp4Event) -> None:
        """One scanner event."""
        if isinstance(event, FragmentComplete):
            self._fragment(event)
            self.end = event.offset + event.size
        elif isinstance(event, InitSegment):
            self.set_tracks(event.tracks)
            self.end = event.offset + event.size
        elif isinstance(event, Malformed):
            if event.fatal:
                self.fatal = event.reason
                if event.reason.startswith("truncated:"):
                    self.torn_at = self.end  # the torn tail: all after the last whole fragment
            elif event.reason.startswith("no mdat:"):
                self.orphan_moofs += 1

    def _fragment(self, event: FragmentComplete) -> None:
        self.fragments += 1
        seq = event.sequence_number
        if seq is None:
            self.no_sequence += 1
        else:
            if self.first_sequence is None:
                self.first_sequence = seq
            expected = self.expected_sequence
            if expected is None or seq == expected:
                self.expected_sequence = seq + 1
            elif seq > expected:
                self.missing += seq - expected
                self.expected_sequence = seq + 1
            elif seq == self.last_sequence:
                self.duplicates += 1
            else:  # an earlier number: a late fragment fills a hole (or repeats one)
                self.out_of_order += 1
                self.missing = max(0, self.missing - 1)
            self.last_sequence = seq
        longest = 0.0
        for run in event.tracks:
            track = self.tracks.get(run.track_id)
            if track is None:
                continue
            track.samples += run.sample_count
            if run.duration is not None:
                track.duration += run.duration
                if track.info.timescale:
                    longest = max(longest, run.duration / track.info.timescale)
            if run.base_decode_time is None or run.duration is None:
                track.unknown += 1
                continue
            start = run.base_decode_time
            if track.first is None:
                track.first = start
            elif track.end is not None:
                # One sample's worth of slack, and never less than MIN_GAP_MS.
                per_sample = run.duration // run.sample_count if run.sample_count else 0
                slack = max(per_sample // 2, round(MIN_GAP_MS * track.info.timescale / 1000))
                if start > track.end + slack:
                    track.gaps += 1
                    track.gap_units += start - track.end
                    self._detail(track, start, start - track.end)
                elif start < track.end - slack:
                    track.overlaps += 1
                    track.overlap_units += track.end - start
            end = start + run.duration
            track.end = end if track.end is None else max(track.end, end)
        self.max_fragment_seconds = max(self.max_fragment_seconds, longest)

    def _detail(self, track: _Track, start: int, units: int) -> None:
        if len(self.gap_details) >= MAX_GAP_DETAILS:
            self.gap_details_dropped += 1
            return
        scale = track.info.timescale or 1
        self.gap_details.append(
            {
                "track_id": track.info.track_id,
                "handler": track.info.handler,
                "at_seconds": round(start / scale, 6),
                "gap_ms": round(track.ms(units), 3),
            }
        )

    # ------------------------------------------------------------------ results

    def video(self) -> _Track | None:
        """The video track (the first track when there is none)."""
        for track in self.tracks.values():
            if track.info.handler == "vide":
                return track
        return next(iter(self.tracks.values()), None)

    @property
    def media_seconds(self) -> float:
        track = self.video()
        if track is None or not track.info.timescale:
            return 0.0
        return track.duration / track.info.timescale

    @property
    def has_gaps(self) -> bool:
        return bool(
            self.missing
            or self.out_of_order
            or any(t.gaps or t.overlaps for t in self.tracks.values())
        )

    def torn_bytes(self, stream_size: int) -> int:
        """Bytes of the box the stream ends inside (0 when it ends on a box boundary)."""
        return 0 if self.torn_at is None else max(0, stream_size - self.torn_at)

    def media_verdict(self, torn_tail_bytes: int = 0) -> str:
        """The verdict from the media alone: ``truncated`` (no init segment, a torn tail, a
        fatal framing problem, a moof without mdat), ``gaps``, or ``complete``."""
        if not self.has_init or torn_tail_bytes or self.fatal is not None or self.orphan_moofs:
            return TRUNCATED
        return GAPS if self.has_gaps else COMPLETE

    def report(self, torn_tail_bytes: int = 0) -> dict[str, Any]:
        """The ``completeness`` object of a sidecar (see docs/recording.md)."""
        return {
            "verdict": self.media_verdict(torn_tail_bytes),
            "fragments": self.fragments,
            "first_sequence_number": self.first_sequence,
            "last_sequence_number": self.last_sequence,
            "dropped_fragments": self.missing,
            "out_of_order_fragments": self.out_of_order,
            "duplicate_fragments": self.duplicates,
            "fragments_without_sequence_number": self.no_sequence,
            "timeline_gap_ms": {
                str(t.info.track_id): round(t.ms(t.gap_units), 3) for t in self.tracks.values()
            },
            "gaps": list(self.gap_details),
            "gaps_dropped": self.gap_details_dropped,
            "tracks": [t.report() for t in self.tracks.values()],
            "media_duration_seconds": round(self.media_seconds, 6),
            "longest_fragment_seconds": round(self.max_fragment_seconds, 6),
            "init_segment": self.has_init,
            "torn_tail_bytes": torn_tail_bytes,
            "moofs_without_mdat": self.orphan_moofs,
            "fatal": self.fatal,
        }


class MediaMeter:
    """Feeds a stream through :class:`Fmp4Scanner` and turns fragments into media seconds."""

    def __init__(self) -> None:
        self.scanner = Fmp4Scanner()
        self.fragments = 0
        self.seconds = 0.0
        self.completeness = Completeness()
        self.entries: list[FragmentEntry] = []

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

def fragment_entry(offset: int, event: FragmentComplete) -> FragmentEntry:
    return FragmentEntry(
        offset,
        tuple(
            (run.track_id, number, run.base_decode_time)
            for number, run in enumerate(event.tracks, 1)
            if run.base_decode_time is not None
        ),
    )

def track_ends(completeness: Completeness) -> dict[int, tuple[int, int]]:
    return {
        t.info.track_id: (t.end, t.info.timescale)
        for t in completeness.tracks.values()
        if t.end is not None
    }
