"""Micro-batching: requests that arrive together share one batched detector call.

`MicroBatcher.submit(item)` queues an item and awaits its result. One worker task takes the first
waiting item, gathers more until the batch is full (`max_batch`) or `max_wait_s` has passed since it
took the first, and runs `run_batch(items)` in an executor thread (the event loop keeps accepting
requests meanwhile; while a batch runs, the next one fills up). A full queue refuses at once
(`QueueFull`) instead of letting latency grow without bound.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Callable, Sequence


class QueueFull(RuntimeError):
    """More items are waiting than the queue holds."""


class MicroBatcher:
    def __init__(self, run_batch: Callable[[Sequence[Any]], Sequence[Any]], *, max_batch: int, max_wait_s: float,
                 max_queue: int, executor: concurrent.futures.Executor,
                 on_batch: Callable[[int], None] | None = None, on_depth: Callable[[int], None] | None = None):
        self._run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.max_queue = int(max_queue)
        self._executor = executor
        self._on_batch = on_batch or (lambda n: None)
        self._on_depth = on_depth or (lambda n: None)
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._busy = False  # a batch is running in the executor

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._loop(), name="micro-batcher")

    async def stop(self) -> None:
        """Runs what is queued, then stops the worker (the server stopped accepting requests before)."""
        if self._worker is None:
            return
        while self._queue.qsize() or self._busy:
            await asyncio.sleep(0.005)
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass
        self._worker = None

    def room(self) -> int:
        return self.max_queue - self.depth

    async def submit(self, item: Any) -> Any:
        return (await self.submit_many([item]))[0]

    async def submit_many(self, items: Sequence[Any]) -> list[Any]:
        """Queues all items or none (QueueFull); -> their results in order."""
        if self._queue is None:
            raise RuntimeError("the batcher is not running")
        if len(items) > self.room():
            raise QueueFull(f"{self.depth} images are already waiting (limit {self.max_queue})")
        loop = asyncio.get_running_loop()
        futures = []
        for item in items:
            future = loop.create_future()
            self._queue.put_nowait((item, future))
            futures.append(future)
        self._on_depth(self.depth)
        return list(await asyncio.gather(*futures))

    async def _take(self) -> list[tuple[Any, asyncio.Future]]:
        queue = self._queue
        batch = [await queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._take()
            self._on_depth(self.depth)
            live = [(item, future) for item, future in batch if not future.done()]  # skip cancelled clients
            if not live:
                continue
            self._on_batch(len(live))
            self._busy = True
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, [item for item, _ in live])
            except Exception as err:  # noqa: BLE001 - every waiting request gets the error, the loop goes on
                for _, future in live:
                    if not future.done():
                        future.set_exception(err)
                continue
            finally:
                self._busy = False
            for (_, future), result in zip(live, results):
                if not future.done():
                    future.set_result(result)
