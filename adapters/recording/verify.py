"""``meetstream-live verify``: the completeness of fMP4 (or plain MP4) files on disk.

:func:`verify_file` feeds a file through :class:`~meetstream_live.fmp4.Fmp4Scanner` and
:class:`~.meter.Completeness`, part by part (each init segment starts one): any fMP4, or a plain
MP4, which has no fragments and is reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meetstream_live import BoxSeen, Fmp4Event, Fmp4Scanner, InitSegment

from .meter import COMPLETE, Completeness, worst

__all__ = ["FileReport", "format_report", "verify_file"]

#: Read size when scanning a file.
_READ = 1024 * 1024


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
