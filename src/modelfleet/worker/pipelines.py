"""Packed pipeline units inside a worker: steps whose models live here run without another hop."""

from __future__ import annotations

from typing import Any

import orjson

from modelfleet.errors import InvalidInput, MalformedRequest, PipelineNotFound, PredictionFailed
from modelfleet.models.runner import ModelRunner
from modelfleet.pipeline.executor import PipelineExecutor, StepCallError
from modelfleet.pipeline.placement import Unit
from modelfleet.pipeline.spec import CompiledPipeline, CompiledStep
from modelfleet.pipeline.wire import rows_from_request, unit_response


class LocalStepCaller:
    """Calls the models of this worker directly: validate, predict, dump."""

    def __init__(self, runners: dict[str, ModelRunner]) -> None:
        self.runners = runners

    async def call(self, step: CompiledStep, inputs: list[Any]) -> tuple[list[Any], str | None]:
        runner = self.runners.get(step.model)
        if runner is None:
            raise StepCallError(f"model {step.model!r} is not hosted by this worker")
        if step.version is not None and step.version != runner.version:
            raise StepCallError(
                f"model {step.model!r} version {step.version!r} is not served (serving {runner.version!r})",
                client_error=True,
            )
        try:
            validated = runner.validate_rows(inputs)
        except InvalidInput as err:
            raise StepCallError(str(err), client_error=True) from None
        try:
            outputs = await runner.predict(validated)
        except PredictionFailed as err:
            raise StepCallError(str(err)) from None
        return [o.model_dump(mode="json") for o in outputs], runner.version


class UnitService:
    """Answers ``POST /v1/pipelines/{name}/units`` for the gateway."""

    def __init__(self, pipelines: dict[str, CompiledPipeline], runners: dict[str, ModelRunner]) -> None:
        self.pipelines = pipelines
        self.executor = PipelineExecutor(LocalStepCaller(runners))
        self.runners = runners

    async def run(self, name: str, body: bytes) -> bytes:
        pipeline = self.pipelines.get(name)
        if pipeline is None:
            raise PipelineNotFound(f"pipeline {name!r} is not defined")
        try:
            request = orjson.loads(body)
            steps = [str(s) for s in request["steps"]]
            rows = rows_from_request(request)
        except (orjson.JSONDecodeError, KeyError, TypeError) as err:
            raise MalformedRequest(f"not a unit request: {err}") from None
        for step in steps:
            if step not in pipeline.steps:
                raise InvalidInput(f"pipeline {name!r} has no step {step!r}")
            if pipeline.steps[step].model not in self.runners:
                raise InvalidInput(
                    f"step {step!r} needs model {pipeline.steps[step].model!r}, not hosted here"
                )
        service = pipeline.steps[steps[0]].service
        units = [Unit(service, (step,)) for step in steps]
        await self.executor.run_steps(pipeline, rows, units)
        return orjson.dumps(unit_response(steps, rows))
