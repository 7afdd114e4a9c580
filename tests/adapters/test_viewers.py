"""Viewer connections (``ServerConfig.viewer_paths``): the server sends, the peer listens, on
the same port as the bots, on every server. What a viewer is sent is pulled from its handler
only when the socket can take more, so a slow viewer holds no unbounded buffer."""

from __future__ import annotations

import threading
import time

import pytest
from conformance.servers import SERVERS, capabilities, running_server
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from meetstream_live import Disconnected, ServerConfig
from meetstream_live.adapters import ConnectionInfo, Handler, ServerOptions, Viewer

ADAPTERS = sorted(SERVERS)


class Messages(Viewer):
    """Hands out ``messages`` one pull at a time (each pull: what the socket may take)."""

    def __init__(self, info: ConnectionInfo, messages: list[bytes | str]) -> None:
        self.info = info
        self.messages = list(messages)
        self.pulls = 0
        self.lock = threading.Lock()
        self.gone = threading.Event()
        self.end: Disconnected | None = None
        info.wake()  # something to send from the start

    def pull(self) -> list[bytes | str]:
        with self.lock:
            self.pulls += 1
            if not self.messages:
                return []
            out, self.messages = self.messages[:4], self.messages[4:]
        if self.messages:
            self.info.wake()
        return out

    def on_disconnect(self, event: Disconnected) -> None:
        self.end = event
        self.gone.set()


def options(
    viewers: list[Messages], messages: list[bytes | str], **config: object
) -> ServerOptions:
    def factory(info: ConnectionInfo) -> Viewer:
        viewers.append(Messages(info, messages))
        return viewers[-1]

    return ServerOptions(
        config=ServerConfig(viewer_paths=("/live/*/ws", "/live/*/*/ws"), **config),  # type: ignore[arg-type]
        viewer_factory=factory,
    )


def no_bots(info: ConnectionInfo) -> Handler:
    return Handler()


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_viewer_gets_what_its_handler_sends(adapter: str) -> None:
    viewers: list[Messages] = []
    sent: list[bytes | str] = ['{"type":"header"}', *(bytes([i]) * 50_000 for i in range(10))]
    with running_server(adapter, no_bots, options(viewers, sent)) as port:
        with connect(f"ws://127.0.0.1:{port}/live/bot-1/speaker/ws", open_timeout=5) as ws:
            got = [ws.recv(timeout=5) for _ in sent]
            ws.send("ignored: a viewer's messages are dropped")
        (viewer,) = viewers
        assert viewer.gone.wait(10)
    assert got == sent
    assert viewer.info.path == "/live/bot-1/speaker/ws"
    expected = 1000 if capabilities(adapter).reports_peer_close_code else 1006  # hypercorn
    assert viewer.end is not None and viewer.end.code == expected


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_viewers_show_their_token(adapter: str) -> None:
    viewers: list[Messages] = []
    opts = options(viewers, ["hello"], token="bots-only", viewer_token="watch")
    with running_server(adapter, no_bots, opts) as port:
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{port}/live/b/ws?token=bots-only", open_timeout=5)
        assert refused.value.response.status_code == 401
        with connect(f"ws://127.0.0.1:{port}/live/b/ws?token=watch", open_timeout=5) as ws:
            assert ws.recv(timeout=5) == "hello"
        with pytest.raises(InvalidStatus) as wrong:
            connect(f"ws://127.0.0.1:{port}/live/ws", open_timeout=5)  # no viewer path: a bot's
        assert wrong.value.response.status_code == 401


@pytest.mark.parametrize("adapter", ["asyncio", "sync", "trio"])
def test_a_slow_viewer_is_pulled_only_as_fast_as_it_reads(adapter: str) -> None:
    """32 MiB for a viewer that reads nothing for a second: the server does not pull it all
    into its buffers (the kernel's socket buffers hold a few MiB at most)."""
    viewers: list[Messages] = []
    sent: list[bytes | str] = [bytes(1024 * 1024)] * 32
    with running_server(adapter, no_bots, options(viewers, sent)) as port:
        with connect(
            f"ws://127.0.0.1:{port}/live/b/ws", open_timeout=5, max_size=None, max_queue=1
        ) as ws:
            time.sleep(1.0)
            (viewer,) = viewers
            with viewer.lock:
                left = len(viewer.messages)
            assert left >= 16, f"{32 - left} MiB pulled for a viewer that read nothing"
            for _ in sent:
                ws.recv(timeout=10)
        assert viewer.gone.wait(10)
