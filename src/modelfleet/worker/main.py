"""Runs one worker replica: build the service's models, load them, serve until told to stop."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from modelfleet.models.catalog import build_service_runners
from modelfleet.pipeline.spec import compile_pipelines
from modelfleet.settings import Settings
from modelfleet.worker.app import WorkerApp
from modelfleet.worker.registry_models import RegistryModels


def build_worker(settings: Settings, service: str) -> WorkerApp:
    """The composition root of a worker process: every object it needs, built from settings.

    Registry-backed models are not built here: :func:`load_registry_models` fetches their versions.
    """
    app = WorkerApp(
        service, build_service_runners(settings, service), settings.worker, compile_pipelines(settings)
    )
    captured = {m: settings.models[m].capture for m in settings.services[service].models}
    for model, capture in captured.items():
        if capture is not None:
            from modelfleet.lake import Lake
            from modelfleet.lake.capture import CaptureWriter

            app.captures[model] = CaptureWriter.from_settings(Lake.from_settings(settings), model, capture)
    followed = [m for m in settings.services[service].models if settings.models[m].registry is not None]
    if followed:
        from modelfleet.lake import Lake
        from modelfleet.registry import make_registry

        app.follower = RegistryModels(
            settings, followed, make_registry(settings.store_url), Lake.from_settings(settings),
            app.runners, app.versions,
        )  # fmt: skip
        app.follow_poll_s = settings.training.registry_poll_s
    return app


def load_registry_models(app: WorkerApp) -> None:
    """Fetch and load the registry-backed models' versions (before serving; its own event loop)."""
    follower = app.follower
    if follower is None:
        return

    async def load() -> None:
        await follower.registry.open()
        try:
            await follower.load_initial()
        finally:
            await follower.registry.close()

    asyncio.run(load())
    for name, runner in app.runners.items():
        if runner.on_batch is None:
            runner.on_batch = app.metrics.batch_size.get(app.service, name).observe  # type: ignore[attr-defined]


def serve_worker(settings: Settings, service: str, port: int, host: str | None = None) -> None:
    """Load the models, then serve on ``host:port`` until SIGTERM/SIGINT, finishing in-flight requests."""
    app = build_worker(settings, service)
    load_registry_models(app)
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
