"""The live view's cost: K bots recording with and without viewers.

``python -m benchmarks.live [--k 300] [--viewers 50] [--duration 40] [--reps 2] [--pin]
[--out FILE]`` runs ``serve --adapter asyncio`` (``--pin``: alone on CPU 0, the load generator
and the viewers on the other CPUs) against the same load (K bots x 4 Mbit/s of real fMP4, 32 KiB
chunks, a ping a second: the harness of part 3, ``benchmarks/many.py``) three ways, alternated
per rep: ``--live off``; the live view on (the default) with no viewer; and with V viewers on
the WebSocket relay (``/live/{bot}/ws``, one bot each, reading everything as fast as they can,
in a process of their own). Per run: the pong round trips, MB/s achieved and bytes lost, the
receiver's CPU and peak RSS; with viewers, the bytes and fragments they got and their skips.
Memory per viewer: the peak RSS with viewers minus without, over V.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from ._common import (
    BITRATE_BPS,
    KIB,
    ROOT,
    RunningServer,
    ServeWith,
    cpu_seconds,
    log,
    run_loadgen,
    write_result,
)


async def _view(port: int, bot_ids: list[str], seconds: float) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    totals = {"viewers": len(bot_ids), "connected": 0, "bytes": 0, "fragments": 0,
              "skips": 0, "headers": 0}

    async def one(bot_id: str) -> None:
        async with connect(f"ws://127.0.0.1:{port}/live/{bot_id}/ws", max_size=None,
                           open_timeout=30) as ws:
            totals["connected"] += 1
            async for message in ws:
                if isinstance(message, str):
                    doc = json.loads(message)
                    if doc["type"] == "skipped":
                        totals["skips"] += 1
                    elif doc["type"] == "header":
                        totals["headers"] += 1
                else:
                    totals["bytes"] += len(message)
                    totals["fragments"] += 1

    tasks = [asyncio.create_task(one(b)) for b in bot_ids]
    await asyncio.wait(tasks, timeout=seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return totals


#: ``--pin``: the receiver on this CPU, the load generator and the viewers on the others.
SERVER_CPU = 0


def pin_process(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` on ``cpus`` (the threads it starts later inherit it)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(task), cpus)


def run_one(k: int, viewers: int, live: bool, seconds: float, rep: int,
            tmp_root: str | None, pin: bool = False) -> dict[str, Any]:
    name = f"ours-asyncio-live-{'off' if not live else viewers}"
    spec = ServeWith(name, "ours", "asyncio", extra=() if live else ("--live", "off"))
    prefix = f"k{k}r{rep}v{viewers if live else 'x'}b"
    args = {"mode": "many", "bots": k, "chunk": 32 * KIB, "rate_bps": BITRATE_BPS,
            "duration": seconds, "ping_interval": 1.0, "seed": 1000 * k + rep,
            "id_prefix": prefix}
    with RunningServer(spec, tmp_root) as server:
        if pin:
            pin_process(server.pid, {SERVER_CPU})
        watching = None
        if viewers and live:  # connected before the bots: the relay waits for each stream
            ids = [f"{prefix}{i:05d}" for i in range(0, k, max(1, k // viewers))][:viewers]
            watching = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.live", "--view", str(server.port),
                 "--duration", str(seconds + 15), *ids],
                stdout=subprocess.PIPE, cwd=ROOT, text=True)
            time.sleep(1.0)
        cpu0 = cpu_seconds(server.pid)
        t0 = time.perf_counter()
        result = run_loadgen({**args, "host": "127.0.0.1", "port": server.port}, seconds + 600)
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(server.pid) - cpu0
        expected: dict[str, int] = result.pop("expected")
        got = server.wait_recorded(expected, timeout=60.0)
        seen: dict[str, Any] = {}
        if watching is not None:
            out, _ = watching.communicate(timeout=seconds + 120)
            seen = json.loads(out)
        row = {
            "k": k, "rep": rep, "live": live, "viewers": viewers if live else 0,
            "duration": seconds, "offered_mbps": result["offered_mbps"],
            "achieved_mbps": result["achieved_mbps"], "rtt_p50_ms": result["rtt_ms"]["p50"],
            "rtt_p99_ms": result["rtt_ms"]["p99"],
            "pongs_missing": result["pings"] - result["pongs"],
            "bytes_lost": sum(max(0, n - got.get(b, 0)) for b, n in expected.items()),
            "server_cpu_pct": 100.0 * cpu / wall, "seen": seen,
        }
        row["server_peak_rss_mib"] = server.stop()
    return row


def time_live(k: int, viewers: int, seconds: float, reps: int,
              tmp_root: str | None, pin: bool = False) -> dict[str, Any]:
    if pin:  # this process and its children (the load generator, the viewers) off the
        others = set(os.sched_getaffinity(0)) - {SERVER_CPU}  # receiver's CPU
        if not others:
            raise SystemExit("--pin needs at least two CPUs")
        os.sched_setaffinity(0, others)
    rows: list[dict[str, Any]] = []
    for rep in range(reps):
        for live, v in ((False, 0), (True, 0), (True, viewers)):
            row = run_one(k, v, live, seconds, rep, tmp_root, pin)
            rows.append(row)
            seen = row["seen"]
            log(f"live K={k} rep {rep + 1} {'off' if not live else f'on, {v} viewers'}: "
                f"{row['achieved_mbps']:.1f}/{row['offered_mbps']:.1f} MB/s, pong p50 "
                f"{row['rtt_p50_ms']:.1f} p99 {row['rtt_p99_ms']:.1f} ms, lost "
                f"{row['bytes_lost']}, cpu {row['server_cpu_pct']:.0f} %, peak RSS "
                f"{row['server_peak_rss_mib']:.0f} MiB"
                + (f"; viewers {seen['connected']}/{seen['viewers']} got "
                   f"{seen['bytes'] / 1e6:.0f} MB in {seen['fragments']} fragments, "
                   f"{seen['skips']} skips" if seen else ""))
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.live", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=300, help="bots per run")
    parser.add_argument("--viewers", type=int, default=50, help="relay viewers")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of load")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--tmpdir", help="where the receivers record")
    parser.add_argument("--pin", action="store_true",
                        help="the receiver alone on CPU 0; the load generator and the viewers "
                             "on the others (what the viewers cost the receiver, not the box)")
    parser.add_argument("--view", type=int, help=argparse.SUPPRESS)  # the viewers' process
    parser.add_argument("bots", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--out", help="write the JSON results here (default: stdout)")
    args = parser.parse_args(argv)
    if args.view is not None:
        print(json.dumps(asyncio.run(_view(args.view, args.bots, args.duration))))
        return 0
    result = time_live(args.k, args.viewers, args.duration, args.reps, args.tmpdir, args.pin)
    write_result("benchmarks.live", argv, result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
