"""Pipelines at the gateway: run them across services, keep every run, read runs back.

POST /v1/pipelines/{name}[?store=false]   one input object, or an array of them
GET  /v1/pipelines                        every pipeline: steps, graph, placement
GET  /v1/pipelines/{name}
GET  /v1/runs/{id}                        a stored run
GET  /v1/runs?pipeline=&since=&limit=&cursor=   stored runs, newest first, paged
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import parse_qs

import orjson

from modelfleet.errors import InvalidInput, MalformedRequest, ModelfleetError, PipelineNotFound, RunNotFound
from modelfleet.gateway.client import UpstreamResponse
from modelfleet.http import HTTPError
from modelfleet.pipeline.executor import PipelineExecutor, RowOutcome, RowState, StepCallError
from modelfleet.pipeline.placement import Unit, plan_units
from modelfleet.pipeline.spec import CompiledPipeline, CompiledStep
from modelfleet.pipeline.wire import apply_unit_response, unit_request
from modelfleet.store import MAX_LIST_LIMIT
from modelfleet.store.records import PipelineRun, StepRecord
from modelfleet.store.store import RunStore
from modelfleet.store.writer import RunWriter

log = logging.getLogger("modelfleet.gateway")


class Forwarder(Protocol):
    async def forward(
        self, service: str, method: bytes, target: bytes, body: bytes, rid: bytes, timeout_s: float
    ) -> UpstreamResponse: ...


def _answer(response: UpstreamResponse, what: str) -> Any:
    try:
        data = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        raise StepCallError(f"{what} answered {response.status} with a body that is not JSON") from None
    if response.status != 200:
        message = data.get("error") if isinstance(data, dict) else None
        # The worker's own message, as is, so a step fails with the same words in every placement.
        raise StepCallError(
            message or f"{what} answered {response.status} with no error message",
            client_error=response.status in (400, 413, 422),
        )
    return data


class HttpStepCaller:
    """Calls a step's model through the gateway's replica sets, within the request's deadline."""

    def __init__(self, forwarder: Forwarder, rid: bytes, deadline: float) -> None:
        self.forwarder = forwarder
        self.rid = rid
        self.deadline = deadline

    def _remaining_s(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise StepCallError("the request's deadline passed before the step could run")
        return remaining

    async def call(self, step: CompiledStep, inputs: list[Any]) -> tuple[list[Any], str | None]:
        target = f"/v1/models/{step.model}/predict".encode()
        try:
            response = await self.forwarder.forward(
                step.service, b"POST", target, orjson.dumps(inputs), self.rid, self._remaining_s()
            )
        except ModelfleetError as err:
            raise StepCallError(str(err)) from None
        data = _answer(response, f"model {step.model!r}")
        version = data.get("version")
        if step.version is not None and version != step.version:
            raise StepCallError(
                f"model {step.model!r} version {step.version!r} is not served (serving {version!r})", True
            )
        return list(data["outputs"]), version

    async def run_unit(self, pipeline: CompiledPipeline, unit: Unit, rows: list[RowState]) -> None:
        target = f"/v1/pipelines/{pipeline.name}/units".encode()
        body = orjson.dumps(unit_request(pipeline, unit, rows))
        try:
            response = await self.forwarder.forward(
                unit.service, b"POST", target, body, self.rid, self._remaining_s()
            )
        except ModelfleetError as err:
            raise StepCallError(str(err)) from None
        try:
            apply_unit_response(rows, _answer(response, f"service {unit.service!r}"))
        except (KeyError, TypeError, ValueError) as err:
            raise StepCallError(f"service {unit.service!r} gave a bad unit answer: {err}") from None


def check_inputs(payload: Any, max_inputs: int) -> list[Any]:
    """One input object or a non-empty array of them, as a list; raises InvalidInput saying what is wrong."""
    if not isinstance(payload, dict | list):
        raise InvalidInput("the body must be a JSON object (one input) or an array of input objects")
    inputs: list[Any] = [payload] if isinstance(payload, dict) else payload
    if not inputs:
        raise InvalidInput("the array of inputs is empty; send at least one input")
    if len(inputs) > max_inputs:
        raise InvalidInput(f"{len(inputs)} inputs in one request; the limit is {max_inputs}")
    for index, value in enumerate(inputs):
        if not isinstance(value, dict):
            raise InvalidInput(f"input [{index}] must be a JSON object, not {type(value).__name__}")
    return inputs


def _run_record(
    pipeline: CompiledPipeline, value: Any, outcome: RowOutcome, run_id: str | None = None
) -> PipelineRun:
    steps = []
    versions: dict[str, str] = {}
    for name, result in outcome.steps.items():
        step = pipeline.steps[name]
        if result.version is not None:
            versions[step.model] = result.version
        steps.append(
            StepRecord(
                name,
                step.model,
                result.version,
                result.status,
                result.output,
                result.reason,
                result.duration_ms,
            )
        )
    return PipelineRun(
        id=run_id or uuid.uuid4().hex,
        pipeline=pipeline.name,
        input=value,
        output=outcome.output,
        steps=steps,
        status=outcome.status,
        error=outcome.error,
        created_at=datetime.now(UTC),
        duration_ms=outcome.duration_ms,
        model_versions=versions,
    )


class PipelineService:
    """Runs pipelines for the gateway and serves the runs kept in the store."""

    def __init__(
        self,
        forwarder: Forwarder,
        pipelines: dict[str, CompiledPipeline],
        store: RunStore | None,
        max_inputs: int = 1024,
    ) -> None:
        self.forwarder = forwarder
        self.pipelines = pipelines
        self.store = store
        self.writer: RunWriter | None = None
        self.max_inputs = max_inputs
        self.units = {name: plan_units(p, packed=p.placement == "packed") for name, p in pipelines.items()}
        self.store_failures = 0

    async def start(self) -> None:
        if self.store is not None:
            await self.store.open()
            self.writer = RunWriter(self.store)

    async def stop(self) -> None:
        if self.writer is not None:
            await self.writer.close()
        if self.store is not None:
            await self.store.close()

    def pipeline(self, name: str) -> CompiledPipeline:
        pipeline = self.pipelines.get(name)
        if pipeline is None:
            known = ", ".join(sorted(self.pipelines)) or "none"
            raise PipelineNotFound(f"pipeline {name!r} is not defined (pipelines: {known})")
        return pipeline

    def describe(self, name: str) -> dict[str, Any]:
        pipeline = self.pipeline(name)
        described = pipeline.describe()
        described["units"] = [{"service": u.service, "steps": list(u.steps)} for u in self.units[name]]
        return described

    def describe_all(self) -> list[dict[str, Any]]:
        return [self.describe(name) for name in self.pipelines]

    async def run(
        self, name: str, body: bytes, query: bytes, rid: bytes, timeout_s: float
    ) -> tuple[int, bytes]:
        """Run a pipeline for the body's input(s); returns the HTTP status and the JSON answer."""
        pipeline = self.pipeline(name)
        options = parse_qs(query.decode("latin-1"))
        store = options.get("store", ["true"])[-1].lower() not in ("false", "0", "no")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise MalformedRequest(f"malformed JSON: {err}") from None
        single = isinstance(payload, dict)
        inputs = check_inputs(payload, self.max_inputs)
        outcomes, runs, stored, store_error = await self.execute(
            pipeline, inputs, rid, timeout_s, store=store
        )
        results = [
            self._result(pipeline, run, outcome, stored, store_error)
            for run, outcome in zip(runs, outcomes, strict=True)
        ]
        if single:
            outcome = outcomes[0]
            status = 200 if outcome.status == "succeeded" else 422 if outcome.client_error else 502
            return status, orjson.dumps(results[0])
        return 200, orjson.dumps({"pipeline": name, "results": results})

    async def execute(
        self,
        pipeline: CompiledPipeline,
        inputs: list[Any],
        rid: bytes,
        timeout_s: float,
        store: bool = True,
        run_ids: list[str | None] | None = None,
    ) -> tuple[list[RowOutcome], list[PipelineRun], bool, str | None]:
        """Run ``pipeline`` over ``inputs`` and keep the runs; a failed write is reported, not raised.

        ``run_ids`` makes the stored runs idempotent (a job's redelivered chunk keeps one run per input).
        """
        units = self.units.get(pipeline.name) or plan_units(pipeline)
        caller = HttpStepCaller(self.forwarder, rid, time.monotonic() + timeout_s)
        outcomes = await PipelineExecutor(caller, caller).run(pipeline, inputs, units)
        runs = [
            _run_record(pipeline, value, outcome, run_id)
            for value, outcome, run_id in zip(inputs, outcomes, run_ids or [None] * len(inputs), strict=True)
        ]
        stored, store_error = False, None
        if store and self.writer is not None:
            try:
                if len(runs) == 1:
                    await self.writer.save(runs[0])  # without gather's task: it costs a hop at c=1
                else:
                    await asyncio.gather(*(self.writer.save(run) for run in runs))
                stored = True
            except Exception as err:
                # The answer is still good; the client is told its run was not kept.
                self.store_failures += 1
                store_error = f"the run was not stored: {err}"
                log.error("pipeline %s: %s", pipeline.name, store_error)
        return outcomes, runs, stored, store_error

    def _result(
        self,
        pipeline: CompiledPipeline,
        run: PipelineRun,
        outcome: RowOutcome,
        stored: bool,
        store_error: str | None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = {
            "run_id": run.id,
            "pipeline": pipeline.name,
            "status": outcome.status,
            "output": outcome.output,
            "error": outcome.error,
            "duration_ms": round(outcome.duration_ms, 3),
            "steps": {
                name: {"model": pipeline.steps[name].model, **step.to_dict()}
                for name, step in outcome.steps.items()
            },
            "skipped": {
                name: step.reason for name, step in outcome.steps.items() if step.status == "skipped"
            },
            "model_versions": run.model_versions,
            "stored": stored,
        }
        if store_error:
            result["store_error"] = store_error
        return result

    async def get_run(self, run_id: str) -> bytes:
        if self.store is None:
            raise RunNotFound("this gateway keeps no runs")
        run = await self.store.find_run(run_id)
        if run is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        return orjson.dumps(run.to_dict())

    async def list_runs(self, query: bytes) -> bytes:
        if self.store is None:
            return orjson.dumps({"runs": [], "next_cursor": None})
        options = {k: v[-1] for k, v in parse_qs(query.decode("latin-1")).items()}
        since = None
        if "since" in options:
            try:
                since = datetime.fromisoformat(options["since"].replace("Z", "+00:00"))
            except ValueError:
                raise HTTPError(400, f"since={options['since']!r} is not an ISO-8601 time") from None
            if since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
        try:
            limit = int(options.get("limit", "50"))
        except ValueError:
            raise HTTPError(400, "limit must be a whole number") from None
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise HTTPError(400, f"limit must be between 1 and {MAX_LIST_LIMIT}")
        try:
            page = await self.store.list_runs(
                pipeline=options.get("pipeline"), since=since, limit=limit, cursor=options.get("cursor")
            )
        except ValueError as err:
            raise HTTPError(400, str(err)) from None
        return orjson.dumps({"runs": [r.to_dict() for r in page.items], "next_cursor": page.next_cursor})
