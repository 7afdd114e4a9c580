"""``--proxy-headers``: the real client from ``Forwarded`` / ``X-Forwarded-For``, believed only
from trusted proxies, read from the right; end to end, the sidecar's ``peer`` is the client."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from meetstream_live.adapters import ConnectionInfo, Handler
from meetstream_live.adapters.asyncio import AsyncioBot
from meetstream_live.adapters.cli.options import OptionSet, UsageError
from meetstream_live.adapters.cli.proxy import TrustedProxies, forwarded_client, proxied
from meetstream_live.adapters.cli.sample import sample_bytes
from meetstream_live.adapters.cli.serve import SERVE_OPTIONS

from .test_serve import serving

LOCAL = TrustedProxies("127.0.0.1,::1")
PROXY = "('127.0.0.1', 40000)"


def client(headers: list[tuple[str, str]], peer: str = PROXY,
           trusted: TrustedProxies = LOCAL) -> tuple[str, int | None] | None:
    return forwarded_client(peer, [(k.encode(), v.encode()) for k, v in headers], trusted)


@pytest.mark.parametrize(("headers", "expected"), [
    ([("X-Forwarded-For", "203.0.113.7")], ("203.0.113.7", None)),
    ([("X-Forwarded-For", "203.0.113.7, 127.0.0.1")], ("203.0.113.7", None)),
    ([("X-Forwarded-For", "2001:db8::1")], ("2001:db8::1", None)),
    ([("Forwarded", "for=192.0.2.60;proto=https;by=203.0.113.43")], ("192.0.2.60", None)),
    ([("Forwarded", 'for="[2001:db8:cafe::17]:4711"')], ("2001:db8:cafe::17", 4711)),
    ([("Forwarded", "for=192.0.2.60:5555, for=127.0.0.1")], ("192.0.2.60", 5555)),
    # Forwarded wins over X-Forwarded-For.
    ([("X-Forwarded-For", "198.51.100.1"), ("Forwarded", "for=192.0.2.60")],
     ("192.0.2.60", None)),
    ([("Forwarded", "for=unknown")], None),
    ([], None),
])
def test_the_client_the_proxy_names(headers: list[tuple[str, str]],
                                    expected: tuple[str, int | None] | None) -> None:
    assert client(headers) == expected


def test_a_client_cannot_pass_itself_off_as_another() -> None:
    # The client sent "X-Forwarded-For: 10.9.9.9" itself; the proxy appended the real one.
    assert client([("X-Forwarded-For", "10.9.9.9, 198.51.100.23")]) == ("198.51.100.23", None)
    # Nothing is believed from a peer that is not a trusted proxy.
    assert client([("X-Forwarded-For", "10.9.9.9")], peer="('198.51.100.23', 5000)") is None
    # A chain of trusted proxies is skipped from the right.
    inner = TrustedProxies("127.0.0.1, 10.0.0.0/8")
    assert client([("X-Forwarded-For", "192.0.2.1, 10.1.1.1, 10.2.2.2")], trusted=inner) == (
        "192.0.2.1", None)
    assert client([("X-Forwarded-For", "192.0.2.1")], trusted=TrustedProxies("*"),
                  peer="('198.51.100.23', 5000)") == ("192.0.2.1", None)


def test_trusted_proxies_are_checked_at_start() -> None:
    options = OptionSet(SERVE_OPTIONS)
    assert options.resolve({"forwarded_allow_ips": "10.0.0.0/8,::1,*"}, {})
    with pytest.raises(UsageError, match=r"--forwarded-allow-ips \(\$MEETSTREAM_LIVE_FORWARDED_"
                                         r"ALLOW_IPS\): not an address or a network: 'ten'"):
        options.resolve({"forwarded_allow_ips": "ten"}, {})


def test_the_factory_gets_the_client_as_its_peer() -> None:
    seen: list[str] = []

    def factory(info: ConnectionInfo) -> Handler:
        seen.append(info.peer)
        return Handler()

    make = proxied(factory, LOCAL)
    make(ConnectionInfo(PROXY, "/", "", ((b"x-forwarded-for", b"2001:db8::1"),), False))
    make(ConnectionInfo(PROXY, "/", "", ((b"forwarded", b"for=192.0.2.9:81"),), False))
    make(ConnectionInfo(PROXY, "/", "", (), False))
    assert seen == ["[2001:db8::1]", "192.0.2.9:81", PROXY]


def test_end_to_end_the_sidecar_names_the_real_client(tmp_path: Path) -> None:
    output = tmp_path / "rec"
    data = sample_bytes()

    async def bot(port: int, bot_id: str) -> None:
        client = await AsyncioBot.connect(
            f"ws://127.0.0.1:{port}/",
            headers=((b"X-Forwarded-For", b"203.0.113.50, 127.0.0.1"),))
        await client.send_start(bot_id)
        await client.send_chunk(data)
        await client.send_end(6.0)
        await client.close()

    for flags, bot_id in ((("--proxy-headers",), "behind"), ((), "ignored")):
        with serving(tmp_path, "--port", "0", "--output", str(output), *flags) as (port, _):
            asyncio.run(bot(port, bot_id))
    behind = json.loads(next(output.glob("behind/*.mp4")).with_suffix(".json").read_text())
    ignored = json.loads(next(output.glob("ignored/*.mp4")).with_suffix(".json").read_text())
    assert behind["peer"] == {"host": "203.0.113.50", "port": None}
    assert ignored["peer"]["host"] == "127.0.0.1" and isinstance(ignored["peer"]["port"], int)
