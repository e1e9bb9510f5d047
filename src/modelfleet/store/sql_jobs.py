"""The job store on SQLite or PostgreSQL: one SQLAlchemy Core implementation for both.

Every operation is one function of a blocking SQLAlchemy ``Connection``, run as one transaction.
On SQLite it runs whole on the store's own thread through the blocking pysqlite driver: one
hand-off per transaction, where the async driver pays an event-loop round trip for every
statement, BEGIN and COMMIT (the same reason as in ``store/sql.py``). On PostgreSQL the same
function runs through asyncpg with ``AsyncConnection.run_sync``. The hot paths take many jobs at
once (``create_jobs``, ``find_jobs``, ``save_results_of_jobs``), so a gateway or a job worker under
load pays for a few statements per batch of jobs, not per job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from sqlalchemy import BindParameter, Insert, Row, Update, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from modelfleet.store.engine import (
    Backend,
    create_sync_sqlite_engine,
    sync_write_transaction,
    write_transaction,
)
from modelfleet.store.errors import JobNotFound, JobRejected
from modelfleet.store.jobs import (
    MAX_RESULTS_LIMIT,
    TERMINAL,
    BatchSpec,
    Job,
    JobResult,
    JobStatus,
    TargetKind,
)
from modelfleet.store.lifecycle import StoreEngine
from modelfleet.store.schema import job_results, jobs
from modelfleet.store.translation import printable, translated

T = TypeVar("T")
_JobRow = Row[*tuple[Any, ...]]  # a row of the jobs table

_ACTIVE = ("pending", "in_progress")


class SqlJobStore:
    """Asynchronous jobs and their results in SQLite (``sqlite:///path``) or PostgreSQL (``postgresql://...``).

    Shares the database, schema migrations and locking with :class:`~modelfleet.store.sql.SqlRunStore`
    but has its own engine. Saves of results to a job are serialised by a lock on the job's row
    (SQLite's write lock on SQLite), so each save sees which positions earlier saves stored.
    ``busy_timeout_ms`` is how long a SQLite writer waits for another's lock. Raises ConfigError
    for a URL it cannot use.
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = 10_000) -> None:
        self._engine = StoreEngine(url, busy_timeout_ms, "job store", JobRejected)
        self._busy_timeout_ms = busy_timeout_ms
        self._sync_engine: Engine | None = None
        self._thread: ThreadPoolExecutor | None = None
        dialect: Any = sqlite if self._engine.backend == "sqlite" else postgresql
        self._insert_jobs: Insert = dialect.insert(jobs).on_conflict_do_nothing(index_elements=[jobs.c.id])
        self._insert_results: Insert = (
            dialect.insert(job_results)
            .on_conflict_do_nothing(index_elements=[job_results.c.job_id, job_results.c.position])
            .returning(job_results.c.job_id, job_results.c.position)
        )
        self._select_jobs = select(*jobs.c)
        # Built once: a statement object memoizes its cache key, so executing it again skips that work.
        ids: BindParameter[Any] = bindparam("ids", expanding=True)
        self._find_jobs = self._select_jobs.where(jobs.c.id.in_(ids))
        self._statuses = select(jobs.c.id, jobs.c.status).where(jobs.c.id.in_(ids))
        self._lock_jobs = self._select_jobs.where(jobs.c.id.in_(ids)).order_by(jobs.c.id).with_for_update()
        self._start_jobs = (
            update(jobs)
            .where(jobs.c.id.in_(ids), jobs.c.status == "pending")
            .values(status="in_progress", updated_at=bindparam("now"))
        )
        self._update_counts: Update = (
            update(jobs)
            .where(jobs.c.id.in_(ids))
            .values(
                done=bindparam("b_done"),
                failed=bindparam("b_failed"),
                status=bindparam("b_status"),
                finished_at=bindparam("b_finished_at"),
                updated_at=bindparam("b_updated_at"),
            )
        )

    @property
    def backend(self) -> Backend:
        return self._engine.backend

    async def open(self) -> None:
        await self._engine.open()
        if self._engine.backend == "sqlite" and self._sync_engine is None:
            self._sync_engine = create_sync_sqlite_engine(
                self._engine.url, busy_timeout_ms=self._busy_timeout_ms
            )
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="modelfleet-job-store")

    async def close(self) -> None:
        sync_engine, self._sync_engine = self._sync_engine, None
        thread, self._thread = self._thread, None
        if sync_engine is not None and thread is not None:
            # Disposed on its own thread: sqlite3 connections may only be closed where they were made.
            await asyncio.get_running_loop().run_in_executor(thread, sync_engine.dispose)
            thread.shutdown(wait=True)
        await self._engine.close()

    async def _run(self, action: str, body: Callable[[Connection], T], *, write: bool) -> T:
        """Run ``body`` in one transaction (a write transaction when ``write``); errors translated."""
        engine = self._engine.get()  # StoreError when not open
        sync_engine, thread = self._sync_engine, self._thread
        with translated(action, JobRejected):
            if sync_engine is not None and thread is not None:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(thread, _blocking, sync_engine, body, write)
            if write:
                async with write_transaction(engine) as connection:
                    return await connection.run_sync(body)
            async with engine.connect() as connection:
                return await connection.run_sync(body)

    # ------------------------------------------------------------------------------------ creating

    async def create_job(self, job: Job) -> None:
        await self.create_jobs([job])

    async def create_jobs(self, jobs_: Sequence[Job]) -> None:
        if not jobs_:
            return
        unique = {job.id: job for job in reversed(jobs_)}  # the first of a repeated id wins
        rows = [_job_row(job) for job in unique.values()]

        def body(connection: Connection) -> None:
            connection.execute(self._insert_jobs, rows)

        label = f"job {rows[0]['id']!r}" if len(rows) == 1 else f"{len(rows)} jobs"
        await self._run(f"creating {label}", body, write=True)

    # ------------------------------------------------------------------------------------ reading

    async def find_job(self, job_id: str) -> Job | None:
        return (await self.find_jobs([job_id])).get(job_id)

    async def find_jobs(self, job_ids: Collection[str]) -> dict[str, Job]:
        self._engine.get()
        wanted = [job_id for job_id in dict.fromkeys(job_ids) if _storable(job_id)]
        if not wanted:
            return {}

        def body(connection: Connection) -> dict[str, Job]:
            return {row.id: _job_from(row) for row in connection.execute(self._find_jobs, {"ids": wanted})}

        return await self._run("reading jobs", body, write=False)

    async def statuses(self, job_ids: Collection[str]) -> dict[str, JobStatus]:
        self._engine.get()
        wanted = [job_id for job_id in dict.fromkeys(job_ids) if _storable(job_id)]
        if not wanted:
            return {}

        def body(connection: Connection) -> dict[str, JobStatus]:
            return {row.id: row.status for row in connection.execute(self._statuses, {"ids": wanted})}

        return await self._run("reading job statuses", body, write=False)

    async def get_job(self, job_id: str) -> Job:
        job = await self.find_job(job_id)
        if job is None:
            raise _not_found(job_id)
        return job

    async def results(self, job_id: str, offset: int = 0, limit: int = 100) -> list[JobResult]:
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a whole number >= 0, got {offset!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_RESULTS_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_RESULTS_LIMIT}, got {limit!r}")
        self._engine.get()
        if not _storable(job_id):
            raise _not_found(job_id)
        exists = select(jobs.c.id).where(jobs.c.id == job_id)
        query = (
            select(job_results.c.position, job_results.c.output, job_results.c.error)
            .where(job_results.c.job_id == job_id)
            .order_by(job_results.c.position)
            .offset(offset)
            .limit(limit)
        )

        def body(connection: Connection) -> list[JobResult]:
            if connection.execute(exists).first() is None:
                raise _not_found(job_id)
            return [JobResult(row.position, row.output, row.error) for row in connection.execute(query)]

        return await self._run("reading job results", body, write=False)

    # ------------------------------------------------------------------------------------ results

    async def save_results(self, job_id: str, results: Sequence[JobResult]) -> Job:
        return (await self.save_results_of_jobs({job_id: results}))[job_id]

    async def save_results_of_jobs(self, results: Mapping[str, Sequence[JobResult]]) -> dict[str, Job]:
        by_job: dict[str, dict[int, JobResult]] = {}
        for job_id, saved in results.items():
            unique = by_job.setdefault(job_id, {})
            for result in saved:
                if isinstance(result.position, bool) or not isinstance(result.position, int):
                    raise ValueError(
                        f"job {job_id!r}: a result position must be an int, not {result.position!r}"
                    )
                unique.setdefault(result.position, result)
        self._engine.get()
        if not by_job:
            return {}
        for job_id in by_job:
            if not _storable(job_id):
                raise _not_found(job_id)

        def body(connection: Connection) -> dict[str, Job]:
            # The row locks make concurrent saves to a job take turns (SQLite ignores FOR UPDATE, but
            # there BEGIN IMMEDIATE already did), so the counts below start from every earlier save.
            # They are taken in id order, so two saves of overlapping jobs never wait for each other.
            rows = {row.id: row for row in connection.execute(self._lock_jobs, {"ids": list(by_job)})}
            for job_id, unique in by_job.items():
                row = rows.get(job_id)
                if row is None:
                    raise _not_found(job_id)
                _check_positions(row, unique)
            inserts = [_result_row(job_id, r) for job_id, unique in by_job.items() for r in unique.values()]
            fresh: set[tuple[str, int]] = set()
            if inserts:
                # Under the locks no other save adds results to these jobs, so the rows the insert
                # returns are exactly the positions new to the store: the counts move by those alone.
                returned = connection.execute(self._insert_results, inserts)
                fresh = {(job_id, position) for job_id, position in returned}
            now = datetime.now(UTC)
            saved: dict[str, Job] = {}
            # Jobs whose new values are the same (a burst of one-input jobs all just completed) are
            # updated by one statement: its values are bound once, not once per job.
            changes: dict[tuple[int, int, JobStatus, datetime | None], list[str]] = {}
            for job_id, unique in by_job.items():
                row = rows[job_id]
                new = [r for p, r in unique.items() if (job_id, p) in fresh]
                done = row.done + len(new)
                failed = row.failed + sum(1 for r in new if r.error is not None)
                status: JobStatus = row.status
                finished_at = row.finished_at
                if status not in TERMINAL:
                    if done == row.total:
                        status = "completed" if failed == 0 else "failed"
                        finished_at = now
                    else:
                        status = "in_progress"
                if (done, failed, status) == (row.done, row.failed, row.status):
                    # A redelivered chunk: nothing new, so not even updated_at moves.
                    saved[job_id] = _job_from(row)
                    continue
                changes.setdefault((done, failed, status, finished_at), []).append(job_id)
                saved[job_id] = _job_from(
                    row, done=done, failed=failed, status=status, finished_at=finished_at, updated_at=now
                )
            for (new_done, new_failed, new_status, new_finished_at), ids in changes.items():
                values: dict[str, Any] = {"b_done": new_done, "b_failed": new_failed, "b_status": new_status}
                values |= {"b_finished_at": new_finished_at, "b_updated_at": now, "ids": ids}
                connection.execute(self._update_counts, values)
            return saved

        count = sum(len(unique) for unique in by_job.values())
        label = f"job {next(iter(by_job))!r}" if len(by_job) == 1 else f"{len(by_job)} jobs"
        return await self._run(f"saving {count} result(s) of {label}", body, write=True)

    # ------------------------------------------------------------------------------------ status

    async def start_job(self, job_id: str) -> Job:
        return await self._move(job_id, "starting", ("pending",), {"status": "in_progress"})

    async def start_jobs(self, job_ids: Collection[str]) -> None:
        self._engine.get()
        wanted = [job_id for job_id in dict.fromkeys(job_ids) if _storable(job_id)]
        if not wanted:
            return
        parameters = {"ids": wanted, "now": datetime.now(UTC)}

        def body(connection: Connection) -> None:
            connection.execute(self._start_jobs, parameters)

        await self._run(f"starting {len(wanted)} job(s)", body, write=True)

    async def cancel_job(self, job_id: str) -> Job:
        now = datetime.now(UTC)
        return await self._move(job_id, "canceling", _ACTIVE, {"status": "canceled", "finished_at": now})

    async def fail_job(self, job_id: str, error: str) -> Job:
        now = datetime.now(UTC)
        values = {"status": "failed", "error": printable(error), "finished_at": now}
        return await self._move(job_id, "failing", _ACTIVE, values)

    async def _move(self, job_id: str, action: str, sources: Collection[str], values: dict[str, Any]) -> Job:
        """Set ``values`` on the job when its status is one of ``sources``; the job as it is after."""
        self._engine.get()
        if not _storable(job_id):
            raise _not_found(job_id)
        change = (
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status.in_(sources))
            .values(**values, updated_at=datetime.now(UTC))
        )
        query = self._select_jobs.where(jobs.c.id == job_id)

        def body(connection: Connection) -> Job:
            connection.execute(change)
            row = connection.execute(query).one_or_none()
            if row is None:
                raise _not_found(job_id)
            return _job_from(row)

        return await self._run(f"{action} job {job_id!r}", body, write=True)

    # ------------------------------------------------------------------------------------ batches

    async def batch_progress(self, job_id: str, done: int, failed: int, total: int | None = None) -> Job:
        if not 0 <= failed <= done or (total is not None and total < done):
            raise ValueError(
                f"job {job_id!r}: need 0 <= failed <= done <= total, got {failed}, {done}, {total}"
            )

        def change(job: Job) -> dict[str, Any]:
            values: dict[str, Any] = {}
            if total is not None and job.total != total:
                if job.done > total:
                    raise ValueError(
                        f"job {job_id!r}: {job.done} rows are done, so there are more than {total}"
                    )
                values["total"] = total
            if done > job.done:
                values.update(done=done, failed=failed)
            if job.status == "pending":
                values["status"] = "in_progress"
            return values

        return await self._change_batch(job_id, "updating the progress of", change)

    async def finish_batch(self, job_id: str, rows: int, failed: int) -> Job:
        if not 0 <= failed <= rows:
            raise ValueError(f"job {job_id!r}: need 0 <= failed <= rows, got failed={failed}, rows={rows}")

        def change(job: Job) -> dict[str, Any]:
            status = "completed" if failed == 0 else "failed"
            return {
                "total": rows,
                "done": rows,
                "failed": failed,
                "status": status,
                "finished_at": datetime.now(UTC),
            }

        return await self._change_batch(job_id, "finishing", change)

    async def _change_batch(self, job_id: str, action: str, change: Callable[[Job], dict[str, Any]]) -> Job:
        """Apply ``change(job)`` (the new column values) to an unfinished batch job, under its row lock."""
        self._engine.get()
        if not _storable(job_id):
            raise _not_found(job_id)
        lock = self._select_jobs.where(jobs.c.id == job_id).with_for_update()

        def body(connection: Connection) -> Job:
            row = connection.execute(lock).one_or_none()
            if row is None:
                raise _not_found(job_id)
            job = _job_from(row)
            if job.batch is None:
                raise ValueError(f"job {job_id!r} is not a batch job")
            if job.status in TERMINAL:
                return job
            values = change(job)
            if not values:
                return job
            values["updated_at"] = datetime.now(UTC)
            connection.execute(update(jobs).where(jobs.c.id == job_id).values(**values))
            return _job_from(row, **values)

        return await self._run(f"{action} batch job {job_id!r}", body, write=True)


def _blocking(engine: Engine, body: Callable[[Connection], T], write: bool) -> T:
    if write:
        with sync_write_transaction(engine) as connection:
            return body(connection)
    with engine.connect() as connection:
        return body(connection)


def _check_positions(row: _JobRow, unique: Mapping[int, JobResult]) -> None:
    if row.batch is not None:
        raise ValueError(f"job {row.id!r} is a batch job: its rows' results go to its output file")
    total = row.total
    if not unique or (min(unique) >= 0 and max(unique) < total):
        return
    outside = sorted(p for p in unique if not 0 <= p < total)
    if outside:
        raise ValueError(
            f"job {row.id!r} has {row.total} input(s), so positions must be 0..{row.total - 1}; "
            f"got {', '.join(map(str, outside[:10]))}{' ...' if len(outside) > 10 else ''}"
        )


def _storable(text: str) -> bool:
    # PostgreSQL text cannot hold NUL, so no stored id contains one: such an id is simply unknown.
    return "\x00" not in text


def _not_found(job_id: str) -> JobNotFound:
    return JobNotFound(f"no job with id {job_id!r}")


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
        "batch": None if job.batch is None else job.batch.to_dict(),
    }


def _result_row(job_id: str, result: JobResult) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "position": result.position,
        "output": result.output,
        "error": printable(result.error),
    }


# Where each field sits in a row of ``_select_jobs`` (the jobs table's columns): reading a row by
# position is much cheaper than by name, on the hot paths.
_FIELD_AT = {column.name: at for at, column in enumerate(jobs.c)}
(
    _ID,
    _KIND,
    _TARGET,
    _STATUS,
    _TOTAL,
    _DONE,
    _FAILED,
    _CALLBACK,
    _ERROR,
    _CREATED,
    _UPDATED,
    _FINISHED,
    _BATCH,
) = (
    _FIELD_AT[name]
    for name in (
        "id",
        "target_kind",
        "target",
        "status",
        "total",
        "done",
        "failed",
        "callback_url",
        "error",
        "created_at",
        "updated_at",
        "finished_at",
        "batch",
    )
)


def _job_from(row: _JobRow, **changes: Any) -> Job:
    """The job in a row of ``_select_jobs``, with ``changes`` (column values, as stored) applied."""
    values: Sequence[Any] = row
    if changes:
        edited = list(row)
        for name, value in changes.items():
            edited[_FIELD_AT[name]] = value
        values = edited
    batch = values[_BATCH]
    return Job(
        values[_ID],
        cast(TargetKind, values[_KIND]),
        values[_TARGET],
        cast(JobStatus, values[_STATUS]),
        values[_TOTAL],
        values[_DONE],
        values[_FAILED],
        values[_CALLBACK],
        values[_ERROR],
        values[_CREATED],
        values[_UPDATED],
        values[_FINISHED],
        None if batch is None else BatchSpec.from_dict(batch),
    )
