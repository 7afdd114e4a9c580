"""The upload sink: every recording uploaded to S3-compatible object storage while it is
being recorded (``serve --upload s3://BUCKET/PREFIX``; see ``docs/upload.md``).

It follows the file sink, never the stream: the file sink's :class:`~..sinks.FragmentStored`
(what is on disk, at which file offsets) and :class:`~..sinks.PartFinalized` (the file is
final), and the stream model's :class:`~..sinks.PartClosed` (whether the session is over, for
its manifest). The local ``.part`` file is the source of truth and the buffer: the uploader's
threads read the bytes from it, so the sink's events are a few integers each and its
:meth:`UploadSink.handle` runs inline, in the publisher's thread (``runs = "inline"``): a few
field updates under one lock, no I/O, nothing that waits. A storage that is slow, down or
refusing costs the uploader's threads their time and the disk its bytes (kept until
uploaded), never the bot's pongs or the local recording.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from meetstream_live.adapters.recording.metrics import Metrics
from meetstream_live.adapters.recording.sinks import (
    FragmentStored,
    Part,
    PartClosed,
    PartFinalized,
    Sink,
    SinkEvent,
    SinkSet,
)

from .job import FinalInfo
from .keys import ObjectName, name_of
from .resume import resume_journals
from .uploader import UploadConfig, Uploader

__all__ = ["PROBE_KEY", "UploadSink"]

log = logging.getLogger("meetstream_live.upload")

#: Under each target's prefix: where the start-up check creates and aborts an upload.
PROBE_KEY = ".meetstream-live-probe"


class UploadSink(Sink):
    """Uploads the recordings under ``root`` (the recorder's output directory) with
    ``config`` (or through ``uploader``). ``resume``: at :meth:`start`, also go on with the
    uploads journaled under ``root`` by an earlier run (in a thread: the start does not
    wait). ``drain_timeout``: at :meth:`close`, how long the uploads due may go on."""

    name: ClassVar[str] = "upload"
    accepts: ClassVar[tuple[type[SinkEvent], ...]] = (FragmentStored, PartClosed, PartFinalized)
    #: Inline: its events never queue (and so never fill a queue, block or drop).
    when_full: ClassVar[Literal["block", "drop"]] = "drop"
    runs: ClassVar[Literal["thread", "inline"]] = "inline"

    def __init__(
        self,
        root: str | Path,
        config: UploadConfig | None = None,
        *,
        uploader: Uploader | None = None,
        metrics: Metrics | None = None,
        resume: bool = True,
        drain_timeout: float = 30.0,
    ) -> None:
        if uploader is None:
            if config is None:
                raise ValueError("an UploadConfig or an Uploader")
            uploader = Uploader(config, metrics=metrics)
        elif metrics is not None:
            uploader.watch(metrics)
        self.root = Path(root).resolve()
        self.uploader = uploader
        self.resume = resume
        self.drain_timeout = drain_timeout
        self._lock = threading.Lock()
        self._over: dict[int, bool] = {}
        self._resumer: threading.Thread | None = None

    def check(self) -> None:
        """Every target's bucket exists and takes writes (raises :class:`~.s3.S3Error`)."""
        for storage in self.uploader.storages:
            prefix = storage.target.prefix
            storage.check(f"{prefix}/{PROBE_KEY}" if prefix else PROBE_KEY)

    # ------------------------------------------------------------------ the Sink contract

    def start(self, sinks: SinkSet) -> None:
        self.uploader.start()
        if self.resume and self._resumer is None:
            self._resumer = threading.Thread(target=self._resume, name="upload-resume",
                                             daemon=True)
            self._resumer.start()

    def _resume(self) -> None:
        try:
            resume_journals(self.root, self.uploader)
        except Exception as exc:  # never the recording's problem
            log.exception("resuming the journaled uploads failed: %r", exc)

    def handle(self, part: Part, events: Sequence[SinkEvent]) -> None:
        uploader = self.uploader
        for event in events:
            kind = type(event)
            if kind is FragmentStored:
                assert isinstance(event, FragmentStored)
                path = event.path
                uploader.stored(part.id, path, event.file_offset + event.size,
                                lambda path=path: self._name(part, path))  # type: ignore[misc]
            elif kind is PartClosed:
                assert isinstance(event, PartClosed)
                with self._lock:
                    self._over[part.id] = bool(event.summary.get("session_over"))
            elif kind is PartFinalized:
                assert isinstance(event, PartFinalized)
                self._finalized(part, event)

    def _name(self, part: Part, path: Path) -> ObjectName:
        return name_of(part.bot_id, part.speaker, self.root, path)

    def _finalized(self, part: Part, event: PartFinalized) -> None:
        recording = event.recording
        doc = recording.sidecar
        with self._lock:
            over = self._over.pop(part.id, False)
        session = doc.get("session")
        manifest = (recording.path.parent / session
                    if over and isinstance(session, str) and session else None)
        final = FinalInfo(recording.path, int(doc.get("bytes", 0)), recording.sidecar_path,
                          bool(doc.get("indexed")), manifest, time.monotonic())
        self.uploader.finalized(part.id, final, lambda: self._name(part, recording.path))

    def report(self, part: Part) -> dict[str, Any]:
        job = self.uploader.job(part.id)
        return job.report() if job is not None else {}

    def close(self) -> None:
        if self._resumer is not None:
            self._resumer.join(self.drain_timeout)
        self.uploader.close(self.drain_timeout)
