"""A fleet of receivers behind a real load balancer (Debian's HAProxy, the configuration of
docs/deploy.md: ``balance uri`` + ``hash-type consistent`` on ``/v1/streams/{bot_id}``, health
checks on ``/readyz``): each bot's reconnect lands on the node that has its session, which
continues it (one manifest, two connections); the bots spread over the nodes; when a node is
taken out, only its bots move, and they are recorded whole on the node they move to."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from cli.test_bus import consume
from cli.test_serve import serving
from media import Media
from services import HAProxy, haproxy, nats_server, require_module

from meetstream_live.adapters.asyncio import AsyncioBot

BOTS = 12
HASH_ON = "path"  # docs/deploy.md; round robin (no hash) fails this test
CHUNK = 32 * 1024


@contextmanager
def fleet(tmp_path: Path, nodes: int, *argv: str) -> Iterator[tuple[HAProxy, list[Path]]]:
    outputs = [tmp_path / f"r{n}" for n in range(1, nodes + 1)]
    with ExitStack() as stack:
        backends = {}
        for n, output in enumerate(outputs, 1):
            port, _log = stack.enter_context(serving(
                tmp_path, "--port", "0", "--output", str(output), "--reconnect-grace", "60s",
                "--drain-timeout", "5s", *argv))
            backends[f"r{n}"] = ("127.0.0.1", port)
        lb = stack.enter_context(haproxy(backends, hash_on=HASH_ON, check_path="/readyz"))
        for name in backends:
            lb.wait_state(name, "UP")
        yield lb, outputs


async def send(url: str, bot_id: str, data: bytes, *, cut: bool) -> None:
    """One connection: the start and ``data``; then a cut (the TCP connection dropped, no
    close: the bot's network failed) or the end and a clean close."""
    bot = await AsyncioBot.connect(url)
    await bot.send_start(bot_id)
    for i in range(0, len(data), CHUNK):
        await bot.send_chunk(data[i:i + CHUNK])
    if cut:
        await asyncio.sleep(0.3)  # what was sent is in
        bot.abort()
    else:
        await bot.send_end(6.0)
        assert (await bot.close()).code == 1000


def manifests(outputs: list[Path], bot_id: str) -> list[tuple[int, dict[str, object]]]:
    """(node index, manifest) of every finished session of ``bot_id``."""
    return [(n, json.loads(path.read_text())) for n, out in enumerate(outputs)
            for path in (out / bot_id).glob("*.session.json")]


def wait_sessions(outputs: list[Path], bot_ids: list[str], count: int = 1) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(sum(1 for _, m in manifests(outputs, b) if m.get("state") == "finished") >= count
               for b in bot_ids):
            return
        time.sleep(0.1)
    raise AssertionError({b: manifests(outputs, b) for b in bot_ids})


def test_a_reconnect_lands_on_the_node_that_has_its_session(tmp_path: Path,
                                                            fmp4_small: Media) -> None:
    bot_ids = [f"fleet-{n}" for n in range(BOTS)]
    with fleet(tmp_path, 2) as (lb, outputs):

        async def bots() -> None:
            urls = {b: f"{lb.ws_url}/v1/streams/{b}" for b in bot_ids}
            await asyncio.gather(*(send(urls[b], b, fmp4_small.data, cut=True)
                                   for b in bot_ids))
            await asyncio.gather(*(send(urls[b], b, fmp4_small.data, cut=False)
                                   for b in bot_ids))

        asyncio.run(bots())
        wait_sessions(outputs, bot_ids)
        nodes = {}
        for bot_id in bot_ids:
            found = manifests(outputs, bot_id)
            assert len(found) == 1, found  # one session, on one node
            (node, manifest), = found
            assert manifest["connections"] == 2, manifest  # the reconnect continued it
            nodes[bot_id] = node
            assert not list(outputs[1 - node].glob(f"{bot_id}/*"))  # nothing on the other
        assert set(nodes.values()) == {0, 1}, nodes  # both nodes have bots

        # r1 is taken out: only its bots move (consistent hashing), each recorded whole.
        lb.disable("r1")
        lb.wait_state("r1", "MAINT")
        moved = [b for b in bot_ids if nodes[b] == 0]

        async def again() -> None:
            await asyncio.gather(*(send(f"{lb.ws_url}/v1/streams/{b}", b, fmp4_small.data,
                                        cut=False) for b in bot_ids))

        asyncio.run(again())
        wait_sessions(outputs, bot_ids, 2)  # a second session each: r1 + r2, or r2 twice
        for bot_id in bot_ids:
            found = manifests(outputs, bot_id)
            on_r2 = [m for n, m in found if n == 1]
            if bot_id in moved:  # a new session on r2 (without a lease: not a continuation)
                assert len(on_r2) == 1 and on_r2[0]["connections"] == 1, found
            else:  # still on r2, the same node as before
                assert {n for n, _ in found} == {1}, found
        for out in outputs:
            for media in out.rglob("*.mp4"):
                assert media.stat().st_size >= len(fmp4_small.data) - 4096


def test_a_session_moves_to_another_node_with_its_lease(tmp_path: Path,
                                                       fmp4_small: Media) -> None:
    """With ``--nats`` the nodes keep a lease per stream in JetStream's key-value store: a
    bot cut on its node reconnects while that node is out of the balancer, lands on the other,
    which continues its session as part 2 (same session start, one connection more), and the
    bus has both parts under the same session."""
    require_module("nats")
    bot_id = "fleet-moving"
    with nats_server() as ns, fleet(tmp_path, 2, "--nats", ns.url, "--nats-max-bytes",
                                    "256m") as (lb, outputs):
        url = f"{lb.ws_url}/v1/streams/{bot_id}"
        asyncio.run(send(url, bot_id, fmp4_small.data, cut=True))
        first = next(n for n, out in enumerate(outputs) if list(out.glob(f"{bot_id}/*")))
        lb.disable(f"r{first + 1}")
        lb.wait_state(f"r{first + 1}", "MAINT")
        time.sleep(0.5)  # the cut is seen and the lease says paused (it need not)
        asyncio.run(send(url, bot_id, fmp4_small.data, cut=False))
        other = outputs[1 - first]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list(other.glob(f"{bot_id}/*.session.json")):
            time.sleep(0.1)
        wait_sessions([other], [bot_id])
        ((_, moved),) = manifests([other], bot_id)
        assert [p["part"] for p in moved["parts"]] == [2], moved
        assert moved["parts"][0]["started_by"] == "reconnect"
        assert moved["connections"] == 2
        part2 = json.loads((other / bot_id / moved["parts"][0]["sidecar"]).read_text())
        assert part2["part"] == 2
        # The first node still has part 1 (its session waits for the grace there).
        first_parts = list((outputs[first] / bot_id).glob("*.mp4*"))
        assert first_parts
        session_start = moved["started_at"]
        out = tmp_path / "part2.mp4"
        done = consume(ns.url, "--bot", bot_id, "--part", "2", "-o", str(out))
        assert done.returncode == 0, done.stderr
        assert out.read_bytes() == (other / bot_id / moved["parts"][0]["file"]).read_bytes()
        assert session_start.startswith("20")
