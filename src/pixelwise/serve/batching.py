"""One inference thread fed by a bounded asyncio queue, with micro-batching.

Every request's image goes through :meth:`InferenceQueue.submit`. A single worker thread runs
the model, so N concurrent clients cost one model's activations, not N; requests that arrive
together with images of equal size are run as one batch (up to ``max_batch``), the rest one by
one. When ``max_queue`` requests are already waiting, :meth:`submit` refuses at once
(:class:`QueueFull`, answered with 503) instead of letting memory grow with the backlog.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np


class QueueFull(Exception):
    """The inference queue holds ``max_queue`` requests already."""


@dataclass
class _Job:
    image: np.ndarray
    future: asyncio.Future

    @property
    def key(self) -> tuple:
        # Images batch together only when their shapes and dtypes match exactly.
        return self.image.shape, self.image.dtype.str


@dataclass
class QueueStats:
    """Counters reported by ``/health``."""

    requests: int = 0
    batches: int = 0
    errors: int = 0
    largest_batch: int = 0
    busy_s: float = 0.0
    batch_sizes: dict[int, int] = field(default_factory=dict)


class InferenceQueue:
    """Run ``predict_batch`` on one worker thread, feeding it from a bounded queue.

    Args:
        predict_batch: ``list of (H, W, C) arrays of one shape -> list of results``; called on
            the worker thread only.
        max_batch: the most requests run as one batch (1 disables batching).
        max_queue: the most requests waiting; more are refused with :class:`QueueFull`.
        batch_wait_s: how long the worker waits for more equal-sized requests to join a batch
            that is not full yet.
    """

    def __init__(self, predict_batch: Callable[[Sequence[np.ndarray]], list[Any]], *,
                 max_batch: int = 4, max_queue: int = 32, batch_wait_s: float = 0.005):
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be >= 1, got {max_batch}, {max_queue}")
        self.predict_batch = predict_batch
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_s
        self.stats = QueueStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pixelwise-infer")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._held: _Job | None = None  # a job of another size, first in line for the next batch

    @property
    def waiting(self) -> int:
        """Requests queued and not yet taken by the worker."""
        return (self._queue.qsize() if self._queue is not None else 0) + (self._held is not None)

    @property
    def alive(self) -> bool:
        """False when the worker task has died (it should not: it catches model errors)."""
        return self._task is None or not self._task.done()

    def start(self) -> None:
        """Start the worker on the running event loop (done lazily by :meth:`submit` too)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        self._loop = loop
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._held = None
        self._task = loop.create_task(self._run(), name="pixelwise-batcher")

    async def stop(self) -> None:
        """Stop the worker; requests still waiting get a ``RuntimeError``."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        waiting = [self._held] if self._held is not None else []
        self._held = None
        if self._queue is not None:
            while not self._queue.empty():
                waiting.append(self._queue.get_nowait())
        for job in waiting:
            if not job.future.done():
                job.future.set_exception(RuntimeError("server shutting down"))

    def close(self) -> None:
        """Release the worker thread (after :meth:`stop`)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, image: np.ndarray) -> Any:
        """Queue one image and wait for its result.

        Raises:
            QueueFull: ``max_queue`` requests are waiting already.
            Exception: whatever the model raised for this batch.
        """
        if self._loop is not asyncio.get_running_loop() or self._task is None or self._task.done():
            self.start()
        future = self._loop.create_future()
        try:
            self._queue.put_nowait(_Job(image=image, future=future))
        except asyncio.QueueFull:
            raise QueueFull(f"{self.max_queue} requests are waiting already") from None
        return await future

    async def _next_batch(self) -> list[_Job]:
        """Wait for a job, then gather queued jobs of the same size, up to ``max_batch``."""
        first = self._held if self._held is not None else await self._queue.get()
        self._held = None
        batch = [first]
        self._take_matching(batch)
        if len(batch) < self.max_batch and self.batch_wait_s > 0 and self._held is None:
            # Give requests that are on their way a moment to join. One short sleep rather
            # than wait_for(queue.get()), whose cancellation can drop an item on Python 3.11.
            await asyncio.sleep(self.batch_wait_s)
            self._take_matching(batch)
        # A client that gave up (disconnect, timeout) no longer needs its prediction.
        return [job for job in batch if not job.future.done()]

    def _take_matching(self, batch: list[_Job]) -> None:
        """Move queued jobs of the batch's size into it, stopping at one of another size."""
        while len(batch) < self.max_batch and self._held is None:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if job.key == batch[0].key:
                batch.append(job)
            else:
                # A different size cannot share the batch; it leads the next one, so the
                # order of arrival is kept.
                self._held = job

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._executor, self.predict_batch, [job.image for job in batch])
            except asyncio.CancelledError:  # stop(): nobody will finish this batch
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(RuntimeError("server shutting down"))
                raise
            except Exception as e:  # the model's error belongs to these requests, not the worker
                self.stats.errors += len(batch)
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            finally:
                self._record(len(batch), time.perf_counter() - start)
            for job, result in zip(batch, results):
                if not job.future.done():
                    job.future.set_result(result)

    def _record(self, size: int, seconds: float) -> None:
        s = self.stats
        s.requests += size
        s.batches += 1
        s.largest_batch = max(s.largest_batch, size)
        s.busy_s += seconds
        s.batch_sizes[size] = s.batch_sizes.get(size, 0) + 1
