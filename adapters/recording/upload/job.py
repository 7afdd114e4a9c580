"""One recording's upload: what is on disk, what the bucket has, and the next step.

A :class:`Job` is fed by the upload sink (:meth:`Job.stored` for each fragment the file sink
wrote, :meth:`Job.finalized` once the file is final) and advanced by the uploader's threads,
one :meth:`Job.step` at a time, each step one request and its journal record:

1. ``begin`` a target (the first one up) and, when a whole part is on disk, ``create`` the
   multipart upload;
2. while recording: a ``part`` each time the bytes stored since the last part reach the part
   size, cut at a fragment boundary (the file sink's ``FragmentStored`` offsets: the bytes
   before them never change while the part is written), so the bucket trails the live edge
   by about one part;
3. once final: the rest, as the last part (any size); with ``--index`` the parts holding the
   ``moov`` (patched in place by finalize: only its first 4 MiB can change) are read again
   and uploaded again if they changed (see ``docs/upload.md``, "the moov");
4. ``complete``, only when the parts cover the file from byte 0 to its size without a gap,
   each but the last >= 5 MiB, and the storage's checksum of the whole (the CRC32 of the
   parts' CRC32s) is ours; then the object's size and checksum are checked with HeadObject.
   A recording smaller than two parts is one PutObject instead;
5. the sidecar beside it; the session manifest when the session is over; with
   ``--keep-local false`` the local copy is removed.

A job loaded from its journal (a restart, ``meetstream-live upload``) first *resumes*:
ListParts, and every journaled part checked against the listing (its ETag and size among
the entries of its number: SeaweedFS lists every upload of a part number, in no fixed order)
and against the local file (its CRC32); the parts from the first that does not match are
uploaded again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from meetstream_live.adapters.recording.durable import REAL_DISK, Disk
from meetstream_live.adapters.recording.mp4index import MAX_INIT_READ

from .journal import Abandoned, JournalState, PartRecord, UploadJournal
from .keys import ObjectName, Target, beside, sidecar_key
from .s3 import S3Error, Storage, b64_crc, composite_crc32, crc32_b64

__all__ = ["MAX_PARTS", "MIN_PART_SIZE", "FinalInfo", "Job", "JobContext", "LocalFileGone",
           "Step", "part_target"]

log = logging.getLogger("meetstream_live.upload")

#: S3's smallest part (but the last).
MIN_PART_SIZE = 5 * 1024 * 1024
#: S3's largest part and part count.
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024
MAX_PARTS = 10_000
#: Parts uploaded before the part size doubles (10,000 parts of a fixed 5 MiB would stop at
#: 48 GiB; doubling every 2,000 parts reaches 300 GiB).
_DOUBLE_EVERY = 2_000
_READ = 1024 * 1024
#: Tries to abort an abandoned upload before the job ends without (the next start, or the
#: bucket's lifecycle rule, gets it).
ABORT_TRIES = 3
_HEAD = struct.Struct(">I4s")


class Step:
    """What :meth:`Job.step` says: more to do now, wait for more bytes, or done."""

    MORE = "more"
    WAIT = "wait"
    DONE = "done"


class LocalFileGone(Exception):
    """The recording's local file is gone (deleted, retention): the upload cannot go on."""


def part_target(part_size: int, number: int) -> int:
    """The size to aim for with part ``number`` (see :data:`_DOUBLE_EVERY`)."""
    return min(MAX_PART_SIZE, part_size << ((number - 1) // _DOUBLE_EVERY))


@dataclass(frozen=True)
class FinalInfo:
    """The recording once final: its media (renamed), its size, its sidecar, whether
    finalize patched the ``moov``, the session manifest to upload (session over) or None."""

    path: Path
    size: int
    sidecar: Path | None
    indexed: bool
    manifest: Path | None
    at: float  # monotonic


class JobContext(Protocol):
    """What a job needs from its uploader."""

    part_size: int
    keep_local: bool
    disk: Disk

    def storage(self, url: str) -> Storage | None: ...

    def pick_target(self) -> Target: ...

    def key_for(self, target: Target, name: ObjectName) -> str: ...

    def wall_ms(self) -> int: ...

    def monotonic(self) -> float: ...

    def part_uploaded(self, job: Job, record: PartRecord, first: float | None,
                      ready: float | None) -> None: ...

    def count(self, what: str, target: str) -> None: ...


class Job:
    """One recording's upload (see the module). The fields the sink feeds are guarded by
    :attr:`lock`; the rest belongs to the one uploader thread running :meth:`step`."""

    def __init__(self, path: Path, name: ObjectName, journal: UploadJournal, *,
                 resumed: bool = False) -> None:
        self.path = path
        self.name = name
        self.journal = journal
        self.lock = threading.Lock()
        # Fed by the sink (under lock).
        self.stored_end = 0
        #: (fragment end, when the first and the last fragment up to it were stored)
        self.marks: deque[tuple[int, float, float]] = deque()
        self.final: FinalInfo | None = None
        self.session_over = False
        # The uploader's scheduling (under its lock).
        self.queued = False
        self.busy = False
        self.sleeping = False
        self.poked = False
        self.failures = 0
        self.invalid = 0
        self.next_try = 0.0
        self.last_error: str | None = None
        # The worker's.
        self.resumed = not resumed  # a job from a journal checks it first
        self.moov_checked = False
        #: The local file was found missing (a resume): the upload cannot go on.
        self.gone = False
        self._after_done = False  # sidecar, manifest, removal done
        self.abort_failures = 0
        self._unabortable: set[str] = set()
        self._fd: int | None = None
        self._size: int | None = None
        #: The journal's numbers, for the other threads (the journal is the worker's).
        self.uploaded = journal.state.uploaded_end
        self.next_number = max(journal.state.parts, default=0) + 1
        self.complete = journal.state.complete is not None

    def __repr__(self) -> str:
        return f"Job({self.path.name!r})"

    @property
    def state(self) -> JournalState:
        return self.journal.state

    # ------------------------------------------------------------------ fed by the sink

    def stored(self, path: Path, end: int, now: float, part_size: int) -> bool:
        """A fragment (or the init segment) is on disk up to file offset ``end``. True if a
        whole part waits now. Marks closer than a quarter part to the one before are merged
        (an outage of hours costs a few marks per part, not one per fragment)."""
        with self.lock:
            self.path = path
            if end <= self.stored_end:
                return False
            self.stored_end = end
            marks = self.marks
            if len(marks) >= 2 and end - marks[-2][0] < part_size // 4:
                marks[-1] = (end, marks[-1][1], now)
            else:
                marks.append((end, now, now))
            return end - self.uploaded >= part_target(part_size, self.next_number)

    def finalized(self, final: FinalInfo) -> None:
        with self.lock:
            self.final = final
            self.path = final.path

    # ------------------------------------------------------------------ numbers

    def pending_bytes(self) -> int:
        with self.lock:
            end = self.final.size if self.final is not None else self.stored_end
        return 0 if self.complete else max(0, end - self.uploaded)

    def oldest_pending(self) -> float | None:
        """When the oldest byte not in the bucket was stored (monotonic), if any."""
        if self.complete:
            return None
        with self.lock:
            if self.marks:
                return self.marks[0][1]
            return self.final.at if self.final is not None else None

    def _append(self, op: str, **fields: Any) -> None:
        """A journal record, and the numbers the other threads read."""
        self.journal.append(op, **fields)
        state = self.journal.state
        self.uploaded = (int(state.complete["size"]) if state.complete is not None
                         else state.uploaded_end)
        self.next_number = max(state.parts, default=0) + 1
        self.complete = state.complete is not None

    # ------------------------------------------------------------------ the steps

    def step(self, ctx: JobContext) -> str:
        """One request (and its journal record); raises :class:`~.s3.S3Error`,
        :class:`LocalFileGone` or ``OSError``."""
        state = self.state
        if state.gave_up is None and state.complete is None:
            return self._upload_step(ctx)
        if state.complete is not None and not self._after_done:
            return self._after_step(ctx)
        # Last: the uploads abandoned on the way (a failover, a restart, a give-up) are
        # aborted, where the storage answers; the job does not wait for them longer.
        pending = [item for item in state.abandoned.values()
                   if item.upload_id not in self._unabortable]
        if pending:
            self._abort_one(ctx, pending[0])
            return Step.MORE
        self._done()
        return Step.DONE

    def _storage(self, ctx: JobContext) -> Storage:
        state = self.state
        storage = ctx.storage(state.target) if state.target is not None else None
        if storage is None:
            raise S3Error("client", "target", "NotConfigured", None,
                          f"{state.target} is no longer an --upload target")
        return storage

    def _upload_step(self, ctx: JobContext) -> str:
        state = self.state
        if self.gone:
            raise LocalFileGone(str(self.path))
        if state.target is None:
            self.begin(ctx, ctx.pick_target())
            return Step.MORE
        storage = self._storage(ctx)
        if not self.resumed:
            self._resume(storage)
            self.resumed = True
            return Step.MORE
        with self.lock:
            final = self.final
            stored_end = self.stored_end
        start = state.uploaded_end
        number = max(state.parts, default=0) + 1
        target = part_target(ctx.part_size, number)
        if final is None:
            cut = self._live_cut(start + target, stored_end)
            if cut is None:
                return Step.WAIT
            self._upload_part(ctx, storage, number, start, cut)
            return Step.MORE
        size = self._final_size(final)
        if state.upload_id is None and not state.parts and size < 2 * target:
            self._put_whole(ctx, storage, final)
            return Step.MORE
        if start < size:
            cut = size if size - start < 2 * target else self._final_cut(start, start + target,
                                                                          size)
            self._upload_part(ctx, storage, number, start, cut)
            return Step.MORE
        if final.indexed and not self.moov_checked:
            self._check_moov(ctx, storage)
            self.moov_checked = True
            return Step.MORE
        self._complete(ctx, storage, final)
        return Step.MORE

    def begin(self, ctx: JobContext, target: Target) -> None:
        self._append("begin", target=target.url, bucket=target.bucket,
                            key=ctx.key_for(target, self.name), part_size=ctx.part_size,
                            at_ms=ctx.wall_ms())

    # ------------------------------------------------------------------ parts

    def _live_cut(self, wanted: int, stored_end: int) -> int | None:
        """The first fragment boundary at or after ``wanted`` (None: not stored yet)."""
        if stored_end < wanted:
            return None
        with self.lock:
            for end, _, _ in self.marks:
                if end >= wanted:
                    return end
        return stored_end

    def _final_cut(self, start: int, wanted: int, size: int) -> int:
        """In a final file: the end of the first top-level box (not a ``moof``: after its
        ``mdat``) at or after ``wanted``; ``wanted`` itself if the boxes cannot be walked."""
        at = start
        fd = self._open()
        while at < size:
            head = os.pread(fd, 16, at)
            if len(head) < 8:
                break
            box: int
            box, kind = _HEAD.unpack_from(head)
            if box == 1 and len(head) == 16:
                box = int.from_bytes(head[8:16], "big")
            if box < 8 or at + box > size:
                break
            at += box
            if at >= wanted and kind != b"moof":
                return at
        return min(wanted, size)

    def _final_size(self, final: FinalInfo) -> int:
        """The final file's size, as the file says (once)."""
        if self._size is None:
            self._size = int(os.fstat(self._open()).st_size)
            if self._size != final.size:
                log.warning("%s: %d bytes, its sidecar says %d: the file counts",
                            final.path.name, self._size, final.size)
        return self._size

    def _read(self, start: int, end: int) -> bytes:
        fd = self._open()
        data = os.pread(fd, end - start, start)
        while len(data) < end - start:
            more = os.pread(fd, end - start - len(data), start + len(data))
            if not more:
                raise LocalFileGone(f"{self.path}: {len(data) + start} bytes, expected {end}")
            data += more
        return data

    def _crc_of(self, start: int, end: int) -> str:
        fd = self._open()
        crc = 0
        at = start
        while at < end:
            piece = os.pread(fd, min(_READ, end - at), at)
            if not piece:
                raise LocalFileGone(f"{self.path}: shorter than {end} bytes")
            crc = zlib.crc32(piece, crc)
            at += len(piece)
        return b64_crc(crc)

    def _ensure_upload(self, ctx: JobContext, storage: Storage) -> str:
        state = self.state
        if state.upload_id is None:
            assert state.key is not None
            upload_id = storage.create(state.key, "video/mp4")
            self._append("create", upload_id=upload_id, at_ms=ctx.wall_ms())
        assert state.upload_id is not None
        return state.upload_id

    def _upload_part(self, ctx: JobContext, storage: Storage, number: int, start: int,
                     end: int, *, again: bool = False) -> None:
        state = self.state
        upload_id = self._ensure_upload(ctx, storage)
        body = self._read(start, end)
        crc = crc32_b64(body)
        assert state.key is not None
        etag, echo = storage.upload_part(state.key, upload_id, number, body, crc)
        if echo is not None and echo != crc:
            raise S3Error("digest", "UploadPart", "ChecksumMismatch", None,
                          f"part {number}: the storage computed {echo}, we sent {crc}")
        first, ready = self._times(start, end)
        wall, now = ctx.wall_ms(), ctx.monotonic()
        self._append(
            "part", n=number, start=start, end=end, etag=etag, crc32=crc,
            ready_ms=int(wall - (now - ready) * 1000) if ready is not None else 0,
            first_ms=int(wall - (now - first) * 1000) if first is not None else 0,
            at_ms=wall,
        )
        if not again:
            with self.lock:
                while self.marks and self.marks[0][0] <= end:
                    self.marks.popleft()
        ctx.part_uploaded(self, state.parts[number], first, ready)

    def _times(self, start: int, end: int) -> tuple[float | None, float | None]:
        """When the first and the last fragment of ``[start, end)`` were stored."""
        first = ready = None
        with self.lock:
            for mark_end, first_at, last_at in self.marks:
                if mark_end > start and first is None:
                    first = first_at
                if mark_end >= end:
                    ready = last_at
                    break
            if ready is None and self.final is not None:
                ready = self.final.at
        return first if first is not None else ready, ready

    def _check_moov(self, ctx: JobContext, storage: Storage) -> None:
        """Finalize patched the durations in the ``moov`` (``--index``): the parts within its
        reach are uploaded again if their bytes changed."""
        for number in sorted(self.state.parts):
            part = self.state.parts[number]
            if part.start >= MAX_INIT_READ:
                break
            if self._crc_of(part.start, part.end) != part.crc32:
                log.info("%s: part %d changed on finalize (moov): uploaded again",
                         self.path.name, number)
                self._upload_part(ctx, storage, number, part.start, part.end, again=True)
                ctx.count("moov_reuploads", self.state.target or "")

    def _put_whole(self, ctx: JobContext, storage: Storage, final: FinalInfo) -> None:
        state = self.state
        assert state.key is not None and state.target is not None
        expected = self._final_size(final)
        body = self._read(0, expected)
        crc = crc32_b64(body)
        etag = storage.put(state.key, body, crc, "video/mp4")
        size, _, checksum = storage.head(state.key)
        if size != expected or (checksum is not None and checksum != crc):
            raise S3Error("invalid", "HeadObject", "Mismatch", None,
                          f"{state.key}: {size} bytes, checksum {checksum}; expected "
                          f"{expected}, {crc}")
        self._append("complete", etag=etag, size=size, crc32=crc, parts=0,
                            at_ms=ctx.wall_ms())
        ctx.count("completed", state.target)
        ctx.part_uploaded(self, PartRecord(1, 0, size, etag, crc), *self._times(0, size))

    def _complete(self, ctx: JobContext, storage: Storage, final: FinalInfo) -> None:
        state = self.state
        assert state.key is not None and state.upload_id is not None
        assert state.target is not None
        parts = [state.parts[n] for n in sorted(state.parts)]
        size = self._final_size(final)
        at = 0
        for index, part in enumerate(parts, 1):
            last = index == len(parts)
            if (part.number != index or part.start != at
                    or (not last and part.size < MIN_PART_SIZE)):
                raise S3Error("invalid", "Complete", "OurParts", None,
                              f"part {part.number} [{part.start}, {part.end}) does not follow")
            at = part.end
        if at != size:
            raise S3Error("invalid", "Complete", "OurParts", None,
                          f"the parts end at {at}, the file at {size}")
        expected = composite_crc32(part.crc32 for part in parts)
        try:
            etag, checksum = storage.complete(
                state.key, state.upload_id, [(p.number, p.etag, p.crc32) for p in parts])
        except S3Error as error:
            if error.kind != "no_upload":
                raise
            # A Complete that succeeded but whose answer was lost, retried: the upload is
            # gone and the object is there. Anything else: the upload vanished.
            etag, checksum = self._object_is(storage, size, expected, error)
        else:
            if checksum is not None and checksum != expected:
                raise S3Error("invalid", "Complete", "ChecksumMismatch", None,
                              f"the object's checksum is {checksum}, expected {expected}")
            self._object_is(storage, size, expected, None)
        self._append("complete", etag=etag, size=size, crc32=expected,
                            parts=len(parts), at_ms=ctx.wall_ms())
        ctx.count("completed", state.target)
        log.info("%s: uploaded to s3://%s/%s (%d parts, %d bytes)", final.path.name,
                 state.bucket, state.key, len(parts), size)

    def _object_is(self, storage: Storage, size: int, checksum: str,
                   error: S3Error | None) -> tuple[str, str | None]:
        assert self.state.key is not None
        try:
            got, etag, crc = storage.head(self.state.key)
        except S3Error:
            if error is not None:
                raise error from None
            raise
        if got != size or (crc is not None and crc != checksum):
            if error is not None:
                raise error
            raise S3Error("invalid", "HeadObject", "Mismatch", None,
                          f"{self.state.key}: {got} bytes, checksum {crc}; expected {size}, "
                          f"{checksum}")
        return etag, crc

    # ------------------------------------------------------------------ after the media

    def _after_step(self, ctx: JobContext) -> str:
        state = self.state
        with self.lock:
            final = self.final
        if final is None:  # complete from a journal, the file not looked at yet
            self._after_done = True
            return Step.MORE
        if not state.sidecar and final.sidecar is not None:
            self._put_file(ctx, final.sidecar, sidecar_key(state.key or ""), "sidecar")
            return Step.MORE
        if final.manifest is not None and not state.manifest:
            self._put_file(ctx, final.manifest, beside(state.key or "", final.manifest.name),
                           "manifest")
            return Step.MORE
        if not ctx.keep_local and not state.removed:
            self.close()
            for path in (final.path, final.sidecar):
                if path is not None:
                    with contextlib.suppress(FileNotFoundError):
                        ctx.disk.unlink(path)
            self._append("removed", at_ms=ctx.wall_ms())
            ctx.count("removed_local", state.target or "")
            log.info("%s: removed locally (the bucket has it in full)", final.path)
        self._after_done = True
        return Step.MORE

    def _done(self) -> None:
        """The job is over: its journal stays beside the recording (``meetstream-live
        upload`` skips what it says is uploaded), or goes with it when the recording is gone
        (``--keep-local false``, retention, a give-up because it was deleted)."""
        self.close()
        with self.lock:
            path = self.final.path if self.final is not None else self.path
        media = path.with_name(path.name.removesuffix(".part"))
        if not media.exists() and not path.exists() and not self.state.abandoned:
            self.journal.remove()

    def _put_file(self, ctx: JobContext, path: Path, key: str, op: str) -> None:
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            log.warning("%s: gone, not uploaded", path)
            self._append(op, key=None, at_ms=ctx.wall_ms())
            return
        storage = self._storage(ctx)
        content = "application/json"
        storage.put(key, body, crc32_b64(body), content)
        self._append(op, key=key, at_ms=ctx.wall_ms())

    # ------------------------------------------------------------------ resume, give up

    def _resume(self, storage: Storage) -> None:
        """After a restart: the journal against the storage and the local file."""
        state = self.state
        if state.upload_id is None:
            if state.parts:
                self._append("keep", upto=0)
            return
        assert state.key is not None
        try:
            listed = storage.list_parts(state.key, state.upload_id)
        except S3Error as error:
            if error.kind != "no_upload":
                raise
            log.warning("%s: the upload %s is gone: starting again", self.path.name,
                        state.upload_id)
            self._append("restart", reason="upload gone")
            return
        keep = 0
        at = 0
        for number in sorted(state.parts):
            part = state.parts[number]
            if (number != keep + 1 or part.start != at
                    or (part.etag, part.size) not in listed.get(number, ())
                    or self._crc_of(part.start, part.end) != part.crc32):
                break
            keep, at = number, part.end
        if keep != len(state.parts):
            log.warning("%s: %d journaled part(s) kept of %d (the rest are uploaded again)",
                        self.path.name, keep, len(state.parts))
            self._append("keep", upto=keep)

    def resync(self) -> None:
        """The storage disagreed with us (InvalidPart...): check everything again."""
        self.resumed = False
        self.moov_checked = False

    def restart(self, reason: str) -> None:
        """Start the upload again from byte 0 (the old one abandoned, if any)."""
        state = self.state
        if state.upload_id is not None:
            self._abandon(reason)
        self._append("restart", reason=reason)
        self.resumed = True
        self.moov_checked = False

    def switch(self, ctx: JobContext, target: Target, reason: str) -> None:
        """Go on with another target (the fallback): the upload here is abandoned."""
        if self.state.upload_id is not None:
            self._abandon(reason)
        self._append("switch", target=target.url, reason=reason)
        self.begin(ctx, target)
        self.resumed = True
        self.moov_checked = False

    def give_up(self, reason: str) -> None:
        if self.state.upload_id is not None:
            self._abandon(reason)
        self._append("gave_up", reason=reason)

    def _abandon(self, reason: str) -> None:
        state = self.state
        assert state.upload_id is not None
        self._append("abandon", target=state.target, bucket=state.bucket, key=state.key,
                            upload_id=state.upload_id, reason=reason)

    def _abort_one(self, ctx: JobContext, item: Abandoned) -> None:
        storage = ctx.storage(item.target)
        if storage is None:
            log.warning("cannot abort the upload of %s: %s is no longer a target (the "
                        "bucket's lifecycle rule removes it)", item.key, item.target)
            self._append("aborted", upload_id=item.upload_id, skipped=True)
            return
        try:
            storage.abort(item.key, item.upload_id)
        except S3Error:
            self.abort_failures += 1
            if self.abort_failures < ABORT_TRIES:
                raise
            # Left in the journal (the next start tries again) and to the bucket's
            # AbortIncompleteMultipartUpload rule.
            log.warning("cannot abort the abandoned upload of %s to %s now: the next start "
                        "tries again (and the bucket's lifecycle rule removes it)", item.key,
                        item.target)
            self._unabortable.add(item.upload_id)
            return
        ctx.count("aborted", item.target)
        log.info("aborted the abandoned upload of %s to %s (%s)", item.key, item.target,
                 item.reason)
        self._append("aborted", upload_id=item.upload_id)

    # ------------------------------------------------------------------ the file

    def _open(self) -> int:
        with self.lock:
            path = self.path
        if self._fd is not None:
            return self._fd
        try:
            fd = REAL_DISK.open(path, os.O_RDONLY)
        except FileNotFoundError:
            alternative = path.with_name(path.name.removesuffix(".part"))
            try:
                fd = REAL_DISK.open(alternative, os.O_RDONLY)
            except FileNotFoundError:
                raise LocalFileGone(str(path)) from None
        self._fd, self._fd_path = fd, path
        return fd

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.journal.close()

    def report(self) -> dict[str, Any]:
        """For the sidecar (``sinks.upload``) and logs."""
        state = self.state  # read from another thread: the numbers cached for it
        return {
            "target": state.target,
            "key": state.key,
            "parts": self.next_number - 1,
            "uploaded_bytes": self.uploaded,
            "complete": self.complete,
            "last_error": self.last_error,
        }
