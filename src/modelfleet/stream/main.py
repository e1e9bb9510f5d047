"""Runs one stream replica: the consumer loop, plus health and status over HTTP for the supervisor."""

from __future__ import annotations

import logging

from modelfleet.background import BackgroundApp, serve_background
from modelfleet.errors import ConfigError
from modelfleet.gateway.app import GatewayApp
from modelfleet.pipeline.spec import compile_pipelines, single_model_pipeline
from modelfleet.plan import FleetPlan
from modelfleet.settings import Settings
from modelfleet.store import make_run_store
from modelfleet.stream.connector import make_connector
from modelfleet.stream.service import StreamService, connector_group, describe

log = logging.getLogger("modelfleet.stream")


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
    serve_background(BackgroundApp(stream, "/v1/stream", lambda: describe(stream), log), settings, port)
