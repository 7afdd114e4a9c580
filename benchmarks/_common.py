"""Shared pieces: the payload, client frames, statistics, /proc readings, servers under test."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(__file__).resolve().parent / "peers"
SEED = 20240501
KIB = 1024
MIB = 1024 * 1024
#: Every fragment of the benchmark stream is padded to this size: 512 KiB is one second of
#: media at 4 Mbit/s (1080p25), and every chunk size used (4, 32, 64, 256 KiB) divides it, so a
#: ring of pre-built frames repeats the same fragment-aligned bytes.
FRAGMENT_SIZE = 512 * KIB
#: The bitrate of part 3: 4 Mbit/s.
BITRATE_BPS = 4_000_000

# ---------------------------------------------------------------------------- payload


def _boxes(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """Top-level (type, start, end) of an ISO-BMFF byte string (32-bit sizes only)."""
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        if size < 8:
            raise ValueError(f"unsupported box size {size} at {pos}")
        yield kind, pos, pos + size
        pos += size


@dataclass(frozen=True)
class Media:
    """A fMP4 stream: ``init`` (ftyp + moov), then ``ring`` (whole fragments) repeated."""

    init: bytes
    ring: bytes


def build_media(seed: int = SEED) -> Media:
    """The bundled sample's init segment and its fragments, each ``mdat`` padded with seeded
    random bytes so that every fragment is :data:`FRAGMENT_SIZE` bytes (unreferenced bytes at
    the end of an ``mdat`` are legal; the scanner and the recorder see real fragments)."""
    from meetstream_live.adapters.cli.sample import sample_bytes

    data = sample_bytes()
    rng = random.Random(seed)
    init = b""
    ring = bytearray()
    moof_start: int | None = None
    for kind, start, end in _boxes(data):
        if kind in (b"ftyp", b"moov"):
            init += data[start:end]
        elif kind == b"moof":
            moof_start = start
        elif kind == b"mdat" and moof_start is not None:
            head = data[moof_start:start]
            payload = data[start + 8 : end]
            pad = FRAGMENT_SIZE - len(head) - 8 - len(payload)
            if pad < 0:
                raise ValueError("a sample fragment is larger than FRAGMENT_SIZE")
            ring += head + struct.pack(">I4s", 8 + len(payload) + pad, b"mdat")
            ring += payload + rng.randbytes(pad)
            moof_start = None
    return Media(init, bytes(ring))


def stream_bytes(media: Media, total: int) -> bytes:
    """The first ``total`` bytes of the infinite stream init + ring + ring + ..."""
    reps = (total - len(media.init)) // len(media.ring) + 1
    return (media.init + media.ring * reps)[:total]


# ---------------------------------------------------------------------------- frames

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8


def mask_bytes(data: bytes, key: bytes) -> bytes:
    """``data`` XOR the repeated 4-byte ``key`` (RFC 6455 masking), with big integers."""
    n = len(data)
    if n == 0:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(
        n, "little"
    )


def client_frame(opcode: int, payload: bytes, key: bytes) -> bytes:
    """One final, masked client-to-server frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack(">BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + key + mask_bytes(payload, key)


def frames_of(data: bytes, chunk: int, rng: random.Random) -> list[bytes]:
    """``data`` cut into ``chunk``-byte binary messages, each masked with its own key."""
    return [
        client_frame(OP_BINARY, data[i : i + chunk], rng.randbytes(4))
        for i in range(0, len(data), chunk)
    ]


def text_frame(document: dict[str, Any], rng: random.Random) -> bytes:
    return client_frame(OP_TEXT, json.dumps(document).encode(), rng.randbytes(4))


def close_frame(rng: random.Random, code: int = 1000) -> bytes:
    return client_frame(OP_CLOSE, struct.pack(">H", code), rng.randbytes(4))


def upgrade_request(host: str, port: int, path: str = "/") -> tuple[bytes, bytes]:
    """The HTTP upgrade request and the ``Sec-WebSocket-Accept`` value it must get."""
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(
        hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    )
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\nUser-Agent: meetstream-live-bench\r\n\r\n"
    ).encode()
    return request, accept


def start_message(bot_id: str) -> dict[str, Any]:
    return {
        "type": "video_stream_start", "bot_id": bot_id, "codec": "h264", "audio_codec": "aac",
        "container": "fmp4", "width": 1920, "height": 1080, "framerate": 25,
        "audio_sample_rate": 44100, "audio_bitrate": "128k",
    }


def ping_message(bot_id: str, seq: int) -> dict[str, Any]:
    return {
        "type": "video_latency_ping", "bot_id": bot_id, "seq": seq,
        "sent_at_ms": int(time.time() * 1000),
    }


# ---------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def mb_per_s(nbytes: float, seconds: float) -> float:
    """Megabytes (10^6) per second."""
    return nbytes / seconds / 1e6 if seconds > 0 else float("nan")


# ---------------------------------------------------------------------------- /proc

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _children(pid: int) -> list[int]:
    """Direct children of a process: /proc/PID/task/*/children, or a scan of /proc for PPid
    where the kernel lacks that file."""
    found: list[int] = []
    tasks = list(Path(f"/proc/{pid}/task").glob("*/children"))
    if tasks:
        for path in tasks:
            with contextlib.suppress(OSError, ValueError):
                found += [int(c) for c in path.read_text().split()]
        return found
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants alive now (a server with ``--workers N`` forks them)."""
    tree = [pid]
    i = 0
    while i < len(tree):
        tree += [c for c in _children(tree[i]) if c not in tree]
        i += 1
    return tree


def _cpu_one(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants (all their threads), from
    /proc/PID/stat, summed over the process tree alive now."""
    values = [v for v in (_cpu_one(p) for p in process_tree(pid)) if not math.isnan(v)]
    return math.fsum(values) if values else float("nan")


def _hwm_one(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) in MiB, summed over the process and its descendants alive
    now (pages shared after a fork count once per process)."""
    values = [v for v in (_hwm_one(p) for p in process_tree(pid)) if not math.isnan(v)]
    return math.fsum(values) if values else float("nan")


def machine() -> dict[str, Any]:
    """What the figures ran on."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    node = shutil.which("node")
    node_version = ""
    if node:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            node_version = subprocess.run(
                [node, "--version"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
    versions: dict[str, str] = {}
    from importlib import metadata

    for name in ("meetstream-live", "wsproto", "h11", "websockets", "trio", "uvloop", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    revision = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        revision = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
            timeout=10, cwd=ROOT,
        ).stdout.strip()
    dirty: list[str] = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        dirty = [line[3:] for line in subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
            text=True, timeout=10, cwd=ROOT,
        ).stdout.splitlines() if line.strip()]
    import meetstream_live

    return {
        "revision": revision, "dirty_files": dirty,
        "package_path": str(Path(meetstream_live.__file__).parent),
        "cpu": cpu, "cores": os.cpu_count(), "memory": mem, "kernel": platform.release(),
        "python": platform.python_version(), "implementation": platform.python_implementation(),
        "node": node_version, "packages": versions,
        "load_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# ---------------------------------------------------------------------------- servers


def write_result(program: str, argv: list[str] | None, result: dict[str, Any],
                 out: str | None) -> None:
    """A benchmark's JSON document (the machine, the command line, ``result``) to ``out``, or
    to stdout without it."""
    document = {"machine": machine(), "command": f"python -m {program} "
                + " ".join(sys.argv[1:] if argv is None else argv), **result}
    text = json.dumps(document, indent=2)
    if out:
        Path(out).write_text(text)
    else:
        print(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def venv_bin(name: str) -> str:
    """A console script next to the running interpreter (the project's venv)."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


@dataclass(frozen=True)
class ServerSpec:
    """A receiver under test, started as a subprocess."""

    name: str
    kind: str  # "ours" or "peer"
    adapter: str = ""
    workers: int = 0  # ours: ``serve --workers N`` (0: the option is not given)
    #: ours: ``dev`` (this venv: every extra) or ``plain`` (``pip install .``, no extra).
    install: str = "dev"

    def command(self, port: int, output: Path) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        if self.kind == "ours":
            program = venv_bin("meetstream-live")
            if self.install == "plain":
                from .receivers import plain_install

                bindir = plain_install()
                assert isinstance(bindir, Path), bindir
                program = str(bindir / "meetstream-live")
                env.pop("PYTHONPATH", None)
            argv = [
                program, "serve", "--adapter", self.adapter,
                "--host", "127.0.0.1", "--port", str(port), "--output", str(output),
                "--log-level", "warning", "--drain-timeout", "5s",
            ]
            if self.workers:
                argv += ["--workers", str(self.workers)]
            return argv, env
        env.update(WS_HOST="127.0.0.1", WS_PORT=str(port), OUTPUT_DIR=str(output))
        if self.name == "peer-websockets":
            return [sys.executable, str(PEERS / "websockets_receiver.py")], env
        if self.name == "peer-ws-node":
            return [shutil.which("node") or "node", str(PEERS / "ws_receiver.mjs")], env
        if self.name == "peer-picows":
            return [sys.executable, str(PEERS / "picows_receiver.py")], env
        if self.name.startswith("peer-doc-"):
            from .receivers import doc_peer

            sample = doc_peer(self.name)
            assert isinstance(sample, Path), sample
            if self.name == "peer-doc-node":
                return [shutil.which("node") or "node", str(sample)], env
            return [sys.executable, str(sample)], env
        raise ValueError(self.name)


OURS = tuple(
    ServerSpec(f"ours-{a}", "ours", a) for a in ("asyncio", "uvloop", "sync", "trio")
)
#: ``serve --adapter asyncio --workers 2``: two processes sharing the port (SO_REUSEPORT).
OURS_WORKERS = (ServerSpec("ours-asyncio-w2", "ours", "asyncio", workers=2),)
#: ``pip install .`` with no extra, in a venv the benchmark makes (:mod:`.receivers`).
OURS_PLAIN = (ServerSpec("ours-plain-asyncio", "ours", "asyncio", install="plain"),)
PEERS_SPECS = (
    ServerSpec("peer-websockets", "peer"), ServerSpec("peer-ws-node", "peer"),
    ServerSpec("peer-picows", "peer"),
    # The protocol document's own samples, verbatim, extracted at run time.
    ServerSpec("peer-doc-websockets", "peer"), ServerSpec("peer-doc-node", "peer"),
)
ALL_SERVERS = OURS + OURS_PLAIN + OURS_WORKERS + PEERS_SPECS


def available(spec: ServerSpec) -> str | None:
    """Why a server cannot run here, or None."""
    if spec.workers and not hasattr(socket, "SO_REUSEPORT"):
        return "serve --workers needs SO_REUSEPORT (Linux)"
    if spec.adapter == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            return "uvloop not installed (pip install 'meetstream-live[bench]')"
    if spec.adapter == "trio":
        try:
            import trio  # noqa: F401
        except ImportError:
            return "trio not installed"
    if spec.install == "plain":
        from .receivers import plain_install

        made = plain_install()
        if not isinstance(made, Path):
            return made
    if spec.name in ("peer-websockets", "peer-doc-websockets"):
        try:
            import websockets  # noqa: F401
        except ImportError:
            return "websockets not installed"
    if spec.name == "peer-picows":
        try:
            import picows  # noqa: F401
        except ImportError:
            return "picows not installed (pip install 'meetstream-live[bench]')"
    if spec.name.startswith("peer-doc-"):
        from .receivers import doc_peer

        sample = doc_peer(spec.name)
        if not isinstance(sample, Path):
            return sample
        if spec.name == "peer-doc-node" and shutil.which("node") is None:
            return "node not found"
    if spec.name == "peer-ws-node":
        if shutil.which("node") is None:
            return "node not found"
        if not (PEERS / "node_modules" / "ws").is_dir():
            return "run: npm ci --prefix benchmarks/peers"
    return None


@dataclass(frozen=True)
class ServeWith(ServerSpec):
    """Ours (``serve``) with more options after the usual ones (``--live off``, ``--nats URL``)."""

    extra: tuple[str, ...] = ()

    def command(self, port: int, output: Path) -> tuple[list[str], dict[str, str]]:
        argv, env = super().command(port, output)
        return argv + list(self.extra), env


class RunningServer:
    """A server subprocess with its own output directory, stopped and cleaned on exit."""

    def __init__(self, spec: ServerSpec, tmp_root: str | None = None) -> None:
        self.spec = spec
        self.port = free_port()
        self.output = Path(tempfile.mkdtemp(prefix=f"bench-{spec.name}-", dir=tmp_root))
        argv, env = spec.command(self.port, self.output)
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self._wait_ready()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited: {self.output_log()}")
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.5
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.spec.name} did not listen on {self.port}")

    def output_log(self) -> str:
        self.log.seek(0)
        return self.log.read()[-2000:].decode("utf-8", "replace")

    def recorded(self, finished_only: bool = True) -> dict[str, int]:
        """Bytes on disk per bot id (ours: OUTPUT/<bot>/*.mp4; peers: OUTPUT/<bot>_<ms>.mp4)."""
        sizes: dict[str, int] = {}
        for path in self.output.rglob("*"):
            name = path.name
            if not (name.endswith(".mp4") or (not finished_only and name.endswith(".mp4.part"))):
                continue
            bot = path.parent.name if path.parent != self.output else name.rsplit("_", 1)[0]
            with contextlib.suppress(OSError):
                sizes[bot] = sizes.get(bot, 0) + path.stat().st_size
        return sizes

    def wait_recorded(self, expected: dict[str, int], timeout: float) -> dict[str, int]:
        """Poll until every bot has its bytes in finished files, or nothing changes for 3 s."""
        deadline = time.monotonic() + timeout
        last: dict[str, int] = {}
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            got = self.recorded()
            if all(got.get(b, 0) >= n for b, n in expected.items()):
                return got
            if got != last:
                last, stable_since = got, time.monotonic()
            elif time.monotonic() - stable_since > 3.0:
                break
            time.sleep(0.1)
        return self.recorded()

    def stop(self) -> float:
        """SIGTERM (then SIGKILL); returns the peak RSS in MiB read just before."""
        rss = peak_rss_mib(self.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.output, ignore_errors=True)
        return rss

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_loadgen(args: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``python -m benchmarks.loadgen`` in its own process; its JSON result."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadgen", json.dumps(args)],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
