"""Group commit for pipeline runs: many concurrent saves share one transaction."""

from __future__ import annotations

import asyncio
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

    When a transaction fails every save in it raises StoreError, except that when the database
    refused a run's content (RunRejected) the batch is retried one run at a time, so that only
    the faulty run's save fails. Nothing is dropped silently. ``written`` and ``failed`` count
    runs, ``transactions`` counts ``save_runs`` calls, for metrics.
    """

    def __init__(self, store: RunStore, max_batch: int = 256) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.written = 0
        self.failed = 0
        self.transactions = 0
        self._store = store
        self._max_batch = max_batch
        self._queue: deque[_Waiter] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def save(self, run: PipelineRun) -> None:
        """Return once ``run`` is committed; raises StoreError (or RunRejected) when it was not.

        Cancelling the caller does not withdraw the run: it is written with its batch anyway.
        """
        if self._closed:
            raise StoreError(f"the run writer is closed; run {run.id!r} was not saved")
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
                await self._write([self._queue.popleft() for _ in range(count)])
        finally:
            # Only reached early when the task is cancelled (event loop shutting down).
            self._reject(list(self._queue), StoreError("the run writer stopped before this run was saved"))
            self._queue.clear()

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
