"""The job worker: takes messages from the broker, runs their inputs through the fleet, stores the results.

A message is acked only after its results are committed, so a worker killed mid-message loses
nothing: the broker hands the message out again after the visibility timeout, and the job store
keeps the first result of every input, so the redelivery yields no second result. A failure that
the input caused (the model refused it) is that input's result; any other failure (a model
service down, a deadline) is retried, and after the last attempt the message's inputs get the
error as their result and the message goes to the dead letters.

The worker takes up to ``concurrency`` messages at a time, and what one ``receive`` hands out is
worked on together: one read of their jobs, one model call per target for all their inputs, one
transaction for all their results, then an ack each. Batch jobs (a file in, a file out) run on
their own, see :mod:`modelfleet.jobs.batch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from modelfleet.broker.broker import Broker, Delivery
from modelfleet.gateway.app import GatewayApp
from modelfleet.gateway.pipelines import HttpStepCaller
from modelfleet.jobs.batch import BatchJobs
from modelfleet.jobs.lease import Lease
from modelfleet.jobs.messages import BatchMessage, Chunk, ChunkMessage, decode_message, job_view
from modelfleet.pipeline.executor import PipelineExecutor, RowOutcome
from modelfleet.pipeline.spec import CompiledPipeline, single_model_pipeline
from modelfleet.settings import Settings
from modelfleet.store.errors import JobRejected
from modelfleet.store.jobs import TERMINAL, Job, JobResult, JobStore

log = logging.getLogger("modelfleet.jobs")


@dataclass
class _Work:
    """One delivery of a chunk message, and what became of it."""

    delivery: Delivery
    message: ChunkMessage
    chunks: list[Chunk] = field(default_factory=list)  # those whose job still wants them
    results: dict[str, list[JobResult]] = field(default_factory=dict)
    transient: str | None = None  # why the attempt failed, when not the inputs' fault


class JobWorker:
    """Consumes the job queue with bounded concurrency (back-pressure: it takes only what it can run)."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        concurrency: int,
        fleet: GatewayApp,
        broker: Broker,
        store: JobStore,
        pipelines: dict[str, CompiledPipeline],
    ) -> None:
        self.name = name
        self.settings = settings
        self.concurrency = concurrency
        self.fleet = fleet
        self.broker = broker
        self.store = store
        self.pipelines = pipelines
        self.batches = BatchJobs(store, broker, fleet.plan.gateway.url, self._notify)
        self._model_pipelines: dict[str, CompiledPipeline] = {}
        self._task: asyncio.Task[None] | None = None
        self._callbacks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self.ready = False
        self.messages_done = 0
        self.chunks_done = 0
        self.chunks_retried = 0
        self.chunks_dead = 0

    async def start(self) -> None:
        await self.fleet.start()
        await self.broker.open()
        await self.store.open()
        self._task = asyncio.get_running_loop().create_task(self._consume())
        self.ready = True

    async def stop(self) -> None:
        """Stop taking work, let the messages in hand finish (unfinished ones come back later), close."""
        self.ready = False
        self._stopping.set()
        self.batches.stop()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._callbacks:
            await asyncio.wait(self._callbacks, timeout=self.settings.supervisor.drain_timeout_s)
        await self.broker.close()
        await self.store.close()
        await self.fleet.stop()

    async def _consume(self) -> None:
        # Each task with the number of deliveries it holds: the sum never exceeds ``concurrency``.
        holding: dict[asyncio.Task[None], int] = {}
        queue = self.settings.broker.queue
        try:
            while not self._stopping.is_set():
                free = self.concurrency - sum(holding.values())
                if free <= 0:
                    await asyncio.wait(holding, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    deliveries = await self.broker.receive(queue, self.name, max_messages=free, wait_s=0.5)
                except Exception:
                    log.exception("receiving from the broker failed; retrying")
                    await asyncio.sleep(1.0)
                    continue
                work: list[_Work] = []
                for delivery in deliveries:
                    try:
                        message = decode_message(delivery.body)
                    except ValueError as err:
                        await self._answer(self.broker.nack(delivery, str(err)))
                        continue
                    if isinstance(message, BatchMessage):
                        task = asyncio.ensure_future(self.batches.run(delivery, message))
                        holding[task] = 1
                        task.add_done_callback(holding.pop)
                    else:
                        work.append(_Work(delivery, message))
                if work:
                    task = asyncio.ensure_future(self._handle(work))
                    holding[task] = len(work)
                    task.add_done_callback(holding.pop)
        finally:
            if holding:
                await asyncio.wait(holding, timeout=self.settings.supervisor.drain_timeout_s)

    async def _handle(self, work: list[_Work]) -> None:
        lease = Lease(self.broker, [w.delivery for w in work])
        try:
            await self._handle_work(work)
        except Exception:
            # Unanswered, the deliveries come back after the visibility timeout.
            log.exception("%d message(s) failed unexpectedly", len(work))
        finally:
            lease.stop()

    async def _handle_work(self, work: list[_Work]) -> None:
        statuses = await self.store.statuses({c.job_id for w in work for c in w.message.chunks})
        in_hand: dict[str, int] = {}  # inputs of each job in hand
        totals: dict[str, int] = {}
        for item in work:
            for chunk in item.message.chunks:
                # A job that is gone or canceled is skipped: its chunks are answered unrun.
                if statuses.get(chunk.job_id, "canceled") != "canceled":
                    item.chunks.append(chunk)
                    in_hand[chunk.job_id] = in_hand.get(chunk.job_id, 0) + len(chunk.inputs)
                    totals[chunk.job_id] = chunk.total
        # A job this work finishes goes from pending to its end in the results' transaction; only
        # the others are marked started now, so a caller sees them in progress while they run.
        starting = [
            job_id
            for job_id, count in in_hand.items()
            if statuses[job_id] == "pending" and count < totals[job_id]
        ]
        if starting:
            await self.store.start_jobs(starting)
        groups: dict[tuple[str, str], list[_Work]] = {}
        for item in work:
            if item.chunks:
                groups.setdefault((item.message.target_kind, item.message.target), []).append(item)
        await asyncio.gather(
            *(self._execute(kind, target, items) for (kind, target), items in groups.items())
        )
        saved = await self._save(work)
        answers = []
        for item in work:
            if item.transient is None:
                answers.append(self.broker.ack(item.delivery))
                self.messages_done += 1
                self.chunks_done += len(item.chunks)
            elif item.delivery.attempt >= self.broker.max_attempts:
                answers.append(self.broker.nack(item.delivery, item.transient))
                self.chunks_dead += len(item.chunks)
            else:
                answers.append(self.broker.nack(item.delivery, item.transient))
                self.chunks_retried += len(item.chunks)
        await self._answer(*answers)
        for job in saved.values():
            if job.status in TERMINAL and job.done == job.total and job.callback_url:
                self._notify(job)

    async def _answer(self, *answers: Any) -> None:
        for outcome in await asyncio.gather(*answers, return_exceptions=True):
            if isinstance(outcome, BaseException):
                # The message comes back after its visibility timeout; the results are stored already.
                log.warning("answering the broker failed: %s", outcome)

    def _pipeline_for(self, kind: str, target: str) -> CompiledPipeline:
        if kind == "pipeline":
            return self.pipelines[target]
        pipeline = self._model_pipelines.get(target)
        if pipeline is None:
            pipeline = single_model_pipeline(target, self.settings)
            self._model_pipelines[target] = pipeline
        return pipeline

    async def _execute(self, kind: str, target: str, work: list[_Work]) -> None:
        """Run every input of ``work`` through the target in one go; each item gets results or a reason."""
        chunks = [chunk for item in work for chunk in item.chunks]
        inputs = [value for chunk in chunks for value in chunk.inputs]
        rid = uuid.uuid4().hex.encode()
        timeout_s = self.settings.jobs.request_timeout_s
        try:
            pipeline = self._pipeline_for(kind, target)
            if kind == "pipeline":
                run_ids: list[str | None] = [
                    f"{c.job_id}-{c.offset + i}" for c in chunks for i in range(len(c.inputs))
                ]
                outcomes, _, _, store_error = await self.fleet.pipelines.execute(
                    pipeline, inputs, rid, timeout_s, store=True, run_ids=run_ids
                )
            else:
                # A model target keeps no pipeline runs, so the executor is called directly.
                caller = HttpStepCaller(self.fleet, rid, time.monotonic() + timeout_s)
                outcomes, store_error = await PipelineExecutor(caller, caller).run(pipeline, inputs), None
        except Exception as err:
            outcomes, store_error = [], f"{type(err).__name__}: {err}"
        if store_error is not None:
            for item in work:
                item.transient = store_error
            return
        at = 0
        for item in work:
            for chunk in item.chunks:
                mine = outcomes[at : at + len(chunk.inputs)]
                at += len(chunk.inputs)
                if item.transient is None:
                    item.transient = _transient(mine)
                item.results.setdefault(chunk.job_id, []).extend(_results(kind, chunk, mine))

    async def _save(self, work: list[_Work]) -> dict[str, Job]:
        """Store the results of every item that succeeded, and the errors of those out of attempts."""
        for item in work:
            if item.transient is not None and item.delivery.attempt >= self.broker.max_attempts:
                why = f"gave up after {item.delivery.attempt} attempts: {item.transient}"
                item.results = {
                    chunk.job_id: [JobResult(chunk.offset + i, None, why) for i in range(len(chunk.inputs))]
                    for chunk in item.chunks
                }
        saving = [
            item
            for item in work
            if item.transient is None or item.delivery.attempt >= self.broker.max_attempts
        ]
        if not any(item.results for item in saving):
            return {}
        try:
            return await self.store.save_results_of_jobs(_merged(saving))
        except JobRejected:
            pass
        # The database refuses some outputs (NaN, say): retrying cannot help, so each item is saved
        # on its own, and the inputs of one the database refuses get the reason as their result.
        saved: dict[str, Job] = {}
        for item in saving:
            try:
                saved.update(await self.store.save_results_of_jobs(_merged([item])))
            except JobRejected as err:
                unstorable = {
                    job_id: [
                        JobResult(r.position, None, f"the result could not be stored: {err}") for r in results
                    ]
                    for job_id, results in item.results.items()
                }
                saved.update(await self.store.save_results_of_jobs(unstorable))
        return saved

    def _notify(self, job: Job) -> None:
        """Call the job's callback URL in the background (its message is already answered)."""
        task = asyncio.ensure_future(self._callback(job))
        self._callbacks.add(task)
        task.add_done_callback(self._callbacks.discard)

    async def _callback(self, job: Job) -> None:
        """POST the finished job to its callback URL, retrying with backoff; callbacks are at-least-once."""
        assert job.callback_url is not None
        body = orjson.dumps(job_view(job))
        cfg = self.settings.jobs
        for attempt in range(1, cfg.callback_attempts + 1):
            try:
                status = await asyncio.to_thread(_post, job.callback_url, body, cfg.callback_timeout_s)
                if 200 <= status < 300:
                    return
                reason = f"answered {status}"
            except OSError as err:
                reason = str(err)
            log.warning("callback for job %s failed (attempt %d): %s", job.id, attempt, reason)
            await asyncio.sleep(min(0.2 * 2**attempt, 10.0))
        log.error("callback for job %s gave up after %d attempts", job.id, cfg.callback_attempts)


def _transient(outcomes: Sequence[RowOutcome]) -> str | None:
    for outcome in outcomes:
        if outcome.status == "failed" and not outcome.client_error:
            return outcome.error or "failed"
    return None


def _results(kind: str, chunk: Chunk, outcomes: Sequence[RowOutcome]) -> list[JobResult]:
    results = []
    for i, outcome in enumerate(outcomes):
        if outcome.status == "failed":
            results.append(JobResult(chunk.offset + i, None, outcome.error))
        else:
            output = outcome.output if kind == "pipeline" else outcome.output["output"]
            results.append(JobResult(chunk.offset + i, output, None))
    return results


def _merged(work: Sequence[_Work]) -> dict[str, list[JobResult]]:
    merged: dict[str, list[JobResult]] = {}
    for item in work:
        for job_id, results in item.results.items():
            merged.setdefault(job_id, []).extend(results)
    return merged


def _post(url: str, body: bytes, timeout_s: float) -> int:
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname or "", parts.port, timeout=timeout_s)
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", target, body=body, headers={"content-type": "application/json"})
        return int(conn.getresponse().status)
    finally:
        conn.close()


def describe(worker: JobWorker) -> dict[str, Any]:
    return {
        "name": worker.name,
        "ready": worker.ready,
        "messages_done": worker.messages_done,
        "chunks_done": worker.chunks_done,
        "chunks_retried": worker.chunks_retried,
        "chunks_dead": worker.chunks_dead,
        "batch_jobs_running": worker.batches.running,
    }
