"""Dynamic batching: merge inputs from concurrent requests into few, larger predict calls."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from modelfleet.models.model import Batching

T = TypeVar("T")
R = TypeVar("R")


class _Entry(Generic[T, R]):
    __slots__ = ("enqueued_at", "future", "item")

    def __init__(self, item: T, future: asyncio.Future[R], enqueued_at: float) -> None:
        self.item = item
        self.future = future
        self.enqueued_at = enqueued_at


class DynamicBatcher(Generic[T, R]):
    """Queues single inputs and runs them through ``run_batch`` in batches.

    A batch runs when it holds ``max_batch_size`` inputs or when its oldest input has waited
    ``max_wait_ms``, whichever comes first. One batch runs at a time; inputs that arrive meanwhile
    form the next batch, which is what makes batching adapt to load. Results go back to each
    caller in the order of its own inputs. An input whose caller gave up (cancelled) is dropped
    before it reaches the model.
    """

    def __init__(self, run_batch: Callable[[list[T]], Awaitable[list[R]]], policy: Batching) -> None:
        self._run_batch = run_batch
        self._max_size = policy.max_batch_size
        self._max_wait_s = policy.max_wait_ms / 1000.0
        self._pending: deque[_Entry[T, R]] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        # True while a batch is in the model: the next one waits, so one batch runs at a time.
        self._running = False
        self.batches_run = 0

    async def submit(self, items: list[T]) -> list[R]:
        """Queue ``items`` and wait for their results, in order."""
        if self._max_wait_s == 0 and not self._running and not self._pending and len(items) <= self._max_size:
            # Greedy batching and an idle model: run at once, in this task. Skipping the queue and
            # the batching task saves two task switches a call (measurable at concurrency 1);
            # requests arriving meanwhile queue up and form the next batch as usual.
            return await self._run_now(items)
        loop = asyncio.get_running_loop()
        self._ensure_task()
        now = loop.time()
        futures = [loop.create_future() for _ in items]
        self._pending.extend(_Entry(item, fut, now) for item, fut in zip(items, futures, strict=True))
        self._wake()
        try:
            if len(futures) == 1:
                return [await futures[0]]
            return list(await asyncio.gather(*futures))
        except asyncio.CancelledError:
            for fut in futures:
                fut.cancel()
            raise

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _sleep_until_woken(self, timeout_s: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._wakeup = loop.create_future()
        handle = None
        if timeout_s is not None:
            handle = loop.call_later(timeout_s, self._wake)
        try:
            await self._wakeup
        finally:
            self._wakeup = None
            if handle is not None:
                handle.cancel()

    def _live_count(self) -> int:
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()
        return len(self._pending)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._live_count() == 0 or self._running:
                # Nothing queued, or a batch run at once by submit() is still in the model.
                await self._sleep_until_woken(None)
                continue
            wait_s = self._pending[0].enqueued_at + self._max_wait_s - loop.time()
            if len(self._pending) < self._max_size and wait_s > 0:
                await self._sleep_until_woken(wait_s)
                if len(self._pending) < self._max_size and (
                    self._pending and self._pending[0].enqueued_at + self._max_wait_s > loop.time()
                ):
                    continue
            batch: list[_Entry[T, R]] = []
            while self._pending and len(batch) < self._max_size:
                entry = self._pending.popleft()
                if not entry.future.done():
                    batch.append(entry)
            if batch:
                await self._run(batch)

    async def _run_now(self, items: list[T]) -> list[R]:
        self._running = True
        self.batches_run += 1
        try:
            results = await self._run_batch(items)
        finally:
            self._running = False
            if self._pending:
                self._ensure_task()
                self._wake()
        if len(results) != len(items):
            raise RuntimeError(
                f"predict returned {len(results)} outputs for {len(items)} inputs; "
                "it must return one per input"
            )
        return results

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _run(self, batch: list[_Entry[T, R]]) -> None:
        self._running = True
        self.batches_run += 1
        try:
            results = await self._run_batch([entry.item for entry in batch])
            if len(results) != len(batch):
                raise RuntimeError(
                    f"predict returned {len(results)} outputs for {len(batch)} inputs; "
                    "it must return one per input"
                )
        except Exception as exc:  # the error belongs to every caller in the batch
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            return
        finally:
            self._running = False
        for entry, result in zip(batch, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)

    async def close(self) -> None:
        """Stop the batching task; queued inputs fail with CancelledError."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            self._pending.popleft().future.cancel()
