"""Runs one job-worker replica: the consumer loop, plus health and metrics over HTTP for the supervisor."""

from __future__ import annotations

import logging

import orjson
import uvicorn

from modelfleet.broker import make_broker
from modelfleet.gateway.app import GatewayApp
from modelfleet.http import HTTPError, lifespan, respond, serve_request
from modelfleet.jobs.worker import JobWorker, describe
from modelfleet.pipeline.spec import compile_pipelines
from modelfleet.plan import FleetPlan
from modelfleet.settings import Settings
from modelfleet.store import make_job_store, make_run_store
from modelfleet.types import Receive, Scope, Send

log = logging.getLogger("modelfleet.jobs")


class JobWorkerApp:
    """Answers the supervisor's readiness probes while the worker consumes."""

    def __init__(self, worker: JobWorker) -> None:
        self.worker = worker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send, on_startup=self.worker.start, on_shutdown=self.worker.stop)
        elif scope["type"] == "http":
            await serve_request(self._dispatch, scope, receive, send, log)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, rid: bytes) -> None:
        path = scope["path"]
        if path == "/v2/health/live":
            return await respond(send, 200, b'{"live":true}', rid)
        if path == "/v2/health/ready":
            ready = self.worker.ready
            return await respond(send, 200 if ready else 503, orjson.dumps({"ready": ready}), rid)
        if path == "/v1/job-worker":
            return await respond(send, 200, orjson.dumps(describe(self.worker)), rid)
        raise HTTPError(404, f"no route for {scope['method']} {path}")


def build_job_worker(settings: Settings, plan: FleetPlan, service: str, index_name: str) -> JobWorker:
    """The composition root of a job-worker process."""
    pipelines = compile_pipelines(settings)
    fleet = GatewayApp(plan, settings.gateway, pipelines, make_run_store(settings.store_url))
    broker = make_broker(
        settings.broker.url,
        visibility_timeout_s=settings.broker.visibility_timeout_s,
        max_attempts=settings.broker.max_attempts,
    )
    concurrency = settings.services[service].concurrency
    return JobWorker(
        index_name, settings, concurrency, fleet, broker, make_job_store(settings.store_url), pipelines
    )


def serve_job_worker(settings: Settings, plan: FleetPlan, service: str, port: int) -> None:
    worker = build_job_worker(settings, plan, service, f"{service}-{port}")
    config = uvicorn.Config(
        JobWorkerApp(worker),
        host=settings.worker.host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=settings.log_level if settings.log_level != "info" else "warning",
        timeout_graceful_shutdown=int(settings.supervisor.drain_timeout_s) or None,
    )
    uvicorn.Server(config).run()
