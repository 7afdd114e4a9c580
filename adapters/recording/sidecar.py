"""The sidecar: the JSON document beside each recording that says what happened to it.

Its fields are listed in ``docs/recording.md`` and checked by ``docs/sidecar.schema.json``;
:data:`SIDECAR_VERSION` goes up when a field changes meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meetstream_live import StreamStarted
from meetstream_live.adapters._common import ConnectionInfo

from .meter import COMPLETE, GAPS, TRUNCATED
from .names import iso

if TYPE_CHECKING:
    from .recorder import _Piece, _Session

__all__ = [
    "CONTINUED",
    "MAX_WARNINGS",
    "SIDECAR_VERSION",
    "FinishedRecording",
    "build_sidecar",
    "end_reason",
    "part_verdict",
]

#: Sidecar format version; bumped when a field changes meaning.
SIDECAR_VERSION = 2
#: Warnings kept in one sidecar; more are only counted.
MAX_WARNINGS = 100


@dataclass(frozen=True)
class FinishedRecording:
    """A recording on disk, final: its media file, its sidecar, and the sidecar's content."""

    path: Path
    sidecar_path: Path
    sidecar: dict[str, Any]


#: ``end_reason`` values of a part that goes on in the next part of the same session.
CONTINUED = frozenset({"rotated", "new_init"})

def end_reason(code: int | None, reason: str | None) -> str:
    """The sidecar's ``end_reason`` for a connection that ended with the stream open."""
    if code == 1001 and reason == "idle timeout":
        return "idle_timeout"
    if code == 1001 and reason == "server shutting down":
        return "server_shutdown"
    if code == 1011:
        return "handler_error"
    return "closed"


def part_verdict(
    piece: _Piece, reason: str | None, reported: float | None
) -> tuple[str, list[str]]:
    """The part's verdict and why."""
    why: list[str] = []
    media = piece.completeness.media_verdict(piece.torn_tail_bytes)
    if media == TRUNCATED:
        why.append("the media ends inside a box, or has no init segment" if
                   piece.completeness.has_init or piece.torn_tail_bytes else "no init segment")
    if reason is not None and reason not in CONTINUED and reason != "stream_end":
        why.append(f"the stream did not end: {reason}")
    done = piece.completeness
    if done.missing:
        why.append(f"{done.missing} fragment(s) missing (mfhd sequence numbers)")
    if done.out_of_order:
        why.append(f"{done.out_of_order} fragment(s) out of order")
    if any(t.gaps for t in done.tracks.values()):
        why.append("timeline gaps")
    if piece.lost_bytes:
        why.append(f"{piece.lost_bytes} bytes not written (disk)")
    if reported is not None and piece.completeness.fragments:
        tolerance = max(2 * done.max_fragment_seconds, 2.0)
        if reported - piece.media_seconds > tolerance:
            why.append(
                f"video_stream_end reports {reported:.3f}s, the media holds "
                f"{piece.media_seconds:.3f}s"
            )
    truncated = media == TRUNCATED or (
        reason is not None and reason not in CONTINUED and reason != "stream_end"
    )
    if truncated:
        return TRUNCATED, why
    return (GAPS if why else COMPLETE), why


def build_sidecar(
    start: StreamStarted | None,
    info: ConnectionInfo,
    session: _Session,
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
    final = ended_ms is not None
    verdict, why = part_verdict(piece, reason, reported) if final else (None, [])
    completeness = piece.completeness.report(piece.torn_tail_bytes)
    completeness["reported_duration_seconds"] = reported
    completeness["duration_difference_seconds"] = (
        None if reported is None else round(reported - piece.media_seconds, 6)
    )
    rotating = session.recorder.rotate_every is not None
    document: dict[str, Any] = {
        "version": SIDECAR_VERSION,
        "file": f"{piece.stem}.mp4",
        "bot_id": start.bot_id if start is not None else None,
        "speaker_id": start.speaker_id if start is not None else None,
        "speaker_name": start.speaker_name if start is not None else None,
        "start_message": dict(start.raw) if start is not None else None,
        "peer": info.peer,
        "path": info.path,
        "started_at": iso(piece.started_ms),
        "started_at_ms": piece.started_ms,
        "ended_at": iso(ended_ms),
        "ended_at_ms": ended_ms,
        "end": end,
        "end_reason": reason,
        "clean": clean,
        "close_code": code,
        "close_reason": close_reason,
        "verdict": verdict,
        "verdict_reasons": why,
        "bytes": piece.bytes,
        "fragments": piece.fragments,
        "media_duration_seconds": round(piece.media_seconds, 6),
        "reported_duration_seconds": reported,
        "completeness": completeness,
        "pings": piece.pings,
        "latency_ms": piece.latency_summary(),
        "warnings": list(piece.warnings),
        "warnings_dropped": piece.warnings_dropped,
        "piece": piece.number if rotating else None,
        "part": piece.number,
        "started_by": piece.why,
        "session": None if session.manifest_path is None else session.manifest_path.name,
        "connections": piece.connections,
        "reconnects": list(piece.reconnects),
        "lost_bytes": piece.lost_bytes,
        "lost_fragments": piece.lost_fragments,
        "discarded_tail_bytes": piece.discarded_tail_bytes,
        "ignored_bytes": piece.ignored_bytes,
        "indexed": False,
        "recovered": False,
    }
    return document
