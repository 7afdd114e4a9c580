"""A handler that fails is logged once, on every server, even when the bot has already closed
(issue 17, bug 3: those errors were only counted), and the failure closes with 1011 when the
connection is still open."""

from __future__ import annotations

import logging
import threading

import pytest
from conformance.clients import masked_frame, raw_handshake
from conformance.servers import SERVERS, running_server

from meetstream_live import Disconnected, StreamStarted
from meetstream_live.adapters import ConnectionInfo, Handler


class FailsAtTheEnd(Handler):
    def __init__(self, done: threading.Event) -> None:
        self.done = done

    def on_disconnect(self, event: Disconnected) -> None:
        self.done.set()
        raise RuntimeError("cannot finalize")


class FailsAtTheStart(Handler):
    def __init__(self, done: threading.Event) -> None:
        self.done = done
        self.end: Disconnected | None = None

    def on_start(self, event: StreamStarted) -> None:
        raise ValueError("no space for a new recording")

    def on_disconnect(self, event: Disconnected) -> None:
        self.end = event
        self.done.set()


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("adapter", sorted(SERVERS))
def test_a_failure_after_the_bot_closed_is_logged(
    adapter: str, caplog: pytest.LogCaptureFixture
) -> None:
    done = threading.Event()
    with running_server(adapter, lambda info: FailsAtTheEnd(done)) as port:
        sock = raw_handshake(port)
        sock.sendall(masked_frame(0x8, (1000).to_bytes(2, "big")))
        sock.recv(64)
        sock.close()
        assert done.wait(10)
    logged = [m for m in errors(caplog) if "cannot finalize" in m]
    assert len(logged) == 1, errors(caplog)
    assert "handler failed for" in logged[0]


@pytest.mark.parametrize("adapter", sorted(SERVERS))
def test_a_failure_mid_stream_is_logged_once_and_closes_with_1011(
    adapter: str, caplog: pytest.LogCaptureFixture
) -> None:
    done = threading.Event()
    handlers: list[FailsAtTheStart] = []

    def factory(info: ConnectionInfo) -> Handler:
        handlers.append(FailsAtTheStart(done))
        return handlers[-1]

    with running_server(adapter, factory) as port:
        sock = raw_handshake(port)
        sock.settimeout(10)
        sock.sendall(masked_frame(0x1, b'{"type":"video_stream_start","bot_id":"b"}'))
        reply = sock.recv(64)
        assert reply[0] == 0x88 and int.from_bytes(reply[2:4], "big") == 1011
        sock.sendall(masked_frame(0x8, (1011).to_bytes(2, "big")))
        assert done.wait(10)
        sock.close()
    assert handlers[0].end is not None and handlers[0].end.code == 1011
    assert len([m for m in errors(caplog) if "no space" in m]) == 1, errors(caplog)
