"""The dynamic batcher: one queue per model, merged along the batch axis into few runs.

A request waits until a runner slot is free; the batch it starts then takes every queued request
with the same non-batch shape and dtypes, up to `max_batch` rows, waiting at most `max_delay` for
more. Past `queue_limit` waiting requests, `submit` refuses at once (QueueFullError -> 503). It
knows nothing about HTTP or where batches run (an async `run(feeds) -> outputs` callable).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from ember.errors import EmberError, ExecutionError

Feeds = dict[str, np.ndarray]


class QueueFullError(EmberError):
    """The model's queue is at its limit: answered 503 at once (backpressure)."""


@dataclasses.dataclass
class _Pending:
    feeds: Feeds
    rows: int
    key: tuple[Any, ...]  # requests with equal keys can share a batch
    future: asyncio.Future[Feeds]
    enqueued: float


def batch_key(feeds: Feeds) -> tuple[Any, ...]:
    """What must agree for two requests to be concatenated: names, dtypes, non-batch dims."""
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(feeds.items()))


class Batcher:
    """Dynamic batching in front of `run`, with at most `slots` batches running at once.

    `batchable=False` (inputs or outputs without a leading batch dim) runs requests alone.
    """

    def __init__(
        self,
        run: Callable[[Feeds], Awaitable[Feeds]],
        *,
        slots: int,
        max_batch: int,
        max_delay_s: float,
        queue_limit: int,
        batchable: bool,
        on_batch: Callable[[int], None] = lambda rows: None,
        on_queue_time: Callable[[float], None] = lambda s: None,
        on_depth: Callable[[int], None] = lambda n: None,
    ) -> None:
        self._run = run
        self.max_batch = max_batch if batchable else 1
        self.max_delay_s = max_delay_s
        self.queue_limit = queue_limit
        self._queue: collections.deque[_Pending] = collections.deque()
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(slots)
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._on_batch = on_batch
        self._on_queue_time = on_queue_time
        self._on_depth = on_depth

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._batch_loop())

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def submit(self, feeds: Feeds) -> Feeds:
        """Queue one request's validated inputs; returns its outputs (its rows of the batch)."""
        if len(self._queue) >= self.queue_limit:
            raise QueueFullError(
                f"the queue is full ({self.queue_limit} requests waiting); retry later"
            )
        rows = next(iter(feeds.values())).shape[0] if self.max_batch > 1 and feeds else 1
        fut: asyncio.Future[Feeds] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(feeds, rows, batch_key(feeds), fut, time.perf_counter()))
        self._on_depth(len(self._queue))
        self._arrived.set()
        return await fut

    async def _next_arrival(self, timeout: float | None) -> bool:
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            while not self._queue:
                await self._next_arrival(None)
            first = self._queue.popleft()
            if first.future.done():  # cancelled while waiting (client went away)
                self._slots.release()
                continue
            batch, rows = [first], first.rows
            deadline = loop.time() + self.max_delay_s
            while rows < self.max_batch:
                rows = self._take_matching(batch, rows)
                remaining = deadline - loop.time()
                if rows >= self.max_batch or remaining <= 0:
                    break
                if not await self._next_arrival(remaining):
                    rows = self._take_matching(batch, rows)
                    break
            self._on_depth(len(self._queue))
            task = loop.create_task(self._execute(batch, rows))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _take_matching(self, batch: list[_Pending], rows: int) -> int:
        """Move queued requests that fit (same key, rows within max_batch) into `batch`."""
        key = batch[0].key
        keep: collections.deque[_Pending] = collections.deque()
        while self._queue:
            p = self._queue.popleft()
            if p.future.done():
                continue
            if p.key == key and rows + p.rows <= self.max_batch:
                batch.append(p)
                rows += p.rows
            else:
                keep.append(p)
        self._queue.extendleft(reversed(keep))
        return rows

    async def _execute(self, batch: list[_Pending], rows: int) -> None:
        now = time.perf_counter()
        for p in batch:
            self._on_queue_time(now - p.enqueued)
        self._on_batch(rows)
        try:
            if len(batch) == 1:
                feeds = batch[0].feeds
            else:
                feeds = {
                    name: np.concatenate([p.feeds[name] for p in batch]) for name in batch[0].feeds
                }
            outputs = await self._run(feeds)
            if len(batch) > 1:
                for name, out in outputs.items():
                    if out.ndim == 0 or out.shape[0] != rows:
                        raise ExecutionError(
                            f"output {name!r} has shape {list(out.shape)}, not {rows} rows first: "
                            "the model cannot be batched; serve it with max_batch=1"
                        )
        except BaseException as e:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e if isinstance(e, Exception) else RuntimeError(repr(e)))
            if not isinstance(e, Exception):
                raise
            return
        finally:
            self._slots.release()
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result(outputs)
            return
        start = 0
        for p in batch:
            # (rows, ...) -> this request's rows; outputs have the batch axis first (checked above)
            part = {name: out[start : start + p.rows] for name, out in outputs.items()}
            start += p.rows
            if not p.future.done():
                p.future.set_result(part)

    async def drain(self, timeout_s: float) -> None:
        """Wait until the queue is empty and no batch runs (new requests are refused upstream)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (self._queue or self._running) and loop.time() < deadline:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for p in self._queue:
            if not p.future.done():
                p.future.set_exception(
                    QueueFullError("the server shut down before this request ran")
                )
        self._queue.clear()
