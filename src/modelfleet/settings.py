"""The one typed settings object: read from fleet.yaml, then overridden by environment variables.

Environment overrides use the prefix ``MODELFLEET__`` and ``__`` between nested keys, so
``MODELFLEET__GATEWAY__PORT=9000`` sets ``gateway.port``. Values are parsed as YAML scalars.
Only entry points read the environment; everything below receives a :class:`Settings`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelfleet.errors import ConfigError

ENV_PREFIX = "MODELFLEET__"
_NAME = r"^[a-z][a-z0-9_-]{0,62}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchingSettings(_Strict):
    """Overrides a model class's own batching policy."""

    max_batch_size: int = Field(32, ge=1, le=4096)
    max_wait_ms: float = Field(5.0, ge=0, le=10_000)


class CaptureSettings(_Strict):
    """Opt-in sampling of a model's live inputs and outputs into the lake, for labelling and retraining."""

    rate: float = Field(gt=0, le=1, description="fraction of predictions captured (0 < rate <= 1)")
    flush_rows: int = Field(1000, ge=1, le=1_000_000, description="rows buffered before a Parquet part")
    flush_s: float = Field(10.0, gt=0, le=3600, description="longest a captured row waits to be written")


class BootstrapSettings(_Strict):
    """How the first version of a registry-backed model is trained when the registry has none.

    ``dataset`` (and ``test_dataset``, the held-out split; without it ``test_fraction`` of the data
    is held out, stratified) are files ingested into the lake first. ``columns`` names the columns
    of a file without a header row.
    """

    dataset: str = Field(min_length=1)
    test_dataset: str | None = None
    columns: list[str] | None = None
    text_column: str = "text"
    label_column: str = "label"
    trainer: str = "tfidf-logreg"
    params: dict[str, Any] = Field(default_factory=dict)
    test_fraction: float = Field(0.2, gt=0, lt=1)


class RegistrySourceSettings(_Strict):
    """Serve the version a registry alias points at, and follow the alias when it moves.

    ``name`` is the model's name in the registry (default: the fleet's name for it). The worker
    builds the model class with ``artifact_dir`` set to the version's artifact folder.
    """

    name: str | None = Field(None, pattern=_NAME)
    alias: str = Field("production", pattern=_NAME)
    bootstrap: BootstrapSettings | None = None


class ModelSettings(_Strict):
    """One model: the class that implements it and the keyword arguments it is built with."""

    class_: str = Field(alias="class", min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    batching: BatchingSettings | Literal[False] | None = None
    capture: CaptureSettings | None = None
    registry: RegistrySourceSettings | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class StreamSettings(_Strict):
    """A stream service's topics and target: it reads ``input``, runs each message through the
    target model or pipeline, and publishes one result record per message to ``output``.

    ``url``'s scheme picks the server: ``redis://`` (a stream), ``nats://`` (a JetStream subject),
    ``amqp://`` (a RabbitMQ queue) or ``mqtt://`` (a topic). Messages that failed ``max_attempts``
    times for a reason other than their own input go to ``dead_letter`` (``<output>.dead`` unless set).
    """

    url: str = Field(pattern=r"^(redis|rediss|nats|tls|amqp|amqps|mqtt|mqtts)://", min_length=8)
    input: str = Field(min_length=1, max_length=255)
    output: str = Field(min_length=1, max_length=255)
    dead_letter: str | None = Field(None, min_length=1, max_length=255)
    model: str | None = None
    pipeline: str | None = None
    group: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="consumer group; default: the service name"
    )
    max_in_flight: int = Field(16, ge=1, le=1024, description="messages received and not yet acked")
    max_attempts: int = Field(5, ge=1, le=100)
    ack_timeout_s: float = Field(
        30.0, gt=0, le=86_400, description="how long a silent replica's messages wait for another replica"
    )
    request_timeout_s: float = Field(30.0, gt=0, description="deadline for one message's model calls")

    @model_validator(mode="after")
    def _one_target_and_distinct_topics(self) -> StreamSettings:
        if (self.model is None) == (self.pipeline is None):
            raise ValueError("give exactly one target: model or pipeline")
        if self.output == self.input:
            raise ValueError("output must differ from input, or every result would be read again")
        if self.dead_letter_topic in (self.input, self.output):
            raise ValueError("dead_letter must differ from input and output")
        return self

    @property
    def dead_letter_topic(self) -> str:
        return self.dead_letter or f"{self.output}.dead"


class ServiceSettings(_Strict):
    """A deployable unit: one process per replica.

    ``kind: worker`` hosts the listed models packed together; ``kind: job-worker`` hosts no model:
    it takes jobs from the broker and runs them through the fleet's model services; ``kind:
    stream`` hosts no model either: it consumes the topic its ``stream`` section names.
    """

    kind: Literal["worker", "job-worker", "stream", "trainer"] = "worker"
    models: list[str] = Field(default_factory=list)
    replicas: int = Field(1, ge=1, le=64)
    port: int | None = Field(None, ge=1, le=65535, description="first replica's port; later replicas +1")
    concurrency: int = Field(4, ge=1, le=256, description="job-worker: messages worked on at once")
    stream: StreamSettings | None = None

    @model_validator(mode="after")
    def _models_fit_kind(self) -> ServiceSettings:
        if self.kind == "worker" and not self.models:
            raise ValueError("a worker service needs at least one model")
        if self.kind == "job-worker" and self.models:
            raise ValueError("a job-worker service hosts no models; it calls the model services")
        if self.kind == "trainer" and self.models:
            raise ValueError("a trainer service hosts no models; it trains them and registers versions")
        if self.kind == "stream" and self.models:
            raise ValueError("a stream service hosts no models; it calls the model services")
        if self.kind == "stream" and self.stream is None:
            raise ValueError("a stream service needs a 'stream' section: url, input, output, target")
        if self.kind != "stream" and self.stream is not None:
            raise ValueError("'stream' is only for services of kind: stream")
        return self

    @field_validator("models")
    @classmethod
    def _no_duplicates(cls, models: list[str]) -> list[str]:
        seen = {m for m in models if models.count(m) > 1}
        if seen:
            raise ValueError(f"model listed twice: {', '.join(sorted(seen))}")
        return models


class GatewaySettings(_Strict):
    """The single entry point in front of every worker."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    body_limit_bytes: int = Field(1_048_576, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    connect_timeout_s: float = Field(2.0, gt=0)
    max_connections_per_replica: int = Field(128, ge=1)
    health_interval_s: float = Field(1.0, gt=0)
    health_timeout_s: float = Field(1.0, gt=0)
    failures_to_eject: int = Field(3, ge=1)
    rollout_poll_s: float = Field(1.0, gt=0, description="how often the registry is read for rollout changes")
    shadow_max_in_flight: int = Field(
        64, ge=1, le=10_000, description="shadow copies running at once; more are dropped and counted"
    )


class WorkerSettings(_Strict):
    """Settings shared by every worker process."""

    host: str = "127.0.0.1"
    body_limit_bytes: int = Field(4_194_304, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    max_inputs_per_request: int = Field(1024, ge=1)
    idle_inline_ms: float = Field(
        5.0,
        ge=0,
        le=1000,
        description="run a one-input call on the event loop, not a model thread, when it is the only "
        "call under way and the model's recent one-input calls took at most this long; 0 never does",
    )


class BrokerSettings(_Strict):
    """Where jobs wait, and how hard they are retried."""

    url: str = "sqlite:///.modelfleet/broker.db"
    visibility_timeout_s: float = Field(30.0, gt=0)
    max_attempts: int = Field(5, ge=1, le=100)
    queue: str = Field("jobs", pattern=r"^[A-Za-z0-9_.-]{1,64}$")


class JobSettings(_Strict):
    """Asynchronous jobs: how inputs are split into messages, and callbacks."""

    chunk_size: int = Field(64, ge=1, le=10_000, description="inputs per broker message")
    callback_attempts: int = Field(5, ge=1, le=20)
    callback_timeout_s: float = Field(5.0, gt=0)
    request_timeout_s: float = Field(300.0, gt=0, description="deadline for one chunk's model calls")


class SupervisorSettings(_Strict):
    """How the fleet's processes are started, watched and stopped."""

    run_dir: str = ".modelfleet/run"
    ready_timeout_s: float = Field(180.0, gt=0)
    restart_backoff_initial_s: float = Field(0.5, gt=0)
    restart_backoff_max_s: float = Field(30.0, gt=0)
    restart_reset_after_s: float = Field(30.0, gt=0)
    drain_timeout_s: float = Field(10.0, ge=0)


class StepSettings(_Strict):
    """One step of a pipeline: a model call, its input, and when it runs."""

    model: str = Field(min_length=1, description="model name, optionally name@version")
    version: str | None = None
    input: dict[str, str] | str = Field(
        "input", description="field -> expression, or one expression giving the whole input object"
    )
    when: str | None = None
    after: list[str] = Field(default_factory=list, description="steps to wait for without reading them")
    on_error: Literal["fail", "skip"] | dict[Literal["default"], Any] = "fail"


class PipelineSettings(_Strict):
    """A named graph of model steps with a final output mapping."""

    description: str = ""
    steps: dict[str, StepSettings] = Field(min_length=1)
    output: dict[str, str] | None = None
    placement: Literal["packed", "per-step"] = Field(
        "packed", description="packed: steps on one service run there in one hop; per-step: one hop a step"
    )


class TrainingSettings(_Strict):
    """Training jobs: the broker queue trainer services take them from, and the registry polling."""

    queue: str = Field("training", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    visibility_timeout_s: float = Field(
        600.0, gt=0, description="a silent trainer's job is redone after this"
    )
    registry_poll_s: float = Field(1.0, gt=0, description="how often workers look for moved aliases")
    seed: int = 42


class LakeSettings(_Strict):
    """Where datasets, captures and model artifacts are kept.

    ``root`` is a local folder or any fsspec URL (``s3://bucket/lake`` needs s3fs); empty means
    ``<data_dir>/lake``. ``storage_options`` go to the fsspec filesystem (endpoint, credentials).
    """

    root: str = ""
    storage_options: dict[str, Any] = Field(default_factory=dict)


class Settings(_Strict):
    """Everything a modelfleet process needs to know, validated as a whole."""

    data_dir: str = ".modelfleet"
    store_url: str = "sqlite:///.modelfleet/modelfleet.db"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)  # type: ignore[arg-type]
    worker: WorkerSettings = Field(default_factory=WorkerSettings)  # type: ignore[arg-type]
    supervisor: SupervisorSettings = Field(default_factory=SupervisorSettings)  # type: ignore[arg-type]
    broker: BrokerSettings = Field(default_factory=BrokerSettings)  # type: ignore[arg-type]
    jobs: JobSettings = Field(default_factory=JobSettings)  # type: ignore[arg-type]
    lake: LakeSettings = Field(default_factory=LakeSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)  # type: ignore[arg-type]
    models: dict[str, ModelSettings] = Field(min_length=1)
    services: dict[str, ServiceSettings] = Field(min_length=1)
    pipelines: dict[str, PipelineSettings] = Field(default_factory=dict)

    @field_validator("store_url")
    @classmethod
    def _known_store(cls, url: str) -> str:
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", url):
            raise ValueError("must start with sqlite:// or postgresql://")
        return url

    @field_validator("models", "services", "pipelines")
    @classmethod
    def _names(cls, entries: dict[str, Any]) -> dict[str, Any]:
        for name in entries:
            if not re.match(_NAME, name):
                raise ValueError(f"name {name!r} must be lower-case letters, digits, '-' or '_'")
        return entries

    @model_validator(mode="after")
    def _cross_check(self) -> Settings:
        hosted: dict[str, str] = {}
        for service_name, service in self.services.items():
            for index, model in enumerate(service.models):
                if model not in self.models:
                    known = ", ".join(sorted(self.models))
                    raise ValueError(
                        f"services.{service_name}.models[{index}]: unknown model {model!r} (known: {known})"
                    )
                if model in hosted:
                    raise ValueError(
                        f"services.{service_name}.models[{index}]: model {model!r} is already "
                        f"hosted by service {hosted[model]!r}; scale with replicas instead"
                    )
                hosted[model] = service_name
        ports: dict[int, str] = {}
        if self.gateway.port:
            ports[self.gateway.port] = "gateway.port"
        for service_name, service in self.services.items():
            if service.port is None:
                continue
            for replica in range(service.replicas):
                port = service.port + replica
                if port in ports:
                    raise ValueError(
                        f"services.{service_name}.port: replica {replica} would use port {port}, "
                        f"already taken by {ports[port]}"
                    )
                ports[port] = f"services.{service_name}"
        for service_name, service in self.services.items():
            stream = service.stream
            if stream is None:
                continue
            if stream.model is not None and stream.model not in hosted:
                known = ", ".join(sorted(hosted)) or "none"
                raise ValueError(
                    f"services.{service_name}.stream.model: {stream.model!r} is not a model hosted by "
                    f"any service (hosted: {known})"
                )
            if stream.pipeline is not None and stream.pipeline not in self.pipelines:
                known = ", ".join(sorted(self.pipelines)) or "none"
                raise ValueError(
                    f"services.{service_name}.stream.pipeline: unknown pipeline {stream.pipeline!r} "
                    f"(known: {known})"
                )
        if self.pipelines:
            # Imported here: the pipeline room builds on settings, not the other way round.
            from modelfleet.pipeline.spec import compile_pipelines

            compile_pipelines(self)
        return self

    def service_of(self, model: str) -> str:
        """The service that hosts ``model``; raises KeyError if none does."""
        for name, service in self.services.items():
            if model in service.models:
                return name
        raise KeyError(model)


def _format_error(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if p not in ("function-after[_cross_check()]",))
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}")
    return "\n".join(lines)


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = yaml.safe_load(raw) if raw != "" else ""


def settings_from_dict(
    data: Mapping[str, Any], source: str = "settings", env: Mapping[str, str] | None = None
) -> Settings:
    """Validate ``data`` plus environment overrides; raises ConfigError naming each bad field."""
    merged: dict[str, Any] = yaml.safe_load(yaml.safe_dump(dict(data))) or {}
    if env:
        _apply_env(merged, env)
    try:
        return Settings.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_error(source, err)) from None


def load_settings(path: str | Path, env: Mapping[str, str] | None = None) -> Settings:
    """Read a fleet.yaml file; raises ConfigError when it is missing, not YAML, or invalid."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, not {type(data).__name__}")
    return settings_from_dict(data, source=str(path), env=env)
