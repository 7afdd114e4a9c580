"""Inline delivery (``Handler.dispatch_inline``) with the trio adapter, and the rule it shares
with the asyncio adapter (``InlineOffer``): a batch is offered on the trio thread only when
nothing of the connection is queued for or running in a handler thread; refused, it goes to a
thread; an inline call that stalls sends the next batches to the threads for a while; an
exception there closes the connection with 1011."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

from meetstream_live import (
    BotClosed,
    Disconnected,
    Event,
    MediaChunk,
    StreamEnded,
    StreamStarted,
)
from meetstream_live.adapters import Backlog, ConnectionInfo, Handler, ServerOptions, _driver
from meetstream_live.adapters._delivery import Delivery, handler_pool
from meetstream_live.adapters._driver import HandlerCalls
from meetstream_live.adapters.trio import TrioBot
from meetstream_live.adapters.trio import serve as trio_serve

TIMEOUT = 5.0


def run_trio(main: Callable[[], Any]) -> None:
    async def with_timeout() -> None:
        with trio.fail_after(3 * TIMEOUT):
            await main()

    trio.run(with_timeout)


def run_trio_returning(main: Callable[[], Any]) -> Any:
    result: list[Any] = []

    async def keep() -> None:
        result.append(await main())

    run_trio(keep)
    return result[0]


async def trio_wait_until(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(TIMEOUT):
        while not predicate():
            await trio.sleep(0.005)


def chunk(data: bytes, offset: int) -> list[Event]:
    return [MediaChunk(data, offset)]


class Media(Handler):
    """Takes media inline (like the recorder), the rest in threads; records where each call ran.

    ``gate`` holds ``on_start`` (in its thread) until set; ``stall`` makes the first inline
    call take that long; ``fail_inline`` raises from ``dispatch_inline`` on media."""

    def __init__(
        self,
        *,
        accept: bool = True,
        gate: threading.Event | None = None,
        stall: float = 0.0,
        fail_inline: bool = False,
    ) -> None:
        self.accept = accept
        self.gate = gate
        self.stall = stall
        self.fail_inline = fail_inline
        self.offers = 0
        self.calls: list[tuple[str, str]] = []  # (event kind, thread name)
        self.data = bytearray()
        self.disconnected = threading.Event()
        self.last: Disconnected | None = None

    def dispatch_inline(self, events: list[Event]) -> bool:
        self.offers += 1
        if not self.accept or any(type(e) is not MediaChunk for e in events):
            return False
        if self.fail_inline:
            raise ValueError("boom")
        if self.stall:
            time.sleep(self.stall)
            self.stall = 0.0
        self.dispatch(events)
        return True

    def _seen(self, event: Event) -> None:
        self.calls.append((type(event).__name__, threading.current_thread().name))

    def on_start(self, event: StreamStarted) -> None:
        if self.gate is not None:
            assert self.gate.wait(TIMEOUT)
        self._seen(event)

    def on_chunk(self, event: MediaChunk) -> None:
        assert event.offset == len(self.data)
        self._seen(event)
        self.data += event.data

    def on_end(self, event: StreamEnded) -> None:
        self._seen(event)

    def on_disconnect(self, event: Disconnected) -> None:
        self._seen(event)
        self.last = event
        self.disconnected.set()


def threads_of(handler: Media, kind: str) -> set[str]:
    return {thread for name, thread in handler.calls if name == kind}


class RunnerHarness:
    """A :class:`Delivery` as a connection holds one, on the trio thread; handler errors are
    what it posts."""

    def __init__(self, handler: Handler) -> None:
        self.pool = handler_pool(4)
        self.backlog = Backlog()
        self.posted: list[object] = []
        self.runner = Delivery(HandlerCalls(handler), self.pool, self.posted.append, self.backlog)

    @property
    def idle(self) -> bool:
        return self.runner.when_idle(lambda: None)

    @property
    def pending(self) -> int:
        return self.backlog.bytes

    @property
    def errors(self) -> int:
        return len(self.posted)


async def with_runner(handler: Handler, body: Callable[[RunnerHarness], Any]) -> RunnerHarness:
    harness = RunnerHarness(handler)
    try:
        await body(harness)
        await trio_wait_until(lambda: harness.idle)
    finally:
        harness.pool.shutdown()
    return harness


# ------------------------------------------------------------------------ the runner alone


def test_an_idle_runner_delivers_inline_at_once() -> None:
    handler = Media()
    loop_thread = threading.current_thread().name

    async def body(h: RunnerHarness) -> None:
        h.runner.submit(chunk(b"abc", 0))
        # Taken during submit(), on the trio thread: nothing pending, no thread started.
        assert bytes(handler.data) == b"abc"
        assert h.pending == 0 and h.idle
        h.runner.submit(chunk(b"de", 3))
        assert bytes(handler.data) == b"abcde"

    run_trio(lambda: with_runner(handler, body))
    assert handler.offers == 2
    assert threads_of(handler, "MediaChunk") == {loop_thread}


def test_a_refused_batch_goes_to_a_thread() -> None:
    handler = Media(accept=False)
    loop_thread = threading.current_thread().name

    async def body(h: RunnerHarness) -> None:
        h.runner.submit(chunk(b"abc", 0))  # refused inline: a handler thread takes it
        await trio_wait_until(lambda: h.idle)
        assert bytes(handler.data) == b"abc" and h.pending == 0

    run_trio(lambda: with_runner(handler, body))
    assert handler.offers == 1
    (thread,) = threads_of(handler, "MediaChunk")
    assert thread != loop_thread


def test_never_inline_while_a_thread_batch_is_pending() -> None:
    gate = threading.Event()
    handler = Media(gate=gate)
    loop_thread = threading.current_thread().name

    async def body(h: RunnerHarness) -> None:
        start = StreamStarted(bot_id="b", raw={"type": "video_stream_start", "bot_id": "b"})
        h.runner.submit([start])  # refused inline: a thread, held by the gate
        assert handler.offers == 1 and not h.idle
        h.runner.submit(chunk(b"abc", 0))
        h.runner.submit(chunk(b"de", 3))
        assert handler.offers == 1, "offered inline while the start was still in its thread"
        assert h.pending == 5
        gate.set()
        await trio_wait_until(lambda: h.idle)
        h.runner.submit(chunk(b"f", 5))  # idle again: inline
        assert handler.offers == 2 and bytes(handler.data) == b"abcdef"

    run_trio(lambda: with_runner(handler, body))
    assert [name for name, _thread in handler.calls] == ["StreamStarted"] + ["MediaChunk"] * 3
    in_threads = {thread for _name, thread in handler.calls[:3]}
    assert loop_thread not in in_threads
    assert handler.calls[3][1] == loop_thread


def test_a_stalled_inline_call_sends_the_next_batches_to_threads_for_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_driver, "INLINE_BACKOFF", 0.2)
    handler = Media(stall=_driver.INLINE_STALL * 2)
    loop_thread = threading.current_thread().name

    async def body(h: RunnerHarness) -> None:
        for i in range(5):
            h.runner.submit(chunk(bytes([i]) * 10, 10 * i))
        assert handler.offers == 1  # the stalled one; the backoff kept the rest from offers
        assert not h.idle
        await trio_wait_until(lambda: h.idle)
        h.runner.submit(chunk(b"x", 50))  # idle, but still backing off: a thread
        assert handler.offers == 1 and not h.idle
        await trio_wait_until(lambda: h.idle)
        await trio.sleep(0.25)  # the backoff is over
        h.runner.submit(chunk(b"y", 51))
        assert handler.offers == 2 and bytes(handler.data).endswith(b"xy")

    run_trio(lambda: with_runner(handler, body))
    threads = [thread for _name, thread in handler.calls]
    assert threads[0] == loop_thread and threads[-1] == loop_thread
    assert loop_thread not in set(threads[1:-1])
    assert bytes(handler.data) == b"".join(bytes([i]) * 10 for i in range(5)) + b"xy"


def test_an_inline_error_is_a_handler_error() -> None:
    handler = Media(fail_inline=True)

    async def body(h: RunnerHarness) -> None:
        h.runner.submit(chunk(b"abc", 0))
        assert h.errors == 1  # posted: the driver closes with 1011
        end = Disconnected(1011, "handler error", False)
        h.runner.submit([MediaChunk(b"de", 3), end])  # after the error: only the end, in a thread
        assert handler.offers == 1
        await trio_wait_until(lambda: h.idle)

    harness = run_trio_returning(lambda: with_runner(handler, body))
    assert harness.errors == 1
    assert [name for name, _thread in handler.calls] == ["Disconnected"]
    assert not handler.data


# ------------------------------------------------------------------------ through the server


def serving(**kwargs: Any) -> tuple[list[Media], Callable[[ConnectionInfo], Handler]]:
    handlers: list[Media] = []

    def factory(info: ConnectionInfo) -> Handler:
        handlers.append(Media(**kwargs))
        return handlers[-1]

    return handlers, factory


def test_trio_server_takes_media_inline_and_the_rest_in_threads() -> None:
    handlers, factory = serving()
    payload = bytes(range(256)) * 4 * 1024  # 1 MiB
    loop_thread = threading.current_thread().name

    async def main() -> None:
        options = ServerOptions(drain_timeout=TIMEOUT)
        async with trio_serve(factory, port=0, options=options) as server:
            bot = await TrioBot.connect(f"ws://127.0.0.1:{server.port}/", timeout=TIMEOUT)
            await bot.send_start("inline-bot")
            # The start went to a thread: wait until the runner is idle again.
            await trio_wait_until(lambda: bool(handlers) and bool(handlers[0].calls))
            (conn,) = server.connections
            await trio_wait_until(
                lambda: conn.delivery is not None and conn.delivery.when_idle(lambda: None)
            )
            for i in range(0, len(payload), 16 * 1024):
                await bot.send_chunk(payload[i : i + 16 * 1024])
            await bot.send_end(1.0)
            assert await bot.close(timeout=TIMEOUT) == BotClosed(1000, "")
            await trio_wait_until(handlers[0].disconnected.is_set)

    run_trio(main)
    (handler,) = handlers
    assert bytes(handler.data) == payload
    # Inline (an inline call slower than INLINE_STALL on a busy machine would send a few
    # batches to the threads: the strict rule is tested on the runner alone, above).
    assert loop_thread in threads_of(handler, "MediaChunk")
    for kind in ("StreamStarted", "StreamEnded", "Disconnected"):
        assert loop_thread not in threads_of(handler, kind)
    assert handler.last is not None and handler.last.clean


def test_trio_server_closes_with_1011_when_dispatch_inline_raises() -> None:
    handlers, factory = serving(fail_inline=True)

    async def main() -> None:
        options = ServerOptions(drain_timeout=TIMEOUT)
        async with trio_serve(factory, port=0, options=options) as server:
            bot = await TrioBot.connect(f"ws://127.0.0.1:{server.port}/", timeout=TIMEOUT)
            await bot.send_start("failing-bot")
            await trio_wait_until(lambda: bool(handlers) and bool(handlers[0].calls))
            await bot.send_chunk(b"x")
            assert await bot.next_event(TIMEOUT) == BotClosed(1011, "handler error")
            bot.abort()
            await trio_wait_until(handlers[0].disconnected.is_set)

    run_trio(main)
    (handler,) = handlers
    assert [name for name, _thread in handler.calls] == ["StreamStarted", "Disconnected"]
    assert handler.last is not None and handler.last.code == 1011


# ------------------------------------------------------------------------ the shared rule


def test_inline_offer_backs_off_after_a_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_driver, "INLINE_BACKOFF", 0.2)

    class Slow(Handler):
        def __init__(self) -> None:
            self.cost = 0.0
            self.calls = 0

        def dispatch_inline(self, events: list[Event]) -> bool:
            self.calls += 1
            time.sleep(self.cost)
            return True

    handler = Slow()
    offer = HandlerCalls(handler)
    assert offer.offer([]) is True
    handler.cost = _driver.INLINE_STALL * 2
    began = time.monotonic()
    assert offer.offer([]) is True  # taken, but slow: the next ones go to threads
    handler.cost = 0.0
    assert offer.offer([]) is False
    assert handler.calls == 2
    time.sleep(max(0.0, began + 0.25 - time.monotonic()))  # the backoff is over
    assert offer.offer([]) is True and handler.calls == 3


def test_inline_offer_returns_the_handler_error() -> None:
    class Raising(Handler):
        def dispatch_inline(self, events: list[Event]) -> bool:
            raise KeyError("nope")

    result = HandlerCalls(Raising()).offer([])
    assert isinstance(result, KeyError)
