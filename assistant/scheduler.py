"""One in-flight generation per model, with a bounded queue of waiting requests.

A request that finds the queue full is refused at once with a retry hint (HTTP 429 with
Retry-After at the edge) instead of piling up behind a model that can only serve one
generation at a time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    def __init__(self, retry_after_s: int, waiting: int) -> None:
        super().__init__(f"{waiting} requests are already waiting for the model")
        self.retry_after_s = retry_after_s
        self.waiting = waiting


class GenerationScheduler:
    """Runs blocking generation calls one at a time on a dedicated worker thread."""

    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="splice-generate")
        self._slot = asyncio.Semaphore(1)
        self._waiting = 0
        self._busy = False
        self._avg_s = 1.0  # moving average of generation time, for Retry-After

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def busy(self) -> bool:
        return self._busy

    def retry_after(self) -> int:
        return max(1, math.ceil(self._avg_s * (self._waiting + 1)))

    async def submit(self, fn: Callable[[], T], on_start: Callable[[], None] | None = None) -> Awaitable[T]:
        """Wait for the model (or raise QueueFull) and start `fn` on the worker thread.

        Returns an awaitable for the result. The slot is held until `fn` has really returned,
        even if the awaiting request goes away: cancelled work must end before the next starts.
        """
        if (self._busy or self._slot.locked()) and self._waiting >= self.queue_size:
            raise QueueFull(self.retry_after(), self._waiting)
        self._waiting += 1
        try:
            await self._slot.acquire()
        finally:
            self._waiting -= 1
        self._busy = True
        loop = asyncio.get_running_loop()
        started = time.perf_counter()

        def release(_: Future[T]) -> None:
            elapsed = time.perf_counter() - started
            self._avg_s = 0.8 * self._avg_s + 0.2 * elapsed

            def _free() -> None:
                self._busy = False
                self._slot.release()

            loop.call_soon_threadsafe(_free)

        if on_start is not None:
            on_start()
        future = self._executor.submit(fn)
        future.add_done_callback(release)
        return asyncio.wrap_future(future)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
