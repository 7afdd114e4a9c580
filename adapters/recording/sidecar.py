"""The sidecar: the JSON document beside each recording that says what happened to it.

Its fields are listed in ``docs/recording.md`` and checked by ``docs/sidecar.schema.json``;
:data:`SIDECAR_VERSION` goes up when a field changes meaning. A sidecar is made of two halves:

* :class:`StreamFacts` — what the stream model knows about a part (how it ended, pings,
  warnings, reconnects): the ``summary`` of its :class:`~.sinks.PartClosed`;
* :class:`FileFacts` — what the file sink knows about the part's file (its bytes, the
  fragments in it, what the disk lost), made by the file sink.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from .meter import COMPLETE, GAPS, TRUNCATED, Completeness
from .names import iso

if TYPE_CHECKING:
    from .sinks import Part

__all__ = [
    "CONTINUED",
    "MAX_HOLES",
    "MAX_WARNINGS",
    "SIDECAR_VERSION",
    "FileFacts",
    "FinishedRecording",
    "StreamFacts",
    "build_sidecar",
    "end_reason",
    "part_verdict",
    "peer_address",
    "peer_object",
    "peer_text",
    "skeleton",
]

#: Sidecar format version; bumped when a field changes meaning. 3: ``holes``, ``sinks``,
#: ``received_bytes``, ``disk_errors``; disk errors no longer end a part (no ``disk_full``
#: end reason). 4: ``peer`` is ``{"host": ..., "port": ...}`` (was a string), the real client
#: behind a trusted proxy with ``serve --proxy-headers``.
SIDECAR_VERSION = 4
#: Warnings kept in one sidecar; more are only counted.
MAX_WARNINGS = 100
#: Holes listed in one sidecar; more are only counted (in ``lost_bytes``).
MAX_HOLES = 100


@dataclass(frozen=True)
class FinishedRecording:
    """A recording on disk, final: its media file, its sidecar, and the sidecar's content."""

    path: Path
    sidecar_path: Path
    sidecar: dict[str, Any]


class StreamFacts(TypedDict):
    """The stream's facts about one part (``PartClosed.summary``)."""

    end: str
    end_reason: str
    clean: bool
    close_code: int | None
    close_reason: str | None
    reported_duration_seconds: float | None
    ended_at_ms: int
    #: Of the part's latest connection (a reconnect that appended changes them).
    start_message: dict[str, Any] | None
    bot_id: Any
    speaker_id: Any
    speaker_name: Any
    peer: str
    path: str
    pings: int
    latency_ms: dict[str, float] | None
    warnings: list[dict[str, str]]
    warnings_dropped: int
    connections: int
    reconnects: list[dict[str, Any]]
    discarded_tail_bytes: int
    ignored_bytes: int
    #: Bytes and fragments of the part as received (the file may hold fewer: a disk).
    received_bytes: int
    received_fragments: int
    torn_tail_bytes: int
    fatal: str | None
    moofs_without_mdat: int
    #: No part of this session follows (the session manifest is final).
    session_over: bool
    session_connections: int


@dataclass
class FileFacts:
    """The file sink's facts about one part's file."""

    name: str
    session: str | None
    rotating: bool
    bytes: int = 0
    fragments: int = 0
    media_seconds: float = 0.0
    completeness: Completeness = field(default_factory=Completeness)
    torn_tail_bytes: int = 0
    lost_bytes: int = 0
    lost_fragments: int = 0
    holes: list[dict[str, Any]] = field(default_factory=list)
    holes_dropped: int = 0
    #: The file stops before the stream's end: the disk never took writes again.
    lost_at_end: bool = False
    disk_errors: int = 0
    warnings: list[dict[str, str]] = field(default_factory=list)
    indexed: bool = False
    sinks: dict[str, Any] = field(default_factory=dict)

    def warn(self, kind: str, message: str) -> None:
        self.warnings.append({"source": "recorder", "kind": kind, "message": message})


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
    facts: FileFacts, reason: str | None, reported: float | None
) -> tuple[str, list[str]]:
    """The part's verdict and why (from what is in the file)."""
    why: list[str] = []
    done = facts.completeness
    media = done.media_verdict(facts.torn_tail_bytes)
    if media == TRUNCATED:
        why.append("the media ends inside a box, or has no init segment" if
                   done.has_init or facts.torn_tail_bytes else "no init segment")
    ended = reason is None or reason in CONTINUED or reason == "stream_end"
    if not ended:
        why.append(f"the stream did not end: {reason}")
    if done.missing:
        why.append(f"{done.missing} fragment(s) missing (mfhd sequence numbers)")
    if done.out_of_order:
        why.append(f"{done.out_of_order} fragment(s) out of order")
    if any(t.gaps for t in done.tracks.values()):
        why.append("timeline gaps")
    if facts.lost_bytes:
        why.append(f"{facts.lost_bytes} bytes not written (disk)")
    if facts.lost_at_end:
        why.append("the file stops before the end of the stream (disk)")
    if reported is not None and done.fragments:
        tolerance = max(2 * done.max_fragment_seconds, 2.0)
        if reported - facts.media_seconds > tolerance:
            why.append(
                f"video_stream_end reports {reported:.3f}s, the media holds "
                f"{facts.media_seconds:.3f}s"
            )
    if media == TRUNCATED or not ended or facts.lost_at_end:
        return TRUNCATED, why
    return (GAPS if why else COMPLETE), why


def peer_address(peer: object) -> tuple[str | None, int | None]:
    """``(host, port)`` of a peer as the transports give it (``"('10.0.0.5', 53211)"``, an
    IPv6 ``"('::1', 5555, 0, 0)"``) or as a proxy or a person writes it (``"10.0.0.5:53211"``,
    ``"[::1]:5555"``, a bare host); ``(None, None)`` when unknown."""
    if isinstance(peer, dict):
        host, port = peer.get("host"), peer.get("port")
        return (host if isinstance(host, str) else None,
                port if isinstance(port, int) and not isinstance(port, bool) else None)
    if not isinstance(peer, str) or not peer or peer in ("?", "unknown"):
        return None, None
    text = peer.strip()
    if text.startswith("("):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text, None
        if isinstance(value, tuple) and value and isinstance(value[0], str):
            port = value[1] if len(value) > 1 and isinstance(value[1], int) else None
            return value[0], port
        return text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    host, colon, port = text.rpartition(":")
    if colon and port.isdigit() and ":" not in host:
        return host, int(port)
    return text, None


def peer_text(peer: object) -> str:
    """A peer for logs: ``10.0.0.5:53211``, ``[::1]:5555``, ``?`` when unknown."""
    host, port = peer_address(peer)
    if host is None:
        return "?"
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def peer_object(peer: object) -> dict[str, Any]:
    """The sidecar's ``peer``: ``{"host": "10.0.0.5", "port": 53211}`` (``null`` where
    unknown)."""
    host, port = peer_address(peer)
    return {"host": host, "port": port}


def _warnings(
    stream: list[dict[str, str]], dropped: int, own: list[dict[str, str]]
) -> tuple[list[dict[str, str]], int]:
    both = stream + own
    return both[:MAX_WARNINGS], dropped + max(0, len(both) - MAX_WARNINGS)


def skeleton(name: str) -> dict[str, Any]:
    """Every field of a sidecar, empty: what recovery starts from when the ``.json.part`` of
    a recording could not be read (its stub was never written)."""
    document = build_sidecar(None, None, FileFacts(name=name, session=None, rotating=False))
    document.update(end="recording", part=1, started_by="start", path="",
                    peer={"host": None, "port": None})
    return document


def build_sidecar(
    part: Part | None, stream: StreamFacts | None, file: FileFacts
) -> dict[str, Any]:
    """The sidecar of ``part``: final with the stream's facts, the ``.json.part`` stub (what
    recovery starts from) without them."""
    start = part.start if part is not None else None
    final = stream is not None
    reason = stream["end_reason"] if stream is not None else None
    reported = stream["reported_duration_seconds"] if stream is not None else None
    verdict, why = part_verdict(file, reason, reported) if final else (None, [])
    completeness = file.completeness.report(file.torn_tail_bytes)
    completeness["reported_duration_seconds"] = reported
    completeness["duration_difference_seconds"] = (
        None if reported is None else round(reported - file.media_seconds, 6)
    )
    warnings, dropped = _warnings(
        stream["warnings"] if stream is not None else [],
        stream["warnings_dropped"] if stream is not None else 0,
        file.warnings,
    )
    ended_ms = stream["ended_at_ms"] if stream is not None else None
    document: dict[str, Any] = {
        "version": SIDECAR_VERSION,
        "file": file.name,
        "bot_id": stream["bot_id"] if stream else (start.bot_id if start else None),
        "speaker_id": stream["speaker_id"] if stream else (start.speaker_id if start else None),
        "speaker_name": (
            stream["speaker_name"] if stream else (start.speaker_name if start else None)
        ),
        "start_message": (
            stream["start_message"] if stream else (dict(start.raw) if start else None)
        ),
        "peer": peer_object(stream["peer"] if stream else (part.info.peer if part else None)),
        "path": stream["path"] if stream else (part.info.path if part else ""),
        "started_at": iso(part.started_ms if part else None),
        "started_at_ms": part.started_ms if part else None,
        "ended_at": iso(ended_ms),
        "ended_at_ms": ended_ms,
        "end": stream["end"] if stream else "recording",
        "end_reason": reason,
        "clean": stream["clean"] if stream else None,
        "close_code": stream["close_code"] if stream else None,
        "close_reason": stream["close_reason"] if stream else None,
        "verdict": verdict,
        "verdict_reasons": why,
        "bytes": file.bytes,
        "received_bytes": stream["received_bytes"] if stream else 0,
        "fragments": file.fragments,
        "media_duration_seconds": round(file.media_seconds, 6),
        "reported_duration_seconds": reported,
        "completeness": completeness,
        "pings": stream["pings"] if stream else 0,
        "latency_ms": stream["latency_ms"] if stream else None,
        "warnings": warnings,
        "warnings_dropped": dropped,
        "piece": part.number if part and file.rotating else None,
        "part": part.number if part else 1,
        "started_by": part.why if part else "start",
        "session": file.session,
        "connections": stream["connections"] if stream else 1,
        "reconnects": list(stream["reconnects"]) if stream else [],
        "lost_bytes": file.lost_bytes,
        "lost_fragments": file.lost_fragments,
        "holes": list(file.holes),
        "holes_dropped": file.holes_dropped,
        "disk_errors": file.disk_errors,
        "discarded_tail_bytes": stream["discarded_tail_bytes"] if stream else 0,
        "ignored_bytes": stream["ignored_bytes"] if stream else 0,
        "indexed": file.indexed,
        "recovered": False,
        "sinks": dict(file.sinks),
    }
    return document
