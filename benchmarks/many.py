"""Part 3: many bots at a real bitrate.

K bots x 4 Mbit/s (1080p25), 32 KiB chunks, a ping a second, for K in 100, 300, 600, 1000,
1500 (``--quick``: 100, 300, 1000 for 4 s). Per run: achieved vs offered throughput, pong
round trip p50/p99, bytes lost, server CPU and peak RSS. A server *holds* K when its median pong
p99 is under 100 ms, every ping was answered (but those of the last second, whose pong may lose
the race with the close that follows), no byte was lost and it took >= 99 % of the
throughput scheduled in the window.
"""

from __future__ import annotations

from typing import Any

from ._common import ALL_SERVERS, BITRATE_BPS, KIB, available, log, median
from ._harness import measure

KS_FULL = (100, 300, 600, 1000, 1500)
KS_QUICK = (100, 300, 1000)
P99_LIMIT_MS = 100.0


def holds(row: dict[str, Any]) -> bool:
    return bool(
        row["rtt_p99_ms"] < P99_LIMIT_MS and row["bytes_lost"] == 0
        and row.get("pongs_missing_early", row["pongs_missing"]) == 0
        and row["achieved_ratio"] >= 0.99
    )


def time_many(
    servers: list[str] | None, quick: bool, reps: int, tmp_root: str | None,
    ks: tuple[int, ...] | None = None, duration: float | None = None, payload: str = "fmp4",
) -> dict[str, Any]:
    specs = [s for s in ALL_SERVERS if servers is None or s.name in servers]
    skipped = {s.name: why for s in specs if (why := available(s)) is not None}
    specs = [s for s in specs if s.name not in skipped]
    ks = ks or (KS_QUICK if quick else KS_FULL)
    seconds = duration or (4.0 if quick else 20.0)
    rows: list[dict[str, Any]] = []
    for k in ks:
        runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in specs}
        for rep in range(reps):
            for spec in specs:
                args = {"mode": "many", "bots": k, "chunk": 32 * KIB, "rate_bps": BITRATE_BPS,
                        "duration": seconds, "ping_interval": 1.0, "seed": 1000 * k + rep,
                        "id_prefix": f"k{k}r{rep}b", "payload": payload}
                try:
                    result = measure(spec, args, tmp_root=tmp_root, timeout=seconds + 600)
                except Exception as exc:  # a server that falls over is a result too
                    log(f"many K={k} {spec.name} rep {rep + 1}: FAILED {exc}")
                    continue
                runs[spec.name].append(result)
                log(f"many K={k} {payload} {spec.name} rep {rep + 1}: "
                    f"{result['achieved_mbps']:.1f}/{result['offered_mbps']:.1f} MB/s, "
                    f"p99 {result['rtt_ms']['p99']:.1f} ms, pongs {result['pongs']}/"
                    f"{result['pings']}, lost {result['bytes_lost']}, "
                    f"cpu {result['server_cpu_pct']:.0f} %, "
                    f"loadgen {result['loadgen_cpu_pct']:.0f} %")
        for name, results in runs.items():
            if not results:
                rows.append({"server": name, "k": k, "failed": True})
                continue
            row = {
                "server": name, "k": k, "payload": payload, "duration": seconds,
                "runs": len(results),
                "offered_mbps": results[0]["offered_mbps"],
                "achieved_mbps": median([r["achieved_mbps"] for r in results]),
                # Bytes written / bytes due by the schedule in the window (same run).
                "achieved_ratio": median([r["achieved_ratio"] for r in results]),
                "rtt_p50_ms": median([r["rtt_ms"]["p50"] for r in results]),
                "rtt_p99_ms": median([r["rtt_ms"]["p99"] for r in results]),
                "runs_rtt_p99_ms": [r["rtt_ms"]["p99"] for r in results],
                "pongs_missing": max(r["pings"] - r["pongs"] for r in results),
                "pongs_missing_early": max(
                    r.get("pongs_missing_before_last_second", r["pings"] - r["pongs"])
                    for r in results),
                "bytes_lost": max(r["bytes_lost"] for r in results),
                "bots_missing": max(r["bots_missing"] for r in results),
                "server_cpu_pct": median([r["server_cpu_pct"] for r in results]),
                "server_peak_rss_mib": median([r["server_peak_rss_mib"] for r in results]),
                "loadgen_cpu_pct": median([r["loadgen_cpu_pct"] for r in results]),
                "connect_failures": max(r["connect_failures"] for r in results),
            }
            row["holds"] = holds(row)
            rows.append(row)
    best: dict[str, int | None] = {}
    for spec in specs:
        held = [r["k"] for r in rows if r["server"] == spec.name and r.get("holds")]
        best[spec.name] = max(held) if held else None
    return {
        "reps": reps, "ks": list(ks), "duration": seconds, "chunk": 32 * KIB,
        "bitrate_bps": BITRATE_BPS, "payload": payload, "p99_limit_ms": P99_LIMIT_MS, "rows": rows,
        "max_k_held": best, "skipped": skipped,
    }
