"""The job worker: takes chunks from the broker, runs them through the fleet, stores the results.

A chunk is acked only after its results are committed, so a worker killed mid-chunk loses
nothing: the broker hands the chunk out again after the visibility timeout, and the job store
keeps the first result of every input, so the redelivery yields no second result. A failure that
the input caused (the model refused it) is that input's result; any other failure (a model
service down, a deadline) is retried, and after the last attempt the chunk's inputs get the error
as their result and the message goes to the dead letters.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import uuid
from typing import Any
from urllib.parse import urlsplit

import orjson

from modelfleet.broker.broker import Broker, Delivery
from modelfleet.gateway.app import GatewayApp
from modelfleet.jobs.messages import ChunkMessage, job_view
from modelfleet.pipeline.spec import CompiledPipeline, single_model_pipeline
from modelfleet.settings import Settings
from modelfleet.store.errors import JobRejected
from modelfleet.store.jobs import TERMINAL, Job, JobResult, JobStore

log = logging.getLogger("modelfleet.jobs")


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
        self._model_pipelines: dict[str, CompiledPipeline] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.ready = False
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
        """Stop taking work, let the chunks in hand finish (unfinished ones come back later), close."""
        self.ready = False
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.broker.close()
        await self.store.close()
        await self.fleet.stop()

    async def _consume(self) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        queue = self.settings.broker.queue
        try:
            while not self._stopping.is_set():
                free = self.concurrency - len(in_flight)
                if free <= 0:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    deliveries = await self.broker.receive(queue, self.name, max_messages=free, wait_s=0.5)
                except Exception:
                    log.exception("receiving from the broker failed; retrying")
                    await asyncio.sleep(1.0)
                    continue
                for delivery in deliveries:
                    task = asyncio.ensure_future(self._handle(delivery))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
        finally:
            if in_flight:
                await asyncio.wait(in_flight, timeout=self.settings.supervisor.drain_timeout_s)

    async def _keep_alive(self, delivery: Delivery) -> None:
        while True:
            await asyncio.sleep(self.broker.visibility_timeout_s / 3)
            with contextlib.suppress(Exception):
                await self.broker.extend(delivery)

    async def _handle(self, delivery: Delivery) -> None:
        try:
            await self._handle_chunk(delivery)
        except Exception:
            # Unanswered, the delivery comes back after the visibility timeout.
            log.exception("chunk %s failed unexpectedly", delivery.message_id)

    async def _handle_chunk(self, delivery: Delivery) -> None:
        try:
            chunk = ChunkMessage.decode(delivery.body)
        except ValueError as err:
            await self.broker.nack(delivery, str(err))
            return
        job = await self.store.find_job(chunk.job_id)
        if job is None or job.status == "canceled":
            await self.broker.ack(delivery)
            return
        if job.status == "pending":
            await self.store.start_job(job.id)
        keeper = asyncio.ensure_future(self._keep_alive(delivery))
        try:
            results, transient = await self._execute(chunk)
        except Exception as err:
            results, transient = [], f"{type(err).__name__}: {err}"
        finally:
            keeper.cancel()
        if transient is None:
            try:
                job = await self.store.save_results(chunk.job_id, results)
            except JobRejected as err:
                # The database refuses these outputs (NaN, say): retrying cannot help, so the
                # inputs get the reason as their result instead of looping forever.
                unstorable = [
                    JobResult(r.position, None, f"the result could not be stored: {err}") for r in results
                ]
                job = await self.store.save_results(chunk.job_id, unstorable)
            await self.broker.ack(delivery)
            self.chunks_done += 1
        elif delivery.attempt >= self.broker.max_attempts:
            failed = [
                JobResult(chunk.offset + i, None, f"gave up after {delivery.attempt} attempts: {transient}")
                for i in range(len(chunk.inputs))
            ]
            job = await self.store.save_results(chunk.job_id, failed)
            await self.broker.nack(delivery, transient)
            self.chunks_dead += 1
        else:
            await self.broker.nack(delivery, transient)
            self.chunks_retried += 1
            return
        if job.status in TERMINAL and job.done == job.total and job.callback_url:
            await self._callback(job)

    def _pipeline_for(self, chunk: ChunkMessage) -> CompiledPipeline:
        if chunk.target_kind == "pipeline":
            return self.pipelines[chunk.target]
        pipeline = self._model_pipelines.get(chunk.target)
        if pipeline is None:
            pipeline = single_model_pipeline(chunk.target, self.settings)
            self._model_pipelines[chunk.target] = pipeline
        return pipeline

    async def _execute(self, chunk: ChunkMessage) -> tuple[list[JobResult], str | None]:
        """The chunk's results, or (nothing, why) when the failure was not the inputs' fault."""
        pipeline = self._pipeline_for(chunk)
        is_pipeline = chunk.target_kind == "pipeline"
        run_ids: list[str | None] = [f"{chunk.job_id}-{chunk.offset + i}" for i in range(len(chunk.inputs))]
        outcomes, _, _, store_error = await self.fleet.pipelines.execute(
            pipeline,
            chunk.inputs,
            uuid.uuid4().hex.encode(),
            self.settings.jobs.request_timeout_s,
            store=is_pipeline,
            run_ids=run_ids,
        )
        if store_error is not None:
            return [], store_error
        for outcome in outcomes:
            if outcome.status == "failed" and not outcome.client_error:
                return [], outcome.error
        results = []
        for i, outcome in enumerate(outcomes):
            if outcome.status == "failed":
                results.append(JobResult(chunk.offset + i, None, outcome.error))
            else:
                output = outcome.output if is_pipeline else outcome.output["output"]
                results.append(JobResult(chunk.offset + i, output, None))
        return results, None

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
        "chunks_done": worker.chunks_done,
        "chunks_retried": worker.chunks_retried,
        "chunks_dead": worker.chunks_dead,
    }
