"""The gateway's ASGI application: the one address clients talk to.

    POST /v1/models/{name}/predict, GET /v1/models/{name}   proxied to a replica of the hosting service
    GET|POST /v2/models/{name}/...                           proxied likewise (Open Inference Protocol)
    GET  /v1/models                                          every model of the fleet, asked of the workers
    GET  /v1/fleet                                           services, replicas and their health
    /v1/pipelines..., /v1/runs...                            pipelines and stored runs (gateway/pipelines.py)
    /v1/jobs...                                              asynchronous jobs (jobs/service.py)
    /v1/registry/...                                         model versions, aliases, rollouts (registry/api)
    GET  /v1/rollouts                                        live rollouts: resolved versions and counters
    /v1/training/jobs...                                     training jobs (training/api.py)
    GET  /v2, /v2/health/live, /v2/health/ready, /metrics

The gateway never parses a predict body: it checks size and media type, picks a replica and
forwards the bytes, so its cost does not grow with the models' schemas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

import orjson

from modelfleet import __version__
from modelfleet.errors import DeadlineExceeded, ModelNotFound, UpstreamUnavailable
from modelfleet.gateway.balancer import ReplicaSet
from modelfleet.gateway.client import UpstreamError, UpstreamResponse, fetch
from modelfleet.gateway.pipelines import PipelineService
from modelfleet.gateway.rollouts import (
    VERSION_HEADER,
    ActiveRollout,
    RolloutRouter,
    answering_version,
    version_target,
)
from modelfleet.http import (
    HTTPError,
    check_json_content_type,
    get_header,
    lifespan,
    read_body,
    respond,
    serve_request,
    status_of,
)
from modelfleet.jobs.service import JobService
from modelfleet.metrics import PROMETHEUS_CONTENT_TYPE, GatewayMetrics
from modelfleet.pipeline.spec import CompiledPipeline
from modelfleet.plan import FleetPlan
from modelfleet.registry.api import RegistryAPI
from modelfleet.settings import GatewaySettings
from modelfleet.store.store import RunStore
from modelfleet.training.api import TrainingAPI
from modelfleet.types import (
    BINARY_HEADER_LENGTH,
    JSON_CONTENT_TYPE,
    REQUEST_ID_HEADER,
    TIMEOUT_HEADER,
    Receive,
    Scope,
    Send,
)

log = logging.getLogger("modelfleet.gateway")

# The Open Inference Protocol extensions the fleet speaks; workers list the same.
EXTENSIONS = ["binary_tensor_data"]
_JSON_BODY = ((b"content-type", JSON_CONTENT_TYPE),)
_STARTING_PROBE_INTERVAL_S = 0.1


def _binary_request_headers(scope: Scope) -> list[tuple[bytes, bytes]] | None:
    """The headers to forward for an inference request with binary tensor data, or None for JSON.

    The body itself is forwarded unparsed: the worker reads the binary framing.
    """
    length = get_header(scope, BINARY_HEADER_LENGTH)
    if length is None:
        return None
    ctype = get_header(scope, b"content-type")
    headers = [(BINARY_HEADER_LENGTH, length)]
    if ctype is not None:
        headers.append((b"content-type", ctype))
    return headers


def _binary_answer(response: UpstreamResponse) -> list[tuple[bytes, bytes]]:
    length = response.header(BINARY_HEADER_LENGTH)
    return [] if length is None else [(BINARY_HEADER_LENGTH, length)]


class MountedAPI(Protocol):
    """A room's HTTP API served under /v1/<room>/: it gets the method, the rest of the path and the body."""

    async def handle(self, method: str, parts: list[str], query: bytes, body: bytes) -> tuple[int, bytes]: ...


class GatewayApp:
    """Routes model calls to replicas and keeps the replicas' health current."""

    def __init__(
        self,
        plan: FleetPlan,
        settings: GatewaySettings,
        pipelines: dict[str, CompiledPipeline] | None = None,
        store: RunStore | None = None,
        jobs: JobService | None = None,
        registry: RegistryAPI | None = None,
        training: TrainingAPI | None = None,
    ) -> None:
        self.plan = plan
        self.jobs = jobs
        self.registry = registry
        self.training = training
        self.settings = settings
        self.metrics = GatewayMetrics()
        # Routing by rollout shares the registry API's registry (opened and closed by the API).
        self.rollouts = (
            RolloutRouter(
                registry.registry,
                self.metrics,
                poll_s=settings.rollout_poll_s,
                shadow_max_in_flight=settings.shadow_max_in_flight,
            )
            if registry is not None
            else None
        )
        self.services = {
            name: ReplicaSet(name, endpoints, settings, self.metrics)
            for name, endpoints in plan.services.items()
        }
        self.model_service = dict(plan.models)
        self.pipelines = PipelineService(self, pipelines or {}, store)
        self._health_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.pipelines.start()
        if self.jobs is not None:
            await self.jobs.start()
        if self.registry is not None:
            await self.registry.start()
        if self.rollouts is not None:
            await self.rollouts.start()
        if self.training is not None:
            await self.training.start()
        self._health_task = asyncio.get_running_loop().create_task(self._health_loop())

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await self.pipelines.stop()
        if self.jobs is not None:
            await self.jobs.stop()
        if self.training is not None:
            await self.training.stop()
        if self.rollouts is not None:
            await self.rollouts.stop()
        if self.registry is not None:
            await self.registry.stop()
        for replica_set in self.services.values():
            replica_set.close()

    async def _health_loop(self) -> None:
        # The first round runs at once: until every service has passed a probe the gateway is not
        # ready, and until then it probes more often, so a starting fleet is ready soon after its
        # workers are.
        while True:
            try:
                await asyncio.gather(
                    *(s.probe(self.settings.health_timeout_s) for s in self.services.values())
                )
            except Exception:
                log.exception("health probing failed")
            interval_s = self.settings.health_interval_s
            if not all(s.probed() for s in self.services.values()):
                interval_s = min(interval_s, _STARTING_PROBE_INTERVAL_S)
            await asyncio.sleep(interval_s)

    def ready(self) -> tuple[bool, list[str]]:
        """Ready once every service routed to has a replica that passed a probe and is in rotation;
        also the services that are not."""
        down = [name for name, s in self.services.items() if not s.ready()]
        return not down, down

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await lifespan(receive, send, on_startup=self.start, on_shutdown=self.stop)
            return
        await serve_request(self._dispatch, scope, receive, send, log)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, rid: bytes) -> None:
        method = scope["method"]
        parts = scope["path"].strip("/").split("/")
        n = len(parts)
        head = parts[0]
        if n >= 3 and parts[1] == "models" and head in ("v1", "v2"):
            service = self._service_of(parts[2])
            # Only an unversioned predict/infer follows a rollout; explicit version paths pass through.
            if n == 4 and method == "POST" and self.rollouts is not None:
                rollout = self.rollouts.find(parts[2])
                if rollout is not None and parts[3] == ("predict" if head == "v1" else "infer"):
                    return await self._proxy_routed(scope, receive, send, rid, service, rollout, head)
            return await self._proxy(scope, receive, send, rid, service)
        if head == "v1" and n in (2, 3) and parts[1] == "jobs" and self.jobs is not None:
            return await self._jobs(scope, receive, send, rid, parts, method)
        if head == "v1" and n >= 2 and parts[1] == "registry" and self.registry is not None:
            return await self._mounted(self.registry, scope, receive, send, rid, parts, method)
        if head == "v1" and n >= 2 and parts[1] == "training" and self.training is not None:
            return await self._mounted(self.training, scope, receive, send, rid, parts, method)
        if head == "v1" and n in (2, 3) and parts[1] in ("pipelines", "runs"):
            return await self._pipelines(scope, receive, send, rid, parts, method)
        if head == "v1" and n == 2 and method in ("GET", "HEAD"):
            if parts[1] == "models":
                return await respond(send, 200, orjson.dumps({"models": await self._all_models()}), rid)
            if parts[1] == "fleet":
                return await respond(send, 200, orjson.dumps(self.describe()), rid)
            if parts[1] == "rollouts":
                if self.rollouts is None:
                    raise HTTPError(404, "rollouts need the model registry; this gateway runs without one")
                answer = self.rollouts.describe(served=self.model_service)
                return await respond(send, 200, orjson.dumps(answer), rid)
        if head == "v2" and method in ("GET", "HEAD"):
            if n == 1:
                meta = {"name": "modelfleet-gateway", "version": __version__, "extensions": EXTENSIONS}
                return await respond(send, 200, orjson.dumps(meta), rid)
            if n == 3 and parts[1] == "health" and parts[2] == "live":
                return await respond(send, 200, b'{"live":true}', rid)
            if n == 3 and parts[1] == "health" and parts[2] == "ready":
                ready, down = self.ready()
                if not ready:
                    not_ready = {"ready": False, "services_down": down}
                    return await respond(send, 503, orjson.dumps(not_ready), rid)
                return await respond(send, 200, b'{"ready":true}', rid)
        if n == 1 and head == "metrics" and method in ("GET", "HEAD"):
            return await respond(send, 200, self.metrics.render(), rid, content_type=PROMETHEUS_CONTENT_TYPE)
        raise HTTPError(404, f"no route for {method} {scope['path']}")

    async def _jobs(
        self, scope: Scope, receive: Receive, send: Send, rid: bytes, parts: list[str], method: str
    ) -> None:
        assert self.jobs is not None
        if len(parts) == 2:
            if method != "POST":
                raise HTTPError(405, f"method {method} not allowed here; use POST")
            check_json_content_type(scope)
            body = await read_body(scope, receive, self.settings.body_limit_bytes)
            return await respond(send, 202, await self.jobs.submit(body), rid)
        if method in ("GET", "HEAD"):
            return await respond(send, 200, await self.jobs.describe(parts[2], scope["query_string"]), rid)
        if method == "DELETE":
            return await respond(send, 200, await self.jobs.cancel(parts[2]), rid)
        raise HTTPError(405, f"method {method} not allowed here; use GET or DELETE")

    async def _mounted(
        self,
        api: MountedAPI,
        scope: Scope,
        receive: Receive,
        send: Send,
        rid: bytes,
        parts: list[str],
        method: str,
    ) -> None:
        body = b""
        if method in ("PUT", "POST"):
            check_json_content_type(scope)
            body = await read_body(scope, receive, self.settings.body_limit_bytes)
        status, answer = await api.handle(method, parts[2:], scope["query_string"], body)
        return await respond(send, status, answer, rid)

    async def _pipelines(
        self, scope: Scope, receive: Receive, send: Send, rid: bytes, parts: list[str], method: str
    ) -> None:
        query = scope["query_string"]
        if parts[1] == "runs":
            if method not in ("GET", "HEAD"):
                raise HTTPError(405, f"method {method} not allowed here; use GET")
            body = await (
                self.pipelines.get_run(parts[2]) if len(parts) == 3 else self.pipelines.list_runs(query)
            )
            return await respond(send, 200, body, rid)
        if len(parts) == 2:
            if method not in ("GET", "HEAD"):
                raise HTTPError(405, f"method {method} not allowed here; use GET")
            return await respond(send, 200, orjson.dumps({"pipelines": self.pipelines.describe_all()}), rid)
        if method in ("GET", "HEAD"):
            return await respond(send, 200, orjson.dumps(self.pipelines.describe(parts[2])), rid)
        if method != "POST":
            raise HTTPError(405, f"method {method} not allowed here; use GET or POST")
        self.pipelines.pipeline(parts[2])  # unknown names are 404 before they reach the metrics
        started = time.perf_counter()
        code = 500
        try:
            check_json_content_type(scope)
            body = await read_body(scope, receive, self.settings.body_limit_bytes)
            timeout_s = self._timeout_s(scope)
            try:
                async with asyncio.timeout(timeout_s):
                    code, answer = await self.pipelines.run(parts[2], body, query, rid, timeout_s)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"pipeline {parts[2]!r} did not finish within the deadline of {timeout_s * 1000:.0f} ms"
                ) from None
            await respond(send, code, answer, rid)
        except BaseException as err:
            code = status_of(err)
            raise
        finally:
            self.metrics.observe(f"pipeline:{parts[2]}", code, time.perf_counter() - started)

    def _service_of(self, model: str) -> str:
        service = self.model_service.get(model)
        if service is None:
            known = ", ".join(sorted(self.model_service))
            raise ModelNotFound(f"model {model!r} is not served by this fleet (models: {known})")
        return service

    def _timeout_s(self, scope: Scope) -> float:
        limit = self.settings.request_timeout_s
        raw = get_header(scope, TIMEOUT_HEADER)
        if raw is not None:
            try:
                limit = min(limit, float(raw) / 1000.0)
            except ValueError:
                raise HTTPError(400, "x-request-timeout-ms must be a number of milliseconds") from None
        return limit

    async def _proxy(self, scope: Scope, receive: Receive, send: Send, rid: bytes, service: str) -> None:
        started = time.perf_counter()
        code = 500
        try:
            method = scope["method"]
            body = b""
            binary = None
            if method == "POST":
                binary = _binary_request_headers(scope)
                check_json_content_type(scope, binary_ok=binary is not None)
                body = await read_body(scope, receive, self.settings.body_limit_bytes)
            elif method not in ("GET", "HEAD"):
                raise HTTPError(405, f"method {method} not allowed here")
            timeout_s = self._timeout_s(scope)
            target = scope["raw_path"] or scope["path"].encode()
            if scope["query_string"]:
                target += b"?" + scope["query_string"]
            response = await self.forward(service, method.encode(), target, body, rid, timeout_s, binary)
            code = response.status
            ctype = response.header(b"content-type") or JSON_CONTENT_TYPE
            await respond(
                send,
                response.status,
                response.body,
                rid,
                content_type=ctype,
                extra_headers=_binary_answer(response),
            )
        except BaseException as err:
            code = status_of(err)
            raise
        finally:
            self.metrics.observe(service, code, time.perf_counter() - started)

    async def _proxy_routed(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        rid: bytes,
        service: str,
        rollout: ActiveRollout,
        api: str,
    ) -> None:
        """A predict call of a model under a rollout: sent to the version the rollout picks, counted
        per version, and copied to the shadow once the client has its answer."""
        assert self.rollouts is not None
        started = time.perf_counter()
        code = 500
        model = rollout.model
        version = self.rollouts.route(rollout, scope["headers"])
        answered_by = version
        binary = _binary_request_headers(scope)
        try:
            check_json_content_type(scope, binary_ok=binary is not None)
            body = await read_body(scope, receive, self.settings.body_limit_bytes)
            timeout_s = self._timeout_s(scope)
            deadline = time.monotonic() + timeout_s
            query = b"?" + scope["query_string"] if scope["query_string"] else b""
            target = version_target(api, model, version) + query
            response = await self.forward(service, b"POST", target, body, rid, timeout_s, binary)
            if response.status == 404:
                # The replica has not loaded that version (yet): the alias's version answers instead.
                self.rollouts.record_fallback(model, version)
                unversioned = f"/{api}/models/{model}/{'predict' if api == 'v1' else 'infer'}".encode()
                remaining_s = max(0.001, deadline - time.monotonic())
                response = await self.forward(
                    service, b"POST", unversioned + query, body, rid, remaining_s, binary
                )
                answered_by = answering_version(response) or "unknown"
            code = response.status
            ctype = response.header(b"content-type") or JSON_CONTENT_TYPE
            headers = [(VERSION_HEADER, answered_by.encode()), *_binary_answer(response)]
            await respond(send, code, response.body, rid, content_type=ctype, extra_headers=headers)
        except BaseException as err:
            code = status_of(err)
            raise
        finally:
            self.metrics.observe(service, code, time.perf_counter() - started)
            self.rollouts.record(model, answered_by, code)
        shadow = rollout.shadow_version
        # A failed primary leaves nothing to compare with; a shadow equal to the primary tells nothing.
        if shadow is not None and shadow != answered_by and 200 <= code < 300:
            shadow_target = version_target(api, model, shadow) + query

            async def copy() -> UpstreamResponse:
                return await self.forward(
                    service, b"POST", shadow_target, body, rid + b":shadow", timeout_s, binary
                )

            self.rollouts.mirror(model, shadow, answered_by, response, copy, rid)

    async def forward(
        self,
        service: str,
        method: bytes,
        target: bytes,
        body: bytes,
        rid: bytes,
        timeout_s: float,
        binary: list[tuple[bytes, bytes]] | None = None,
    ) -> UpstreamResponse:
        """Send one request to the least busy replica of ``service``, failing over on connection errors.

        ``binary`` replaces the JSON content type with the headers of an inference request that
        carries binary tensor data. Raises UpstreamUnavailable when no replica could take it,
        DeadlineExceeded after ``timeout_s``.
        """
        replicas = self.services[service]
        deadline = time.monotonic() + timeout_s
        tried: set[int] = set()
        last_error = "no replica configured"
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    replica = replicas.pick(tried)
                    if replica is None:
                        raise UpstreamUnavailable(
                            f"no replica of service {service!r} could take the request: {last_error}"
                        )
                    tried.add(replica.index)
                    remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
                    headers = [
                        *(binary or _JSON_BODY),
                        (REQUEST_ID_HEADER, rid),
                        (TIMEOUT_HEADER, str(remaining_ms).encode()),
                    ]
                    replica.outstanding += 1
                    try:
                        response = await replica.pool.request(method, target, headers, body)
                    except UpstreamError as err:
                        last_error = f"{replica.name}: {err}"
                        replicas.report_failure(replica, str(err), fatal=True)
                        continue
                    finally:
                        replica.outstanding -= 1
                    replicas.report_success(replica)
                    return response
        except TimeoutError:
            raise DeadlineExceeded(
                f"service {service!r} did not answer within the deadline of {timeout_s * 1000:.0f} ms"
            ) from None

    async def _all_models(self) -> list[dict[str, object]]:
        async def ask(service: str) -> list[dict[str, object]]:
            for replica in self.services[service].replicas:
                if not replica.healthy:
                    continue
                try:
                    status, body = await fetch(
                        replica.endpoint.host,
                        replica.endpoint.port,
                        "/v1/models",
                        self.settings.health_timeout_s,
                    )
                except Exception:
                    continue
                if status == 200 and isinstance(body, dict):
                    return list(body.get("models", []))
            return [
                {"name": m, "service": service, "ready": False, "error": "no replica answered"}
                for m, s in self.model_service.items()
                if s == service
            ]

        results = await asyncio.gather(*(ask(s) for s in self.services))
        return [model for models in results for model in models]

    def describe(self) -> dict[str, object]:
        return {
            "services": {
                name: {
                    "models": [m for m, s in self.model_service.items() if s == name],
                    "replicas": [r.describe() for r in s.replicas],
                }
                for name, s in self.services.items()
            }
        }
