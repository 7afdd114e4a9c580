"""A real load balancer for the fleet tests: Debian's HAProxy (2.6 on bookworm), one frontend on a
loopback port in front of N backends, routed by a consistent hash of the URL path
(``balance uri``) or of a query parameter (``balance url_param bot``), with health checks on
``GET /healthz`` (anything but 200, e.g. a draining receiver's 503, takes a backend out) and
WebSocket-friendly timeouts. The generated config is in README.md.

    with haproxy({"r1": ("127.0.0.1", 9001), "r2": ("127.0.0.1", 9002)}, hash_on="param:bot") as lb:
        lb.url                      # http://127.0.0.1:PORT, ws:// works the same
        lb.disable("r1"); lb.enable("r1")     # maintenance through the runtime API
        lb.wait_state("r1", "DOWN")           # after its /healthz says 503 or it died
        lb.reload({"r1": ..., "r3": ...})     # new backend list, graceful reload

``backend_server(name)`` is a trivial HTTP backend that answers its name (and ``/healthz``).
"""

from __future__ import annotations

import csv
import io
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ._proc import (
    LOOPBACK,
    ManagedProcess,
    ServiceError,
    find_executable,
    free_port,
    port_open,
    unavailable,
)

__all__ = [
    "BackendServer",
    "HAProxy",
    "backend_server",
    "haproxy",
    "haproxy_executable",
    "render_config",
]

BACKEND = "receivers"


def haproxy_executable() -> str | None:
    return find_executable("haproxy", "/usr/sbin", "/usr/local/sbin")


def render_config(
    *,
    port: int,
    backends: Mapping[str, tuple[str, int]],
    admin_socket: Path,
    hash_on: str = "path",
    check_interval_ms: int = 200,
    fall: int = 2,
    rise: int = 1,
    tunnel_timeout: str = "1h",
    check_path: str = "/healthz",
) -> str:
    """The HAProxy configuration for one frontend and the ``receivers`` backend.

    ``hash_on``: ``"path"`` hashes the path (``/v1/streams/{bot_id}``, the query string left
    out), ``"param:NAME"`` the query parameter NAME (``?bot=...``; requests without it go
    round robin). Both with ``hash-type consistent``: a backend going away moves only its
    own keys, and they come back when it does."""
    if hash_on == "path":
        balance = "balance uri"
    elif hash_on.startswith("param:") and hash_on[6:]:
        balance = f"balance url_param {hash_on[6:]}"
    else:
        raise ValueError(f"hash_on must be 'path' or 'param:NAME', not {hash_on!r}")
    servers = "\n".join(
        f"    server {name} {host}:{bport} check" for name, (host, bport) in backends.items()
    )
    return f"""\
global
    log stdout format raw local0 info
    stats socket {admin_socket} mode 600 level admin
    maxconn 4096
    hard-stop-after 5s

defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # A WebSocket after the upgrade is a tunnel: quiet for long stretches, alive for hours.
    timeout tunnel {tunnel_timeout}
    timeout client-fin 5s
    timeout http-request 10s
    timeout check 1s
    retries 2
    option redispatch
    default-server inter {check_interval_ms}ms fastinter {check_interval_ms}ms \
downinter {check_interval_ms}ms fall {fall} rise {rise}

frontend fe
    bind {LOOPBACK}:{port}
    default_backend {BACKEND}

backend {BACKEND}
    {balance}
    hash-type consistent
    option httpchk
    http-check send meth GET uri {check_path}
    http-check expect status 200
{servers}
"""


@dataclass
class HAProxy:
    """A running HAProxy (master-worker mode, so ``reload()`` is graceful)."""

    base_dir: Path
    port: int
    backends: dict[str, tuple[str, int]]
    hash_on: str = "path"
    check_interval_ms: int = 200
    check_path: str = "/healthz"
    fall: int = 2
    rise: int = 1
    ready_timeout: float = 15.0
    _proc: ManagedProcess | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{LOOPBACK}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.base_dir / "haproxy.cfg"

    @property
    def admin_socket(self) -> Path:
        return self.base_dir / "admin.sock"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "haproxy.log"

    def config(self) -> str:
        return render_config(
            port=self.port,
            backends=self.backends,
            admin_socket=self.admin_socket,
            hash_on=self.hash_on,
            check_interval_ms=self.check_interval_ms,
            check_path=self.check_path,
            fall=self.fall,
            rise=self.rise,
        )

    def _write_config(self) -> None:
        self.config_path.write_text(self.config())

    def argv(self) -> list[str]:
        exe = haproxy_executable()
        if exe is None:
            raise ServiceError("haproxy not found")
        # -W: master-worker (SIGUSR2 reloads); -db: stay in the foreground.
        return [exe, "-W", "-db", "-f", str(self.config_path)]

    def command(self, line: str, timeout: float = 2.0) -> str:
        """One runtime API command (``show stat``, ``disable server receivers/r1``...)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.admin_socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks).decode(errors="replace")

    def states(self) -> dict[str, str]:
        """Each backend server's status from ``show stat``: UP, DOWN, MAINT, ``UP 1/2``..."""
        text = self.command("show stat").lstrip("# ")
        result = {}
        for row in csv.DictReader(io.StringIO(text)):
            if row.get("pxname") == BACKEND and row.get("svname") not in ("BACKEND", "FRONTEND"):
                result[row["svname"]] = row["status"]
        return result

    def wait_state(self, name: str, status: str, timeout: float = 10.0) -> None:
        """Wait until backend ``name``'s status starts with ``status`` (UP, DOWN, MAINT)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.states().get(name)
            except OSError:
                last = None
            if last is not None and last.startswith(status):
                return
            time.sleep(0.05)
        raise ServiceError(f"haproxy backend {name} is {last!r}, not {status} after {timeout} s")

    def disable(self, name: str) -> None:
        """Maintenance mode: no new requests, health checks stop (``set server ... maint``)."""
        self.command(f"set server {BACKEND}/{name} state maint")

    def drain(self, name: str) -> None:
        """No new sessions by balancing; existing ones stay (``state drain``)."""
        self.command(f"set server {BACKEND}/{name} state drain")

    def enable(self, name: str) -> None:
        self.command(f"set server {BACKEND}/{name} state ready")

    def _ready(self) -> bool:
        return port_open(self.port) and set(self.states()) == set(self.backends)

    def start(self) -> float:
        self._write_config()
        if self._proc is None:
            self._proc = ManagedProcess("haproxy", self.argv(), self.log_path)
        self._proc.start()
        return self._proc.wait_ready(self._ready, self.ready_timeout, "routing")

    def reload(self, backends: Mapping[str, tuple[str, int]] | None = None) -> None:
        """Rewrite the config (with ``backends`` when given) and reload gracefully: a new
        worker takes the listener, the old one finishes its connections."""
        if backends is not None:
            self.backends = dict(backends)
        self._write_config()
        if self._proc is None or not self._proc.running():
            raise ServiceError("haproxy is not running")
        self._proc.signal(signal.SIGUSR2)
        assert self._proc is not None
        self._proc.wait_ready(self._ready, self.ready_timeout, "routing after the reload")

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        if self._proc is not None:
            self._proc.stop(timeout, kill=kill)

    def log_tail(self, lines: int = 40) -> str:
        return self._proc.log_tail(lines) if self._proc else ""


@contextmanager
def haproxy(
    backends: Mapping[str, tuple[str, int]],
    *,
    hash_on: str = "path",
    check_interval_ms: int = 200,
    fall: int = 2,
    rise: int = 1,
    check_path: str = "/healthz",
) -> Iterator[HAProxy]:
    """Start HAProxy on a free loopback port in front of ``backends`` (name -> (host, port)),
    yield it, stop it. Skips the test when haproxy is not installed (fails with CI=true)."""
    if haproxy_executable() is None:
        unavailable("haproxy not found (Debian package `haproxy`; `make system-deps` installs it)")
    base = Path(tempfile.mkdtemp(prefix="ms-haproxy-"))
    lb: HAProxy | None = None
    try:
        for attempt in range(3):
            lb = HAProxy(
                base,
                free_port(),
                dict(backends),
                hash_on=hash_on,
                check_interval_ms=check_interval_ms,
                check_path=check_path,
                fall=fall,
                rise=rise,
            )
            try:
                lb.start()
                break
            except ServiceError as exc:
                lb.stop(kill=True)
                if attempt == 2 or "cannot bind" not in str(exc).lower():
                    raise
        assert lb is not None
        yield lb
    finally:
        if lb is not None:
            lb.stop()
        shutil.rmtree(base, ignore_errors=True)


class _NameHandler(BaseHTTPRequestHandler):
    server: _NamedServer

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/healthz":
            code = self.server.health_status
            body = b"ok\n" if code == 200 else b"draining\n"
        else:
            code = 200
            body = self.server.name.encode()
            with self.server.lock:
                self.server.paths.append(self.path)
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _NamedServer(ThreadingHTTPServer):
    daemon_threads = True
    name: str
    health_status: int
    paths: list[str]
    lock: threading.Lock

    def handle_error(self, request: object, client_address: object) -> None:
        # HAProxy's health checks close with a reset as soon as they have the status line.
        pass


@dataclass
class BackendServer:
    """A trivial HTTP backend: every path answers its ``name``; ``/healthz`` answers
    ``health_status`` (set it to 503 to take it out of the balancer)."""

    name: str
    _server: _NamedServer = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def paths(self) -> list[str]:
        """The request paths (other than /healthz) it has served."""
        with self._server.lock:
            return list(self._server.paths)

    @property
    def health_status(self) -> int:
        return self._server.health_status

    @health_status.setter
    def health_status(self, value: int) -> None:
        self._server.health_status = value

    def close(self) -> None:
        """Stop serving and close the listening socket (a dead backend)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def backend_server(name: str) -> Iterator[BackendServer]:
    server = _NamedServer((LOOPBACK, 0), _NameHandler)
    server.name = name
    server.health_status = 200
    server.paths = []
    server.lock = threading.Lock()
    thread = threading.Thread(target=server.serve_forever, name=f"backend-{name}", daemon=True)
    thread.start()
    backend = BackendServer(name, server, thread)
    try:
        yield backend
    finally:
        if thread.is_alive():
            backend.close()
