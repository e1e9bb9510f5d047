"""How rows travel to a worker that runs a packed unit of steps, and how its results come back."""

from __future__ import annotations

from typing import Any

from modelfleet.pipeline.executor import RowState, StepResult
from modelfleet.pipeline.placement import Unit
from modelfleet.pipeline.spec import CompiledPipeline


def unit_request(pipeline: CompiledPipeline, unit: Unit, rows: list[RowState]) -> dict[str, Any]:
    """The body of a unit call: the steps to run and, per row, the input and the results they read."""
    needed = {dep for name in unit.steps for dep in pipeline.steps[name].depends_on} - set(unit.steps)
    return {
        "steps": list(unit.steps),
        "rows": [
            {
                "input": row.input,
                "results": {name: row.results[name].to_dict() for name in needed if name in row.results},
            }
            for row in rows
        ],
    }


def rows_from_request(body: dict[str, Any]) -> list[RowState]:
    return [
        RowState(row["input"], {name: StepResult.from_dict(r) for name, r in row.get("results", {}).items()})
        for row in body["rows"]
    ]


def unit_response(steps: list[str], rows: list[RowState]) -> dict[str, Any]:
    return {
        "rows": [
            {
                "results": {name: row.results[name].to_dict() for name in steps if name in row.results},
                "error": row.error,
                "client_error": row.client_error,
            }
            for row in rows
        ]
    }


def apply_unit_response(rows: list[RowState], body: dict[str, Any]) -> None:
    """Merge a worker's unit results into the gateway's rows (same order as sent)."""
    answered = body["rows"]
    if len(answered) != len(rows):
        raise ValueError(f"unit answered {len(answered)} rows for {len(rows)} sent")
    for row, result in zip(rows, answered, strict=True):
        for name, data in result["results"].items():
            row.results[name] = StepResult.from_dict(data)
        if result.get("error") and row.error is None:
            row.error = result["error"]
            row.client_error = bool(result.get("client_error"))
