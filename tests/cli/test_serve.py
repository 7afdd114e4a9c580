"""``meetstream-live serve`` as operators run it: ``--workers`` on every adapter, one receiver
per output directory (issue 17 bug 2), a port already served refused, a closed start."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from meetstream_live.adapters.asyncio import AsyncioBot
from meetstream_live.adapters.cli.sample import sample_bytes

LISTENING = re.compile(r"listening on ws://[^:]+:(\d+)/")


@contextmanager
def serve_process(
    tmp_path: Path, *argv: str, listeners: int = 1
) -> Iterator[tuple[int, Path, subprocess.Popen[bytes]]]:
    """``serve`` in a subprocess until the block ends (SIGTERM, unless it exited already);
    yields its port, log and process."""
    log_path = tmp_path / f"log-{time.monotonic_ns()}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meetstream_live.adapters.cli", "serve", *argv],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            found: list[str] = []
            while time.monotonic() < deadline and len(found) < listeners:
                text = log_path.read_text("utf-8", "replace")
                found = LISTENING.findall(text)
                assert proc.poll() is None, text
                time.sleep(0.05)
            assert len(found) >= listeners, log_path.read_text()
            (port,) = set(found)
            yield int(port), log_path, proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
    assert code == 0, log_path.read_text()


@contextmanager
def serving(tmp_path: Path, *argv: str, listeners: int = 1) -> Iterator[tuple[int, Path]]:
    """``serve`` in a subprocess until the block ends (SIGTERM); yields its port and log."""
    with serve_process(tmp_path, *argv, listeners=listeners) as (port, log, _proc):
        yield port, log


def stream(port: int, bot_id: str) -> None:
    data = sample_bytes()

    async def bot() -> None:
        client = await AsyncioBot.connect(f"ws://127.0.0.1:{port}/")
        await client.send_start(bot_id)
        for i in range(0, len(data), 32 * 1024):
            await client.send_chunk(data[i : i + 32 * 1024])
        await client.send_end(6.0)
        assert (await client.close()).code == 1000

    asyncio.run(bot())


@pytest.mark.parametrize("adapter", ["asyncio", "sync", "trio"])
@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="SO_REUSEPORT: Linux, BSD")
def test_workers_share_the_port_on_every_adapter(tmp_path: Path, adapter: str) -> None:
    output = tmp_path / "rec"
    argv = ("--port", "0", "--workers", "2", "--adapter", adapter, "--drain-timeout", "2s",
            "--output", str(output))
    with serving(tmp_path, *argv, listeners=2) as (port, log):
        for n in (1, 2, 3, 4):
            stream(port, f"w-bot-{n}")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(list(output.glob("*/*.mp4"))) < 4:
            time.sleep(0.05)
    text = log.read_text()
    assert "stopped (2 workers)" in text
    assert len(set(re.findall(r"worker (\d)/2", text))) == 2
    for n in (1, 2, 3, 4):
        (media,) = output.glob(f"w-bot-{n}/*.mp4")
        assert media.read_bytes() == sample_bytes()
        assert not list(output.glob(f"w-bot-{n}/*.part"))


def test_a_second_receiver_on_the_same_output_refuses_to_start(tmp_path: Path) -> None:
    output = tmp_path / "rec"
    with serving(tmp_path, "--port", "0", "--output", str(output)) as (port, _log):
        done = subprocess.run(
            [sys.executable, "-m", "meetstream_live.adapters.cli", "serve", "--port", "0",
             "--output", str(output)],
            capture_output=True, text=True, timeout=30, check=False,
        )
        assert done.returncode == 2, done.stderr
        assert "is in use by another receiver (pid" in done.stderr
        assert "Traceback" not in done.stderr
        recover = subprocess.run(
            [sys.executable, "-m", "meetstream_live.adapters.cli", "recover", str(output)],
            capture_output=True, text=True, timeout=30, check=False,
        )
        assert recover.returncode == 2 and "in use by another receiver" in recover.stderr
        stream(port, "still-fine")  # the first one is not disturbed
    (media,) = output.glob("still-fine/*.mp4")
    assert media.read_bytes() == sample_bytes()


def test_workers_refuse_a_port_already_served(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as other:  # an unrelated receiver
        taken = other.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "meetstream_live.adapters.cli", "serve", "--port",
             str(taken), "--workers", "2", "--output", str(tmp_path / "rec")],
            capture_output=True, text=True, timeout=30, check=False,
        )
    assert done.returncode == 2, done.stderr
    assert f"127.0.0.1:{taken} is already in use" in done.stderr


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="SO_REUSEPORT: Linux, BSD")
def test_workers_answer_metrics_for_the_whole_receiver(tmp_path: Path) -> None:
    """Every scrape reaches one worker; each answers with the sum, and no counter ever goes
    back from one scrape to the next (before: each worker's own numbers, so rate() saw
    traffic come and go)."""
    output = tmp_path / "rec"
    argv = ("--port", "0", "--workers", "2", "--output", str(output))
    bots = 8
    with serving(tmp_path, *argv, listeners=2) as (port, _log):
        last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        workers: set[str] = set()
        for n in range(bots):
            stream(port, f"m-bot-{n}")
            for _ in range(3):
                now = scrape(port)
                for key, value in now.items():
                    if key[0].endswith("_total") and key in last and "worker" not in dict(key[1]):
                        assert value >= last[key], key
                workers |= {dict(k[1]).get("worker", "?") for k in now
                            if k[0] == "process_open_fds"}
                last = now
        time.sleep(1.5)  # every worker has published its last numbers
        final = scrape(port)
    media = len(sample_bytes()) * bots
    assert final[("meetstream_live_media_received_bytes_total", ())] == media
    assert final[("meetstream_live_websocket_connections_total", ())] == bots
    assert final[("meetstream_live_recorded_bytes_total", ())] == media
    assert workers == {"0", "1", "2"}  # the parent and both workers, each labelled
