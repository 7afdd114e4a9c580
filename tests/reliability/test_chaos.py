"""``simulate(chaos=...)`` (``meetstream-live simulate --chaos FAULT``) against every adapter.

Whatever the fault, the receiver's invariants hold: each connection's handler got exactly the
bytes that connection sent (a prefix of them when the bot cut the connection on purpose), in
order, and every ping sent on a connection that was not cut got its pong.
"""

from __future__ import annotations

import asyncio
import io
import itertools
from contextlib import redirect_stdout
from typing import Any

import pytest
from conformance.servers import CollectingHandler, Collector, running_server

from meetstream_live.adapters.cli import main
from meetstream_live.adapters.cli.simulate import CHAOS, BotResult, plan_media, simulate


def _fits(result: BotResult, handler: CollectingHandler) -> bool:
    sent, data = bytes(result.sent), handler.data
    return data == sent or (result.cut and sent.startswith(data))


def match(results: list[BotResult], handlers: list[CollectingHandler]) -> None:
    """Pair each connection with the handler that got its bytes (same bot_id; connections
    of one bot_id in any order); assert the invariants."""
    assert len(results) == len(handlers)
    for handler in handlers:
        assert all(s.offsets_ok for s in handler.streams)
    by_id: dict[str | None, list[CollectingHandler]] = {}
    for handler in handlers:
        started = handler.streams[0].started if handler.streams else None
        by_id.setdefault(started.bot_id if started else None, []).append(handler)
    for bot_id in {r.bot_id for r in results}:
        mine = [r for r in results if r.bot_id == bot_id]
        theirs = by_id.get(bot_id, []) + by_id.get(None, [])  # None: cut before any start
        assert any(
            all(_fits(r, h) for r, h in zip(mine, order, strict=False))
            for order in itertools.permutations(theirs, len(mine))
        ), f"{bot_id}: sent {[len(r.sent) for r in mine]}, got {[len(h.data) for h in theirs]}"


@pytest.mark.parametrize("fault", sorted(CHAOS))
def test_chaos_option(adapter: str, fault: str, fmp4_small: Any) -> None:
    plan = plan_media(bytes(fmp4_small.data))
    collector = Collector()
    with running_server(adapter, collector) as port:
        result = asyncio.run(
            simulate(f"ws://127.0.0.1:{port}/", plan, bots=2, chaos=[fault], seed=7,
                     chunk_size=8 * 1024, keep_sent=True, ping_interval=0.05)
        )
        handlers = collector.wait_finished(len(result.bots))
    assert result.ok, [(b.bot_id, b.error, b.close_code, b.unanswered) for b in result.bots]
    cut = [b for b in result.bots if b.cut]
    assert bool(cut) == (fault in ("reset", "reconnect"))
    expected = {"duplicate": 4, "reconnect": 4}.get(fault, 2)
    assert len(result.bots) == expected
    match(result.bots, handlers)
    for bot in result.bots:
        if not bot.cut:
            assert bot.pings > 0 and len(bot.round_trips) == bot.pings
    if fault == "ping-storm":
        assert all(b.pings > 100 for b in result.bots)
    if fault == "big-keyframes":
        assert all(len(b.sent) > 4 * 5 * 1024 * 1024 for b in result.bots)
    if fault == "no-end":
        assert all(not h.disconnected.clean for h in handlers)
    if fault == "early-binary" and adapter in ("asyncio", "sync", "trio"):
        assert all(h.streams[0].started is not None for h in handlers)  # held, not orphaned


def test_chaos_from_the_command_line(fmp4_small: Any, tmp_path: Any) -> None:
    """The CLI wiring: ``--chaos`` (repeatable) and ``--seed`` reach ``simulate``."""
    media = tmp_path / "clip.mp4"
    media.write_bytes(fmp4_small.data)
    collector = Collector()
    with running_server("asyncio", collector) as port:
        out = io.StringIO()
        with redirect_stdout(out):
            status = main(["simulate", f"ws://127.0.0.1:{port}/", "--file", str(media),
                           "--bots", "2", "--chaos", "reset", "--chaos", "split",
                           "--seed", "3", "--quiet"])
        collector.wait_finished(2)
    assert status == 0, out.getvalue()
    assert out.getvalue().count("cut on purpose") == 2
    with pytest.raises(SystemExit) as refused:
        main(["simulate", "ws://127.0.0.1:1/", "--chaos", "nope"])
    assert refused.value.code == 2
