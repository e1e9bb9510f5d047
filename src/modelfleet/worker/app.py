"""The worker's ASGI application: plain JSON predict, Open Inference Protocol v2, metrics, OpenAPI.

Routes are matched by splitting the path once; the table below is the whole surface.

    GET  /v1/models                          models hosted here
    GET  /v1/models/{name}                   one model, with its input and output schemas
    POST /v1/models/{name}/predict           one input object, or an array of them
    POST /v1/models/{name}/versions/{v}/predict   a loaded version (registry models: alias and rollout)
    GET  /v2                                 server metadata
    GET  /v2/health/live | /v2/health/ready
    GET  /v2/models/{name}[/versions/{v}]    model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer
    GET  /metrics                            Prometheus text
    GET  /openapi.json
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, overload

import orjson
from pydantic import BaseModel, ValidationError

from modelfleet import __version__
from modelfleet.errors import DeadlineExceeded, InvalidInput, MalformedRequest, ModelNotFound
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
from modelfleet.metrics import PROMETHEUS_CONTENT_TYPE, WorkerMetrics
from modelfleet.models.runner import PROCESS_LOAD, ModelRunner, describe_validation_error
from modelfleet.pipeline.spec import CompiledPipeline
from modelfleet.settings import WorkerSettings
from modelfleet.types import BINARY_HEADER_LENGTH, TIMEOUT_HEADER, Receive, Scope, Send
from modelfleet.worker import oip
from modelfleet.worker.openapi import openapi_document
from modelfleet.worker.pipelines import UnitService
from modelfleet.worker.registry_models import RegistryModels

if TYPE_CHECKING:
    from modelfleet.lake.capture import CaptureWriter

log = logging.getLogger("modelfleet.worker")


class WorkerApp:
    """Serves the models of one service. Models are loaded before the app is handed to the server."""

    def __init__(
        self,
        service: str,
        runners: dict[str, ModelRunner],
        settings: WorkerSettings,
        pipelines: dict[str, CompiledPipeline] | None = None,
    ) -> None:
        self.service = service
        self.runners = runners
        # Every loaded version of every model; ``runners`` holds the one unversioned calls get.
        self.versions: dict[str, dict[str, ModelRunner]] = {n: {r.version: r} for n, r in runners.items()}
        self.follower: RegistryModels | None = None
        # Opt-in samples of live inputs and outputs, by model, written to the lake (lake/capture.py).
        self.captures: dict[str, CaptureWriter] = {}
        self.settings = settings
        self.units = UnitService(pipelines or {}, runners)
        self.metrics = WorkerMetrics(service)
        self._openapi: bytes | None = None
        self.follow_poll_s = 1.0
        for name, runner in runners.items():
            runner.on_batch = self.metrics.batch_size.get(service, name).observe  # type: ignore[attr-defined]

    @property
    def ready(self) -> bool:
        return all(r.ready for r in self.runners.values())

    def load(self) -> None:
        """Load every model, in order; raises whatever a model's load raises."""
        for name, runner in self.runners.items():
            started = time.perf_counter()
            runner.load()
            self.metrics.ready.labels(self.service, name).set(1)
            log.info("loaded model %s in %.2fs", name, time.perf_counter() - started)

    async def start(self) -> None:
        if self.follower is not None:
            await self.follower.registry.open()
            await self.follower.start(self.follow_poll_s)

    async def close(self) -> None:
        if self.follower is not None:
            await self.follower.stop()
            await self.follower.registry.close()
        for capture in self.captures.values():
            await asyncio.to_thread(capture.close)
        seen: set[int] = set()
        for loaded in self.versions.values():
            for runner in loaded.values():
                if id(runner) not in seen:
                    seen.add(id(runner))
                    await runner.close()
        for runner in self.runners.values():
            if id(runner) not in seen:
                await runner.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await lifespan(receive, send, on_startup=self.start, on_shutdown=self.close)
            return
        PROCESS_LOAD.requests += 1
        try:
            await serve_request(self._dispatch, scope, receive, send, log)
        finally:
            PROCESS_LOAD.requests -= 1

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, rid: bytes) -> None:
        method = scope["method"]
        parts = scope["path"].strip("/").split("/")
        head = parts[0]
        n = len(parts)
        if head == "v1" and n >= 2 and parts[1] == "models":
            if n == 4 and parts[3] == "predict":
                _allow(method, "POST")
                return await self._predict(scope, receive, send, rid, parts[2])
            if n == 6 and parts[3] == "versions" and parts[5] == "predict":
                _allow(method, "POST")
                return await self._predict(scope, receive, send, rid, parts[2], parts[4])
            if n == 2:
                _allow(method, "GET")
                return await respond(send, 200, orjson.dumps({"models": self._describe_all()}), rid)
            if n == 3:
                _allow(method, "GET")
                return await respond(send, 200, orjson.dumps(self._describe(self._runner(parts[2]))), rid)
        elif head == "v1" and n == 4 and parts[1] == "pipelines" and parts[3] == "units":
            _allow(method, "POST")
            check_json_content_type(scope)
            request = await read_body(scope, receive, self.settings.body_limit_bytes)
            return await respond(send, 200, await self.units.run(parts[2], request), rid)
        elif head == "v2":
            if n == 1:
                _allow(method, "GET")
                body = {"name": "modelfleet-worker", "version": __version__, "extensions": oip.EXTENSIONS}
                return await respond(send, 200, orjson.dumps(body), rid)
            if n == 3 and parts[1] == "health" and parts[2] in ("live", "ready"):
                _allow(method, "GET")
                ok = parts[2] == "live" or self.ready
                return await respond(send, 200 if ok else 503, orjson.dumps({parts[2]: ok}), rid)
            if n >= 3 and parts[1] == "models":
                name = parts[2]
                version: str | None = None
                rest = parts[3:]
                if len(rest) >= 2 and rest[0] == "versions":
                    version, rest = rest[1], rest[2:]
                runner = self._runner(name, version)
                if not rest:
                    _allow(method, "GET")
                    return await respond(send, 200, orjson.dumps(self._v2_metadata(runner)), rid)
                if rest == ["ready"]:
                    _allow(method, "GET")
                    return await respond(
                        send,
                        200 if runner.ready else 503,
                        orjson.dumps({"name": name, "ready": runner.ready}),
                        rid,
                    )
                if rest == ["infer"]:
                    _allow(method, "POST")
                    return await self._infer(scope, receive, send, rid, runner)
        elif n == 1 and head == "metrics":
            _allow(method, "GET")
            return await respond(send, 200, self.metrics.render(), rid, content_type=PROMETHEUS_CONTENT_TYPE)
        elif n == 1 and head == "openapi.json":
            _allow(method, "GET")
            if self._openapi is None:
                self._openapi = orjson.dumps(openapi_document(self.service, self.runners))
            return await respond(send, 200, self._openapi, rid)
        raise HTTPError(404, f"no route for {method} {scope['path']}")

    def _runner(self, name: str, version: str | None = None) -> ModelRunner:
        runner = self.runners.get(name)
        if runner is None:
            raise ModelNotFound(f"model {name!r} is not served here (serving: {', '.join(self.runners)})")
        if version is not None and version != runner.version:
            other = self.versions.get(name, {}).get(version)
            if other is None:
                loaded = ", ".join(sorted(self.versions.get(name, {runner.version: runner})))
                raise ModelNotFound(
                    f"model {name!r} has no version {version!r} loaded here (loaded: {loaded})"
                )
            return other
        return runner

    def _timeout_s(self, scope: Scope) -> float:
        limit = self.settings.request_timeout_s
        raw = get_header(scope, TIMEOUT_HEADER)
        if raw is not None:
            try:
                requested = float(raw) / 1000.0
            except ValueError:
                raise HTTPError(400, "x-request-timeout-ms must be a number of milliseconds") from None
            if requested <= 0:
                raise DeadlineExceeded("the request's deadline had already passed when it arrived")
            limit = min(limit, requested)
        return limit

    async def _run(self, scope: Scope, runner: ModelRunner, inputs: list[BaseModel]) -> list[BaseModel]:
        timeout_s = self._timeout_s(scope)
        try:
            async with asyncio.timeout(timeout_s):
                return await runner.predict(inputs)
        except TimeoutError:
            raise DeadlineExceeded(
                f"model {runner.name!r} did not answer within the deadline of {timeout_s * 1000:.0f} ms"
            ) from None

    async def _predict(
        self, scope: Scope, receive: Receive, send: Send, rid: bytes, name: str, version: str | None = None
    ) -> None:
        started = time.perf_counter()
        code = 500
        count = 0
        try:
            runner = self._runner(name, version)
            check_json_content_type(scope)
            body = await read_body(scope, receive, self.settings.body_limit_bytes)
            single, inputs = self._parse_plain(runner, body)
            count = len(inputs)
            outputs = await self._run(scope, runner, inputs)
            self._capture(runner, inputs, outputs)
            # Spliced as bytes: the outputs are already JSON, so they are not decoded and encoded again.
            if single:
                key, payload = b"output", runner.output_one.dump_json(outputs[0])
            else:
                key, payload = b"outputs", runner.output_many.dump_json(outputs)
            out = b'{"model":%s,"version":%s,"%s":%s}' % (
                orjson.dumps(name),
                orjson.dumps(runner.version),
                key,
                payload,
            )
            code = 200
            await respond(send, 200, out, rid)
        except BaseException as err:
            code = status_of(err)
            raise
        finally:
            self.metrics.observe(
                name if name in self.runners else "_unknown", "v1", code, time.perf_counter() - started, count
            )

    def _parse_plain(self, runner: ModelRunner, body: bytes) -> tuple[bool, list[BaseModel]]:
        stripped = body.lstrip()
        if not stripped:
            raise MalformedRequest("empty body; send a JSON object (one input) or an array of input objects")
        first = stripped[:1]
        single = first == b"{"
        if not single and first != b"[":
            try:
                orjson.loads(stripped)
            except orjson.JSONDecodeError as err:
                raise MalformedRequest(f"malformed JSON: {err}") from None
            raise InvalidInput("the body must be a JSON object (one input) or an array of input objects")
        try:
            if single:
                return True, [runner.input_one.validate_json(stripped)]
            inputs: list[BaseModel] = runner.input_many.validate_json(stripped)
        except ValidationError as err:
            if any(e["type"] == "json_invalid" for e in err.errors()):
                raise MalformedRequest(f"malformed JSON: {err.errors()[0]['msg']}") from None
            summary, details = describe_validation_error(err)
            raise InvalidInput(f"invalid input for model {runner.name!r}: {summary}", details) from None
        if not inputs:
            raise InvalidInput("the array of inputs is empty; send at least one input")
        if len(inputs) > self.settings.max_inputs_per_request:
            raise InvalidInput(
                f"{len(inputs)} inputs in one request; the limit is {self.settings.max_inputs_per_request}"
            )
        return False, inputs

    async def _infer(
        self, scope: Scope, receive: Receive, send: Send, rid: bytes, runner: ModelRunner
    ) -> None:
        started = time.perf_counter()
        code = 500
        count = 0
        try:
            check_json_content_type(scope, binary_ok=True)
            body = await read_body(scope, receive, self.settings.body_limit_bytes)
            request, rows = oip.decode_request(
                body, runner.input_type, get_header(scope, BINARY_HEADER_LENGTH)
            )
            if len(rows) > self.settings.max_inputs_per_request:
                raise InvalidInput(
                    f"batch of {len(rows)} in one request; "
                    f"the limit is {self.settings.max_inputs_per_request}"
                )
            inputs = runner.validate_rows(rows, prefix="row")
            count = len(inputs)
            outputs = await self._run(scope, runner, inputs)
            self._capture(runner, inputs, outputs)
            out = oip.encode_response(runner.name, runner.version, runner.output_type, outputs, request)
            code = 200
            headers = [] if out.header_length is None else [(BINARY_HEADER_LENGTH, b"%d" % out.header_length)]
            await respond(send, 200, out.body, rid, content_type=out.content_type, extra_headers=headers)
        except BaseException as err:
            code = status_of(err)
            raise
        finally:
            self.metrics.observe(runner.name, "v2", code, time.perf_counter() - started, count)

    def _capture(self, runner: ModelRunner, inputs: list[BaseModel], outputs: list[BaseModel]) -> None:
        capture = self.captures.get(runner.name)
        if capture is None:
            return
        try:
            capture.maybe_capture(_Dumped(inputs), _Dumped(outputs), runner.version)
        except Exception:
            # Capturing is a side line: it never fails a prediction.
            log.exception("capturing predictions of %s failed", runner.name)

    def _describe(self, runner: ModelRunner) -> dict[str, Any]:
        model = runner.model
        batching = runner.batching
        return {
            "name": runner.name,
            "version": runner.version,
            "ready": runner.ready,
            "service": self.service,
            "description": type(model).description,
            "class": f"{type(model).__module__}:{type(model).__qualname__}",
            "batching": (
                {"max_batch_size": batching.max_batch_size, "max_wait_ms": batching.max_wait_ms}
                if batching
                else None
            ),
            "input_schema": runner.input_type.model_json_schema(),
            "output_schema": runner.output_type.model_json_schema(),
        }

    def _describe_all(self) -> list[dict[str, Any]]:
        return [
            {"name": r.name, "version": r.version, "ready": r.ready, "service": self.service}
            for r in self.runners.values()
        ]

    def _v2_metadata(self, runner: ModelRunner) -> dict[str, Any]:
        return {
            "name": runner.name,
            "versions": sorted(self.versions.get(runner.name, {runner.version: runner})),
            "platform": "modelfleet",
            "inputs": [s.metadata() for s in oip.input_specs(runner.input_type)],
            "outputs": [s.metadata() for s in oip.output_specs(runner.output_type)],
        }


class _Dumped(Sequence[dict[str, Any]]):
    """Pydantic objects as JSON-ready dicts, dumped only when the capture sampler picks one."""

    def __init__(self, items: list[BaseModel]) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | Sequence[dict[str, Any]]:
        if isinstance(index, slice):
            return [item.model_dump(mode="json") for item in self._items[index]]
        return self._items[index].model_dump(mode="json")


def _allow(method: str, allowed: str) -> None:
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        raise HTTPError(405, f"method {method} not allowed here; use {allowed}")
