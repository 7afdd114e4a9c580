"""What the asyncio-based adapters share (:mod:`.asyncio` on streams, :mod:`.asgi` under an ASGI
server): calling one connection's handler off the event loop, in order, with backpressure.

Private to the package: the names here are not part of the API.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

from meetstream_live import Disconnected, Event

from ._common import Handler, deliver, media_size

__all__ = ["HandlerRunner", "handler_pool"]


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
