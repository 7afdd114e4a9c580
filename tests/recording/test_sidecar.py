"""The sidecar's ``peer``: ``{"host", "port"}`` from whatever form the transports, a proxy or
a person give it."""

from __future__ import annotations

import pytest

from meetstream_live.adapters.recording.sidecar import (
    SIDECAR_VERSION,
    peer_address,
    peer_object,
    peer_text,
    skeleton,
)


@pytest.mark.parametrize(("peer", "expected"), [
    ("('10.0.0.5', 53211)", ("10.0.0.5", 53211)),  # asyncio, sync, trio
    ("('::1', 5555, 0, 0)", ("::1", 5555)),  # IPv6 sockets
    ("10.0.0.5:53211", ("10.0.0.5", 53211)),  # --proxy-headers
    ("[2001:db8::1]:443", ("2001:db8::1", 443)),
    ("[2001:db8::1]", ("2001:db8::1", None)),
    ("203.0.113.9", ("203.0.113.9", None)),
    ("unknown", (None, None)),
    ("", (None, None)),
    ("?", (None, None)),
    (None, (None, None)),
    ({"host": "h", "port": 1}, ("h", 1)),  # already an object (version 4)
])
def test_peer_address(peer: object, expected: tuple[str | None, int | None]) -> None:
    assert peer_address(peer) == expected
    assert peer_object(peer) == {"host": expected[0], "port": expected[1]}


def test_peer_text() -> None:
    assert peer_text("('::1', 5555, 0, 0)") == "[::1]:5555"
    assert peer_text("('10.0.0.5', 1)") == "10.0.0.5:1"
    assert peer_text("unknown") == "?"


def test_version_4_skeleton() -> None:
    assert SIDECAR_VERSION == 4
    document = skeleton("x.mp4")
    assert document["peer"] == {"host": None, "port": None} and document["version"] == 4
