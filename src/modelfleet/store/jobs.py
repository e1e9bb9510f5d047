"""Asynchronous jobs as the store keeps them, and the interface every job store implements.

A job applies one target (a model or a pipeline) to N inputs. Job workers store each input's
result as they go; the broker delivers at least once, so a chunk of results may be saved more
than once, and the store makes that harmless: the first result stored for a position wins, and
the counts are recounted from the stored results, never incremented.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, get_args

JobStatus = Literal["pending", "in_progress", "completed", "failed", "canceled"]
TargetKind = Literal["model", "pipeline"]

TERMINAL: frozenset[str] = frozenset({"completed", "failed", "canceled"})
"""The statuses a job never leaves: results may still be stored, the status stays."""

MAX_RESULTS_LIMIT = 1000
"""The most results one ``results`` call returns, so one call cannot pull a whole large job."""

_STATUSES: frozenset[str] = frozenset(get_args(JobStatus))
_TARGET_KINDS: frozenset[str] = frozenset(get_args(TargetKind))


def _utc(job_id: str, label: str, value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"job {job_id!r}: {label} must be timezone-aware")
    return value if value.tzinfo is UTC else value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Job:
    """One asynchronous job: what it runs, how far it is, and how it ended.

    ``total`` counts the inputs (at least one: a job of none could never finish); ``done`` counts
    the inputs with a stored result, ok or error, and ``failed`` those whose result is an error.
    ``error`` says why the job failed as a whole (None otherwise); a failed input's reason is in
    its JobResult. Timestamps must be timezone-aware and are normalised to UTC. Raises ValueError
    for an unknown status or target kind, impossible counts or a naive timestamp.
    """

    id: str
    target_kind: TargetKind
    target: str
    status: JobStatus
    total: int
    done: int
    failed: int
    callback_url: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    def __post_init__(self) -> None:
        if self.status not in _STATUSES:
            raise ValueError(f"job {self.id!r}: unknown status {self.status!r}")
        if self.target_kind not in _TARGET_KINDS:
            raise ValueError(
                f"job {self.id!r}: target_kind must be 'model' or 'pipeline', not {self.target_kind!r}"
            )
        if self.total < 1:
            raise ValueError(f"job {self.id!r}: a job needs at least one input, total is {self.total}")
        if not 0 <= self.failed <= self.done <= self.total:
            raise ValueError(
                f"job {self.id!r}: need 0 <= failed <= done <= total, "
                f"got failed={self.failed}, done={self.done}, total={self.total}"
            )
        object.__setattr__(self, "created_at", _utc(self.id, "created_at", self.created_at))
        object.__setattr__(self, "updated_at", _utc(self.id, "updated_at", self.updated_at))
        if self.finished_at is not None:
            object.__setattr__(self, "finished_at", _utc(self.id, "finished_at", self.finished_at))

    @property
    def progress(self) -> float:
        """The share of inputs with a stored result, 0.0 to 1.0."""
        return self.done / self.total

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with ``progress`` added; times become ISO-8601 strings with their UTC offset."""
        return {
            "id": self.id,
            "target_kind": self.target_kind,
            "target": self.target,
            "status": self.status,
            "total": self.total,
            "done": self.done,
            "failed": self.failed,
            "progress": self.progress,
            "callback_url": self.callback_url,
            "error": self.error,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at is not None else None,
        }


@dataclass(frozen=True, slots=True)
class JobResult:
    """The result for one input of a job: its ``output`` (any JSON value), or the ``error`` it met.

    ``position`` is the input's 0-based index in the job. A result counts as failed when
    ``error`` is not None; ``output`` is then normally None.
    """

    position: int
    output: Any | None
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"position": self.position, "output": self.output, "error": self.error}


class JobStore(Protocol):
    """Durable storage for asynchronous jobs and their per-input results.

    Written by the jobs API (create, cancel, fail) and the job workers (start, save results),
    possibly from several processes at once. Every method but ``open`` raises StoreError when
    the store is not open or the database fails, and JobRejected when the database refuses
    content (a NUL in an identifier, an output that is not JSON).
    """

    async def open(self) -> None:
        """Connect and bring the schema up to date; safe when several processes open at once."""
        ...

    async def close(self) -> None:
        """Release connections; idempotent. Calls after close raise StoreError until ``open`` again."""
        ...

    async def create_job(self, job: Job) -> None:
        """Store a new job; idempotent on id: when a job with this id exists, the stored one is kept."""
        ...

    async def find_job(self, job_id: str) -> Job | None:
        """The job with this id, or None."""
        ...

    async def get_job(self, job_id: str) -> Job:
        """The job with this id; raises JobNotFound."""
        ...

    async def start_job(self, job_id: str) -> Job:
        """Mark a pending job in_progress (any other status is left as it is); returns the job.

        Raises JobNotFound.
        """
        ...

    async def save_results(self, job_id: str, results: Sequence[JobResult]) -> Job:
        """Store ``results`` and bring the job's counts and status up to date, in one transaction.

        Idempotent, because chunks are delivered at least once: the first result stored for a
        position wins (later ones, in this call or another, are dropped), and ``done`` and
        ``failed`` are recounted from the stored results. A job that is not terminal becomes
        ``completed`` when every input has a result and none failed, ``failed`` when every input
        has a result and some failed (``finished_at`` is set then), else ``in_progress``. A
        terminal job keeps its status and ``finished_at``, but the results are stored.

        Returns the updated job. Raises JobNotFound, and ValueError (storing nothing) when a
        position is not in 0..total-1.
        """
        ...

    async def results(self, job_id: str, offset: int = 0, limit: int = 100) -> list[JobResult]:
        """Up to ``limit`` stored results by position, skipping the first ``offset`` stored ones.

        Inputs without a result yet are not in the list, so ``offset`` counts stored results,
        not positions. Raises JobNotFound, and ValueError when ``offset`` is negative or ``limit``
        is not 1..MAX_RESULTS_LIMIT.
        """
        ...

    async def cancel_job(self, job_id: str) -> Job:
        """Cancel a pending or in_progress job (``finished_at`` set); a terminal job is left as it is.

        Returns the job as it is now. Raises JobNotFound.
        """
        ...

    async def fail_job(self, job_id: str, error: str) -> Job:
        """Fail a pending or in_progress job as a whole, saying why in ``error`` (``finished_at`` set).

        A terminal job is left as it is. Returns the job as it is now. Raises JobNotFound.
        """
        ...
