"""Prometheus metrics for one process, each on its own registry so tests and processes never share."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

PROMETHEUS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class _Children:
    """Caches labelled children: ``labels()`` costs a lock and a dict build on every call."""

    def __init__(self, metric: MetricWrapperBase) -> None:
        self._metric = metric
        self._cache: dict[tuple[str, ...], MetricWrapperBase] = {}

    def get(self, *labels: str) -> MetricWrapperBase:
        child = self._cache.get(labels)
        if child is None:
            child = self._metric.labels(*labels)
            self._cache[labels] = child
        return child


class WorkerMetrics:
    """Requests, latency, inputs and batch sizes per model served by a worker."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        self.service = service
        self._requests = _Children(
            Counter(
                "modelfleet_worker_requests_total",
                "Requests answered, by model, API and status code.",
                ["service", "model", "api", "code"],
                registry=self.registry,
            )
        )
        self._latency = _Children(
            Histogram(
                "modelfleet_worker_request_duration_seconds",
                "Time from request received to response ready, in seconds.",
                ["service", "model"],
                buckets=LATENCY_BUCKETS_S,
                registry=self.registry,
            )
        )
        self._inputs = _Children(
            Counter(
                "modelfleet_worker_inputs_total",
                "Inputs predicted (a request may carry several).",
                ["service", "model"],
                registry=self.registry,
            )
        )
        self.batch_size = _Children(
            Histogram(
                "modelfleet_worker_batch_size",
                "Inputs per predict call.",
                ["service", "model"],
                buckets=BATCH_BUCKETS,
                registry=self.registry,
            )
        )
        self.ready = Gauge(
            "modelfleet_worker_model_ready",
            "1 when the model is loaded.",
            ["service", "model"],
            registry=self.registry,
        )

    def observe(self, model: str, api: str, code: int, seconds: float, inputs: int) -> None:
        self._requests.get(self.service, model, api, str(code)).inc()  # type: ignore[attr-defined]
        self._latency.get(self.service, model).observe(seconds)  # type: ignore[attr-defined]
        if inputs:
            self._inputs.get(self.service, model).inc(inputs)  # type: ignore[attr-defined]

    def render(self) -> bytes:
        return generate_latest(self.registry)


class GatewayMetrics:
    """Requests per route and per upstream replica, and replica health."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = _Children(
            Counter(
                "modelfleet_gateway_requests_total",
                "Requests answered by the gateway, by service and status code.",
                ["service", "code"],
                registry=self.registry,
            )
        )
        self._latency = _Children(
            Histogram(
                "modelfleet_gateway_request_duration_seconds",
                "Time from request received to response sent, in seconds.",
                ["service"],
                buckets=LATENCY_BUCKETS_S,
                registry=self.registry,
            )
        )
        self.upstream_failures = _Children(
            Counter(
                "modelfleet_gateway_upstream_failures_total",
                "Failed attempts to reach a replica (connect errors, resets, timeouts).",
                ["service", "replica"],
                registry=self.registry,
            )
        )
        self.replica_healthy = _Children(
            Gauge(
                "modelfleet_gateway_replica_healthy",
                "1 while a replica is in rotation.",
                ["service", "replica"],
                registry=self.registry,
            )
        )
        self._version_requests = _Children(
            Counter(
                "modelfleet_gateway_version_requests_total",
                "Requests routed by a rollout, by model, version answering and status class (2xx, 4xx, 5xx).",
                ["model", "version", "code_class"],
                registry=self.registry,
            )
        )
        self._shadows = _Children(
            Counter(
                "modelfleet_gateway_shadow_total",
                "Shadow copies by model, shadow version and outcome (agree, differ, error, dropped).",
                ["model", "version", "outcome"],
                registry=self.registry,
            )
        )

    def observe(self, service: str, code: int, seconds: float) -> None:
        self._requests.get(service, str(code)).inc()  # type: ignore[attr-defined]
        self._latency.get(service).observe(seconds)  # type: ignore[attr-defined]

    def observe_version(self, model: str, version: str, code: int) -> None:
        self._version_requests.get(model, version, f"{code // 100}xx").inc()  # type: ignore[attr-defined]

    def observe_shadow(self, model: str, version: str, outcome: str) -> None:
        self._shadows.get(model, version, outcome).inc()  # type: ignore[attr-defined]

    def render(self) -> bytes:
        return generate_latest(self.registry)
