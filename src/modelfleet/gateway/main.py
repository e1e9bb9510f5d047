"""Runs the gateway process."""

from __future__ import annotations

import logging

import uvicorn

from modelfleet.broker import make_broker
from modelfleet.gateway.app import GatewayApp
from modelfleet.jobs.service import JobService
from modelfleet.pipeline.spec import compile_pipelines
from modelfleet.plan import FleetPlan
from modelfleet.settings import Settings
from modelfleet.store import make_job_store, make_run_store


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
    app = GatewayApp(plan, settings.gateway, pipelines, make_run_store(settings.store_url), jobs)
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
