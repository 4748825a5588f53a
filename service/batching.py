"""Adaptive micro-batching inside one server process: concurrent requests for the same model become one call.

Requests queue here instead of each taking a worker thread; a single runner per model takes whole requests off the
queue, up to `max_batch_size` items (always at least one request), and runs them as one `work` call in a worker
thread. The first request of a batch waits at most `max_wait_ms` for company; requests that queued while the
previous batch ran go at once. So an idle server adds at most `max_wait_ms`, and a busy one forms batches as
large as its load without waiting, paying the thread hand-off and the onnxruntime call once per batch.

BentoML's own `batchable=True` APIs take a single batched parameter, which leaves no room for per-request
parameters such as `k` and `model` or for several images per request; hence this small batcher.
"""
from __future__ import annotations

import asyncio
import functools
import time
from typing import Callable, Generic, Sequence, TypeVar

import anyio

from service.admission import charge, cpu_timed

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(self, work: Callable[[Sequence[T]], Sequence[R | Exception]], size: Callable[[T], int],
                 max_batch_size: int, max_wait_ms: float):
        """work: items → one result or exception per item, in order (an exception answers only its request).
        size: how many batch slots an item takes (e.g. its number of images)."""
        self.work, self.size = work, size
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self._queue: list[tuple[T, asyncio.Future[tuple[R, float]], float]] = []
        self._arrived = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[tuple[R, float]] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future, time.monotonic()))
        self._arrived.set()
        if self._runner is None or self._runner.done():  # started lazily, inside the server's event loop
            self._runner = asyncio.create_task(self._run())
        result, seconds = await future
        charge(seconds)  # this request's share of its batch's CPU time (service/admission.py)
        return result

    def _queued_size(self) -> int:
        return sum(self.size(item) for item, _, _ in self._queue)

    def _take(self) -> list[tuple[T, asyncio.Future[tuple[R, float]], float]]:
        """Whole requests from the head of the queue, up to max_batch_size slots (at least one request)."""
        taken, slots = 0, 0
        while taken < len(self._queue):
            size = self.size(self._queue[taken][0])
            if taken > 0 and slots + size > self.max_batch_size:
                break
            slots, taken = slots + size, taken + 1
        batch, self._queue = self._queue[:taken], self._queue[taken:]
        return batch

    async def _run(self) -> None:
        while self._queue:
            deadline = self._queue[0][2] + self.max_wait
            while self._queued_size() < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:  # (an alias of TimeoutError from Python 3.11)
                    break
            batch = [entry for entry in self._take() if not entry[1].done()]  # skip requests already cancelled
            if not batch:
                continue
            items = [item for item, _, _ in batch]
            try:
                results, seconds = await anyio.to_thread.run_sync(cpu_timed, functools.partial(self.work, items))
            except Exception as e:  # a bug in `work`: every request of the batch gets it
                results, seconds = [e] * len(batch), 0.0
            slots = sum(self.size(item) for item in items)
            for (item, future, _), result in zip(batch, results):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result((result, seconds * self.size(item) / slots))
