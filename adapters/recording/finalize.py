"""Finalizing a part: the steps, in an order where a failure or a crash at any step leaves
what :func:`~.recovery.recover` finishes correctly, and a retry of what failed for the disk.

The steps (:attr:`Finalizer.steps`), after the last bytes were written:

1. ``cut`` — a file with bytes after its last complete box (a write that failed half way, a
   truncate that failed then) is cut back to it;
2. ``index`` — with ``--index``: durations into the ``moov``, an ``mfra`` appended;
3. ``fsync`` — the media (a failure is noted in the sidecar: ``fsync_failed``);
4. ``close``;
5. ``sidecar`` — ``<stem>.json``, new, fsynced, beside ``<stem>.mp4.part`` (on a full disk the
   room kept in the ``.json.part`` is given back first);
6. ``journal`` — the hook journal entry (one per recording, however often retried);
7. ``rename`` — ``<stem>.mp4.part`` to ``<stem>.mp4``, never over an existing file;
8. ``commit`` — ``<stem>.json.part`` removed, the directory fsynced: the part is final.

Then the session manifest is rewritten and :class:`~.sinks.PartFinalized` published, in part
order within a session. A failed step 5-8 (``ENOSPC``, ``EIO``, ``EROFS``...) is retried
every ``retry_interval`` seconds and once more when the recorder closes; left over, it is
finished by ``recover()`` at the next start: ``.mp4.part`` + ``.json`` (a final sidecar)
is renamed as it is, anything earlier is cut back to its last complete fragment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .durable import (
    dumps_json,
    errno_name,
    fsync_dir,
    rename_noreplace,
    replace_json,
    write_new,
)
from .meter import track_ends
from .mp4index import finish_index
from .partfiles import Announced, PartFile, SessionFiles
from .sidecar import FinishedRecording, build_sidecar
from .sinks import Part, PartFinalized

if TYPE_CHECKING:
    from .filesink import FileSink

__all__ = ["Finalizer"]

log = logging.getLogger("meetstream_live.recorder")

#: Finalized parts remembered for a late :class:`~.sinks.PartAmended`.
_REMEMBERED = 1000


class Finalizer:
    """The file sink's finalizing, and its retries (a thread, started when first needed)."""

    def __init__(self, sink: FileSink, threads: int = 2) -> None:
        self.sink = sink
        # Finalizing (fsync, renames) in threads of its own: a slow fsync never holds up
        # the writing of the other streams. 0: in the caller's thread (tests).
        self._pool = (ThreadPoolExecutor(threads, thread_name_prefix="recorder-finalize")
                      if threads else None)
        self._queued = 0
        self._quiet = threading.Condition()
        self.steps: tuple[tuple[str, Callable[[PartFile], None]], ...] = (
            ("cut", self._cut),
            ("index", self._index),
            ("fsync", self._fsync),
            ("close", self._close),
            ("sidecar", self._sidecar),
            ("journal", self._journal),
            ("rename", self._rename),
            ("commit", self._commit),
        )
        self._lock = threading.Lock()
        self._pending: list[PartFile] = []
        self._dirty: dict[int, SessionFiles] = {}
        self._done: dict[int, PartFile] = {}
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ running

    def finalize(self, pf: PartFile) -> None:
        """Finalize ``pf`` (closed, its last bytes written), in the finalizing threads."""
        if self._pool is None:
            self._finalize_now(pf)
            return
        with self._quiet:
            self._queued += 1
        try:
            self._pool.submit(self._finalize_now, pf)
        except RuntimeError:  # shut down already: here, then
            self._finalize_now(pf)

    def _finalize_now(self, pf: PartFile) -> None:
        try:
            with pf.lock:
                self._finalize(pf)
        finally:
            self.sink.settled(pf.part)
            if self._pool is not None:
                with self._quiet:
                    self._queued = max(0, self._queued - 1)
                    self._quiet.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every part handed over is finalized (or waits for the disk)."""
        with self._quiet:
            return self._quiet.wait_for(lambda: self._queued == 0, timeout)

    def _finalize(self, pf: PartFile) -> None:
        if self._run(pf):
            return
        with self._lock:
            self._pending.append(pf)
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._loop, name="recorder-finalize",
                                                daemon=True)
                self._thread.start()
        if self.sink.metrics is not None:
            self.sink.metrics.finalize_pending.inc()
        log.warning("%s: finalizing waits for the disk (step %s); retried every %.0fs",
                    pf.path(".mp4.part"), self.steps[pf.step][0], self.sink.retry_interval,
                    extra={"event": "finalize_waits", "file": str(pf.path(".mp4.part")),
                           "site": self.steps[pf.step][0]})
        self.announce(pf.session, pf.part.number, None)  # the later parts do not wait

    def _run(self, pf: PartFile) -> bool:
        """The steps from where ``pf`` is; False when one failed (retried later)."""
        while pf.step < len(self.steps):
            site, step = self.steps[pf.step]
            try:
                step(pf)
            except OSError as exc:
                self.sink.count_error(pf, exc, site)
                return False
            pf.step += 1
        self._finished(pf)
        return True

    def pending(self) -> list[PartFile]:
        with self._lock:
            return list(self._pending)

    def retry(self) -> None:
        """One more try for every part waiting for the disk, and for every manifest."""
        for pf in self.pending():
            with pf.lock:
                done = self._run(pf)
            if done:
                with self._lock:
                    self._pending.remove(pf)
                if self.sink.metrics is not None:
                    self.sink.metrics.finalize_pending.dec()
        with self._lock:
            dirty = list(self._dirty.values())
        for session in dirty:
            self.write_manifest(session)

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.sink.retry_interval)
            with self._lock:
                if self._stopped:
                    return
            try:
                self.retry()
            except Exception as exc:  # a bug: logged, retried next time
                log.error("finalize retry failed: %r", exc, exc_info=exc)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        with self._lock:
            self._stopped = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(30)
        self.retry()
        for pf in self.pending():
            log.error("%s not finalized (step %s failed): recover() finishes it at the next "
                      "start", pf.path(".mp4.part"), self.steps[pf.step][0])

    # ------------------------------------------------------------------ the steps

    def _cut(self, pf: PartFile) -> None:
        if pf.dirty and pf.fd is not None:
            try:
                self.sink.disk.truncate(pf.fd, pf.good_end)
            except OSError as exc:
                self.sink.count_error(pf, exc, "truncate")
                pf.facts.torn_tail_bytes = pf.file_size - pf.good_end
            else:
                pf.file_size, pf.dirty = pf.good_end, False
                pf.facts.torn_tail_bytes = 0

    def _index(self, pf: PartFile) -> None:
        facts = pf.facts
        if (not self.sink.index or pf.fd is None or facts.torn_tail_bytes or pf.dirty
                or not pf.index):
            return
        try:
            pf.file_size = finish_index(pf.fd, pf.file_size, pf.index,
                                        track_ends(facts.completeness))
        except (OSError, ValueError) as exc:
            log.warning("%s: no index written: %r", pf.stem, exc)
            facts.warn("no_index", f"no index written: {exc}")
        else:
            facts.indexed = True

    def _fsync(self, pf: PartFile) -> None:
        if pf.fd is None:
            return
        try:
            self.sink.disk.fsync(pf.fd)
        except OSError as exc:
            self.sink.count_error(pf, exc, "fsync")
            pf.facts.warn("fsync_failed", f"fsync failed ({errno_name(exc)}): the file may "
                          f"lack data the system said it had written")

    def _close(self, pf: PartFile) -> None:
        self.sink.close_fd(pf)

    def _sidecar(self, pf: PartFile) -> None:
        sink = self.sink
        if pf.document is None:
            pf.facts.bytes = pf.file_size
            if sink.sinks is not None:
                pf.facts.sinks = sink.sinks.part_report(pf.part, exclude=sink)
            assert pf.summary is not None
            pf.document = build_sidecar(pf.part, pf.summary, pf.facts)
        pf.document["disk_errors"] = pf.facts.disk_errors  # those of the tries so far too
        data = dumps_json(pf.document)
        path = pf.path(".json")
        try:
            write_new(path, data, sink.disk)
        except FileExistsError:
            # An earlier try, whose clean-up failed too: the name is ours, the content may
            # be anything: replaced, atomically.
            replace_json(path, pf.document, sink.disk)
        except OSError as exc:
            if not pf.stub_size:
                raise
            # The disk is full (or failing): give back the room kept in the stub, try again.
            sink.count_error(pf, exc, "sidecar")
            self._shrink_stub(pf)
            write_new(path, data, sink.disk)

    def _shrink_stub(self, pf: PartFile) -> None:
        disk = self.sink.disk
        with contextlib.suppress(OSError):
            fd = disk.open(pf.path(".json.part"), os.O_WRONLY)
            try:
                disk.truncate(fd, pf.stub_size)
            finally:
                disk.close(fd)
        pf.stub_size = 0

    def _journal(self, pf: PartFile) -> None:
        journal = self.sink.journal
        if journal is not None:
            journal.add(self._recording(pf))

    def _rename(self, pf: PartFile) -> None:
        disk = self.sink.disk
        source, target = pf.path(".mp4.part"), pf.path(".mp4")
        if not disk.exists(source) and disk.exists(target):
            return  # renamed by an earlier try
        rename_noreplace(source, target, disk)

    def _commit(self, pf: PartFile) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.sink.disk.unlink(pf.path(".json.part"))
        fsync_dir(pf.directory, self.sink.disk)

    def _recording(self, pf: PartFile) -> FinishedRecording:
        if pf.recording is None:
            assert pf.document is not None
            pf.recording = FinishedRecording(pf.path(".mp4"), pf.path(".json"), pf.document)
        return pf.recording

    # ------------------------------------------------------------------ done

    def _finished(self, pf: PartFile) -> None:
        sink = self.sink
        recording = self._recording(pf)
        doc = recording.sidecar
        session = pf.session
        session.part_done(recording, pf.part.number)
        self.write_manifest(session)
        metrics = sink.metrics
        if metrics is not None:
            if doc["end"] != "rotated":
                metrics.streams_finished.inc(label="clean" if doc["clean"] else "unclean")
            metrics.verdicts.inc(label=doc["verdict"])
            metrics.recorded_bytes.inc(doc["bytes"])
            done = pf.facts.completeness
            metrics.dropped_fragments.inc(done.missing)
            for track in done.tracks.values():
                metrics.timeline_gaps.inc(track.ms(track.gap_units) / 1000,
                                          label=track.info.handler)
            if pf.facts.lost_bytes:
                metrics.recording_lost.inc(pf.facts.lost_bytes, label="disk_bytes")
            if pf.facts.lost_fragments:
                metrics.recording_lost.inc(pf.facts.lost_fragments, label="disk_fragments")
        latency = doc["latency_ms"]
        log.info(
            "recording end: bot %s, %s, %s, %d bytes, %d fragments, %.2fs (reported %s), "
            "%d pings (latency ms %s), %d bytes lost: %s",
            doc["bot_id"], recording.path, doc["end_reason"], doc["bytes"], doc["fragments"],
            doc["media_duration_seconds"],
            "-" if doc["reported_duration_seconds"] is None
            else f"{doc['reported_duration_seconds']:.2f}s", doc["pings"],
            "-" if latency is None else "{min:.0f}/{median:.0f}/{max:.0f}".format(**latency),
            doc["lost_bytes"], doc["verdict"],
            extra={"event": "recording_finished", "bot_id": doc["bot_id"],
                   "speaker": doc.get("speaker_id") or doc.get("speaker_name"),
                   "file": str(recording.path), "bytes": doc["bytes"],
                   "close_code": doc["close_code"], "reason": doc["end_reason"],
                   "part": doc["part"], "verdict": doc["verdict"],
                   "duration_seconds": doc["media_duration_seconds"],
                   "fragments": doc["fragments"], "lost_bytes": doc["lost_bytes"]},
        )
        with self._lock:
            self._done[pf.part.id] = pf
            while len(self._done) > _REMEMBERED:
                self._done.pop(next(iter(self._done)))
        sink.forget(pf)
        self.announce(session, pf.part.number, (pf.part, recording))

    def announce(self, session: SessionFiles, number: int, item: Announced | None) -> None:
        """Publish ``PartFinalized`` for what is ready, in part order."""
        for part, recording in session.ready(number, item):
            self.sink.publish(part, [PartFinalized(part, recording)])

    def write_manifest(self, session: SessionFiles) -> None:
        try:
            session.write_manifest()
        except OSError as exc:
            if self.sink.metrics is not None:
                self.sink.metrics.disk_error(exc, "manifest")
            if not session.logged:
                session.logged = True
                log.error("%s: manifest failed: %s (retried)", session.manifest_path,
                          errno_name(exc))
            with self._lock:
                self._dirty[session.id] = session
                if self._thread is None and not self._stopped:
                    self._thread = threading.Thread(target=self._loop, daemon=True,
                                                    name="recorder-finalize")
                    self._thread.start()
        else:
            with self._lock:
                self._dirty.pop(session.id, None)

    def amend(self, part: Part, fields: Mapping[str, Any]) -> None:
        """Stream facts learned after the part was closed (``ignored_bytes``)."""
        pf = self.sink.part_file(part)
        if pf is None:
            with self._lock:
                pf = self._done.get(part.id)
        if pf is None:
            return
        with pf.lock:  # its finalizing may be under way in another thread
            if pf.summary is not None:
                pf.summary.update(fields)  # type: ignore[typeddict-item]
            if pf.document is None:
                return
            pf.document.update(fields)
            sidecar = next(i for i, (name, _) in enumerate(self.steps) if name == "sidecar")
            if pf.step > sidecar:
                try:
                    replace_json(pf.path(".json"), pf.document, self.sink.disk)
                except OSError as exc:
                    self.sink.count_error(pf, exc, "sidecar")
