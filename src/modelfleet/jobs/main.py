"""Runs one job-worker replica: the consumer loop, plus health and status over HTTP for the supervisor."""

from __future__ import annotations

import logging

from modelfleet.background import BackgroundApp, serve_background
from modelfleet.broker import make_broker
from modelfleet.gateway.app import GatewayApp
from modelfleet.jobs.worker import JobWorker, describe
from modelfleet.pipeline.spec import compile_pipelines
from modelfleet.plan import FleetPlan
from modelfleet.settings import Settings
from modelfleet.store import make_job_store, make_run_store

log = logging.getLogger("modelfleet.jobs")


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
    serve_background(BackgroundApp(worker, "/v1/job-worker", lambda: describe(worker), log), settings, port)
