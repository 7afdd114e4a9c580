"""Recordings already on disk, as upload jobs: those a journal says are not finished (a
restart, a crash), and those given to ``meetstream-live upload DIR|FILE...``."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from meetstream_live.adapters.recording.recovery import load_json

from .job import FinalInfo, Job
from .journal import JOURNAL_SUFFIX, UploadJournal, journal_path, media_path
from .keys import ObjectName, name_from_path, name_from_sidecar
from .uploader import Uploader

__all__ = ["final_info", "find_recordings", "job_for", "resume_journals"]

log = logging.getLogger("meetstream_live.upload")


def final_info(media: Path, now: float) -> FinalInfo:
    """A final recording as the job needs it (``FileNotFoundError`` if it is gone)."""
    size = media.stat().st_size
    sidecar = media.with_suffix(".json")
    doc = load_json(sidecar)
    manifest = None
    if doc is not None and isinstance(doc.get("session"), str):
        path = media.parent / doc["session"]
        session = load_json(path)
        if session is not None and session.get("state") != "recording":
            manifest = path
    return FinalInfo(media, size, sidecar if doc is not None else None,
                     bool(doc and doc.get("indexed")), manifest, now)


def _name(media: Path, root: Path | None) -> ObjectName:
    if root is not None:
        return name_from_path(root, media)
    doc: dict[str, Any] = load_json(media.with_suffix(".json")) or {}
    return name_from_sidecar(media, doc)


def job_for(media: Path, root: Path | None, uploader: Uploader) -> Job | None:
    """The job of a final recording: resumed from its journal, or new; ``None`` when the
    journal says it is done (in full in the bucket, or given up)."""
    path = journal_path(media)
    try:
        journal = UploadJournal.load(path, uploader.disk)
    except FileNotFoundError:
        journal = UploadJournal(path, uploader.disk)
        resumed = False
    else:
        resumed = True
        state = journal.state
        if state.gave_up is not None and not state.abandoned:
            return None
        if (state.complete is not None and not state.abandoned
                and (state.sidecar or not media.with_suffix(".json").exists())
                and (uploader.keep_local or state.removed)):
            return None
    job = Job(media, _name(media, root), journal, resumed=resumed)
    try:
        job.finalized(final_info(media, uploader.monotonic()))
    except FileNotFoundError:
        job.gone = True  # its upload is given up (and aborted) at its first step
    return job


def resume_journals(root: Path, uploader: Uploader) -> int:
    """Queue every unfinished upload journaled under ``root`` whose recording is final (a
    ``.mp4.part`` is still being written, or waits for ``recover``). Returns how many."""
    count = 0
    for path in sorted(root.rglob(f"*{JOURNAL_SUFFIX}")):
        media = media_path(path)
        if media.with_name(media.name + ".part").exists():
            continue
        try:
            job = job_for(media, root, uploader)
        except (OSError, ValueError) as exc:
            log.error("%s: cannot resume: %r", path, exc)
            continue
        if job is None:
            continue
        uploader.add(("resume", str(media)), job)
        count += 1
    if count:
        log.info("resuming %d upload(s) journaled under %s", count, root)
    return count


def find_recordings(paths: Iterable[str | os.PathLike[str]]) -> Iterator[tuple[Path, Path | None]]:
    """``(media, root)`` for each final recording in ``paths`` (directories are searched;
    ``root`` is the directory given, or None for a file given by name)."""
    for item in paths:
        path = Path(item).resolve()
        if path.is_dir():
            for media in sorted(path.rglob("*.mp4")):
                if _final(media):
                    yield media, path
        elif path.is_file() or path.with_suffix(".json").is_file():
            yield path, None
        else:
            raise FileNotFoundError(str(item))


def _final(media: Path) -> bool:
    """A recording the recorder finished: its sidecar there, no ``.json.part`` left."""
    return (media.with_suffix(".json").is_file()
            and not media.with_name(media.stem + ".json.part").exists())
