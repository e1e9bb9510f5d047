"""Runs one trainer replica: takes training jobs from the broker, trains, registers; never serves models.

A job's message is acked only after the job's outcome is recorded, so a trainer killed mid-fit
loses nothing: the broker hands the job out again after the visibility timeout and another
replica (or this one, restarted) trains it again. Training runs on a thread, so the health
endpoints and the delivery's keep-alive go on answering meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from modelfleet.background import BackgroundApp, serve_background
from modelfleet.broker import make_broker
from modelfleet.broker.broker import Broker, Delivery
from modelfleet.registry import TRAINING_TERMINAL, Registry, TrainingJobNotFound, make_registry
from modelfleet.settings import Settings
from modelfleet.training.service import execute_job

log = logging.getLogger("modelfleet.training")


class Trainer:
    """Consumes the training queue one job at a time (training takes both cores; more would thrash)."""

    def __init__(self, name: str, settings: Settings, broker: Broker, registry: Registry, lake: Any) -> None:
        self.name = name
        self.settings = settings
        self.broker = broker
        self.registry = registry
        self.lake = lake
        self.ready = False
        self.current: str | None = None
        self.jobs_done = 0
        self.jobs_failed = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ready": self.ready,
            "current_job": self.current,
            "jobs_done": self.jobs_done,
            "jobs_failed": self.jobs_failed,
        }

    async def start(self) -> None:
        await self.registry.open()
        await self.broker.open()
        self._task = asyncio.get_running_loop().create_task(self._consume())
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        self._stopping.set()
        if self._task is not None:
            # A job being trained is abandoned: its message comes back to a trainer later.
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.broker.close()
        await self.registry.close()

    async def _consume(self) -> None:
        queue = self.settings.training.queue
        while not self._stopping.is_set():
            try:
                deliveries = await self.broker.receive(queue, self.name, max_messages=1, wait_s=1.0)
            except Exception:
                log.exception("receiving training jobs failed; retrying")
                await asyncio.sleep(1.0)
                continue
            for delivery in deliveries:
                await self._handle(delivery)

    async def _keep_alive(self, delivery: Delivery) -> None:
        while True:
            await asyncio.sleep(self.broker.visibility_timeout_s / 3)
            with contextlib.suppress(Exception):
                await self.broker.extend(delivery)

    async def _handle(self, delivery: Delivery) -> None:
        job_id = delivery.body.decode("utf-8", errors="replace")
        try:
            job = await self.registry.get_training_job(job_id)
        except TrainingJobNotFound:
            await self.broker.nack(delivery, f"no training job {job_id!r}")
            return
        if job.status in TRAINING_TERMINAL:
            await self.broker.ack(delivery)
            return
        if job.status == "pending":
            job = await self.registry.update_training_job(job.id, status="running", message="starting")
        keeper = asyncio.ensure_future(self._keep_alive(delivery))
        self.current = job.id
        try:
            finished = await execute_job(
                job,
                self.registry,
                self.lake,
                seed=self.settings.training.seed,
                data_dir=self.settings.data_dir,
            )
        except Exception as err:
            # Recording the outcome failed (the database is down): let the job come back later.
            log.exception("training job %s could not be recorded", job.id)
            await self.broker.nack(delivery, f"{type(err).__name__}: {err}")
            return
        finally:
            keeper.cancel()
            self.current = None
        if finished.status == "succeeded":
            self.jobs_done += 1
        else:
            self.jobs_failed += 1
        await self.broker.ack(delivery)


def training_broker(settings: Settings) -> Broker:
    """The broker training jobs go through: the fleet's broker, with the training visibility timeout."""
    return make_broker(
        settings.broker.url,
        visibility_timeout_s=settings.training.visibility_timeout_s,
        max_attempts=settings.broker.max_attempts,
    )


def serve_trainer(settings: Settings, service: str, port: int) -> None:
    from modelfleet.lake import Lake

    trainer = Trainer(
        f"{service}-{port}", settings, training_broker(settings), make_registry(settings.store_url),
        Lake.from_settings(settings),
    )  # fmt: skip
    serve_background(BackgroundApp(trainer, "/v1/trainer", trainer.describe, log), settings, port)
