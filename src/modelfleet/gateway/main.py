"""Runs the gateway process."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn

from modelfleet.broker import make_broker
from modelfleet.gateway.app import GatewayApp
from modelfleet.jobs.service import JobService
from modelfleet.pipeline.spec import compile_pipelines
from modelfleet.plan import FleetPlan
from modelfleet.registry import make_registry
from modelfleet.registry.api import RegistryAPI
from modelfleet.settings import Settings
from modelfleet.store import make_job_store, make_run_store
from modelfleet.training.api import TrainingAPI
from modelfleet.training.main import training_broker


class _LazyLake:
    """The lake, opened on first use: most gateways never touch it, and it imports pyarrow."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lake: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._lake is None:
            from modelfleet.lake import Lake

            self._lake = Lake.from_settings(self._settings)
        return getattr(self._lake, name)


def serve_gateway(settings: Settings, plan: FleetPlan) -> None:
    """Serve on the plan's gateway address until SIGTERM/SIGINT, finishing in-flight requests."""
    pipelines = compile_pipelines(settings)
    jobs = JobService(
        make_job_store(settings.store_url),
        make_broker(
            settings.broker.url,
            visibility_timeout_s=settings.broker.visibility_timeout_s,
            max_attempts=settings.broker.max_attempts,
        ),
        models=set(plan.models),
        pipelines=set(pipelines),
        broker_settings=settings.broker,
        settings=settings.jobs,
        has_workers=bool(plan.job_workers),
    )
    registry = make_registry(settings.store_url)
    lake = _LazyLake(settings)
    registry_api = RegistryAPI(
        registry, delete_artifact=lambda uri: asyncio.to_thread(lake.delete_artifact, uri)
    )
    training = TrainingAPI(
        registry,
        training_broker(settings),
        settings.training.queue,
        lake,
        has_trainers=bool(plan.trainers),
    )
    app = GatewayApp(
        plan,
        settings.gateway,
        pipelines,
        make_run_store(settings.store_url),
        jobs,
        registry=registry_api,
        training=training,
    )
    config = uvicorn.Config(
        app,
        host=plan.gateway.host,
        port=plan.gateway.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=settings.log_level if settings.log_level != "info" else "warning",
        timeout_keep_alive=30,
        timeout_graceful_shutdown=int(settings.supervisor.drain_timeout_s) or None,
        server_header=False,
        date_header=False,
    )
    logging.getLogger("modelfleet.gateway").info("gateway serving on %s", plan.gateway.url)
    uvicorn.Server(config).run()
