"""Batch jobs in a job worker: a file on the fleet's machine through a model or pipeline, into a file.

The work is :func:`modelfleet.batch.run_batch`, as ``modelfleet batch run`` does it, on a thread:
chunks go through the gateway, each finished chunk is a part file next to the output, and the
output is assembled in input order at the end. So a batch job whose worker dies is not started
over: its message comes back after the visibility timeout and the next delivery resumes from
the parts. While it runs, the job's progress (rows done and failed) goes to the store after each
chunk, and the row count as soon as it is known (Parquet's footer, else one counting pass over
the file alongside the work). Canceling the job stops it between chunks; the parts stay, so the
same batch submitted again resumes from them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from modelfleet.batch.files import BatchConfigError, estimate_rows, read_rows
from modelfleet.batch.run import BatchSummary, GatewayUnreachable, run_batch
from modelfleet.broker.broker import Broker, Delivery
from modelfleet.jobs.lease import Lease
from modelfleet.jobs.messages import BatchMessage
from modelfleet.store.jobs import TERMINAL, BatchSpec, Job, JobStore

log = logging.getLogger("modelfleet.jobs")


def count_rows(spec: BatchSpec) -> int:
    """The input's exact row count, as ``run_batch`` will read it (blocking: reads the whole file but
    Parquet, whose footer has it)."""
    path = Path(spec.input_file)
    if spec.format == "parquet":
        return estimate_rows(path, "parquet") or 0
    return sum(1 for _ in read_rows(path, spec.format))


class _Progress:
    """Rows done and failed, added from ``run_batch``'s threads and written to the store from the loop.

    At most one store write is in flight; rows finished meanwhile go in the next one. A write that
    finds the job canceled makes ``should_stop`` answer True.
    """

    def __init__(self, store: JobStore, job_id: str) -> None:
        self._store = store
        self._job_id = job_id
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self.done = 0
        self.failed = 0
        self.canceled = False

    def add(self, rows: int, failed: int) -> None:
        with self._lock:
            self.done += rows
            self.failed += failed
        self._loop.call_soon_threadsafe(self._kick)

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._write())
        else:
            self._again = True

    async def _write(self, total: int | None = None) -> None:
        while True:
            self._again = False
            with self._lock:
                done, failed = self.done, self.failed
            try:
                job = await self._store.batch_progress(self._job_id, done, failed, total)
            except Exception as err:
                # Progress is for people watching; the batch goes on and the end result is stored.
                log.warning("batch job %s: storing its progress failed: %s", self._job_id, err)
                return
            if job.status == "canceled":
                self.canceled = True
                self._stop.set()
            if not self._again:
                return

    async def count(self, spec: BatchSpec) -> None:
        """Count the input's rows on a thread and store the total."""
        try:
            total = await asyncio.to_thread(count_rows, spec)
        except Exception as err:
            log.warning("batch job %s: counting its rows failed: %s", self._job_id, err)
            return
        await self._write(total)

    async def flush(self) -> None:
        if self._task is not None:
            await self._task


class BatchJobs:
    """Runs the batch jobs a job worker receives; ``notify(job)`` is told of every job that finishes."""

    def __init__(
        self, store: JobStore, broker: Broker, gateway_url: str, notify: Callable[[Job], None]
    ) -> None:
        self.store = store
        self.broker = broker
        self.gateway_url = gateway_url
        self.notify = notify
        self._running: set[_Progress] = set()
        self._stopping = False

    @property
    def running(self) -> int:
        return len(self._running)

    def stop(self) -> None:
        """The worker is stopping: every batch stops after the chunks it has in flight."""
        self._stopping = True
        for progress in self._running:
            progress.stop()

    async def run(self, delivery: Delivery, message: BatchMessage) -> None:
        try:
            await self._run(delivery, message)
        except Exception:
            # Unanswered, the delivery comes back after the visibility timeout and resumes.
            log.exception("batch job %s failed unexpectedly", message.job_id)

    async def _run(self, delivery: Delivery, message: BatchMessage) -> None:
        job = await self.store.find_job(message.job_id)
        if job is None or job.status in TERMINAL:
            await self.broker.ack(delivery)
            return
        job = await self.store.batch_progress(job.id, job.done, job.failed)
        progress = _Progress(self.store, job.id)
        if self._stopping:
            progress.stop()
        counting = asyncio.ensure_future(progress.count(message.spec)) if job.total is None else None
        lease = Lease(self.broker, [delivery])
        self._running.add(progress)
        spec = message.spec
        try:
            summary: BatchSummary = await asyncio.to_thread(
                run_batch,
                f"{message.target_kind}:{message.target}",
                Path(spec.input_file),
                Path(spec.output_file),
                self.gateway_url,
                chunk_size=spec.chunk_size,
                concurrency=spec.concurrency,
                progress=False,
                input_format=spec.format,
                on_rows=progress.add,
                should_stop=progress.should_stop,
            )
        except GatewayUnreachable as err:
            await self._retry(delivery, job, str(err))
            return
        except BatchConfigError as err:
            # The input vanished, or parts of another batch sit next to the output: no retry helps.
            await self.store.fail_job(job.id, str(err))
            await self.broker.ack(delivery)
            return
        except Exception as err:
            await self._retry(delivery, job, f"{type(err).__name__}: {err}")
            return
        finally:
            lease.stop()
            self._running.discard(progress)
            if counting is not None:
                counting.cancel()
            await progress.flush()
        if not summary.complete:
            if progress.canceled:
                await self.broker.ack(delivery)
            else:
                # The worker is stopping; the next delivery resumes from the parts.
                await self.broker.nack(delivery, "the job worker stopped during the batch")
            return
        finished = await self.store.finish_batch(job.id, summary.rows, summary.failed)
        await self.broker.ack(delivery)
        if finished.callback_url and finished.status in ("completed", "failed"):
            self.notify(finished)

    async def _retry(self, delivery: Delivery, job: Job, reason: str) -> None:
        if delivery.attempt >= self.broker.max_attempts:
            failed = await self.store.fail_job(job.id, f"gave up after {delivery.attempt} attempts: {reason}")
            if failed.callback_url:
                self.notify(failed)
        await self.broker.nack(delivery, reason)
