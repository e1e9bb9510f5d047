"""The HTTP face of a background service (job worker, stream, trainer): health and status for the supervisor.

Background services host no models and take no traffic; they consume a broker or a topic. The
supervisor still starts them like workers and waits for ``/v2/health/ready``, so each serves the
two health routes and one status route (``GET /v1/<kind>``) from the same small ASGI app.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
import uvicorn

from modelfleet.http import HTTPError, lifespan, respond, serve_request
from modelfleet.settings import Settings
from modelfleet.types import Receive, Scope, Send


class BackgroundService(Protocol):
    """What the app needs of a background service: start, stop, and whether it is ready."""

    ready: bool

    def start(self) -> Awaitable[None]: ...

    def stop(self) -> Awaitable[None]: ...


class BackgroundApp:
    """Answers the supervisor's probes and ``GET status_path`` while ``service`` works."""

    def __init__(
        self,
        service: BackgroundService,
        status_path: str,
        status: Callable[[], dict[str, Any]],
        log: logging.Logger,
    ) -> None:
        self.service = service
        self.status_path = status_path
        self.status = status
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send, on_startup=self.service.start, on_shutdown=self.service.stop)
        elif scope["type"] == "http":
            await serve_request(self._dispatch, scope, receive, send, self.log)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, rid: bytes) -> None:
        path = scope["path"]
        if path == "/v2/health/live":
            return await respond(send, 200, b'{"live":true}', rid)
        if path == "/v2/health/ready":
            ready = self.service.ready
            return await respond(send, 200 if ready else 503, orjson.dumps({"ready": ready}), rid)
        if path == self.status_path:
            return await respond(send, 200, orjson.dumps(self.status()), rid)
        raise HTTPError(404, f"no route for {scope['method']} {path}")


def serve_background(app: BackgroundApp, settings: Settings, port: int) -> None:
    """Serve ``app`` on the worker host at ``port`` until SIGTERM, giving the service its drain time."""
    config = uvicorn.Config(
        app,
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
