"""The delivery engine and the failure rule of one connection's handler calls."""

from __future__ import annotations

import asyncio
import threading
import time

from meetstream_live import Disconnected, Event, MediaChunk
from meetstream_live.adapters import Backlog, Handler
from meetstream_live.adapters._delivery import Delivery, handler_pool
from meetstream_live.adapters._driver import INLINE_STALL, HandlerCalls, deliver


class Failing(Handler):
    """Fails on its second chunk."""

    def __init__(self) -> None:
        self.seen: list[Event] = []

    def on_chunk(self, event: MediaChunk) -> None:
        self.seen.append(event)
        if len(self.seen) == 2:
            raise ValueError("boom")

    def on_disconnect(self, event: Disconnected) -> None:
        self.seen.append(event)


def test_deliver_hands_a_batch_over_at_once_and_the_end_after_a_failure() -> None:
    handler = Failing()
    end = Disconnected(1000, "", True)
    error = deliver(handler, [MediaChunk(b"abc", 0), MediaChunk(b"d", 3), MediaChunk(b"e", 4), end])
    assert isinstance(error, ValueError)
    assert [type(e).__name__ for e in handler.seen] == ["MediaChunk", "MediaChunk", "Disconnected"]


def test_after_a_failure_only_disconnected_is_delivered() -> None:
    """The rule, in one place: a later batch of a failed handler is cut to its end."""
    handler = Failing()
    calls = HandlerCalls(handler)
    assert isinstance(calls.deliver([MediaChunk(b"a", 0), MediaChunk(b"b", 1)]), ValueError)
    assert calls.failed
    assert calls.deliver([MediaChunk(b"c", 2)]) is None
    assert calls.offer([MediaChunk(b"d", 3)]) is False  # never inline once failed
    end = Disconnected(1006, "", False)
    assert calls.deliver([MediaChunk(b"e", 4), end]) is None
    assert handler.seen[-1] is end and len(handler.seen) == 3


class SlowInline(Handler):
    """Says it can run inline, then takes long: later batches must go to the threads."""

    def __init__(self) -> None:
        self.inline_calls = 0
        self.threads: set[str] = set()
        self.data = bytearray()

    def dispatch_inline(self, events: list[Event]) -> bool:
        self.inline_calls += 1
        time.sleep(INLINE_STALL * 2)
        self.dispatch(events)
        return True

    def on_chunk(self, event: MediaChunk) -> None:
        self.threads.add(threading.current_thread().name)
        self.data += event.data


def test_a_stalled_inline_handler_goes_back_to_threads() -> None:
    async def main() -> SlowInline:
        loop = asyncio.get_running_loop()
        handler = SlowInline()
        pool = handler_pool(2)
        errors: list[object] = []
        backlog = Backlog(1 << 20)
        delivery = Delivery(HandlerCalls(handler), pool, errors.append, backlog)
        for i in range(5):
            delivery.submit([MediaChunk(bytes([i]) * 10, 10 * i)])
        idle = asyncio.Event()
        if not delivery.when_idle(lambda: loop.call_soon_threadsafe(idle.set)):
            await idle.wait()
        pool.shutdown()
        assert not errors
        assert backlog.bytes == 0
        return handler

    handler = asyncio.run(main())
    assert handler.inline_calls == 1
    assert any(name.startswith("meetstream-handler") for name in handler.threads)
    assert bytes(handler.data) == b"".join(bytes([i]) * 10 for i in range(5))


def test_the_media_waiting_counts_in_the_backlog_until_delivered() -> None:
    gate = threading.Event()

    class Slow(Handler):
        def on_chunk(self, event: MediaChunk) -> None:
            gate.wait(5)

    pool = handler_pool(2)
    backlog = Backlog(limit=15)
    below = threading.Event()
    backlog.on_below = below.set
    delivery = Delivery(HandlerCalls(Slow()), pool, print, backlog)
    delivery.submit([MediaChunk(b"x" * 10, 0)])
    delivery.submit([MediaChunk(b"y" * 10, 10)])
    assert backlog.bytes == 20 and backlog.should_pause()
    gate.set()
    assert below.wait(5)
    deadline = time.monotonic() + 5
    while backlog.bytes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backlog.bytes == 0
    pool.shutdown()


def test_a_handler_error_is_posted_to_the_driver_once() -> None:
    posted: list[object] = []
    pool = handler_pool(1)
    done = threading.Event()

    class Boom(Handler):
        def on_chunk(self, event: MediaChunk) -> None:
            raise OSError("disk")

        def on_disconnect(self, event: Disconnected) -> None:
            done.set()

    delivery = Delivery(HandlerCalls(Boom()), pool, posted.append, Backlog())
    delivery.submit([MediaChunk(b"a", 0)])
    delivery.submit([MediaChunk(b"b", 1), Disconnected(1011, "handler error", False)])
    assert done.wait(5)
    pool.shutdown(wait=True)
    assert len(posted) == 1  # the close with 1011, asked for once

