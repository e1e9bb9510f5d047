"""Group commit for pipeline runs: many concurrent saves share one transaction."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque

from modelfleet.store.errors import RunRejected, StoreError
from modelfleet.store.records import PipelineRun
from modelfleet.store.store import RunStore

_Waiter = tuple[PipelineRun, "asyncio.Future[None]"]


class RunWriter:
    """Saves runs through one background task that writes whatever has queued as one transaction.

    A save waits only for the commit its run is part of: while one transaction is in flight the
    next batch gathers, so under load the number of commits, not of runs, is what the database
    pays for, and when idle a save commits at once. At most ``max_batch`` runs go in one
    transaction.

    A save arriving while the writer is idle, and at least ``now_spacing_s`` after the last save
    offered so, is first offered to the store's ``save_now``, which commits it on the spot when
    that needs no waiting (SQLite with its lock free). At concurrency 1 that spares the hand-off to
    the writer task and the store's thread; under load, or in a burst, saves come closer together
    than the spacing and share transactions as before, so the event loop spends at most one
    one-run commit (about 0.06 ms on SQLite) per ``now_spacing_s`` on them.

    When a transaction fails every save in it raises StoreError, except that when the database
    refused a run's content (RunRejected) the batch is retried one run at a time, so that only
    the faulty run's save fails. Nothing is dropped silently. ``written`` and ``failed`` count
    runs, ``transactions`` counts transactions (``save_now`` and ``save_runs`` calls that wrote or
    failed), for metrics.
    """

    def __init__(self, store: RunStore, max_batch: int = 256, now_spacing_s: float = 0.001) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if now_spacing_s < 0:
            raise ValueError(f"now_spacing_s must be 0 or more, got {now_spacing_s}")
        self.written = 0
        self.failed = 0
        self.transactions = 0
        self._store = store
        self._max_batch = max_batch
        self._queue: deque[_Waiter] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._writing = False  # a transaction of the writer task is under way
        self._now_spacing_s = now_spacing_s
        self._last_now = -math.inf  # monotonic time of the last save offered to save_now

    async def save(self, run: PipelineRun) -> None:
        """Return once ``run`` is committed; raises StoreError (or RunRejected) when it was not.

        Cancelling the caller does not withdraw the run: it is written with its batch anyway.
        """
        if self._closed:
            raise StoreError(f"the run writer is closed; run {run.id!r} was not saved")
        if not self._queue and not self._writing:
            now = time.monotonic()
            if now - self._last_now >= self._now_spacing_s:
                self._last_now = now
                if self._saved_now(run):
                    return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((run, future))
        self._wakeup.set()
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="modelfleet-run-writer")
        await future

    async def close(self) -> None:
        """Write everything queued, then stop; later saves raise StoreError. Idempotent."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def _drain(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._closed:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                count = min(self._max_batch, len(self._queue))
                self._writing = True
                try:
                    await self._write([self._queue.popleft() for _ in range(count)])
                finally:
                    self._writing = False
        finally:
            # Only reached early when the task is cancelled (event loop shutting down).
            self._reject(list(self._queue), StoreError("the run writer stopped before this run was saved"))
            self._queue.clear()

    def _saved_now(self, run: PipelineRun) -> bool:
        """True when the store committed ``run`` on the spot; raises as a failed save would."""
        try:
            saved = self._store.save_now([run])
        except Exception as err:
            self.transactions += 1
            self.failed += 1
            if isinstance(err, StoreError):  # RunRejected included
                raise
            raise StoreError(f"saving runs failed: {err!r}") from err
        if saved:
            self.transactions += 1
            self.written += 1
        return saved

    async def _write(self, batch: list[_Waiter]) -> None:
        try:
            await self._save([run for run, _ in batch])
        except RunRejected as err:
            if len(batch) == 1:
                self._reject(batch, err)
            else:
                await self._write_one_by_one(batch)
        except Exception as err:
            self._reject(batch, err)
        except BaseException:
            self._reject(batch, StoreError("the run writer stopped; these runs may or may not be saved"))
            raise
        else:
            self._resolve(batch)

    async def _write_one_by_one(self, batch: list[_Waiter]) -> None:
        for index, waiter in enumerate(batch):
            try:
                await self._save([waiter[0]])
            except RunRejected as err:
                self._reject([waiter], err)
            except Exception as err:
                # The database itself is failing now, not one run: do not try the rest one by one.
                self._reject(batch[index:], err)
                return
            except BaseException:
                self._reject(batch[index:], StoreError("the run writer stopped; run may or may not be saved"))
                raise
            else:
                self._resolve([waiter])

    async def _save(self, runs: list[PipelineRun]) -> None:
        self.transactions += 1
        await self._store.save_runs(runs)

    def _resolve(self, batch: list[_Waiter]) -> None:
        self.written += len(batch)
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    def _reject(self, batch: list[_Waiter], err: BaseException) -> None:
        self.failed += len(batch)
        kind = RunRejected if isinstance(err, RunRejected) else StoreError
        message = str(err) if isinstance(err, StoreError) else f"saving runs failed: {err!r}"
        for _, future in batch:
            if not future.done():
                # One exception object per waiter: each raises it in its own task and traceback.
                error = kind(message)
                error.__cause__ = err
                future.set_exception(error)
