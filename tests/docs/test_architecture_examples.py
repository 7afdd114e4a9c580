"""The "how to write a new adapter" and "how to write a new sink" examples of
docs/architecture.md: the blocks are the files, and the files work."""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from media import Media
from websockets.sync.client import connect

from meetstream_live import Disconnected, Event, MediaChunk, ServerConfig, StreamStarted
from meetstream_live.adapters import ConnectionInfo, Handler, ServerOptions
from meetstream_live.adapters.recording import Recorder
from meetstream_live.fmp4 import Fmp4Scanner, FragmentComplete

DOCS = Path(__file__).resolve().parents[2] / "docs"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, DOCS / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["new_adapter", "new_sink"])
def test_the_doc_shows_the_file(name: str) -> None:
    text = (DOCS / "architecture.md").read_text()
    pattern = rf"<!-- the block below is docs/examples/{name}\.py[^>]*-->\n```python\n(.*?)```\n"
    match = re.search(pattern, text, re.S)
    assert match, f"docs/architecture.md has no block for {name}.py"
    assert match.group(1) == (DOCS / "examples" / f"{name}.py").read_text()


class Collect(Handler):
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.done = threading.Event()

    def dispatch(self, events: Any) -> None:
        self.events.extend(events)
        if any(isinstance(e, Disconnected) for e in self.events):
            self.done.set()


def test_the_example_adapter_serves_a_stream() -> None:
    adapter = load("new_adapter")
    handlers: list[Collect] = []

    def factory(info: ConnectionInfo) -> Handler:
        handlers.append(Collect())
        return handlers[-1]

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    options = ServerOptions(config=ServerConfig(idle_timeout_ms=5_000))
    threading.Thread(target=adapter.serve, args=(listener, factory, options), daemon=True).start()
    with connect(f"ws://127.0.0.1:{port}/", open_timeout=5) as ws:
        ws.send(json.dumps({"type": "video_stream_start", "bot_id": "b"}))
        ws.send(b"media" * 1000)
        ws.send(json.dumps({"type": "video_latency_ping", "seq": 7, "sent_at_ms": 1}))
        pong = json.loads(ws.recv(timeout=5))
    (handler,) = handlers
    assert handler.done.wait(5)
    assert pong["type"] == "video_latency_pong" and pong["seq"] == 7
    assert [type(e) for e in handler.events if not isinstance(e, MediaChunk)][:1] == [StreamStarted]
    data = b"".join(e.data for e in handler.events if isinstance(e, MediaChunk))
    assert data == b"media" * 1000
    end = handler.events[-1]
    assert isinstance(end, Disconnected) and end.code == 1000
    listener.close()


def test_the_example_sink_indexes_the_keyframes(tmp_path: Path, fmp4_small: Media) -> None:
    sink_module = load("new_sink")
    recorder = Recorder(tmp_path, sinks=[sink_module.KeyframeIndex()])
    handler = recorder(ConnectionInfo("peer", "/", "", (), False))
    data = bytes(fmp4_small.data)
    handler.dispatch([StreamStarted(bot_id="kf", raw={"type": "video_stream_start"})])
    handler.dispatch([MediaChunk(data[i : i + 7000], i) for i in range(0, len(data), 7000)])
    handler.dispatch([Disconnected(1000, "", False)])
    recorder.close()
    (index,) = tmp_path.glob("kf/*.keyframes.jsonl")
    rows = [json.loads(line) for line in index.read_text().splitlines()]
    scanner = Fmp4Scanner()
    fragments = [e for e in scanner.feed(data) + scanner.eof() if isinstance(e, FragmentComplete)]
    assert [(r["offset"], r["size"]) for r in rows] == [(f.offset, f.size) for f in fragments]
    assert rows[0]["at"] == 0.0 and rows[1]["at"] > 0
