"""The handler-thread delivery engine of the event-loop adapters (asyncio, trio, ASGI): one
connection's events to its handler, in order, off the loop, with backpressure.

Private to the package: the names here are not part of the API.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

from meetstream_live import Event

from ._driver import HandlerCalls, Post, media_size
from ._handler import Backlog

__all__ = ["Delivery", "handler_pool"]


def handler_pool(threads: int) -> ThreadPoolExecutor:
    """The threads a server's handlers run in (``ServerOptions.handler_threads``); threads are
    started as needed, up to ``threads``."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="meetstream-handler")


class Delivery:
    """Hands one connection's events to its handler, in order, with no task and no future per
    batch: on the loop when nothing is queued and the handler says it can take the batch
    without blocking (:meth:`HandlerCalls.offer`); else in the server's threads, where the
    thread that delivers a batch takes whatever was queued meanwhile too (up to
    ``max_rounds`` batches, then it yields its thread to the other connections).

    The media waiting counts in the connection's :class:`Backlog` (the adapter pauses reading
    while it is over its limit). A handler error is reported once, through ``post`` (the
    driver closes with 1011); :meth:`when_idle` tells when every batch submitted so far is
    delivered.
    """

    def __init__(
        self,
        calls: HandlerCalls,
        executor: Executor,
        post: Post,
        backlog: Backlog,
        *,
        max_rounds: int = 16,
    ) -> None:
        self.calls = calls
        self.executor = executor
        self.post = post
        self.backlog = backlog
        self._max_rounds = max_rounds
        self._batches: deque[list[Event]] = deque()
        self._sizes = 0  # media of the batches queued (not yet taken by a thread)
        self._lock = threading.Lock()
        self._running = False
        self._idle: list[Callable[[], None]] = []

    def submit(self, events: list[Event], size: int | None = None) -> None:
        """Queue a batch (``size``: its media bytes, if already counted)."""
        if size is None:
            size = media_size(events)
        with self._lock:
            idle = not self._running
        if idle:
            done = self.calls.offer(events)
            if isinstance(done, Exception):
                self._failed(done)
                return
            if done:
                return
        self.backlog.add(size)
        with self._lock:
            self._batches.append(events)
            self._sizes += size
            start = not self._running
            self._running = True
        if start:
            self.executor.submit(self._drain)

    def _failed(self, error: Exception) -> None:
        self.post(lambda driver: driver.handler_error(error))

    def _drain(self) -> None:
        calls = self.calls
        for _ in range(self._max_rounds):
            with self._lock:
                batches = self._batches
                if not batches:
                    self._running = False
                    waiting, self._idle = self._idle, []
                    break
                batch = batches.popleft()
                while batches:
                    batch += batches.popleft()
                size, self._sizes = self._sizes, 0
            error = calls.deliver(batch)
            self.backlog.done(size)
            if error is not None:
                self._failed(error)
        else:
            # More rounds than allowed: give the thread back, continue at the queue's end.
            try:
                self.executor.submit(self._drain)
            except RuntimeError:  # the pool is shut down: finish here
                self._drain()
            return
        for callback in waiting:
            callback()

    def when_idle(self, callback: Callable[[], None]) -> bool:
        """True if every batch submitted so far is delivered; else False, and ``callback`` is
        called (from a handler thread: make it thread-safe) once they are."""
        with self._lock:
            if not self._running:
                return True
            self._idle.append(callback)
            return False
