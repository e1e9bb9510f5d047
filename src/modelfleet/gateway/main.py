"""Runs the gateway process."""

from __future__ import annotations

import logging

import uvicorn

from modelfleet.gateway.app import GatewayApp
from modelfleet.pipeline.spec import compile_pipelines
from modelfleet.plan import FleetPlan
from modelfleet.settings import Settings
from modelfleet.store import make_run_store


def serve_gateway(settings: Settings, plan: FleetPlan) -> None:
    """Serve on the plan's gateway address until SIGTERM/SIGINT, finishing in-flight requests."""
    app = GatewayApp(plan, settings.gateway, compile_pipelines(settings), make_run_store(settings.store_url))
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
