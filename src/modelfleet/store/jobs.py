"""Asynchronous jobs as the store keeps them, and the interface every job store implements.

A job applies one target (a model or a pipeline) to N inputs. Job workers store each input's
result as they go; the broker delivers at least once, so a chunk of results may be saved more
than once, and the store makes that harmless: the first result stored for a position wins, and
the counts move only by the positions a save actually adds.

A *batch job* applies the target to every row of a file on the fleet's machine instead: its rows'
results go to an output file (see ``modelfleet.batch``), and the store keeps only what it reads
and writes (:class:`BatchSpec`) and how far it is (rows done and failed, and the row count once
known).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
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
class BatchSpec:
    """What a batch job reads and writes: absolute paths on the fleet's machine, and how it is cut up.

    ``format`` is the input's format (csv, jsonl or parquet; the output's comes from its suffix),
    ``chunk_size`` the rows per request and ``concurrency`` the requests in flight. Part of the
    resumable state: a redelivered batch resumes from the parts only with the same values.
    """

    input_file: str
    output_file: str
    format: str
    chunk_size: int
    concurrency: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_file": self.input_file,
            "output_file": self.output_file,
            "format": self.format,
            "chunk_size": self.chunk_size,
            "concurrency": self.concurrency,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchSpec:
        """Raises ValueError when ``data`` is not what :meth:`to_dict` gives."""
        try:
            spec = cls(
                str(data["input_file"]),
                str(data["output_file"]),
                str(data["format"]),
                int(data["chunk_size"]),
                int(data["concurrency"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a batch description: {err!r}") from None
        if spec.chunk_size < 1 or spec.concurrency < 1:
            raise ValueError("not a batch description: chunk_size and concurrency must be at least 1")
        return spec


@dataclass(frozen=True, slots=True)
class Job:
    """One asynchronous job: what it runs, how far it is, and how it ended.

    ``total`` counts the inputs (at least one: a job of none could never finish); ``done`` counts
    the inputs with a stored result, ok or error, and ``failed`` those whose result is an error.
    For a batch job (``batch`` set) they count the file's rows instead, and ``total`` is None until
    the rows are counted (it may be 0: an empty file). ``error`` says why the job failed as a whole
    (None otherwise); a failed input's reason is in its JobResult. Timestamps must be
    timezone-aware and are normalised to UTC. Raises ValueError for an unknown status or target
    kind, impossible counts or a naive timestamp.
    """

    id: str
    target_kind: TargetKind
    target: str
    status: JobStatus
    total: int | None
    done: int
    failed: int
    callback_url: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    batch: BatchSpec | None = None

    def __post_init__(self) -> None:
        if self.status not in _STATUSES:
            raise ValueError(f"job {self.id!r}: unknown status {self.status!r}")
        if self.target_kind not in _TARGET_KINDS:
            raise ValueError(
                f"job {self.id!r}: target_kind must be 'model' or 'pipeline', not {self.target_kind!r}"
            )
        if self.batch is None and (self.total is None or self.total < 1):
            raise ValueError(f"job {self.id!r}: a job needs at least one input, total is {self.total}")
        if not 0 <= self.failed <= self.done <= (self.done if self.total is None else self.total):
            raise ValueError(
                f"job {self.id!r}: need 0 <= failed <= done <= total, "
                f"got failed={self.failed}, done={self.done}, total={self.total}"
            )
        object.__setattr__(self, "created_at", _utc(self.id, "created_at", self.created_at))
        object.__setattr__(self, "updated_at", _utc(self.id, "updated_at", self.updated_at))
        if self.finished_at is not None:
            object.__setattr__(self, "finished_at", _utc(self.id, "finished_at", self.finished_at))

    @property
    def progress(self) -> float | None:
        """The share of inputs (rows) with a result, 0.0 to 1.0; None while a batch's rows are uncounted."""
        if self.total is None:
            return None
        return self.done / self.total if self.total else 1.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with ``progress`` added; times become ISO-8601 strings with their UTC offset.

        A batch job adds ``batch`` (its :class:`BatchSpec`) and, once it completed or failed,
        ``summary``: the rows, the failed rows and the output file.
        """
        data: dict[str, Any] = {
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
        if self.batch is not None:
            data["batch"] = self.batch.to_dict()
            if self.status in ("completed", "failed"):
                data["summary"] = {
                    "rows": self.total,
                    "failed_rows": self.failed,
                    "output_file": self.batch.output_file,
                }
        return data


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

    async def create_jobs(self, jobs: Sequence[Job]) -> None:
        """Store new jobs in one transaction (all or none), each idempotent on id like ``create_job``."""
        ...

    async def find_job(self, job_id: str) -> Job | None:
        """The job with this id, or None."""
        ...

    async def find_jobs(self, job_ids: Collection[str]) -> dict[str, Job]:
        """The jobs with these ids that exist, by id (one read, however many ids)."""
        ...

    async def statuses(self, job_ids: Collection[str]) -> dict[str, JobStatus]:
        """The status of each job with one of these ids that exists: what a job worker checks before
        it runs a message (skip canceled jobs), read without building whole jobs."""
        ...

    async def get_job(self, job_id: str) -> Job:
        """The job with this id; raises JobNotFound."""
        ...

    async def start_job(self, job_id: str) -> Job:
        """Mark a pending job in_progress (any other status is left as it is); returns the job.

        Raises JobNotFound.
        """
        ...

    async def start_jobs(self, job_ids: Collection[str]) -> None:
        """``start_job`` for many jobs in one transaction; unknown ids are ignored."""
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
        position is not in 0..total-1 (a batch job has no positions: its results go to its file).
        """
        ...

    async def save_results_of_jobs(self, results: Mapping[str, Sequence[JobResult]]) -> dict[str, Job]:
        """``save_results`` for several jobs in one transaction (all or nothing); the updated jobs by id.

        Raises JobNotFound when any job is missing and ValueError for any bad position, storing nothing.
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

    async def batch_progress(self, job_id: str, done: int, failed: int, total: int | None = None) -> Job:
        """A running batch job has ``done`` rows with a result, ``failed`` of them errors, of ``total``.

        A pending job becomes in_progress. Progress never goes back: a call with fewer rows done
        than stored (a redelivered batch counting its resumed parts again) changes nothing but a
        newly known ``total``. A terminal job is left as it is. Returns the job as it is now.
        Raises JobNotFound, and ValueError for impossible counts or a job that is not a batch.
        """
        ...

    async def finish_batch(self, job_id: str, rows: int, failed: int) -> Job:
        """A batch job wrote its output: ``rows`` rows, ``failed`` of them errors.

        An unfinished job becomes ``completed`` (no row failed) or ``failed`` with every count
        set; a terminal (canceled) one is left as it is. Returns the job as it is now. Raises
        JobNotFound, and ValueError for impossible counts or a job that is not a batch.
        """
        ...
