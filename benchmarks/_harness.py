"""One measured run: a fresh server subprocess, the load generator against it, the readings."""

from __future__ import annotations

import time
from typing import Any

from ._common import RunningServer, ServerSpec, cpu_seconds, run_loadgen


def measure(
    spec: ServerSpec, args: dict[str, Any], *, tmp_root: str | None, timeout: float
) -> dict[str, Any]:
    """Start ``spec``, run the load generator with ``args`` (host/port filled in), then wait
    for the recordings to be finished on disk and compare their sizes with what was sent."""
    with RunningServer(spec, tmp_root) as server:
        cpu0 = cpu_seconds(server.pid)
        t0 = time.perf_counter()
        result = run_loadgen({**args, "host": "127.0.0.1", "port": server.port}, timeout)
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(server.pid) - cpu0
        expected: dict[str, int] = result.pop("expected")
        got = server.wait_recorded(expected, timeout=60.0)
        lost = sum(max(0, n - got.get(bot, 0)) for bot, n in expected.items())
        extra = sum(max(0, got.get(bot, 0) - n) for bot, n in expected.items())
        result.update(
            server=spec.name,
            server_cpu_s=cpu,
            # CPU over the load generator's whole life (connects, load, drain), in % of one core.
            server_cpu_pct=100.0 * cpu / wall if wall > 0 else float("nan"),
            bytes_sent=sum(expected.values()),
            bytes_lost=lost,
            bytes_extra=extra,
            bots_missing=sum(1 for bot in expected if bot not in got),
        )
        result["server_peak_rss_mib"] = server.stop()
    return result
