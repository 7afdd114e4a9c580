"""Durable post-processing hooks: every finished recording is journaled on disk before it is
committed, so each hook runs at least once, even across a crash and a restart; and the start
hooks, run once when a recording's file begins.

* :class:`Journal` keeps one small JSON file per finished recording in
  ``<output>/.hooks/``, written and fsynced by the file sink *before* it removes the
  recording's ``.json.part`` (so a crash at any point leaves either the ``.json.part``, which
  :func:`~.recovery.recover` turns into a journal entry, or the entry itself). An entry's name
  comes from its recording, so journaling the same recording twice (a retry, a recovery)
  leaves one entry.
* :data:`HOOK_KINDS` is the registry of hook kinds, in the order they run: ``remux``
  (``--remux mp4``, :func:`~.remux.remux_mp4`: ``<stem>.remux.mp4`` beside the recording),
  ``command`` (``--on-finish``: a command run with the media and sidecar paths appended and
  the recording's data in ``MEETSTREAM_*`` environment variables, without a shell; exit
  status 0 is success, ``--on-finish-timeout`` bounds it) and ``webhook`` (``--webhook``: a
  signed HTTP POST of the sidecar JSON, see :mod:`.webhook`; only a 2xx answer is success).
  :class:`HookConfig` says which are on.
* :class:`HookRunner` runs the hooks of each entry in a background thread. A failure is
  retried with exponential backoff plus up to 50 % jitter, at most ``max_attempts`` times:
  then the entry goes to the dead-letter folder ``<output>/.hooks/dead/`` (logged, counted;
  move it back to ``.hooks/`` to try again, with fresh attempts). An entry is deleted only
  when all its hooks have succeeded; an entry whose recording is not committed yet (its
  ``.json.part`` is still there) waits. On start it picks up whatever the journal holds.
  While a *gate* hook (the remux) fails, the hooks after it wait (so they can rely on
  ``<stem>.remux.mp4``), for at most ``remux_attempts`` attempts: then it is given up
  (logged) and they run without it.
* :class:`HookSink` is the hooks' place among the recorder's sinks: each
  :class:`~.sinks.PartFinalized` wakes the runner. :class:`StartHookSink` runs ``--on-start``
  (and the webhook's ``recording.started``) when a part's file holds its init segment: once,
  not journaled (a start that a crash interrupts is not run again). :class:`CallbackSink`
  calls a Python function (``Recorder(on_finish=...)``) with each finished recording.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shlex
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from . import webhook
from .durable import REAL_DISK, Disk, dumps_json, fsync_dir, replace_json, write_new
from .metrics import Metrics
from .names import iso
from .sidecar import FinishedRecording, peer_address
from .sinks import FragmentStored, Part, PartFinalized, Sink, SinkEvent

__all__ = [
    "DEAD_DIR",
    "HOOK_KINDS",
    "CallbackSink",
    "FinishCallback",
    "HookConfig",
    "HookKind",
    "HookRunner",
    "HookSink",
    "Journal",
    "StartHookSink",
    "finish_environment",
    "start_environment",
]

log = logging.getLogger("meetstream_live.hooks")

JOURNAL_DIR = ".hooks"
#: Under the journal: entries whose hooks failed ``max_attempts`` times.
DEAD_DIR = "dead"

FinishCallback = Callable[[FinishedRecording], None]


@dataclass(frozen=True)
class HookConfig:
    """Which hooks are on, and how they run: the ``serve`` options ``--on-finish``
    (``command``), ``--webhook``, ``--remux``, ``--on-start``, ``--webhook-secret``,
    ``--webhook-events``, ``--on-finish-timeout``, ``--webhook-timeout``."""

    command: str | None = None
    webhook: str | None = None
    remux: str | None = None
    on_start: str | None = None
    webhook_secret: str | None = None
    #: Which recording events the webhook is told of: ``finish`` (journaled, retried) and
    #: ``start`` (once).
    webhook_events: tuple[str, ...] = ("finish",)
    command_timeout: float = 600.0
    webhook_timeout: float = 30.0

    def names(self) -> tuple[str, ...]:
        """The hook names a journal entry lists, in the order they run."""
        return tuple(kind.name for kind in HOOK_KINDS.values() if kind.setting(self))

    def starts(self) -> bool:
        """Whether anything runs when a recording starts."""
        return bool(self.on_start) or (bool(self.webhook) and "start" in self.webhook_events)


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
        if self.name == "webhook" and "finish" not in config.webhook_events:
            return None
        return value


# ------------------------------------------------------------------------ the environment


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def start_environment(part: Part, media: Path) -> dict[str, str]:
    """``MEETSTREAM_*`` variables of a recording that starts (``--on-start``)."""
    start = part.start
    host, port = peer_address(part.info.peer)
    return {
        "MEETSTREAM_EVENT": "start",
        "MEETSTREAM_BOT_ID": _text(part.bot_id),
        "MEETSTREAM_SPEAKER": _text(part.speaker),
        "MEETSTREAM_SPEAKER_ID": _text(start.speaker_id if start else None),
        "MEETSTREAM_SPEAKER_NAME": _text(start.speaker_name if start else None),
        "MEETSTREAM_FILE": str(media.with_name(media.name.removesuffix(".part"))),
        "MEETSTREAM_PART_FILE": str(media),
        "MEETSTREAM_SIDECAR": str(media.with_name(media.name.removesuffix(".part"))
                                  .with_suffix(".json")),
        "MEETSTREAM_PART": str(part.number),
        "MEETSTREAM_STARTED_BY": part.why,
        "MEETSTREAM_STARTED_AT": _text(iso(part.started_ms)),
        "MEETSTREAM_PEER_HOST": _text(host),
        "MEETSTREAM_PEER_PORT": _text(port),
        "MEETSTREAM_PATH": part.info.path,
    }


def finish_environment(entry: Mapping[str, Any], sidecar: Mapping[str, Any]) -> dict[str, str]:
    """``MEETSTREAM_*`` variables of a finished recording (``--on-finish``), from its
    sidecar."""
    peer = sidecar.get("peer")
    host, port = (peer.get("host"), peer.get("port")) if isinstance(peer, dict) else (peer, None)
    return {
        "MEETSTREAM_EVENT": "finish",
        "MEETSTREAM_BOT_ID": _text(sidecar.get("bot_id")),
        "MEETSTREAM_SPEAKER": _text(sidecar.get("speaker_id") or sidecar.get("speaker_name")),
        "MEETSTREAM_SPEAKER_ID": _text(sidecar.get("speaker_id")),
        "MEETSTREAM_SPEAKER_NAME": _text(sidecar.get("speaker_name")),
        "MEETSTREAM_FILE": str(entry["path"]),
        "MEETSTREAM_SIDECAR": str(entry["sidecar_path"]),
        "MEETSTREAM_REMUX_FILE": str(entry["path"]).removesuffix(".mp4") + ".remux.mp4",
        "MEETSTREAM_PART": _text(sidecar.get("part")),
        "MEETSTREAM_STARTED_BY": _text(sidecar.get("started_by")),
        "MEETSTREAM_STARTED_AT": _text(sidecar.get("started_at")),
        "MEETSTREAM_ENDED_AT": _text(sidecar.get("ended_at")),
        "MEETSTREAM_DURATION": _text(sidecar.get("media_duration_seconds")),
        "MEETSTREAM_BYTES": _text(sidecar.get("bytes")),
        "MEETSTREAM_VERDICT": _text(sidecar.get("verdict")),
        "MEETSTREAM_END_REASON": _text(sidecar.get("end_reason")),
        "MEETSTREAM_CLOSE_CODE": _text(sidecar.get("close_code")),
        "MEETSTREAM_PEER_HOST": _text(host),
        "MEETSTREAM_PEER_PORT": _text(port),
        "MEETSTREAM_PATH": _text(sidecar.get("path")),
    }


def _run_command(argv: Sequence[str], env: Mapping[str, str], timeout: float) -> None:
    try:
        done = subprocess.run(list(argv), stdin=subprocess.DEVNULL, check=False,
                              timeout=timeout, env={**os.environ, **env})
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout:g} s") from None
    if done.returncode != 0:
        raise RuntimeError(f"exit status {done.returncode}")


# ------------------------------------------------------------------------ the hook kinds


def _remux(runner: HookRunner, entry: Mapping[str, Any]) -> None:
    from .remux import remux_mp4

    remux_mp4(str(entry["path"]))


def _sidecar(entry: Mapping[str, Any]) -> dict[str, Any]:
    try:
        document = json.loads(Path(str(entry["sidecar_path"])).read_bytes())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def _command(runner: HookRunner, entry: Mapping[str, Any]) -> None:
    assert runner.argv is not None
    _run_command([*runner.argv, str(entry["path"]), str(entry["sidecar_path"])],
                 finish_environment(entry, _sidecar(entry)), runner.config.command_timeout)


def _webhook(runner: HookRunner, entry: Mapping[str, Any]) -> None:
    url = runner.config.webhook
    assert url is not None
    body = Path(str(entry["sidecar_path"])).read_bytes()
    webhook.post(url, body, timeout=runner.timeout, secret=runner.config.webhook_secret,
                 event="recording.finished", delivery=entry.get("id"))


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

    @property
    def dead(self) -> Path:
        """The dead-letter folder."""
        return self.directory / DEAD_DIR

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
        name = self.entry_name(recording)
        path = self.directory / name
        if self.disk.exists(path):
            return path
        entry = {
            "id": name.removesuffix(".json"),
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

    def dead_entries(self) -> list[Path]:
        if not self.dead.is_dir():
            return []
        return sorted(p for p in self.dead.glob("*.json") if p.is_file())

    def references(self) -> set[str]:
        """The media paths the journal still holds entries for (retention keeps them)."""
        paths: set[str] = set()
        for entry in self.entries():
            with contextlib.suppress(OSError, ValueError, AttributeError):
                paths.add(str(json.loads(entry.read_bytes()).get("path")))
        return paths


class HookRunner:
    """Runs journaled hooks in a background thread, retrying failures with backoff and
    jitter, up to ``max_attempts`` attempts (``None``: forever), then dead-letters them."""

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
        timeout: float | None = None,
        remux: str | None = None,
        remux_attempts: int = 3,
        max_attempts: int | None = 10,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.journal = journal
        self.config = config or HookConfig(command=command, webhook=webhook, remux=remux)
        if self.config.remux not in (None, "mp4"):
            raise ValueError(f"unknown remux format {self.config.remux!r}")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.remux_attempts = remux_attempts
        self.max_attempts = max_attempts
        command = self.config.command
        self.argv = shlex.split(command) if command else None
        if command is not None and not self.argv:
            raise ValueError("empty hook command")
        self.metrics = metrics
        self.backoff = backoff
        self.max_backoff = max_backoff
        #: The webhook's timeout (seconds).
        self.timeout = self.config.webhook_timeout if timeout is None else timeout
        self._jitter = jitter
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        journal.added = self._wake.set
        if metrics is not None:
            metrics.watch("hooks_dead_letter", "gauge",
                          "Hook journal entries in the dead-letter folder (OUTPUT/.hooks/dead/).",
                          lambda: [({}, float(len(self.journal.dead_entries())))])

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
            self.metrics.hooks_pending.set(len(entries))
        for path in entries:
            try:
                entry = json.loads(path.read_bytes())
            except (OSError, ValueError) as exc:
                log.error("unreadable hook journal entry %s: %s", path, exc,
                          extra={"event": "hook_entry_unreadable", "file": str(path)})
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

    def delay(self, attempts: int) -> float:
        """Seconds before attempt ``attempts + 1``: doubling from ``backoff``, capped at
        ``max_backoff``, plus up to 50 % jitter (entries that failed together, say while
        the receiving end was down, do not all come back at the same second)."""
        base = min(self.max_backoff, self.backoff * 2.0 ** (attempts - 1))
        return float(base * (1.0 + 0.5 * self._jitter()))

    def _run_entry(self, path: Path, entry: dict[str, Any]) -> bool:
        """Run the pending hooks of one entry; True when none is left (done, or dead)."""
        pending = [h for h in entry.get("pending", []) if isinstance(h, str)]
        attempts = int(entry.get("attempts") or 0) + 1
        still: list[str] = []
        error: str | None = None
        fields = {"file": str(entry.get("path")), "attempt": attempts}
        entry.setdefault("id", path.stem)  # the webhook's delivery id (older entries had none)
        for number, hook in enumerate(pending):
            kind = HOOK_KINDS.get(hook)
            try:
                self._run(kind, hook, entry)
            except Exception as exc:
                self._count(hook, "failed")
                if kind is not None and kind.gate:
                    log.warning("%s failed for %s (attempt %d of %d): %s", hook,
                                entry.get("path"), attempts, self.remux_attempts, exc,
                                extra={"event": "hook_failed", "hook": hook, **fields})
                    if attempts < self.remux_attempts:
                        still = pending[number:]  # the hooks after it wait for it
                        error = f"{hook}: {exc}"
                        break
                    log.error("%s given up for %s: %s", hook, entry.get("path"), exc,
                              extra={"event": "hook_given_up", "hook": hook, **fields})
                    continue
                still.append(hook)
                error = f"{hook}: {exc}"
                log.warning("hook %s failed for %s (attempt %d): %s", hook, entry.get("path"),
                            attempts, exc,
                            extra={"event": "hook_failed", "hook": hook, **fields})
            else:
                self._count(hook, "ok")
        if not still:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return True
        entry.update(pending=still, attempts=attempts, last_error=error,
                     next_at=time.time() + self.delay(attempts))
        if self.max_attempts is not None and attempts >= self.max_attempts:
            self._bury(path, entry, still)
            return True
        with contextlib.suppress(OSError):
            replace_json(path, entry, self.journal.disk)
        return False

    def _bury(self, path: Path, entry: dict[str, Any], still: list[str]) -> None:
        """Into the dead-letter folder, with fresh attempts for whoever moves it back."""
        dead = self.journal.dead
        entry.update(attempts=0, next_at=0.0, dead_at=iso(int(time.time() * 1000)),
                     dead_attempts=entry["attempts"])
        try:
            self.journal.disk.mkdir(dead)
            replace_json(dead / path.name, entry, self.journal.disk)
            self.journal.disk.unlink(path)
        except OSError as exc:  # retried at the next attempt
            log.error("cannot move hook entry %s to %s: %s", path, dead, exc)
            return
        for hook in still:
            if self.metrics is not None:
                self.metrics.hooks_dead.inc(label=hook)
        log.error("hooks %s gave up for %s after %d attempts (last error: %s): entry moved "
                  "to %s; move it back to %s to try again", ", ".join(still), entry.get("path"),
                  entry["dead_attempts"], entry.get("last_error"), dead / path.name,
                  self.journal.directory,
                  extra={"event": "hook_dead_letter", "file": str(entry.get("path")),
                         "hook": ",".join(still)})

    def _count(self, hook: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.hooks.inc(label=(hook, outcome))

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


class StartHookSink(Sink):
    """``--on-start`` and the webhook's ``recording.started``: once per part, when its file
    holds the init segment (the first :class:`~.sinks.FragmentStored`), in a thread of its
    own. One attempt, not journaled: a failure is logged and counted
    (``hook_runs_total{hook="on_start"|"webhook_start"}``); the recording never waits."""

    name: ClassVar[str] = "on_start"
    accepts: ClassVar[tuple[type[SinkEvent], ...]] = (FragmentStored, PartFinalized)
    threads: ClassVar[int] = 1
    #: Parts remembered as started (their PartFinalized forgets them); the oldest go first.
    MAX_PARTS = 10_000

    def __init__(self, config: HookConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.argv = shlex.split(config.on_start) if config.on_start else None
        self._started: OrderedDict[int, None] = OrderedDict()

    def handle(self, part: Part, events: Sequence[SinkEvent]) -> None:
        for event in events:
            if isinstance(event, PartFinalized):
                self._started.pop(part.id, None)
            elif isinstance(event, FragmentStored) and part.id not in self._started:
                self._started[part.id] = None
                while len(self._started) > self.MAX_PARTS:
                    self._started.popitem(last=False)
                self._fire(part, event.path)

    def _fire(self, part: Part, media: Path) -> None:
        env = start_environment(part, media)
        fields = {"event": "hook_failed", "bot_id": part.bot_id,
                  "file": env["MEETSTREAM_FILE"]}
        if self.argv is not None:
            try:
                _run_command(self.argv, env, self.config.command_timeout)
            except Exception as exc:
                self._count("on_start", "failed")
                log.warning("--on-start failed for %s: %s", env["MEETSTREAM_FILE"], exc,
                            extra={**fields, "hook": "on_start"})
            else:
                self._count("on_start", "ok")
        if self.config.webhook and "start" in self.config.webhook_events:
            body = json.dumps({
                "event": "recording.started",
                **{key.removeprefix("MEETSTREAM_").lower(): value for key, value in env.items()
                   if key != "MEETSTREAM_EVENT"},
            }, ensure_ascii=False).encode("utf-8")
            try:
                webhook.post(self.config.webhook, body, timeout=self.config.webhook_timeout,
                             secret=self.config.webhook_secret, event="recording.started",
                             delivery=f"start-{part.started_ms}-{part.id}")
            except Exception as exc:
                self._count("webhook_start", "failed")
                log.warning("webhook (recording.started) failed for %s: %s",
                            env["MEETSTREAM_FILE"], exc,
                            extra={**fields, "hook": "webhook_start"})
            else:
                self._count("webhook_start", "ok")

    def _count(self, hook: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.hooks.inc(label=(hook, outcome))


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
