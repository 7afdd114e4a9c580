"""Crash recovery: finish the recordings a crash (or a disk that never came back) left as
``.part`` files.

:func:`recover` finishes whatever point of the finalize sequence (:mod:`.finalize`) a part
was left at: a part whose final sidecar was written is renamed and committed as it is; any
other ``.mp4.part`` is cut back to the end of its last complete fragment, renamed, and gets
its sidecar (``end_reason`` ``crash``, verdict ``truncated``). It also closes the session
manifests left in state ``recording``, and removes the temporary files of interrupted atomic
replaces.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meetstream_live import Fmp4Event, FragmentComplete

from .durable import REAL_DISK, Disk, fsync_dir, rename_noreplace, replace_json
from .meter import TRUNCATED, MediaMeter, fragment_entry, track_ends, worst
from .metrics import Metrics
from .mp4index import finish_index
from .names import iso, iso_ms
from .partfiles import ResumedSession
from .sidecar import SIDECAR_VERSION, FinishedRecording, skeleton

if TYPE_CHECKING:
    from .hooks import Journal

__all__ = ["load_json", "recover", "resumable_sessions"]

log = logging.getLogger("meetstream_live.recorder")

#: Read size when scanning a file during recovery.
_SCAN_READ = 1024 * 1024


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


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


def load_json(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _scan_file(path: Path) -> MediaMeter:
    """A file fed through the scanner."""
    meter = MediaMeter()

    def take(events: list[Fmp4Event]) -> None:
        for event in events:
            meter.completeness.add(event)
            if isinstance(event, FragmentComplete):
                meter.entries.append(fragment_entry(event.offset, event))

    with open(path, "rb") as f:
        while chunk := f.read(_SCAN_READ):
            take(meter.feed(chunk))
    take(meter.eof())
    return meter






def recover(
    output_dir: str | os.PathLike[str],
    *,
    clock: Callable[[], int] = _wall_ms,
    metrics: Metrics | None = None,
    journal: Journal | None = None,
    index: bool = False,
    disk: Disk = REAL_DISK,
) -> list[FinishedRecording]:
    """Finish the recordings a crash left as ``.part`` files under ``output_dir``.

    Each ``.mp4.part`` is cut back to the end of its last complete fragment (found by feeding
    it through :class:`Fmp4Scanner`), fsynced and renamed to ``.mp4``; its sidecar is written
    from the ``.json.part`` left at the start of the stream, with ``"recovered": true``. A
    file with no complete fragment is kept whole. Run it before the server starts: it assumes
    nothing else is writing under ``output_dir``.
    """
    root = Path(output_dir).resolve()
    _remove_temporaries(root, disk)
    done: list[FinishedRecording] = []
    for directory, stem, renamed in _leftovers(root):
        try:
            recording = _recover_one(directory, stem, renamed, clock(), journal, index, disk)
        except OSError as exc:
            if metrics is not None:
                metrics.disk_error(exc, "recover")
            log.error("could not recover %s/%s: %s", directory, stem, exc,
                      extra={"event": "recover_failed", "file": f"{directory}/{stem}.mp4"})
        else:
            done.append(recording)
            if metrics is not None:
                metrics.verdicts.inc(label=recording.sidecar["verdict"])
    _recover_manifests(root, done, clock(), disk)
    return done


#: The temporary file of an interrupted :func:`~.durable.replace_json`: ``<name>.<pid>.tmp``.
_TEMPORARY = re.compile(r"\.json\.\d+\.tmp$")


def _remove_temporaries(root: Path, disk: Disk) -> None:
    for path in root.rglob("*.tmp"):
        if _TEMPORARY.search(path.name):
            with contextlib.suppress(OSError):
                disk.unlink(path)


def _final(document: dict[str, Any] | None) -> bool:
    """A sidecar the file sink wrote at the end of a stream (not a stub, not recovered)."""
    return document is not None and document.get("verdict") is not None


def _recover_manifests(root: Path, done: list[FinishedRecording], now: int, disk: Disk) -> None:
    """Close the session manifests a crash left in state ``recording``: each part gets what
    its sidecar says (state ``recovered`` for the parts just recovered), the manifest state
    ``recovered``, ``recovered_parts`` the file names of the recovered parts."""
    recovered = {r.path.resolve(): r for r in done}
    for path in sorted(root.rglob("*.session.json")):
        document = load_json(path)
        if document is None:
            continue
        parts = document.get("parts")
        if not isinstance(parts, list):
            parts = []
        if document.get("state") != "recording" and not any(
            isinstance(e, dict) and e.get("state") == "recording" for e in parts
        ):
            continue
        names: list[str] = []
        for entry in parts:
            if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
                continue
            media = path.parent / entry["file"]
            recording = recovered.get(media.resolve())
            sidecar = recording.sidecar if recording is not None else None
            if sidecar is None and entry.get("state") == "recording":
                sidecar = load_json(media.with_suffix(".json"))
                if sidecar is not None and sidecar.get("verdict") is None:
                    sidecar = None
            if sidecar is None:
                if entry.get("state") == "recording":
                    entry["state"] = "lost" if not media.exists() else "unknown"
                continue
            entry.update(
                state="recovered" if recording is not None else "finished",
                sidecar=media.with_suffix(".json").name, verdict=sidecar.get("verdict"),
                end_reason=sidecar.get("end_reason"), bytes=sidecar.get("bytes"),
                fragments=sidecar.get("fragments"),
                media_duration_seconds=sidecar.get("media_duration_seconds"),
                ended_at=sidecar.get("ended_at"),
            )
            if recording is not None:
                names.append(entry["file"])
        verdicts = [e.get("verdict") for e in parts if isinstance(e, dict)]
        if any(isinstance(e, dict) and e.get("state") in ("lost", "unknown") for e in parts):
            verdicts.append(TRUNCATED)
        document.update(
            state="recovered",
            verdict=worst(v for v in verdicts if isinstance(v, str)),
            recovered_parts=names,
            recovered_at=iso(now),
        )
        try:
            replace_json(path, document, disk)
        except OSError as exc:
            log.error("could not update the manifest %s: %r", path, exc)
        else:
            log.warning("recovered the session manifest %s (%d part(s) recovered)", path,
                        len(names))


def _recover_one(
    directory: Path, stem: str, renamed: bool, now: int, journal: Journal | None, index: bool,
    disk: Disk,
) -> FinishedRecording:
    part = directory / f"{stem}.mp4.part"
    sidecar_path = directory / f"{stem}.json"
    final = load_json(sidecar_path)
    media = directory / f"{stem}.mp4" if renamed else part
    if _final(final) and final is not None and (
        renamed or media.stat().st_size == final.get("bytes")
    ):
        # Stopped after its final sidecar was written: finish the sequence as it was.
        recording = FinishedRecording(directory / f"{stem}.mp4", sidecar_path, final)
        if journal is not None:
            journal.add(recording)
        if not renamed:
            rename_noreplace(part, recording.path, disk)
        with contextlib.suppress(FileNotFoundError):
            disk.unlink(directory / f"{stem}.json.part")
        fsync_dir(directory, disk)
        log.warning("finished %s (its sidecar was written before the stop)", recording.path,
                    extra={"event": "recovered", "file": str(recording.path)})
        return recording
    size = media.stat().st_size
    modified_ms = media.stat().st_mtime_ns // 1_000_000
    meter = _scan_file(media)
    fragments, seconds = meter.fragments, meter.seconds
    end = meter.scanner.last_complete_fragment_end
    warnings: list[dict[str, str]] = []
    cut = 0
    # A finalized (renamed) file is cut only when it ends inside a box (a disk that filled up
    # mid-fragment): an index appended after its last fragment stays.
    torn = meter.completeness.torn_at is not None
    indexed = False
    fd = disk.open(media, os.O_RDWR)
    try:
        if end > 0 and (not renamed or torn):
            cut = size - end
            if cut:
                disk.truncate(fd, end)
        elif not renamed:
            warnings.append(
                {
                    "source": "recorder",
                    "kind": "no_complete_fragment",
                    "message": "no complete fragment found: the file was kept whole",
                }
            )
        if index and (not renamed or torn) and end > 0 and meter.entries:
            with contextlib.suppress(OSError, ValueError):
                finish_index(fd, end, meter.entries, track_ends(meter.completeness))
                indexed = True
        disk.fsync(fd)
    finally:
        disk.close(fd)
    if not renamed:
        target = directory / f"{stem}.mp4"
        rename_noreplace(part, target, disk)
    else:
        target = media
    document = {**skeleton(target.name),
                **(final or load_json(directory / f"{stem}.json.part") or {})}
    previous = document.get("warnings")
    completeness = meter.completeness.report(0)
    completeness["reported_duration_seconds"] = None
    completeness["duration_difference_seconds"] = None
    document.update(
        {
            "version": SIDECAR_VERSION,
            "file": target.name,
            "end_reason": "crash",
            "verdict": TRUNCATED,
            "verdict_reasons": ["the receiver stopped before the stream ended (crash)"],
            "completeness": completeness,
            "ended_at": document.get("ended_at") or iso(modified_ms),
            "ended_at_ms": document.get("ended_at_ms") or modified_ms,
            "end": "crash",
            "clean": False,
            "bytes": target.stat().st_size,
            "fragments": fragments,
            "media_duration_seconds": round(seconds, 6),
            "recovered": True,
            "indexed": indexed,
            "recovered_at": iso(now),
            "recovered_cut_bytes": cut,
            "warnings": (previous if isinstance(previous, list) else []) + warnings,
        }
    )
    replace_json(sidecar_path, document, disk)
    recording = FinishedRecording(target, sidecar_path, document)
    if journal is not None:
        journal.add(recording)
    with contextlib.suppress(FileNotFoundError):
        disk.unlink(directory / f"{stem}.json.part")
    fsync_dir(directory, disk)
    log.warning(
        "recovered %s: %d bytes, %d fragments, cut %d bytes", target, document["bytes"],
        fragments, cut,
        extra={"event": "recovered", "file": str(target), "bytes": document["bytes"],
               "bot_id": document.get("bot_id")},
    )
    return recording


def resumable_sessions(
    output_dir: str | os.PathLike[str], *, within: float, clock: Callable[[], int] = _wall_ms,
) -> dict[tuple[str, str], ResumedSession]:
    """The sessions :func:`recover` closed less than ``within`` seconds ago (the reconnect
    grace), by ``(bot_id, speaker)``: a :class:`~.sessions.Recorder` given them continues each
    when its bot reconnects after the restart, as the next numbered part of the same session,
    instead of starting a new one. Where one key has several, the latest started wins."""
    found: dict[tuple[str, str], ResumedSession] = {}
    if within <= 0:
        return found
    root = Path(output_dir).resolve()
    now = clock()
    oldest = now - int(within * 1000)
    for path in root.rglob("*.session.json"):
        try:
            if path.stat().st_mtime * 1000 < oldest:
                continue  # not rewritten since before the window: not recovered in it
        except OSError:
            continue
        document = load_json(path)
        if document is None or document.get("state") != "recovered":
            continue
        recovered = iso_ms(document.get("recovered_at"))
        started = iso_ms(document.get("started_at"))
        bot_id, speaker = document.get("bot_id"), document.get("speaker")
        parts = document.get("parts")
        if (recovered is None or recovered < oldest or started is None
                or not isinstance(bot_id, str) or not isinstance(parts, list)):
            continue
        entries = {e["part"]: e for e in parts
                   if isinstance(e, dict) and isinstance(e.get("part"), int)}
        connections = document.get("connections")
        key = (bot_id, speaker if isinstance(speaker, str) else "")
        if key in found and found[key].started_ms >= started:
            continue
        found[key] = ResumedSession(
            key, path, started, connections if isinstance(connections, int) else 1, entries)
    return found
