"""Compiling the ``pipelines:`` section of fleet.yaml into validated step graphs.

Everything that can be checked before a request arrives is checked here, and a problem is a
ValueError naming the pipeline and step (the settings loader turns it into a ConfigError).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from modelfleet.pipeline.expression import Expression, ExpressionError, parse

if TYPE_CHECKING:
    from modelfleet.settings import PipelineSettings, Settings

RESERVED = "input"


@dataclass(frozen=True)
class CompiledStep:
    """A step ready to run: parsed expressions and the steps it depends on."""

    name: str
    model: str
    version: str | None
    service: str
    input_fields: dict[str, Expression] | None
    input_whole: Expression | None
    when: Expression | None
    on_error: Literal["fail", "skip", "default"]
    default: Any
    reads: frozenset[str]
    after: frozenset[str]

    @property
    def depends_on(self) -> frozenset[str]:
        return self.reads | self.after


@dataclass(frozen=True)
class CompiledPipeline:
    """A validated pipeline: steps in a topological order, and the output mapping."""

    name: str
    description: str
    steps: dict[str, CompiledStep]
    order: tuple[str, ...]
    output: dict[str, Expression] | None
    placement: str = "packed"
    dependents: dict[str, frozenset[str]] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "steps": [
                {
                    "name": step.name,
                    "model": step.model,
                    "version": step.version,
                    "service": step.service,
                    "when": str(step.when) if step.when else None,
                    "depends_on": sorted(step.depends_on),
                    "on_error": step.on_error,
                }
                for step in (self.steps[n] for n in self.order)
            ],
            "edges": [[dep, name] for name in self.order for dep in sorted(self.steps[name].depends_on)],
            "output": {k: str(v) for k, v in self.output.items()} if self.output else None,
            "placement": self.placement,
        }


def _parse(where: str, source: str) -> Expression:
    try:
        return parse(source)
    except ExpressionError as err:
        raise ValueError(f"{where}: bad expression {source!r}: {err}") from None


def _check_names(where: str, expression: Expression, steps: set[str], step: str | None) -> None:
    for name in expression.names:
        if name == RESERVED:
            continue
        if name == step:
            raise ValueError(f"{where}: step {step!r} cannot read its own output")
        if name not in steps:
            known = ", ".join(sorted(steps)) or "none"
            raise ValueError(
                f"{where}: unknown step {name!r} in {str(expression)!r} (steps: {known}; or 'input')"
            )


def compile_pipeline(name: str, spec: PipelineSettings, settings: Settings) -> CompiledPipeline:
    """Validate one pipeline against the fleet's models; raises ValueError naming pipeline and step."""
    where_pipeline = f"pipelines.{name}"
    names = set(spec.steps)
    if RESERVED in names:
        raise ValueError(f"{where_pipeline}.steps: a step cannot be called {RESERVED!r}")
    steps: dict[str, CompiledStep] = {}
    for step_name, step in spec.steps.items():
        where = f"{where_pipeline}.steps.{step_name}"
        model, _, pinned = step.model.partition("@")
        version = step.version or pinned or None
        if model not in settings.models:
            known = ", ".join(sorted(settings.models))
            raise ValueError(f"{where}.model: unknown model {model!r} (known: {known})")
        try:
            service = settings.service_of(model)
        except KeyError:
            raise ValueError(f"{where}.model: model {model!r} is not hosted by any service") from None
        reads: set[str] = set()
        input_fields: dict[str, Expression] | None = None
        input_whole: Expression | None = None
        if isinstance(step.input, dict):
            input_fields = {}
            for field_name, source in step.input.items():
                expression = _parse(f"{where}.input.{field_name}", source)
                _check_names(f"{where}.input.{field_name}", expression, names, step_name)
                input_fields[field_name] = expression
                reads |= expression.names
        else:
            input_whole = _parse(f"{where}.input", step.input)
            _check_names(f"{where}.input", input_whole, names, step_name)
            reads |= input_whole.names
        when = None
        if step.when is not None:
            when = _parse(f"{where}.when", step.when)
            _check_names(f"{where}.when", when, names, step_name)
            reads |= when.names
        for index, other in enumerate(step.after):
            if other not in names or other == step_name:
                raise ValueError(f"{where}.after[{index}]: unknown step {other!r}")
        if isinstance(step.on_error, dict):
            on_error: Literal["fail", "skip", "default"] = "default"
            default = step.on_error["default"]
        else:
            on_error, default = step.on_error, None
        steps[step_name] = CompiledStep(
            name=step_name,
            model=model,
            version=version,
            service=service,
            input_fields=input_fields,
            input_whole=input_whole,
            when=when,
            on_error=on_error,
            default=default,
            reads=frozenset(reads - {RESERVED}),
            after=frozenset(step.after),
        )
    order = _topological_order(where_pipeline, steps)
    output = None
    if spec.output is not None:
        output = {}
        for key, source in spec.output.items():
            expression = _parse(f"{where_pipeline}.output.{key}", source)
            _check_names(f"{where_pipeline}.output.{key}", expression, names, None)
            output[key] = expression
    dependents = {n: frozenset(m for m, s in steps.items() if n in s.depends_on) for n in steps}
    return CompiledPipeline(name, spec.description, steps, order, output, spec.placement, dependents)


def _topological_order(where: str, steps: dict[str, CompiledStep]) -> tuple[str, ...]:
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = " -> ".join([*path[path.index(name) :], name])
            raise ValueError(f"{where}.steps.{name}: dependency cycle {cycle}")
        state[name] = 1
        for dep in sorted(steps[name].depends_on):
            visit(dep, [*path, name])
        state[name] = 2
        order.append(name)

    for name in steps:
        visit(name, [])
    return tuple(order)


def compile_pipelines(settings: Settings) -> dict[str, CompiledPipeline]:
    """Compile every pipeline of the fleet; raises ValueError on the first problem found."""
    return {name: compile_pipeline(name, spec, settings) for name, spec in settings.pipelines.items()}


def single_model_pipeline(model: str, settings: Settings) -> CompiledPipeline:
    """A one-step pipeline calling ``model`` with the whole input, so a plain model target runs
    through the same executor (batching, per-input errors) as any pipeline."""
    step = CompiledStep(
        name=model,
        model=model,
        version=None,
        service=settings.service_of(model),
        input_fields=None,
        input_whole=parse(RESERVED),
        when=None,
        on_error="fail",
        default=None,
        reads=frozenset(),
        after=frozenset(),
    )
    return CompiledPipeline(
        name=f"model:{model}",
        description=f"the model {model} alone",
        steps={model: step},
        order=(model,),
        output={"output": parse(model)},
    )
