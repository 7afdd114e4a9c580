"""Durable post-processing hooks: every finished recording is journaled on disk before it is
committed, so each hook runs at least once, even across a crash and a restart.

* :class:`Journal` keeps one small JSON file per finished recording in
  ``<output>/.hooks/``, written and fsynced by the file sink *before* it removes the
  recording's ``.json.part`` (so a crash at any point leaves either the ``.json.part``, which
  :func:`~.recovery.recover` turns into a journal entry, or the entry itself). An entry's name
  comes from its recording, so journaling the same recording twice (a retry, a recovery)
  leaves one entry.
* :data:`HOOK_KINDS` is the registry of hook kinds, in the order they run: ``remux``
  (``--remux mp4``, :func:`~.remux.remux_mp4`: ``<stem>.remux.mp4`` beside the recording),
  ``command`` (``--on-finish``: a command run with the media and sidecar paths appended,
  without a shell; exit status 0 is success) and ``webhook`` (``--webhook``: an HTTP POST of
  the sidecar JSON; a 2xx answer is success). :class:`HookConfig` says which are on.
* :class:`HookRunner` runs the hooks of each entry in a background thread. A failure is
  retried with exponential backoff; an entry is deleted only when all its hooks have
  succeeded; an entry whose recording is not committed yet (its ``.json.part`` is still
  there) waits. On start it picks up whatever the journal still holds. While a *gate* hook
  (the remux) fails, the hooks after it wait (so they can rely on ``<stem>.remux.mp4``), for
  at most ``remux_attempts`` attempts: then it is given up (logged) and they run without it.
* :class:`HookSink` is the hooks' place among the recorder's sinks: each
  :class:`~.sinks.PartFinalized` wakes the runner. :class:`CallbackSink` calls a Python
  function (``Recorder(on_finish=...)``) with each finished recording, in a thread of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shlex
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from meetstream_live import __version__

from .durable import REAL_DISK, Disk, dumps_json, fsync_dir, replace_json, write_new
from .metrics import Metrics
from .sidecar import FinishedRecording
from .sinks import Part, PartFinalized, Sink, SinkEvent

__all__ = [
    "HOOK_KINDS",
    "CallbackSink",
    "FinishCallback",
    "HookConfig",
    "HookKind",
    "HookRunner",
    "HookSink",
    "Journal",
]

log = logging.getLogger("meetstream_live.hooks")

JOURNAL_DIR = ".hooks"

FinishCallback = Callable[[FinishedRecording], None]


@dataclass(frozen=True)
class HookConfig:
    """Which hooks are on: the ``serve`` options ``--on-finish`` (``command``),
    ``--webhook`` and ``--remux``."""

    command: str | None = None
    webhook: str | None = None
    remux: str | None = None

    def names(self) -> tuple[str, ...]:
        """The hook names a journal entry lists, in the order they run."""
        return tuple(kind.name for kind in HOOK_KINDS.values() if kind.setting(self))


@dataclass(frozen=True)
class HookKind:
    """One kind of hook: its name in journal entries, the :class:`HookConfig` field (and
    ``serve`` option) that turns it on, whether the later hooks wait for it, how it runs."""

    name: str
    field: str
    option: str
    gate: bool
    run: Callable[[HookRunner, Mapping[str, Any]], None]

    def setting(self, config: HookConfig) -> Any:
        value: Any = getattr(config, self.field)
        return value


def _remux(runner: HookRunner, entry: Mapping[str, Any]) -> None:
    from .remux import remux_mp4

    remux_mp4(str(entry["path"]))


def _command(runner: HookRunner, entry: Mapping[str, Any]) -> None:
    assert runner.argv is not None
    done = subprocess.run(
        [*runner.argv, str(entry["path"]), str(entry["sidecar_path"])],
        stdin=subprocess.DEVNULL, check=False, timeout=runner.timeout * 20,
    )
    if done.returncode != 0:
        raise RuntimeError(f"exit status {done.returncode}")


def _webhook(runner: HookRunner, entry: Mapping[str, Any]) -> None:
    url = runner.config.webhook
    assert url is not None
    body = Path(str(entry["sidecar_path"])).read_bytes()
    request = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Content-Type": "application/json",
                 "User-Agent": f"meetstream-live/{__version__}"},
    )
    with urllib.request.urlopen(request, timeout=runner.timeout) as response:
        if not 200 <= response.status < 300:
            raise RuntimeError(f"HTTP {response.status}")


#: Every hook kind, in the order the hooks of an entry run.
HOOK_KINDS: dict[str, HookKind] = {
    kind.name: kind
    for kind in (
        HookKind("remux", "remux", "--remux", gate=True, run=_remux),
        HookKind("command", "command", "--on-finish", gate=False, run=_command),
        HookKind("webhook", "webhook", "--webhook", gate=False, run=_webhook),
    )
}


class Journal:
    """The on-disk list of finished recordings whose hooks have not all succeeded."""

    def __init__(
        self, output_dir: str | os.PathLike[str], hooks: tuple[str, ...], *,
        disk: Disk = REAL_DISK,
    ) -> None:
        self.directory = Path(output_dir).resolve() / JOURNAL_DIR
        self.hooks = hooks
        self.disk = disk
        self.added: Callable[[], None] | None = None  # the runner's wake-up

    @staticmethod
    def entry_name(recording: FinishedRecording) -> str:
        """The entry's file name: from the recording, so one recording has one entry."""
        ended = recording.sidecar.get("ended_at_ms")
        digest = hashlib.sha256(str(recording.path).encode("utf-8", "surrogateescape"))
        return f"{ended if isinstance(ended, int) else 0:013d}-{digest.hexdigest()[:16]}.json"

    def add(self, recording: FinishedRecording) -> Path | None:
        """Journal ``recording`` (durably); called before its recording is committed. Once
        per recording: an entry already there is kept."""
        if not self.hooks:
            return None
        self.disk.mkdir(self.directory)
        path = self.directory / self.entry_name(recording)
        if self.disk.exists(path):
            return path
        entry = {
            "path": str(recording.path),
            "sidecar_path": str(recording.sidecar_path),
            "pending": list(self.hooks),
            "attempts": 0,
            "next_at": 0.0,
            "last_error": None,
        }
        try:
            write_new(path, dumps_json(entry), self.disk)
        except FileExistsError:
            return path
        fsync_dir(self.directory, self.disk)
        if self.added is not None:
            self.added()
        return path

    def entries(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("*.json") if p.is_file())


class HookRunner:
    """Runs journaled hooks in a background thread, retrying failures with backoff."""

    def __init__(
        self,
        journal: Journal,
        config: HookConfig | None = None,
        *,
        command: str | None = None,
        webhook: str | None = None,
        metrics: Metrics | None = None,
        backoff: float = 1.0,
        max_backoff: float = 600.0,
        timeout: float = 30.0,
        remux: str | None = None,
        remux_attempts: int = 3,
    ) -> None:
        self.journal = journal
        self.config = config or HookConfig(command=command, webhook=webhook, remux=remux)
        if self.config.remux not in (None, "mp4"):
            raise ValueError(f"unknown remux format {self.config.remux!r}")
        self.remux_attempts = remux_attempts
        command = self.config.command
        self.argv = shlex.split(command) if command else None
        if command is not None and not self.argv:
            raise ValueError("empty hook command")
        self.metrics = metrics
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        journal.added = self._wake.set

    @staticmethod
    def hooks_for(
        command: str | None, webhook: str | None, remux: str | None = None
    ) -> tuple[str, ...]:
        """The hook names a journal entry lists, for these options, in the order they run."""
        return HookConfig(command=command, webhook=webhook, remux=remux).names()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="hooks", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Run what is due one last time, then stop (what failed stays journaled)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            wait = self.run_due()
            if self._stop.is_set():
                return
            self._wake.wait(wait)
            self._wake.clear()

    def run_due(self) -> float:
        """Run every entry that is due; return the seconds until the next one is."""
        now = time.time()
        nearest = 3600.0
        entries = self.journal.entries()
        if self.metrics is not None:
            with contextlib.suppress(Exception):
                self.metrics.hooks_pending.inc(len(entries) - self.metrics.hooks_pending.value())
        for path in entries:
            try:
                entry = json.loads(path.read_bytes())
            except (OSError, ValueError) as exc:
                log.error("unreadable hook journal entry %s: %r", path, exc)
                continue
            if not isinstance(entry, dict):
                continue
            due = float(entry.get("next_at") or 0.0)
            if due > now:
                nearest = min(nearest, due - now)
                continue
            if not self._committed(entry):
                nearest = min(nearest, self.UNCOMMITTED_WAIT)
                continue
            if self._run_entry(path, entry):
                continue
            nearest = min(nearest, float(entry["next_at"]) - now)
        return max(0.0, nearest)

    #: Seconds before an entry whose recording is not committed yet is looked at again.
    UNCOMMITTED_WAIT = 0.5

    @staticmethod
    def _committed(entry: Mapping[str, Any]) -> bool:
        """The recording is final: its ``.json.part`` is gone (a journaled recording is
        committed right after, by the file sink or by recovery)."""
        sidecar = entry.get("sidecar_path")
        return not isinstance(sidecar, str) or not os.path.lexists(sidecar + ".part")

    def _run_entry(self, path: Path, entry: dict[str, Any]) -> bool:
        """Run the pending hooks of one entry; True when none is left."""
        pending = [h for h in entry.get("pending", []) if isinstance(h, str)]
        attempts = int(entry.get("attempts") or 0) + 1
        still: list[str] = []
        error: str | None = None
        for number, hook in enumerate(pending):
            kind = HOOK_KINDS.get(hook)
            try:
                self._run(kind, hook, entry)
            except Exception as exc:
                self._count("failed")
                if kind is not None and kind.gate:
                    log.warning("%s failed for %s (attempt %d of %d): %s", hook,
                                entry.get("path"), attempts, self.remux_attempts, exc)
                    if attempts < self.remux_attempts:
                        still = pending[number:]  # the hooks after it wait for it
                        error = f"{hook}: {exc}"
                        break
                    log.error("%s given up for %s: %s", hook, entry.get("path"), exc)
                    continue
                still.append(hook)
                error = f"{hook}: {exc}"
                log.warning("hook %s failed for %s: %s", hook, entry.get("path"), exc)
            else:
                self._count("ok")
        if not still:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return True
        delay = min(self.max_backoff, self.backoff * 2 ** (attempts - 1))
        entry.update(pending=still, attempts=attempts, next_at=time.time() + delay,
                     last_error=error)
        with contextlib.suppress(OSError):
            replace_json(path, entry, self.journal.disk)
        return False

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.hooks.inc(label=outcome)

    def _run(self, kind: HookKind | None, name: str, entry: Mapping[str, Any]) -> None:
        if kind is None:
            raise RuntimeError(f"unknown hook {name!r}")
        if not kind.setting(self.config):
            raise RuntimeError(f"no {kind.option} configured")
        kind.run(self, entry)


class HookSink(Sink):
    """The hooks among the recorder's sinks: a finished part (journaled already, by the file
    sink) wakes the :class:`HookRunner`; without a runner (``serve --workers``: the parent
    process runs the hooks) it does nothing."""

    name: ClassVar[str] = "hooks"
    accepts: ClassVar[tuple[type[SinkEvent], ...]] = (PartFinalized,)
    runs: ClassVar[Literal["thread", "inline"]] = "inline"

    def __init__(self, runner: HookRunner | None) -> None:
        self.runner = runner

    def handle(self, part: Part, events: Sequence[SinkEvent]) -> None:
        if self.runner is not None:
            added = self.runner.journal.added
            if added is not None:
                added()


class CallbackSink(Sink):
    """Calls ``callback`` with each finished recording (``Recorder(on_finish=...)``), in a
    thread of its own, in the order the parts were finalized."""

    name: ClassVar[str] = "on_finish"
    accepts: ClassVar[tuple[type[SinkEvent], ...]] = (PartFinalized,)
    threads: ClassVar[int] = 1

    def __init__(self, callback: FinishCallback) -> None:
        self.callback = callback

    def handle(self, part: Part, events: Sequence[SinkEvent]) -> None:
        for event in events:
            if isinstance(event, PartFinalized):
                self.callback(event.recording)
