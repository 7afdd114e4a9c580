"""``check`` against a receiver that is not there: said once."""

from __future__ import annotations

import socket

import pytest

from meetstream_live.adapters.cli import main


def test_a_closed_port_is_said_once(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["check", f"ws://127.0.0.1:{port}/", "--timeout", "2s"]) == 1
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[0].startswith(f"FAIL  handshake        nothing listening at 127.0.0.1:{port}")
    assert out.count("nothing listening") == 1
    assert lines[-1] == "FAIL: 0/1 items passed or skipped; failed: handshake"
    assert len(lines) == 2
