"""The session leases against a real nats-server: a node finds another node's lease within the
grace (never its own, never a stale one); a lease is written by compare-and-set, so a node does
not overwrite the lease of a node that took its session over, and deletes it at the session's
end only if it is still its own; a lease of a dead node (stale) is taken over."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from services import nats_server, require_module

from meetstream_live.adapters.recording.bus import BusConfig, Publisher
from meetstream_live.adapters.recording.bus.lease import Lease, Leases, LeaseSink

from .test_bus import LIMITS


@pytest.fixture(scope="module")
def publisher() -> Iterator[Publisher]:
    require_module("nats")
    with nats_server() as server:
        pub = Publisher(BusConfig(server.url, limits=LIMITS))
        pub.start()
        try:
            yield pub
        finally:
            pub.close(1.0)


def settle(leases: Leases, bot: str, check: Callable[[Lease | None], bool]) -> Lease | None:
    """The lease of ``bot`` as any node sees it, once ``check`` holds (writes are async)."""
    spy = Leases(leases.publisher, grace=3600, node="spy")
    spy.start()
    deadline = time.monotonic() + 10
    while True:
        found = spy.lookup(bot, "")
        if check(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def lease(node: str, part: int, *, session: int = 1000, at_ms: int | None = None) -> Lease:
    return Lease(node, session, part, 1, "live", at_ms or int(time.time() * 1000))


def test_another_nodes_lease_within_the_grace(publisher: Publisher) -> None:
    a = Leases(publisher, grace=60, node="a")
    b = Leases(publisher, grace=60, node="b")
    a.start(), b.start()
    a.write("bot-1", "", lambda _: lease("a", 3))
    seen = settle(a, "bot-1", lambda x: x is not None)
    assert seen is not None and (seen.node, seen.session_ms, seen.part) == ("a", 1000, 3)
    found = b.lookup("bot-1", "")
    assert found is not None and found.node == "a" and found.part == 3
    assert a.lookup("bot-1", "") is None  # its own: nothing to continue


def test_a_stale_lease_is_not_continued(publisher: Publisher) -> None:
    a = Leases(publisher, grace=60, node="a")
    b = Leases(publisher, grace=60, node="b")
    a.start(), b.start()
    old = int(time.time() * 1000) - 120_000
    a.write("bot-2", "", lambda _: lease("a", 1, at_ms=old))
    settle(a, "bot-2", lambda x: x is not None)
    assert b.lookup("bot-2", "") is None


def test_compare_and_set_keeps_the_node_that_took_over(publisher: Publisher) -> None:
    from meetstream_live.adapters.recording.bus.lease import LeaseSink

    a = Leases(publisher, grace=60, node="a")
    b = Leases(publisher, grace=60, node="b")
    a.start(), b.start()
    b.write("bot-3", "", lambda _: lease("b", 2))  # b continued a's session as part 2
    settle(a, "bot-3", lambda x: x is not None and x.node == "b")
    # a notices its connection dropped (part 1 paused), then its session ends: neither
    # touches b's lease.
    sink = LeaseSink(a)
    from meetstream_live.adapters.recording.sinks import Part, PartClosed, StreamPaused

    part = Part(7, 1, ("bot-3", ""), "bot-3", None, 1000, "start", None, None,
                session_started_ms=1000)  # type: ignore[arg-type]
    sink.handle(part, [StreamPaused(part, 0, 60.0)])
    sink.handle(part, [PartClosed(part, {"session_over": True})])
    time.sleep(0.5)
    found = settle(a, "bot-3", lambda x: x is not None)
    assert found is not None and found.node == "b" and found.part == 2
    # b's own end deletes it.
    b.write("bot-3", "", lambda _: None, delete=True)
    assert settle(a, "bot-3", lambda x: x is None) is None


def test_a_dead_nodes_stale_lease_is_taken_over(publisher: Publisher) -> None:
    from meetstream_live.adapters.recording.bus.lease import LeaseSink
    from meetstream_live.adapters.recording.sinks import Part, PartOpened

    a = Leases(publisher, grace=60, node="a")
    a.start()
    old = int(time.time() * 1000) - 120_000
    Leases(publisher, grace=60, node="dead").write(
        "bot-4", "", lambda _: lease("dead", 5, session=1, at_ms=old))
    settle(a, "bot-4", lambda x: x is not None)
    part = Part(8, 1, ("bot-4", ""), "bot-4", None, 2000, "start", None, None,
                session_started_ms=2000)  # type: ignore[arg-type]
    sink = LeaseSink(a)
    sink.handle(part, [PartOpened(part)])
    sink.close()  # (its heartbeat)
    found = settle(a, "bot-4", lambda x: x is not None and x.node == "a")
    assert found is not None and found.node == "a" and found.session_ms == 2000


def test_a_live_stream_s_lease_is_kept_fresh_and_goes_stale_when_its_node_stops(
        publisher: Publisher) -> None:
    """The heartbeat: a live stream's lease is rewritten every ``refresh`` seconds, so that
    another node continues it for as long as the node is alive (past the grace after the
    part began); once the node stops (here: its sink closed, as a SIGKILL stops it) the lease
    is stale a grace later, and a new node starts a new session."""
    from meetstream_live.adapters.recording.sinks import Part, PartOpened

    grace = 1.0
    a = Leases(publisher, grace=grace, node="a")
    b = Leases(publisher, grace=grace, node="b")
    a.start(), b.start()
    sink = LeaseSink(a)
    assert 0 < sink.refresh < grace
    part = Part(9, 1, ("bot-5", ""), "bot-5", None, 3000, "start", None, None,
                session_started_ms=3000)  # type: ignore[arg-type]
    sink.handle(part, [PartOpened(part)])
    try:
        settle(a, "bot-5", lambda x: x is not None and x.node == "a")
        time.sleep(3 * grace)  # without the heartbeat, the lease would be stale by now
        found = b.lookup("bot-5", "")
        assert found is not None and (found.node, found.part) == ("a", 1), found
    finally:
        sink.close()  # the node stops
    deadline = time.monotonic() + 10
    while b.lookup("bot-5", "") is not None:
        assert time.monotonic() < deadline, "the lease of a stopped node never went stale"
        time.sleep(0.1)


def test_the_heartbeat_never_takes_a_lease_back(publisher: Publisher) -> None:
    """A node whose stream another node took over (a newer part of the session) does not
    rewrite that lease with its own, nor a lease deleted at the session's end."""
    from meetstream_live.adapters.recording.sinks import Part, PartOpened

    a = Leases(publisher, grace=1.0, node="a")
    b = Leases(publisher, grace=1.0, node="b")
    a.start(), b.start()
    sink = LeaseSink(a)
    part = Part(10, 1, ("bot-6", ""), "bot-6", None, 4000, "start", None, None,
                session_started_ms=4000)  # type: ignore[arg-type]
    sink.handle(part, [PartOpened(part)])
    try:
        settle(a, "bot-6", lambda x: x is not None and x.node == "a")
        b.write("bot-6", "", lambda _: lease("b", 2, session=4000))
        settle(a, "bot-6", lambda x: x is not None and x.node == "b")
        time.sleep(4 * sink.refresh)
        found = settle(a, "bot-6", lambda x: x is not None)
        assert found is not None and (found.node, found.part) == ("b", 2), found
        b.write("bot-6", "", lambda _: None, delete=True)
        assert settle(a, "bot-6", lambda x: x is None) is None
        time.sleep(4 * sink.refresh)
        assert settle(a, "bot-6", lambda x: x is None) is None
    finally:
        sink.close()


def test_read_says_whether_the_bucket_answered(publisher: Publisher) -> None:
    a = Leases(publisher, grace=60, node="a")
    a.start()
    assert a.read("bot-never", "") == (True, None)  # answered: there is none
    assert Leases(publisher, grace=60, node="x").read("bot-never", "") == (False, None)  # no
    # bucket opened (start not called): no answer
    old = int(time.time() * 1000) - 120_000
    a.write("bot-7", "", lambda _: lease("dead", 2, at_ms=old))
    settle(a, "bot-7", lambda x: x is not None)
    answered, found = a.read("bot-7", "")
    assert answered and found is not None and found.part == 2 and a.stale(found)
    assert a.lookup("bot-7", "") is None  # stale: not continued by a new stream
