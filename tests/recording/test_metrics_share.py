"""``/metrics`` with ``--workers``: the sum of every process's numbers, whichever answers, with
counters that never go back (the processes that exited included) and gauges of the living."""

from __future__ import annotations

import random
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from meetstream_live import Accepted, Disconnected, MediaChunk
from meetstream_live.adapters.recording.metrics import Metrics
from meetstream_live.adapters.recording.metrics_share import merge

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def worker(chunks: int, connections: int, free: float = 100.0) -> str:
    metrics = Metrics()
    for _ in range(connections):
        metrics.observe(Accepted("/", "", ()))
    for _ in range(chunks):
        metrics.observe(MediaChunk(b"x" * 1000, 0))
    metrics.disk_low.set(1 if free < 10 else 0)
    return metrics.collect_own().decode()


def test_counters_sum_over_every_process_gauges_over_the_living() -> None:
    merged = samples(merge([(1, True, worker(3, 2)), (2, True, worker(5, 1, free=5.0)),
                            (3, False, worker(7, 4))]).decode())
    assert merged[("meetstream_live_media_received_bytes_total", ())] == 15_000  # dead too
    assert merged[("meetstream_live_websocket_connections_total", ())] == 7
    assert merged[("meetstream_live_websocket_connections_active", ())] == 3  # the living
    assert merged[("meetstream_live_disk_low", ())] == 1  # the largest, not a sum
    chunks = "meetstream_live_media_chunk_size_bytes"
    assert merged[(f"{chunks}_count", ())] == 15
    assert merged[(f"{chunks}_bucket", (("le", "1024.0"),))] == 15
    # Per process, labelled, the living only.
    workers = {dict(labels).get("worker") for (name, labels) in merged
               if name == "process_resident_memory_bytes"}
    assert workers == {"1", "2"}
    assert ("meetstream_live_build_info", ()) not in merged  # it has labels
    (build,) = [k for k in merged if k[0] == "meetstream_live_build_info"]
    assert merged[build] == 1


def test_counters_never_go_back_whichever_process_answers(tmp_path: Path) -> None:
    """Three processes publish; scrapes go to any of them, in any order: every counter of
    the answer is at least what the previous answer said."""
    rng = random.Random(7)
    processes = [Metrics() for _ in range(3)]
    for number, metrics in enumerate(processes):
        metrics.share_with(tmp_path, number)  # <number>-<pid>.prom
    try:
        last: Samples = {}
        for _ in range(40):
            for metrics in processes:
                for _ in range(rng.randrange(3)):
                    metrics.observe(MediaChunk(b"y" * rng.randrange(1, 5000), 0))
                    metrics.observe(Accepted("/", "", ()))
                    metrics.observe(Disconnected(1000, "", True))
            answer = samples(rng.choice(processes).render())
            for key, value in answer.items():
                if key[0].endswith(("_total", "_count", "_bucket", "_sum")) and key in last \
                        and not key[0].startswith(("process_", "python_")):
                    assert value >= last[key], key
            last = answer
        for metrics in processes:  # the others' numbers are at most a second old: now
            assert metrics.share is not None
            metrics.share.publish()
        total = sum(int(m.media_bytes.value()) for m in processes)
        answer = samples(processes[0].render())
        assert answer[("meetstream_live_media_received_bytes_total", ())] == total
    finally:
        for metrics in processes:
            assert metrics.share is not None
            metrics.share.close()
