"""A fleet of three receivers behind HAProxy against one receiver, on the same machine.

``python -m benchmarks.fleet [--k 300,600] [--reps 2] [--duration 20] [--tmpdir DIR]
[--out FILE]`` runs, for each K and rep, alternated: one ``serve --adapter asyncio``, the bots
straight to it; and three ``serve --adapter asyncio`` (each its own output directory) behind
one HAProxy on loopback (``balance uri``, ``hash-type consistent``, health checks on
``/readyz``: the configuration of docs/deploy.md). The same load both ways (K bots x 4 Mbit/s
of real fMP4, 32 KiB chunks, a ping a second: the harness of part 3, ``benchmarks/many.py``),
each bot's upgrade on ``/v1/streams/{bot_id}``. Per run: achieved vs offered MB/s, pong
round trips p50/p99, pongs missing, bytes lost (what each bot sent against its finished
recordings summed over the output directories), the receivers' CPU (summed) and HAProxy's
from /proc, whether the run *holds* (the rule of ``benchmarks/many.py``) and, for the fleet,
how many bots each node recorded. On one box the nodes share its cores: this measures what
the balancer costs and how evenly it spreads the bots, not a fleet's capacity.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._common import (
    BITRATE_BPS,
    KIB,
    RunningServer,
    ServerSpec,
    cpu_seconds,
    free_port,
    log,
    run_loadgen,
    write_result,
)
from .many import holds

NODES = 3
PATH = "/v1/streams/{bot_id}"


def haproxy_executable() -> str | None:
    """As tests/services/_haproxy.py finds it: this venv's bin, PATH, /usr/sbin, /usr/local/sbin."""
    found = shutil.which("haproxy")
    if found:
        return found
    for directory in (str(Path(sys.executable).parent), "/usr/sbin", "/usr/local/sbin"):
        candidate = Path(directory) / "haproxy"
        if candidate.is_file():
            return str(candidate)
    return None


def haproxy_config(port: int, backends: list[int], admin: Path) -> str:
    """docs/deploy.md's configuration on loopback (no TLS, no logs)."""
    servers = "\n".join(f"    server r{i + 1} 127.0.0.1:{p} check" for i, p in enumerate(backends))
    return f"""\
global
    stats socket {admin} mode 600 level admin
    maxconn 4096
    hard-stop-after 5s

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    timeout http-request 10s
    retries 2
    option redispatch
    default-server inter 200ms fastinter 200ms downinter 200ms fall 2 rise 1

frontend fe
    bind 127.0.0.1:{port}
    default_backend receivers

backend receivers
    balance uri
    hash-type consistent
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
{servers}
"""


def _up(admin: Path) -> int:
    """How many backend servers ``show stat`` says are UP."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        s.connect(str(admin))
        s.sendall(b"show stat\n")
        text = b""
        while data := s.recv(65536):
            text += data
    rows = [line.split(",") for line in text.decode(errors="replace").splitlines()]
    return sum(1 for r in rows if len(r) > 17 and r[0] == "receivers"
               and r[1] not in ("BACKEND", "FRONTEND") and r[17].startswith("UP"))


@contextlib.contextmanager
def haproxy(backends: list[int]) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """HAProxy (one process, ``-db``) on a free loopback port; yields (port, process) once
    every backend is UP."""
    exe = haproxy_executable()
    if exe is None:
        raise SystemExit("haproxy not found (Debian package `haproxy`)")
    base = Path(tempfile.mkdtemp(prefix="bench-haproxy-"))
    port, admin = free_port(), base / "admin.sock"
    (base / "haproxy.cfg").write_text(haproxy_config(port, backends, admin))
    proc = subprocess.Popen([exe, "-db", "-f", str(base / "haproxy.cfg")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20.0
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"haproxy exited ({proc.returncode})")
            with contextlib.suppress(OSError):
                if _up(admin) == len(backends):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("haproxy: the backends are not all UP")
            time.sleep(0.1)
        yield port, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def recorded(nodes: list[RunningServer], expected: dict[str, int],
             timeout: float = 60.0) -> list[dict[str, int]]:
    """Each node's finished bytes per bot, polled until every bot has what it sent (summed
    over the nodes) or nothing changes for 3 s (RunningServer.wait_recorded, over nodes)."""
    deadline, stable_since = time.monotonic() + timeout, time.monotonic()
    last: list[dict[str, int]] = []
    while True:
        got = [n.recorded() for n in nodes]
        total = merged(got)
        if all(total.get(b, 0) >= n for b, n in expected.items()):
            return got
        if got != last:
            last, stable_since = got, time.monotonic()
        elif time.monotonic() - stable_since > 3.0 or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def merged(per_node: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for sizes in per_node:
        for bot, n in sizes.items():
            total[bot] = total.get(bot, 0) + n
    return total


def run_one(k: int, fleet: bool, seconds: float, rep: int,
            tmp_root: str | None) -> dict[str, Any]:
    count = NODES if fleet else 1
    nodes = [RunningServer(ServerSpec(f"ours-asyncio-n{i + 1}", "ours", "asyncio"), tmp_root)
             for i in range(count)]
    args = {"mode": "many", "bots": k, "chunk": 32 * KIB, "rate_bps": BITRATE_BPS,
            "duration": seconds, "ping_interval": 1.0, "seed": 1000 * k + rep,
            "id_prefix": f"k{k}r{rep}{'f' if fleet else 's'}b", "path": PATH}
    try:
        with contextlib.ExitStack() as stack:
            lb: subprocess.Popen[bytes] | None = None
            port = nodes[0].port
            if fleet:
                port, lb = stack.enter_context(haproxy([n.port for n in nodes]))
            cpu0 = [cpu_seconds(n.pid) for n in nodes]
            lb0 = cpu_seconds(lb.pid) if lb else 0.0
            t0 = time.perf_counter()
            result = run_loadgen({**args, "host": "127.0.0.1", "port": port}, seconds + 600)
            wall = time.perf_counter() - t0
            cpu = sum(cpu_seconds(n.pid) - c for n, c in zip(nodes, cpu0, strict=True))
            lb_cpu = cpu_seconds(lb.pid) - lb0 if lb else 0.0
            expected: dict[str, int] = result.pop("expected")
            per_node = recorded(nodes, expected)
    finally:
        rss = sum(n.stop() for n in nodes)
    got = merged(per_node)
    row: dict[str, Any] = {
        "k": k, "rep": rep, "run": "fleet" if fleet else "single", "nodes": count,
        "duration": seconds, "offered_mbps": result["offered_mbps"],
        "achieved_mbps": result["achieved_mbps"], "achieved_ratio": result["achieved_ratio"],
        "rtt_p50_ms": result["rtt_ms"]["p50"], "rtt_p99_ms": result["rtt_ms"]["p99"],
        "pongs_missing": result["pings"] - result["pongs"],
        "pongs_missing_early": result["pongs_missing_before_last_second"],
        "bytes_sent": sum(expected.values()),
        "bytes_lost": sum(max(0, n - got.get(b, 0)) for b, n in expected.items()),
        "bots_missing": sum(1 for b in expected if b not in got),
        "bots_on_two_nodes": sum(1 for b in got if sum(b in s for s in per_node) > 1),
        "bots_per_node": [len(s) for s in per_node],
        "connect_failures": result["connect_failures"],
        "receivers_cpu_pct": 100.0 * cpu / wall,
        "haproxy_cpu_pct": 100.0 * lb_cpu / wall if fleet else None,
        "loadgen_cpu_pct": result["loadgen_cpu_pct"], "receivers_peak_rss_mib": rss,
    }
    row["holds"] = holds(row)
    return row


def time_fleet(ks: list[int], seconds: float, reps: int,
               tmp_root: str | None) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for k in ks:
        for rep in range(reps):
            for fleet in (False, True):
                row = run_one(k, fleet, seconds, rep, tmp_root)
                rows.append(row)
                lb = row["haproxy_cpu_pct"]
                log(f"fleet K={k} rep {rep + 1} {row['run']}: {row['achieved_mbps']:.1f}/"
                    f"{row['offered_mbps']:.1f} MB/s, pong p50 {row['rtt_p50_ms']:.1f} p99 "
                    f"{row['rtt_p99_ms']:.1f} ms, missing {row['pongs_missing']}, lost "
                    f"{row['bytes_lost']}, receivers {row['receivers_cpu_pct']:.0f} %"
                    + (f", haproxy {lb:.0f} %" if lb is not None else "")
                    + f", bots per node {row['bots_per_node']}, holds {row['holds']}")
    return {"ks": ks, "reps": reps, "duration": seconds, "chunk": 32 * KIB,
            "bitrate_bps": BITRATE_BPS, "nodes": NODES, "path": PATH, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", default="300,600", help="bots per run, comma-separated")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--tmpdir", help="where the receivers record")
    parser.add_argument("--out", help="write the JSON results here (default: stdout)")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.k.split(",") if k.strip()]
    result = time_fleet(ks, args.duration, args.reps, args.tmpdir)
    write_result("benchmarks.fleet", argv, result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
