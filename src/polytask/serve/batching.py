"""A micro-batcher: rows from concurrent requests share one model call.

Why: a model call on one row costs nearly as much as on a hundred (Python, pandas and kernel
launch overhead dominate), so a server that predicts per request spends its CPU on overhead.
The batcher holds the first waiting request for at most ``window_ms`` (counted from when it
arrived, so a request never waits longer than the window for company), takes every request that
arrives meanwhile up to ``max_batch_rows`` rows, runs ONE call of ``process`` in a single worker
thread, and hands each request its own results. Requests are never split across batches.

Back-pressure: at most ``max_pending_rows`` rows may wait; beyond that :meth:`submit` raises
:class:`Overloaded` at once (the server answers 503) instead of letting latency grow without
bound. One worker thread means the model is never called concurrently, which keeps its memory
flat and torch's intra-op threads (``threads``) uncontended.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

P = TypeVar("P")
R = TypeVar("R")


class Overloaded(Exception):
    """The batcher cannot take the request now (queue full, or not running)."""


@dataclass
class _Job(Generic[P, R]):
    payload: P
    rows: int
    arrived: float
    future: asyncio.Future[R]


@dataclass
class BatchStats:
    """Counters for /healthz and the load test: how much batching actually happened."""

    requests: int = 0
    rows: int = 0
    batches: int = 0
    rejected: int = 0
    largest_batch_rows: int = 0
    pending_rows: int = 0

    def as_dict(self) -> dict[str, Any]:
        mean = self.rows / self.batches if self.batches else 0.0
        return {
            "requests": self.requests,
            "rows": self.rows,
            "batches": self.batches,
            "mean_batch_rows": round(mean, 2),
            "largest_batch_rows": self.largest_batch_rows,
            "pending_rows": self.pending_rows,
            "rejected": self.rejected,
        }


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


@dataclass
class MicroBatcher(Generic[P, R]):
    """Collects payloads from concurrent coroutines and processes them in batches.

    ``process`` receives the payloads of one batch and returns one result per payload, in
    order; a result that is an exception is raised in that payload's :meth:`submit` only, so
    one bad request never fails its batch-mates. ``size`` counts a payload's rows.
    """

    process: Callable[[list[P]], Sequence[R | BaseException]]
    size: Callable[[P], int]
    window_ms: float = 2.0
    max_batch_rows: int = 1024
    max_pending_rows: int = 16384
    threads: int | None = None
    stats: BatchStats = field(default_factory=BatchStats)

    def __post_init__(self) -> None:
        if self.window_ms < 0:
            raise ValueError("window_ms must be >= 0")
        if self.max_batch_rows < 1 or self.max_pending_rows < 1:
            raise ValueError("max_batch_rows and max_pending_rows must be >= 1")
        self._queue: asyncio.Queue[_Job[P, R]] | None = None
        self._carry: _Job[P, R] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the collector on the running event loop (the server's lifespan calls this)."""
        if self.running:
            return
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="polytask-predict",
            initializer=_set_threads,
            initargs=(self.threads,),
        )
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="batcher")

    async def stop(self) -> None:
        """Stop collecting; waiting requests fail with :class:`Overloaded` (shutting down)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        waiting = [self._carry] if self._carry else []
        self._carry = None
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for job in waiting:
            if not job.future.done():
                job.future.set_exception(Overloaded("the server is shutting down"))
        self.stats.pending_rows = 0
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)

    async def submit(self, payload: P) -> R:
        """Queue one request's payload and wait for its result (or its own exception)."""
        if not self.running or self._queue is None:
            raise Overloaded("the predictor is not running")
        rows = self.size(payload)
        if self.stats.pending_rows + rows > self.max_pending_rows:
            self.stats.rejected += 1
            raise Overloaded(
                f"overloaded: {self.stats.pending_rows} rows are already waiting "
                f"(limit {self.max_pending_rows}); retry shortly"
            )
        loop = asyncio.get_running_loop()
        job: _Job[P, R] = _Job(payload, rows, loop.time(), loop.create_future())
        self.stats.pending_rows += rows
        self._queue.put_nowait(job)
        return await job.future

    async def _next_batch(self) -> list[_Job[P, R]]:
        """Wait for a first job, then gather more until the window closes or the batch is full.

        The window is measured from the first job's arrival: while the worker was busy with
        the previous batch, waiting jobs have already used up their window and go at once.
        """
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, rows = [first], first.rows
        deadline = first.arrived + self.window_ms / 1000.0
        while rows < self.max_batch_rows:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if rows + job.rows > self.max_batch_rows:
                self._carry = job  # it starts the next batch; requests are never split
                break
            batch.append(job)
            rows += job.rows
        return batch

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            taken = sum(job.rows for job in batch)
            self.stats.pending_rows -= taken
            live = [job for job in batch if not job.future.done()]  # drop abandoned requests
            if not live:
                continue
            try:
                results: Sequence[R | BaseException] = await loop.run_in_executor(
                    self._executor, self.process, [job.payload for job in live]
                )
                if len(results) != len(live):
                    raise RuntimeError(f"process returned {len(results)} results for {len(live)}")
            except asyncio.CancelledError:
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(Overloaded("the server is shutting down"))
                raise
            except Exception as error:  # a bug in process: fail this batch, keep serving
                results = [error] * len(live)
            self.stats.requests += len(live)
            self.stats.batches += 1
            live_rows = sum(job.rows for job in live)
            self.stats.rows += live_rows
            self.stats.largest_batch_rows = max(self.stats.largest_batch_rows, live_rows)
            for job, result in zip(live, results, strict=True):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)
