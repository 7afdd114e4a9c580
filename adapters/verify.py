"""Completeness of a fragmented MP4, measured from the media itself.

MeetStream's binary chunks carry no sequence numbers, so the only evidence that a recording
holds the whole stream is inside the fMP4: the ``mfhd`` sequence number of every fragment and,
per track, the ``tfdt`` decode time and the ``trun`` sample durations. :class:`Completeness`
is fed the events of :class:`~meetstream_live.Fmp4Scanner` (no I/O, bounded memory: a few
numbers per track and at most :data:`MAX_GAP_DETAILS` gap records) and says:

* how many fragments there are, how many are missing (forward jumps of the sequence number
  not filled later) and how many arrived out of order;
* per track, how much media there is, and where its timeline jumps (a ``tfdt`` later than the
  end of the previous fragment of that track: a gap; earlier: an overlap);
* whether the bytes end with a torn box (a crash, a cut upload);
* a verdict: ``complete``, ``gaps`` or ``truncated``.

:func:`verify_file` runs it over a file on disk (any fMP4, or a plain MP4, which has no
fragments and is reported as such); ``meetstream-live verify FILE...`` prints the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meetstream_live import (
    BoxSeen,
    Fmp4Event,
    Fmp4Scanner,
    FragmentComplete,
    InitSegment,
    Malformed,
    TrackInfo,
)

__all__ = [
    "COMPLETE",
    "GAPS",
    "MAX_GAP_DETAILS",
    "TRUNCATED",
    "Completeness",
    "FileReport",
    "format_report",
    "verify_file",
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


# ---------------------------------------------------------------------------- files


@dataclass(frozen=True)
class FileReport:
    """:func:`verify_file`'s answer: one report per part (each init segment starts one)."""

    path: Path
    size: int
    verdict: str
    parts: list[dict[str, Any]]
    plain_mp4: bool = False
    boxes: int = 0


def verify_file(path: str | Path) -> FileReport:
    """Scan ``path`` and report its completeness, part by part.

    A plain (non-fragmented) MP4 has a ``moov`` with samples and no ``moof``: it is reported
    ``complete`` with ``plain_mp4`` set when its ``mdat`` is whole (``truncated`` otherwise).
    """
    path = Path(path)
    scanner = Fmp4Scanner()
    parts: list[Completeness] = []
    current = Completeness()
    boxes = 0
    moofs = 0
    collecting = True

    def take(events: list[Fmp4Event]) -> None:
        nonlocal current, boxes, moofs, collecting
        for event in events:
            if isinstance(event, BoxSeen):
                boxes += 1
                if event.type == "moof":
                    moofs += 1
                    collecting = False
                elif event.type in ("ftyp", "moov") and not collecting:
                    collecting = True
                    parts.append(current)
                    current = Completeness()
            elif isinstance(event, InitSegment):
                collecting = False
            current.add(event)

    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_READ):
            size += len(chunk)
            take(scanner.feed(chunk))
    take(scanner.eof())
    parts.append(current)
    plain = moofs == 0 and current.has_init
    reports: list[dict[str, Any]] = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        report = part.report(part.torn_bytes(size))
        if plain and last and part.fatal is None:
            report["verdict"] = COMPLETE
        reports.append(report)
    return FileReport(
        path, size, worst(r["verdict"] for r in reports), reports, plain_mp4=plain, boxes=boxes
    )


def format_report(report: FileReport) -> str:
    """A few human lines for ``meetstream-live verify``."""
    lines = [f"{report.path}: {report.verdict.upper()} ({report.size} bytes"
             + (", plain MP4)" if report.plain_mp4 else ")")]
    for n, part in enumerate(report.parts, 1):
        tracks = ", ".join(
            f"{t['handler']} {t['duration_seconds']:.3f}s"
            + (f" gaps {t['gaps']} ({t['gap_ms']:.0f} ms)" if t["gaps"] else "")
            + (f" overlaps {t['overlaps']}" if t["overlaps"] else "")
            for t in part["tracks"]
        )
        lines.append(
            f"  part {n}: {part['verdict']}, {part['fragments']} fragments "
            f"(seq {part['first_sequence_number']}..{part['last_sequence_number']}, "
            f"dropped {part['dropped_fragments']}, out of order "
            f"{part['out_of_order_fragments']}), {tracks or 'no tracks'}"
            + (f", torn tail {part['torn_tail_bytes']} bytes" if part["torn_tail_bytes"] else "")
            + (f", fatal: {part['fatal']}" if part["fatal"] else "")
        )
    return "\n".join(lines)
