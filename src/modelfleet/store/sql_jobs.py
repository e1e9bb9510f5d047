"""The job store on SQLite or PostgreSQL: one SQLAlchemy Core implementation for both."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Insert, Row, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from modelfleet.store.engine import Backend, write_transaction
from modelfleet.store.errors import JobNotFound, JobRejected
from modelfleet.store.jobs import MAX_RESULTS_LIMIT, TERMINAL, Job, JobResult, JobStatus, TargetKind
from modelfleet.store.lifecycle import StoreEngine
from modelfleet.store.schema import job_results, jobs
from modelfleet.store.translation import printable, translated

_ACTIVE = ("pending", "in_progress")


class SqlJobStore:
    """Asynchronous jobs and their results in SQLite (``sqlite:///path``) or PostgreSQL (``postgresql://...``).

    Shares the database, schema migrations and locking with :class:`~modelfleet.store.sql.SqlRunStore`
    but has its own engine. Saves of results to one job are serialised by a lock on the job's
    row (SQLite's write lock on SQLite), so each save sees which positions earlier saves stored.
    ``busy_timeout_ms`` is how long a SQLite writer waits for another's lock. Raises ConfigError
    for a URL it cannot use.
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = 10_000) -> None:
        self._engine = StoreEngine(url, busy_timeout_ms, "job store", JobRejected)
        self._insert_job: Insert
        self._insert_results: Insert
        if self._engine.backend == "sqlite":
            self._insert_job = sqlite.insert(jobs).on_conflict_do_nothing(index_elements=[jobs.c.id])
            self._insert_results = sqlite.insert(job_results).on_conflict_do_nothing(
                index_elements=[job_results.c.job_id, job_results.c.position]
            )
        else:
            self._insert_job = postgresql.insert(jobs).on_conflict_do_nothing(index_elements=[jobs.c.id])
            self._insert_results = postgresql.insert(job_results).on_conflict_do_nothing(
                index_elements=[job_results.c.job_id, job_results.c.position]
            )

    @property
    def backend(self) -> Backend:
        return self._engine.backend

    async def open(self) -> None:
        await self._engine.open()

    async def close(self) -> None:
        await self._engine.close()

    async def create_job(self, job: Job) -> None:
        engine = self._open_engine()
        row = _job_row(job)
        with translated(f"creating job {job.id!r}", JobRejected):
            async with write_transaction(engine) as connection:
                await connection.execute(self._insert_job, row)

    async def find_job(self, job_id: str) -> Job | None:
        engine = self._open_engine()
        if not _storable(job_id):
            return None
        with translated("reading a job", JobRejected):
            async with engine.connect() as connection:
                row = await _job_of(connection, job_id)
        return _job_from(row) if row is not None else None

    async def get_job(self, job_id: str) -> Job:
        job = await self.find_job(job_id)
        if job is None:
            raise _not_found(job_id)
        return job

    async def start_job(self, job_id: str) -> Job:
        return await self._move(job_id, "starting", ("pending",), {"status": "in_progress"})

    async def save_results(self, job_id: str, results: Sequence[JobResult]) -> Job:
        unique: dict[int, JobResult] = {}
        for result in results:
            if isinstance(result.position, bool) or not isinstance(result.position, int):
                raise ValueError(f"job {job_id!r}: a result position must be an int, not {result.position!r}")
            unique.setdefault(result.position, result)
        engine = self._open_engine()
        if not _storable(job_id):
            raise _not_found(job_id)
        with translated(f"saving {len(unique)} result(s) of job {job_id!r}", JobRejected):
            async with write_transaction(engine) as connection:
                # The row lock makes concurrent saves to this job take turns (SQLite ignores FOR
                # UPDATE, but there BEGIN IMMEDIATE already did), so the recount below sees them all.
                row = await _job_of(connection, job_id, lock=True)
                if row is None:
                    raise _not_found(job_id)
                outside = sorted(p for p in unique if not 0 <= p < row.total)
                if outside:
                    raise ValueError(
                        f"job {job_id!r} has {row.total} input(s), so positions must be 0..{row.total - 1}; "
                        f"got {', '.join(map(str, outside[:10]))}{' ...' if len(outside) > 10 else ''}"
                    )
                fresh: list[JobResult] = []
                if unique:
                    # Under the job's lock no other save can add results for it, so the positions
                    # not stored yet are exactly the ones this insert adds: the counts move by
                    # those alone, at the cost of this chunk rather than of the whole job.
                    stored = select(job_results.c.position).where(
                        job_results.c.job_id == job_id, job_results.c.position.in_(list(unique))
                    )
                    taken = set((await connection.execute(stored)).scalars())
                    fresh = [result for position, result in unique.items() if position not in taken]
                if fresh:
                    await connection.execute(self._insert_results, [_result_row(job_id, r) for r in fresh])
                done = row.done + len(fresh)
                failed = row.failed + sum(1 for result in fresh if result.error is not None)
                job = _job_from(row)
                status: JobStatus = job.status
                finished_at = job.finished_at
                now = datetime.now(UTC)
                if status not in TERMINAL:
                    if done == job.total:
                        status = "completed" if failed == 0 else "failed"
                        finished_at = now
                    else:
                        status = "in_progress"
                if (done, failed, status) == (job.done, job.failed, job.status):
                    # A redelivered chunk: nothing new, so not even updated_at moves.
                    return job
                values = {
                    "done": done,
                    "failed": failed,
                    "status": status,
                    "finished_at": finished_at,
                    "updated_at": now,
                }
                await connection.execute(update(jobs).where(jobs.c.id == job_id).values(**values))
        return _job_from(row, **values)

    async def results(self, job_id: str, offset: int = 0, limit: int = 100) -> list[JobResult]:
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a whole number >= 0, got {offset!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_RESULTS_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_RESULTS_LIMIT}, got {limit!r}")
        engine = self._open_engine()
        if not _storable(job_id):
            raise _not_found(job_id)
        query = (
            select(job_results.c.position, job_results.c.output, job_results.c.error)
            .where(job_results.c.job_id == job_id)
            .order_by(job_results.c.position)
            .offset(offset)
            .limit(limit)
        )
        with translated("reading job results", JobRejected):
            async with engine.connect() as connection:
                if await _job_of(connection, job_id) is None:
                    raise _not_found(job_id)
                rows = (await connection.execute(query)).all()
        return [JobResult(row.position, row.output, row.error) for row in rows]

    async def cancel_job(self, job_id: str) -> Job:
        now = datetime.now(UTC)
        return await self._move(job_id, "canceling", _ACTIVE, {"status": "canceled", "finished_at": now})

    async def fail_job(self, job_id: str, error: str) -> Job:
        now = datetime.now(UTC)
        values = {"status": "failed", "error": printable(error), "finished_at": now}
        return await self._move(job_id, "failing", _ACTIVE, values)

    async def _move(self, job_id: str, action: str, sources: Collection[str], values: dict[str, Any]) -> Job:
        """Set ``values`` on the job when its status is one of ``sources``; the job as it is after."""
        engine = self._open_engine()
        if not _storable(job_id):
            raise _not_found(job_id)
        change = (
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status.in_(sources))
            .values(**values, updated_at=datetime.now(UTC))
        )
        with translated(f"{action} job {job_id!r}", JobRejected):
            async with write_transaction(engine) as connection:
                await connection.execute(change)
                row = await _job_of(connection, job_id)
        if row is None:
            raise _not_found(job_id)
        return _job_from(row)

    def _open_engine(self) -> AsyncEngine:
        return self._engine.get()


def _storable(text: str) -> bool:
    # PostgreSQL text cannot hold NUL, so no stored id contains one: such an id is simply unknown.
    return "\x00" not in text


def _not_found(job_id: str) -> JobNotFound:
    return JobNotFound(f"no job with id {job_id!r}")


async def _job_of(connection: AsyncConnection, job_id: str, *, lock: bool = False) -> Row[Any] | None:
    query = select(jobs).where(jobs.c.id == job_id)
    if lock:
        query = query.with_for_update()
    return (await connection.execute(query)).one_or_none()


def _job_row(job: Job) -> dict[str, Any]:
    for label, value in (("id", job.id), ("target", job.target), ("callback_url", job.callback_url)):
        # Refused on SQLite too, which could store it, so the backends stay alike.
        if value is not None and not _storable(value):
            raise JobRejected(f"job {job.id!r}: {label} contains a NUL character")
    return {
        "id": job.id,
        "target_kind": job.target_kind,
        "target": job.target,
        "status": job.status,
        "total": job.total,
        "done": job.done,
        "failed": job.failed,
        "callback_url": job.callback_url,
        "error": printable(job.error),
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "finished_at": job.finished_at,
    }


def _result_row(job_id: str, result: JobResult) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "position": result.position,
        "output": result.output,
        "error": printable(result.error),
    }


def _job_from(row: Row[Any], **changes: Any) -> Job:
    values = {**row._asdict(), **changes}
    return Job(
        id=values["id"],
        target_kind=cast(TargetKind, values["target_kind"]),
        target=values["target"],
        status=cast(JobStatus, values["status"]),
        total=values["total"],
        done=values["done"],
        failed=values["failed"],
        callback_url=values["callback_url"],
        error=values["error"],
        created_at=values["created_at"],
        updated_at=values["updated_at"],
        finished_at=values["finished_at"],
    )
