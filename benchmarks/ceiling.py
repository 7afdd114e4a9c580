"""Part 4: what the machine allows, measured in the same run.

* ``tcp_sink``: the load generator's flat mode against a raw TCP sink (``recv_into``, discard):
  the loopback ceiling and the load generator's own ceiling at once, for 64 KiB and 4 KiB
  chunks; and the many-bots mode at the largest K of part 3 (can it offer that load at all?).
* ``disk``: a sequential write of the same size in 1 MiB writes then ``fsync``, in the
  directory the servers record to.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from ._common import BITRATE_BPS, KIB, MIB, ROOT, log, mb_per_s, median, run_loadgen


def time_tcp_sink(args: dict[str, Any]) -> dict[str, Any]:
    """The load generator (``args``) against a fresh sink process."""
    sink = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.sink", "0"], stdout=subprocess.PIPE, text=True,
        cwd=ROOT,
    )
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline().split()[1])
        return run_loadgen({**args, "host": "127.0.0.1", "port": port, "half_close": True}, 900)
    finally:
        sink.terminate()
        sink.wait()


def time_disk_write(total: int, tmp_root: str | None) -> float:
    block = os.urandom(MIB)
    fd, path = tempfile.mkstemp(prefix="bench-disk-", dir=tmp_root)
    try:
        t0 = time.perf_counter()
        for _ in range(total // MIB):
            os.write(fd, block)
        os.fsync(fd)
        return time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(path)


def run(quick: bool, reps: int, tmp_root: str | None) -> dict[str, Any]:
    cases = ((64 * KIB, (256 if quick else 1024) * MIB), (4 * KIB, (64 if quick else 256) * MIB))
    sinks: list[dict[str, Any]] = []
    for chunk, total in cases:
        results = []
        for rep in range(reps):
            result = time_tcp_sink(
                {"mode": "flat", "chunk": chunk, "total": total, "ping_interval": 0.1})
            results.append(result)
            log(f"ceiling tcp sink {chunk // KIB} KiB rep {rep + 1}: {result['mbps']:.0f} MB/s")
        sinks.append({
            "chunk": chunk, "total": total, "mbps": median([r["mbps"] for r in results]),
            "runs_mbps": [r["mbps"] for r in results],
            "loadgen_cpu_s": median([r["loadgen_cpu_s"] for r in results]),
        })
    # The many-bots load generator at the largest K of part 3, into the sink: its own ceiling.
    from .many import KS_FULL, KS_QUICK

    k = max(KS_QUICK if quick else KS_FULL)
    duration = 4.0 if quick else 20.0
    many_runs = []
    for rep in range(reps):
        result = time_tcp_sink({"mode": "many", "bots": k, "chunk": 32 * KIB,
                                "rate_bps": BITRATE_BPS, "duration": duration,
                                "ping_interval": 1.0, "seed": rep})
        many_runs.append(result)
        log(f"ceiling tcp sink K={k} rep {rep + 1}: {result['achieved_mbps']:.0f}/"
            f"{result['offered_mbps']:.0f} MB/s, loadgen CPU {result['loadgen_cpu_pct']:.0f} %")
    many = {
        "k": k, "duration": duration, "offered_mbps": many_runs[0]["offered_mbps"],
        "achieved_mbps": median([r["achieved_mbps"] for r in many_runs]),
        "achieved_ratio": median([r["achieved_ratio"] for r in many_runs]),
        "loadgen_cpu_pct": median([r["loadgen_cpu_pct"] for r in many_runs]),
    }
    disk_total = (256 if quick else 1024) * MIB
    disk = []
    for rep in range(reps):
        seconds = time_disk_write(disk_total, tmp_root)
        disk.append(mb_per_s(disk_total, seconds))
        log(f"ceiling disk write rep {rep + 1}: {disk[-1]:.0f} MB/s")
    return {
        "tcp_sink": sinks,
        "tcp_sink_many": many,
        "disk": {"total": disk_total, "mbps": median(disk), "runs_mbps": disk,
                 "where": tmp_root or tempfile.gettempdir()},
    }
