"""What the asyncio-based adapters share (:mod:`.asyncio` on a protocol, :mod:`.asgi` under an
ASGI server): calling one connection's handler off the event loop, in order, with backpressure.

Private to the package: the names here are not part of the API.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

from meetstream_live import Disconnected, Event

from ._common import INLINE_BACKOFF, INLINE_STALL, Handler, InlineOffer, deliver, media_size

__all__ = ["INLINE_BACKOFF", "INLINE_STALL", "HandlerRunner", "ThreadedDelivery", "handler_pool"]


def handler_pool(threads: int) -> ThreadPoolExecutor:
    """The threads a server's handlers run in (``ServerOptions.handler_threads``); threads are
    started as needed, up to ``threads``."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="meetstream-handler")


class HandlerRunner:
    """Calls one connection's handler off the loop, in order, and counts the media waiting.

    Batches go to ``executor`` (the server's handler threads) one at a time (whatever was
    submitted meanwhile is merged into the next call). The reader awaits :meth:`wait_below`
    after each read, so the socket (or the ASGI ``receive()``) is not read while more than the
    limit waits. After the
    handler raised, it only hears of the :class:`~meetstream_live.Disconnected`; ``on_error``
    is called once, on the loop, with the first exception.
    """

    def __init__(
        self,
        handler: Handler,
        on_error: Callable[[Exception], None],
        executor: Executor | None = None,
    ) -> None:
        self.handler = handler
        self.executor = executor
        self.pending = 0
        self.error: Exception | None = None
        self._on_error = on_error
        self._batches: deque[list[Event]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._progress = asyncio.Event()

    def submit(self, events: list[Event]) -> None:
        self.pending += media_size(events)
        self._batches.append(events)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._batches:
            batch: list[Event] = []
            while self._batches:
                batch += self._batches.popleft()
            if self.error is not None:  # after a failure the handler only hears of the end
                batch = [e for e in batch if isinstance(e, Disconnected)]
            error = await loop.run_in_executor(self.executor, deliver, self.handler, batch)
            self.pending -= media_size(batch)
            self._progress.set()
            if error is not None and self.error is None:
                self.error = error
                self._on_error(error)

    async def wait_below(self, limit: int) -> bool:
        """Wait while too much media is pending; True if the reader had to pause."""
        paused = False
        while self.pending > limit and self.error is None:
            paused = True
            self._progress.clear()
            await self._progress.wait()
        return paused

    async def finish(self) -> None:
        """Return once every batch submitted so far has been delivered."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)


class ThreadedDelivery:
    """Hands one connection's events to its handler, in order, with no task and no future
    per batch: on the loop when nothing is queued and the handler says it can take the batch
    without blocking (:meth:`Handler.dispatch_inline`); else in the server's threads, where the
    thread that delivers a batch takes whatever was queued meanwhile too (up to
    ``max_rounds`` batches, then it yields its thread to the other connections), and only
    calls back into the loop when the reader may resume (``on_below``), when the handler
    raised (``on_error``, once) and when it ran dry while :meth:`finish` waits.

    :meth:`submit` is called on the loop with the batch's media size (computed once);
    :attr:`pending` is what waits or is being delivered.
    """

    def __init__(
        self,
        handler: Handler,
        executor: Executor,
        loop: asyncio.AbstractEventLoop,
        *,
        limit: int,
        on_below: Callable[[], None],
        on_error: Callable[[Exception], None],
        max_rounds: int = 16,
    ) -> None:
        self.handler = handler
        self.executor = executor
        self.loop = loop
        self.limit = limit
        self.pending = 0
        self.error: Exception | None = None
        self.waiting = False  # the reader paused (pending > limit): call on_below once below
        self._on_below = on_below
        self._on_error = on_error
        self._max_rounds = max_rounds
        self._batches: deque[list[Event]] = deque()
        self._sizes = 0  # media of the batches queued (not yet taken by a thread)
        self._lock = threading.Lock()
        self._running = False
        self._drained: asyncio.Future[None] | None = None
        self._inline = InlineOffer(handler)

    def submit(self, events: list[Event], size: int) -> bool:
        """Queue a batch; True if the reader must pause (more than ``limit`` is pending)."""
        with self._lock:
            idle = not self._running
        if idle and self._try_inline(events):
            return False
        with self._lock:
            self._batches.append(events)
            self.pending += size
            self._sizes += size
            start = not self._running
            self._running = True
            over = self.pending > self.limit and self.error is None
            if over:
                self.waiting = True
        if start:
            self.executor.submit(self._drain)
        return over

    def _try_inline(self, events: list[Event]) -> bool:
        """Nothing else of this connection is queued or running: the handler may take this
        batch here, on the loop (:meth:`Handler.dispatch_inline`), if it says it can without
        blocking (:class:`InlineOffer`, with its stall backoff). An error there is a handler
        error, reported on the loop's next turn (we are inside the reader's step)."""
        if self.error is not None:
            return False
        done = self._inline.offer(events)
        if isinstance(done, Exception):
            self.error = done
            self.loop.call_soon(self._on_error, done)
            return True
        return done

    def _drain(self) -> None:
        handler = self.handler
        for _ in range(self._max_rounds):
            with self._lock:
                batches = self._batches
                if not batches:
                    self._running = False
                    wake = self._drained is not None
                    break
                batch = batches.popleft()
                while batches:
                    batch += batches.popleft()
                size, self._sizes = self._sizes, 0
            if self.error is not None:  # after a failure the handler only hears of the end
                batch = [e for e in batch if isinstance(e, Disconnected)]
            error = deliver(handler, batch)
            with self._lock:
                self.pending -= size
                resume = self.waiting and self.pending <= self.limit
                if resume:
                    self.waiting = False
                first_error = error is not None and self.error is None
                if first_error:
                    self.error = error
                    self.waiting = False
            if first_error:
                assert error is not None
                self.loop.call_soon_threadsafe(self._on_error, error)
            elif resume:
                self.loop.call_soon_threadsafe(self._on_below)
        else:
            # More rounds than allowed: give the thread back, continue at the queue's end.
            try:
                self.executor.submit(self._drain)
            except RuntimeError:  # the pool is shut down: finish here
                self._drain()
            return
        if wake:
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            if self._running:
                return
        future, self._drained = self._drained, None
        if future is not None and not future.done():
            future.set_result(None)

    async def finish(self) -> None:
        """Return once every batch submitted so far has been delivered (on the loop)."""
        while True:
            with self._lock:
                if not self._running:
                    return
                if self._drained is None:
                    self._drained = self.loop.create_future()
                future = self._drained
            await asyncio.shield(future)
