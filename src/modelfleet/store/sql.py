"""The results store on SQLite or PostgreSQL: one SQLAlchemy Core implementation for both."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Row, literal, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from modelfleet.store.engine import Backend, write_transaction
from modelfleet.store.errors import RunNotFound, RunRejected
from modelfleet.store.lifecycle import StoreEngine
from modelfleet.store.records import PipelineRun, RunPage, RunStatus, StepRecord, StepStatus
from modelfleet.store.schema import RunId, UtcDateTime, dumps, run_steps
from modelfleet.store.schema import runs as runs_table
from modelfleet.store.store import MAX_LIST_LIMIT
from modelfleet.store.translation import printable, translated

log = logging.getLogger("modelfleet.store")

# Inline commits between two checkpoints of the write-ahead log, run on the writer thread.
_CHECKPOINT_EVERY = 256
_SQLITE_LOCK_ERRORS = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SqlRunStore:
    """Pipeline runs in SQLite (``sqlite:///path``) or PostgreSQL (``postgresql://...``).

    The embedded default is a SQLite file in WAL mode; several processes may share it. ``open``
    creates the file's folder and migrates the schema. ``busy_timeout_ms`` is how long a SQLite
    writer waits for another's lock. Raises ConfigError for a URL it cannot use.

    On SQLite a save is one blocking transaction. ``save_runs`` runs it on the store's writer
    thread, which waits up to ``busy_timeout_ms`` for the lock. ``save_now`` runs it on the
    caller's thread with a connection that never waits: a one-run save takes about 0.06 ms, less
    than handing it to the writer thread and back (two thread wake-ups; 0.15-0.2 ms in all,
    measured at concurrency 1). That connection never checkpoints the write-ahead log itself (a
    checkpoint syncs the disk); every ``_CHECKPOINT_EVERY`` of its commits the writer thread does.
    PostgreSQL is reached over the network, so its ``save_now`` always declines.
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = 10_000) -> None:
        self._engine = StoreEngine(url, busy_timeout_ms, "run store", RunRejected)
        self._busy_timeout_ms = busy_timeout_ms
        self._sqlite: sqlite3.Connection | None = None  # used on the writer thread only
        self._sqlite_inline: sqlite3.Connection | None = None  # used on the event loop's thread only
        self._inline_commits = 0
        self._writer_thread: ThreadPoolExecutor | None = None
        if self._engine.backend == "sqlite":
            self._insert_runs = (
                sqlite.insert(runs_table)
                .on_conflict_do_nothing(index_elements=[runs_table.c.id])
                .returning(runs_table.c.id)
            )
        else:
            self._insert_runs = (
                postgresql.insert(runs_table)
                .on_conflict_do_nothing(index_elements=[runs_table.c.id])
                .returning(runs_table.c.id)
            )

    @property
    def backend(self) -> Backend:
        return self._engine.backend

    async def open(self) -> None:
        await self._engine.open()
        if self._engine.backend == "sqlite" and self._writer_thread is None:
            self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="modelfleet-run-store")

    async def close(self) -> None:
        thread, self._writer_thread = self._writer_thread, None
        inline, self._sqlite_inline = self._sqlite_inline, None
        if inline is not None:
            inline.close()
        if thread is not None:
            # Closed on its own thread: sqlite3 connections may only be closed where they were made.
            await asyncio.get_running_loop().run_in_executor(thread, self._close_sqlite)
            thread.shutdown(wait=True)
        await self._engine.close()

    async def save_runs(self, runs: Sequence[PipelineRun]) -> None:
        unique = _first_of_each_id(runs)
        if not unique:
            return
        engine = self._open_engine()
        rows = [_run_row(run) for run in unique.values()]
        with translated(f"saving {len(rows)} run(s)", RunRejected):
            if self._writer_thread is not None:
                # SQLite: the whole transaction in one blocking call (see the class docstring).
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._writer_thread, self._save_on_writer_thread, rows, unique)
                return
            async with write_transaction(engine) as connection:
                result = await connection.execute(self._insert_runs, rows)
                steps = _new_step_rows(unique, set(result.scalars()))
                if steps:
                    await connection.execute(run_steps.insert(), steps)

    def save_now(self, runs: Sequence[PipelineRun]) -> bool:
        self._open_engine()  # raises StoreError when the store is not open
        if self._writer_thread is None:
            return False  # PostgreSQL: every transaction waits for the network
        unique = _first_of_each_id(runs)
        if not unique:
            return True
        rows = [_run_row(run) for run in unique.values()]
        with translated(f"saving {len(rows)} run(s)", RunRejected):
            connection = self._sqlite_inline
            if connection is None:
                connection = self._sqlite_inline = self._connect(busy_timeout_ms=0, checkpoints=False)
            try:
                self._save_blocking(connection, rows, unique)
            except sqlite3.OperationalError as err:
                if err.sqlite_errorcode in _SQLITE_LOCK_ERRORS:
                    return False  # another writer holds the lock: save_runs waits for it
                raise
        self._inline_commits += 1
        if self._inline_commits % _CHECKPOINT_EVERY == 0:
            self._writer_thread.submit(self._checkpoint)
        return True

    def _writer_connection(self) -> sqlite3.Connection:
        # Made, used and closed only on the writer thread.
        if self._sqlite is None:
            self._sqlite = self._connect(self._busy_timeout_ms, checkpoints=True)
        return self._sqlite

    def _save_on_writer_thread(self, rows: list[dict[str, Any]], unique: dict[str, PipelineRun]) -> None:
        self._save_blocking(self._writer_connection(), rows, unique)

    def _checkpoint(self) -> None:
        # On the writer thread; PASSIVE never waits for readers. A failure only delays the next one.
        try:
            self._writer_connection().execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as err:
            log.warning("run store: checkpointing the write-ahead log failed: %s", err)

    @staticmethod
    def _save_blocking(
        connection: sqlite3.Connection, rows: list[dict[str, Any]], unique: dict[str, PipelineRun]
    ) -> None:
        # Plain sqlite3 with the values encoded as SQLAlchemy's column types encode them (the
        # contract tests read these rows back through SQLAlchemy): a run's save costs a tenth of
        # the CPU of SQLAlchemy's statement machinery, and it sits on the response's critical path.
        try:
            run_values = [_sqlite_run(row) for row in rows]
        except (TypeError, ValueError) as err:
            raise RunRejected(f"saving {len(rows)} run(s): the database refused the data: {err}") from err
        connection.execute("BEGIN IMMEDIATE")
        try:
            inserted = {
                values[0] for values in run_values if connection.execute(_INSERT_RUN, values).rowcount == 1
            }
            try:
                steps = [_sqlite_step(step) for step in _new_step_rows(unique, inserted)]
            except (TypeError, ValueError) as err:
                raise RunRejected(f"saving {len(rows)} run(s): the database refused the data: {err}") from err
            if steps:
                connection.executemany(_INSERT_STEP, steps)
            connection.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            raise

    def _connect(self, busy_timeout_ms: int, checkpoints: bool) -> sqlite3.Connection:
        # Each connection is made, used and closed on one thread (check_same_thread holds us to it).
        path = self._engine.url.sqlite_path
        assert path is not None
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("PRAGMA synchronous = NORMAL")
        if not checkpoints:
            connection.execute("PRAGMA wal_autocheckpoint = 0")
        return connection

    def _close_sqlite(self) -> None:
        connection, self._sqlite = self._sqlite, None
        if connection is not None:
            connection.close()

    async def get_run(self, run_id: str) -> PipelineRun:
        run = await self.find_run(run_id)
        if run is None:
            raise RunNotFound(f"no pipeline run with id {run_id!r}")
        return run

    async def find_run(self, run_id: str) -> PipelineRun | None:
        engine = self._open_engine()
        with translated("reading a run", RunRejected):
            async with engine.connect() as connection:
                row = (
                    await connection.execute(select(runs_table).where(runs_table.c.id == run_id))
                ).one_or_none()
                if row is None:
                    return None
                steps = await _steps_of(connection, [run_id])
        return _run_from(row, steps.get(run_id, []))

    async def list_runs(
        self,
        pipeline: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        if isinstance(limit, bool) or not 1 <= limit <= MAX_LIST_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_LIST_LIMIT}, got {limit!r}")
        if since is not None and (since.tzinfo is None or since.utcoffset() is None):
            raise ValueError("since must be timezone-aware")
        conditions: list[ColumnElement[bool]] = []
        if pipeline is not None:
            conditions.append(runs_table.c.pipeline == pipeline)
        if since is not None:
            conditions.append(runs_table.c.created_at >= since)
        if cursor is not None:
            after_at, after_id = _decode_cursor(cursor)
            conditions.append(
                tuple_(runs_table.c.created_at, runs_table.c.id)
                < tuple_(literal(after_at, UtcDateTime()), literal(after_id, RunId))
            )
        query = (
            select(runs_table)
            .where(*conditions)
            .order_by(runs_table.c.created_at.desc(), runs_table.c.id.desc())
            .limit(limit + 1)
        )
        engine = self._open_engine()
        with translated("listing runs", RunRejected):
            async with engine.connect() as connection:
                rows = list((await connection.execute(query)).all())
                page = rows[:limit]
                steps = await _steps_of(connection, [row.id for row in page])
        items = [_run_from(row, steps.get(row.id, [])) for row in page]
        next_cursor = None
        if len(rows) > limit:
            next_cursor = _encode_cursor(items[-1].created_at, items[-1].id)
        return RunPage(items, next_cursor)

    def _open_engine(self) -> AsyncEngine:
        return self._engine.get()


_INSERT_RUN = (
    "INSERT INTO runs (id, pipeline, status, error, created_at, duration_ms, input, output, model_versions) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
)
_INSERT_STEP = (
    "INSERT INTO run_steps (run_id, position, name, model, version, status, output, reason, duration_ms) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _sqlite_json(value: Any) -> str | None:
    return None if value is None else dumps(value)


def _sqlite_time(value: datetime) -> str:
    # SQLAlchemy's SQLite DATETIME text for UtcDateTime: UTC, no zone, microseconds, sorts in time order.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware")
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _sqlite_run(row: dict[str, Any]) -> tuple[Any, ...]:
    return (
        row["id"], row["pipeline"], row["status"], row["error"], _sqlite_time(row["created_at"]),
        float(row["duration_ms"]), _sqlite_json(row["input"]), _sqlite_json(row["output"]),
        _sqlite_json(row["model_versions"]),
    )  # fmt: skip


def _sqlite_step(row: dict[str, Any]) -> tuple[Any, ...]:
    return (
        row["run_id"], row["position"], row["name"], row["model"], row["version"], row["status"],
        _sqlite_json(row["output"]), row["reason"], float(row["duration_ms"]),
    )  # fmt: skip


def _new_step_rows(runs: dict[str, PipelineRun], inserted: set[str]) -> list[dict[str, Any]]:
    # Steps only for runs inserted now: a stored run keeps its own steps, even when a concurrent
    # transaction inserted it a moment ago.
    return [
        _step_row(run.id, position, step)
        for run in runs.values()
        if run.id in inserted
        for position, step in enumerate(run.steps)
    ]


def _first_of_each_id(runs: Sequence[PipelineRun]) -> dict[str, PipelineRun]:
    """The runs by id, the first of each id kept (a repeated run is stored once)."""
    unique: dict[str, PipelineRun] = {}
    for run in runs:
        unique.setdefault(run.id, run)
    return unique


def _run_row(run: PipelineRun) -> dict[str, Any]:
    for label, value in (("id", run.id), ("pipeline", run.pipeline)):
        _refuse_nul(run.id, label, value)
    return {
        "id": run.id,
        "pipeline": run.pipeline,
        "status": run.status,
        "error": printable(run.error),
        "created_at": run.created_at,
        "duration_ms": run.duration_ms,
        "input": run.input,
        "output": run.output,
        "model_versions": run.model_versions,
    }


def _step_row(run_id: str, position: int, step: StepRecord) -> dict[str, Any]:
    for label, value in (
        ("step name", step.name),
        ("step model", step.model),
        ("step version", step.version),
    ):
        _refuse_nul(run_id, label, value)
    return {
        "run_id": run_id,
        "position": position,
        "name": step.name,
        "model": step.model,
        "version": step.version,
        "status": step.status,
        "output": step.output,
        "reason": printable(step.reason),
        "duration_ms": step.duration_ms,
    }


def _refuse_nul(run_id: str, label: str, value: str | None) -> None:
    # PostgreSQL text cannot hold NUL; refusing it on SQLite too keeps the backends alike.
    if value is not None and "\x00" in value:
        raise RunRejected(f"run {run_id!r}: {label} contains a NUL character")


async def _steps_of(connection: AsyncConnection, run_ids: list[str]) -> dict[str, list[StepRecord]]:
    if not run_ids:
        return {}
    query = (
        select(run_steps)
        .where(run_steps.c.run_id.in_(run_ids))
        .order_by(run_steps.c.run_id, run_steps.c.position)
    )
    steps: dict[str, list[StepRecord]] = {}
    for row in await connection.execute(query):
        steps.setdefault(row.run_id, []).append(
            StepRecord(
                name=row.name,
                model=row.model,
                version=row.version,
                status=cast(StepStatus, row.status),
                output=row.output,
                reason=row.reason,
                duration_ms=row.duration_ms,
            )
        )
    return steps


def _run_from(row: Row[Any], steps: list[StepRecord]) -> PipelineRun:
    return PipelineRun(
        id=row.id,
        pipeline=row.pipeline,
        input=row.input,
        output=row.output,
        steps=steps,
        status=cast(RunStatus, row.status),
        error=row.error,
        created_at=row.created_at,
        duration_ms=row.duration_ms,
        model_versions=dict(row.model_versions or {}),
    )


def _encode_cursor(created_at: datetime, run_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), run_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at_text, run_id = json.loads(raw)
        created_at = datetime.fromisoformat(at_text)
        if not isinstance(run_id, str) or created_at.tzinfo is None:
            raise ValueError("not a cursor")
    except (binascii.Error, UnicodeDecodeError, TypeError, ValueError):
        raise ValueError("cursor is not one list_runs returned; pass next_cursor back unchanged") from None
    return created_at, run_id
