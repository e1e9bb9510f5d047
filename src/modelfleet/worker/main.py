"""Runs one worker replica: build the service's models, load them, serve until told to stop."""

from __future__ import annotations

import logging

import uvicorn

from modelfleet.models.catalog import build_service_runners
from modelfleet.pipeline.spec import compile_pipelines
from modelfleet.settings import Settings
from modelfleet.worker.app import WorkerApp


def build_worker(settings: Settings, service: str) -> WorkerApp:
    """The composition root of a worker process: every object it needs, built from settings."""
    return WorkerApp(
        service, build_service_runners(settings, service), settings.worker, compile_pipelines(settings)
    )


def serve_worker(settings: Settings, service: str, port: int, host: str | None = None) -> None:
    """Load the models, then serve on ``host:port`` until SIGTERM/SIGINT, finishing in-flight requests."""
    app = build_worker(settings, service)
    app.load()
    config = uvicorn.Config(
        app,
        host=host or settings.worker.host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=settings.log_level if settings.log_level != "info" else "warning",
        # The gateway keeps connections open; let them live longer than its idle timeout.
        timeout_keep_alive=120,
        timeout_graceful_shutdown=int(settings.supervisor.drain_timeout_s) or None,
        server_header=False,
        date_header=False,
    )
    logging.getLogger("modelfleet.worker").info("service %s serving on %s:%d", service, config.host, port)
    uvicorn.Server(config).run()
