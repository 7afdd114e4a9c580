"""The uploader: a few threads of its own that advance every recording's :class:`~.job.Job`,
one request at a time, with the failure policy and the numbers for ``/metrics``.

* **Scheduling.** A job is *queued* when it has work (a whole part on disk, the end of its
  recording, a resume), *busy* in one thread, *sleeping* after a failure, *idle* while it
  waits for bytes. Threads take queued jobs in order; a job with more to do goes to the back
  of the queue, so many recordings share the threads part by part.
* **Failures** (:mod:`.s3` kinds). Each request has its own timeouts and a few quick tries;
  when they fail, the job sleeps (exponential backoff from 1 s to ``backoff_cap``, "equal
  jitter": half fixed, half random) and its bytes wait on the local disk, where they are
  anyway. ``no_upload`` starts the upload again; ``invalid`` makes the job check itself
  against the storage (ListParts) and, when that keeps happening, start again, then give up.
* **Fallback.** A target that has failed every request for ``failover_after`` seconds is
  *down*: its jobs go to the next target that is not (their upload on the failing one is
  abandoned, and aborted when it answers again), new recordings start there. A down target is
  tried again by a new recording once ``failover_after`` has passed since its last failure.
* Nothing here ever blocks the sink that feeds it: :meth:`Uploader.stored` and
  :meth:`Uploader.finalized` take one lock for a few field updates.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meetstream_live.adapters.recording.durable import REAL_DISK, Disk
from meetstream_live.adapters.recording.metrics import Metrics

from .job import MIN_PART_SIZE, FinalInfo, Job, LocalFileGone, Step
from .journal import PartRecord, UploadJournal, journal_path
from .keys import KeyTemplate, ObjectName, Target
from .s3 import KINDS, RETRYABLE, RetryPolicy, S3Error, Storage, make_client

__all__ = ["UploadConfig", "Uploader"]

log = logging.getLogger("meetstream_live.upload")

#: The kinds of failure that say the storage is unwell (they count towards a failover).
_OUTAGE = RETRYABLE | {"auth", "no_bucket"}
#: ``invalid`` answers in a row before the upload starts again; restarts before giving up.
_INVALID_LIMIT = 3
_RESTART_LIMIT = 3


@dataclass
class UploadConfig:
    """How to upload (``serve --upload ...``: see ``docs/upload.md``)."""

    targets: list[Target]
    key_template: KeyTemplate = field(default_factory=KeyTemplate)
    part_size: int = MIN_PART_SIZE
    keep_local: bool = True
    threads: int = 4
    #: Per request (the read timeout; connecting gets at most 5 s of it).
    timeout: float = 30.0
    failover_after: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    backoff_base: float = 1.0
    backoff_cap: float = 60.0

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("no target")
        if self.part_size < MIN_PART_SIZE:
            raise ValueError(f"part size {self.part_size} < {MIN_PART_SIZE} (5 MiB, S3's "
                             f"minimum)")


class _Health:
    """One target's recent record."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.failing_since: float | None = None
        self.last_failure = 0.0

    def down(self, now: float, after: float) -> bool:
        return self.failing_since is not None and now - self.failing_since >= after


class Uploader:
    """Uploads recordings (:class:`~.job.Job`) with ``config``; ``storages`` (one per
    target, in order) are made from the standard AWS configuration when not given."""

    def __init__(
        self,
        config: UploadConfig,
        storages: Iterable[Storage] | None = None,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        rng: random.Random | None = None,
        disk: Disk = REAL_DISK,
    ) -> None:
        self.config = config
        self.part_size = config.part_size
        self.keep_local = config.keep_local
        self.disk = disk
        self._clock = clock
        self._wall = wall
        self._rng = rng or random.Random()
        self.stop_event = threading.Event()
        if storages is None:
            storages = [
                Storage(target, make_client(timeout=config.timeout, pool=config.threads + 2),
                        policy=config.retry, stop=self.stop_event, observe=self._observe)
                for target in config.targets
            ]
        self.storages = list(storages)
        for storage in self.storages:
            storage.observe = self._observe
            storage.stop = self.stop_event
        self._health = {s.target.url: _Health(s) for s in self.storages}
        self._cond = threading.Condition()
        self._jobs: dict[Hashable, Job] = {}
        self._ready: deque[Job] = deque()
        self._timers: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._counts: dict[tuple[str, str], int] = {}
        self._failures: dict[tuple[str, str], int] = {}
        self._bytes: dict[str, int] = {}
        self._parts: dict[str, int] = {}
        #: ``(seconds behind live, seconds after ready)`` of recent parts (benchmarks, tests).
        self.lags: deque[tuple[float, float]] = deque(maxlen=100_000)
        if metrics is not None:
            self.watch(metrics)

    # ------------------------------------------------------------------ JobContext

    def storage(self, url: str) -> Storage | None:
        health = self._health.get(url)
        return health.storage if health is not None else None

    def pick_target(self) -> Target:
        now = self._clock()
        after = self.config.failover_after
        with self._cond:
            for storage in self.storages:
                health = self._health[storage.target.url]
                if not health.down(now, after) or now - health.last_failure >= after:
                    return storage.target
        return self.storages[0].target

    def key_for(self, target: Target, name: ObjectName) -> str:
        return self.config.key_template.key(target, name)

    def wall_ms(self) -> int:
        return self._wall()

    def monotonic(self) -> float:
        return self._clock()

    def part_uploaded(self, job: Job, record: PartRecord, first: float | None,
                      ready: float | None) -> None:
        now = self._clock()
        target = job.state.target or ""
        with self._cond:
            self._bytes[target] = self._bytes.get(target, 0) + record.size
            self._parts[target] = self._parts.get(target, 0) + 1
            if first is not None and ready is not None:
                self.lags.append((now - first, now - ready))

    def count(self, what: str, target: str) -> None:
        with self._cond:
            self._counts[(what, target)] = self._counts.get((what, target), 0) + 1

    def _observe(self, target: str, operation: str, error: S3Error | None) -> None:
        """Every request's outcome (from :class:`~.s3.Storage`)."""
        now = self._clock()
        with self._cond:
            health = self._health.get(target)
            if error is None:
                if health is not None and health.failing_since is not None:
                    log.warning("%s answers again", target)
                    health.failing_since = None
                return
            key = (target, error.kind)
            self._failures[key] = self._failures.get(key, 0) + 1
            if health is not None and error.kind in _OUTAGE:
                if health.failing_since is None:
                    health.failing_since = now
                health.last_failure = now

    # ------------------------------------------------------------------ jobs

    def start(self) -> None:
        if self._threads:
            return
        for n in range(self.config.threads):
            thread = threading.Thread(target=self._work, name=f"upload-{n + 1}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def job(self, key: Hashable) -> Job | None:
        with self._cond:
            return self._jobs.get(key)

    def add(self, key: Hashable, job: Job) -> None:
        """A job to run (queued at once: a resume, a final file)."""
        with self._cond:
            self._jobs[key] = job
            self._queue(job)

    def stored(self, key: Hashable, path: Path, end: int, name: Callable[[], ObjectName]) -> None:
        """The file sink wrote a fragment of ``key``'s recording, up to file offset ``end``."""
        now = self._clock()
        with self._cond:
            job = self._jobs.get(key)
            if job is None:
                job = self._jobs[key] = Job(path, name(), UploadJournal(journal_path(path),
                                                                        self.disk))
                self._queue(job)  # begin at once: the key is chosen, the target picked
        if job.stored(path, end, now, self.part_size):
            with self._cond:
                self._queue(job)

    def finalized(self, key: Hashable, final: FinalInfo, name: Callable[[], ObjectName]) -> None:
        """``key``'s recording is final."""
        with self._cond:
            job = self._jobs.get(key)
            if job is None:
                job = self._jobs[key] = Job(final.path, name(),
                                            UploadJournal(journal_path(final.path), self.disk))
            job.finalized(final)
            self._queue(job)

    def _queue(self, job: Job) -> None:
        """Under the lock: ``job`` has work."""
        if job.busy:
            job.poked = True
        elif not job.queued and not job.sleeping:
            job.queued = True
            self._ready.append(job)
            self._cond.notify()

    def _take(self) -> Job | None:
        with self._cond:
            while not self.stop_event.is_set():
                now = self._clock()
                while self._timers and self._timers[0][0] <= now:
                    _, _, job = heapq.heappop(self._timers)
                    job.sleeping = False
                    self._queue(job)
                if self._ready:
                    job = self._ready.popleft()
                    job.queued = False
                    job.busy = True
                    job.poked = False
                    return job
                wait = self._timers[0][0] - now if self._timers else None
                self._cond.wait(wait)
        return None

    def _work(self) -> None:
        while (job := self._take()) is not None:
            result, delay = self._run(job)
            with self._cond:
                job.busy = False
                if result == Step.DONE:
                    self._forget(job)
                elif delay:
                    job.sleeping = True
                    heapq.heappush(self._timers, (self._clock() + delay, next(self._seq), job))
                elif result == Step.MORE or job.poked:
                    self._queue(job)
                self._cond.notify_all()

    def _forget(self, job: Job) -> None:
        for key, value in list(self._jobs.items()):
            if value is job:
                del self._jobs[key]

    def _run(self, job: Job) -> tuple[str, float]:
        """One step; on failure, what to do next (and after how long)."""
        try:
            result = job.step(self)
        except S3Error as error:
            return self._failed(job, error)
        except LocalFileGone as exc:
            log.error("%s: the local file is gone (%s): upload given up", job.path.name, exc)
            reason = f"local file gone: {exc}"
            return self._safely(job, lambda: job.give_up(reason), "gave_up")
        except OSError as exc:
            job.last_error = f"local: {exc!r}"
            self._log_failure(job, job.last_error)
            return Step.MORE, self._backoff(job)
        except Exception as exc:  # a bug: logged, retried later
            job.last_error = f"bug: {exc!r}"
            log.exception("upload of %s failed", job.path.name)
            return Step.MORE, self._backoff(job)
        job.failures = 0
        if result == Step.MORE and job.invalid and job.complete:
            job.invalid = 0
        return result, 0.0

    def _safely(self, job: Job, action: Callable[[], None], what: str) -> tuple[str, float]:
        try:
            action()
        except OSError as exc:  # the journal: tried again later
            job.last_error = f"local: {exc!r}"
            return Step.MORE, self._backoff(job)
        self.count(what, job.state.target or "")
        return Step.MORE, 0.0

    def _failed(self, job: Job, error: S3Error) -> tuple[str, float]:
        job.last_error = str(error)
        state = job.state
        if error.kind == "stopped" or self.stop_event.is_set():
            return Step.MORE, self._backoff(job)
        if error.kind == "no_upload":
            log.warning("%s: the multipart upload vanished (%s): starting again",
                        job.path.name, error)
            return self._safely(job, lambda: job.restart("the upload vanished"), "restart")
        if error.kind == "invalid":
            job.invalid += 1
            self._log_failure(job, str(error))
            if job.invalid <= _INVALID_LIMIT:
                job.resync()
                return Step.MORE, self._backoff(job)
            job.invalid = 0
            if state.restarts >= _RESTART_LIMIT:
                log.error("%s: the storage keeps refusing it (%s): upload given up",
                          job.path.name, error)
                return self._safely(job, lambda: job.give_up(str(error)), "gave_up")
            return self._safely(job, lambda: job.restart(str(error)), "restart")
        self._log_failure(job, str(error))
        fallback = self._fallback(job)
        if fallback is not None:
            log.warning("%s: %s keeps failing (%s): going on with %s", job.path.name,
                        state.target, error, fallback.url)
            return self._safely(
                job, lambda: job.switch(self, fallback, f"{state.target} failing: {error}"),
                "failover")
        return Step.MORE, self._backoff(job)

    def _fallback(self, job: Job) -> Target | None:
        """Another target for ``job`` when its own is down."""
        now = self._clock()
        after = self.config.failover_after
        with self._cond:
            health = self._health.get(job.state.target or "")
            if health is None or not health.down(now, after):
                return None
            for storage in self.storages:
                other = self._health[storage.target.url]
                if other is not health and not other.down(now, after):
                    return storage.target
        return None

    def _backoff(self, job: Job) -> float:
        job.failures += 1
        full = min(self.config.backoff_cap,
                   self.config.backoff_base * 2.0 ** (job.failures - 1))
        with self._cond:
            jitter: float = self._rng.uniform(0, full / 2)
        return full / 2 + jitter

    def _log_failure(self, job: Job, message: str) -> None:
        if job.failures == 0 or job.failures % 20 == 0:
            log.warning("upload of %s: %s (retried with backoff; the file stays on disk)",
                        job.path.name, message)

    # ------------------------------------------------------------------ the end

    def idle(self) -> bool:
        """No job has work now (sleeping jobs have some)."""
        with self._cond:
            return self._quiet()

    def _quiet(self) -> bool:
        return not self._ready and not self._timers and not any(
            job.busy or (job.final is not None and not job.complete)
            for job in self._jobs.values())

    def wait(self, timeout: float | None = None, *, all_done: bool = False) -> bool:
        """Wait until no job has work (``all_done``: until no job is left), or timeout."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while not (not self._jobs if all_done else self._quiet()):
                remaining = None if deadline is None else deadline - self._clock()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(0.5 if remaining is None else min(remaining, 0.5))
        return True

    def close(self, timeout: float = 30.0) -> bool:
        """Let the work due finish (up to ``timeout``), then stop the threads; what is left
        is in the journals, for the next start (or ``meetstream-live upload``)."""
        drained = self.wait(timeout)
        self.stop_event.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(self.config.timeout + 5)
        with self._cond:
            jobs = list(self._jobs.values())
        left = [job for job in jobs if not job.complete]
        for job in jobs:
            if not job.busy:
                job.close()
        if left:
            log.warning("%d recording(s) not uploaded yet: their journals resume them at the "
                        "next start (or: meetstream-live upload DIR)", len(left))
        return drained

    # ------------------------------------------------------------------ numbers

    def jobs(self) -> list[Job]:
        with self._cond:
            return list(self._jobs.values())

    def snapshot(self) -> dict[str, Any]:
        now = self._clock()
        jobs = self.jobs()
        oldest = [t for t in (job.oldest_pending() for job in jobs) if t is not None]
        pending = [job.pending_bytes() for job in jobs]
        parts = sum(p // self.part_size for p in pending) + sum(
            1 for job in jobs if job.final is not None and not job.complete)
        with self._cond:
            up = {url: 0 if h.down(now, self.config.failover_after) else 1
                  for url, h in self._health.items()}
            return {
                "lag_seconds": max((now - t for t in oldest), default=0.0),
                "lag_bytes": sum(pending),
                "parts_pending": parts,
                "recordings_pending": sum(1 for job in jobs if not job.complete),
                "up": up,
                "failures": dict(self._failures),
                "counts": dict(self._counts),
                "bytes": dict(self._bytes),
                "parts": dict(self._parts),
            }

    def watch(self, metrics: Metrics) -> None:
        """``meetstream_live_upload_*`` in ``/metrics``."""

        def gauge(name: str) -> Callable[[], Iterator[tuple[dict[str, str], float]]]:
            def values() -> Iterator[tuple[dict[str, str], float]]:
                yield {}, self.snapshot()[name]
            return values

        metrics.watch("upload_lag_seconds", "gauge", "Age of the oldest recorded byte not in "
                      "the bucket yet (seconds behind live).", gauge("lag_seconds"))
        metrics.watch("upload_lag_bytes", "gauge", "Recorded bytes not in the bucket yet.",
                      gauge("lag_bytes"))
        metrics.watch("upload_parts_pending", "gauge", "Parts on disk waiting for upload.",
                      gauge("parts_pending"))
        metrics.watch("upload_recordings_pending", "gauge",
                      "Recordings not completely in the bucket yet.", gauge("recordings_pending"))
        metrics.watch("upload_target_up", "gauge", "1 unless the target has failed every "
                      "request for --upload-failover-after.",
                      lambda: (({"target": url}, v) for url, v in self.snapshot()["up"].items()))
        metrics.watch("upload_failures_total", "counter", "Failed requests, by kind (auth, "
                      "throttled, server, timeout, network, digest, invalid...).",
                      lambda: self._rows_failures())
        metrics.watch("upload_parts_total", "counter", "Parts (and whole objects) uploaded.",
                      lambda: (({"target": t}, n) for t, n in self.snapshot()["parts"].items()))
        metrics.watch("upload_bytes_total", "counter", "Media bytes uploaded.",
                      lambda: (({"target": t}, n) for t, n in self.snapshot()["bytes"].items()))
        metrics.watch("upload_events_total", "counter", "completed, failover, restart, aborted, "
                      "gave_up, removed_local, moov_reuploads.",
                      lambda: (({"event": e, "target": t}, n)
                               for (e, t), n in self.snapshot()["counts"].items()))

    def _rows_failures(self) -> Iterator[tuple[dict[str, str], float]]:
        failures = self.snapshot()["failures"]
        for (target, kind), n in sorted(failures.items()):
            if kind in KINDS:
                yield {"target": target, "kind": kind}, n
