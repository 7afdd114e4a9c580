"""The bus's cost and lag: K bots recording with and without ``--nats``.

``python -m benchmarks.bus [--k 300] [--duration 40] [--reps 2] [--out FILE]`` runs ``serve
--adapter asyncio`` against the same load (K bots x 4 Mbit/s of real fMP4, 32 KiB chunks, a
ping a second: the harness of part 3, ``benchmarks/many.py``), alternated per rep: without the
bus, and with ``--nats`` to a local nats-server with JetStream (the tests' ``nats_server``,
its store in ``$TMPDIR``). Per run: the pong round trips, MB/s achieved and bytes lost, the
receiver's CPU and the NATS server's, and, sampled from ``/metrics`` every half second, the
bus's lag (the age of the oldest message not acknowledged) and backlog; at the end, what was
published and dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
import urllib.request
from typing import Any

from ._common import (
    BITRATE_BPS,
    KIB,
    ROOT,
    RunningServer,
    ServeWith,
    cpu_seconds,
    log,
    percentile,
    run_loadgen,
    write_result,
)


def _bus_metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        lines = r.read().decode().splitlines()
    return {name.removeprefix("meetstream_live_"): float(value) for name, _, value in
            (line.partition(" ") for line in lines if line.startswith("meetstream_live_bus_"))}


def run_one(k: int, url: str, nats_pid: int | None, seconds: float, rep: int,
            tmp_root: str | None, more: tuple[str, ...] = ()) -> dict[str, Any]:
    extra = ("--nats", url, "--nats-max-bytes", "2g", *more) if url else ()
    spec = ServeWith(f"ours-asyncio{'-nats' if url else ''}", "ours", "asyncio", extra=extra)
    args = {"mode": "many", "bots": k, "chunk": 32 * KIB, "rate_bps": BITRATE_BPS,
            "duration": seconds, "ping_interval": 1.0, "seed": 1000 * k + rep,
            "id_prefix": f"k{k}r{rep}{'n' if url else 'x'}b"}
    with RunningServer(spec, tmp_root) as server:
        samples: list[dict[str, float]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                with contextlib.suppress(OSError):
                    samples.append(_bus_metrics(server.port))

        sampler = threading.Thread(target=sample, daemon=True)
        if url:
            sampler.start()
        cpu0 = cpu_seconds(server.pid)
        nats0 = cpu_seconds(nats_pid) if nats_pid else 0.0
        t0 = time.perf_counter()
        result = run_loadgen({**args, "host": "127.0.0.1", "port": server.port}, seconds + 600)
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(server.pid) - cpu0
        nats_cpu = (cpu_seconds(nats_pid) - nats0) if nats_pid else 0.0
        expected: dict[str, int] = result.pop("expected")
        got = server.wait_recorded(expected, timeout=60.0)
        final: dict[str, float] = {}
        if url:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                final = _bus_metrics(server.port)
                if final.get("bus_pending_messages", 1) == 0:
                    break
                time.sleep(0.5)
            stop.set()
            sampler.join(5)
        lags = [s["bus_lag_seconds"] for s in samples if "bus_lag_seconds" in s]
        backlog = [s["bus_pending_bytes"] for s in samples if "bus_pending_bytes" in s]
        row = {
            "k": k, "rep": rep, "nats": bool(url), "duration": seconds,
            "offered_mbps": result["offered_mbps"], "achieved_mbps": result["achieved_mbps"],
            "rtt_p50_ms": result["rtt_ms"]["p50"], "rtt_p99_ms": result["rtt_ms"]["p99"],
            "pongs_missing": result["pings"] - result["pongs"],
            "bytes_lost": sum(max(0, n - got.get(b, 0)) for b, n in expected.items()),
            "server_cpu_pct": 100.0 * cpu / wall, "nats_cpu_pct": 100.0 * nats_cpu / wall,
            "lag_s": {"p50": percentile(lags, 50), "p99": percentile(lags, 99),
                      "max": max(lags, default=float("nan"))},
            "backlog_mb_max": max(backlog, default=0.0) / 1e6,
            "published_mb": final.get("bus_published_bytes_total", 0.0) / 1e6,
            "dropped_messages": final.get("bus_dropped_messages_total", 0.0),
            "spilled_messages": final.get("bus_spilled_messages_total", 0.0),
        }
        row["server_peak_rss_mib"] = server.stop()
    return row


def time_bus(k: int, seconds: float, reps: int, tmp_root: str | None,
             more: tuple[str, ...] = (), only_bus: bool = False) -> dict[str, Any]:
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import services

    rows: list[dict[str, Any]] = []
    with services.nats_server() as ns:
        pid = ns._proc.pid if ns._proc is not None else None
        for rep in range(reps):
            for url in (ns.url,) if only_bus else ("", ns.url):
                row = run_one(k, url, pid, seconds, rep, tmp_root, more)
                row["serve_args"] = list(more) if url else []
                rows.append(row)
                log(f"bus K={k} rep {rep + 1} {'--nats' if url else 'no bus'}: "
                    f"{row['achieved_mbps']:.1f}/{row['offered_mbps']:.1f} MB/s, pong p50 "
                    f"{row['rtt_p50_ms']:.1f} p99 {row['rtt_p99_ms']:.1f} ms, lost "
                    f"{row['bytes_lost']}, serve cpu {row['server_cpu_pct']:.0f} %"
                    + (f", nats cpu {row['nats_cpu_pct']:.0f} %, lag p50 "
                       f"{row['lag_s']['p50']:.2f} p99 {row['lag_s']['p99']:.2f} max "
                       f"{row['lag_s']['max']:.2f} s, backlog max "
                       f"{row['backlog_mb_max']:.1f} MB, published "
                       f"{row['published_mb']:.0f} MB, dropped {row['dropped_messages']:.0f}, "
                       f"spilled {row['spilled_messages']:.0f}" if url else ""))
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=300, help="bots per run")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of load")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--tmpdir", help="where the receivers record")
    parser.add_argument("--serve-args", default="",
                        help="more serve options for the runs with the bus")
    parser.add_argument("--only-bus", action="store_true", help="only the runs with the bus")
    parser.add_argument("--out", help="write the JSON results here (default: stdout)")
    args = parser.parse_args(argv)
    result = time_bus(args.k, args.duration, args.reps, args.tmpdir,
                      tuple(args.serve_args.split()), args.only_bus)
    write_result("benchmarks.bus", argv, result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
