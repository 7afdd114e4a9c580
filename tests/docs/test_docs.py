"""The docs must not lie: generated diagrams are current, the state edges written down for
``ConnectionState`` are the ones the code takes, and the "drive the core" example is the file
that runs."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from websockets.sync.client import connect
from wsproto.frame_protocol import FrameProtocol

import meetstream_live
from meetstream_live import (
    ConnectionState,
    LocalProtocolError,
    ServerConfig,
    ServerConnection,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
SCRIPT = DOCS / "make_state_diagram.py"
EXAMPLE = DOCS / "examples" / "drive_the_core.py"
TIMEOUT = 5.0


def _env() -> dict[str, str]:
    """The environment for a child Python: it must import the same ``meetstream_live``."""
    env = dict(os.environ)
    root = str(Path(meetstream_live.__file__).parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="module")
def diagrams() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_state_diagram", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- (a) state diagrams


def test_state_diagram_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=2 * TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_check_detects_a_stale_doc(diagrams: ModuleType, tmp_path: Path) -> None:
    doc = tmp_path / "protocol.md"
    current = (DOCS / "protocol.md").read_text(encoding="utf-8")
    stale = current.replace(diagrams.BEGIN, diagrams.BEGIN + "\nan edge that is gone\n")
    doc.write_text(stale, encoding="utf-8")
    assert diagrams.main(["--check", "--doc", str(doc)]) == 1
    assert diagrams.main(["--doc", str(doc)]) == 0
    assert doc.read_text(encoding="utf-8") == current
    doc.write_text("no markers here\n", encoding="utf-8")
    assert diagrams.main(["--check", "--doc", str(doc)]) == 2


def _client_frames() -> FrameProtocol:
    return FrameProtocol(client=True, extensions=[])


_UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
_PING = json.dumps({"type": "video_latency_ping", "seq": 1, "sent_at_ms": 2})


def _send_response(conn: ServerConnection, now: int) -> None:
    if conn.state is ConnectionState.HTTP_RESPONSE:
        conn.send_response(200, b"ok\n")
    else:
        with pytest.raises(LocalProtocolError):
            conn.send_response(200, b"ok\n")


#: Everything that can happen to a server connection, each as one call.
ACTIONS: dict[str, Callable[[ServerConnection, int], object]] = {
    "upgrade request": lambda c, t: c.receive_data(_UPGRADE, t),
    "plain HTTP request": lambda c, t: c.receive_data(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", t
    ),
    "bad request": lambda c, t: c.receive_data(b"\x00 nonsense\r\n\r\n", t),
    "EOF": lambda c, t: c.receive_data(b"", t),
    "deadline": lambda c, t: c.handle_timeout(t),
    "close()": lambda c, t: c.close(1001, "bye", now_ms=t),
    "send_response()": _send_response,
    "bot close frame": lambda c, t: c.receive_data(bytes(_client_frames().close(1000, "bye")), t),
    "unmasked frame": lambda c, t: c.receive_data(b"\x81\x02hi", t),
    "latency ping": lambda c, t: c.receive_data(bytes(_client_frames().send_data(_PING)), t),
    "early binary flood": lambda c, t: c.receive_data(
        bytes(_client_frames().send_data(b"12345678", fin=True)), t
    ),
}


def test_connection_edges_match_the_code(diagrams: ModuleType) -> None:
    """Every state change seen over all 3-step runs is in CONNECTION_EDGES, and vice versa."""
    config = ServerConfig(http_paths=frozenset({"/healthz"}), max_early_bytes=4)
    seen: set[tuple[ConnectionState, ConnectionState]] = set()
    for run in itertools.product(ACTIONS.values(), repeat=3):
        conn = ServerConnection(config, now_ms=0)
        for step, action in enumerate(run, start=1):
            before = conn.state
            action(conn, step * 10**9)  # far apart: every deadline has passed
            if conn.state is not before:
                seen.add((before, conn.state))
    declared = {(source, target) for source, _, target in diagrams.CONNECTION_EDGES}
    assert seen == declared
    assert {state for edge in declared for state in edge} == set(ConnectionState)


# ---------------------------------------------------------------- (b) the example is the file


def test_architecture_example_is_the_file() -> None:
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    match = re.search(
        r"<!-- the block below is docs/examples/drive_the_core\.py[^>]*-->\n```python\n(.*?)```\n",
        text,
        re.DOTALL,
    )
    assert match is not None, "architecture.md lost its drive_the_core example"
    assert match.group(1) == EXAMPLE.read_text(encoding="utf-8")


# ---------------------------------------------------------------- (c) the example runs


def _first_line(proc: subprocess.Popen[str]) -> str:
    """The child's first stdout line, or a failure after TIMEOUT (never a hang)."""
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=TIMEOUT)
    except queue.Empty:
        pytest.fail("the example printed no port")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_drive_the_core_example_serves_a_stream(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    init, fragments = b"ftyp+moov " * 10, [b"moof+mdat %d " % i * 1000 for i in range(5)]
    ping = {"type": "video_latency_ping"}
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "0", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        port = int(_first_line(proc))
        url = f"ws://127.0.0.1:{port}/"
        with connect(url, open_timeout=TIMEOUT, close_timeout=TIMEOUT) as ws:
            ws.send(init)  # before video_stream_start: must not be lost
            ws.send(json.dumps({"type": "video_stream_start", "bot_id": "bot-7", "codec": "h264"}))
            for fragment in fragments[:3]:
                ws.send(fragment)
            before = _now_ms()
            ws.send(json.dumps({**ping, "seq": 42, "sent_at_ms": 1234, "bot_id": "bot-7"}))
            pong = json.loads(ws.recv(timeout=TIMEOUT))
            ws.send(json.dumps({**ping, "seq": 43, "sent_at_ms": 1.5}))  # no bot_id
            pong_without_bot_id = json.loads(ws.recv(timeout=TIMEOUT))
            after = _now_ms()
            for fragment in fragments[3:]:
                ws.send(fragment)
            ws.send(json.dumps({"type": "video_stream_end", "duration_seconds": 3.5}))
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=TIMEOUT)

    assert proc.returncode == 0, stderr
    received_at = pong.pop("server_received_at_ms")
    assert pong == {"type": "video_latency_pong", "seq": 42, "sent_at_ms": 1234, "bot_id": "bot-7"}
    assert isinstance(received_at, int)
    assert before <= received_at <= after
    assert pong_without_bot_id["bot_id"] == "bot-7"  # from video_stream_start
    assert pong_without_bot_id["sent_at_ms"] == 1.5
    assert out.read_bytes() == init + b"".join(fragments)
    assert "StreamEnded(duration_seconds=3.5)" in stdout
    assert "Disconnected(code=<CloseCode.NORMAL: 1000>, reason='', clean=True" in stdout
