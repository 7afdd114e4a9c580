"""What the metrics cost where it counts: per event on the event loop, per batch for the
connection timer, per scrape (one process, and the sum of several with ``--workers``).

``python -m benchmarks.metrics [--n 200000] [--reps 5] [--out FILE]`` prints a Markdown table
(the best of ``reps`` runs, per call) and writes the raw numbers as JSON. The choice it backs:
media chunks are counted by hand (``Metrics._media``), everything else with
``prometheus_client``'s objects.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram as PromHistogram

from meetstream_live import Disconnected, LatencyPing, MediaChunk
from meetstream_live.adapters import ConnectionInfo, Handler
from meetstream_live.adapters.recording.metrics import CHUNK_BUCKETS, Metrics
from meetstream_live.adapters.recording.metrics_share import merge


def _best(run: Callable[[], None], n: int, reps: int) -> float:
    """Seconds per call: the best of ``reps`` timings of ``n`` calls."""
    best = float("inf")
    for _ in range(reps):
        began = time.perf_counter()
        for _ in range(n):
            run()
        best = min(best, (time.perf_counter() - began) / n)
    return best


def time_observe_chunk(n: int, reps: int) -> float:
    metrics = Metrics(process=False)
    chunk = MediaChunk(b"x" * 32768, 0)
    return _best(lambda: metrics.observe(chunk), n, reps)


def time_prometheus_client_chunk(n: int, reps: int) -> float:
    """The alternative: the same two numbers with prometheus_client's own objects."""
    registry = CollectorRegistry()
    total = PromCounter("media_bytes", "", registry=registry)
    sizes = PromHistogram("chunk_bytes", "", buckets=CHUNK_BUCKETS, registry=registry)
    data = b"x" * 32768

    def observe() -> None:
        total.inc(len(data))
        sizes.observe(len(data))

    return _best(observe, n, reps)


def time_observe_ping(n: int, reps: int) -> float:
    metrics = Metrics(process=False)
    ping = LatencyPing(1, 1_000, 1_040, "b")
    return _best(lambda: metrics.observe(ping), n, reps)


def time_timed_dispatch(n: int, reps: int) -> float:
    """Metrics.track's wrapper, per batch, minus the bare handler's cost."""
    metrics = Metrics(process=False)
    bare = Handler()
    wrapped = metrics.track(lambda info: Handler())(ConnectionInfo("p", "/", "", (), False))
    batch = [MediaChunk(b"x", 0)] * 4
    plain = _best(lambda: bare.dispatch(batch), n, reps)
    timed = _best(lambda: wrapped.dispatch(batch), n, reps)
    return max(0.0, timed - plain)


def _busy(seed: int) -> Metrics:
    rng = random.Random(seed)
    metrics = Metrics()
    for _ in range(2000):
        metrics.observe(MediaChunk(b"x" * rng.randrange(1, 1 << 20), 0))
        metrics.disconnects.inc(label=str(rng.choice((1000, 1001, 1006, 1011))))
    metrics.observe(Disconnected(1000, "", True))
    return metrics


def time_render(n: int, reps: int) -> float:
    metrics = _busy(1)
    return _best(metrics.render, max(1, n // 1000), reps)


def time_merge_4_workers(n: int, reps: int) -> float:
    texts = [(w, True, _busy(w).collect_own().decode()) for w in range(4)]
    return _best(lambda: merge(texts), max(1, n // 1000), reps)


TIMINGS = {
    "observe(MediaChunk), by hand": time_observe_chunk,
    "the same with prometheus_client's Counter + Histogram": time_prometheus_client_chunk,
    "observe(LatencyPing), prometheus_client": time_observe_ping,
    "Metrics.track, per handler batch": time_timed_dispatch,
    "render /metrics, one process": time_render,
    "render /metrics, sum of 4 processes (parse + merge)": time_merge_4_workers,
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.metrics")
    parser.add_argument("--n", type=int, default=200_000, help="calls per timing")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="raw results (JSON)")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"python": sys.version.split()[0], "n": args.n,
                               "reps": args.reps, "seconds_per_call": {}}
    print("| what | per call |\n|---|---|")
    for name, timing in TIMINGS.items():
        seconds = timing(args.n, args.reps)
        results["seconds_per_call"][name] = seconds
        shown = f"{seconds * 1e6:.2f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"
        print(f"| {name} | {shown} |", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
