"""Health that tells the truth: ``/healthz`` is liveness, ``/readyz`` is 503 with the reason
while draining, at the connection limit, when the disk guard stopped writing, or when a
feature's check fails; the shutdown delay keeps serving while ``/readyz`` says draining."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from meetstream_live import Accepted, Disconnected, HTTPRequest
from meetstream_live.adapters.cli.health import Health
from meetstream_live.adapters.recording.diskguard import DiskGuard
from meetstream_live.adapters.recording.metrics import Metrics

from .test_serve import serve_process, stream


def get(health: Health, path: str, method: str = "GET") -> tuple[int, dict[str, object]]:
    answer = health.answer(HTTPRequest(method, path, path, "", ()))
    return answer.status, (json.loads(answer.body) if answer.body else {})


def test_ready_until_the_connection_limit() -> None:
    metrics = Metrics()
    health = Health(metrics, max_connections=2)
    assert get(health, "/readyz")[0] == 200
    for _ in range(2):
        metrics.observe(Accepted("/", "", ()))
    status, body = get(health, "/readyz")
    assert status == 503 and body["failing"] == ["connections"]
    assert body["checks"]["connections"] == {  # type: ignore[index]
        "ok": False, "active": 2, "limit": 2,
        "why": "at --max-connections: new upgrades get 503"}
    metrics.observe(Disconnected(1000, "", True))
    assert get(health, "/readyz")[0] == 200


def test_not_ready_while_the_disk_guard_stops_writing(tmp_path: Path) -> None:
    free = [10**9]
    guard = DiskGuard(tmp_path, low_bytes=1000, free=lambda: free[0])
    health = Health(Metrics(), max_connections=10, guard=guard)
    guard.check()
    assert get(health, "/readyz")[0] == 200
    free[0] = 10
    guard.check()
    status, body = get(health, "/readyz")
    assert status == 503 and body["failing"] == ["disk"]
    assert get(health, "/healthz")[0] == 200  # alive all the same


def test_the_features_checks_and_a_broken_one() -> None:
    def upload() -> tuple[bool, str]:
        return False, "the bucket does not answer"

    def broken() -> tuple[bool, str]:
        raise RuntimeError("oops")

    health = Health(Metrics(), max_connections=10, checks=[upload, broken])
    status, body = get(health, "/readyz")
    assert status == 503 and body["failing"] == ["upload", "broken"]
    checks = body["checks"]
    assert checks["upload"] == {"ok": False, "why": "the bucket does not answer"}  # type: ignore[index]
    assert "RuntimeError('oops')" in checks["broken"]["why"]  # type: ignore[index]


def test_draining_head_and_methods() -> None:
    health = Health(Metrics(), max_connections=10)
    health.draining = True
    assert get(health, "/readyz")[1]["failing"] == ["draining"]
    answer = health.answer(HTTPRequest("HEAD", "/readyz", "/readyz", "", ()))
    assert (answer.status, answer.body) == (503, b"")
    assert health.answer(HTTPRequest("POST", "/readyz", "/readyz", "", ())).status == 405
    status, body = get(health, "/healthz")
    assert status == 200 and body["status"] == "ok" and body["version"]


def http(port: int, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("adapter", ["asyncio", "sync", "trio"])
def test_sigterm_with_a_shutdown_delay_says_draining_while_serving(
    tmp_path: Path, adapter: str
) -> None:
    output = tmp_path / "rec"
    argv = ("--port", "0", "--adapter", adapter, "--shutdown-delay", "3s", "--drain-timeout",
            "1s", "--output", str(output))
    with serve_process(tmp_path, *argv) as (port, log, proc):
        assert http(port, "/readyz")[0] == 200
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while http(port, "/readyz")[0] != 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status, body = http(port, "/readyz")
        assert status == 503 and body["failing"] == ["draining"]
        assert http(port, "/healthz")[0] == 200
        stream(port, "late-bot")  # still served during the delay
        began = time.monotonic()
        assert proc.wait(20) == 0, log.read_text()
        assert time.monotonic() - began < 10
    (media,) = output.glob("late-bot/*.mp4")
    assert media.stat().st_size > 0
    assert "SIGTERM: /readyz says draining" in log.read_text()


def test_the_lag_probe_measures_the_loop_it_runs_on() -> None:
    import asyncio

    import trio

    from meetstream_live.adapters.cli.health import start_lag_probe

    metrics = Metrics()
    assert not start_lag_probe(metrics)  # no loop here

    async def blocked_asyncio() -> None:
        assert start_lag_probe(metrics, interval=0.01)
        await asyncio.sleep(0.02)
        time.sleep(0.2)  # the loop is held: the next tick is late
        await asyncio.sleep(0.05)

    asyncio.run(blocked_asyncio())
    lag = "meetstream_live_event_loop_lag_seconds"
    assert metrics.loop_lag.count() >= 2
    text = metrics.render()
    assert f'{lag}_bucket{{le="0.1"}}' in text
    late = [line for line in text.splitlines() if line.startswith(f"{lag}_sum")]
    assert float(late[0].split()[1]) >= 0.15

    trio_metrics = Metrics()

    async def trio_main() -> None:
        assert start_lag_probe(trio_metrics, interval=0.01)
        await trio.sleep(0.1)

    trio.run(trio_main)
    assert trio_metrics.loop_lag.count() >= 3
