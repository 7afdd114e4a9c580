"""The handler examples of ``docs/adapters.md``: each code block in the doc is its file, and each
file runs: it serves a stream over a real socket, answers a ping, writes the stream's bytes to a
file and shuts down gracefully on SIGTERM.

Every wait has a timeout: a broken example fails, it never hangs.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest
from websockets.sync.client import connect

import meetstream_live

DOCS = Path(__file__).resolve().parents[2] / "docs"
ADAPTERS = ["asyncio", "sync", "trio", "asgi"]
TIMEOUT = 5.0
#: A few hundred KB of media, in several messages, no two alike.
MEDIA = [bytes([i]) * 1000 + bytes(range(256)) * 400 for i in range(3)]


def _example(name: str) -> Path:
    return DOCS / "examples" / f"handler_{name}.py"


def _env() -> dict[str, str]:
    """The environment for a child Python: it must import the same ``meetstream_live``."""
    env = dict(os.environ)
    root = str(Path(meetstream_live.__file__).parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Lines:
    """A child's stdout, read by a thread (so a full pipe never blocks the child)."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def next(self, timeout: float) -> str:
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no output within {timeout} s")
        if line is None:
            pytest.fail("the example exited without printing its port")
        return line

    def rest(self, timeout: float) -> str:
        """Everything up to EOF (call once the child has exited)."""
        self._thread.join(timeout)
        lines: list[str] = []
        while not self._queue.empty():
            line = self._queue.get_nowait()
            if line is not None:
                lines.append(line)
        return "".join(lines)


# ---------------------------------------------------------------- the doc shows the files


SHOWN_FILES = [f"handler_{name}.py" for name in ADAPTERS] + ["media_to_files.py"]


@pytest.mark.parametrize("file", SHOWN_FILES)
def test_doc_block_is_the_file(file: str) -> None:
    text = (DOCS / "adapters.md").read_text(encoding="utf-8")
    marker = re.escape(f"<!-- the block below is docs/examples/{file}")
    blocks = re.findall(marker + r"[^>]*-->\n```python\n(.*?)```\n", text, re.DOTALL)
    assert len(blocks) == 1, f"adapters.md should show {file} exactly once"
    assert blocks[0] == (DOCS / "examples" / file).read_text(encoding="utf-8")


# ---------------------------------------------------------------- the files run


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM ends a Windows process at once")
@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", ADAPTERS)
def test_example_records_a_stream(name: str, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(_example(name)), "0", str(out_dir)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=_env(),
        )
    try:
        assert proc.stdout is not None
        lines = _Lines(proc.stdout)
        port = int(lines.next(2 * TIMEOUT))
        url = f"ws://127.0.0.1:{port}/"
        with connect(url, max_size=None, open_timeout=TIMEOUT, close_timeout=TIMEOUT) as ws:
            ws.send(json.dumps({"type": "video_stream_start", "bot_id": "bot-1", "codec": "h264"}))
            for chunk in MEDIA:
                ws.send(chunk)
            sent_at = _now_ms()
            ping = {"type": "video_latency_ping", "seq": 7, "sent_at_ms": sent_at}
            ws.send(json.dumps({**ping, "bot_id": "bot-1"}))
            pong = json.loads(ws.recv(timeout=TIMEOUT))
            answered = _now_ms()
            ws.send(json.dumps({"type": "video_stream_end", "duration_seconds": 1.5}))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=2 * TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
    errors = stderr_path.read_text(encoding="utf-8", errors="replace")
    assert proc.returncode == 0, errors

    received_at = pong.pop("server_received_at_ms")
    assert pong == {**ping, "type": "video_latency_pong", "bot_id": "bot-1"}
    assert sent_at <= received_at <= answered

    (recording,) = out_dir.glob("*.mp4")
    assert recording.read_bytes() == b"".join(MEDIA)
    printed = lines.rest(TIMEOUT)
    assert re.search(r": ping 7: one-way latency -?\d+ ms\n", printed), printed
    assert "disconnected, code 1000, clean True" in printed, printed
