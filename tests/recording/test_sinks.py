"""The fan-out point: ordering, the full-queue policies, the failure domain, the numbers."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meetstream_live.adapters import Backlog, ConnectionInfo
from meetstream_live.adapters.recording.sinks import (
    Chunk,
    Dropped,
    Note,
    Part,
    PartClosed,
    PartOpened,
    Sink,
    SinkEvent,
    SinkSet,
)

INFO = ConnectionInfo("peer", "/", "", (), False)


def part(number: int = 1) -> Part:
    return Part(1, number, ("bot", ""), "bot", None, 0, "start", None, INFO)


class Collect(Sink):
    name = "collect"

    def __init__(self) -> None:
        self.seen: list[SinkEvent] = []
        self.lock = threading.Lock()

    def handle(self, part: Part, events: Sequence[SinkEvent]) -> None:
        with self.lock:
            self.seen.extend(events)


class Gate(Collect):
    """Handles nothing until the gate opens."""

    name = "gate"

    def __init__(self) -> None:
        super().__init__()
        self.open = threading.Event()

    def handle(self, part: Part, events: Sequence[SinkEvent]) -> None:
        self.open.wait(10)
        super().handle(part, events)


@given(st.lists(st.integers(1, 5000), max_size=60), st.integers(1, 4))
@settings(max_examples=40, deadline=None)
def test_each_sink_sees_each_part_in_order(sizes: list[int], parts: int) -> None:
    """Whatever the batching, every sink gets every event of a part, in publish order."""
    a, b = Collect(), Collect()
    b.name = "other"  # type: ignore[misc]
    sinks = SinkSet([a, b])
    sinks.start()
    ps = [part(n) for n in range(parts)]
    offsets = [0] * parts
    for i, size in enumerate(sizes):
        n = i % parts
        sinks.publish(ps[n], [Chunk(ps[n], offsets[n], bytes(size))])
        offsets[n] += size
    assert sinks.wait_idle(10)
    for sink in (a, b):
        for n in range(parts):
            got = [e.offset for e in sink.seen if isinstance(e, Chunk) and e.part is ps[n]]
            assert got == sorted(got) and len(got) == len(sizes[n::parts])
    sinks.close()


def test_accepts_filters_before_queueing() -> None:
    class NotesOnly(Collect):
        name = "notes"
        accepts: ClassVar[tuple[type[SinkEvent], ...]] = (Note,)

    sink = NotesOnly()
    sinks = SinkSet([sink])
    p = part()
    sinks.publish(p, [PartOpened(p), Chunk(p, 0, b"x" * 10), Note(p, "recorder", "k", "m")])
    assert sinks.wait_idle(5)
    assert [type(e) for e in sink.seen] == [Note]
    assert sinks.stats()[0].handled_events == 1


def test_block_counts_in_the_connection_backlog_and_wakes_the_reader() -> None:
    class Blocking(Gate):
        when_full: ClassVar[Literal["block", "drop"]] = "block"

    sink = Blocking()
    sinks = SinkSet([sink])
    backlog = Backlog(limit=100)
    woken = threading.Event()
    backlog.on_below = woken.set
    p = part()
    for i in range(5):
        sinks.publish(p, [Chunk(p, i * 50, bytes(50), backlog)])
    time.sleep(0.05)
    assert backlog.bytes == 250 and backlog.should_pause()
    stats = sinks.stats()[0]
    assert stats.backlog_bytes == 250 and stats.dropped_events == 0
    sink.open.set()
    assert woken.wait(5)
    assert sinks.wait_idle(5)
    assert backlog.bytes == 0 and not backlog.over
    assert len(sink.seen) == 5  # nothing dropped, whatever the queue bound


def test_drop_puts_one_dropped_in_place_of_what_had_no_room() -> None:
    class Live(Gate):
        max_queue_bytes: ClassVar[int] = 100

    sink = Live()
    sinks = SinkSet([sink])
    p = part()
    sinks.publish(p, [Chunk(p, 0, bytes(60))])
    time.sleep(0.05)  # the first batch is taken by the (gated) thread
    for i in range(1, 6):
        sinks.publish(p, [Chunk(p, i * 60, bytes(60))])
    sinks.publish(p, [Note(p, "recorder", "k", "after")])
    sink.open.set()
    assert sinks.wait_idle(5)
    kinds = [(type(e).__name__, getattr(e, "offset", None)) for e in sink.seen]
    # 0 taken, 60 queued (60 <= 100), 120..300 no room: one Dropped for four, then the note.
    assert kinds == [("Chunk", 0), ("Chunk", 60), ("Dropped", None), ("Note", None)]
    dropped = next(e for e in sink.seen if isinstance(e, Dropped))
    assert (dropped.events, dropped.bytes) == (4, 240)
    stats = sinks.stats()[0]
    assert (stats.dropped_events, stats.dropped_bytes) == (4, 240)


def test_a_failing_sink_fails_its_part_only_and_says_so() -> None:
    class Flaky(Collect):
        name = "flaky"

        def __init__(self) -> None:
            super().__init__()
            self.abandoned: list[Part] = []

        def handle(self, part: Part, events: Sequence[SinkEvent]) -> None:
            if part.number == 1:
                raise OSError("bucket down")
            super().handle(part, events)

        def abandon(self, part: Part, exc: Exception) -> None:
            self.abandoned.append(part)

    flaky, healthy = Flaky(), Collect()
    sinks = SinkSet([flaky, healthy])
    bad, good = part(1), part(2)
    for i in range(6):
        sinks.publish(bad, [Chunk(bad, i, b"x")])
        assert sinks.wait_idle(5)  # one batch at a time: each is a failure of its own
        sinks.publish(good, [Chunk(good, i, b"y")])
    sinks.publish(bad, [PartClosed(bad, {})])
    assert sinks.wait_idle(5)
    assert flaky.abandoned == [bad]
    assert len([e for e in flaky.seen if e.part is good]) == 6
    assert len(healthy.seen) == 13  # the other sink saw everything of both parts
    stats = next(s for s in sinks.stats() if s.name == "flaky")
    assert stats.errors == 3 and stats.failed_parts == 1
    assert stats.dropped_events == 4  # 3 chunks after the failure, and the PartClosed
    report = sinks.part_report(bad)
    assert report["flaky"]["state"] == "failed" and report["collect"]["state"] == "ok"


def test_recover_false_gives_the_part_up_at_once() -> None:
    class Once(Collect):
        name = "once"

        def handle(self, part: Part, events: Sequence[SinkEvent]) -> None:
            raise ValueError("no")

        def recover(self, part: Part, exc: Exception) -> bool:
            return False

    sinks = SinkSet([Once()])
    p = part()
    sinks.publish(p, [Chunk(p, 0, b"x")])
    assert sinks.wait_idle(5)
    assert sinks.stats()[0].failed_parts == 1 and sinks.stats()[0].errors == 1


def test_inline_sinks_run_in_the_publishers_thread() -> None:
    class Index(Collect):
        name = "index"
        runs: ClassVar[Literal["thread", "inline"]] = "inline"

        def handle(self, part: Part, events: Sequence[SinkEvent]) -> None:
            self.thread = threading.current_thread()
            super().handle(part, events)

    sink = Index()
    sinks = SinkSet([sink])
    p = part()
    sinks.publish(p, [PartOpened(p)])
    assert sink.seen == [PartOpened(p)] and sink.thread is threading.current_thread()


def test_close_gives_up_after_its_timeout_and_counts_what_was_left() -> None:
    sink = Gate()
    sinks = SinkSet([sink])
    p = part()
    sinks.publish(p, [Chunk(p, 0, b"a")])
    time.sleep(0.05)
    sinks.publish(p, [Chunk(p, 1, b"b"), Chunk(p, 2, b"c")])
    runner = sinks.runners[0]
    assert runner.close(timeout=0.1) is False
    assert runner.snapshot().dropped_events == 2
    sink.open.set()


def test_names_are_unique_and_sinks_added_before_start() -> None:
    sinks = SinkSet([Collect()])
    with pytest.raises(ValueError, match="two sinks"):
        sinks.add(Collect())
    sinks.start()
    with pytest.raises(RuntimeError):
        sinks.add(Gate())


def test_lag_is_the_age_of_the_oldest_event_not_handled_yet() -> None:
    sink = Gate()
    sinks = SinkSet([sink])
    p = part()
    sinks.publish(p, [Chunk(p, 0, b"a")])
    time.sleep(0.05)
    sinks.publish(p, [Chunk(p, 1, b"b")])
    time.sleep(0.1)
    stats: Any = sinks.stats()[0]
    assert stats.lag_seconds >= 0.14 and stats.backlog_events == 2  # one in hand, one queued
    sink.open.set()
    assert sinks.wait_idle(5)
    assert sinks.stats()[0].lag_seconds == 0.0
