"""Part 2: one bot, flat out, over loopback, against every server.

1 GiB in 64 KiB chunks and 256 MiB in 4 KiB chunks (``--quick``: 128 MiB and 32 MiB), a ping
every 100 ms. Each server is a fresh subprocess per run; runs alternate between servers.
"""

from __future__ import annotations

from typing import Any

from ._common import ALL_SERVERS, KIB, MIB, available, log, median
from ._harness import measure

CASES_FULL = ((64 * KIB, 1024 * MIB), (4 * KIB, 256 * MIB))
CASES_QUICK = ((64 * KIB, 256 * MIB), (4 * KIB, 64 * MIB))


def time_flat(
    servers: list[str] | None, quick: bool, reps: int, tmp_root: str | None
) -> dict[str, Any]:
    specs = [s for s in ALL_SERVERS if servers is None or s.name in servers]
    skipped = {s.name: why for s in specs if (why := available(s)) is not None}
    specs = [s for s in specs if s.name not in skipped]
    rows: list[dict[str, Any]] = []
    for chunk, total in CASES_QUICK if quick else CASES_FULL:
        runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in specs}
        for rep in range(reps):
            for spec in specs:
                args = {"mode": "flat", "chunk": chunk, "total": total, "ping_interval": 0.1,
                        "bot_id": f"flat{rep:02d}"}
                try:
                    result = measure(spec, args, tmp_root=tmp_root, timeout=900)
                except Exception as exc:  # a server that cannot run is reported, not fatal
                    log(f"flat {chunk // KIB} KiB {spec.name} rep {rep + 1}: FAILED {exc}")
                    continue
                runs[spec.name].append(result)
                log(f"flat {chunk // KIB} KiB {spec.name} rep {rep + 1}: "
                    f"{result['mbps']:.0f} MB/s, pong p99 {result['rtt_ms']['p99']:.1f} ms, "
                    f"lost {result['bytes_lost']}")
        for name, results in runs.items():
            if not results:
                continue
            rows.append({
                "server": name, "chunk": chunk, "total": total,
                "mbps": median([r["mbps"] for r in results]),
                "runs_mbps": [r["mbps"] for r in results],
                "rtt_p50_ms": median([r["rtt_ms"]["p50"] for r in results]),
                "rtt_p99_ms": median([r["rtt_ms"]["p99"] for r in results]),
                "pings": sum(r["pings"] for r in results),
                "pongs": sum(r["pongs"] for r in results),
                "bytes_lost": max(r["bytes_lost"] for r in results),
                "server_cpu_pct": median([r["server_cpu_pct"] for r in results]),
                "server_peak_rss_mib": median([r["server_peak_rss_mib"] for r in results]),
                "loadgen_send_mbps": median([r["send_mbps"] for r in results]),
            })
    return {"reps": reps, "rows": rows, "skipped": skipped}
