"""What the results store keeps about a pipeline run: plain values, JSON-ready."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast, get_args

StepStatus = Literal["ok", "skipped", "failed", "defaulted"]
RunStatus = Literal["succeeded", "failed"]

_STEP_STATUSES: frozenset[str] = frozenset(get_args(StepStatus))
_RUN_STATUSES: frozenset[str] = frozenset(get_args(RunStatus))


@dataclass(frozen=True, slots=True)
class StepRecord:
    """What one step of a pipeline did for one input.

    ``output`` is any JSON value (None when the step produced nothing); ``reason`` says why a step
    was skipped, failed or defaulted; ``version`` is the model version that answered, if known.
    """

    name: str
    model: str
    version: str | None
    status: StepStatus
    output: Any
    reason: str | None
    duration_ms: float

    def __post_init__(self) -> None:
        if self.status not in _STEP_STATUSES:
            raise ValueError(f"step {self.name!r}: unknown status {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "version": self.version,
            "status": self.status,
            "output": self.output,
            "reason": self.reason,
            "duration_ms": self.duration_ms,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepRecord:
        """Rebuild a step from :meth:`to_dict` output; raises KeyError or ValueError when malformed."""
        return cls(
            name=data["name"],
            model=data["model"],
            version=data.get("version"),
            status=cast(StepStatus, data["status"]),
            output=data.get("output"),
            reason=data.get("reason"),
            duration_ms=float(data["duration_ms"]),
        )


@dataclass(frozen=True, slots=True)
class PipelineRun:
    """One input's trip through a pipeline, as stored and listed.

    ``created_at`` must be timezone-aware; it is normalised to UTC so that runs compare and sort
    the same way whichever zone the caller used. ``model_versions`` maps model name to the version
    that served it. Raises ValueError for a naive timestamp or an unknown status.
    """

    id: str
    pipeline: str
    input: Any
    output: Any
    steps: list[StepRecord]
    status: RunStatus
    error: str | None
    created_at: datetime
    duration_ms: float
    model_versions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in _RUN_STATUSES:
            raise ValueError(f"run {self.id!r}: unknown status {self.status!r}")
        if self.created_at.tzinfo is None or self.created_at.utcoffset() is None:
            raise ValueError(f"run {self.id!r}: created_at must be timezone-aware")
        if self.created_at.tzinfo is not UTC:
            object.__setattr__(self, "created_at", self.created_at.astimezone(UTC))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``created_at`` becomes an ISO-8601 string with its UTC offset."""
        return {
            "id": self.id,
            "pipeline": self.pipeline,
            "input": self.input,
            "output": self.output,
            "steps": [step.to_dict() for step in self.steps],
            "status": self.status,
            "error": self.error,
            "created_at": self.created_at.isoformat(),
            "duration_ms": self.duration_ms,
            "model_versions": dict(self.model_versions),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineRun:
        """Rebuild a run from :meth:`to_dict` output; raises KeyError or ValueError when malformed."""
        return cls(
            id=data["id"],
            pipeline=data["pipeline"],
            input=data.get("input"),
            output=data.get("output"),
            steps=[StepRecord.from_dict(step) for step in data.get("steps", [])],
            status=cast(RunStatus, data["status"]),
            error=data.get("error"),
            created_at=datetime.fromisoformat(data["created_at"]),
            duration_ms=float(data["duration_ms"]),
            model_versions=dict(data.get("model_versions") or {}),
        )


@dataclass(frozen=True, slots=True)
class RunPage:
    """One page of runs, newest first; pass ``next_cursor`` back to get the next page (None: no more)."""

    items: list[PipelineRun]
    next_cursor: str | None
