"""Durable post-processing hooks: every finished recording is journaled on disk before any
hook runs, so each hook runs at least once, even across a crash and a restart.

* :class:`Journal` keeps one small JSON file per finished recording in
  ``<output>/.hooks/``, written and fsynced by the recorder *before* it removes the
  recording's ``.json.part`` (so a crash at any point leaves either the ``.json.part``, which
  :func:`~.recorder.recover` turns into a journal entry, or the entry itself).
* :class:`HookRunner` runs the hooks of each entry in a background thread, in this order:
  ``--remux mp4`` (:func:`~.remux.remux_mp4`: ``<stem>.remux.mp4`` beside the recording),
  ``--on-finish`` (a command run with the media and sidecar paths appended, without a
  shell; exit status 0 is success) and ``--webhook`` (an HTTP POST of the sidecar JSON; a
  2xx answer is success).
  A failure is retried with exponential backoff; an entry is deleted only when all its hooks
  have succeeded. On start it picks up whatever the journal still holds. While the remux
  fails, the hooks after it wait (so they can rely on ``<stem>.remux.mp4``), for at most
  ``remux_attempts`` attempts: then the remux is given up (logged) and they run without it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shlex
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meetstream_live import __version__

from .durable import dumps_json, fsync_dir, replace_json, write_new
from .metrics import Metrics
from .sidecar import FinishedRecording

__all__ = ["HookRunner", "Journal"]

log = logging.getLogger("meetstream_live.hooks")

JOURNAL_DIR = ".hooks"


class Journal:
    """The on-disk list of finished recordings whose hooks have not all succeeded."""

    def __init__(self, output_dir: str | os.PathLike[str], hooks: tuple[str, ...]) -> None:
        self.directory = Path(output_dir).resolve() / JOURNAL_DIR
        self.hooks = hooks
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self.added: Callable[[], None] | None = None  # the runner's wake-up

    def add(self, recording: FinishedRecording) -> Path | None:
        """Journal ``recording`` (durably); called by the recorder before it commits."""
        if not self.hooks:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            name = f"{time.time_ns()}-{os.getpid()}-{next(self._counter)}.json"
        path = self.directory / name
        entry = {
            "path": str(recording.path),
            "sidecar_path": str(recording.sidecar_path),
            "pending": list(self.hooks),
            "attempts": 0,
            "next_at": 0.0,
            "last_error": None,
        }
        write_new(path, dumps_json(entry))
        fsync_dir(self.directory)
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
        if remux not in (None, "mp4"):
            raise ValueError(f"unknown remux format {remux!r}")
        self.remux = remux
        self.remux_attempts = remux_attempts
        self.argv = shlex.split(command) if command else None
        if command is not None and not self.argv:
            raise ValueError("empty hook command")
        self.webhook = webhook
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
        return tuple(
            name
            for name, on in (("remux", remux), ("command", command), ("webhook", webhook))
            if on
        )

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
            if self._run_entry(path, entry):
                continue
            nearest = min(nearest, float(entry["next_at"]) - now)
        return max(0.0, nearest)

    def _run_entry(self, path: Path, entry: dict[str, Any]) -> bool:
        """Run the pending hooks of one entry; True when none is left."""
        pending = [h for h in entry.get("pending", []) if isinstance(h, str)]
        attempts = int(entry.get("attempts") or 0) + 1
        still: list[str] = []
        error: str | None = None
        for number, hook in enumerate(pending):
            if hook == "remux":  # always first
                try:
                    self._run(hook, entry)
                except Exception as exc:
                    log.warning("remux failed for %s (attempt %d of %d): %s",
                                entry.get("path"), attempts, self.remux_attempts, exc)
                    if self.metrics is not None:
                        self.metrics.hooks.inc(label="failed")
                    if attempts < self.remux_attempts:
                        # The hooks after it wait for it.
                        still = pending[number:]
                        error = f"remux: {exc}"
                        break
                    log.error("remux given up for %s: %s", entry.get("path"), exc)
                else:
                    if self.metrics is not None:
                        self.metrics.hooks.inc(label="ok")
                continue
            try:
                self._run(hook, entry)
            except Exception as exc:
                still.append(hook)
                error = f"{hook}: {exc}"
                log.warning("hook %s failed for %s: %s", hook, entry.get("path"), exc)
                if self.metrics is not None:
                    self.metrics.hooks.inc(label="failed")
            else:
                if self.metrics is not None:
                    self.metrics.hooks.inc(label="ok")
        if not still:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return True
        delay = min(self.max_backoff, self.backoff * 2 ** (attempts - 1))
        entry.update(pending=still, attempts=attempts, next_at=time.time() + delay,
                     last_error=error)
        with contextlib.suppress(OSError):
            replace_json(path, entry)
        return False

    def _run(self, hook: str, entry: dict[str, Any]) -> None:
        media, sidecar = str(entry["path"]), str(entry["sidecar_path"])
        if hook == "remux":
            if self.remux is None:
                raise RuntimeError("no --remux format configured")
            from .remux import remux_mp4

            remux_mp4(media)
        elif hook == "command":
            if self.argv is None:
                raise RuntimeError("no --on-finish command configured")
            done = subprocess.run(
                [*self.argv, media, sidecar], stdin=subprocess.DEVNULL, check=False,
                timeout=self.timeout * 20,
            )
            if done.returncode != 0:
                raise RuntimeError(f"exit status {done.returncode}")
        elif hook == "webhook":
            if self.webhook is None:
                raise RuntimeError("no --webhook URL configured")
            body = Path(sidecar).read_bytes()
            request = urllib.request.Request(
                self.webhook, data=body, method="POST",
                headers={"Content-Type": "application/json",
                         "User-Agent": f"meetstream-live/{__version__}"},
            )
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                if not 200 <= response.status < 300:
                    raise RuntimeError(f"HTTP {response.status}")
        else:
            raise RuntimeError(f"unknown hook {hook!r}")
