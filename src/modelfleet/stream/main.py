"""Runs one stream replica: the consumer loop, plus health and status over HTTP for the supervisor."""

from __future__ import annotations

import logging

import orjson
import uvicorn

from modelfleet.errors import ConfigError
from modelfleet.gateway.app import GatewayApp
from modelfleet.http import HTTPError, lifespan, respond, serve_request
from modelfleet.pipeline.spec import compile_pipelines, single_model_pipeline
from modelfleet.plan import FleetPlan
from modelfleet.settings import Settings
from modelfleet.store import make_run_store
from modelfleet.stream.connector import make_connector
from modelfleet.stream.service import StreamService, connector_group, describe
from modelfleet.types import Receive, Scope, Send

log = logging.getLogger("modelfleet.stream")


class StreamApp:
    """Answers the supervisor's probes and ``GET /v1/stream`` (counters) while the service consumes."""

    def __init__(self, service: StreamService) -> None:
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send, on_startup=self.service.start, on_shutdown=self.service.stop)
        elif scope["type"] == "http":
            await serve_request(self._dispatch, scope, receive, send, log)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, rid: bytes) -> None:
        path = scope["path"]
        if path == "/v2/health/live":
            return await respond(send, 200, b'{"live":true}', rid)
        if path == "/v2/health/ready":
            ready = self.service.ready
            return await respond(send, 200 if ready else 503, orjson.dumps({"ready": ready}), rid)
        if path == "/v1/stream":
            return await respond(send, 200, orjson.dumps(describe(self.service)), rid)
        raise HTTPError(404, f"no route for {scope['method']} {path}")


def build_stream(settings: Settings, plan: FleetPlan, service: str, replica: int) -> StreamService:
    """The composition root of a stream process; raises ConfigError for a service that is not a stream."""
    config = settings.services[service].stream if service in settings.services else None
    if config is None:
        raise ConfigError(f"services.{service}: not a service of kind: stream")
    pipelines = compile_pipelines(settings)
    if config.pipeline is not None:
        pipeline = pipelines[config.pipeline]
    else:
        assert config.model is not None
        pipeline = single_model_pipeline(config.model, settings)
    group = connector_group(service, config)
    connector = make_connector(
        config.url,
        config.input,
        group=group,
        consumer=f"{group}-{replica}",
        max_in_flight=config.max_in_flight,
        ack_timeout_s=config.ack_timeout_s,
    )
    fleet = GatewayApp(plan, settings.gateway, pipelines, make_run_store(settings.store_url))
    return StreamService(
        service, config, fleet, connector, pipeline, settings.supervisor.drain_timeout_s, replica
    )


def serve_stream(settings: Settings, plan: FleetPlan, service: str, port: int, replica: int = 0) -> None:
    stream = build_stream(settings, plan, service, replica)
    config = uvicorn.Config(
        StreamApp(stream),
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
