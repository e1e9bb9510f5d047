"""Running a pipeline over one or many inputs.

Each step is called once for all the inputs that reach it (a list predict), so a batch of inputs
costs one model call per step, not one per input. Independent steps run concurrently. A ``when``
that is false, or that reads a skipped step, skips the step for that input, and so everything that
reads it. The same engine runs at the gateway (steps over HTTP) and inside a worker (a unit of
packed steps, called directly), so results do not depend on placement.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from modelfleet.pipeline.expression import SKIPPED, EvaluationError, NeedsSkipped, truthy
from modelfleet.pipeline.placement import Unit
from modelfleet.pipeline.spec import CompiledPipeline, CompiledStep

StepStatus = Literal["ok", "skipped", "failed", "defaulted"]


class StepCallError(Exception):
    """Raised by a StepCaller when the model call failed; the message says why.

    ``client_error`` is True when the input was at fault (the model refused it), not the model.
    """

    def __init__(self, message: str, client_error: bool = False) -> None:
        super().__init__(message)
        self.client_error = client_error


@dataclass
class StepResult:
    """What one step did for one input."""

    status: StepStatus
    output: Any = None
    reason: str | None = None
    duration_ms: float = 0.0
    version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "output": self.output,
            "reason": self.reason,
            "duration_ms": round(self.duration_ms, 3),
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepResult:
        return cls(
            data["status"],
            data.get("output"),
            data.get("reason"),
            data.get("duration_ms", 0.0),
            data.get("version"),
        )


@dataclass
class RowState:
    """One input travelling through the pipeline."""

    input: Any
    results: dict[str, StepResult] = field(default_factory=dict)
    error: str | None = None
    client_error: bool = False

    def scope(self, skipped_as_null: bool = False) -> dict[str, Any]:
        scope: dict[str, Any] = {"input": self.input}
        for name, result in self.results.items():
            if result.status in ("ok", "defaulted"):
                scope[name] = result.output
            else:
                scope[name] = None if skipped_as_null else SKIPPED
        return scope


class StepCaller(Protocol):
    """Calls a step's model with a list of inputs."""

    async def call(self, step: CompiledStep, inputs: list[Any]) -> tuple[list[Any], str | None]:
        """Return one output per input and the model version that answered; raise StepCallError."""
        ...


class UnitRunner(Protocol):
    """Runs several packed steps in one hop on the service that hosts them."""

    async def run_unit(self, pipeline: CompiledPipeline, unit: Unit, rows: list[RowState]) -> None:
        """Fill in ``rows`` with the unit's step results; raise StepCallError when the hop failed."""
        ...


@dataclass
class RowOutcome:
    """The end of one input's run."""

    status: Literal["succeeded", "failed"]
    output: Any
    error: str | None
    steps: dict[str, StepResult]
    duration_ms: float
    client_error: bool = False


class PipelineExecutor:
    """Executes compiled pipelines through a StepCaller (and a UnitRunner for packed units)."""

    def __init__(self, caller: StepCaller, unit_runner: UnitRunner | None = None) -> None:
        self.caller = caller
        self.unit_runner = unit_runner

    async def run(
        self, pipeline: CompiledPipeline, inputs: Sequence[Any], units: list[Unit] | None = None
    ) -> list[RowOutcome]:
        """Run ``pipeline`` for every input; per-input failures are outcomes, not exceptions."""
        started = time.perf_counter()
        rows = [RowState(value) for value in inputs]
        await self.run_steps(pipeline, rows, units)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        return [self._finish(pipeline, row, elapsed_ms) for row in rows]

    async def run_steps(
        self, pipeline: CompiledPipeline, rows: list[RowState], units: list[Unit] | None = None
    ) -> None:
        """Run the given units (default: every step on its own) over ``rows``, concurrently where possible."""
        if units is None:
            units = [Unit(pipeline.steps[name].service, (name,)) for name in pipeline.order]
        unit_of = {step: i for i, unit in enumerate(units) for step in unit.steps}
        tasks: dict[int, asyncio.Task[None]] = {}

        async def run_unit(index: int) -> None:
            unit = units[index]
            deps = {unit_of[d] for s in unit.steps for d in pipeline.steps[s].depends_on if d in unit_of} - {
                index
            }
            if deps:
                await asyncio.gather(*(tasks[d] for d in deps))
            if len(unit.steps) > 1 and self.unit_runner is not None:
                await self._remote_unit(pipeline, unit, rows)
            else:
                for name in unit.steps:
                    await self._run_step(pipeline.steps[name], rows)

        for index in range(len(units)):
            tasks[index] = asyncio.ensure_future(run_unit(index))
        try:
            await asyncio.gather(*tasks.values())
        finally:
            for task in tasks.values():
                task.cancel()

    async def _remote_unit(self, pipeline: CompiledPipeline, unit: Unit, rows: list[RowState]) -> None:
        assert self.unit_runner is not None
        live = [row for row in rows if row.error is None]
        if not live:
            return
        started = time.perf_counter()
        try:
            await self.unit_runner.run_unit(pipeline, unit, live)
        except StepCallError as err:
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            for name in unit.steps:
                step = pipeline.steps[name]
                for row in live:
                    if name not in row.results and row.error is None:
                        self._fail(row, step, str(err), elapsed_ms, err.client_error)

    async def _run_step(self, step: CompiledStep, rows: list[RowState]) -> None:
        active: list[RowState] = []
        payloads: list[Any] = []
        for row in rows:
            if row.error is not None or step.name in row.results:
                continue
            scope = row.scope()
            try:
                if step.when is not None and not truthy(step.when.evaluate(scope)):
                    row.results[step.name] = StepResult("skipped", reason=f"condition is false: {step.when}")
                    continue
                payloads.append(self._build_input(step, scope))
                active.append(row)
            except NeedsSkipped as skipped:
                row.results[step.name] = StepResult("skipped", reason=f"needs skipped step {skipped.step!r}")
            except EvaluationError as err:
                self._fail(row, step, f"cannot evaluate its expressions: {err}", 0.0, client_error=True)
        if not active:
            return
        started = time.perf_counter()
        try:
            outputs, version = await self.caller.call(step, payloads)
        except StepCallError as err:
            if len(active) == 1:
                self._fail(
                    active[0], step, str(err), (time.perf_counter() - started) * 1000.0, err.client_error
                )
                return
            # One bad input must not sink the others that shared its call: retry them one by one.
            await asyncio.gather(
                *(self._call_one(step, row, payload) for row, payload in zip(active, payloads, strict=True))
            )
            return
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        for row, output in zip(active, outputs, strict=True):
            row.results[step.name] = StepResult("ok", output, None, elapsed_ms, version)

    async def _call_one(self, step: CompiledStep, row: RowState, payload: Any) -> None:
        started = time.perf_counter()
        try:
            outputs, version = await self.caller.call(step, [payload])
        except StepCallError as err:
            self._fail(row, step, str(err), (time.perf_counter() - started) * 1000.0, err.client_error)
            return
        row.results[step.name] = StepResult(
            "ok", outputs[0], None, (time.perf_counter() - started) * 1000.0, version
        )

    @staticmethod
    def _build_input(step: CompiledStep, scope: dict[str, Any]) -> Any:
        if step.input_fields is not None:
            return {key: expression.evaluate(scope) for key, expression in step.input_fields.items()}
        assert step.input_whole is not None
        value = step.input_whole.evaluate(scope)
        if not isinstance(value, dict):
            raise EvaluationError(
                f"input {str(step.input_whole)!r} gave a {type(value).__name__}, not an object"
            )
        return value

    @staticmethod
    def _fail(
        row: RowState, step: CompiledStep, message: str, elapsed_ms: float, client_error: bool = False
    ) -> None:
        if step.on_error == "skip":
            row.results[step.name] = StepResult(
                "skipped", reason=f"failed (on_error: skip): {message}", duration_ms=elapsed_ms
            )
        elif step.on_error == "default":
            row.results[step.name] = StepResult(
                "defaulted", step.default, f"failed, default used: {message}", elapsed_ms
            )
        else:
            row.results[step.name] = StepResult("failed", reason=message, duration_ms=elapsed_ms)
            if row.error is None:
                row.error = f"step {step.name!r} failed: {message}"
                row.client_error = client_error

    @staticmethod
    def _finish(pipeline: CompiledPipeline, row: RowState, elapsed_ms: float) -> RowOutcome:
        for name in pipeline.order:
            if name not in row.results:
                reason = "not run: the run failed" if row.error else "not run"
                row.results[name] = StepResult("skipped", reason=reason)
        steps = {name: row.results[name] for name in pipeline.order}
        if row.error is not None:
            return RowOutcome("failed", None, row.error, steps, elapsed_ms, row.client_error)
        scope = row.scope(skipped_as_null=True)
        try:
            if pipeline.output is None:
                output: Any = {n: r.output for n, r in steps.items() if r.status in ("ok", "defaulted")}
            else:
                output = {key: expression.evaluate(scope) for key, expression in pipeline.output.items()}
        except EvaluationError as err:
            return RowOutcome("failed", None, f"cannot compute the output: {err}", steps, elapsed_ms, True)
        return RowOutcome("succeeded", output, None, steps, elapsed_ms)
